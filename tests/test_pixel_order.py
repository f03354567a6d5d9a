"""Batched preprocessing keeps each image in its place when a batch mixes sizes.

`TensorPreprocess.__call__` resizes same-sized images together and writes each group back into
the batch; it is the one function behind both the CUDA input path (full-size images resized on
the GPU, data/pixels.py) and `ClipModel.pixels` (synthesis guidance). A wrong write-back order
gives an image another file's pixels, so its score lands on another row. Every image here is one
flat colour, which resizing and cropping keep: row i must hold colour i, normalised as written
out below, whatever the grouping did.
"""

from __future__ import annotations

import pytest
import torch

from synood_cli.data.preprocess import TensorPreprocess

MEAN, STD = (0.5, 0.25, 0.75), (0.2, 0.4, 0.5)
# (height, width) per image: three sizes, interleaved, two or three images each
SIZES = [(20, 30), (30, 20), (20, 30), (16, 16), (30, 20), (20, 30), (16, 16)]


def _flat(h: int, w: int, i: int) -> torch.Tensor:
    colour = torch.tensor([10 + 30 * i, 200 - 25 * i, 7 * i + 1], dtype=torch.uint8)
    return colour.view(3, 1, 1).expand(3, h, w).contiguous()


def _expected(i: int) -> torch.Tensor:
    """Row i: colour i through ToTensor and Normalize, written out: (c / 255 - mean) / std per channel."""
    c = [10 + 30 * i, 200 - 25 * i, 7 * i + 1]
    return torch.tensor([(c[k] / 255 - MEAN[k]) / STD[k] for k in range(3)]).view(3, 1, 1).expand(3, 16, 16)


def _images() -> list[torch.Tensor]:
    return [_flat(h, w, i) for i, (h, w) in enumerate(SIZES)]


def _check(pixels: torch.Tensor) -> None:
    assert pixels.shape == (len(SIZES), 3, 16, 16)
    for i in range(len(SIZES)):
        torch.testing.assert_close(pixels[i], _expected(i), rtol=0, atol=1e-5, msg=lambda m, i=i: f"row {i}: {m}")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_mixed_sizes_come_back_in_batch_order(device):
    prep = TensorPreprocess(16, (16, 16), "bicubic", MEAN, STD)
    _check(prep(_images(), torch.device(device)).cpu())


def test_images_stored_channels_last_come_back_in_batch_order():
    # decoders hand out HWC memory viewed as CHW: the layout `__call__` stacks on the fast path
    prep = TensorPreprocess(16, (16, 16), "bilinear", MEAN, STD)
    _check(prep([im.permute(1, 2, 0).contiguous().permute(2, 0, 1) for im in _images()], torch.device("cpu")))


def _convert_to_rgb(image):  # the name open_clip's transform gives this step
    return image.convert("RGB")


@pytest.mark.parametrize("exact", [False, True])
def test_clip_model_pixels_keeps_the_batch_order(exact):
    from torchvision import transforms as T

    from synood_cli.models.clip import ClipModel

    transform = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16), _convert_to_rgb,
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    clip = ClipModel(torch.nn.Module(), transform, None, None, "test", torch.device("cpu"), torch.float32)
    assert clip.tensor_preprocess is not None  # the batched path reads this transform
    clip.exact_preprocess = exact
    _check(clip.pixels(_images()))
