"""Image bytes -> uint8 RGB tensors [3, H, W]: the only per-image work left on the CPU.

JPEGs (the bulk of every benchmark set) go through `torchvision.io.decode_jpeg` (libjpeg-turbo,
about 1.6x PIL's decode + convert here); every other format and every JPEG that is not plain
RGB/grayscale (CMYK, YCCK) or does not end in the end-of-image marker goes through PIL with
`convert("RGB")`, exactly as the reference path does, so truncated files fail the same way and
are reported with the same reasons. PIL reads the header first in both cases: that is where the
pixel cap (`data/guard.py`, --max-pixels) and the format sniffing live, and it costs ~30 us.

Reduced-scale decoding ("draft", docs/method.md): given a minimum shorter side `min_side`, a
JPEG whose shorter side is at least twice that is decoded by libjpeg at DCT scale 1/2 or 1/4 (the
largest that keeps the shorter side >= `min_side`; PIL's `Image.draft`, as torchvision's
`decode_jpeg` has no scale option in 0.29). Not 1/8: libjpeg keeps only each block's DC term
there (an 8x8 box average), which moved the tiny model's features past the equivalence bound
(tests/test_jpeg_draft.py). The IDCT, colour conversion and the later resize touch 4-16x fewer
pixels (the entropy decoding stays); the pixels differ slightly from a full decode + resize, so
the feature caches key on it and `--exact-preprocess` turns it off. The pipeline passes twice
the model's resize target as `min_side` (`TensorPreprocess.draft_min_side`).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from synood_cli.data.guard import open_image

_EOI = b"\xff\xd9"


# libjpeg's DCT scaling denominators used, largest first (PIL's draft offers 8 too: see above)
DRAFT_SCALES = (4, 2)


def draft_scale(size: tuple[int, int], min_side: int | None) -> int:
    """The DCT scale denominator a JPEG of `size` (w, h) is decoded at: 1 (full size), 2 or 4.

    The largest reduction that keeps the shorter side >= `min_side`.
    """
    if not min_side:
        return 1
    shorter = min(size)
    return next((s for s in DRAFT_SCALES if shorter >= s * min_side), 1)


def _fast(im: Image.Image, data: bytes) -> bool:
    return im.format == "JPEG" and im.mode in ("RGB", "L") and data.rstrip(b"\x00")[-2:] == _EOI


def jpeg_fast_path(data: bytes, min_side: int | None = None) -> bool:
    """Whether `decode_jpeg` (CPU or nvJPEG) decodes these bytes: it gives the same pixels as PIL's
    decode + convert("RGB"), and (with `min_side`) no reduced-scale decode applies.

    Raises what PIL raises for an unreadable header (not an image, decompression bomb), so the
    caller reports those files exactly as before.
    """
    with open_image(io.BytesIO(data)) as im:  # header only; the pixel cap (data/guard.py) runs here
        return _fast(im, data) and draft_scale(im.size, min_side) == 1


def _pil_rgb(im: Image.Image) -> torch.Tensor:
    """PIL's decode + convert("RGB") (the reference path) as a uint8 tensor [3, H, W]."""
    im.load()
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert("RGB") of an RGB image is a copy
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def jpeg_tensor(data: bytes) -> torch.Tensor:
    """The encoded bytes as a 1-D uint8 tensor, the input `decode_jpeg` takes (CPU or CUDA)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _torchvision_decode_jpeg():
    """torchvision's decoder, or None: 0.29 deprecated its image I/O in favour of TorchCodec, and
    a build without it must fall back to PIL rather than report every JPEG as unreadable."""
    global _DECODE_JPEG
    if _DECODE_JPEG is None:
        try:
            import warnings

            # warned on every call; the PIL fallback below covers its eventual removal
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            _DECODE_JPEG = lambda t: decode_jpeg(t, mode=ImageReadMode.RGB)  # noqa: E731
        except (ImportError, RuntimeError, OSError):
            _DECODE_JPEG = False
    return _DECODE_JPEG or None


_DECODE_JPEG = None


def decode_rgb(data: bytes) -> torch.Tensor:
    """Decode any image the reference path can read into uint8 RGB [3, H, W]; raises on a bad file."""
    return decode_rgb_reduced(data, None)[0]


def decode_rgb_reduced(data: bytes, min_side: int | None) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Like `decode_rgb`, but a JPEG at least twice `min_side` on its shorter side comes back
    reduced by libjpeg's DCT scaling (see the module docstring).

    Returns ``(image, source_size)``: ``source_size`` is the full picture's (w, h) when the image
    came back reduced (the resize needs it to reproduce open_clip's geometry), else None.
    """
    decode = _torchvision_decode_jpeg()
    with open_image(io.BytesIO(data)) as im:  # header only; the pixel cap (data/guard.py) runs here
        scale = draft_scale(im.size, min_side) if im.format == "JPEG" else 1
        if scale > 1:
            source = im.size
            # any JPEG mode (grayscale, CMYK too): PIL decodes and converts as the reference does;
            # PIL picks the largest scale that keeps the requested size, so ask for exactly 1/scale
            im.draft("RGB", (source[0] // scale, source[1] // scale))
            return _pil_rgb(im), source
        if decode is None or not _fast(im, data):
            return _pil_rgb(im), None
    return decode(jpeg_tensor(data)), None


def decode_jpegs_on(device: torch.device, blobs: list[torch.Tensor]) -> list[torch.Tensor | BaseException]:
    """GPU JPEG decoding of a batch (nvJPEG through torchvision); per file on failure.

    Returns one uint8 [3, H, W] tensor on `device` per input, or the exception for a file that
    neither the batch nor the single-file decode could read (the caller decodes those on the CPU).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    try:
        return list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device))
    except Exception:  # one bad file fails the whole batched call: retry one by one
        out: list[torch.Tensor | BaseException] = []
        for b in blobs:
            try:
                out.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
            except Exception as exc:
                out.append(exc)
        return out
