"""Render evaluation results: a Rich table (percent, 2 decimals), CSV or JSON (fractions)."""

from __future__ import annotations

import csv
import json
import sys

from rich.console import Console
from rich.table import Table

COLUMNS = [
    ("fpr95", "FPR95↓"),
    ("auroc", "AUROC↑"),
    ("aupr_in", "AUPR-IN↑"),
    ("aupr_out", "AUPR-OUT↑"),
    ("fpr95_ood_positive", "FPR95 OOD+↓"),
]
FORMATS = ("table", "csv", "json")


def check_format(fmt: str) -> None:
    """Refuse an unknown --format before any work (not after a long run)."""
    if fmt not in FORMATS:
        from synood_cli.errors import UsageError

        raise UsageError(f"unknown --format {fmt!r}", hint="use table, csv or json")


FPR_NOTE = "FPR95: OOD accepted at 95% ID recall (MOS/NegLabel/SynOOD); FPR95 OOD+: ID rejected at 95% OOD recall (OpenOOD v1.5)"


def render_metrics(by_method: dict[str, tuple[dict, dict]], fmt: str, title: str, extra: dict | None = None) -> None:
    """Write metrics to stdout in `fmt`; `by_method` maps a method to (per-set metrics, their average)."""
    extra = extra or {}
    if fmt == "json":
        if len(by_method) == 1:
            (method, (per_set, average)), = by_method.items()
            body = {"method": method, "ood": per_set, "average": average}
        else:
            body = {"methods": {m: {"ood": p, "average": a} for m, (p, a) in by_method.items()}}
        print(json.dumps({"title": title, **body, **extra}, indent=2))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["method", "set"] + [k for k, _ in COLUMNS] + ["n_id", "n_ood"])
        for method, (per_set, average) in by_method.items():
            for name, m in list(per_set.items()) + [("average", average)]:
                w.writerow([method, name] + [repr(float(m[k])) for k, _ in COLUMNS] + [int(m.get("n_id", 0)), int(m.get("n_ood", 0))])
        return
    table = Table(title=title, title_justify="left")
    several = len(by_method) > 1
    if several:
        table.add_column("method")
    table.add_column("OOD set")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("images", justify="right")
    for method, (per_set, average) in by_method.items():
        lead = [method] if several else []
        for name, m in per_set.items():
            table.add_row(*lead, name, *[f"{100 * m[k]:.2f}" for k, _ in COLUMNS], str(int(m["n_ood"])))
        table.add_row(*lead, "[bold]Average[/bold]", *[f"[bold]{100 * average[k]:.2f}[/bold]" for k, _ in COLUMNS], "", end_section=True)
    Console(highlight=False).print(table)
    if extra.get("id_images") is not None:
        print(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        print(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    print(FPR_NOTE)
