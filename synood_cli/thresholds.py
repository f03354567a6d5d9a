"""Deployment thresholds: the score below which `synood score` calls an image OOD, and where it came from.

Scores of different methods (and of one method under other models, negatives or groups) live on
different scales, so a threshold carries the settings it was computed under and is refused for
others. It is the threshold FPR95 is measured at (docs/method.md, metrics): the k-th largest ID
score, k = ceil(0.95 n); an image scoring below it is OOD.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from synood_cli.errors import UsageError

THRESHOLD_FILE = "threshold.json"  # in a checkpoint folder, written by `synood finetune`
# the settings a score's scale depends on; methods without negatives depend on the model only
NEGATIVE_KEYS = ("groups", "lexicon", "neg_ratio", "seed", "tau")
_HINT = "--threshold takes a number (score < T is OOD), fpr95 (95% of ID kept) or tprNN (NN% of ID kept)"


@dataclass
class Threshold:
    """A threshold value, the method it belongs to, and a sentence saying where it came from."""

    value: float
    source: str
    method: str | None = None
    tpr: float | None = None

    def as_meta(self) -> dict:
        return {"value": self.value, "source": self.source, "method": self.method, "tpr": self.tpr}


def parse_threshold(text: str) -> tuple[str, float]:
    """`0.42` -> ("value", 0.42); `fpr95` -> ("tpr", 0.95); `tpr90` -> ("tpr", 0.9)."""
    t = str(text).strip().lower()
    if t == "fpr95":
        return "tpr", 0.95
    m = re.fullmatch(r"tpr([0-9]{1,3}(?:\.[0-9]+)?)", t)
    if m:
        tpr = float(m.group(1)) / 100
        if not 0 < tpr <= 1:
            raise UsageError(f"--threshold {text}: the TPR must be between 0 and 100", hint=_HINT)
        return "tpr", tpr
    try:
        value = float(t)
    except ValueError:
        raise UsageError(f"--threshold {text!r} is neither a number nor fpr95/tprNN", hint=_HINT) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"--threshold {text} is not a finite number", hint=_HINT)
    return "value", value


def _tpr_key(tpr: float) -> str:
    return f"{tpr:g}"


def _refuse_mismatch(what: str, method: str, recorded: dict, scoring: dict, needs_negatives: bool) -> None:
    """Exit 2 when the threshold was computed under other settings than the scores it would judge."""
    keys = ("model",) + (("checkpoint",) if method == "synood" else ()) + (NEGATIVE_KEYS if needs_negatives else ())
    for k in keys:
        if k in recorded and k in scoring and recorded[k] != scoring[k]:
            raise UsageError(
                f"{what} was made with {k} {recorded[k]!r}, but these {method} scores use {scoring[k]!r}: scores on other settings live on another scale",
                hint="use the same settings as the run that made the threshold, or make a new one with `synood evaluate ... --format json`",
            )


def from_calibration(path, method: str, scoring: dict, tpr: float, needs_negatives: bool = True) -> Threshold:
    """The threshold at `tpr` for `method` from a saved `synood evaluate --format json` result."""
    p = Path(path)
    try:
        body = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--calibration {path} not found", hint="save one with `synood evaluate ... --format json > result.json`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--calibration {path} is not an evaluate JSON result: {e}", hint="save one with `synood evaluate ... --format json > result.json`") from None
    if not isinstance(body, dict):
        raise UsageError(f"--calibration {path} is not an evaluate JSON result", hint="save one with `synood evaluate ... --format json > result.json`")
    per_method = body.get("methods") or ({body["method"]: body} if body.get("method") else {})
    if method not in per_method:
        made = ", ".join(map(str, per_method)) or "no named method"
        raise UsageError(
            f"--calibration {path} holds thresholds for {made}, not for {method}: each method's scores live on their own scale",
            hint=f"pass --method {next(iter(per_method))}" if per_method else "evaluate with --method to record it",
        )
    recorded = dict(body.get("scoring") or {})
    recorded.setdefault("model", body.get("model"))
    _refuse_mismatch(f"--calibration {path}", method, {k: v for k, v in recorded.items() if v is not None or k == "checkpoint"}, scoring, needs_negatives)
    thresholds = per_method[method].get("thresholds") or {}
    if _tpr_key(tpr) not in thresholds:
        raise UsageError(
            f"--calibration {path} has no {method} threshold at {100 * tpr:g}% TPR (it has {', '.join(thresholds) or 'none'})",
            hint=f"rerun evaluate with --tpr {tpr:g}",
        )
    n = body.get("id_images")
    return Threshold(float(thresholds[_tpr_key(tpr)]), f"{path} ({method}, {100 * tpr:g}% of {n} ID images kept)", method, tpr)


def from_checkpoint(folder: Path, ref: str, method: str, scoring: dict, tpr: float) -> Threshold:
    """The threshold `synood finetune` stored with the checkpoint (95% TPR on its held-out ID images)."""
    f = Path(folder) / THRESHOLD_FILE
    if not f.is_file():
        raise UsageError(
            f"checkpoint {ref} stores no threshold (made before thresholds were recorded)",
            hint="rerun `synood finetune` to a new --name, or pass --calibration FILE from `synood evaluate ... --format json`",
        )
    rec = json.loads(f.read_text())
    if method != rec.get("method"):
        raise UsageError(
            f"checkpoint {ref} stores a threshold for {rec.get('method')} scores, not {method}: each method's scores live on their own scale",
            hint=f"drop --method (or pass --method {rec.get('method')}), or pass --calibration FILE",
        )
    _refuse_mismatch(f"the threshold of checkpoint {ref}", method, rec.get("scoring", {}), scoring, True)
    if abs(float(rec.get("tpr", 0.95)) - tpr) > 1e-9:
        raise UsageError(f"checkpoint {ref} stores the threshold at {100 * rec['tpr']:g}% TPR only", hint="pass --calibration FILE for other TPRs")
    return Threshold(float(rec["threshold"]), f"checkpoint {ref} ({100 * tpr:g}% of {rec.get('n_id')} {rec.get('split', 'held-out')} ID images kept)", method, tpr)


def checkpoint_folder_and_id(home, ref: str) -> tuple[Path, str]:
    """A checkpoint's folder and the id recorded with thresholds (its store id, or its folder path).

    Resolved as `--checkpoint` is everywhere (training.resolve_checkpoint): a bare NAME is the
    store's checkpoint even when a folder ./NAME exists, so the threshold and the weights agree.
    """
    from synood_cli.store import Store
    from synood_cli.training import resolve_checkpoint

    folder, _, what = resolve_checkpoint(Store(home), ref)
    return folder, (str(folder.resolve()) if what.startswith("checkpoint folder") else folder.name)
