"""Files to encoder-ready pixel batches: the one input pipeline of score, evaluate and finetune.

Fast path (default): loader processes only decode (`data/decoding.py`); resize, crop and
normalise run batched on the encoder's device (`data/preprocess.py`); a JPEG at least 4x the
model's resize target (shorter side) is decoded at libjpeg's reduced DCT scale and resized in the
loader process (`data/decoding.py`); with `decode_device` on CUDA, the other JPEGs are decoded
there (nvJPEG), one batched call, falling back per file. With the encoder on the CPU, "the
encoder's device" is the workers' CPU: they resize each image right after decoding it, so only
model-sized uint8 images travel to the main process. Exact path
(`exact=True`, or a model whose transform `TensorPreprocess` cannot reproduce): open_clip's own
PIL transform in the loader processes, bit-identical to published code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from synood_cli.data.loading import available_cpus, iterate_batches, iterate_decoded, loader_workers


@contextlib.contextmanager
def _thread_budget(device: torch.device, workers: int):
    """Give the main process the cores the decoding workers leave (each worker runs 1 thread).

    torch's default of one thread per core in the main process, on top of busy workers, made
    small forwards up to ~50x slower on this 2-core machine (benchmarks/RESULTS.md).
    """
    if workers <= 0 or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cpus() - workers))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _gpu_decode(images: list, errors: list, device: torch.device) -> None:
    """Decode the still-encoded JPEGs (1-D tensors) of a batch on `device`, in place."""
    from synood_cli.data.decoding import decode_jpegs_on, decode_rgb

    todo = [i for i, im in enumerate(images) if im is not None and im.dim() == 1]
    if not todo:
        return
    decoded = decode_jpegs_on(device, [images[i] for i in todo])  # nvJPEG reads the bytes from host memory
    for i, out in zip(todo, decoded):
        if isinstance(out, torch.Tensor):
            images[i] = out
            continue
        try:  # nvJPEG refused it: the CPU decoder (and its error reporting) decides
            images[i] = decode_rgb(images[i].cpu().numpy().tobytes())
        except Exception as exc:
            images[i], errors[i] = None, f"truncated or corrupt image: {type(exc).__name__}: {exc}"


def iterate_pixels(
    clip,
    paths: Sequence[str | os.PathLike],
    batch_size: int,
    num_workers: int = 0,
    reader=None,
) -> Iterator[tuple[torch.Tensor | None, np.ndarray, list[str | None]]]:
    """Yield ``(pixels, indices, errors)`` per batch, in order; never raises for a bad file.

    ``indices`` (positions in ``paths``) and ``errors`` (None or a one-line reason) cover the
    whole batch; ``pixels`` [G, 3, h, w] on ``clip.device`` holds only the G good images, in
    order (None when the batch has none). ``clip.exact_preprocess`` picks the PIL path,
    ``clip.jpeg_draft`` (default on) reduced-scale decoding of large JPEGs on the fast path and
    ``clip.decode_device`` (cuda) GPU JPEG decoding of the others.
    """
    device, decode_device = clip.device, clip.decode_device
    prep = None if clip.exact_preprocess else clip.tensor_preprocess
    workers = loader_workers(num_workers, len(paths), batch_size)
    pin = device.type == "cuda"
    gpu_decode = prep is not None and decode_device is not None and torch.device(decode_device).type == "cuda"
    with _thread_budget(device, workers):
        if prep is None:
            for images, indices, errors in iterate_batches(paths, clip.preprocess, batch_size, num_workers, pin, reader):
                good = [i for i, e in enumerate(errors) if not e]
                pixels = (images[good] if len(good) < len(errors) else images).to(device, non_blocking=True) if good else None
                yield pixels, indices.numpy(), errors
            return
        # encoder on the CPU: resize in the workers right after decoding (full-size images never
        # cross processes); on CUDA: full-size uint8 to the GPU, resized there in batches
        resize = prep.resize_crop_one if device.type == "cpu" else None
        # large JPEGs decoded at a reduced DCT scale, then resized in the worker (data/decoding.py)
        draft = prep if clip.jpeg_draft else None
        for images, indices, errors in iterate_decoded(paths, batch_size, num_workers, pin, reader, gpu_decode, device, resize, draft):
            if gpu_decode:
                _gpu_decode(images, errors, torch.device(decode_device))
            good = [im for im, e in zip(images, errors) if not e]
            yield (prep(good, device) if good else None), indices.numpy(), errors


class _Blobs:
    """In-memory image bytes as a loader `reader` (data/loading.py reads item i with `read(i)`)."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs

    def read(self, i: int) -> bytes:
        return self.blobs[i]


def encode_blobs(clip, blobs: list[bytes], batch_size: int, advance=None, what: str = "images") -> torch.Tensor:
    """Raw features g [N, d] of images given as bytes (finetune's feature cache), through `iterate_pixels`.

    Raises DataError on an undecodable image: a feature cache has no row to leave out.
    """
    from synood_cli.data.loading import default_num_workers
    from synood_cli.errors import DataError

    # workers pay off over many batches; a class of a few dozen images decodes faster in-process
    workers = default_num_workers() if len(blobs) >= 4 * batch_size else 0
    out = []
    names = [f"image {i}" for i in range(len(blobs))]
    for pixels, idx, errors in iterate_pixels(clip, names, batch_size, workers, _Blobs(blobs)):
        bad = [(int(i), e) for i, e in zip(idx, errors) if e]
        if bad:
            raise DataError(f"{what}: image {bad[0][0]} could not be decoded: {bad[0][1]}", hint="fix or remove the file")
        out.append(clip.encode_raw(pixels).cpu())
        if advance is not None:
            advance(len(idx))
    if not out:
        return torch.empty(0, clip.embed_dim or 0)
    return torch.cat(out).contiguous()
