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


def render_metrics(per_set: dict, average: dict, fmt: str, title: str, extra: dict | None = None) -> None:
    """Write the metrics to stdout in `fmt` (table, csv or json)."""
    extra = extra or {}
    if fmt == "json":
        print(json.dumps({"title": title, "ood": per_set, "average": average, **extra}, indent=2))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["set"] + [k for k, _ in COLUMNS] + ["n_id", "n_ood"])
        for name, m in list(per_set.items()) + [("average", average)]:
            w.writerow([name] + [repr(float(m[k])) for k, _ in COLUMNS] + [int(m.get("n_id", 0)), int(m.get("n_ood", 0))])
        return
    table = Table(title=title, title_justify="left")
    table.add_column("OOD set")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("images", justify="right")
    for name, m in per_set.items():
        table.add_row(name, *[f"{100 * m[k]:.2f}" for k, _ in COLUMNS], str(int(m["n_ood"])))
    if len(per_set) > 1 or per_set:
        table.add_row("[bold]Average[/bold]", *[f"[bold]{100 * average[k]:.2f}[/bold]" for k, _ in COLUMNS], "", end_section=True)
    Console(highlight=False).print(table)
    notes = []
    if extra.get("id_images") is not None:
        notes.append(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        notes.append(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    notes.append("FPR95: OOD accepted at 95% ID recall (MOS/NegLabel/SynOOD); FPR95 OOD+: ID rejected at 95% OOD recall (OpenOOD v1.5)")
    for n in notes:
        print(n)
