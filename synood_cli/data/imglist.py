"""OpenOOD image lists: a text file of `relative/path label` lines (or plain paths), resolved under a data root.

OpenOOD v1.5 keeps its benchmark sets as such lists (`benchmark_imglist/imagenet/test_ninco.txt`)
over image roots (`images_largescale/`); OOD sets carry label -1. Lines are kept in file order.
A listed file that does not exist is recorded as skipped (and counted), never dropped silently;
a list none of whose files exist is refused, since the data root is then almost surely wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from synood_cli.data.folders import ImageSet, imagenet_classnames
from synood_cli.errors import UsageError, read_user_text

REASON_MISSING = "listed in the image list but not found"
_HINT = "image-list lines look like `ssb_hard/n01440764/x.JPEG -1`: a path under --data-root, then an integer label"


def split_entry(line: str) -> tuple[str, str | None] | None:
    """`relative/path label` -> (path, label text); a plain `path` line -> (path, None).

    The last token is the label when it is an integer; a path may hold spaces.
    """
    parts = line.split()
    if not parts:
        return None
    if len(parts) >= 2 and re.fullmatch(r"-?[0-9]+", parts[-1]):
        return line.strip()[: -len(parts[-1])].strip(), parts[-1]
    return line.strip(), None


def first_listed_path(path: str | os.PathLike) -> str | None:
    """The first path an image list names (to find the folder it is relative to), without reading it all."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            stripped = line.strip()
            entry = split_entry(stripped) if stripped and not stripped.startswith("#") else None
            if entry is not None:
                return entry[0]
    return None


def read_imglist(path: str | os.PathLike, data_root: str | os.PathLike | None = None, name: str | None = None,
                 class_names: list[str] | None = None) -> ImageSet:
    """An `ImageSet` from an image list; paths resolve under `data_root` (default: the list's folder).

    Labels >= 0 on every line make a labelled set over `class_names` (default: ImageNet-1k's 1000
    names when every label is below 1000); any negative label (OpenOOD's -1 for OOD) makes it unlabelled.
    """
    list_path = Path(path).expanduser()
    text = read_user_text(list_path, "image list", "an OpenOOD-style image list (`relative/path label` per line)")
    root = Path(os.path.abspath(Path(data_root).expanduser() if data_root is not None else list_path.parent))
    if not root.is_dir():
        raise UsageError(f"--data-root {root} is not a folder", hint="pass the folder the image list's paths are relative to")
    rel_paths: list[str] = []
    labels: list[int] = []
    plain = None
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        rel, label = split_entry(stripped)
        last = stripped.split()[-1]
        if label is None and rel != last and re.fullmatch(r"[-+.0-9eE]*[0-9][-+.0-9eE]*", last):
            raise UsageError(f"{list_path}:{n}: the label {last!r} is not an integer", hint=_HINT)
        if plain is None:
            plain = label is None
        elif plain != (label is None):  # a list is all `path label` lines or all plain paths
            want = "a plain path, as the first entry" if plain else "`path label` with an integer label, as the first entry"
            raise UsageError(f"{list_path}:{n}: expected {want}, got {stripped!r}", hint=_HINT + ", or one plain path per line")
        rel_paths.append(rel)
        labels.append(int(label) if label is not None else -1)  # a plain path list is an unlabelled set
    if not rel_paths:
        raise UsageError(f"image list {list_path} has no lines", hint=_HINT)
    files: list[Path] = []
    kept_labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for rel, label in zip(rel_paths, labels):
        full = root / rel
        if full.is_file():
            files.append(full)
            kept_labels.append(label)
        else:
            skipped.append((full, REASON_MISSING))
    if not files:
        raise UsageError(
            f"none of the {len(rel_paths)} files in {list_path} exist under {root} (first expected: {root / rel_paths[0]})",
            hint="pass --data-root DIR, the folder the list's paths are relative to (OpenOOD: data/images_largescale)",
        )
    labelled = all(label >= 0 for label in kept_labels)
    classes: list[str] = []
    names: list[str] = []
    layout_note = ""
    if labelled:
        top = max(kept_labels)
        if class_names is not None:
            if top >= len(class_names):
                raise UsageError(f"{list_path} has label {top} but only {len(class_names)} class names were given")
            names = list(class_names)
        elif top < 1000:
            names = imagenet_classnames()
            layout_note = ", ImageNet-1k labels"
        else:
            raise UsageError(f"{list_path} has label {top}: pass --classnames FILE with a name per class")
        classes = [str(i) for i in range(len(names))]
    return ImageSet(
        name=name or list_path.stem,
        root=root,
        files=files,
        labels=kept_labels if labelled else None,
        classes=classes,
        class_names=names,
        skipped=skipped,
        layout=f"image list under {root.name or root}{layout_note}",
        source=str(list_path),
    )
