"""Image references as stored in artifacts: a file path, or `SOURCE#ROW` for a row of a table.

Prompt rows, synthesized shards and the feature cache name their source images by these strings, so
a later stage can re-read an image whether it came from a folder, an image list, a Hugging Face
dataset, a `save_to_disk` folder or Parquet. A table is opened once per process (memory-mapped).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

ROW_SEP = "#"


def split_row_ref(ref: str) -> tuple[str, int] | None:
    """(source, row) for a `SOURCE#ROW` reference; None for a file path (even one with a # in it)."""
    source, sep, row = str(ref).rpartition(ROW_SEP)
    if not sep or not source or not row.isdigit() or os.path.exists(ref):
        return None
    return source, int(row)


def image_key(image_path: str, root: str) -> str:
    """`class/file.jpg`: the path below the dataset root, with forward slashes; `#ROW` for a table row.

    What names an image independently of where the dataset lies: the prompts id and the synthesis seeds.
    """
    row = split_row_ref(image_path)
    if row is not None:
        return f"{ROW_SEP}{row[1]}"
    return Path(os.path.relpath(image_path, root)).as_posix()


# The image column of each table source, when its user named one (--image-column): a property of
# the source, recorded in the prompts artifact and set again by every stage that reads it.
_IMAGE_COLUMNS: dict[str, str] = {}


def set_image_column(source: str, column: str | None) -> None:
    """Read `source`'s images from `column` from now on (None: the one image column it has)."""
    if column:
        _IMAGE_COLUMNS[str(source)] = column
    else:
        _IMAGE_COLUMNS.pop(str(source), None)


def use_prompts_image_column(prompts_config: dict) -> None:
    """Every stage after `prompt` reads a table's images from the column the prompts were made from."""
    set_image_column(prompts_config.get("folder", ""), prompts_config.get("image_column"))


@functools.lru_cache(maxsize=8)
def _table(source: str, image_column: str | None):
    from synood_cli.data.table_images import read_table_set

    return read_table_set(source, image_column=image_column).reader


def read_image_bytes(ref: str) -> bytes:
    """The encoded bytes of the image a reference names."""
    from synood_cli.data.guard import read_regular

    row = split_row_ref(ref)
    if row is None:
        return read_regular(ref)  # a FIFO or device planted under an image's name is refused, not read
    source, i = row
    return _table(source, _IMAGE_COLUMNS.get(source)).read(i)


def open_image(ref: str):
    """A loaded PIL image (not yet converted) for a reference."""
    import io

    from synood_cli.data.guard import image_warnings, open_image

    with image_warnings(ref), open_image(io.BytesIO(read_image_bytes(ref))) as im:  # refused over the pixel cap
        im.load()
    return im
