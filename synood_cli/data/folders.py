"""Find the images of a dataset folder and work out its layout and class names.

Import-light on purpose: the CLI imports this at startup to validate folders before any model
work, so torch, PIL and open_clip are never imported at module level. open_clip's ImageNet class
names are only read when a folder looks like ImageNet-1k (exactly 1000 wnid-named classes).

Two layouts are understood:

* ImageFolder tree: the root holds class subfolders, each containing images (searched
  recursively). Classes are the subfolder names in plain ``sorted()`` order (torchvision
  ImageFolder / ImageNet order); labels are indices into that list.
* Flat folder: images anywhere under the root (there are no class subfolders with images);
  labels are ``None``.

Hidden files and folders (name starting with ``.``) are ignored entirely. Any other file that is
not an image by extension is recorded in ``ImageSet.skipped`` with a reason, never dropped silently.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from synood_cli.errors import UsageError, read_user_text

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

REASON_NOT_IMAGE = "not an image extension"
REASON_LOOSE = "loose file in a class-folder tree"
REASON_UNREADABLE_DIR = "folder could not be read"

_WNID_RE = re.compile(r"n\d{8}")
_NUM_RE = re.compile(r"(\d+)")
_IMAGENET_NUM_CLASSES = 1000

_EXT_HINT = "accepted image extensions (any case): " + ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass
class ImageSet:
    """The images of one dataset folder.

    ``files`` are absolute paths: for a tree, grouped by class in class order and naturally sorted
    within each class; for a flat folder, naturally sorted by path relative to the root.
    ``labels[i]`` is the index into ``classes`` of ``files[i]`` (``None`` for a flat folder).
    ``class_names`` are human-readable names (for prompts), aligned with ``classes`` for a tree;
    for a flat folder they come only from a classnames file (else empty).
    ``skipped`` lists ``(path, reason)`` for files that were not taken.
    ``empty_classes`` lists subfolders of a tree that hold no image (ignored as classes).
    ``layout`` says how the set was read (for the input summary table). ``reader`` is set when the
    images are rows of a table (Hugging Face dataset, Parquet) rather than files: then ``files``
    are display names (``SOURCE#ROW``) and ``reader.read(i)`` gives image i's encoded bytes.
    """

    name: str
    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: list[str]
    class_names: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    layout: str = ""
    source: str = ""  # what the user named (an image list, hf:NAME:SPLIT); the root when empty
    reader: object | None = None  # a TableImages for rows of a dataset/Parquet; None for files on disk

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.files)


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an accepted image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _natural_part(text: str) -> tuple:
    # Digits compare as numbers (img2 < img10); text compares case-insensitively, with the
    # original spelling as a tie-break so the order is total and deterministic.
    key = []
    for i, piece in enumerate(_NUM_RE.split(text)):
        if not piece:
            continue
        if i % 2:  # captured digit run
            key.append((0, int(piece), piece))
        else:
            key.append((1, piece.casefold(), piece))
    return tuple(key)


def natural_key(relpath: str | os.PathLike) -> tuple:
    """Sort key for relative paths: per path component, numeric-aware (``img2`` < ``img10``).

    A file name compares by stem, then extension, so ``a.jpg`` < ``a2.jpg`` < ``a10.jpg``
    (comparing "a.jpg" whole would put the "." after the digits' shorter prefix "a").
    """
    parts = Path(relpath).parts
    if not parts:
        return ()
    *dirs, name = parts
    stem, _, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    return tuple((_natural_part(d), ()) for d in dirs) + ((_natural_part(stem), _natural_part(ext)),)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(top: Path, skipped: list[tuple[Path, str]]) -> tuple[list[Path], list[Path]]:
    """All non-hidden files under ``top`` (recursively): (image files, other files).

    Follows symlinked folders but never visits the same real folder twice (no loops).
    Unreadable folders are recorded in ``skipped``.
    """
    images: list[Path] = []
    others: list[Path] = []
    seen: set[str] = set()

    def onerror(err: OSError) -> None:
        where = Path(err.filename) if getattr(err, "filename", None) else top
        skipped.append((where, f"{REASON_UNREADABLE_DIR}: {err.strerror or err}"))

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for fname in filenames:
            if _hidden(fname):
                continue
            p = Path(dirpath, fname)
            (images if is_image_file(fname) else others).append(p)
    return images, others


def _sorted_files(files: list[Path], base: Path) -> list[Path]:
    return sorted(files, key=lambda p: natural_key(p.relative_to(base)))


def read_classnames(path: str | os.PathLike) -> list[str]:
    """Class names from a text file: one per line, whitespace stripped, blank lines ignored."""
    text = read_user_text(path, "classnames file", "a text file with one class name per line")
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise UsageError(
            f"classnames file has no class names: {path}",
            hint="write one class name per line",
        )
    return names


def imagenet_classnames() -> list[str]:
    """open_clip's 1000 ImageNet-1k class names, in the standard (sorted-wnid) order.

    The names live in ``open_clip/zero_shot_metadata.py``, a plain-data module; it is loaded
    straight from its file so that torch (which ``import open_clip`` pulls in, ~3 s) is not
    imported. Falls back to a normal import if the file layout ever changes.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            meta = Path(loc, "zero_shot_metadata.py")
            if meta.is_file():
                mspec = importlib.util.spec_from_file_location("_synood_open_clip_meta", meta)
                if mspec is not None and mspec.loader is not None:
                    module = importlib.util.module_from_spec(mspec)
                    try:
                        mspec.loader.exec_module(module)
                        names = list(getattr(module, "IMAGENET_CLASSNAMES"))
                    except Exception:
                        break
                    if len(names) == _IMAGENET_NUM_CLASSES:
                        return names
                break
    import open_clip  # slow path: imports torch

    return list(open_clip.IMAGENET_CLASSNAMES)


def is_imagenet_wnids(classes: list[str]) -> bool:
    """True for exactly 1000 distinct folder names that all look like wnids (``n`` + 8 digits)."""
    return (
        len(classes) == _IMAGENET_NUM_CLASSES
        and len(set(classes)) == _IMAGENET_NUM_CLASSES
        and all(_WNID_RE.fullmatch(c) for c in classes)
    )


def names_for_classes(classes: list[str]) -> list[str]:
    """Human names for class folder names, aligned with ``classes``.

    Exactly 1000 wnid folders -> ImageNet-1k names (sorted wnid i -> ``IMAGENET_CLASSNAMES[i]``,
    the standard ImageNet class order); otherwise the folder names with ``_`` turned into spaces.
    """
    classes = list(classes)
    if is_imagenet_wnids(classes):
        # neither open_clip nor torchvision ships the wnids; the standard order is their sorted order
        names = imagenet_classnames()
        by_wnid = dict(zip(sorted(classes), names))
        return [by_wnid[c] for c in classes]
    if classes and all(_WNID_RE.fullmatch(c) for c in classes):
        # a subset of ImageNet-1k (a partial val set, ImageNet-100...): name the classes by wnid
        from synood_cli.data.imagenet import imagenet_wnids

        try:
            index = {w: i for i, w in enumerate(imagenet_wnids())}
        except UsageError:
            index = {}
        if all(c in index for c in classes):
            names = imagenet_classnames()
            return [names[index[c]] for c in classes]
    return [c.replace("_", " ") for c in classes]


def scan_folder(
    path: str | os.PathLike,
    name: str | None = None,
    classnames: str | os.PathLike | None = None,
) -> ImageSet:
    """Scan a dataset folder (ImageFolder tree or flat) into an ``ImageSet``.

    Raises ``UsageError`` for a missing path, a file instead of a folder, a folder without any
    image, or a classnames file whose length differs from the number of class folders.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise UsageError(
            f"folder not found: {path}",
            hint="check the path; it must be a folder of images or of class subfolders",
        )
    if not given.is_dir():
        raise UsageError(
            f"not a folder: {path}",
            hint="pass the folder that contains the images, not a single file",
        )
    root = Path(os.path.abspath(given))
    set_name = name if name else (root.name or str(root))
    skipped: list[tuple[Path, str]] = []

    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UsageError(
            f"cannot read folder {path}: {exc.strerror or exc}",
            hint="check the folder's permissions",
        ) from None

    root_files: list[Path] = []
    subdirs: list[str] = []
    for entry in entries:
        if _hidden(entry.name):
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            subdirs.append(entry.name)
        else:
            root_files.append(root / entry.name)

    per_class: dict[str, tuple[list[Path], list[Path]]] = {}
    for d in subdirs:
        try:  # a class folder that cannot be listed would silently shift every later class index
            with os.scandir(root / d):
                pass
        except OSError as exc:
            raise UsageError(
                f"class folder {root / d} cannot be read ({exc.strerror or exc}); skipping it would shift the indices of the classes after it",
                hint="fix its permissions (chmod -R u+rX FOLDER), or move it out of the tree",
            ) from None
        per_class[d] = _walk(root / d, skipped)

    classes = sorted(d for d in subdirs if per_class[d][0])
    class_file_names = read_classnames(classnames) if classnames is not None else None

    if classes:
        # ImageFolder tree.
        empty_classes = sorted(d for d in subdirs if not per_class[d][0])
        for f in _sorted_files(root_files, root):
            skipped.append((f, REASON_LOOSE if is_image_file(f.name) else REASON_NOT_IMAGE))
        files: list[Path] = []
        labels: list[int] = []
        for idx, c in enumerate(classes):
            imgs, others = per_class[c]
            cls_files = _sorted_files(imgs, root / c)
            files.extend(cls_files)
            labels.extend([idx] * len(cls_files))
            skipped.extend((f, REASON_NOT_IMAGE) for f in _sorted_files(others, root / c))
        for c in empty_classes:
            skipped.extend((f, REASON_NOT_IMAGE) for f in _sorted_files(per_class[c][1], root / c))
        if class_file_names is not None:
            if len(class_file_names) != len(classes):
                raise UsageError(
                    f"classnames file {classnames} has {len(class_file_names)} names but "
                    f"{path} has {len(classes)} class folders",
                    hint="write one name per class folder, in sorted folder order: "
                    + ", ".join(classes[:5])
                    + (", ..." if len(classes) > 5 else ""),
                )
            class_names = class_file_names
        else:
            class_names = names_for_classes(classes)
        return ImageSet(
            name=set_name,
            root=root,
            files=files,
            labels=labels,
            classes=classes,
            class_names=class_names,
            skipped=skipped,
            empty_classes=empty_classes,
            layout="class folders",
        )

    # Flat folder: images in the root (subfolders, if any, hold no image).
    images = [f for f in root_files if is_image_file(f.name)]
    others = [f for f in root_files if not is_image_file(f.name)]
    for d in subdirs:
        others.extend(per_class[d][1])
    if not images:
        raise UsageError(
            f"no images found in {path}",
            hint=_EXT_HINT + "; hidden files are ignored",
        )
    skipped.extend((f, REASON_NOT_IMAGE) for f in _sorted_files(others, root))
    return ImageSet(
        name=set_name,
        root=root,
        files=_sorted_files(images, root),
        labels=None,
        classes=[],
        class_names=list(class_file_names) if class_file_names is not None else [],
        skipped=skipped,
        empty_classes=[],
        layout="flat",
    )
