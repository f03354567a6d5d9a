"""`synood demo`: generate a sample dataset and run the whole pipeline on the tiny profile, offline."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli.flags import TABLE_FORMATS, choices
from synood_cli.cli.render import err_console, error_boundary, esc

HELP = """Run the whole method offline on a CPU in under a minute: prompt -> synthesize -> finetune ->
evaluate (MCM vs NegLabel vs SynOOD), on the generated world with the models the project trained on
it and ships (the default, docs/world.md), or on the tiny random-weight models (--profile tiny).

The world: 20 ID kinds of procedural 64 px objects on 12 contexts; near-OOD kinds one detail away
from an ID kind, far-OOD kinds, textures and empty contexts. Its CLIP, its inpainting model and its
context describer were trained by the project; their numbers mean something at the world's scale.
The tiny profile's random weights give numbers that say nothing about the method.
Writes ROC curves and histograms to STORE/reports/demo/roc.png and points at the synthesis preview."""

EPILOG = """[bold]Examples[/bold]

  synood demo

  synood demo --profile tiny

  synood demo --format json"""

DISCLAIMER = (
    "note: the tiny profile's models have random weights, so its numbers can land far from 50% AUROC in either "
    "direction and say nothing about the method. Real numbers need --profile default (or paper) with real weights "
    "and data; the default profile also needs WordNet (`synood env` says whether it is found and how to get it)."
)
WORLD_NOTE = (
    "note: the world's models are small and trained on a CPU (docs/world.md): ID top-1 is about 70%, and near-OOD "
    "kinds (one detail from an ID kind) stay hard for every score here. The SynOOD rows come from 80 synthesized "
    "images; docs/world.md gives the figures over several seeds."
)
DEMO_PROFILES = ("world", "tiny")


@error_boundary
def demo(
    ctx: typer.Context,
    profile: str = typer.Option("world", "--profile", "-p", help="world (the generated world and its trained models) or tiny (random weights, faster).", **choices(DEMO_PROFILES, "<profile>")),
    per_class: int = typer.Option(12, "--per-class", help="Images per class and set of the tiny profile's sample dataset."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json.", **choices(TABLE_FORMATS)),
    plot: Optional[Path] = typer.Option(None, "--plot", help="ROC curves and histograms (.png, .pdf, .svg) \\[default: STORE/reports/demo/roc.png]."),
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics
    from synood_cli.errors import UsageError
    from synood_cli.pipeline import PipelineConfig, run_pipeline
    from synood_cli.store import Store

    check_format(fmt)
    if profile not in DEMO_PROFILES:
        raise UsageError(f"--profile {profile!r} has no demo", hint=f"use one of {', '.join(DEMO_PROFILES)}")
    if plot is not None:
        from synood_cli.metrics import plot_format

        plot_format(plot)
    state = ctx.obj
    reporter = state.reporter()
    err_console.print(f"store: {esc(state.home)} (--home or SYNOOD_HOME to change)", soft_wrap=True)
    store = Store(state.home)
    if profile == "world":
        from synood_cli.demo_data import WORLD_OOD_SETS, ensure_world_demo_dataset

        data = ensure_world_demo_dataset(store, seed=state.seed)
        root = data.path / "world"
        reporter.info(f"the generated world: {root} (store name demo-world; docs/world.md)")
        train, id_val, ood = root / "id" / "train", root / "id" / "val", [(n, root / "ood" / n) for n in WORLD_OOD_SETS]
        methods, name, title = "mcm,neglabel,synood", "demo", "synood demo · MCM vs NegLabel vs SynOOD · world profile"
    else:
        from synood_cli.demo_data import OOD_SETS, ensure_demo_dataset

        data = ensure_demo_dataset(store, per_class=per_class, seed=state.seed)
        reporter.info(f"sample dataset: {data.path} (store name demo-data)")
        train, id_val, ood = data.path / "train", data.path / "id", [(n, data.path / "ood" / n) for n in OOD_SETS]
        methods, name, title = "neglabel,synood", "demo-tiny", "synood demo · NegLabel vs SynOOD · tiny profile"
    cfg = PipelineConfig(
        train=train, id_val=id_val, ood=ood, home=state.home, profile=profile, per_class=4, seed=state.seed,
        device=state.device, precision=state.precision, name=name, methods=methods,
    )
    result = run_pipeline(cfg, reporter)
    ev = result.evaluation
    failed = len(ev.id.failures) + sum(len(s.failures) for s in ev.ood.values())
    render_metrics(
        {m: (ev.metrics[m], ev.average[m]) for m in ev.methods}, fmt, title,
        {"id_images": len(ev.id.preds), "id_accuracy": ev.id_accuracy, "failed": failed, "thresholds": pipeline_thresholds(ev)},
    )
    err_console.print(f"artifacts: {result.prompts.ref} -> {result.synth.ref} -> {result.checkpoint.ref}", soft_wrap=True)
    pictures_title = "synood demo · world profile" if profile == "world" else "synood demo · tiny profile (random weights)"
    report_pictures(state, result, name, plot, pictures_title)
    err_console.print(f"{failed} unreadable image(s) reported and skipped (the demo plants one on purpose)")
    err_console.print(f"[yellow]{WORLD_NOTE if profile == 'world' else DISCLAIMER}[/yellow]")
    first_ood = ood[0][1] if profile == "world" else ood[1][1]
    try_line = " ".join(shlex.quote(a) for a in [
        "synood", "evaluate", "--profile", profile, "--id", str(id_val), "--ood", str(first_ood),
        "--checkpoint", f"checkpoint-{name}", "--compare", methods,
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
