"""`synood demo`: generate a sample dataset and run the whole pipeline on the tiny profile, offline."""

from __future__ import annotations

import typer

from synood_cli.cli.flags import TABLE_FORMATS, choices
from synood_cli.cli.render import err_console, error_boundary

HELP = """Generate a small sample dataset (3 shape classes as ID, stripes and noise as OOD) in the store and
run the whole pipeline on it with the tiny profile: prompt -> synthesize -> finetune -> evaluate
(NegLabel vs SynOOD). Offline, CPU, well under a minute.

Tiny random models give chance-level numbers: this shows the tool working end to end, not the
method's accuracy. Real numbers need --profile paper (CLIP ViT-B/16) and real data."""

EPILOG = """[bold]Examples[/bold]

  synood demo

  synood demo --format json"""

DISCLAIMER = (
    "note: the tiny profile uses small random-weight models, so these numbers are chance level. "
    "Real numbers need --profile paper (CLIP ViT-B/16, OpenAI weights) and real data."
)


@error_boundary
def demo(
    ctx: typer.Context,
    per_class: int = typer.Option(12, "--per-class", help="Images per generated class and set."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json.", **choices(TABLE_FORMATS)),
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics
    from synood_cli.demo_data import OOD_SETS, ensure_demo_dataset
    from synood_cli.pipeline import PipelineConfig, run_pipeline
    from synood_cli.store import Store

    check_format(fmt)
    state = ctx.obj
    reporter = state.reporter()
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
        {"id_images": len(ev.id.preds), "id_accuracy": ev.id_accuracy, "failed": failed},
    )
    err_console.print(f"artifacts: {result.prompts.ref} -> {result.synth.ref} -> {result.checkpoint.ref}")
    err_console.print(f"{failed} unreadable image(s) reported and skipped (the demo plants one on purpose)")
    err_console.print(f"[yellow]{DISCLAIMER}[/yellow]")
    err_console.print(f"try: synood evaluate --profile tiny --id {data.path / 'id'} --ood {data.path / 'ood' / 'noise'} --checkpoint checkpoint-demo --compare neglabel,synood")
