"""Render evaluation results: a Rich table (percent, 2 decimals), CSV or JSON (fractions)."""

from __future__ import annotations

import csv
import json
import sys

from rich import box
from rich.console import Console
from rich.table import Table

from synood_cli.cli.render import esc

COLUMNS = [
    ("fpr95", "FPR95↓"),
    ("auroc", "AUROC↑"),
    ("aupr_in", "AUPR-IN↑"),
    ("aupr_out", "AUPR-OUT↑"),
    ("fpr95_ood_positive", "FPR95 OOD+↓"),
]
FORMATS = ("table", "csv", "json")
# headers folded onto two lines when the table is too wide for the terminal: a number is never cut
FOLDED = {"AUPR-IN↑": "AUPR\nIN↑", "AUPR-OUT↑": "AUPR\nOUT↑", "FPR95 OOD+↓": "FPR95\nOOD+↓"}


def check_format(fmt: str) -> None:
    """Refuse an unknown --format before any work (not after a long run)."""
    if fmt not in FORMATS:
        from synood_cli.errors import UsageError

        raise UsageError(f"unknown --format {fmt!r}", hint="use table, csv or json")


FPR_NOTE = "FPR95: OOD accepted at 95% ID recall (MOS/NegLabel/SynOOD); FPR95 OOD+: ID rejected at 95% OOD recall (OpenOOD v1.5)"


def _split_extra(extra: dict) -> tuple[dict, dict]:
    """(thresholds per method, everything else) from the `extra` dict the commands pass."""
    rest = dict(extra)
    return rest.pop("thresholds", None) or {}, rest


def threshold_lines(thresholds: dict, checkpoint_threshold: dict | None = None) -> list[str]:
    """Footer lines: per TPR, each method's threshold (score < T is OOD), full precision to copy."""
    lines = []
    tprs = list(dict.fromkeys(t for per in thresholds.values() for t in per))
    for t in tprs:
        cells = [f"{m or 'score'} {per[t]!r}" for m, per in thresholds.items() if t in per]
        lines.append(f"threshold at {100 * float(t):g}% ID TPR (score < T is OOD): " + ", ".join(cells))
    if checkpoint_threshold:
        c = checkpoint_threshold
        lines.append(f"checkpoint threshold ({c['method']}, {100 * c['tpr']:g}% of {c['n_id']} {c['split']} ID images kept): {c['threshold']!r}")
    return lines


def render_metrics(by_method: dict, fmt: str, title: str, extra: dict | None = None) -> None:
    """Write metrics to stdout in `fmt`; `by_method` maps a method (None: not known) to (per-set metrics, their average).

    `extra["thresholds"]` maps a method to {TPR: threshold}; it goes into the footer and the JSON.
    """
    thresholds, extra = _split_extra(extra or {})
    if fmt == "json":
        if len(by_method) == 1:
            (method, (per_set, average)), = by_method.items()
            body = {"method": method, "ood": per_set, "average": average, "thresholds": thresholds.get(method, {})}
        else:
            body = {"methods": {m: {"ood": p, "average": a, "thresholds": thresholds.get(m, {})} for m, (p, a) in by_method.items()}}
        print(json.dumps({"title": title, **body, **extra}, indent=2))
        return
    named = any(m is not None for m in by_method)  # score files that name no method get no method column
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow((["method"] if named else []) + ["set"] + [k for k, _ in COLUMNS] + ["n_id", "n_ood"])
        for method, (per_set, average) in by_method.items():
            for name, m in list(per_set.items()) + [("average", average)]:
                w.writerow(([method] if named else []) + [name] + [repr(float(m[k])) for k, _ in COLUMNS] + [int(m.get("n_id", 0)), int(m.get("n_ood", 0))])
        return
    console = wide_console()
    console.print(title, markup=False)  # above the table, not as its title: Rich wraps a title to the table's width
    several = len(by_method) > 1
    rows = []  # (method, set name, cells, images, is the average)
    for method, (per_set, average) in by_method.items():
        rows += [(method, name, [f"{100 * m[k]:.2f}" for k, _ in COLUMNS], str(int(m["n_ood"])), False) for name, m in per_set.items()]
        rows.append((method, "Average", [f"{100 * average[k]:.2f}" for k, _ in COLUMNS], "", True))

    def table(compact: bool) -> Table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False) if compact else Table()
        if several:
            t.add_column("method", no_wrap=True)
        t.add_column("OOD set", no_wrap=True)
        for _, label in COLUMNS:
            t.add_column(FOLDED.get(label, label) if compact else label, justify="right", no_wrap=True)
        t.add_column("images", justify="right", no_wrap=True)
        for i, (method, name, cells, images, avg) in enumerate(rows):
            b = (lambda x: f"[bold]{x}[/bold]") if avg else str
            last = avg and i < len(rows) - 1
            t.add_row(*([esc(method)] if several else []), b(esc(name)), *[b(c) for c in cells], images, end_section=last)
        return t

    def stacked() -> list[str]:
        out = []
        for method, name, cells, images, _ in rows:
            out.append(" · ".join(x for x in [method if several else None, name, images and f"{images} images"] if x))
            out += [f"  {label:<12} {c:>6}" for (_, label), c in zip(COLUMNS, cells)]
        return out

    print_fitting(console, [lambda: table(False), lambda: table(True)], stacked)
    if extra.get("id_images") is not None:
        print(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        print(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    for line in threshold_lines(thresholds, extra.get("checkpoint_threshold")):
        print(line)
    for line in extra.get("notes", []):
        print(line)
    print(FPR_NOTE)


def wide_console(stderr: bool = False) -> Console:
    """A console that never cuts a table when writing to a file or pipe: it is as wide as the table needs.

    Rich falls back to 80 columns without a terminal and truncates headers (`AUPR-I…`); tables
    are drawn at their natural width (no `expand`), so a wide console only removes the limit.
    """
    console = Console(highlight=False, stderr=stderr)
    if not console.is_terminal:
        console = Console(highlight=False, stderr=stderr, width=max(console.width, 1000))
    return console


def print_fitting(console: Console, layouts: list, stacked, squeeze: bool = False) -> None:
    """Print the first table in `layouts` whose natural width fits the console, else `stacked()`'s plain lines.

    Rich squeezes a too-wide table by cutting cells (`100.…`): a metric table must never lose a
    digit, so a narrower layout replaces it instead, down to one value per line. With `squeeze`
    a table may wrap its text columns (its counts are `no_wrap`): it fits when its words do.
    """
    for build in layouts:
        table = build()
        measured = console.measure(table, options=console.options.update_width(10**6))  # unclamped width
        if (measured.minimum if squeeze else measured.maximum) <= console.width:
            console.print(table)
            return
    for line in stacked():
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # soft: the terminal wraps, nothing is cut


def _cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    return f"[bold]{value:.2f}[/bold]" if bold else f"{value:.2f}"


def render_suite(suite, by_method: dict[str, tuple[dict, dict]], fmt: str, extra: dict, reference: bool) -> None:
    """A benchmark in the papers' layout: one row per method, FPR95 and AUROC per set, then the average.

    Our rows are in percent from this run; with `reference`, the published rows follow (marked "paper").
    Sets missing from this run (--allow-partial) are left out of our rows and of the average.
    """
    thresholds, extra = _split_extra(extra)
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
            "methods": {m: {"ood": p, "average": a, "thresholds": thresholds.get(m, {})} for m, (p, a) in by_method.items()},
            "missing_sets": missing,
            **extra,
        }
        if reference:
            body["reference"] = {
                m: {k: {"fpr95": v[0], "auroc": v[1]} for k, v in r.items()} for m, r in refs.items()
            }
            body["reference_note"] = suite.reference_note
            body["reference_test_time_adaptive"] = sorted(m for m in refs if m in suite.test_time_adaptive)
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
                source = "paper (test-time adaptive)" if method in suite.test_time_adaptive else "paper"
                w.writerow([source, method, name, "" if fpr is None else fpr, "" if auroc is None else auroc, "", "", "", ""])
        return
    console = wide_console()
    console.print(f"{suite.title} · {extra.get('model', '')}".rstrip(" ·"), markup=False)
    fpr_label = "FPR95↓" if fpr_key == "fpr95" else "FPR95 OOD+↓"
    sets = [(k, labels.get(k, "Average")) for k in keys + ["average"]]
    rows = []  # (row label, {set key: (fpr cell, auroc cell)}, ours)
    for method, (per_set, average) in by_method.items():
        cells = {k: (_cell(100 * m[fpr_key]), _cell(100 * m["auroc"])) if (m := per_set.get(k)) else ("–", "–") for k in keys}
        cells["average"] = (_cell(100 * average[fpr_key]), _cell(100 * average["auroc"]))
        rows.append((f"{method} (this run)", cells, True))
    for method, r in refs.items():
        tag = "paper, test-time adaptive" if method in suite.test_time_adaptive else "paper"
        rows.append((f"{method} ({tag})", {k: tuple(_cell(v) for v in r.get(k, (None, None))) for k, _ in sets}, False))

    def styled(label: str, ours: bool) -> str:
        return esc(label) if ours else f"[dim]{esc(label)}[/dim]"

    def wide() -> Table:
        table = Table()
        table.add_column("method", no_wrap=True)
        for _, name in sets:
            table.add_column(f"{name}\n{fpr_label}", justify="right", no_wrap=True)
            table.add_column(f"{name}\nAUROC↑", justify="right", no_wrap=True)
        n_ours = len(by_method)
        for i, (label, cells, ours) in enumerate(rows):
            flat = [c for k, _ in sets for c in cells[k]]
            if ours:
                flat[-2:] = [f"[bold]{c}[/bold]" for c in flat[-2:]]
            table.add_row(styled(label, ours), *flat, end_section=i == n_ours - 1 and bool(refs))
        return table

    def per_set() -> Table:
        """One section per OOD set, one row per method: four columns whatever the number of sets."""
        table = Table()
        table.add_column("OOD set", no_wrap=True)
        table.add_column("method", no_wrap=True)
        table.add_column(fpr_label, justify="right", no_wrap=True)
        table.add_column("AUROC↑", justify="right", no_wrap=True)
        for j, (k, name) in enumerate(sets):
            for i, (label, cells, ours) in enumerate(rows):
                fpr, auroc = cells[k]
                b = (lambda x: f"[bold]{x}[/bold]") if ours and k == "average" else str
                table.add_row(esc(name) if i == 0 else "", styled(label, ours), b(fpr), b(auroc), end_section=i == len(rows) - 1 and j < len(sets) - 1)
        return table

    def stacked() -> list[str]:
        return [f"{name} · {label}: {fpr_label} {cells[k][0]}  AUROC↑ {cells[k][1]}" for k, name in sets for label, cells, _ in rows]

    print_fitting(console, [wide, per_set], stacked)
    if missing:
        print(f"not evaluated (--allow-partial): {', '.join(labels[k] for k in missing)}; the average covers the other sets")
    if extra.get("id_images") is not None:
        print(f"ID images: {extra['id_images']}")
    if extra.get("id_accuracy") is not None:
        print(f"ID top-1 accuracy: {100 * extra['id_accuracy']:.2f}%")
    for line in threshold_lines(thresholds, extra.get("checkpoint_threshold")) + extra.get("notes", []):
        print(line)
    if fpr_key == "fpr95":
        print("FPR95: OOD accepted at 95% ID recall (MOS/NegLabel/SynOOD convention)")
    else:
        print("FPR95 OOD+: ID rejected at 95% OOD recall (OpenOOD v1.5 convention)")
    if refs:
        print(f"paper rows: {suite.reference_note}")
