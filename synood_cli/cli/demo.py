"""`synood demo`: generate a sample dataset and run the whole pipeline on the tiny profile, offline."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli.flags import TABLE_FORMATS, choices
from synood_cli.cli.render import err_console, error_boundary, esc

HELP = """Generate a small sample dataset (3 shape classes as ID, stripes and noise as OOD) in the store and
run the whole pipeline on it with the tiny profile: prompt -> synthesize -> finetune -> evaluate
(NegLabel vs SynOOD). Offline, CPU, well under a minute.

Tiny random models give numbers that say nothing about the method (they can land far from 50%
AUROC either way): this shows the tool working end to end. Real numbers need --profile default
or paper (CLIP ViT-B/16) with real data; the default profile needs WordNet (see `synood env`).
Writes ROC curves and histograms to STORE/reports/demo/roc.png and points at the synthesis preview."""

EPILOG = """[bold]Examples[/bold]

  synood demo

  synood demo --format json"""

DISCLAIMER = (
    "note: the tiny profile's models have random weights, so its numbers can land far from 50% AUROC in either "
    "direction and say nothing about the method. Real numbers need --profile default (or paper) with real weights "
    "and data; the default profile also needs WordNet (`synood env` says whether it is found and how to get it)."
)


@error_boundary
def demo(
    ctx: typer.Context,
    per_class: int = typer.Option(12, "--per-class", help="Images per generated class and set."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json.", **choices(TABLE_FORMATS)),
    plot: Optional[Path] = typer.Option(None, "--plot", help="ROC curves and histograms (.png, .pdf, .svg) \\[default: STORE/reports/demo/roc.png]."),
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics
    from synood_cli.demo_data import OOD_SETS, ensure_demo_dataset
    from synood_cli.pipeline import PipelineConfig, run_pipeline
    from synood_cli.store import Store

    check_format(fmt)
    if plot is not None:
        from synood_cli.metrics import plot_format

        plot_format(plot)
    state = ctx.obj
    reporter = state.reporter()
    err_console.print(f"store: {esc(state.home)} (--home or SYNOOD_HOME to change)", soft_wrap=True)
    data = ensure_demo_dataset(Store(state.home), per_class=per_class, seed=state.seed)
    reporter.info(f"sample dataset: {data.path} (store name demo-data)")
    cfg = PipelineConfig(
        train=data.path / "train", id_val=data.path / "id", ood=[(n, data.path / "ood" / n) for n in OOD_SETS],
        home=state.home, profile="tiny", per_class=4, seed=state.seed, device=state.device, precision=state.precision, name="demo",
    )
    result = run_pipeline(cfg, reporter)
    ev = result.evaluation
    failed = len(ev.id.failures) + sum(len(s.failures) for s in ev.ood.values())
    render_metrics(
        {m: (ev.metrics[m], ev.average[m]) for m in ev.methods}, fmt, "synood demo · NegLabel vs SynOOD · tiny profile",
        {"id_images": len(ev.id.preds), "id_accuracy": ev.id_accuracy, "failed": failed, "thresholds": pipeline_thresholds(ev)},
    )
    err_console.print(f"artifacts: {result.prompts.ref} -> {result.synth.ref} -> {result.checkpoint.ref}", soft_wrap=True)
    report_pictures(state, result, "demo", plot, "synood demo · tiny profile (random weights)")
    err_console.print(f"{failed} unreadable image(s) reported and skipped (the demo plants one on purpose)")
    err_console.print(f"[yellow]{DISCLAIMER}[/yellow]")
    try_line = " ".join(shlex.quote(a) for a in [
        "synood", "evaluate", "--profile", "tiny", "--id", str(data.path / "id"), "--ood", str(data.path / "ood" / "noise"),
        "--checkpoint", "checkpoint-demo", "--compare", "neglabel,synood",
    ])
    # one copyable line whatever the terminal width: plain print, never wrapped by Rich
    print(f"try: {try_line}", file=sys.stderr, flush=True)


def pipeline_thresholds(ev) -> dict:
    """Per method, the score at 95% ID TPR on the evaluation's ID set (the table footer)."""
    from synood_cli.metrics import thresholds_at

    return {m: thresholds_at(ev.id.scores[m]) for m in ev.methods}


def report_pictures(state, result, name: str, plot: Optional[Path], title: str) -> Path:
    """ROC curves (FPR95 marked) and histograms next to the run's results; say where, and where the synthesis preview is."""
    from synood_cli.metrics import plot_roc

    ev = result.evaluation
    curves = {(k, m): (ev.id.scores[m], v.scores[m]) for m in ev.methods for k, v in ev.ood.items()}
    path = plot if plot is not None else state.home / "reports" / name / "roc.png"
    plot_roc(curves, path, title=f"{title} · {', '.join(ev.methods)} · {result.checkpoint.ref}")
    err_console.print(f"plots: {esc(path)} (ROC curves with the FPR95 points, score histograms)", soft_wrap=True)
    preview = result.synth.path / "preview.png"
    if preview.is_file():
        err_console.print(f"synthesis preview: {esc(preview)} (source | synthesized pairs)", soft_wrap=True)
    return path
