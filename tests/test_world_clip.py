"""The world's CLIP as shipped: its hash, its loading through the real code path, its accuracy.

The figures pinned here were measured on the shipped weights (docs/world.md); the margins leave
room for CPU rounding, not for a worse model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from synood_cli.errors import ResourceMissing
from synood_cli.models.clip import WORLD_ARCH, clip_source, load_clip, world_weights
from synood_cli.store import Store
from synood_cli.world import batches, spec

WEIGHTS = Path(str(resources.files("synood_cli") / "world" / "weights"))


@pytest.fixture(scope="module")
def world_clip(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("world-store"))
    return load_clip(clip_source({}, model="world"), store, torch.device("cpu"), torch.float32)


def test_shipped_weights_match_their_recorded_hash_and_size():
    path = WEIGHTS / f"{WORLD_ARCH}.safetensors"
    record = json.loads((WEIGHTS / f"{WORLD_ARCH}.json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert path.stat().st_size <= 10 * 2**20
    assert world_weights() == path


def test_damaged_weights_are_refused_before_loading(tmp_path):
    for name in (f"{WORLD_ARCH}.safetensors", f"{WORLD_ARCH}.json"):
        shutil.copy(WEIGHTS / name, tmp_path / name)
    assert world_weights(tmp_path) == tmp_path / f"{WORLD_ARCH}.safetensors"
    with open(tmp_path / f"{WORLD_ARCH}.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(ResourceMissing, match="damaged"):
        world_weights(tmp_path)


def test_world_clip_loads_through_open_clip_in_fp32(world_clip):
    assert world_clip.source.is_world and world_clip.fingerprint.startswith(f"{WORLD_ARCH}@sha256:")
    assert all(p.dtype == torch.float32 for p in world_clip.model.parameters())  # fp16 storage, fp32 model
    # the model open_clip built is the one the config describes (a ModifiedResNet vision tower)
    assert type(world_clip.model.visual).__name__ == "ModifiedResNet"


def test_world_clip_names_the_kinds_of_generated_id_images(world_clip):
    """Zero-shot over the 20 ID kinds on 60 ID validation images (3 per kind), prompt-ensembled."""
    images, labels = [], []
    for label in range(len(spec.ID_NAMES)):
        for i in range(3):
            images.append(torch.from_numpy(spec.set_image(0, "id_val", label, i)[0]).permute(2, 0, 1))
            labels.append(label)
    feats = world_clip.encode_images(world_clip.pixels(images))  # the preprocessing files get
    text = []
    for kind in spec.ID_NAMES:
        prompts = batches.ensemble_prompts(kind)[::11]  # one colour per context: 12 prompts
        text.append(torch.nn.functional.normalize(world_clip.encode_texts(prompts).mean(0), dim=0))
    pred = (feats @ torch.stack(text).T).argmax(1).numpy()
    accuracy = float(np.mean(pred == np.asarray(labels)))
    assert accuracy >= 0.55, accuracy  # measured 0.633 (38/60) on the shipped weights; chance 0.05
