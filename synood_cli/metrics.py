"""OOD-detection metrics, score-file reading and ROC plots, in plain numpy.

Convention everywhere: ID is the positive class and a higher score means "more
in-distribution". All metrics are fractions in [0, 1], never percent.

scikit-learn is deliberately not used here; the tests use it as an independent reference.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synood_cli.errors import UsageError

SCORE_COLUMN = "score"
_SCORE_FILE_HINT = "the file needs a header with a `score` column, one row per image"


# --------------------------------------------------------------------------- inputs


def _to_array(values, name: str) -> np.ndarray:
    """Turn a list, numpy array or torch tensor into a checked 1-D float64 array.

    Args:
        values: the scores.
        name: which set they belong to ("ID", "OOD", ...), used in error messages.

    Raises:
        UsageError: the input is not numeric, not 1-D, empty, or holds NaN/inf.
    """
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"{name} scores are not numeric: {exc}", hint="pass one number per image"
        ) from None
    if arr.ndim != 1:
        raise UsageError(
            f"{name} scores must be a 1-D array, got shape {arr.shape}",
            hint="pass one score per image",
        )
    if arr.size == 0:
        raise UsageError(
            f"{name} scores are empty", hint=f"the {name} set needs at least one scored image"
        )
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise UsageError(
            f"{bad} of {arr.size} {name} scores are not finite (NaN or inf)",
            hint="check the model outputs for overflow, or drop the broken images",
        )
    return arr


# --------------------------------------------------------------------------- metrics


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact Mann-Whitney AUROC: P(pos > neg) + 1/2 P(pos == neg), in integer counts."""
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")  # negatives strictly lower
    not_above = np.searchsorted(neg_sorted, pos, side="right")  # negatives lower or equal
    # 2 * (wins + ties / 2) = wins + not_above, kept integer so ties are exact.
    twice_u = int(below.sum()) + int(not_above.sum())
    return twice_u / (2 * pos.size * neg.size)


def _kth_largest_at(pos: np.ndarray, tpr: float) -> float:
    """The k-th largest positive score, k = ceil(tpr * n): keeping scores >= it keeps `tpr` of them."""
    k = max(1, math.ceil(round(tpr * pos.size, 9)))  # round: 0.95 * 100 is 95.00000000000001 in floats
    return float(np.sort(pos)[::-1][k - 1])


def _fpr_at_95_tpr(pos: np.ndarray, neg: np.ndarray) -> float:
    """FPR at the first threshold whose TPR reaches 95 %, higher score = positive."""
    return float(np.mean(neg >= _kth_largest_at(pos, 0.95)))


def threshold_at_tpr(id_scores, tpr: float = 0.95) -> float:
    """The score to deploy: an image scoring below it is called OOD, and `tpr` of the ID set is kept.

    It is the threshold FPR95 is measured at (tpr 0.95): the k-th largest ID score, k = ceil(tpr * n).

    Raises:
        UsageError: `tpr` is not in (0, 1], or the scores are invalid.
    """
    if not (isinstance(tpr, (int, float)) and 0 < tpr <= 1):
        raise UsageError(f"TPR {tpr!r} is not a fraction in (0, 1]", hint="e.g. --tpr 0.9 for 90% of ID images kept")
    return _kth_largest_at(_to_array(id_scores, "ID"), float(tpr))


def thresholds_at(id_scores, tprs=(0.95,)) -> dict[str, float]:
    """`threshold_at_tpr` for several TPRs, keyed by the TPR as written ("0.95"), for JSON and tables."""
    return {f"{t:g}": threshold_at_tpr(id_scores, t) for t in tprs}


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise average precision over distinct thresholds, ties grouped (no interpolation)."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Last index of each run of equal scores: one point per distinct threshold.
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[ends]
    precision = tp / (ends + 1)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """Score how well one OOD set is told apart from the ID set.

    Args:
        id_scores: scores of in-distribution images (list, numpy array or torch tensor).
        ood_scores: scores of out-of-distribution images; higher = more in-distribution.

    Returns:
        ``auroc`` (Mann-Whitney, ties count 1/2); ``fpr95`` (fraction of OOD kept when 95 % of
        ID is kept, ID positive, MOS/NegLabel convention); ``fpr95_ood_positive`` (fraction of
        ID flagged when 95 % of OOD is flagged, OpenOOD v1.5 convention); ``aupr_in`` and
        ``aupr_out`` (average precision with ID, resp. OOD with negated scores, as positive);
        ``n_id`` and ``n_ood``.

    Raises:
        UsageError: a set is empty, not 1-D, or holds NaN/inf.
    """
    ids = _to_array(id_scores, "ID")
    ood = _to_array(ood_scores, "OOD")
    return {
        "auroc": _auroc(ids, ood),
        "fpr95": _fpr_at_95_tpr(ids, ood),
        "fpr95_ood_positive": _fpr_at_95_tpr(-ood, -ids),
        "aupr_in": _average_precision(ids, ood),
        "aupr_out": _average_precision(-ood, -ids),
        "n_id": int(ids.size),
        "n_ood": int(ood.size),
    }


def accuracy(pred, labels) -> float:
    """Report top-1 accuracy so a score run also shows the classifier still works.

    Args:
        pred: predicted class ids, shape (n,), or logits, shape (n, classes), taken by argmax.
        labels: true class ids, shape (n,).

    Returns:
        The fraction of correct predictions.

    Raises:
        UsageError: the inputs are empty or their lengths differ.
    """
    pred = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred)
    labels = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.ndim != 1 or labels.ndim != 1:
        raise UsageError(
            f"accuracy needs 1-D predictions and labels, got shapes {pred.shape} and {labels.shape}"
        )
    if pred.size == 0:
        raise UsageError("accuracy of an empty set is undefined", hint="score at least one image")
    if pred.size != labels.size:
        raise UsageError(
            f"{pred.size} predictions but {labels.size} labels",
            hint="predictions and labels must come from the same images, in the same order",
        )
    return float(np.mean(pred == labels))


def average_metrics(per_set: dict[str, dict]) -> dict:
    """Summarise several OOD sets in one row, as papers report "average over OOD sets".

    Every metric present in all sets is a plain (unweighted) mean over the sets. ``n_ood`` is
    the total over the sets; ``n_id`` is kept when all sets share one ID set, else left out.

    Args:
        per_set: OOD set name -> the dict from :func:`ood_metrics`.

    Raises:
        UsageError: ``per_set`` is empty.
    """
    if not per_set:
        raise UsageError("no OOD sets to average", hint="score at least one OOD set")
    sets = list(per_set.values())
    keys = [k for k in sets[0] if all(k in s for s in sets)]
    out = {}
    for key in keys:
        values = [float(s[key]) for s in sets]
        if key == "n_ood":
            out[key] = int(sum(values))
        elif key == "n_id":
            if len(set(values)) == 1:
                out[key] = int(values[0])
        else:
            out[key] = float(np.mean(values))
    return out


# --------------------------------------------------------------------------- score files


def _parse_score(cell, path: Path, line: int) -> float:
    """Read one score cell, or say which line of which file is broken."""
    if isinstance(cell, bool) or cell is None or (isinstance(cell, str) and not cell.strip()):
        value = None
    else:
        try:
            value = float(cell)
        except (TypeError, ValueError):
            value = None
    if value is None or not math.isfinite(value):
        raise UsageError(
            f"{path}: line {line}: score {cell!r} is not a finite number", hint=_SCORE_FILE_HINT
        )
    return value


def _missing_column(path: Path, found) -> UsageError:
    return UsageError(
        f"{path}: no `{SCORE_COLUMN}` column (found: {', '.join(map(str, found)) or 'none'})",
        hint=_SCORE_FILE_HINT,
    )


METHOD_COLUMN = "method"
META_KEY = b"synood"  # Parquet key-value metadata written by `synood score` (method, model, checkpoint, identities, ...)
SIDECAR_SUFFIX = ".identity.json"  # next to a CSV/TSV score file: what Parquet keeps in its metadata


@dataclass
class ScoreFile:
    """Scores read from one file: per method when the file names it, else under the key None.

    `meta` holds what the file records about how the scores were made (method, model,
    checkpoint): Parquet metadata, a CSV's sidecar, or the fields of the first JSON line.
    `identities` maps each method to the identity of its scores (synood_cli.identity), None when
    the file records none (another tool's file); `note` says why a record was not used.
    """

    name: str
    scores: dict
    meta: dict = field(default_factory=dict)
    identities: dict | None = None
    note: str | None = None

    @property
    def methods(self) -> list:
        return list(self.scores)


def _group(path, values: list[float], methods: list | None) -> dict:
    """One array per method, in first-seen order, each holding exactly its rows (file order kept)."""
    if methods is None or all(m in (None, "") for m in methods):
        return {None: np.asarray(values, dtype=np.float64)}
    if any(m in (None, "") for m in methods):
        line = next(i for i, m in enumerate(methods) if m in (None, "")) + 1
        raise UsageError(f"{path}: score row {line} names no method while others do", hint="give every row its method, or none")
    out: dict = {}
    for v, m in zip(values, methods):
        out.setdefault(m, []).append(v)
    return {m: np.asarray(v, dtype=np.float64) for m, v in out.items()}


def _one_score_column(path, header: list) -> None:
    if sum(1 for h in header if h == SCORE_COLUMN) > 1:
        raise UsageError(f"{path}: {header.count(SCORE_COLUMN)} columns are named `{SCORE_COLUMN}`: which one holds the scores is not clear",
                         hint="keep one `score` column")


def _read_delimited(path, text: str, delimiter: str) -> tuple[dict, dict]:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    if SCORE_COLUMN not in header:
        raise _missing_column(path, header)
    _one_score_column(path, header)
    col = header.index(SCORE_COLUMN)
    mcol = header.index(METHOD_COLUMN) if METHOD_COLUMN in header else None
    scores, methods = [], []
    for row in reader:
        if not any(c.strip() for c in row):
            continue  # blank line
        cell = row[col] if col < len(row) else ""
        scores.append(_parse_score(cell, path, reader.line_num))
        methods.append(row[mcol].strip() if mcol is not None and mcol < len(row) else None)
    return _group(path, scores, methods if mcol is not None else None), {}


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"the key {dup!r} appears twice")
    return dict(pairs)


def _read_jsonl(path, text: str) -> tuple[dict, dict]:
    scores, methods, meta = [], [], {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{path}: line {line_no}: not valid JSON ({exc.msg})",
                hint="a .jsonl file holds one JSON object per line",
            ) from None
        except ValueError as exc:
            raise UsageError(f"{path}: line {line_no}: {exc}", hint="one value per key") from None
        except RecursionError:
            raise UsageError(f"{path}: line {line_no}: nested too deeply to be a score row", hint=_SCORE_FILE_HINT) from None
        if not isinstance(record, dict) or SCORE_COLUMN not in record:
            found = list(record) if isinstance(record, dict) else [type(record).__name__]
            raise _missing_column(path, found)
        if not scores:
            meta = {k: record[k] for k in ("method", "model", "checkpoint", "identities") if k in record}
        scores.append(_parse_score(record[SCORE_COLUMN], path, line_no))
        m = record.get(METHOD_COLUMN)
        methods.append(m if isinstance(m, str) else None)
    return _group(path, scores, methods), meta


def _read_parquet(path, data: bytes) -> tuple[dict, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()  # not read_table: it fails on duplicate column names with a long message
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"cannot read Parquet score file {path}: {_short(exc)}", hint=_SCORE_FILE_HINT) from None
    if SCORE_COLUMN not in table.column_names:
        raise _missing_column(path, table.column_names)
    _one_score_column(path, table.column_names)
    if table.column_names.count(METHOD_COLUMN) > 1:
        raise UsageError(f"{path}: several columns are named `{METHOD_COLUMN}`", hint="keep one `method` column")
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = _parse_meta(raw, path) if raw else {}
    cells = table.column(SCORE_COLUMN).to_pylist()
    scores = [_parse_score(c, path, i + 1) for i, c in enumerate(cells)]  # "line" = row number here
    methods = None
    if METHOD_COLUMN in table.column_names:
        methods = table.column(METHOD_COLUMN).to_pylist()  # row i's method: the same row order as the scores
        if any(m is not None and not isinstance(m, str) for m in methods):
            raise UsageError(f"{path}: the `{METHOD_COLUMN}` column holds {type(next(m for m in methods if not isinstance(m, str))).__name__} values, not names",
                             hint="a method column holds method names")
    return _group(path, scores, methods), meta


def _short(value, limit: int = 120) -> str:
    from synood_cli.identity import shorten

    return shorten(value, limit)


def _parse_meta(raw: bytes, path) -> dict:
    """The synood metadata of a Parquet file: a JSON object, type-checked (hostile files are one line, exit 2)."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: its synood metadata is not JSON ({_short(exc, 80)})", hint="the file is damaged; score the images again") from None
    except RecursionError:
        raise UsageError(f"{path}: its synood metadata is nested too deeply", hint="the file is damaged; score the images again") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: its synood metadata is a JSON {type(meta).__name__}, not an object", hint="the file is damaged; score the images again")
    return meta


def _check_meta(meta: dict, path) -> dict:
    """method/model/checkpoint are names (or absent); anything else is refused in one line."""
    for k in ("method", "model", "checkpoint"):
        v = meta.get(k)
        if v is not None and not isinstance(v, str):
            raise UsageError(f"{path}: its recorded {k} is {_short(json.dumps(v, default=str), 40)}, not a name",
                             hint="the file is damaged or not made by synood")
    return meta


def write_sidecar(path: Path, meta: dict) -> Path:
    """OUT.identity.json next to a CSV/TSV score file: its identities, and the file's hash so a changed file is noticed."""
    import hashlib

    from synood_cli.store import atomic_write_json

    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not path.is_file():
        return side  # a device or a pipe: nothing to describe
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    body = {k: meta[k] for k in ("method", "model", "checkpoint", "identities", "threshold") if k in meta}
    atomic_write_json(side, {"file": path.name, "sha256": digest, **body})
    return side


def _read_sidecar(path: Path, data: bytes) -> tuple[dict, str | None]:
    """(metadata, note): a CSV's sidecar when it describes exactly these bytes; else nothing, and why."""
    import hashlib

    from synood_cli.thresholds import read_json

    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}, None
    body = read_json(side, f"{side}", "delete it, or score the images again")
    if body.get("sha256") != hashlib.sha256(data).hexdigest():
        return {}, f"{side} describes another version of {path.name} (the file changed since): ignored"
    return {k: body[k] for k in ("method", "model", "checkpoint", "identities") if k in body}, None


def read_scores(path) -> ScoreFile:
    """Load per-image scores written by `synood score` or another tool, keeping what the file says about them.

    Parquet (by its magic bytes), CSV, TSV and JSON Lines are read; the text format follows the
    extension (.csv, .tsv, .jsonl, .json as JSON Lines), else it is sniffed: a first line starting
    with ``{`` is JSON Lines, a tab in the header means TSV, anything else CSV. ``-`` reads stdin.
    A ``method`` column (several methods in one file, as `evaluate --compare --save-scores`
    writes) splits the rows per method. The identity of the scores comes from the Parquet
    metadata, the first JSON line, or a CSV/TSV file's sidecar NAME.identity.json.

    Raises:
        UsageError: the file is missing or unreadable, has no ``score`` column (or two), no rows,
            a score cell that is empty, non-numeric or NaN/inf (the message gives the line), or
            metadata of the wrong shape.
    """
    import sys

    from synood_cli.identity import validate_identities

    name = str(path)
    note = None
    if name == "-":
        data = sys.stdin.buffer.read()
        path = "<stdin>"
    else:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"score file not found: {path}", hint="check the path")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read score file {path}: {exc}", hint=_SCORE_FILE_HINT) from None
    if data[:4] == b"PAR1":
        scores, meta = _read_parquet(path, data)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(f"cannot read score file {path}: {exc}", hint=_SCORE_FILE_HINT + " (csv, tsv, jsonl or parquet)") from None
        if not text.strip():
            raise UsageError(f"score file {path} is empty", hint=_SCORE_FILE_HINT)
        ext = Path(name).suffix.lower() if name != "-" else ""
        first_line = text.lstrip("\r\n").split("\n", 1)[0]
        if ext in (".jsonl", ".json") or (ext not in (".csv", ".tsv") and first_line.lstrip().startswith("{")):
            scores, meta = _read_jsonl(path, text)
        else:
            scores, meta = _read_delimited(path, text, "\t" if ext == ".tsv" or (ext != ".csv" and "\t" in first_line) else ",")
            if isinstance(path, Path):
                meta, note = _read_sidecar(path, data)
    meta = _check_meta(meta, path)
    if not any(len(v) for v in scores.values()):
        raise UsageError(f"score file {path} has no score rows", hint=_SCORE_FILE_HINT)
    recorded = meta.get("method")
    if list(scores) == [None] and recorded:
        scores = {recorded: scores[None]}
    elif recorded and list(scores) != [recorded] and None not in scores:
        raise UsageError(f"{path} records method {_short(recorded, 30)}, but its rows are of {_short(', '.join(map(str, scores)), 60)}",
                         hint="the file is damaged or was edited: score the images again")
    identities = validate_identities(meta["identities"], str(path)) if meta.get("identities") is not None else None
    if identities is not None:
        lacking = [m for m in scores if m not in identities]
        if lacking:
            raise UsageError(f"{path} records no identity for its {_short(', '.join(map(str, lacking)), 60)} scores", hint="the file is damaged or was edited")
        for m, ident in identities.items():
            if m in scores and ident.get("method") != m:
                raise UsageError(f"{path}: the identity recorded for {_short(m, 30)} scores is of method {_short(ident.get('method'), 30)}",
                                 hint="the file is damaged or was edited")
        identities = {m: identities[m] for m in scores}
    return ScoreFile(str(path), scores, meta, identities, note)


def read_score_file(path) -> np.ndarray:
    """The scores of a one-method score file as a 1-D float64 array, in file order (see `read_scores`).

    Raises:
        UsageError: as `read_scores`, or the file holds several methods' scores.
    """
    f = read_scores(path)
    if len(f.scores) > 1:
        raise UsageError(f"{f.name} holds scores of several methods ({', '.join(map(str, f.scores))})", hint="pick one with --method")
    return next(iter(f.scores.values()))


# --------------------------------------------------------------------------- plots


def roc_curve_points(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """Trace the ROC curve (ID positive) at every distinct score, for plotting.

    Args:
        id_scores: scores of ID images.
        ood_scores: scores of OOD images; higher = more in-distribution.

    Returns:
        ``(fpr, tpr)``, starting at (0, 0) and ending at (1, 1), thresholds descending.
    """
    ids = _to_array(id_scores, "ID")
    ood = _to_array(ood_scores, "OOD")
    thresholds = np.unique(np.concatenate([ids, ood]))[::-1]
    ids_sorted, ood_sorted = np.sort(ids), np.sort(ood)
    # Count of scores >= t is n minus the count strictly below t.
    tp = ids.size - np.searchsorted(ids_sorted, thresholds, side="left")
    fp = ood.size - np.searchsorted(ood_sorted, thresholds, side="left")
    fpr = np.r_[0.0, fp / ood.size]
    tpr = np.r_[0.0, tp / ids.size]
    return fpr, tpr


PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path) -> str:
    """The figure format named by the file's extension; refused before any work when unknown."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: unknown figure format {ext or '(no extension)'!r}", hint="end the file name in .png, .pdf or .svg")
    return ext


def plot_roc(curves: dict, path, title: str | None = None) -> Path:
    """Draw ROC curves and score histograms so a person can see where detection fails.

    Each curve marks its FPR95 operating point (the threshold that keeps 95% of ID images).

    Args:
        curves: OOD set name, or ``(set name, method)``, -> ``(id_scores, ood_scores)``.
        path: where the figure goes, as .png, .pdf or .svg; missing parent folders are created.
        title: the figure's title (method, model, checkpoint).

    Returns:
        The path written.

    Raises:
        UsageError: ``curves`` is empty or a score set is invalid.
    """
    fmt = plot_format(path)
    import matplotlib.pyplot as plt

    fig = roc_figure(curves, title)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):  # text stays text: searchable, editable
            fig.savefig(path, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return path


def roc_figure(curves: dict, title: str | None = None):
    """The figure `plot_roc` saves: ROC curves, then one histogram panel per method.

    Methods score on their own scales (SynOOD's sit near 0 where NegLabel's spread over 0..1):
    on one shared axis one method is a single bar, so each gets its own panel and x range, with
    its 95%-TPR threshold drawn as a line. An OOD set keeps one colour in every panel.
    """
    if not curves:
        raise UsageError("nothing to plot", hint="score at least one OOD set")
    data = {}  # (set, method) -> (ID scores, OOD scores)
    for key, (i, o) in curves.items():
        name, method = key if isinstance(key, tuple) else (key, None)
        data[(name, method)] = (_to_array(i, "ID"), _to_array(o, f"OOD ({name})"))
    methods = list(dict.fromkeys(m for _, m in data))
    sets = list(dict.fromkeys(n for n, _ in data))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {n: palette[i % len(palette)] for i, n in enumerate(sets)}
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(1, 1 + len(methods), figsize=(5.5 * (1 + len(methods)), 4.5), squeeze=False)
    ax_roc, hist_axes = axes[0][0], axes[0][1:]
    try:
        ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for (name, method), (ids, ood) in data.items():
            label = name if len(methods) == 1 else f"{name} ({method})"
            style = styles[methods.index(method) % len(styles)]
            fpr, tpr = roc_curve_points(ids, ood)
            ax_roc.plot(fpr, tpr, color=colour[name], linestyle=style, label=f"{label} (AUROC {_auroc(ids, ood):.3f})")
            t = _kth_largest_at(ids, 0.95)
            x95, y95 = float(np.mean(ood >= t)), float(np.mean(ids >= t))
            ax_roc.plot([x95], [y95], marker="o", color=colour[name], linestyle="none", label=f"{label} FPR95 {100 * x95:.1f}%")
        ax_roc.set(xlabel="FPR (OOD kept)", ylabel="TPR (ID kept)", title="ROC, ID positive")
        ax_roc.set_xlim(0, 1)
        ax_roc.set_ylim(0, 1.01)
        ax_roc.legend(loc="lower right", fontsize="small")
        for ax, method in zip(hist_axes, methods):
            _histogram_panel(ax, method, {n: v for (n, m), v in data.items() if m == method}, colour)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _histogram_panel(ax, method, sets: dict, colour: dict) -> None:
    """One method's ID and OOD score histograms on its own x range, its 95%-TPR threshold as a line.

    Positive scores spread over more than three decades (NegLabel-style ratios, most OOD images
    near 0 and a few ID ones near 1) get a log axis: on a linear one every bar but one is empty.
    """
    all_scores = np.concatenate([a for pair in sets.values() for a in pair])
    lo, hi = float(all_scores.min()), float(all_scores.max())
    if lo > 0 and hi / lo > 1e3:
        bins = np.geomspace(lo, hi, 51)
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(all_scores, bins=50)
    # each bar is the share of its set (not a density: log bins differ in width), so sets of any size compare
    hist = dict(bins=bins, histtype="stepfilled", alpha=0.35)
    shown_ids: list[np.ndarray] = []
    for name, (ids, _) in sets.items():  # ID drawn once unless the sets use different IDs
        if not any(np.array_equal(ids, seen) for seen in shown_ids):
            ax.hist(ids, weights=np.full(len(ids), 1 / len(ids)), label="ID" if not shown_ids else f"ID ({name})",
                    color="black" if not shown_ids else "grey", **hist)
            shown_ids.append(ids)
    for name, (_, ood) in sets.items():
        ax.hist(ood, weights=np.full(len(ood), 1 / len(ood)), label=name, color=colour[name], **hist)
    t = _kth_largest_at(shown_ids[0], 0.95)
    ax.axvline(t, color="red", linestyle="--", linewidth=1.2, label=f"threshold {t:.4g} (95% ID kept)")
    ax.set(xlabel="score (higher = more ID)", ylabel="share of the set's images", title=f"{method} scores" if method else "Score histograms")
    ax.legend(fontsize="small")
