"""The world's inpainting model: shipped weights (hashes, real loading path, one denoising call), its
tokenizer, and the training script's data and resumption (issue 23)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from synood_cli.errors import ResourceMissing
from synood_cli.world import inpaint_model as im
from synood_cli.world import spec
from synood_cli.world import train_inpaint as ti


@pytest.fixture(scope="module")
def shipped():
    """The shipped folder loaded once through load_inpainter (what `--diffusion DIR` runs)."""
    from synood_cli.models.diffusion import load_inpainter

    folder = im.world_inpaint_dir()
    return load_inpainter(str(folder), None, torch.device("cpu"), torch.float32)


def test_shipped_files_match_their_recorded_hashes_and_nothing_is_unlisted():
    record = json.loads(im.RECORD.read_text())
    assert im.world_inpaint_dir() == im.SHIPPED
    listed = set(record["files"])
    on_disk = {p.relative_to(im.SHIPPED).as_posix() for p in im.SHIPPED.rglob("*") if p.is_file()}
    assert listed == on_disk
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "scheduler/scheduler_config.json"} <= listed
    assert sum((im.SHIPPED / f).stat().st_size for f in listed) < 11_000_000


def test_a_damaged_or_missing_weight_file_is_refused(tmp_path):
    folder = tmp_path / "inpaint"
    shutil.copytree(im.SHIPPED, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ResourceMissing, match="damaged"):
        im.world_inpaint_dir(folder)
    weights.unlink()
    with pytest.raises(ResourceMissing, match="missing"):
        im.world_inpaint_dir(folder)


def test_shipped_model_loads_as_an_sd2_style_inpainter_with_the_trained_weights(shipped):
    from safetensors.torch import load_file

    record = json.loads(im.RECORD.read_text())
    assert shipped.unet.config.in_channels == 9 and shipped.unet.config.out_channels == 4
    assert shipped.vae_scale_factor == 4
    assert shipped.latent_scale == pytest.approx(record["training"]["latent_scale"])
    assert shipped.tokenizer.model_max_length == 77
    assert shipped.scheduler_class.__name__ == "DDIMScheduler"
    # the loaded parameters are the stored (fp16) ones brought to fp32, not a fresh initialisation
    stored = load_file(str(im.SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"))
    w = shipped.unet.conv_in.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, stored["conv_in.weight"].float())


def test_every_world_word_is_one_token_of_the_shipped_tokenizer(shipped):
    tok = shipped.tokenizer
    for word in ("octagon", "lollipop", "upside", "brick", "remain", "checkered", "horseshoe", "elephant"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("A photo only remain brick wall.", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["a</w>", "photo</w>", "only</w>", "remain</w>", "brick</w>", "wall</w>", ".</w>"]


def test_one_denoising_call_through_synthesis_gives_finite_images(shipped):
    from synood_cli.synthesis import Synthesizer, SynthConfig

    img, _, _ = spec.set_image(0, "id_val", 3, 0)
    src = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    cfg = SynthConfig(prompts="-", diffusion=shipped.label, size=64, strength=0.6, steps=4, cfg=8.0, iterations=1,
                      guidance="none", mask="full")
    x, _, _ = Synthesizer(cfg, shipped, None, None, torch.device("cpu")).run(src, ["A photo only remain sky."], [1])
    assert x.shape == (1, 3, 64, 64)
    assert torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


def test_learned_merges_make_each_corpus_word_one_symbol(tmp_path):
    tok = im.build_tokenizer(tmp_path / "tok")
    assert tok.model_max_length == 77
    for word in im.corpus_words():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    # a word the world does not know still tokenizes, into pieces, without the unknown token
    ids = tok("zebra", add_special_tokens=False).input_ids
    assert len(ids) > 1 and tok.convert_tokens_to_ids("<|endoftext|>") not in ids


def test_training_batches_are_pure_functions_of_seed_and_step():
    a_img, a_mask, a_attrs = ti.world_batch(0, ti.LABEL_BASE + 5, 4)
    b_img, _, _ = ti.world_batch(0, ti.LABEL_BASE + 5, 2)
    assert np.array_equal(a_img[:2], b_img)
    assert not np.array_equal(a_img, ti.world_batch(0, ti.LABEL_BASE + 6, 4)[0])
    m1, c1, k1 = ti.masks_and_captions(0, 5, a_mask, a_attrs)
    m2, c2, k2 = ti.masks_and_captions(0, 5, a_mask, a_attrs)
    assert np.array_equal(m1, m2) and c1 == c2 and k1 == k2


def test_masks_cover_what_they_say_and_context_prompts_name_the_context():
    imgs, obj, attrs = ti.world_batch(0, ti.LABEL_BASE, 64)
    masks, captions, kinds = ti.masks_and_captions(0, 0, obj, attrs)
    assert set(kinds) == {"full", "object_box", "random_box"}
    for m, o, kind in zip(masks[:, 0], obj, kinds):
        if kind == "full":
            assert m.all()
        elif kind == "object_box":
            assert m[o].all() and not m.all()
        else:
            assert 0 < m.mean() < 1
    ctx = [(c, a) for c, a in zip(captions, attrs) if c.startswith("A photo only remain")]
    assert ctx and "" in captions
    for c, a in ctx:
        assert c[len("A photo only remain "):-1] in im.context_phrases()[a["context"]]


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    kw = dict(vae_steps=2, unet_steps=2, batch=2, every=100)
    ti.train(tmp_path / "whole", **kw)
    for _ in range(4):  # max_minutes=0: each chunk ends after one step and saves
        ti.train(tmp_path / "chunked", max_minutes=0, **kw)
    state = json.loads((tmp_path / "chunked" / "state.json").read_text())
    assert state["vae_step"] == 2 and state["unet_step"] == 2
    for name in ("vae.safetensors", "unet.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "chunked" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


# -- the context describer (retrieval with the world's CLIP) ------------------------------------

WORLD_CLIP = im.WEIGHTS_DIR / "synood-world-clip.safetensors"


@pytest.mark.slow  # about 4.5 s: loads the world CLIP and encodes 6000 context captions
@pytest.mark.skipif(not WORLD_CLIP.is_file(), reason="the world CLIP's weights are not in this checkout")
def test_describer_names_the_context_of_held_out_images_and_makes_a_subject_free_prompt():
    from synood_cli.prompting import PROMPT_TEMPLATE, clean_answer, subject_names
    from synood_cli.world.describer import WorldContextDescriber, load_world_clip, measure

    describer = WorldContextDescriber(*load_world_clip(WORLD_CLIP))
    got = measure(describer, n=48)
    assert got["accuracy"] >= 0.9  # 1.0 measured on 240 held-out images
    img, _, attrs = spec.set_image(0, "id_val", 0, 5)
    from PIL import Image

    (answer,) = describer.answer([Image.fromarray(img)], ["What is around the circle?"])
    assert answer in im.context_phrases()[attrs["context"]]
    prompt = PROMPT_TEMPLATE.format(context=clean_answer(answer, subject_names("circle")))
    assert prompt == f"A photo only remain {answer}."
