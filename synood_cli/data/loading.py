"""Decode image files into batches of tensors, never failing on a bad file.

A file that cannot be decoded (truncated JPEG, empty file, not really an image, a decompression
bomb, an I/O error) yields a zero tensor of the transform's output shape plus an error string, so
one bad file never aborts a long run; the caller decides (report it, or fail under --strict).
"""

from __future__ import annotations

import io
import math
import re
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from synood_cli.errors import UsageError

_PROBE_SIZE = (32, 32)


def _describe_error(path: str, exc: BaseException) -> str:
    msg = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "(row bytes)", str(exc)) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {msg}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {msg}"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large (decompression bomb guard): {msg}"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(exc, UnidentifiedImageError):
        return f"not a decodable image: {msg}"
    return f"truncated or corrupt image: {type(exc).__name__}: {msg}"


class ImageFileDataset(Dataset):
    """Image files -> ``(tensor, index, error)``; ``error`` is ``None`` or a one-line reason.

    ``transform`` maps an RGB PIL image to a tensor of fixed shape (e.g. open_clip's preprocess).
    It is applied once to a small black image at construction to learn the output ``shape`` and
    ``dtype``, used for the zero placeholder returned for unreadable files.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable, reader=None):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform
        self.reader = reader  # rows of a table (TableImages): read bytes by index instead of opening paths
        probe = transform(Image.new("RGB", _PROBE_SIZE))
        if not isinstance(probe, torch.Tensor):
            raise TypeError(f"transform must return a torch.Tensor, got {type(probe).__name__}")
        self.shape: tuple[int, ...] = tuple(probe.shape)
        self.dtype: torch.dtype = probe.dtype

    def __len__(self) -> int:
        return len(self.paths)

    def _placeholder(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.dtype)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str | None]:
        path = self.paths[i]
        try:
            source = io.BytesIO(self.reader.read(i)) if self.reader is not None else path
            with Image.open(source) as im:
                im.load()
                rgb = im.convert("RGB")
            tensor = self.transform(rgb)
        except Exception as exc:  # any bad file must not abort the run
            return self._placeholder(), i, _describe_error(path, exc)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != self.shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            return self._placeholder(), i, f"transform gave shape {got}, expected {self.shape}"
        return tensor, i, None


def collate(
    batch: Sequence[tuple[torch.Tensor, int, str | None]],
) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """Stack items into ``(images [B, ...], indices LongTensor [B], errors)``.

    ``errors`` is a list aligned with ``indices``: ``None`` for a good file, else the reason.
    """
    images = torch.stack([item[0] for item in batch])
    indices = torch.tensor([item[1] for item in batch], dtype=torch.long)
    errors = [item[2] for item in batch]
    return images, indices, errors


def iterate_batches(
    paths: Sequence[str | os.PathLike],
    transform: Callable,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    reader=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str | None]]]:
    """Yield ``(images, indices, errors)`` batches over ``paths`` in order (see ``collate``).

    ``indices`` are positions in ``paths``. Never raises for unreadable files. With ``reader``
    (a table's rows), item i's bytes come from ``reader.read(i)`` and ``paths`` only name them.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}", hint="use e.g. 64")
    if num_workers < 0:
        raise UsageError(f"number of workers must be 0 or more, got {num_workers}", hint="use 0")
    dataset = ImageFileDataset(paths, transform, reader)
    if len(dataset) == 0:
        return
    # No point starting more worker processes than there are batches.
    workers = min(num_workers, math.ceil(len(dataset) / batch_size))
    kwargs = {}
    if workers > 0:
        kwargs["prefetch_factor"] = 2
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        **kwargs,
    )
    yield from loader


def default_num_workers() -> int:
    """A sensible default number of decoding worker processes.

    One core is left for the main process (which runs the model and its own threads), capped at
    8 since JPEG decoding + resizing at that rate already outruns a CLIP forward pass. On a 1-2
    core machine this is 0: worker processes would only compete with the main process for the
    same cores and add start-up cost and memory, so decoding in the main process is faster.
    """
    try:
        cpus = len(os.sched_getaffinity(0))  # honours taskset / container CPU limits
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus <= 2:
        return 0
    return min(8, cpus - 1)
