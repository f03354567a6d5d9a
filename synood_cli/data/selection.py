"""Pick the ID source images for synthesis (docs/method.md, section 1).

Per class, rank images by JPEG bytes per pixel (file size / (width x height)), highest first, and
keep the top N. Sorted numerically (the research code sorted the ratios as strings, which puts
"10.5" before "9.1"); ties broken by file name, so the selection is reproducible.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from synood_cli.data.folders import ImageSet, natural_key
from synood_cli.errors import UsageError
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.registry import Registry

SELECTORS: Registry[str] = Registry("selection method", option="--select")
for _name in ("bytes-per-pixel", "all", "random"):
    SELECTORS.add(_name, _name)


@dataclass
class Selection:
    """Chosen (path, class index) pairs in class order, and the files that could not be measured."""

    items: list[tuple[Path, int]]
    per_class: dict[int, int]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _name_key(path: Path) -> tuple:
    return natural_key(path.name)


def bytes_per_pixel(path: Path) -> float:
    """File size over pixel count, from the image header only (no full decode)."""
    import io

    from synood_cli.data.guard import image_warnings, open_image, open_regular
    from synood_cli.data.refs import read_image_bytes, split_row_ref

    if split_row_ref(str(path)) is not None:  # a table row: its encoded bytes are the "file"
        data = read_image_bytes(str(path))
        size, source = len(data), io.BytesIO(data)
    else:
        source = open_regular(path)  # a FIFO named x.jpg is refused, not waited on
        size = os.fstat(source.fileno()).st_size
    with source, image_warnings(str(path)), open_image(source) as im:  # over the pixel cap: reported unreadable
        w, h = im.size
    if w * h == 0:
        raise ValueError("image has no pixels")
    return size / (w * h)


def select_images(
    image_set: ImageSet,
    classes: list[int],
    per_class: int | None,
    method: str = "bytes-per-pixel",
    seed: int = 0,
    reporter: Reporter = NullReporter(),
) -> Selection:
    """Select up to `per_class` images from each of `classes` (indices into image_set.classes)."""
    SELECTORS.get(method)
    if image_set.labels is None:
        raise UsageError(f"{image_set.root} is a flat folder: selection needs one subfolder per class")
    if per_class is not None and per_class < 1:
        raise UsageError(f"--per-class must be at least 1, got {per_class}")
    by_class: dict[int, list[Path]] = {c: [] for c in classes}
    for path, label in zip(image_set.files, image_set.labels):
        if label in by_class:
            by_class[label].append(path)
    items: list[tuple[Path, int]] = []
    counts: dict[int, int] = {}
    unreadable: list[tuple[Path, str]] = []
    measure = method == "bytes-per-pixel" and per_class is not None
    total = sum(len(v) for v in by_class.values())
    with reporter.task("measuring images" if measure else "selecting", total=total) as task:
        for c in classes:
            files = sorted(by_class[c], key=_name_key)
            if method == "all" or per_class is None:
                chosen = files
            elif method == "random":
                chosen = sorted(random.Random(f"{seed}:{c}").sample(files, min(per_class, len(files))), key=_name_key)
            else:
                scored = []
                for p in files:
                    try:
                        scored.append((bytes_per_pixel(p), p))
                    except Exception as e:  # noqa: BLE001 - any unreadable header is reported, not fatal
                        unreadable.append((p, f"cannot read the image header: {type(e).__name__}: {e}"))
                    task.advance(1)
                # highest bytes per pixel first, ties by file name
                scored.sort(key=lambda t: (-t[0], _name_key(t[1])))
                chosen = [p for _, p in scored[:per_class]]
            if not measure:
                task.advance(len(files))
            items += [(p, c) for p in chosen]
            counts[c] = len(chosen)
    return Selection(items, counts, unreadable)
