"""How images reach the MLLM: LLaVA-1.5 sees them padded to a square, as it was trained
(`image_aspect_ratio=pad`), not centre-cropped by llava-hf's processor, which cuts a wide
image's borders (the context the prompt stage asks about) away."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import write_tree
from synood_cli.errors import UsageError
from synood_cli.models.mllm import MllmSpec, expand_to_square, load_answerer, mllm_spec, resolve_image_fit
from synood_cli.store import Store


def test_expand_to_square_centres_the_image_on_the_background():
    wide = Image.new("RGB", (6, 2), (200, 0, 0))
    sq = expand_to_square(wide, (10, 20, 30))
    assert sq.size == (6, 6)
    rows = [sq.getpixel((3, y)) for y in range(6)]
    assert rows == [(10, 20, 30)] * 2 + [(200, 0, 0)] * 2 + [(10, 20, 30)] * 2
    tall = Image.new("RGB", (2, 5), (0, 0, 200))
    sq = expand_to_square(tall, (1, 2, 3))
    assert sq.size == (5, 5)
    assert [sq.getpixel((x, 2)) for x in range(5)] == [(1, 2, 3), (0, 0, 200), (0, 0, 200), (1, 2, 3), (1, 2, 3)]  # offset (5-2)//2 = 1
    same = Image.new("RGB", (4, 4), (5, 5, 5))
    assert expand_to_square(same, (0, 0, 0)) is same


def test_auto_pads_llava_only(tmp_path):
    assert resolve_image_fit(mllm_spec("tiny")) == "pad"  # the tiny profile's model is a LlavaForConditionalGeneration
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert resolve_image_fit(mllm_spec(str(qwen))) == "processor"
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert resolve_image_fit(mllm_spec(str(llava))) == "pad"
    assert resolve_image_fit(mllm_spec(str(llava), image_fit="processor")) == "processor"
    assert resolve_image_fit(mllm_spec("world")) is None
    with pytest.raises(UsageError, match="applies to transformers models"):
        resolve_image_fit(mllm_spec("world", image_fit="pad"))
    with pytest.raises(UsageError, match="must be one of"):
        resolve_image_fit(MllmSpec("tiny", "synood-tiny-llava", image_fit="letterbox"))


@pytest.fixture(scope="module")
def tiny_answerers(tiny_weights):
    store = Store(tiny_weights)
    cpu = torch.device("cpu")
    return {fit: load_answerer(mllm_spec("tiny", image_fit=fit), store, cpu, torch.float32, 8) for fit in ("pad", "processor")}


def test_llava_answers_about_the_padded_image(tiny_answerers):
    padded, cropped = tiny_answerers["pad"], tiny_answerers["processor"]
    assert padded.background == (122, 116, 104)  # CLIP's image mean x 255, truncated as LLaVA's code does
    wide = Image.new("RGB", (96, 32), (30, 160, 40))
    for x in range(0, 96, 8):  # stripes near the borders, which a centre crop cuts away
        for y in range(32):
            wide.putpixel((x, y), (250, 250, 250))
    assert padded.model_images([wide])[0].size == (96, 96)
    assert cropped.model_images([wide])[0].size == (96, 32)
    question = ["What is around the object?"]
    by_hand = cropped.answer([expand_to_square(wide, (122, 116, 104))], question)
    assert padded.answer([wide], question) == by_hand  # answer() pads before the processor
    assert cropped.answer([wide], question) != by_hand  # and padding is not what the processor does


def test_prompts_record_the_padding_in_their_identity(tmp_path, tiny_weights):
    from synood_cli.prompting import PromptConfig, plan_prompts

    tree = write_tree(tmp_path / "train", {"cat": 2, "dog": 2}, corrupt=False, junk=False)
    plans = {fit: plan_prompts(PromptConfig(folder=tree.root, mllm=mllm_spec("tiny", image_fit=fit), per_class=2)) for fit in ("auto", "processor")}
    assert plans["auto"].artifact_config["image_fit"] == "pad"
    assert plans["auto"].config.mllm.image_fit == "pad"  # what load_answerer will use
    assert "image_fit" not in plans["processor"].artifact_config  # the processor's own geometry keeps older ids
    store = Store(tmp_path / "home")
    assert store.artifact("prompts", plans["auto"].identity).id != store.artifact("prompts", plans["processor"].identity).id
