"""`synood score`: one row per image to stdout (or a file), streamed as batches finish."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.flags import SCORE_FORMATS, choices, in_panel
from synood_cli.cli.render import error_boundary
from synood_cli.errors import UsageError

HELP = """Score images: higher score = more in-distribution.

Inputs: image folders and files, OpenOOD image lists, hf:NAME[:SPLIT], save_to_disk folders or
Parquet (rows are named SOURCE#ROW); `-` reads image file paths from stdin, one per line, each
taken as written (spaces kept; folders, lists, hf: specs, FIFOs and devices named there are
reported and skipped; a line over 4096 bytes too). Prints one
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

  synood score a.jpg b.png --checkpoint synood-in1k -o scores.parquet

  find data -name '*.jpg' | synood score - --profile tiny --classnames classes.txt

  synood score new/ --checkpoint synood-in1k --threshold fpr95 -o new.parquet

  synood score new/ --method neglabel --threshold fpr95 --calibration result.json

  synood score --imglist benchmark_imglist/imagenet/test_ninco.txt --data-root data/images_largescale > ninco.csv

  synood score hf:ORG/NAME:test --image-column img -o scores.jsonl

  synood score new_images/ --checkpoint synood-in1k --threshold fpr95 --format jsonl | jq 'select(.is_ood)'"""


@error_boundary
def score(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(None, help="Image folders, image files, image lists (.txt), hf:NAME[:SPLIT], save_to_disk folders or Parquet."),
    imglist: List[Path] = typer.Option([], "--imglist", help="OpenOOD image list (`relative/path label` lines), repeatable; paths resolve under --data-root.", rich_help_panel="Inputs"),
    data_root: Optional[Path] = in_panel(inputs.DATA_ROOT, "Inputs"),
    image_column: Optional[str] = in_panel(inputs.IMAGE_COLUMN, "Inputs"),
    profile: Optional[str] = in_panel(common.SCORE_PROFILE, "Method and model"),
    method: Optional[str] = in_panel(common.METHOD, "Method and model"),
    checkpoint: Optional[str] = in_panel(common.CHECKPOINT, "Method and model"),
    model: Optional[str] = in_panel(common.MODEL, "Method and model"),
    pretrained: Optional[str] = in_panel(common.PRETRAINED, "Method and model"),
    classnames: Optional[Path] = in_panel(common.CLASSNAMES, "Inputs"),
    lexicon: Optional[str] = in_panel(common.LEXICON, "Method and model"),
    groups: Optional[int] = in_panel(common.GROUPS, "Method and model"),
    neg_ratio: Optional[float] = in_panel(common.NEG_RATIO, "Method and model"),
    pool: Optional[str] = in_panel(common.POOL, "Method and model"),
    negative_filter: Optional[str] = in_panel(common.NEGATIVE_FILTER, "Method and model"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="\\[default: from -o's extension (.csv, .tsv, .jsonl, .parquet), else csv]; another extension needs --format.", **choices(SCORE_FORMATS), rich_help_panel="Output"),
    output: str = typer.Option("-", "--output", "-o", help="Where rows go; - is stdout.", rich_help_panel="Output"),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Also write is_ood = score < T. fpr95 or tprNN: the score keeping 95% / NN% of ID images, from --checkpoint or --calibration. A number is a score, not a rate: each method's scores have their own scale.", rich_help_panel="Output"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="A saved `synood evaluate --format json` result that --threshold fpr95 reads (same method and model).", rich_help_panel="Output"),
    batch_size: Optional[str] = in_panel(common.BATCH_SIZE, "Performance"),
    num_workers: Optional[int] = in_panel(common.NUM_WORKERS, "Performance"),
    exact_preprocess: bool = in_panel(common.EXACT_PREPROCESS, "Performance"),
    decode_device: str = in_panel(common.DECODE_DEVICE, "Performance"),
    strict: bool = in_panel(common.STRICT, "Output"),
) -> None:
    from synood_cli.cli.output import RowWriter, pick_format
    from synood_cli.data.sources import open_inputs

    state = ctx.obj
    reporter = state.reporter()
    chosen = pick_format(fmt, output)
    if method and "," in method:
        raise UsageError("score takes one --method", hint="compare methods with `synood evaluate --compare a,b`")
    from synood_cli import thresholds

    wanted = thresholds.requested(threshold, calibration)
    specs = list(paths or []) + [str(p) for p in imglist]
    if not specs:
        raise UsageError("nothing to score", hint="pass image folders or files, `-` for paths on stdin, --imglist FILE, or hf:NAME[:SPLIT]")
    options = inputs.input_options(data_root, image_column)
    stdin_files, skipped = _stdin_files(specs, options.data_root)
    # the inputs first: a wrong path is reported in a second, before torch and open_clip are imported
    sets, more = open_inputs(specs, options, stdin_files)
    skipped += more
    cfg = common.scoring_config(state, profile, method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint,
                                exact_preprocess, decode_device, pool, negative_filter)
    chosen_threshold = thresholds.resolve(wanted, threshold, calibration, cfg.method, cfg.checkpoint, cfg.home)
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
    scored = failed = flagged = 0
    highest = float("-inf")
    batches = (b for s in sets for b in iter_scores(setup, s.files, reporter, f"scoring {s.name}", reader=s.reader))
    for batch in batches:
        rows = []
        for path, value, p in zip(batch.paths, batch.scores[cfg.method].tolist(), batch.preds.tolist()):
            row = {"path": str(path), "score": value, "pred_class": int(p), "pred_name": class_names[p]}
            if chosen_threshold is not None:
                row["is_ood"] = chosen_threshold.is_ood(value)  # None (null, an empty cell) for a NaN score
                flagged += bool(row["is_ood"])
                highest = max(highest, value)
            rows.append(row)
        if writer is not None:
            writer.write(rows)
        scored += len(rows)
        failed += len(batch.failures)
    if writer is not None:
        writer.close()
        if output != "-":
            reporter.info(f"wrote {scored} rows ({chosen}) to {output}")
    if chosen_threshold is not None and wanted[0] == "value":
        _check_literal_threshold(threshold, chosen_threshold.value, flagged, highest, scored, reporter)
    from synood_cli.data.imglist import REASON_MISSING
    from synood_cli.data.sources import REASON_NO_FILE

    missing = sum(1 for _, reason in skipped if reason == REASON_MISSING or reason.startswith(REASON_NO_FILE))
    tail = f", {missing} listed but missing" if missing else ""
    reporter.info(f"scored {scored} images; {failed} unreadable, {len(skipped) - missing} not images{tail} (skipped)")
    common.check_nonfinite(writer.nonfinite if writer is not None else 0, reporter, strict)
    common.check_strict(strict, failed + len(skipped))


def _check_literal_threshold(text: str, value: float, flagged: int, highest: float, scored: int, reporter) -> None:
    """`--threshold 0.95` on scores that all lie below 0.01 flags every image: a TPR was meant, a score taken."""
    if scored >= 2 and flagged == scored:
        rate = f"tpr{100 * value:g}" if 0 < value <= 1 else "fpr95"
        reporter.warn(
            f"--threshold {text} called all {scored} images OOD: every score is below it (the highest is {highest!r}). "
            f"A number is a score on this method's scale; to keep a share of ID images write --threshold {rate} "
            "with --checkpoint or --calibration FILE"
        )


def _stdin_files(paths: list[str], data_root) -> tuple[list | None, list]:
    """`-` stands for the image files named on stdin, one per line (`find data -name '*.jpg' | synood score -`).

    Returns (files, skipped) as `read_listed_files` reads them (data/sources.py); (None, []) without `-`.
    """
    if "-" not in paths:
        return None, []
    import sys

    from synood_cli import distributed
    from synood_cli.data.sources import read_listed_files

    listed = None
    if distributed.is_leader():  # torchrun gives stdin to rank 0 only: it reads, every rank gets the list
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("`-` reads image paths from stdin, but stdin is a terminal", hint="pipe them in: find data -name '*.jpg' | synood score -")
        listed = read_listed_files(getattr(sys.stdin, "buffer", sys.stdin), data_root)
    files, skipped = distributed.broadcast(listed, "reading image paths from stdin")
    if not files and all(p == "-" for p in paths):
        if not skipped:
            raise UsageError("no image paths on stdin", hint="pipe them in, one per line: find data -name '*.jpg' | synood score -")
        name, reason = skipped[0]
        raise UsageError(f"none of the {len(skipped)} names on stdin is a readable image file (first: {name}: {reason})",
                         hint="pipe image file paths, one per line, relative to the current folder or absolute")
    return files, skipped
