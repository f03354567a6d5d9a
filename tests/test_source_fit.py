"""Source geometry and synthesis precision per profile (docs/method.md, "Boundary-guided inpainting").

The research code squashes every source to 512x512 (`Image.resize((512, 512))`, Pillow's bicubic
default) and runs the pipeline in fp32; the paper profile does both, the default profile crops.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from synood_cli.errors import UsageError
from synood_cli.synthesis import SynthConfig, load_source, with_profile_defaults

RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


@pytest.fixture
def wide(tmp_path):
    """A 96x48 picture: grey, with a red band on its left quarter and a blue band on its right quarter."""
    im = Image.new("RGB", (96, 48), GREY)
    im.paste(RED, (0, 0, 24, 48))
    im.paste(BLUE, (72, 0, 96, 48))
    path = tmp_path / "wide.png"
    im.save(path)
    return path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().to(torch.uint8)


def test_squash_keeps_the_whole_picture_and_crop_its_centre(wide):
    squashed, cropped = to_uint8(load_source(str(wide), 32, "squash")), to_uint8(load_source(str(wide), 32, "crop"))
    assert squashed.shape == cropped.shape == (3, 32, 32)
    # squash: the bands cover a quarter of the width each, at every height (x 96 -> 32: band 24 -> 8 columns)
    assert squashed[:, :, :6].float().mean(dim=(1, 2)).tolist() == pytest.approx(list(RED), abs=2)
    assert squashed[:, :, -6:].float().mean(dim=(1, 2)).tolist() == pytest.approx(list(BLUE), abs=2)
    # crop: shorter side 48 -> 32 gives 64x32, the centre 32 columns are columns 16..48 of it (x 24..72 of the
    # picture): no band left
    assert cropped.float().mean(dim=(1, 2)).tolist() == pytest.approx(list(GREY), abs=1)


def test_squash_is_the_research_codes_resize(wide):
    import numpy as np

    want = torch.from_numpy(np.array(Image.open(wide).convert("RGB").resize((32, 32), Image.BICUBIC))).permute(2, 0, 1)
    assert torch.equal(to_uint8(load_source(str(wide), 32, "squash")), want)


def test_paper_profile_squashes_and_synthesizes_in_fp32():
    cfg = with_profile_defaults(SynthConfig(prompts="p", diffusion="d", profile="paper"))
    assert (cfg.source_fit, cfg.precision) == ("squash", "fp32")


def test_default_profile_crops_and_keeps_auto_precision():
    cfg = with_profile_defaults(SynthConfig(prompts="p", diffusion="d", profile="default"))
    assert (cfg.source_fit, cfg.precision) == ("crop", "auto")


def test_explicit_flags_win_over_the_profile():
    cfg = with_profile_defaults(SynthConfig(prompts="p", diffusion="d", profile="paper", source_fit="crop", precision="bfloat16"))
    assert (cfg.source_fit, cfg.precision) == ("crop", "bf16")


def test_an_unknown_source_fit_is_a_usage_error():
    with pytest.raises(UsageError, match="--source-fit"):
        with_profile_defaults(SynthConfig(prompts="p", diffusion="d", profile="tiny", source_fit="pad"))


def test_the_cli_flag_reaches_the_plan(invoke):
    from conftest import assert_clean_error

    r = invoke("synthesize", "--prompts", "none-yet", "--profile", "tiny", "--source-fit", "pad")
    assert_clean_error(r, 2, "--source-fit 'pad'")
