"""The `world` profile runs on the world's own models: its inpainting pipeline and its context describer.

`--profile world` names `synood-world-inpaint` (the shipped, hash-checked pipeline) for synthesis
and the `world` MLLM backend (retrieval with the world's CLIP) for prompting (docs/world.md).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from synood_cli.models.clip import clip_source, load_clip
from synood_cli.models.diffusion import WORLD_DIFFUSION, load_inpainter, validate_diffusion
from synood_cli.models.mllm import BACKENDS, mllm_spec, validate_mllm
from synood_cli.profiles import load_profile
from synood_cli.store import Store
from synood_cli.world import inpaint_model as im
from synood_cli.world import spec


def test_world_profile_names_the_world_inpainter_and_describer_and_both_validate():
    prof = load_profile("world")
    assert prof["synthesize"]["diffusion"] == "synood-world-inpaint"
    assert prof["prompt"]["mllm"] == "world"
    assert prof["synthesize"]["size"] == 64  # the world's images and the pipeline's 16x16 latents x 4
    validate_diffusion(prof["synthesize"]["diffusion"])  # hash check of the shipped folder, no error
    s = mllm_spec(prof["prompt"]["mllm"])
    assert s.backend == "world" and "world" in BACKENDS.names()
    validate_mllm(s)  # hash check of the shipped CLIP, no error


def test_the_name_loads_the_shipped_trained_pipeline():
    from safetensors.torch import load_file

    inp = load_inpainter(WORLD_DIFFUSION, None, torch.device("cpu"), torch.float32)
    assert inp.label == "synood-world-inpaint" and inp.unet.config.in_channels == 9
    shipped = load_file(im.SHIPPED / "unet" / "diffusion_pytorch_model.safetensors")
    name = "conv_in.weight"
    assert torch.equal(inp.unet.state_dict()[name], shipped[name].float())


def test_clip_guide_takes_a_modified_resnet_tower_and_scores_like_zero_shot(tmp_path):
    """The world CLIP's ModifiedResNet keeps image_size as an int (RN50 too): the guide used to crash on it."""
    from synood_cli.guidance import clip_guide

    clip = load_clip(clip_source({}, model="world"), Store(tmp_path), torch.device("cpu"), torch.float32)
    imgs = [torch.from_numpy(spec.set_image(0, "id_val", k, 7)[0]).permute(2, 0, 1) for k in range(4)]
    text = clip.encode_texts([f"the nice {n}" for n in spec.ID_NAMES])
    guide = clip_guide(clip, text)
    got = guide.forward(torch.stack(imgs).float() / 255)
    want = clip.encode_images(clip.pixels(imgs)) @ text.T / 0.01
    assert got.shape == (4, len(spec.ID_NAMES))
    assert torch.allclose(got, want, atol=0.05), (got - want).abs().max()


@pytest.mark.slow  # about 6 s: loads the world CLIP and encodes the describer's 6000 context captions
def test_prompt_stage_under_the_world_profile_names_each_image_context(tmp_path, invoke):
    folder, truth = tmp_path / "train", {}
    for label in (0, 5):
        kind = spec.ID_NAMES[label]
        (folder / kind).mkdir(parents=True)
        for i in range(2):
            img, _, attrs = spec.set_image(3, "id_train", label, i)
            path = folder / kind / f"{i}.png"
            Image.fromarray(img).save(path)
            truth[path.name, kind] = attrs["context"]
    r = invoke("prompt", str(folder), "--profile", "world", "--per-class", "2", "--export", "-")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    for row in rows:
        ctx = truth[row["image_path"].rsplit("/", 1)[1], row["image_path"].rsplit("/", 2)[1]]
        assert row["context"] in im.context_phrases()[ctx]
        assert row["prompt"] == f"A photo only remain {row['context']}."
