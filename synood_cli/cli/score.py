"""`synood score`: one row per image to stdout (or a file), streamed as batches finish."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.flags import SCORE_FORMATS, choices
from synood_cli.cli.render import error_boundary
from synood_cli.errors import UsageError

HELP = """Score images: higher score = more in-distribution.

Inputs: image folders and files, OpenOOD image lists, hf:NAME[:SPLIT], save_to_disk folders or
Parquet (rows are named SOURCE#ROW); `-` reads image paths from stdin, one per line. Prints one
row per image ([bold]path, score, pred_class, pred_name[/bold], plus [bold]is_ood[/bold] with --threshold) as each
batch finishes, so `| head` works; a NaN score gets an empty is_ood. Every score file records
the identity of its scores (method, model, weights, checkpoint, ID classes, negatives, groups,
...): Parquet in its metadata, JSON Lines in the first row, a CSV or TSV file in a sidecar
OUT.identity.json that plain CSV readers never see (CSV on stdout carries none). Unreadable
files are reported on stderr, counted, and skipped. ID classes come from --classnames, else the checkpoint's, else ImageNet-1k's.

Thresholds: scores of different methods (and models, negatives, groups) live on different
scales, so a threshold only fits the scores it was made for. --threshold fpr95 takes the score
that keeps 95% of ID images from the --checkpoint (stored by `synood finetune`) or from
--calibration FILE (a saved `synood evaluate --format json` result); one made for another method
or model is refused."""

EPILOG = """[bold]Examples[/bold]

  synood score data/unknown --method neglabel --format csv > scores.csv

  synood score photos/ --profile tiny --classnames classes.txt --format jsonl | head

  synood score a.jpg b.png --threshold 0.5 -o scores.parquet

  find data -name '*.jpg' | synood score - --profile tiny --classnames classes.txt

  synood score new/ --checkpoint synood-in1k --threshold fpr95 -o new.parquet

  synood score new/ --method neglabel --threshold fpr95 --calibration result.json

  synood score --imglist benchmark_imglist/imagenet/test_ninco.txt --data-root data/images_largescale > ninco.csv

  synood score hf:ORG/NAME:test --image-column img -o scores.jsonl

  synood score new_images/ --checkpoint synood-in1k --format jsonl | jq 'select(.score < 0.3)'"""


@error_boundary
def score(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(None, help="Image folders, image files, image lists (.txt), hf:NAME[:SPLIT], save_to_disk folders or Parquet."),
    imglist: List[Path] = typer.Option([], "--imglist", help="OpenOOD image list (`relative/path label` lines), repeatable; paths resolve under --data-root."),
    data_root: Optional[Path] = inputs.DATA_ROOT,
    image_column: Optional[str] = inputs.IMAGE_COLUMN,
    profile: Optional[str] = common.SCORE_PROFILE,
    method: Optional[str] = common.METHOD,
    checkpoint: Optional[str] = common.CHECKPOINT,
    model: Optional[str] = common.MODEL,
    pretrained: Optional[str] = common.PRETRAINED,
    classnames: Optional[Path] = common.CLASSNAMES,
    lexicon: Optional[str] = common.LEXICON,
    groups: Optional[int] = common.GROUPS,
    neg_ratio: Optional[float] = common.NEG_RATIO,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="\\[default: from -o's extension, else csv].", **choices(SCORE_FORMATS)),
    output: str = typer.Option("-", "--output", "-o", help="Where rows go; - is stdout."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Also write is_ood = score < T: a number, or fpr95 / tprNN (the score keeping 95% / NN% of ID images, from --checkpoint or --calibration)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="A saved `synood evaluate --format json` result that --threshold fpr95 reads (same method and model)."),
    batch_size: Optional[int] = common.BATCH_SIZE,
    num_workers: Optional[int] = common.NUM_WORKERS,
    exact_preprocess: bool = common.EXACT_PREPROCESS,
    decode_device: str = common.DECODE_DEVICE,
    strict: bool = common.STRICT,
) -> None:
    from synood_cli.cli.output import RowWriter, pick_format
    from synood_cli.data.sources import open_inputs

    state = ctx.obj
    reporter = state.reporter()
    chosen = pick_format(fmt, output)
    if method and "," in method:
        raise UsageError("score takes one --method", hint="compare methods with `synood evaluate --compare a,b`")
    from synood_cli.thresholds import parse_threshold

    wanted = parse_threshold(threshold) if threshold is not None else None
    if calibration is not None and (wanted is None or wanted[0] != "tpr"):
        raise UsageError("--calibration goes with --threshold fpr95 (or tprNN)", hint="e.g. --threshold fpr95 --calibration result.json")
    specs = _stdin_specs(list(paths or [])) + [str(p) for p in imglist]
    if not specs:
        raise UsageError("nothing to score", hint="pass image folders or files, `-` for paths on stdin, --imglist FILE, or hf:NAME[:SPLIT]")
    specs, skipped = _drop_missing_stdin(specs, paths)
    # the inputs first: a wrong path is reported in a second, before torch and open_clip are imported
    sets, more = open_inputs(specs, inputs.input_options(data_root, image_column))
    skipped += more
    cfg = common.scoring_config(state, profile, method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint,
                                exact_preprocess, decode_device)
    chosen_threshold = _resolve_threshold(wanted, threshold, calibration, cfg)
    for s in sets:
        skipped += s.skipped
    class_names = common.class_names_from(classnames, reporter=reporter, checkpoint_config=cfg)
    from synood_cli.scoring import iter_scores, planned_identity, prepare_scoring, score_identity

    if chosen_threshold is not None:
        planned = planned_identity(cfg, cfg.method, class_names)
        chosen_threshold.check(planned, keys=list(planned))  # before the model loads: most mismatches cost nothing
    inputs.render_inputs([inputs.row_for("input", s) for s in sets], reporter)
    common.report_skipped(skipped, reporter)
    setup = prepare_scoring(cfg, class_names, reporter)
    identity = score_identity(setup, cfg.method)
    if chosen_threshold is not None:
        chosen_threshold.check(identity)  # and the rest (weights, negatives, preprocessing) before any image is scored
        reporter.info(f"threshold {chosen_threshold.value!r} (score < T is OOD) from {chosen_threshold.source}")

    columns = ["path", "score", "pred_class", "pred_name"] + (["is_ood"] if chosen_threshold is not None else [])
    meta = {"method": cfg.method, "model": identity["model"], "checkpoint": identity["checkpoint"], "identities": {cfg.method: identity}}
    if chosen_threshold is not None:
        meta["threshold"] = chosen_threshold.as_meta()
    from synood_cli.distributed import is_leader

    writer = RowWriter(chosen, output, columns, meta) if is_leader() else None  # torchrun/srun: every rank sees every row, rank 0 writes
    scored = failed = 0
    batches = (b for s in sets for b in iter_scores(setup, s.files, reporter, f"scoring {s.name}", reader=s.reader))
    for batch in batches:
        rows = []
        for path, value, p in zip(batch.paths, batch.scores[cfg.method].tolist(), batch.preds.tolist()):
            row = {"path": str(path), "score": value, "pred_class": int(p), "pred_name": class_names[p]}
            if chosen_threshold is not None:
                row["is_ood"] = chosen_threshold.is_ood(value)  # None (null, an empty cell) for a NaN score
            rows.append(row)
        if writer is not None:
            writer.write(rows)
        scored += len(rows)
        failed += len(batch.failures)
    if writer is not None:
        writer.close()
    from synood_cli.data.imglist import REASON_MISSING

    missing = sum(1 for _, reason in skipped if reason == REASON_MISSING)
    tail = f", {missing} listed but missing" if missing else ""
    reporter.info(f"scored {scored} images; {failed} unreadable, {len(skipped) - missing} not images{tail} (skipped)")
    common.check_nonfinite(writer.nonfinite if writer is not None else 0, reporter, strict)
    common.check_strict(strict, failed + len(skipped))


def _stdin_specs(paths: list[str]) -> list[str]:
    """`-` stands for the image paths on stdin, one per line (`find data -name '*.jpg' | synood score -`)."""
    if "-" not in paths:
        return paths
    import sys

    from synood_cli import distributed

    lines = None
    if distributed.is_leader():  # torchrun gives stdin to rank 0 only: it reads, every rank gets the list
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("`-` reads image paths from stdin, but stdin is a terminal", hint="pipe them in: find data -name '*.jpg' | synood score -")
        lines = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    lines = distributed.broadcast(lines, "reading image paths from stdin")
    out = []
    for p in paths:
        out += lines if p == "-" else [p]
    if not out:
        raise UsageError("no image paths on stdin", hint="pipe them in, one per line: find data -name '*.jpg' | synood score -")
    return out


def _drop_missing_stdin(specs: list[str], paths) -> tuple[list[str], list]:
    """Paths read from stdin that do not exist are reported and skipped, as missing list entries are."""
    if "-" not in (paths or []):
        return specs, []
    from synood_cli.data.imglist import REASON_MISSING

    named = set(paths)
    kept = [s for s in specs if s in named or Path(s).expanduser().exists() or ":" in s]
    missing = [(Path(s), REASON_MISSING) for s in specs if s not in kept]
    if not kept:
        raise UsageError(f"none of the {len(missing)} paths on stdin exists (first: {missing[0][0]})", hint="pass paths relative to the current folder, or absolute ones")
    return kept, missing


def _resolve_threshold(wanted, text, calibration, cfg):
    """--threshold VALUE, or fpr95/tprNN from --calibration FILE or the checkpoint (with the identity of the scores it fits)."""
    if wanted is None:
        return None
    from synood_cli.thresholds import Threshold, checkpoint_folder_and_id, from_calibration, from_checkpoint

    kind, value = wanted
    if kind == "value":
        return Threshold(value, f"--threshold {text}", cfg.method, None)
    if calibration is not None:
        return from_calibration(calibration, cfg.method, value)
    if cfg.checkpoint:
        folder, _ = checkpoint_folder_and_id(cfg.home, cfg.checkpoint)
        return from_checkpoint(folder, cfg.checkpoint, cfg.method, value)
    raise UsageError(
        f"--threshold {text} needs the ID scores it is computed from",
        hint="pass --checkpoint NAME (finetune stores one), or --calibration result.json from `synood evaluate ... --format json`",
    )
