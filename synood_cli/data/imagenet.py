"""ImageNet-1k validation layouts: wnids, and the label files that go with a flat val folder.

The standard class order is the sorted order of the 1000 wnids; open_clip's IMAGENET_CLASSNAMES
follow it. open_clip and torchvision ship no wnid list, but timm (a dependency of open_clip)
ships `timm/data/_info/imagenet_synsets.txt`; it is read as a plain file so torch is not imported.

Two label files are understood for a flat folder of `ILSVRC2012_val_*.JPEG`:

* `LOC_val_solution.csv` (the Kaggle ImageNet release): `ImageId,PredictionString`, the first
  token of PredictionString is the wnid.
* `val.txt` (Caffe/ILSVRC devkit-derived lists): `FILENAME INDEX` per line, INDEX in 0..999 in the
  sorted-wnid order.

The devkit's `ILSVRC2012_validation_ground_truth.txt` uses ILSVRC ids (not the sorted order) and
needs `meta.mat` to map; it is refused with a hint rather than silently mislabelled.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import re
from pathlib import Path

from synood_cli.errors import UsageError, read_user_text

NUM_CLASSES = 1000
LABEL_FILE_NAMES = ("LOC_val_solution.csv", "val.txt")
_DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard (sorted) order."""
    spec = importlib.util.find_spec("timm")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc, "data", "_info", "imagenet_synsets.txt")
        if path.is_file():
            wnids = path.read_text().split()
            if len(wnids) == NUM_CLASSES:
                return sorted(wnids)
    raise UsageError(
        "cannot find the ImageNet-1k wnid list (timm/data/_info/imagenet_synsets.txt)",
        hint="reinstall open_clip_torch (it depends on timm), or arrange the images in wnid class folders",
    )


def find_label_file(folder: Path) -> Path | None:
    """A known label file inside a flat val folder or beside it (its parent), else None."""
    for where in (folder, folder.parent):
        for name in LABEL_FILE_NAMES:
            if (where / name).is_file():
                return where / name
    return None


def read_label_file(path: str | Path) -> dict[str, int]:
    """File stem -> class index (sorted-wnid order) from a `LOC_val_solution.csv` or `val.txt`."""
    path = Path(path)
    if path.name == _DEVKIT_GT:
        raise UsageError(
            f"{path.name} uses ILSVRC ids, which need the devkit's meta.mat to map to classes",
            hint="use LOC_val_solution.csv or val.txt (`FILENAME INDEX`), or arrange the images in wnid class folders",
        )
    text = read_user_text(path, "label file", "LOC_val_solution.csv or a val.txt of `FILENAME INDEX` lines")
    first = text.lstrip().split("\n", 1)[0]
    if first.startswith("ImageId"):
        return _read_loc_solution(path, text)
    return _read_index_list(path, text)


def _read_loc_solution(path: Path, text: str) -> dict[str, int]:
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    out: dict[str, int] = {}
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        image_id, pred = row.get("ImageId"), (row.get("PredictionString") or "").split()
        if not image_id or not pred or pred[0] not in index:
            raise UsageError(
                f"{path}:{n}: expected `ImageId,PredictionString` with a wnid first, got {list(row.values())[:2]}",
                hint="pass the LOC_val_solution.csv of the Kaggle ImageNet release",
            )
        out[Path(image_id).stem] = index[pred[0]]
    return out


def _read_index_list(path: Path, text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"[0-9]+", parts[1]) or not 0 <= int(parts[1]) < NUM_CLASSES:
            raise UsageError(
                f"{path}:{n}: expected `FILENAME INDEX` with INDEX in 0..{NUM_CLASSES - 1}, got {line.strip()!r}",
                hint="val.txt lines look like `ILSVRC2012_val_00000001.JPEG 65` (sorted-wnid class order)",
            )
        out[Path(parts[0]).stem] = int(parts[1])
    if not out:
        raise UsageError(f"label file {path} is empty", hint="val.txt lines look like `ILSVRC2012_val_00000001.JPEG 65`")
    return out


def label_flat_set(image_set, label_file: str | Path):
    """Give a flat folder's images ImageNet-1k labels from a label file; every image must have one.

    Classes become the 1000 wnids (sorted) with open_clip's names, so predictions and accuracy use
    the standard class indices whatever subset of the val set is present.
    """
    from dataclasses import replace

    from synood_cli.data.folders import imagenet_classnames

    by_stem = read_label_file(label_file)
    labels, unlabelled = [], []
    for f in image_set.files:
        label = by_stem.get(Path(f).stem)
        (unlabelled.append(f) if label is None else labels.append(label))
    if unlabelled:
        raise UsageError(
            f"{len(unlabelled)} of {len(image_set.files)} images in {image_set.root} have no label in {label_file} "
            f"(first: {Path(unlabelled[0]).name})",
            hint="pass the label file that belongs to this folder (--labels FILE), or remove the extra images",
        )
    return replace(
        image_set,
        labels=labels,
        classes=imagenet_wnids(),
        class_names=imagenet_classnames(),
        layout=f"flat + {Path(label_file).name}",
    )


def as_imagenet_1k(image_set):
    """The same images over the 1000 ImageNet-1k classes in standard order (a benchmark's ID set).

    Wnid class folders (all 1000 or any subset) are re-indexed into the full list; lists and tables
    with 1000 label values keep their indices; unlabelled sets get the 1000 names for prediction.
    """
    from dataclasses import replace

    from synood_cli.data.folders import imagenet_classnames

    wnids = imagenet_wnids()
    names = imagenet_classnames()
    if image_set.labels is None:
        return replace(image_set, classes=[], class_names=names)
    classes = list(image_set.classes)
    index = {w: i for i, w in enumerate(wnids)}
    if classes and all(c in index for c in classes):
        labels = [index[classes[label]] for label in image_set.labels]
        return replace(image_set, labels=labels, classes=wnids, class_names=names)
    if len(classes) == NUM_CLASSES:
        return replace(image_set, classes=wnids, class_names=names)
    raise UsageError(
        f"{image_set.root} has {len(classes)} classes that are not ImageNet-1k wnids (first: {classes[0] if classes else '-'})",
        hint="the ImageNet val set needs wnid class folders (n01440764/...), a flat folder with a label file, or 1000 label values",
    )
