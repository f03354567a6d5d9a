"""open_clip's eval preprocessing, batched in torch on the encoder's device.

open_clip's transform (resize the shorter side with antialiased bicubic, centre crop, ToTensor,
Normalize) runs per image on PIL images in the loader processes, and costs more CPU than the
JPEG decode itself. Here the loader only decodes to uint8 and this module does the same steps on
the device that runs the encoder, on whole groups of same-sized images at once. Antialiased
bicubic in torch uses PIL's kernel (a = -0.5) and the uint8 result is rounded as PIL rounds it,
so features agree closely but not bit for bit with the PIL path (tests/test_image_pipeline.py
measures it); `--exact-preprocess` keeps open_clip's own transform.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

_MODES = {"bicubic", "bilinear"}
DRAFT_MARGIN = 2  # reduced-scale JPEG decodes keep >= this x the resize target (draft_min_side)


@functools.lru_cache(maxsize=1)
def pillow_tall_vertical_first() -> bool:
    """Whether the installed Pillow resamples a tall picture (height over twice the width, shrinking)
    vertical pass first: Pillow 13 does, older versions always went horizontal first. Asked of
    Pillow itself on a 12x40 picture, so the batched path follows whichever Pillow `--exact-preprocess` uses."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 12, 3), dtype=np.uint8))
    both = np.asarray(im.resize((6, 20), Image.BICUBIC))
    vertical_first = np.asarray(im.resize((12, 20), Image.BICUBIC).resize((6, 20), Image.BICUBIC))
    horizontal_first = np.asarray(im.resize((6, 40), Image.BICUBIC).resize((6, 20), Image.BICUBIC))
    return bool((both == vertical_first).all() and not (both == horizontal_first).all())


@dataclass(frozen=True)
class TensorPreprocess:
    """Shorter side to `size`, centre crop `crop` (h, w), scale to [0, 1], normalise."""

    size: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_transform(cls, transform) -> "TensorPreprocess | None":
        """Read open_clip's eval Compose; None when it holds a step this module does not reproduce.

        Accepted: Resize(int, bicubic|bilinear, antialias) -> CenterCrop -> RGB conversion ->
        ToTensor -> Normalize, which is what open_clip builds for every model with
        resize_mode 'shortest' (its default). 'squash', 'longest' or custom transforms keep the
        PIL path.
        """
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", []))
        if len(steps) != 5:
            return None
        resize, crop, convert, to_tensor, norm = steps
        if not isinstance(resize, T.Resize):
            return None
        if not (isinstance(resize.size, int) or (isinstance(resize.size, (list, tuple)) and len(resize.size) == 1)):
            return None  # a fixed (h, w) resize ('squash') distorts the aspect ratio: keep the PIL path
        mode = getattr(resize.interpolation, "value", str(resize.interpolation))
        if mode not in _MODES or resize.max_size is not None or resize.antialias is False:
            return None
        if not isinstance(crop, T.CenterCrop):
            return None
        conv_name = getattr(convert, "__name__", None) or type(convert).__name__  # a function or a transform object
        if conv_name not in ("MaybeConvertMode", "_convert_to_rgb") or getattr(convert, "mode", "RGB") != "RGB":
            return None
        if type(to_tensor).__name__ not in ("MaybeToTensor", "ToTensor") or not isinstance(norm, T.Normalize):
            return None
        size = resize.size if isinstance(resize.size, int) else resize.size[0]
        ch, cw = crop.size if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
        if len(norm.mean) != 3 or len(norm.std) != 3:
            return None
        return cls(int(size), (int(ch), int(cw)), mode, tuple(map(float, norm.mean)), tuple(map(float, norm.std)))

    @property
    def draft_min_side(self) -> int:
        """The shorter side a reduced-scale JPEG decode keeps (data/decoding.py): twice the resize
        target, so the antialiased resize still halves it at least and its kernel, not the DCT
        scaling's box-like one, shapes the frequencies the model sees. With 1x the tiny 64 px
        model's features moved up to 4.8e-3 from open_clip's (tests/test_jpeg_draft.py)."""
        return DRAFT_MARGIN * max(self.size, *self.crop)

    def resized_hw(self, width: int, height: int) -> list[int]:
        """(h, w) that open_clip's Resize(size) gives a width x height picture (torchvision's rule:
        shorter side to `size`, longer side truncated)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return [new_long, new_short] if width <= height else [new_short, new_long]

    def _resize_crop(self, batch: torch.Tensor, hw: list[int] | None = None) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        interp = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        h_in, w_in = batch.shape[-2:]
        if h_in > 2 * w_in and pillow_tall_vertical_first():
            # Pillow resamples such a picture's vertical pass first, torch the horizontal one: the
            # vertical pass alone first keeps the order (docs/method.md, "Differences")
            hw = hw or self.resized_hw(w_in, h_in)
            if hw[0] < h_in and hw[1] != w_in:
                batch = F.resize(batch, [hw[0], w_in], interpolation=interp, antialias=True)
        batch = F.resize(batch, hw or [self.size], interpolation=interp, antialias=True)
        return F.center_crop(batch, list(self.crop))

    def resize_crop_one(self, image: torch.Tensor, source_size: tuple[int, int] | None = None) -> torch.Tensor:
        """One uint8 image [3, H, W] -> resized and cropped uint8 [3, h, w], on its own device.

        With the encoder on the CPU the loader workers call this right after decoding: the
        CPU is the encoder's device, the work spreads over the workers, and only small images
        cross to the main process. A decoder's HWC memory is resized as channels_last, no copy.
        `source_size` (w, h): the image is a reduced-scale decode of a picture that size; it is
        resized to the size open_clip's Resize gives the full picture (the reduced image's own
        size, rounded up per DCT block, would shift the aspect ratio by up to a pixel).
        """
        return self._resize_crop(image[None], self.resized_hw(*source_size) if source_size else None)[0]

    def __call__(self, images: list[torch.Tensor], device: torch.device, out_dtype=torch.float32) -> torch.Tensor:
        """uint8 images [3, H_i, W_i] (any device) -> normalised [B, 3, h, w] on `device`.

        Images of the same size are resized in one call: a dataset of equal-sized files is
        resized as one batch, a varied one in a few groups. Images already at the crop size
        (from `resize_crop_one`) are only stacked and normalised.
        """
        h, w = self.crop
        out = None
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for positions in groups.values():
            # decoders hand out HWC memory (a CHW view): stacking HWC is a plain copy, and the
            # resulting channels_last batch is what the uint8 resize kernels are fastest on
            batch = torch.stack([images[i].permute(1, 2, 0) for i in positions]).permute(0, 3, 1, 2)
            cropped = self._resize_crop(batch.to(device, non_blocking=True))
            if len(positions) == len(images):
                out = cropped
            else:
                if out is None:
                    out = torch.empty((len(images), 3, h, w), dtype=torch.uint8, device=device).contiguous(memory_format=torch.channels_last)
                out[torch.tensor(positions, device=device)] = cropped
        # ToTensor then Normalize, (x / 255 - mean) / std, as one in-place multiply and add in
        # fp32 (addcmul with broadcast operands ran 2-3x slower on the CPU)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=device).view(1, 3, 1, 1)
        pixels = out.to(torch.float32).mul_(scale).add_(shift)
        return pixels if out_dtype == torch.float32 else pixels.to(out_dtype)
