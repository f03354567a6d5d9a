"""The batched preprocessing resamples a tall picture in Pillow's pass order (docs/method.md, "Differences").

Pillow 13 resamples a picture whose height is over twice its width vertical pass first; torch's
antialiased resize goes horizontal first. Both round to uint8 between the passes, so the order
changes pixels: on this 300x800 picture the mean |torch - PIL| was 0.0097 grey levels in the
other order and 0.0022 in Pillow's, the level of pictures of any other shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synood_cli.data.preprocess import TensorPreprocess

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tall() -> Image.Image:
    """300x800, smooth content (noise upscaled) with some fine detail, as a photo has."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (800, 300, 3), dtype=np.uint8)).resize((37, 100), Image.BILINEAR)
    return coarse.resize((300, 800), Image.BICUBIC)


def pil_reference(im: Image.Image) -> np.ndarray:
    """open_clip's eval transform up to the crop (Resize(224, bicubic) then CenterCrop(224)), on PIL."""
    import open_clip

    transform = open_clip.image_transform(224, is_train=False)
    return np.asarray(transform.transforms[1](transform.transforms[0](im))).astype(int)


def test_a_tall_picture_resized_in_a_worker_matches_pillow(tall):
    prep = TensorPreprocess(224, (224, 224), "bicubic", MEAN, STD)
    ours = prep.resize_crop_one(torch.from_numpy(np.array(tall)).permute(2, 0, 1)).permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ours - pil_reference(tall))
    assert diff.max() <= 2 and diff.mean() < 0.005, (diff.max(), diff.mean())


def test_a_tall_picture_resized_in_a_batch_matches_pillow(tall):
    prep = TensorPreprocess(224, (224, 224), "bicubic", MEAN, STD)
    pixels = prep([torch.from_numpy(np.array(tall)).permute(2, 0, 1)], torch.device("cpu"))[0]
    back = (pixels * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255
    diff = np.abs(back.round().permute(1, 2, 0).numpy().astype(int) - pil_reference(tall))
    assert diff.max() <= 2 and diff.mean() < 0.005, (diff.max(), diff.mean())
