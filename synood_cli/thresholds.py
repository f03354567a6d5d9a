"""Deployment thresholds: the score below which `synood score` calls an image OOD, and where it came from.

Scores of different methods (and of one method under other models, negatives or groups) live on
different scales, so a threshold carries the settings it was computed under and is refused for
others. It is the threshold FPR95 is measured at (docs/method.md, metrics): the k-th largest ID
score, k = ceil(0.95 n); an image scoring below it is OOD.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from synood_cli.errors import UsageError

THRESHOLD_FILE = "threshold.json"  # in a checkpoint folder, written by `synood finetune`
_HINT = "--threshold takes a number (score < T is OOD), fpr95 (95% of ID kept) or tprNN (NN% of ID kept)"


@dataclass
class Threshold:
    """A threshold value, the method it belongs to, a sentence saying where it came from, and the identity of the scores it fits."""

    value: float
    source: str
    method: str | None = None
    tpr: float | None = None
    identity: dict | None = None  # None: a plain number the user gave, which fits any scores
    where: str = "the threshold"  # names the file in refusals

    def as_meta(self) -> dict:
        return {"value": self.value, "source": self.source, "method": self.method, "tpr": self.tpr}

    def check(self, identity: dict, keys=None) -> None:
        """Exit 2 naming what differs when these scores are not the ones the threshold was made for."""
        if self.identity is None and self.tpr is None:
            return
        from synood_cli.identity import check_identity

        check_identity(self.identity, identity, self.where, f"in these {identity.get('method')} scores", keys)

    def is_ood(self, score: float) -> bool | None:
        """score < T; None for a NaN or infinite score (nothing can be said about it)."""
        return None if not math.isfinite(score) else bool(score < self.value)


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


def requested(text: str | None, calibration) -> tuple[str, float] | None:
    """--threshold TEXT parsed (None without one); --calibration FILE only beside fpr95/tprNN. Exit 2 before any work."""
    wanted = parse_threshold(text) if text is not None else None
    if calibration is not None and (wanted is None or wanted[0] != "tpr"):
        raise UsageError("--calibration goes with --threshold fpr95 (or tprNN)", hint="e.g. --threshold fpr95 --calibration result.json")
    return wanted


def resolve(wanted: tuple[str, float] | None, text: str | None, calibration, method: str, checkpoint: str | None, home) -> Threshold | None:
    """--threshold VALUE, or fpr95/tprNN from --calibration FILE or the checkpoint (with the identity of the scores it fits).

    What `synood score` and `synood serve` apply: one place, so the two never resolve a threshold differently.
    """
    if wanted is None:
        return None
    kind, value = wanted
    if kind == "value":
        return Threshold(value, f"--threshold {text}", method, None)
    if calibration is not None:
        return from_calibration(calibration, method, value)
    if checkpoint:
        folder, _ = checkpoint_folder_and_id(home, checkpoint)
        return from_checkpoint(folder, checkpoint, method, value)
    raise UsageError(
        f"--threshold {text} needs the ID scores it is computed from",
        hint="pass --checkpoint NAME (finetune stores one), or --calibration result.json from `synood evaluate ... --format json`",
    )


def _tpr_key(tpr: float) -> str:
    return f"{tpr:g}"


_CALIB_HINT = "save one with `synood evaluate ... --format json > result.json`"


def read_json(path, what: str, hint: str, damaged: bool = False) -> dict:
    """A JSON object from a file; every way it can be wrong is one line (exit 2, or 3 for a damaged store file)."""
    from synood_cli.errors import DamagedArtifact
    from synood_cli.identity import shorten

    error = DamagedArtifact if damaged else UsageError
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found", hint=hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} cannot be read: {shorten(e, 120)}", hint=hint) from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON ({e.msg} at line {e.lineno})", hint=hint) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a synood file", hint=hint) from None
    if not isinstance(body, dict):
        raise error(f"{what} holds a JSON {type(body).__name__}, not an object", hint=hint)
    return body


def _number(value, what: str, field: str, error=UsageError) -> float:
    """A finite number from a JSON field, or one line naming the file and the field."""
    from synood_cli.identity import shorten

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what}: {field} is {shorten(json.dumps(value, default=str), 40)}, not a number", hint="the file is damaged or not made by synood")
    if not math.isfinite(value):
        raise error(f"{what}: {field} is {value}, not a finite number: it would mark every image {'OOD' if value > 0 else 'ID'}",
                    hint="make the threshold again from finite ID scores")
    return float(value)


def from_calibration(path, method: str, tpr: float) -> Threshold:
    """The threshold at `tpr` for `method` from a saved `synood evaluate --format json` result.

    Its identity (`identities[method]`) is what the caller compares with the scores' own.
    """
    from synood_cli.identity import shorten, validate

    what = f"--calibration {path}"
    body = read_json(path, what, _CALIB_HINT)
    if isinstance(body.get("methods"), dict):
        per_method = body["methods"]
    elif isinstance(body.get("method"), str):
        per_method = {body["method"]: body}
    else:
        per_method = {}
    if method not in per_method:
        made = ", ".join(shorten(m, 30) for m in per_method) or "no named method"
        raise UsageError(
            f"{what} holds thresholds for {made}, not for {method}: each method's scores live on their own scale",
            hint=f"pass --method {shorten(next(iter(per_method)), 30)}" if per_method else "evaluate with --method to record it",
        )
    entry = per_method[method]
    thresholds = entry.get("thresholds") if isinstance(entry, dict) else None
    if not isinstance(thresholds, dict):
        raise UsageError(f"{what}: the {method} entry has no thresholds object", hint=_CALIB_HINT)
    if _tpr_key(tpr) not in thresholds:
        raise UsageError(
            f"{what} has no {method} threshold at {100 * tpr:g}% TPR (it has {shorten(', '.join(map(str, thresholds)) or 'none', 60)})",
            hint=f"rerun evaluate with --tpr {tpr:g}",
        )
    value = _number(thresholds[_tpr_key(tpr)], what, f"the {method} threshold at {tpr:g}")
    identities = body.get("identities")
    identity = identities.get(method) if isinstance(identities, dict) else None
    if identity is not None:
        identity = validate(identity, what)
    n = body.get("id_images")
    kept = f"{100 * tpr:g}% of {n} ID images kept" if isinstance(n, int) and not isinstance(n, bool) else f"{100 * tpr:g}% of ID images kept"
    return Threshold(value, f"{path} ({method}, {kept})", method, tpr, identity or {}, what)


def from_threshold_file(f: Path, what: str, method: str, tpr: float, damaged: bool) -> Threshold:
    """A threshold.json (finetune writes one in each checkpoint): typed, finite, with its identity."""
    from synood_cli.errors import DamagedArtifact
    from synood_cli.identity import shorten, validate

    error = DamagedArtifact if damaged else UsageError
    hint = "rerun `synood finetune` to a new --name, or pass --calibration FILE from `synood evaluate ... --format json`"
    rec = read_json(f, what, hint, damaged)
    recorded = rec.get("method")
    if not isinstance(recorded, str):
        raise error(f"{what}: method is {shorten(json.dumps(recorded, default=str), 40)}, not a method name", hint=hint)
    if method != recorded:
        raise UsageError(
            f"{what} is a threshold for {shorten(recorded, 30)} scores, not {method}: each method's scores live on their own scale",
            hint=f"drop --method (or pass --method {shorten(recorded, 30)}), or pass --calibration FILE",
        )
    stored_tpr = _number(rec.get("tpr", 0.95), what, "tpr", error)
    if abs(stored_tpr - tpr) > 1e-9:
        raise UsageError(f"{what} holds the threshold at {100 * stored_tpr:g}% TPR only", hint="pass --calibration FILE for other TPRs")
    value = _number(rec.get("threshold"), what, "threshold", error)
    identity = rec.get("identity")
    identity = validate(identity, what) if identity is not None else {}
    n = rec.get("n_id")
    split = rec.get("split") if rec.get("split") in ("held-out", "training") else "held-out"
    count = f"{n} " if isinstance(n, int) and not isinstance(n, bool) else ""
    return Threshold(value, f"{what} ({100 * tpr:g}% of {count}{split} ID images kept)", method, tpr, identity, what)


def from_checkpoint(folder: Path, ref: str, method: str, tpr: float) -> Threshold:
    """The threshold `synood finetune` stored with the checkpoint (95% TPR on its held-out ID images)."""
    f = Path(folder) / THRESHOLD_FILE
    if not f.is_file():
        raise UsageError(
            f"checkpoint {ref} stores no threshold (made before thresholds were recorded)",
            hint="rerun `synood finetune` to a new --name, or pass --calibration FILE from `synood evaluate ... --format json`",
        )
    t = from_threshold_file(f, f"the threshold of checkpoint {ref}", method, tpr, damaged=True)
    t.source = t.source.replace("the threshold of checkpoint", "checkpoint", 1)
    return t


def from_file(path, method: str, tpr: float = 0.95) -> Threshold:
    """A threshold from an evaluate result (`--format json`) or a threshold.json, whichever `path` is."""
    p = Path(path)
    if p.is_dir():
        p = p / THRESHOLD_FILE
    body = read_json(p, f"threshold file {path}", _CALIB_HINT)
    if "threshold" in body and "thresholds" not in body:
        return from_threshold_file(p, f"threshold file {path}", method, tpr, damaged=False)
    t = from_calibration(p, method, tpr)
    t.where = f"threshold file {path}"
    return t


def checkpoint_folder_and_id(home, ref: str) -> tuple[Path, str]:
    """A checkpoint's folder and the id recorded with thresholds (its store id, or its folder path).

    Resolved as `--checkpoint` is everywhere (training.resolve_checkpoint): a bare NAME is the
    store's checkpoint even when a folder ./NAME exists, so the threshold and the weights agree.
    """
    from synood_cli.store import Store
    from synood_cli.training import resolve_checkpoint

    folder, _, what = resolve_checkpoint(Store(home), ref)
    return folder, (str(folder.resolve()) if what.startswith("checkpoint folder") else folder.name)
