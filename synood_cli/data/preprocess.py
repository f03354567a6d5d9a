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

from dataclasses import dataclass

import torch

_MODES = {"bicubic", "bilinear"}


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

    def _resize_crop(self, batch: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        interp = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        batch = F.resize(batch, [self.size], interpolation=interp, antialias=True)
        return F.center_crop(batch, list(self.crop))

    def __call__(self, images: list[torch.Tensor], device: torch.device, out_dtype=torch.float32) -> torch.Tensor:
        """uint8 images [3, H_i, W_i] (any device) -> normalised [B, 3, h, w] on `device`.

        Images of the same size are resized in one call: a dataset of equal-sized files is
        resized as one batch, a varied one in a few groups.
        """
        h, w = self.crop
        out = torch.empty((len(images), 3, h, w), dtype=torch.uint8, device=device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for positions in groups.values():
            batch = torch.stack([images[i] for i in positions]) if len(positions) > 1 else images[positions[0]][None]
            batch = batch.to(device, non_blocking=True)
            cropped = self._resize_crop(batch)
            if len(positions) == len(images):
                out = cropped
            else:
                out[torch.tensor(positions, device=device)] = cropped
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        # ToTensor then Normalize: (x / 255 - mean) / std, in fp32 as open_clip computes it
        pixels = (out.to(torch.float32).div_(255.0).sub_(mean)).div_(std)
        return pixels if out_dtype == torch.float32 else pixels.to(out_dtype)
