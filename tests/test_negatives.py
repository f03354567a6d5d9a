"""NegLabel negative-label mining (docs/method.md, section 4) with the tiny CLIP on CPU."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from synood_cli.errors import UsageError
from synood_cli.lexicons import parse_word_list
from synood_cli.models.clip import ClipSource, load_clip
from synood_cli.negatives import (
    ADJ_TEMPLATE,
    ID_TEMPLATE,
    NOUN_TEMPLATE,
    affinity,
    labels_digest,
    mine_negatives,
    text_features,
)
from synood_cli.store import Store

CLASS_NAMES = ["dog", "Cat", "red fox", "airplane", "teapot"]

NOUNS = """
apple banana carrot table chair window river mountain forest desert
violin guitar piano hammer wrench bicycle tractor castle bridge tower
cloud rainbow volcano glacier island pencil notebook candle lantern mirror
dog cat spoon kettle blanket pillow ladder bucket shovel helmet
""".split()  # 40 nouns, "dog" and "cat" are ID class names

ADJECTIVES = """
blue green shiny rough smooth ancient modern tiny huge fluffy
wooden metallic bright dark soft loud quiet wet dry teapot
""".split()  # 20 adjectives, "teapot" (an ID name) slipped in among them


def word_list_text() -> str:
    lines = ["# hand-made lexicon for the mining tests"]
    lines += [w if i % 2 else f"{w}\tnoun" for i, w in enumerate(NOUNS)]
    lines += [f"{w}\tadj" for w in ADJECTIVES]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    home = tmp_path_factory.mktemp("negatives-weights")
    return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def lexicon():
    lex = parse_word_list(word_list_text(), name="handmade", source="<test>")
    assert len(lex.nouns) == 40 and len(lex.adjectives) == 20
    return lex


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def id_lower() -> set[str]:
    return {c.lower() for c in CLASS_NAMES}


def candidates(lexicon):
    ids = id_lower()
    return (
        [w for w in lexicon.nouns if w not in ids],
        [w for w in lexicon.adjectives if w not in ids],
    )


def encode(clip, labels: list[str], template: str) -> torch.Tensor:
    return clip.encode_texts([template.format(w) for w in labels])


# --------------------------------------------------------------------------------------------
# affinity


@pytest.mark.parametrize("percentile", [0.0, 0.25, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("k", [1, 5, 7])
@pytest.mark.parametrize("chunk", [3, 10, 4096])
def test_affinity_is_torch_quantile(percentile, k, chunk):
    g = torch.Generator().manual_seed(k)
    cand = torch.nn.functional.normalize(torch.randn(10, 12, generator=g), dim=1)
    ids = torch.nn.functional.normalize(torch.randn(k, 12, generator=g), dim=1)
    got = affinity(cand, ids, percentile, chunk=chunk)
    want = torch.quantile(cand @ ids.T, percentile, dim=1)
    assert got.shape == (10,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_affinity_of_no_candidates_is_empty():
    ids = torch.nn.functional.normalize(torch.randn(4, 12), dim=1)
    assert affinity(torch.empty(0, 12), ids, 0.95).shape == (0,)


# --------------------------------------------------------------------------------------------
# mining


def test_mining_keeps_the_lowest_affinity_share_per_part_of_speech(clip, lexicon, store):
    ratio, pct = 0.3, 0.95
    neg = mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=ratio, percentile=pct)
    nouns, adjs = candidates(lexicon)
    assert len(nouns) == 38 and len(adjs) == 19  # dog, cat and teapot dropped

    kept_nouns = [w for w, k in zip(neg.labels, neg.kinds) if k == "noun"]
    kept_adjs = [w for w, k in zip(neg.labels, neg.kinds) if k == "adj"]
    assert len(kept_nouns) == math.floor(38 * ratio) == 11
    assert len(kept_adjs) == math.floor(19 * ratio) == 5
    assert neg.kinds == ["noun"] * 11 + ["adj"] * 5
    assert len(neg.labels) == len(set(neg.labels)) == neg.features.shape[0]
    assert neg.features.dtype == torch.float32 and neg.features.shape[1] == 64

    # ID class names are never negatives, whatever their case
    assert not id_lower() & set(neg.labels)

    # affinities recomputed here: 95th percentile of cosine to the ID labels ("The nice {}.")
    id_feats = encode(clip, CLASS_NAMES, ID_TEMPLATE)
    for kept, words, template in ((kept_nouns, nouns, NOUN_TEMPLATE), (kept_adjs, adjs, ADJ_TEMPLATE)):
        feats = encode(clip, words, template)
        aff = dict(zip(words, torch.quantile(feats @ id_feats.T, pct, dim=1).tolist()))
        dropped = [w for w in words if w not in kept]
        assert set(kept) <= set(words)
        assert max(aff[w] for w in kept) <= min(aff[w] for w in dropped) + 1e-6
        # kept in order of increasing affinity
        kept_aff = [aff[w] for w in kept]
        assert all(a <= b + 1e-6 for a, b in zip(kept_aff, kept_aff[1:]))

    # the features are the normalised text features of each label under its part of speech's template
    want = torch.cat([encode(clip, kept_nouns, NOUN_TEMPLATE), encode(clip, kept_adjs, ADJ_TEMPLATE)])
    torch.testing.assert_close(neg.features, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(neg.features.norm(dim=1), torch.ones(16), rtol=0, atol=1e-5)

    # the stored payload agrees with what was returned
    meta = json.loads(neg.artifact.file("labels.json").read_text())
    assert meta == {"labels": neg.labels, "kinds": neg.kinds}
    summary = neg.artifact.manifest["summary"]
    assert summary["negatives"] == 16 and summary["nouns"] == 11 and summary["adjectives"] == 5
    assert summary["candidates"] == {"nouns": 38, "adjectives": 19}


def test_ratio_one_keeps_every_non_id_word(clip, lexicon, store):
    neg = mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=1.0)
    nouns, adjs = candidates(lexicon)
    assert sorted(neg.labels[:38]) == sorted(nouns)
    assert sorted(neg.labels[38:]) == sorted(adjs)
    assert len(neg.labels) == 57
    assert not id_lower() & set(neg.labels)


def test_mining_is_cached_in_the_store(clip, lexicon, store):
    first = mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=0.15)
    manifest_path = first.artifact.file("manifest.json")
    before = manifest_path.read_text()
    stat = os.stat(manifest_path)

    second = mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=0.15)
    assert second.artifact.id == first.artifact.id
    assert [a.id for a in store.list("negatives")] == [first.artifact.id]
    # not rebuilt: the very same manifest file (a rebuild renames a fresh folder into place)
    assert manifest_path.read_text() == before
    assert json.loads(before)["created"] == second.artifact.manifest["created"]
    assert os.stat(manifest_path).st_ino == stat.st_ino
    assert os.stat(manifest_path).st_mtime_ns == stat.st_mtime_ns
    assert second.labels == first.labels
    assert torch.equal(second.features, first.features)

    # text features: one artifact per (template, label list): ID names, and the WHOLE lexicon's
    # nouns and adjectives (ID names are dropped after embedding, so other class sets reuse them)
    expected = {
        (ID_TEMPLATE, labels_digest(CLASS_NAMES)),
        (NOUN_TEMPLATE, labels_digest(list(lexicon.nouns))),
        (ADJ_TEMPLATE, labels_digest(list(lexicon.adjectives))),
    }
    arts = store.list("text-features")
    assert len(arts) == 3
    assert {(a.manifest["config"]["template"], a.manifest["config"]["labels"]) for a in arts} == expected
    assert all(a.manifest["config"]["model"] == clip.fingerprint for a in arts)

    # a different ratio is a different artifact, but reuses the cached text features
    text_manifests = {a.id: a.file("manifest.json").read_text() for a in arts}
    third = mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=0.3)
    assert third.artifact.id != first.artifact.id
    assert len(third.labels) == math.floor(38 * 0.3) + math.floor(19 * 0.3)
    assert sorted(a.id for a in store.list("negatives")) == sorted([first.artifact.id, third.artifact.id])
    assert {a.id: a.file("manifest.json").read_text() for a in store.list("text-features")} == text_manifests
    # the smaller ratio keeps a prefix of the larger one's picks, per part of speech
    nouns15 = [w for w, k in zip(first.labels, first.kinds) if k == "noun"]
    nouns30 = [w for w, k in zip(third.labels, third.kinds) if k == "noun"]
    assert nouns30[: len(nouns15)] == nouns15


def test_text_features_are_cached_and_normalised(clip, store):
    labels = ["zebra", "lighthouse", "umbrella"]
    a = text_features(clip, store, labels, "a photo of a {}.")
    b = text_features(clip, store, labels, "a photo of a {}.")
    assert torch.equal(a, b)
    assert len(store.list("text-features")) == 1
    torch.testing.assert_close(a, encode(clip, labels, "a photo of a {}."), rtol=0, atol=1e-5)
    text_features(clip, store, labels, "The nice {}.")
    text_features(clip, store, labels[:2], "a photo of a {}.")
    assert len(store.list("text-features")) == 3


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_neg_ratio_outside_unit_interval_is_a_usage_error(clip, lexicon, store, ratio):
    with pytest.raises(UsageError, match="neg-ratio"):
        mine_negatives(clip, CLASS_NAMES, lexicon, store, neg_ratio=ratio)
    assert store.list() == []


def test_bad_percentile_and_empty_classes_are_usage_errors(clip, lexicon, store):
    with pytest.raises(UsageError, match="percentile"):
        mine_negatives(clip, CLASS_NAMES, lexicon, store, percentile=1.5)
    with pytest.raises(UsageError, match="no ID class names"):
        mine_negatives(clip, [], lexicon, store)


def test_a_ratio_that_keeps_nothing_is_a_usage_error(clip, store):
    small = parse_word_list("apple\nbanana\nshiny\tadj\n", name="small", source="<test>")
    with pytest.raises(UsageError, match="left no negative labels"):
        mine_negatives(clip, CLASS_NAMES, small, store, neg_ratio=0.1)
    assert store.list("negatives") == []


def test_lexicon_features_are_shared_across_class_sets(clip, lexicon, store):
    mine_negatives(clip, CLASS_NAMES, lexicon, store)
    mine_negatives(clip, ["violin", "tractor"], lexicon, store)
    # two class sets: two ID-name artifacts, but the lexicon's nouns and adjectives only once each
    assert len(store.list("negatives")) == 2
    assert len(store.list("text-features")) == 4
