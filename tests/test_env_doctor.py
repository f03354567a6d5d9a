"""`synood env --profile NAME` tells present, partial and missing weights apart, where the loaders look.

The caches are built on disk in the HF hub's own layout: `blobs/<sha256>` holding the bytes,
`snapshots/<rev>/<file>` a relative link to its blob, `refs/main` naming the revision (what
`hf_hub_download` writes). huggingface_hub's own `try_to_load_from_cache` is the oracle that the
layout is one the hub library reads as cached; the expected download sizes are the hub figures
in synood_cli/doctor.py's table, added up by hand here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from conftest import seed_home

CLIP_REPO = "timm/vit_base_patch16_clip_224.openai"
SD_REPO = "stabilityai/stable-diffusion-2-inpainting"
LLAVA_REPO = "llava-hf/llava-1.5-7b-hf"
REVISION = "1" * 40
SD_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SD_CONFIGS = {  # every file of the pipeline but its three weight files
    "model_index.json": json.dumps(SD_INDEX),
    "feature_extractor/preprocessor_config.json": "{}",
    "scheduler/scheduler_config.json": "{}",
    "text_encoder/config.json": "{}",
    "tokenizer/vocab.json": "{}",
    "tokenizer/merges.txt": "#version: 0.2\n",
    "unet/config.json": "{}",
    "vae/config.json": "{}",
}
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
LLAVA_PROCESSOR = {"preprocessor_config.json": "{}", "tokenizer_config.json": "{}", "tokenizer.json": "{}"}


def hub_snapshot(cache: Path, repo: str, files: dict[str, str | bytes]) -> Path:
    """Write `files` into `cache` as hf_hub_download does: content-addressed blobs, snapshot links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    for rel, data in files.items():
        data = data.encode() if isinstance(data, str) else data
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def rows_by_what(out: str) -> dict:
    return {r["what"]: r for r in json.loads(out)["weights"]}


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty HF hub cache (HF_HUB_CACHE) and torch hub (TORCH_HOME) of this test's own; HF_HOME points elsewhere."""
    hub, torch_home = tmp_path / "hub-cache", tmp_path / "torch-home"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "not-this-one"))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return hub, torch_home


def test_paper_profile_tells_present_partial_and_missing_apart(invoke, caches):
    from huggingface_hub import try_to_load_from_cache

    hub, _ = caches
    hub_snapshot(hub, CLIP_REPO, {"open_clip_model.safetensors": b"weights", "open_clip_config.json": "{}"})
    hub_snapshot(hub, SD_REPO, SD_CONFIGS)  # a snapshot of configs without a single weight file
    # the hub library itself reads the CLIP as cached and the UNet weights as absent
    assert try_to_load_from_cache(CLIP_REPO, "open_clip_model.safetensors", cache_dir=str(hub)) is not None
    assert not isinstance(try_to_load_from_cache(SD_REPO, "unet/diffusion_pytorch_model.safetensors", cache_dir=str(hub)), str)

    r = invoke("env", "--profile", "paper", "--format", "json")
    assert r.returncode == 3, r.stderr
    rows = rows_by_what(r.stdout)
    clip = rows["CLIP ViT-B-16 / openai"]
    assert (clip["status"], clip["download_bytes"]) == ("present", 0)
    assert clip["where"] == str(hub / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / REVISION)
    assert "negatives" in clip["stages"] and "score" in clip["stages"]
    sd = rows[f"diffusion {SD_REPO}"]
    assert sd["status"] == "partial"
    assert sorted(sd["missing"]) == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    assert sd["download_bytes"] == 3_460_000_000 + 335_000_000 + 1_360_000_000  # the hub's 3.46 GB + 335 MB + 1.36 GB
    assert rows[f"diffusion {SD_REPO} tokenizer"]["status"] == "present"
    llava = rows[f"MLLM {LLAVA_REPO}"]
    assert llava["status"] == "missing"
    assert llava["download_bytes"] == 4_990_000_000 + 4_960_000_000 + 4_180_000_000 + 70_100 + 950  # shards, index, config.json
    guide = rows["guide torchvision:resnet50"]
    assert guide["status"] == "missing" and guide["download_bytes"] == 102_540_247  # 97.79 MiB x 1,048,576
    payload = json.loads(r.stdout)
    assert payload["all_present"] is False
    # processor: tokenizer.json 1.84 MB + preprocessor_config.json 505 B (tokenizer_config.json is not listed: counted as nothing)
    assert payload["missing_download_bytes"] == 5_155_000_000 + 14_130_071_050 + 102_540_247 + 1_840_505
    assert "19.4 GB to download" in r.stderr


def test_hf_home_is_where_the_cache_is_when_hf_hub_cache_is_unset(invoke, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub_snapshot(tmp_path / "hf-home" / "hub", CLIP_REPO, {"open_clip_model.safetensors": b"weights"})
    rows = rows_by_what(invoke("env", "--profile", "default", "--format", "json").stdout)
    assert rows["CLIP ViT-B-16 / openai"]["status"] == "present"


def test_a_snapshot_without_its_weights_is_partial_not_present(invoke, caches):
    hub, _ = caches
    hub_snapshot(hub, CLIP_REPO, {"open_clip_config.json": "{}", "tokenizer.json": "{}"})
    row = rows_by_what(invoke("env", "--profile", "default", "--format", "json").stdout)["CLIP ViT-B-16 / openai"]
    assert (row["status"], row["missing"], row["download_bytes"]) == ("partial", ["open_clip_model.safetensors"], 599_000_000)


def test_a_link_whose_blob_is_gone_counts_as_missing(invoke, caches):
    hub, _ = caches
    snap = hub_snapshot(hub, CLIP_REPO, {"open_clip_model.safetensors": b"weights", "open_clip_config.json": "{}"})
    Path(os.path.realpath(snap / "open_clip_model.safetensors")).unlink()  # `hf cache` deleting a blob, a disk clean-up
    row = rows_by_what(invoke("env", "--profile", "default", "--format", "json").stdout)["CLIP ViT-B-16 / openai"]
    assert row["status"] == "partial"


def test_a_sharded_model_with_one_shard_missing_counts_only_that_shard(invoke, caches):
    hub, _ = caches
    index = {"weight_map": {f"layer.{i}": s for i, s in enumerate(SHARDS)}}
    hub_snapshot(hub, LLAVA_REPO, {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
                                   SHARDS[0]: b"a", SHARDS[1]: b"b", **LLAVA_PROCESSOR})
    (hub / "models--llava-hf--llava-1.5-7b-hf" / "blobs" / "abc.incomplete").write_bytes(b"x" * 1000)
    rows = rows_by_what(invoke("env", "--profile", "default", "--format", "json").stdout)
    llava = rows[f"MLLM {LLAVA_REPO}"]
    assert (llava["status"], llava["missing"], llava["download_bytes"]) == ("partial", [SHARDS[2]], 4_180_000_000)
    assert "interrupted download left 1 kB" in llava["detail"]
    assert rows[f"MLLM {LLAVA_REPO} processor"]["status"] == "present"


def test_everything_present_exits_0_and_the_table_says_so(invoke, caches):
    hub, torch_home = caches
    hub_snapshot(hub, CLIP_REPO, {"open_clip_model.safetensors": b"w"})
    hub_snapshot(hub, SD_REPO, {**SD_CONFIGS, "unet/diffusion_pytorch_model.safetensors": b"u", "vae/diffusion_pytorch_model.safetensors": b"v",
                                "text_encoder/model.safetensors": b"t"})
    hub_snapshot(hub, LLAVA_REPO, {"config.json": "{}", "model.safetensors.index.json": json.dumps({"weight_map": {"a": SHARDS[0]}}),
                                   SHARDS[0]: b"a", **LLAVA_PROCESSOR})
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").write_bytes(b"r")
    r = invoke("env", "--profile", "paper")
    assert r.returncode == 0, r.stdout + r.stderr
    statuses = re.findall(r"│ (present|partial|missing|damaged|built on first use) +│", r.stdout)  # the table's status cells
    assert statuses == ["present"] * 7
    assert "all 7 sets of files of the paper profile are here" in r.stderr


def test_an_id_outside_the_size_table_is_unknown(caches, synood_home):
    from synood_cli.doctor import diffusion_rows, human_bytes, missing_bytes
    from synood_cli.store import Store

    rows = diffusion_rows("someone/other-inpainting", ["synthesize"], Store(synood_home))
    assert {r.status for r in rows} == {"missing"}
    assert rows[0].download_bytes is None and missing_bytes(rows) is None and human_bytes(None) == "unknown"
    assert "not in synood's table" in rows[0].size_source


def test_a_local_pipeline_folder_without_unet_weights_is_partial(tmp_path, synood_home):
    from synood_cli.doctor import diffusion_rows
    from synood_cli.store import Store

    folder = tmp_path / "my-inpaint"
    for rel, text in {**SD_CONFIGS, "vae/diffusion_pytorch_model.safetensors": "v", "text_encoder/model.safetensors": "t"}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    weights = diffusion_rows(str(folder), ["synthesize"], Store(synood_home))[0]
    assert (weights.status, weights.missing, weights.where) == ("partial", ["unet/diffusion_pytorch_model.safetensors"], str(folder))


def test_tiny_profile_is_built_on_first_use_then_present_and_never_exit_3(invoke, synood_home, tiny_weights):
    r = invoke("env", "--profile", "tiny", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert {w["status"] for w in json.loads(r.stdout)["weights"][:3]} == {"built on first use"}
    seed_home(tiny_weights, synood_home)  # the store after a tiny run: the rows must find those very artifacts
    r = invoke("env", "--profile", "tiny", "--format", "json")
    assert r.returncode == 0 and {w["status"] for w in json.loads(r.stdout)["weights"]} == {"present"}


def test_world_profile_reads_the_shipped_weights(invoke):
    r = invoke("env", "--profile", "world", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["weights"]
    clip = next(w for w in rows if "world describer" in w["what"])
    assert clip["where"].endswith("synood-world-clip.safetensors") and {"prompt", "score"} <= set(clip["stages"])
    assert "sha256 checked" in clip["detail"]


def test_plain_env_is_unchanged_and_an_unknown_profile_is_a_usage_error(invoke):
    r = invoke("env", "--format", "json", env={"SYNOOD_PROFILE": "paper"})  # the other commands' profile variable is not read here
    assert r.returncode == 0 and "weights" not in json.loads(r.stdout) and "torch" in json.loads(r.stdout)
    r = invoke("env", "--profile", "papr")
    assert r.returncode == 2 and "paper" in r.stderr


def test_an_hf_clip_needs_its_open_clip_config_too(caches, synood_home):
    from synood_cli.doctor import clip_rows
    from synood_cli.models.clip import ClipSource
    from synood_cli.store import Store

    hub, _ = caches
    hub_snapshot(hub, "me/my-clip", {"open_clip_model.safetensors": b"w"})
    row = clip_rows(ClipSource("hf:me/my-clip"), ["score"], Store(synood_home))[0]
    assert (row.status, row.missing) == ("partial", ["open_clip_config.json"])
