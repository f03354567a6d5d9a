"""The WordNet negative filter (docs/method.md, "Negative labels"): ours, an offline stand-in for NegRefine's LLM step."""

from __future__ import annotations

import json

import pytest
import torch

from synood_cli.lexicons import parse_word_list
from synood_cli.models.clip import ClipSource, load_clip
from synood_cli.negative_filter import parse_noun_hierarchy, wordnet_filter
from synood_cli.negatives import mine_negatives
from synood_cli.store import Store

# a hand-made WordNet: offset lex w_cnt lemmas... p_cnt pointers... | gloss
HEADER = "  1 This software and database is being provided to you, the LICENSEE\n"
DATA = HEADER + "\n".join([
    "00000001 03 n 01 entity 0 000 | the top",
    "00000002 05 n 02 dog 0 domestic_dog 0 001 @ 00000001 n 0000 | ID class",
    "00000003 05 n 01 puppy 0 001 @ 00000002 n 0000 | a hyponym of dog",
    "00000004 05 n 01 toy_poodle 0 001 @ 00000003 n 0000 | two levels below dog",
    "00000005 06 n 01 kettle 0 001 @ 00000001 n 0000 | unrelated",
    "00000006 15 n 01 Fido 0 001 @i 00000002 n 0000 | an instance of dog: below dog and an instance",
    "00000007 15 n 01 Paris 0 001 @i 00000001 n 0000 | a city (instance)",
    "00000008 05 n 01 turkey 0 001 @ 00000001 n 0000 | the bird",
    "00000009 15 n 01 Turkey 0 001 @i 00000001 n 0000 | the country",
    "00000010 20 n 02 Bermuda_grass 0 devil_grass 0 001 @ 00000001 n 0000 | capitalised, not an instance",
    "00000011 06 n 01 hot_dog 0 001 @ 00000001 n 0000 | not under dog",
]) + "\n"
INDEX = HEADER + "\n".join([
    "dog n 1 1 @ 1 0 00000002", "domestic_dog n 1 1 @ 1 0 00000002", "puppy n 1 1 @ 1 0 00000003",
    "toy_poodle n 1 1 @ 1 0 00000004", "kettle n 1 1 @ 1 0 00000005", "fido n 1 1 @ 1 0 00000006",
    "paris n 1 1 @ 1 0 00000007", "turkey n 2 1 @ 2 0 00000008 00000009", "bermuda_grass n 1 1 @ 1 0 00000010",
    "devil_grass n 1 1 @ 1 0 00000010", "hot_dog n 1 1 @ 1 0 00000011", "entity n 1 1 @ 1 0 00000001",
]) + "\n"


def test_hyponyms_of_an_id_class_and_proper_nouns_are_dropped_on_a_hand_made_wordnet():
    h = parse_noun_hierarchy(DATA, INDEX)
    words = ["puppy", "toy poodle", "domestic dog", "kettle", "fido", "paris", "turkey", "bermuda grass", "devil grass", "hot dog", "zorblax", "fluffy"]
    kinds = ["noun"] * 11 + ["adj"]
    r = wordnet_filter(words, kinds, ["Dog"], h)
    kept = [w for w, k in zip(words, r.keep) if k]
    # below dog (directly, transitively, through an instance pointer) or a synonym of it: dropped as hyponyms
    assert r.hyponyms == [("puppy", "Dog"), ("toy poodle", "Dog"), ("domestic dog", "Dog"), ("fido", "Dog")]
    # proper: every sense an instance (Paris) or spelled capitalised (Bermuda_grass); turkey the bird survives Turkey
    assert r.proper == ["paris", "bermuda grass"]
    assert kept == ["kettle", "turkey", "devil grass", "hot dog", "zorblax", "fluffy"]


def test_an_id_class_with_several_senses_guards_all_of_them():
    h = parse_noun_hierarchy(DATA, INDEX)
    # "turkey" (ID) has the bird and the country: nothing lies under either here but themselves
    r = wordnet_filter(["turkey", "kettle"], ["noun", "noun"], ["turkey"], h)
    assert r.keep == [False, True] and r.hyponyms == [("turkey", "turkey")]


@pytest.mark.wordnet
def test_on_wordnet_3_0():
    from synood_cli.negative_filter import load_noun_hierarchy

    h, _ = load_noun_hierarchy()
    words = ["puppy", "poodle", "einstein", "paris", "cat", "kettle", "turkey", "china"]
    r = wordnet_filter(words, ["noun"] * len(words), ["dog", "teapot"], h)
    assert [w for w, k in zip(words, r.keep) if k] == ["cat", "kettle", "turkey", "china"]
    assert r.proper == ["einstein", "paris"]


@pytest.mark.wordnet
def test_mining_with_the_filter_drops_and_records_it(tmp_path, tiny_weights):
    from conftest import seed_home

    clip = load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(seed_home(tiny_weights, tmp_path / "w")), torch.device("cpu"), torch.float32)
    nouns = ["puppy", "poodle", "einstein", "kettle", "violin", "mountain", "paris", "bucket"]
    lex = parse_word_list("".join(f"{w}\tnoun\n" for w in nouns) + "blue\tadj\nshiny\tadj\n", name="f", source="<t>")
    store = Store(tmp_path / "s")
    plain = mine_negatives(clip, ["dog"], lex, store, 1.0, 0.95)
    filt = mine_negatives(clip, ["dog"], lex, store, 1.0, 0.95, negative_filter="wordnet")
    assert set(plain.labels) == set(nouns) | {"blue", "shiny"}
    assert filt.labels == [w for w in plain.labels if w not in {"puppy", "poodle", "einstein", "paris"}]
    assert filt.artifact.id != plain.artifact.id and "filter" not in plain.artifact.manifest["config"]
    assert filt.artifact.manifest["config"]["filter"]["name"] == "wordnet"
    summary = filt.artifact.manifest["summary"]
    assert summary["filter"] == {"name": "wordnet", "dropped_hyponyms": 2, "dropped_proper": 2} and summary["nouns"] == 4
    dropped = json.loads(filt.artifact.file("filtered.json").read_text())
    assert sorted(dropped["proper"]) == ["einstein", "paris"] and sorted(x[0] for x in dropped["hyponyms"]) == ["poodle", "puppy"]
    # the kept rows keep their own features
    keep = [plain.labels.index(w) for w in filt.labels]
    torch.testing.assert_close(filt.features, plain.features[keep], rtol=0, atol=0)


def test_the_filter_is_in_the_score_identity_and_an_unknown_one_is_refused(tmp_path):
    from synood_cli.errors import UsageError
    from synood_cli.scoring import ScoringConfig, planned_identity

    def ident(**kw):
        return planned_identity(ScoringConfig(home=tmp_path, profile="tiny", method="neglabel", device="cpu", **kw), "neglabel", ["dog"])

    assert ident()["pool"] == {"name": "neglabel", "filter": None}
    filtered = ident(negative_filter="wordnet")["pool"]["filter"]
    assert filtered["name"] == "wordnet" and filtered["wordnet"] == "3.0"
    assert planned_identity(ScoringConfig(home=tmp_path, profile="tiny", method="mcm", device="cpu", negative_filter="wordnet"), "mcm", ["dog"])["pool"] is None
    with pytest.raises(UsageError, match="unknown --negative-filter 'llm'"):
        ident(negative_filter="llm")
