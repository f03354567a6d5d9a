"""One grammar for "a set of images", accepted wherever a folder is.

A spec is one of:

* a folder: class subfolders (ImageFolder), or flat; a flat ImageNet val folder
  (`ILSVRC2012_val_*`) takes its labels from `--labels FILE` or a `LOC_val_solution.csv` /
  `val.txt` found inside it or beside it;
* an OpenOOD image list (`FILE.txt`, lines `relative/path label`) resolved under `--data-root`;
* `hf:NAME[:SPLIT]` (a Hugging Face dataset through `datasets.load_dataset`), a `save_to_disk`
  folder, a `.parquet` file or a folder of Parquet files (`--image-column`, `--label-column`).

A relative spec that does not exist as given is looked up under `--data-root`. Everything here
reads only file listings and table metadata: it runs before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from synood_cli.data.folders import ImageSet, read_classnames, scan_folder
from synood_cli.errors import UsageError

IMGLIST_SUFFIXES = (".txt", ".lst")
_IMAGENET_VAL_PREFIX = "ILSVRC2012_val_"


@dataclass
class InputOptions:
    """How to read the specs of one command: shared by all of its sets."""

    data_root: Path | None = None
    image_column: str | None = None
    label_column: str | None = None
    labels: Path | None = None  # label file for a flat ImageNet val folder
    classnames: Path | None = None  # names for class indices of lists/tables (and folder trees)


def resolve_spec_path(spec: str, data_root: Path | None) -> str:
    """`spec` as given when it exists; else under `data_root` when that exists; else unchanged."""
    if data_root is None or spec.startswith("hf:") or os.path.isabs(spec) or Path(spec).expanduser().exists():
        return spec
    under = Path(data_root).expanduser() / spec
    return str(under) if under.exists() else spec


def open_image_set(spec: str, name: str | None = None, options: InputOptions | None = None) -> ImageSet:
    """Read any accepted input spec into an `ImageSet` (see the module docstring)."""
    from synood_cli.data.table_images import is_table_source, read_table_set

    opts = options or InputOptions()
    spec = resolve_spec_path(str(spec), opts.data_root)
    names = read_classnames(opts.classnames) if opts.classnames is not None and Path(opts.classnames).is_file() else None
    if is_table_source(spec):
        return read_table_set(spec, name, opts.image_column, opts.label_column, names)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in IMGLIST_SUFFIXES:
        from synood_cli.data.imglist import read_imglist

        return read_imglist(path, opts.data_root, name, names)
    if path.is_file():
        raise UsageError(
            f"{spec} is a file, not a set of images",
            hint="pass a folder, an image list (.txt), a .parquet file, a save_to_disk folder or hf:NAME[:SPLIT]",
        )
    image_set = scan_folder(path, name=name, classnames=opts.classnames if names is not None else None)
    if image_set.labels is None:
        label_file = opts.labels
        if label_file is None and image_set.files and image_set.files[0].name.startswith(_IMAGENET_VAL_PREFIX):
            from synood_cli.data.imagenet import find_label_file

            label_file = find_label_file(image_set.root)
        if label_file is not None:
            from synood_cli.data.imagenet import label_flat_set

            image_set = label_flat_set(image_set, label_file)
    elif opts.labels is not None:
        raise UsageError(f"--labels is for a flat folder, but {spec} has class subfolders", hint="drop --labels")
    return image_set


def open_inputs(specs: list[str], options: InputOptions | None = None) -> tuple[list[ImageSet], list[tuple[Path, str]]]:
    """`synood score`'s arguments: sets (any spec above) plus loose image files, in argument order.

    Consecutive loose image files form one flat set ("files", "files-N"); a named file that is neither
    an image, an image list nor Parquet is returned in `skipped` (reported and counted, as in folders).
    """
    from synood_cli.data.folders import REASON_NOT_IMAGE, is_image_file

    sets: list[ImageSet] = []
    loose: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def flush() -> None:  # consecutive loose files form one set, so output keeps argument order
        if loose:
            name = "files" if not any(s.name.startswith("files") for s in sets) else f"files-{len(sets) + 1}"
            sets.append(ImageSet(name, Path(os.path.abspath(os.curdir)), list(loose), None, [], [], layout="image files",
                                 source="(files named on the command line)"))
            loose.clear()

    for spec in specs:
        spec = resolve_spec_path(str(spec), options.data_root if options else None)
        p = Path(spec).expanduser()
        if p.is_file() and is_image_file(p):
            loose.append(Path(os.path.abspath(p)))
        elif p.is_file() and p.suffix.lower() not in IMGLIST_SUFFIXES + (".parquet",):
            skipped.append((p, REASON_NOT_IMAGE))
        else:
            flush()
            sets.append(open_image_set(str(spec), options=options))
    flush()
    if not sets:
        raise UsageError("no images to score in " + ", ".join(str(s) for s in specs), hint="pass image folders, image files, image lists or datasets")
    return sets, skipped
