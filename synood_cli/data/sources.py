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
    check_name_length(spec)
    if data_root is None or spec.startswith("hf:") or os.path.isabs(spec) or Path(spec).expanduser().exists():
        return spec
    under = Path(data_root).expanduser() / spec
    return str(under) if under.exists() else spec


def check_name_length(spec: str) -> None:
    """Exit 2 for a name no file system holds (over PATH_MAX, or a part over NAME_MAX), before the OS raises on it."""
    raw = os.fsencode(str(spec))
    if len(raw) > MAX_LISTED_NAME or any(len(part) > 255 for part in raw.split(b"/")):
        raise UsageError(f"file name too long: {shorten(str(spec))}", hint="check the path (a part of a path is at most 255 bytes)")


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


def open_inputs(specs: list[str], options: InputOptions | None = None,
                stdin_files: list[Path] | None = None) -> tuple[list[ImageSet], list[tuple[Path, str]]]:
    """`synood score`'s arguments: sets (any spec above) plus loose image files, in argument order.

    Consecutive loose image files form one flat set ("files", "files-N"); a named file that is neither
    an image, an image list nor Parquet is returned in `skipped` (reported and counted, as in folders).
    A spec `-` stands for `stdin_files`, image files already checked by `read_listed_files`.
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
        if spec == "-" and stdin_files is not None:
            loose.extend(stdin_files)
            continue
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
        named = ", ".join(shorten(str(s)) for s in specs[:5]) + (", ..." if len(specs) > 5 else "")
        raise UsageError("no images to score in " + named, hint="pass image folders, image files, image lists or datasets")
    return sets, skipped


# -- file names on stdin (`synood score -`) ----------------------------------------------------

MAX_LISTED_NAME = 4096  # bytes: Linux's PATH_MAX; a longer line names no file
_MAX_LINE = 64 << 20  # a line this long is not a list of names: stop reading (exit 2)
_SHOWN = 200  # characters of a long name or line shown in a message
REASON_NO_FILE = "no such file"


def shorten(text: str, limit: int = _SHOWN) -> str:
    """`text` cut to about `limit` characters, with its length, for messages that must stay one line."""
    return text if len(text) <= limit else f"{text[: limit - 20]}…{text[-12:]} ({len(text):,} characters)"


def read_listed_files(stream, data_root: Path | None = None, limit: int = MAX_LISTED_NAME) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image file names from a binary stream, one per line: (readable regular image files, skipped).

    Why so strict: stdin is typed by nobody, so it may name anything (`/`, `hf:...`, a FIFO, a
    device) or be anything (`< /dev/zero`). It names image files only (folders, lists and datasets
    go on the command line); everything else is skipped with a reason. A name is taken exactly as
    written, spaces included; only the line ending (`\\n` or `\\r\\n`) is removed and blank lines
    are ignored. Lines are read with a bound: a line over `limit` bytes is skipped without being
    kept, and a NUL byte (no file name holds one) stops the reading with a UsageError (exit 2).
    """
    from synood_cli.data.folders import REASON_NOT_IMAGE, is_image_file

    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    number = 0
    while True:
        line = stream.readline(limit + 2)  # + "\r\n"
        if not line:
            break
        number += 1
        _refuse_binary(line, number)
        if not line.endswith(b"\n") and len(line) > limit:
            head, size = line[:60], len(line)
            while not line.endswith(b"\n"):  # the rest of the line, never kept
                line = stream.readline(1 << 16)
                if not line:
                    break
                _refuse_binary(line, number)
                size += len(line)
                if size > _MAX_LINE:
                    raise UsageError(f"stdin line {number} is over {_MAX_LINE >> 20} MiB without a line break: stdin is not a list of file names",
                                     hint="pipe one image path per line: find data -name '*.jpg' | synood score -")
            skipped.append((os.fsdecode(head) + "…", f"stdin line {number} is {size:,} bytes long; no file name is over {limit:,}"))
            continue
        raw = line[:-1] if line.endswith(b"\n") else line
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if not raw:
            continue
        name = os.fsdecode(raw)
        path = Path(name)
        if data_root is not None and not path.is_absolute() and not os.path.lexists(raw):
            path = Path(data_root).expanduser() / name
        reason = listed_file_problem(path)
        if reason is None and not is_image_file(name):
            reason = REASON_NOT_IMAGE + " (stdin names image files; pass image lists and Parquet as arguments)"
        if reason is not None:
            skipped.append((shorten(name), reason))
        else:
            files.append(Path(os.path.abspath(path)))
    return files, skipped


def _refuse_binary(line: bytes, number: int) -> None:
    if b"\0" in line:
        raise UsageError(f"stdin line {number} holds a NUL byte: stdin is not a list of file names",
                         hint="pipe one image path per line: find data -name '*.jpg' | synood score -")


def listed_file_problem(path: Path) -> str | None:
    """Why `path` (links followed) cannot be read as an image file, or None for a readable regular file."""
    import errno
    import stat

    from synood_cli.data.guard import kind_of

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return "file name too long"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            spec = str(path).startswith("hf:") or ":" in str(path)[:10]
            return REASON_NO_FILE + (" (stdin names image files only; pass datasets as arguments)" if spec else "")
        return e.strerror or type(e).__name__
    if stat.S_ISDIR(mode):
        return "a folder (stdin names image files only; pass folders as arguments)"
    if not stat.S_ISREG(mode):
        return f"not a regular file: {kind_of(mode)}"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None
