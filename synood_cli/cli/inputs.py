"""Input options shared by the commands that read image sets, and the input summary table.

Every set is opened (listed, never decoded) before any model loads, and one table on stderr shows
what was found: where, in which layout, how many images, and what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DATA_ROOT = typer.Option(None, "--data-root", help="Folder that image-list paths (and relative set paths) resolve under.")
IMAGE_COLUMN = typer.Option(None, "--image-column", help="Image column of a Parquet / Hugging Face input \\[default: its one Image column].")
LABEL_COLUMN = typer.Option(None, "--label-column", help="Integer label column of a Parquet / Hugging Face ID input \\[default: its one ClassLabel column].")
LABELS = typer.Option(None, "--labels", help="Label file for a flat ImageNet val folder: LOC_val_solution.csv or val.txt \\[default: found in or beside the folder].")

SPEC_HELP = "a folder, an image list (.txt), hf:NAME[:SPLIT], a save_to_disk folder or Parquet"


def input_options(data_root: Optional[Path] = None, image_column: Optional[str] = None, label_column: Optional[str] = None,
                  labels: Optional[Path] = None, classnames: Optional[Path] = None):
    from synood_cli.data.sources import InputOptions

    if data_root is not None and not Path(data_root).expanduser().is_dir():
        from synood_cli.errors import UsageError

        raise UsageError(f"--data-root {data_root} is not a folder", hint="pass the folder the image lists' paths are relative to")
    named = classnames if classnames is not None and Path(classnames).is_file() else None
    return InputOptions(data_root, image_column, label_column, labels, named)


def open_named(spec: str, options, role: str = "ood"):
    """Open `name=SPEC` or `SPEC`; OOD sets never take the ID set's label options."""
    from dataclasses import replace

    from synood_cli.cli.common import split_named
    from synood_cli.data.sources import open_image_set

    name, path = split_named(spec)
    if role != "id":
        options = replace(options, labels=None, label_column=None, classnames=None)
    return open_image_set(path, name=name, options=options)


def render_inputs(rows: list[dict], reporter) -> None:
    """One table on stderr: role, set, source, layout, expected, found, left out, status."""
    if getattr(reporter, "quiet", False):
        return
    from rich.table import Table

    from synood_cli.cli.tables import print_fitting, wide_console

    from rich.markup import escape

    show_expected = any(r.get("expected") for r in rows)

    def table(source_width: int | None) -> Table:
        """`source_width`: fold the paths to this width (the one column that may wrap)."""
        t = Table(title="inputs", title_justify="left")
        for col in ["role", "set", "source", "layout"] + (["expected"] if show_expected else []) + ["images", "left out", "status"]:
            numeric = col in ("expected", "images", "left out")
            t.add_column(col, justify="right" if numeric else "left", overflow="fold", no_wrap=numeric, max_width=source_width if col == "source" else None)
        for r in rows:
            status = r.get("status", "ok")
            style = {"ok": "green", "missing": "red", "count differs": "yellow"}.get(status, "")
            cells = [escape(str(v)) for v in (r["role"], r["name"], r.get("source") or "-", r.get("layout") or "-")]
            if show_expected:
                cells.append(f"{r['expected']:,}" if r.get("expected") else "-")
            cells += [f"{r.get('found', 0):,}", str(r.get("left_out", 0) or ""), f"[{style}]{status}[/{style}]" if style else status]
            t.add_row(*cells)
        return t

    def lines() -> list[str]:  # a terminal too narrow for the table: one line per set, counts whole, the path copyable
        out = ["inputs"]
        for r in rows:
            counts = f"{r.get('found', 0):,} images" + (f" of {r['expected']:,} expected" if show_expected and r.get("expected") else "")
            counts += f", {r['left_out']} left out" if r.get("left_out") else ""
            out.append(f"  {r['role']} {r['name']}: {counts}, {r.get('status', 'ok')} · {r.get('layout') or '-'} · {r.get('source') or '-'}")
        return out

    print_fitting(wide_console(stderr=True), [lambda: table(None), lambda: table(24)], lines, squeeze=True)


def row_for(role: str, image_set, expected: int | None = None, status: str | None = None) -> dict:
    n = len(image_set.files)
    return {
        "role": role,
        "name": image_set.name,
        "source": _short(image_set.source or image_set.root),
        "layout": image_set.layout,
        "expected": expected,
        "found": n,
        "left_out": len(image_set.skipped),
        "status": status or ("ok" if expected is None or n == expected else "count differs"),
    }


def _short(path) -> str:
    """A path relative to the working folder when it is under it (shorter table cells)."""
    import os

    text = str(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:
        return text
    return rel if not rel.startswith("..") and os.path.isabs(text) else text
