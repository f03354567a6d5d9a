"""Training and checkpoints (docs/method.md, sections 5-6), at library level, on hand-built features.

Every expected value comes from the construction in the test (or a formula written out here),
never from the code under test.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import Tripwire
from synood_cli.errors import SynoodError, UsageError
from synood_cli.store import Store
from synood_cli.training import (
    Adapter,
    CHECKPOINT_SCHEMA,
    Checkpoint,
    TrainConfig,
    TrainResult,
    assign_negatives,
    checkpoint_classes,
    load_checkpoint,
    save_checkpoint,
    train,
)

D = 16


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def noise(n: int, d: int, seed: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# 1.5: assignment by cosine


def test_assign_negatives_top1_is_the_constructed_label():
    neg = unit_rows(12, D, seed=1)
    target = torch.tensor([3, 0, 11, 7, 7, 5, 2, 9, 1, 10])
    synth = F.normalize(neg[target] + noise(len(target), D, seed=2, scale=0.02), dim=1)
    assert torch.equal(assign_negatives(synth, neg), target)


def test_assign_negatives_uses_cosine_not_the_raw_dot_product():
    """A long negative vector must not win by its length: docs/method.md section 5 says cosine similarity."""
    neg = torch.zeros(3, D)
    neg[0, 0] = 1.0  # the direction of the image
    neg[1, 0], neg[1, 1] = 5.0, 20.0  # a long vector far off that direction (dot 5 > 1, cosine 0.24 < 1)
    neg[2, 2] = 1.0
    synth = torch.zeros(2, D)
    synth[0, 0] = 3.0  # unnormalised image features
    synth[1, 2], synth[1, 0] = 2.0, 0.5  # dot with neg 1 is 2.5 > 2, its cosine 0.06 < 0.97
    # cosine, computed here: row 0 is parallel to neg 0; row 1 is nearly parallel to neg 2
    cos = F.normalize(synth, dim=1) @ F.normalize(neg, dim=1).T
    assert cos.argmax(1).tolist() == [0, 2]
    assert (synth @ neg.T).argmax(1).tolist() == [1, 1]  # the trap: raw dot products pick the long vector
    assert assign_negatives(synth, neg).tolist() == [0, 2]


# --------------------------------------------------------------------------------------------
# 1.6: the adapter


def test_adapter_forward_matches_the_formula_written_out():
    torch.manual_seed(3)
    a = Adapter(D)
    with torch.no_grad():  # non-trivial LayerNorm affine so that it is part of the check
        a.norm.weight.copy_(torch.rand(D) + 0.5)
        a.norm.bias.copy_(torch.randn(D) * 0.1)
    f = unit_rows(7, D, seed=4).double()
    W = a.linear.weight.detach().double()
    b = a.linear.bias.detach().double()
    g = a.norm.weight.detach().double()
    beta = a.norm.bias.detach().double()
    h = f @ W.T + b
    mu = h.mean(dim=1, keepdim=True)
    var = ((h - mu) ** 2).mean(dim=1, keepdim=True)  # biased variance, as LayerNorm defines it
    ln = (h - mu) / torch.sqrt(var + 1e-5) * g + beta
    out = f + torch.clamp(ln, min=0)
    expected = out / torch.sqrt((out**2).sum(dim=1, keepdim=True))
    got = a(f.float()).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-6)


def test_adapter_has_d_squared_plus_3d_parameters():
    # docs/method.md section 6: d = 512 gives 263,680 parameters (W: d*d, b: d, LayerNorm: 2d)
    assert sum(p.numel() for p in Adapter(512).parameters()) == 512 * 512 + 3 * 512 == 263_680


# --------------------------------------------------------------------------------------------
# 1.6: training on a separable problem built here

K, M = 3, 4  # ID classes, assigned negative labels


def problem(n_id_per_class: int = 24, n_synth_per_neg: int = 18, seed: int = 0):
    """ID features around their class's text vector; synthesized features around a negative vector."""
    id_text = unit_rows(K, D, seed=seed + 10)
    neg_init = unit_rows(M, D, seed=seed + 11)
    id_labels = torch.arange(K).repeat_interleave(n_id_per_class)
    id_features = F.normalize(id_text[id_labels] + noise(len(id_labels), D, seed + 12, 0.15), dim=1)
    synth_targets = torch.arange(M).repeat_interleave(n_synth_per_neg)
    synth_features = F.normalize(neg_init[synth_targets] + noise(len(synth_targets), D, seed + 13, 0.15), dim=1)
    return id_features, id_labels, synth_features, synth_targets, id_text, neg_init


def adapter_loss(adapter: Adapter, feats, labels, id_text, neg_init) -> float:
    """The adapter objective of docs/method.md section 6, written out: CE of 100 f' . [T_id, T_neg] (frozen)."""
    text = torch.cat([id_text, F.normalize(neg_init, dim=1)])
    with torch.no_grad():
        return float(F.cross_entropy(100.0 * adapter(feats) @ text.T, labels))


def cfg(**kw) -> TrainConfig:
    base = dict(adapter_epochs=6, negatives_epochs=5, batch_size=16, adapter_lr=5e-3, val_fraction=0.2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def run(c: TrainConfig, seed: int = 0) -> TrainResult:
    return train(*problem(seed=seed), c)


def test_training_reduces_the_adapter_loss():
    idf, idl, sf, st, id_text, neg_init = problem()
    all_f, all_y = torch.cat([idf, sf]), torch.cat([idl, st + K])
    # the loss before training: an untrained adapter of any random init (the worst-case lower bound over several)
    before = []
    for s in range(5):
        torch.manual_seed(100 + s)
        before.append(adapter_loss(Adapter(D), all_f, all_y, id_text, neg_init))
    result = train(idf, idl, sf, st, id_text, neg_init, cfg())
    hist = result.history["adapter"]
    after = adapter_loss(result.adapter, all_f, all_y, id_text, neg_init)
    print(f"adapter loss: untrained {min(before):.4f}..{max(before):.4f}, epoch 1 {hist[0]['train_loss']:.4f}, "
          f"last epoch {hist[-1]['train_loss']:.4f}, after training {after:.4f}")
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert after < 0.5 * min(before)
    # the separable problem is learned: the adapted features classify the training set
    text = torch.cat([id_text, F.normalize(neg_init, dim=1)])
    acc = float(((result.adapter(all_f) @ text.T).argmax(1) == all_y).float().mean())
    assert acc > 0.95


def test_training_reduces_the_negatives_loss():
    idf, idl, sf, st, id_text, neg_init = problem()
    # make the negatives stage work: start the free vectors away from their synthesized images
    start = unit_rows(M, D, seed=99)
    result = train(idf, idl, sf, st, id_text, start, cfg(negatives_epochs=10, negatives_lr=0.05))
    hist = result.history["negatives"]

    def neg_loss(n):
        return float(F.cross_entropy(100.0 * sf @ torch.cat([id_text, F.normalize(n, dim=1)]).T, st + K))

    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert neg_loss(result.negative_features) < neg_loss(start)
    torch.testing.assert_close(result.negative_features.norm(dim=1), torch.ones(M), rtol=0, atol=1e-6)


def test_history_has_one_entry_per_epoch_per_stage_and_val_metrics():
    result = run(cfg(adapter_epochs=4, negatives_epochs=3, val_fraction=0.2))
    h = result.history
    assert [e["epoch"] for e in h["adapter"]] == [1, 2, 3, 4]
    assert [e["epoch"] for e in h["negatives"]] == [1, 2, 3]
    for e in h["adapter"] + h["negatives"]:
        assert {"train_loss", "val_loss", "val_acc"} <= set(e)
        assert 0.0 <= e["val_acc"] <= 1.0
    for stage in ("adapter_final", "negatives_final"):
        assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(h[stage])
    assert "joint" not in h


def test_no_val_metrics_without_a_validation_split():
    h = run(cfg(adapter_epochs=2, negatives_epochs=2, val_fraction=0.0)).history
    assert len(h["adapter"]) == 2 and len(h["negatives"]) == 2
    for e in h["adapter"] + h["negatives"]:
        assert "val_loss" not in e and "val_acc" not in e
    for stage in ("adapter_final", "negatives_final"):
        assert "val_loss" not in h[stage] and "train_loss" in h[stage]


def _tensors(r: TrainResult) -> dict[str, torch.Tensor]:
    return {**{f"adapter.{k}": v for k, v in r.adapter.state_dict().items()}, "negatives": r.negative_features}


def test_training_is_seeded():
    a, b = _tensors(run(cfg(seed=5))), _tensors(run(cfg(seed=5)))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _tensors(run(cfg(seed=6)))
    assert not torch.equal(a["adapter.linear.weight"], c["adapter.linear.weight"])
    assert not torch.equal(a["negatives"], c["negatives"])


@pytest.mark.parametrize("joint", [False, True])
def test_both_parts_are_trained(joint):
    idf, idl, sf, st, id_text, neg_init = problem()
    result = train(idf, idl, sf, st, id_text, neg_init, cfg(joint=joint))
    # LayerNorm starts at weight 1, bias 0 (PyTorch's init); training moves it
    assert not torch.equal(result.adapter.norm.weight, torch.ones(D))
    assert not torch.equal(result.adapter.norm.bias, torch.zeros(D))
    assert (result.negative_features - F.normalize(neg_init, dim=1)).abs().max() > 1e-4
    assert not any(p.requires_grad for p in result.adapter.parameters())
    h = result.history
    if joint:
        assert "joint" in h and "adapter" not in h and "negatives" not in h
        assert len(h["joint"]) == max(6, 5)
        assert h["joint"][-1]["train_loss"] < h["joint"][0]["train_loss"]
        assert "joint_final" in h
    else:
        assert "adapter" in h and "negatives" in h and "joint" not in h


@pytest.mark.parametrize(
    "bad",
    [dict(val_fraction=1.0), dict(val_fraction=-0.1), dict(batch_size=0), dict(adapter_epochs=-1), dict(adapter_lr=0.0), dict(negatives_lr=-1.0)],
)
def test_bad_train_config_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        run(cfg(**bad))


# --------------------------------------------------------------------------------------------
# checkpoints


MODEL = "synood-tiny-clip@weights/0123456789abcdef"


@pytest.fixture
def trained() -> TrainResult:
    return run(cfg(adapter_epochs=2, negatives_epochs=2))


def write_checkpoint(store: Store, result: TrainResult, base_model: str = MODEL, name: str = "ck"):
    labels = [f"neg{i}" for i in range(M)]

    def build(folder: Path) -> dict:
        # every negative tuned here, all nouns (the full-set layout is tested in test_paper_recipe.py)
        save_checkpoint(folder, result, labels, ["noun"] * M, result.negative_features, [True] * M)
        (folder / "classes.json").write_text(json.dumps(["cat", "dog", "fish"]))
        return {}

    return store.build("checkpoint", {"base_model": base_model, "test": True, "schema": CHECKPOINT_SCHEMA}, build, name=name)


def test_checkpoint_round_trip_is_bit_for_bit(trained, synood_home):
    store = Store(synood_home)
    art = write_checkpoint(store, trained)
    for ref in ("ck", art.id, art.ref, str(art.path)):  # name, id, kind/id, folder
        ck = load_checkpoint(store, ref, expected_model=MODEL)
        assert isinstance(ck, Checkpoint)
        saved = trained.adapter.state_dict()
        loaded = ck.adapter.state_dict()
        assert saved.keys() == loaded.keys()
        for k in saved:
            assert saved[k].dtype == loaded[k].dtype and torch.equal(saved[k], loaded[k]), k
        assert torch.equal(ck.negative_features, trained.negative_features)
        assert ck.labels == [f"neg{i}" for i in range(M)]
        assert ck.base_model == MODEL
        # the loaded adapter computes the same function
        f = unit_rows(5, D, seed=7)
        assert torch.equal(ck.adapter(f), trained.adapter(f))
    assert checkpoint_classes(store, "ck") == ["cat", "dog", "fish"]


def test_checkpoint_of_another_model_is_refused(trained, synood_home):
    store = Store(synood_home)
    write_checkpoint(store, trained)
    with pytest.raises(UsageError) as e:
        load_checkpoint(store, "ck", expected_model="other-model@sha256:ffff")
    assert MODEL in str(e.value) and "other-model@sha256:ffff" in str(e.value)
    assert e.value.exit_code == 2



def test_a_pickle_file_is_refused_and_never_unpickled(tmp_path, synood_home):
    marker = tmp_path / "UNPICKLED"
    ck = tmp_path / "ck.pt"
    torch.save({"adapter": Tripwire(str(marker)), "a": 1}, ck)
    assert not marker.exists()
    with pytest.raises(UsageError) as e:
        load_checkpoint(Store(synood_home), str(ck), expected_model=MODEL)
    assert "never unpickles" in str(e.value) and e.value.exit_code == 2
    # `score`/`evaluate` read the checkpoint's classes first: the same refusal there
    with pytest.raises(UsageError) as e:
        checkpoint_classes(Store(synood_home), str(ck))
    assert "never unpickles" in str(e.value)
    assert not marker.exists()
    # the tripwire works: loading it the unsafe way would have written the marker
    pickle.loads(pickle.dumps(Tripwire(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("victim", ["adapter.safetensors", "negatives.safetensors"])
def test_a_damaged_checkpoint_is_a_resource_error(trained, synood_home, tmp_path, victim):
    store = Store(synood_home)
    art = write_checkpoint(store, trained)
    folder = tmp_path / "copy"
    shutil.copytree(art.path, folder)
    data = (folder / victim).read_bytes()
    (folder / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(SynoodError) as e:  # exit 3 with the repair command (issue 12, item 7)
        load_checkpoint(store, str(folder), expected_model=MODEL)
    assert "damaged" in str(e.value) and e.value.exit_code == 3


def test_a_folder_missing_a_file_is_a_usage_error(trained, synood_home, tmp_path):
    store = Store(synood_home)
    art = write_checkpoint(store, trained)
    folder = tmp_path / "copy"
    shutil.copytree(art.path, folder)
    (folder / "negatives.safetensors").unlink()
    with pytest.raises(UsageError, match="negatives.safetensors"):
        load_checkpoint(store, str(folder))


def test_an_unknown_checkpoint_name_is_a_usage_error(synood_home):
    with pytest.raises(UsageError, match="no checkpoint artifact"):
        load_checkpoint(Store(synood_home), "nope")


# --------------------------------------------------------------------------------------------
# the feature cache, with the tiny CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from synood_cli.models.clip import ClipSource, load_clip

    home = tmp_path_factory.mktemp("clip-home")
    return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), torch.device("cpu"), torch.float32)


def png_bytes(seed: int) -> bytes:
    import io

    from conftest import make_image

    buf = io.BytesIO()
    make_image("feat", seed).save(buf, format="PNG")
    return buf.getvalue()


def test_features_are_encoded_once_then_read_from_the_cache(tiny_clip, synood_home):
    from synood_cli.features import EncodeStats, cached_features

    store = Store(synood_home)
    blobs = [png_bytes(i) for i in range(5)]
    calls = []

    def loaders(bs):
        return [(lambda b=b: calls.append(1) or b) for b in bs]

    stats = EncodeStats()
    first = cached_features(tiny_clip, store, loaders(blobs), stats, batch_size=2)
    assert (stats.encoded, stats.cached) == (5, 0)
    assert first.shape == (5, tiny_clip.embed_dim) and first.dtype == torch.float32
    # the raw feature g (the adapter's input), not g / |g|: normalised, it is what encode_images gives
    import io

    from PIL import Image

    direct = torch.cat([tiny_clip.encode_images(tiny_clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB"))[None]) for b in blobs])
    assert (first.norm(dim=1) - 1).abs().max() > 1e-2
    torch.testing.assert_close(torch.nn.functional.normalize(first, dim=1), direct, rtol=1e-5, atol=1e-6)

    second = cached_features(tiny_clip, store, loaders(blobs), stats, batch_size=2)
    assert (stats.encoded, stats.cached) == (5, 5)
    assert torch.equal(first, second)
    n_entries = len(store.list("features"))

    changed = list(blobs)
    changed[2] = png_bytes(100)
    third = cached_features(tiny_clip, store, loaders(changed), stats, batch_size=2)
    assert stats.encoded == 10 and stats.cached == 5
    assert len(store.list("features")) == n_entries + 1
    torch.testing.assert_close(third[[0, 1, 3, 4]], first[[0, 1, 3, 4]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(third[2], first[2])
