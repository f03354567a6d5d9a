"""Guards every image read from a user's files passes: regular files only, a pixel cap, named warnings.

Why: a FIFO or a link to /dev/zero named `x.jpg` blocked or exhausted a run, a 97 KB PNG of
10000x10000 px was decoded in full (1.9 GB) after a PIL warning that did not say which file it was.
Import-light (no torch): the folder walker and the selection import it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator

# PIL's own default (Image.MAX_IMAGE_PIXELS): 89,478,485 px, 89.5 MP, a 9459 x 9459 image
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_PIXELS_ENV = "SYNOOD_MAX_PIXELS"
MAX_PIXELS_HELP = (
    "Largest image decoded, in pixels (width x height); a larger one is reported as unreadable before it is decoded "
    f"(env {MAX_PIXELS_ENV}) \\[default: {DEFAULT_MAX_PIXELS:,}, 89.5 MP, PIL's limit]."
)


class ImageTooLarge(ValueError):
    """An image over the pixel cap: refused from its header, before any pixel is decoded."""


class NotRegularFile(OSError):
    """A FIFO, device, socket or folder where an image file was expected."""


def parse_max_pixels(text: str | int | None) -> int:
    """`--max-pixels` / SYNOOD_MAX_PIXELS: a positive whole number (`100000000`, `1e8`); raises UsageError."""
    from synood_cli.errors import UsageError

    if text is None or str(text).strip() == "":
        return DEFAULT_MAX_PIXELS
    try:
        value = float(str(text).replace("_", "").replace(",", ""))
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < 2**62) or value != int(value):
        shown = str(text) if len(str(text)) <= 40 else str(text)[:40] + "..."
        raise UsageError(f"--max-pixels / {MAX_PIXELS_ENV} must be a positive whole number of pixels, got {shown!r}",
                         hint=f"e.g. {DEFAULT_MAX_PIXELS} (PIL's limit, the default) or 1e8")
    return int(value)


def max_pixels() -> int:
    """The cap in force: SYNOOD_MAX_PIXELS (the CLI's --max-pixels sets it, so loader processes see it), else the default."""
    return parse_max_pixels(os.environ.get(MAX_PIXELS_ENV))


def kind_of(mode: int) -> str:
    """`a FIFO`, `a character device`...: what a non-regular file is, for the reason shown."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike):
    """A binary file object for `path` (links followed), refused unless it is a regular file.

    Opened non-blocking, so a FIFO with no writer does not hang the open, then checked on the
    open descriptor (no window in which the name can be swapped for something else).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file: {kind_of(mode)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (see `open_regular`)."""
    with open_regular(path) as f:
        return f.read()


def check_pixels(im, cap: int | None = None) -> None:
    """Refuse a PIL image (header read, nothing decoded) over the cap."""
    w, h = im.size
    cap = max_pixels() if cap is None else cap
    if w * h > cap:
        raise ImageTooLarge(f"{w}x{h} = {w * h:,} pixels, over the limit of {cap:,} "
                            f"(raise it with --max-pixels or {MAX_PIXELS_ENV})")


def open_image(source, formats=None):
    """`PIL.Image.open` with our cap in place of PIL's guard: `check_pixels` on the header, before any decoding."""
    from PIL import Image

    cap, pil_cap = max_pixels(), Image.MAX_IMAGE_PIXELS
    # PIL's own guard warns without naming the file, and raises only over twice its limit: this
    # check replaces it for our reads (the header is parsed, nothing decoded yet), and only here
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(source, formats=formats) if formats else Image.open(source)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_cap
    try:
        check_pixels(im, cap)
    except BaseException:
        im.close()
        raise
    return im


@contextlib.contextmanager
def image_warnings(name: str) -> Iterator[None]:
    """Warnings raised while reading one image, re-issued with its name (PIL's do not say which file)."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:
            seen = list(caught)
    for w in seen:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            warnings.warn(w.message, stacklevel=3)  # about a library, not this image: shown once, unnamed
        else:
            warnings.warn(f"{name}: {w.message}", w.category, stacklevel=3)
