"""`synood score`: one row per image to stdout (or a file), streamed as batches finish."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.render import error_boundary
from synood_cli.errors import UsageError

HELP = """Score images: higher score = more in-distribution.

Inputs: image folders and files, OpenOOD image lists, hf:NAME[:SPLIT], save_to_disk folders or
Parquet (rows are named SOURCE#ROW). Prints one row per image ([bold]path, score, pred_class, pred_name[/bold], plus [bold]is_ood[/bold] with
--threshold) as each batch finishes, so `| head` works. Unreadable files are reported on stderr,
counted, and skipped. ID classes come from --classnames, else the 1000 ImageNet-1k names."""

EPILOG = """[bold]Examples[/bold]

  synood score data/unknown --method neglabel --format csv > scores.csv

  synood score photos/ --profile tiny --classnames classes.txt --format jsonl | head

  synood score a.jpg b.png --threshold 0.5 -o scores.parquet

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
    profile: str = common.PROFILE,
    method: Optional[str] = common.METHOD,
    checkpoint: Optional[str] = common.CHECKPOINT,
    model: Optional[str] = common.MODEL,
    pretrained: Optional[str] = common.PRETRAINED,
    classnames: Optional[Path] = common.CLASSNAMES,
    lexicon: Optional[str] = common.LEXICON,
    groups: Optional[int] = common.GROUPS,
    neg_ratio: Optional[float] = common.NEG_RATIO,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv, tsv, jsonl or parquet \\[default: from -o's extension, else csv]."),
    output: str = typer.Option("-", "--output", "-o", help="Where rows go; - is stdout."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Also write is_ood = score < T."),
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
    specs = list(paths or []) + [str(p) for p in imglist]
    if not specs:
        raise UsageError("nothing to score", hint="pass image folders or files, --imglist FILE, or hf:NAME[:SPLIT]")
    # the inputs first: a wrong path is reported in a second, before torch and open_clip are imported
    sets, skipped = open_inputs(specs, inputs.input_options(data_root, image_column))
    cfg = common.scoring_config(state, profile, method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint,
                                     exact_preprocess, decode_device)
    for s in sets:
        skipped += s.skipped
    class_names = common.class_names_from(classnames, reporter=reporter, checkpoint_config=cfg)
    inputs.render_inputs([inputs.row_for("input", s) for s in sets], reporter)
    common.report_skipped(skipped, reporter)
    from synood_cli.scoring import iter_scores, prepare_scoring

    setup = prepare_scoring(cfg, class_names, reporter)

    columns = ["path", "score", "pred_class", "pred_name"] + (["is_ood"] if threshold is not None else [])
    writer = RowWriter(chosen, output, columns)
    scored = failed = 0
    batches = (b for s in sets for b in iter_scores(setup, s.files, reporter, f"scoring {s.name}", reader=s.reader))
    for batch in batches:
        rows = []
        for path, value, p in zip(batch.paths, batch.scores[cfg.method].tolist(), batch.preds.tolist()):
            row = {"path": str(path), "score": value, "pred_class": int(p), "pred_name": class_names[p]}
            if threshold is not None:
                row["is_ood"] = bool(value < threshold)
            rows.append(row)
        writer.write(rows)
        scored += len(rows)
        failed += len(batch.failures)
    writer.close()
    from synood_cli.data.imglist import REASON_MISSING

    missing = sum(1 for _, reason in skipped if reason == REASON_MISSING)
    tail = f", {missing} listed but missing" if missing else ""
    reporter.info(f"scored {scored} images; {failed} unreadable, {len(skipped) - missing} not images{tail} (skipped)")
    common.check_strict(strict, failed + len(skipped))
