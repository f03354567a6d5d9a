"""Decode image files into batches of tensors, never failing on a bad file.

A file that cannot be decoded (truncated JPEG, empty file, not really an image, a decompression
bomb or an image over the pixel cap, a FIFO or device, an I/O error) yields a zero tensor of the transform's output shape plus an error string, so
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
    from synood_cli.data.guard import ImageTooLarge, NotRegularFile

    msg = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "(row bytes)", str(exc)) or type(exc).__name__
    if isinstance(exc, NotRegularFile):
        return str(exc)
    if isinstance(exc, ImageTooLarge):
        return f"image too large: {msg}"
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
        from synood_cli.data.guard import image_warnings, open_image, read_regular

        path = self.paths[i]
        try:
            with image_warnings(path):
                source = io.BytesIO(self.reader.read(i) if self.reader is not None else read_regular(path))
                with open_image(source) as im:
                    im.load()
                    rgb = im.convert("RGB")
                tensor = self.transform(rgb)
        except Exception as exc:  # any bad file must not abort the run
            reason = _describe_error(path, exc)
            return self._placeholder(), i, reason if self.reader is not None else reason.replace("(row bytes)", repr(path))
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


class DecodedImageDataset(Dataset):
    """Image files -> ``(uint8 [3, H, W] | None, index, error)``: decode only, no transform.

    Resizing and normalising happen batched on the encoder's device (`data/pixels.py`). With
    ``jpeg_bytes`` the JPEGs that `decode_jpeg` can read come back still encoded (1-D uint8) for
    GPU decoding; everything else is decoded here. With ``draft`` (the model's TensorPreprocess)
    a JPEG at least twice its `draft_min_side` is decoded here at a reduced DCT scale
    (`data/decoding.py`) and resized and cropped right away to open_clip's geometry for the full
    picture, GPU decoding or not: only this process knows the picture's full size.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], reader=None, jpeg_bytes: bool = False, resize: Callable | None = None,
                 draft=None):
        self.paths = [os.fspath(p) for p in paths]
        self.reader = reader
        self.jpeg_bytes = jpeg_bytes
        self.resize = resize  # uint8 -> uint8 at the model's size, for an encoder on the CPU
        self.draft = draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        from synood_cli.data.decoding import decode_rgb_reduced, jpeg_fast_path, jpeg_tensor
        from synood_cli.data.guard import image_warnings, read_regular

        path = self.paths[i]
        try:
            with image_warnings(path):
                data = self.reader.read(i) if self.reader is not None else read_regular(path)
                min_side = self.draft.draft_min_side if self.draft is not None else None
                if self.jpeg_bytes and jpeg_fast_path(data, min_side):
                    return jpeg_tensor(data), i, None
                image, source_size = decode_rgb_reduced(data, min_side)  # min_side None: never reduced
                if source_size is not None:
                    return self.draft.resize_crop_one(image, source_size), i, None
                return (self.resize(image) if self.resize is not None else image), i, None
        except Exception as exc:  # any bad file must not abort the run
            reason = _describe_error(path, exc)
            return None, i, reason if self.reader is not None else reason.replace("(row bytes)", repr(path))


def collate_decoded(batch):
    """``(list of uint8 tensors or None, indices LongTensor [B], errors)``: sizes differ, no stacking."""
    return [item[0] for item in batch], torch.tensor([item[1] for item in batch], dtype=torch.long), [item[2] for item in batch]


def collate_packed(batch):
    """Like `collate_decoded`, with the images packed into one flat uint8 buffer plus their shapes.

    A worker hands each tensor to the main process through its own shared-memory segment; one
    segment per batch instead of one per image. Decoders give HWC memory (a CHW view), packed
    as such.
    """
    images, indices, errors = collate_decoded(batch)
    parts, shapes = [], []
    for im in images:
        if im is None:
            shapes.append(None)
            continue
        hwc = im.permute(1, 2, 0) if im.dim() == 3 else im
        parts.append(hwc.reshape(-1))
        shapes.append(tuple(hwc.shape))
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return (flat, shapes), indices, errors


def unpack(packed) -> list:
    """Views into the packed buffer, back as [3, H, W] images (1-D for still-encoded JPEGs)."""
    flat, shapes = packed
    out, offset = [], 0
    for shape in shapes:
        if shape is None:
            out.append(None)
            continue
        n = math.prod(shape)
        part = flat[offset : offset + n].view(shape)
        out.append(part.permute(2, 0, 1) if len(shape) == 3 else part)
        offset += n
    return out


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
    _check_sizes(batch_size, num_workers)
    dataset = ImageFileDataset(paths, transform, reader)
    if len(dataset) == 0:
        return
    yield from _loader(dataset, batch_size, num_workers, collate, pin_memory)


def iterate_decoded(
    paths: Sequence[str | os.PathLike],
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    reader=None,
    jpeg_bytes: bool = False,
    device=None,
    resize: Callable | None = None,
    draft=None,
) -> Iterator[tuple[list, torch.Tensor, list[str | None]]]:
    """Yield ``(images, indices, errors)`` with ``images`` a list of uint8 tensors (None for a bad file).

    On a CUDA ``device`` (and without ``jpeg_bytes``, which nvJPEG reads from host memory) the
    decoded batch is copied there in one piece and the images are views on the GPU. ``resize``
    (uint8 image -> uint8 image) runs right after decoding, in the worker. ``draft`` (a TensorPreprocess):
    decode large JPEGs at a reduced DCT scale (see `DecodedImageDataset`).
    """
    _check_sizes(batch_size, num_workers)
    dataset = DecodedImageDataset(paths, reader, jpeg_bytes, resize, draft)
    if len(dataset) == 0:
        return
    if loader_workers(num_workers, len(dataset), batch_size) == 0:
        yield from _loader(dataset, batch_size, 0, collate_decoded, pin_memory)
        return
    for (flat, shapes), indices, errors in _loader(dataset, batch_size, num_workers, collate_packed, pin_memory):
        if device is not None and torch.device(device).type == "cuda" and not jpeg_bytes:
            flat = flat.to(device, non_blocking=True)  # one copy from pinned memory; images are views on the GPU
        yield unpack((flat, shapes)), indices, errors


def _check_sizes(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}", hint="use e.g. 64")
    if num_workers < 0:
        raise UsageError(f"number of workers must be 0 or more, got {num_workers}", hint="use 0")


def loader_workers(num_workers: int, n: int, batch_size: int) -> int:
    """Worker processes actually started: no more than batches, and none for a single batch.

    One batch gains nothing from a worker (the main process would only wait for it) and pays its
    start-up: that is `synood score one.jpg`.
    """
    batches = math.ceil(n / batch_size)
    return 0 if batches <= 1 else min(num_workers, batches)


def _loader(dataset, batch_size: int, num_workers: int, collate_fn, pin_memory: bool):
    workers = loader_workers(num_workers, len(dataset), batch_size)
    kwargs = {}
    if workers > 0:
        # several batches queued per worker: the encoder never waits while the CPU keeps up
        kwargs["prefetch_factor"] = 4
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        **kwargs,
    )


def available_cpus() -> int:
    """Cores this process may run on (honours taskset / container CPU limits).

    Under torchrun the ranks of a node share its cores: an unrestricted affinity is divided by
    the ranks on this node (LOCAL_WORLD_SIZE), so 8 ranks do not start 8 x 16 decoders. srun
    with --cpus-per-task already binds each task to its own cores, seen in the affinity.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    if local > 1 and cpus >= (os.cpu_count() or cpus):
        cpus = max(1, cpus // local)
    return cpus


def default_num_workers() -> int:
    """Decoding worker processes: one per available core, none on a single core.

    Workers only decode (resizing runs batched on the encoder's device), so each keeps one core
    busy at the JPEG decoder's speed; on a GPU machine the main process mostly waits on the GPU,
    and on a CPU-only one `data/pixels.py` shrinks the main process's torch threads to the cores
    the workers leave. Not capped: a 64-core GPU host needs ~32+ decoders to keep up with
    ViT-B/16 in bf16. On one core a worker only adds start-up and copying.
    """
    cpus = available_cpus()
    return 0 if cpus <= 1 else cpus
