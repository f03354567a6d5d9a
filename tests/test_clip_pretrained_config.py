"""Each pretrained tag is built as it was trained (docs/method.md, "CLIP"): QuickGELU for OpenAI's
weights, the tag's mean/std, interpolation and resize mode in both preprocessing paths, and a
model name that contradicts its tag refused (exit 2) instead of left to open_clip's warning.

The real loader runs offline from an HF-cache-shaped folder of random ViT-B-16 weights; the
larger architectures are built on the meta device (no memory, no weights) through the same
`_create` call with the arguments `pretrained_build` derives from the tag.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from synood_cli.errors import UsageError
from synood_cli.models.clip import ClipSource, _create, build_fingerprint, pretrained_build

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
REPO = "timm/vit_base_patch16_clip_224.openai"  # where open_clip's table sends ViT-B-16/openai
REVISION = "0" * 40


def block_activations(model) -> list[str]:
    """The activation class of every residual block's MLP, vision and text towers."""
    blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
    return [type(b.mlp.gelu).__name__ for b in blocks]


def meta_build(model: str, tag: str):
    """The architecture `load_clip` builds for (model, tag), without weights or memory."""
    with torch.device("meta"):
        return _create(model, None, "meta", None, pretrained_build(ClipSource(model, tag)))


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """An HF hub cache holding random fp16 ViT-B-16 weights under the openai tag's repo."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hf-hub")
    repo = root / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in open_clip.create_model("ViT-B-16", device="meta").state_dict().items()}
    # N(0, 0.02) values, one seeded block tiled over every tensor: drawing 150M normals costs seconds
    block = (0.02 * torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))).half()
    save_file({k: block.repeat(-(-s.numel() // block.numel()))[: s.numel()].view(s) for k, s in shapes.items()},
              str(snap / "open_clip_model.safetensors"))
    return root


@pytest.fixture(scope="module")
def openai_b16(hf_cache, tmp_path_factory):
    """`load_clip` of ViT-B-16/openai, offline, from the cache; with every warning and log record it raised."""
    from synood_cli.models.clip import load_clip
    from synood_cli.store import Store

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(hf_cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clip = load_clip(ClipSource("ViT-B-16", "openai"), Store(tmp_path_factory.mktemp("home")), torch.device("cpu"), torch.float32)
    finally:
        logging.getLogger().removeHandler(handler)
        mp.undo()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    return clip, messages


def test_openai_vit_b16_loads_from_the_hf_cache_with_quickgelu_in_every_block(openai_b16):
    clip, _ = openai_b16
    acts = block_activations(clip.model)
    assert len(acts) == 24 and set(acts) == {"QuickGELU"}


def test_open_clips_quickgelu_mismatch_warning_never_appears(openai_b16):
    _, messages = openai_b16
    assert not [m for m in messages if "QuickGELU" in m or "quick_gelu" in m], messages


def test_openai_vit_b16_preprocesses_with_the_tags_config_in_both_paths(openai_b16):
    from torchvision import transforms as T

    clip, _ = openai_b16
    norm = clip.preprocess.transforms[-1]
    assert tuple(norm.mean) == OPENAI_MEAN and tuple(norm.std) == OPENAI_STD
    fast = clip.tensor_preprocess
    assert (fast.size, fast.crop, fast.interpolation) == (224, (224, 224), "bicubic")
    assert fast.mean == OPENAI_MEAN and fast.std == OPENAI_STD
    assert isinstance(clip.preprocess.transforms[0], T.Resize) and clip.preprocess.transforms[0].size == 224


def test_fingerprint_records_activation_and_preprocessing(openai_b16):
    clip, _ = openai_b16
    # "ViT-B-16@openai" was the fingerprint of the GELU build: caches made with it must not match
    assert clip.fingerprint.startswith("ViT-B-16@openai+quick_gelu+pre:") and clip.fingerprint != "ViT-B-16@openai"


def test_openai_vit_l14_builds_quickgelu_in_every_block():
    model, _, _ = meta_build("ViT-L-14", "openai")
    acts = block_activations(model)
    assert len(acts) == 24 + 12 and set(acts) == {"QuickGELU"}


def test_a_tag_trained_with_gelu_keeps_gelu():
    assert "force_quick_gelu" not in pretrained_build(ClipSource("ViT-B-16", "laion2b_s34b_b88k"))
    model, _, _ = meta_build("ViT-B-16", "laion2b_s34b_b88k")
    assert set(block_activations(model)) == {"GELU"}


def test_the_same_weights_built_with_gelu_or_quickgelu_get_other_fingerprints():
    gelu = build_fingerprint(meta_build("ViT-B-16", "laion2b_s34b_b88k")[0])
    quick = build_fingerprint(meta_build("ViT-B-16", "openai")[0])
    assert gelu.startswith("+gelu+pre:") and quick.startswith("+quick_gelu+pre:")
    assert gelu.split("pre:")[1] == quick.split("pre:")[1]  # both tags preprocess alike


def test_a_tags_own_mean_and_std_reach_both_preprocessing_paths():
    """ViT-L-14/laion2b_s32b_b82k was trained with mean = std = 0.5, not OpenAI's statistics."""
    from synood_cli.data.preprocess import TensorPreprocess

    model, preprocess, _ = meta_build("ViT-L-14", "laion2b_s32b_b82k")
    norm = preprocess.transforms[-1]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.5, 0.5, 0.5)
    fast = TensorPreprocess.from_transform(preprocess)
    assert fast.mean == (0.5, 0.5, 0.5) and fast.std == (0.5, 0.5, 0.5) and fast.interpolation == "bicubic"
    other = build_fingerprint(meta_build("ViT-L-14", "openai")[0]).split("pre:")[1]
    assert build_fingerprint(model).split("pre:")[1] != other


def test_a_squash_tag_builds_quickgelu_and_the_fast_path_keeps_its_squash_resize():
    """ViT-H-14/dfn5b: QuickGELU, and resize_mode squash, which the batched path cannot do: PIL's transform runs."""
    from torchvision import transforms as T

    from synood_cli.data.preprocess import TensorPreprocess

    model, preprocess, _ = meta_build("ViT-H-14", "dfn5b")
    assert set(block_activations(model)) == {"QuickGELU"}
    assert isinstance(preprocess.transforms[0], T.Resize) and tuple(preprocess.transforms[0].size) == (224, 224)
    assert TensorPreprocess.from_transform(preprocess) is None


def test_a_quickgelu_name_with_a_gelu_tag_is_refused_naming_the_field(invoke, tmp_path):
    from conftest import assert_clean_error, make_image

    make_image("id", 0).save(tmp_path / "a.png")
    r = invoke("score", str(tmp_path / "a.png"), "--model", "ViT-B-16-quickgelu", "--pretrained", "laion2b_s34b_b88k", "--method", "mcm")
    assert_clean_error(r, 2, "quick_gelu", "--model ViT-B-16 --pretrained laion2b_s34b_b88k")


def test_a_model_config_that_contradicts_its_tags_activation_is_refused():
    """open_clip's roberta-ViT-B-32 config says QuickGELU, its laion2b_s12b_b32k tag does not: no guess."""
    with pytest.raises(UsageError) as e:
        pretrained_build(ClipSource("roberta-ViT-B-32", "laion2b_s12b_b32k"))
    assert e.value.exit_code == 2 and "quick_gelu" in str(e.value)
    assert "hf:laion/CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k" in e.value.hint


def test_score_files_and_thresholds_name_the_quickgelu_build():
    """Thresholds and score files record `source_label`: one made with the GELU build ("ViT-B-16 / openai") is refused."""
    from synood_cli.models.clip import source_label
    from synood_cli.identity import check_identity

    assert source_label(ClipSource("ViT-B-16", "openai")) == "ViT-B-16 / openai with QuickGELU"
    assert source_label(ClipSource("ViT-B-16", "laion2b_s34b_b88k")) == "ViT-B-16 / laion2b_s34b_b88k"
    with pytest.raises(UsageError, match="model: 'ViT-B-16 / openai' there"):
        check_identity({"model": "ViT-B-16 / openai"}, {"model": source_label(ClipSource("ViT-B-16", "openai"))}, "--calibration old.json", "here")


def test_a_clip_guided_synthesis_set_keys_on_the_quickgelu_build():
    """Sets the GELU build guided are not resumed into: the default profile's guide key names QuickGELU."""
    from synood_cli.synthesis import SynthConfig, _clip_guide_key

    assert _clip_guide_key(SynthConfig(prompts="p", diffusion="d", profile="default"))[-1] == "quick_gelu"
    assert "quick_gelu" not in _clip_guide_key(SynthConfig(prompts="p", diffusion="d", profile="tiny"))
