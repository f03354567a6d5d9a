"""`synood demo`: generate a sample dataset and evaluate it on the tiny profile, offline."""

from __future__ import annotations

import typer

from synood_cli.cli.render import err_console, error_boundary

HELP = """Generate a small sample dataset (3 shape classes as ID, stripes and noise as OOD) in the store
and evaluate NegLabel on it with the tiny profile: offline, CPU, seconds.

Tiny random models give chance-level numbers: this shows the tool working end to end, not the
method's accuracy. Real numbers need --profile paper (CLIP ViT-B/16) and real data."""

EPILOG = """[bold]Examples[/bold]

  synood demo

  synood demo --method mcm --format json"""

DISCLAIMER = (
    "note: the tiny profile uses small random-weight models, so these numbers are chance level. "
    "Real numbers need --profile paper (CLIP ViT-B/16, OpenAI weights) and real data."
)


@error_boundary
def demo(
    ctx: typer.Context,
    method: str = typer.Option("neglabel", "--method", "-m", help="Score method to evaluate."),
    per_class: int = typer.Option(12, "--per-class", help="Images per generated class."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    from synood_cli.cli.tables import render_metrics
    from synood_cli.data.folders import scan_folder
    from synood_cli.demo_data import OOD_SETS, ensure_demo_dataset
    from synood_cli.scoring import ScoringConfig, evaluate, prepare_scoring
    from synood_cli.store import Store

    state = ctx.obj
    reporter = state.reporter()
    store = Store(state.home)
    data = ensure_demo_dataset(store, per_class=per_class, seed=state.seed)
    reporter.info(f"sample dataset: {data.path} (store name demo-data)")
    id_set = scan_folder(data.path / "id", name="shapes")
    ood_sets = [scan_folder(data.path / "ood" / n) for n in OOD_SETS]
    cfg = ScoringConfig(home=state.home, profile="tiny", method=method, seed=state.seed, device=state.device, precision=state.precision).resolved()
    setup = prepare_scoring(cfg, id_set.class_names, reporter)
    result = evaluate(setup, id_set, ood_sets, reporter)
    failed = len(result.id.failures) + sum(len(s.failures) for s in result.ood.values())
    render_metrics(
        result.metrics, result.average, fmt, f"synood demo · {method} · tiny profile",
        {"id_images": len(result.id.scores), "id_accuracy": result.id_accuracy, "failed": failed},
    )
    err_console.print(f"{failed} unreadable image(s) reported and skipped (the demo plants one on purpose)")
    err_console.print(f"[yellow]{DISCLAIMER}[/yellow]")
    err_console.print(f"try: synood evaluate --profile tiny --id {data.path / 'id'} --ood {data.path / 'ood' / 'noise'}")
