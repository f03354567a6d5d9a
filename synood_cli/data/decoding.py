"""Image bytes -> uint8 RGB tensors [3, H, W]: the only per-image work left on the CPU.

JPEGs (the bulk of every benchmark set) go through `torchvision.io.decode_jpeg` (libjpeg-turbo,
about 1.6x PIL's decode + convert here); every other format and every JPEG that is not plain
RGB/grayscale (CMYK, YCCK) or does not end in the end-of-image marker goes through PIL with
`convert("RGB")`, exactly as the reference path does, so truncated files fail the same way and
are reported with the same reasons. PIL reads the header first in both cases: that is where the
decompression-bomb guard and the format sniffing live, and it costs ~30 us.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

_EOI = b"\xff\xd9"


def jpeg_fast_path(data: bytes) -> bool:
    """Whether `decode_jpeg` gives the same pixels as PIL's decode + convert("RGB") for these bytes.

    Raises what PIL raises for an unreadable header (not an image, decompression bomb), so the
    caller reports those files exactly as before.
    """
    with Image.open(io.BytesIO(data)) as im:  # header only; the bomb guard runs here
        return im.format == "JPEG" and im.mode in ("RGB", "L") and data.rstrip(b"\x00")[-2:] == _EOI


def pil_decode_rgb(data: bytes) -> torch.Tensor:
    """PIL's decode + convert("RGB") (the reference path) as a uint8 tensor [3, H, W]."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = im.convert("RGB")
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
    decode = _torchvision_decode_jpeg()
    if decode is not None and jpeg_fast_path(data):
        return decode(jpeg_tensor(data))
    return pil_decode_rgb(data)


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
