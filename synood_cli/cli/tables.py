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
    from rich.markup import escape

    table = Table(title=escape(title), title_justify="left")
    several = len(by_method) > 1
    if several:
        table.add_column("method")
    table.add_column("OOD set")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("images", justify="right")
    for method, (per_set, average) in by_method.items():
        lead = [escape(method)] if several else []
        for name, m in per_set.items():
            table.add_row(*lead, escape(name), *[f"{100 * m[k]:.2f}" for k, _ in COLUMNS], str(int(m["n_ood"])))
        table.add_row(*lead, "[bold]Average[/bold]", *[f"[bold]{100 * average[k]:.2f}[/bold]" for k, _ in COLUMNS], "", end_section=True)
    Console(highlight=False).print(table)
    if extra.get("id_images") is not None:
        print(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        print(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    print(FPR_NOTE)


def wide_console(stderr: bool = False) -> Console:
    """A console that does not fold wide tables into 80 columns when writing to a file or pipe."""
    console = Console(highlight=False, stderr=stderr)
    if not console.is_terminal and console.width < 160:
        console = Console(highlight=False, stderr=stderr, width=160)
    return console


def _cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    return f"[bold]{value:.2f}[/bold]" if bold else f"{value:.2f}"


def render_suite(suite, by_method: dict[str, tuple[dict, dict]], fmt: str, extra: dict, reference: bool) -> None:
    """A benchmark in the papers' layout: one row per method, FPR95 and AUROC per set, then the average.

    Our rows are in percent from this run; with `reference`, the published rows follow (marked "paper").
    Sets missing from this run (--allow-partial) are left out of our rows and of the average.
    """
    fpr_key = suite.fpr_key
    keys = [s.key for s in suite.ood]
    labels = {s.key: s.label for s in suite.ood}
    refs = suite.references if reference else {}
    missing = [k for k in keys if not any(k in p for p, _ in by_method.values())]
    if fmt == "json":
        body = {
            "benchmark": suite.name,
            "title": suite.title,
            "fpr95_convention": fpr_key,
            "methods": {m: {"ood": p, "average": a} for m, (p, a) in by_method.items()},
            "missing_sets": missing,
            **extra,
        }
        if reference:
            body["reference"] = {
                m: {k: {"fpr95": v[0], "auroc": v[1]} for k, v in r.items()} for m, r in refs.items()
            }
            body["reference_note"] = suite.reference_note
        print(json.dumps(body, indent=2))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["source", "method", "set", "fpr95", "auroc", "aupr_in", "aupr_out", "n_id", "n_ood"])
        for method, (per_set, average) in by_method.items():
            for name, m in list(per_set.items()) + [("average", average)]:
                w.writerow(["ours", method, name, repr(100 * float(m[fpr_key])), repr(100 * float(m["auroc"])),
                            repr(100 * float(m["aupr_in"])), repr(100 * float(m["aupr_out"])), int(m.get("n_id", 0)), int(m.get("n_ood", 0))])
        for method, r in refs.items():
            for name, (fpr, auroc) in r.items():
                w.writerow(["paper", method, name, "" if fpr is None else fpr, "" if auroc is None else auroc, "", "", "", ""])
        return
    table = Table(title=f"{suite.title} · {extra.get('model', '')}".rstrip(" ·"), title_justify="left")
    table.add_column("method", no_wrap=True)
    fpr_label = "FPR95↓" if fpr_key == "fpr95" else "FPR95 OOD+↓"
    for k in keys + ["average"]:
        name = labels.get(k, "Average")
        table.add_column(f"{name}\n{fpr_label}", justify="right", no_wrap=True)
        table.add_column(f"{name}\nAUROC↑", justify="right", no_wrap=True)
    for method, (per_set, average) in by_method.items():
        cells = []
        for k in keys:
            m = per_set.get(k)
            cells += [_cell(100 * m[fpr_key]) if m else "–", _cell(100 * m["auroc"]) if m else "–"]
        cells += [_cell(100 * average[fpr_key], True), _cell(100 * average["auroc"], True)]
        table.add_row(f"{method} (this run)", *cells, end_section=method == list(by_method)[-1] and bool(refs))
    for method, r in refs.items():
        cells = []
        for k in keys + ["average"]:
            fpr, auroc = r.get(k, (None, None))
            cells += [_cell(fpr), _cell(auroc)]
        table.add_row(f"[dim]{method} (paper)[/dim]", *cells)
    wide_console().print(table)
    if missing:
        print(f"not evaluated (--allow-partial): {', '.join(labels[k] for k in missing)}; the average covers the other sets")
    if extra.get("id_images") is not None:
        print(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        print(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    if fpr_key == "fpr95":
        print("FPR95: OOD accepted at 95% ID recall (MOS/NegLabel/SynOOD convention)")
    else:
        print("FPR95 OOD+: ID rejected at 95% OOD recall (OpenOOD v1.5 convention)")
    if refs:
        print(f"paper rows: {suite.reference_note}")
