"""CSP's conjugated pool and score (docs/method.md, "Negative labels", "Score") against a transcription of CSP's code.

The reference below is written from CSP's published code (MengyuanChen21/NeurIPS2024-CSP:
`CLIPScalableClassifier.__init__` for the pool, `ScalableClassifier.grouping`/`forward` for the
score), step for step, with its own copies of the word lists; it never calls synood's pool or
score code. The encoder is the real tiny CLIP (random weights) on CPU.
"""

from __future__ import annotations

import random

import pytest
import torch

from synood_cli.lexicons import parse_word_list
from synood_cli.models.clip import ClipSource, load_clip
from synood_cli.negatives import mine_negatives
from synood_cli.scores import neglabel
from synood_cli.store import Store

CLASS_NAMES = ["dog", "red fox", "airplane", "teapot"]
NOUNS = "apple table river mountain violin hammer bicycle castle cloud volcano pencil candle ladder bucket helmet glacier".split()
ADJS = "blue shiny rough ancient tiny fluffy wooden bright soft quiet wet gooey".split()

# CSP's lists, typed here again from its class_names.py (not imported from synood)
REF_SUPER = ['{} environment', '{} space', '{} object', '{} scene', '{} place', '{} item', '{} area',
             '{} view', '{} thing', '{} pattern', '{} structure', '{} landscape', '{} vista', '{} creature']
REF_NOUN_T = ['a close-up photo of the nice {}.', 'a photo with the nice {}.', 'a good photo with the nice {}.',
              'a photo of the nice {}.', '{}', 'the {}', 'the good {}', 'the nice {}']
REF_ADJ_T = ['{}', 'a nice photo of {}', 'a good photo of {}', 'a close-up photo of {}']


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tiny_weights):
    from conftest import seed_home

    home = seed_home(tiny_weights, tmp_path_factory.mktemp("csp-weights"))  # the session's tiny weights, not a new build
    return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), torch.device("cpu"), torch.float32)


def encode_raw(clip, texts):
    with torch.no_grad():
        return clip.model.encode_text(clip.tokenizer(texts)).float()


def reference_id(clip, class_names):
    pos = encode_raw(clip, [t.format(c) for t in REF_NOUN_T for c in class_names])
    pos = pos.view(-1, len(class_names), pos.shape[-1]).mean(dim=0)
    return pos / pos.norm(dim=-1, keepdim=True)


def reference_pool(clip, class_names, nouns, adjs, neg_topk, pencentile, seed):
    """CSP's CLIPScalableClassifier.__init__, transcribed: (selected texts, selected features, ID features)."""
    pos = reference_id(clip, class_names)
    random.seed(seed)
    words_noun, words_adj, noun_names, adj_names = [], [], [], []
    for line in nouns:
        noun_names.append(line)
        for template in REF_NOUN_T:
            words_noun.append(template.format(line))
    for line in adjs:
        candidate = random.choice(REF_SUPER).format(line)
        adj_names.append(candidate)
        for template in REF_ADJ_T:
            words_adj.append(template.format(candidate))
    neg = torch.cat([encode_raw(clip, words_noun), encode_raw(clip, words_adj)])
    d = neg.shape[-1]
    neg = torch.cat([neg[: len(words_noun)].view(-1, len(REF_NOUN_T), d).mean(dim=1),
                     neg[len(words_noun):].view(-1, len(REF_ADJ_T), d).mean(dim=1)])
    neg = neg / neg.norm(dim=-1, keepdim=True)
    tmp = neg @ pos.T
    sim = torch.quantile(tmp, q=pencentile, dim=-1)
    sim[torch.max(tmp, dim=1)[0] > 0.95] = 1.0
    n = len(nouns)
    ind_noun, ind_adj = torch.argsort(sim[:n]), torch.argsort(sim[n:])
    sel_noun = ind_noun[0 : int(len(ind_noun) * neg_topk)]
    sel_adj = ind_adj[0 : int(len(ind_adj) * neg_topk)]
    texts = [noun_names[i] for i in sel_noun.tolist()] + [adj_names[i] for i in sel_adj.tolist()]
    return texts, torch.cat([neg[:n][sel_noun], neg[n:][sel_adj]]), pos


def reference_score(pos_sim, neg_sim, ngroup, t=1.0, seed=0):
    """CSP's ScalableClassifier.forward/grouping, transcribed (the permutation drawn on the CPU: docs/method.md)."""
    if ngroup > 1:
        drop = neg_sim.shape[1] % ngroup
        if drop > 0:
            neg_sim = neg_sim[:, :-drop]
        idx = torch.randperm(neg_sim.shape[1], generator=torch.Generator().manual_seed(seed))
        negs = neg_sim.T[idx].T.reshape(pos_sim.shape[0], ngroup, -1)
        scores = []
        for i in range(ngroup):
            full = (torch.cat([pos_sim, negs[:, i, :]], dim=-1) / t).softmax(dim=-1)
            scores.append(full[:, : pos_sim.shape[1]].sum(dim=-1).unsqueeze(-1))
        return torch.cat(scores, dim=-1).mean(dim=-1)
    full = (torch.cat([pos_sim, neg_sim], dim=-1) / t).softmax(dim=-1)
    return full[:, : pos_sim.shape[1]].sum(dim=1)


def word_file(folder) -> str:
    path = folder / "words.txt"
    path.write_text("".join(f"{w}\tnoun\n" for w in NOUNS) + "".join(f"{w}\tadj\n" for w in ADJS))
    return str(path)


def lexicon():
    text = "".join(f"{w}\tnoun\n" for w in NOUNS) + "".join(f"{w}\tadj\n" for w in ADJS)
    return parse_word_list(text, name="csp-test", source="<test>")


@pytest.mark.parametrize("seed", [0, 3])
def test_csp_pool_equals_the_transcribed_reference(clip, tmp_path, seed):
    ratio, pct = 0.5, 0.95
    neg = mine_negatives(clip, CLASS_NAMES, lexicon(), Store(tmp_path), ratio, pct, pool="csp", pool_seed=seed)
    texts, feats, _ = reference_pool(clip, CLASS_NAMES, NOUNS, ADJS, ratio, pct, seed)
    assert neg.labels == texts
    assert neg.kinds == ["noun"] * 8 + ["adj"] * 6
    torch.testing.assert_close(neg.features, feats, rtol=0, atol=1e-5)
    # the adjectives became "ADJ SUPERCLASS" phrases, drawn with CSP's seeded stream
    random.seed(seed)
    drawn = {a: random.choice(REF_SUPER).format(a) for a in ADJS}
    assert all(label in drawn.values() for label in neg.labels[8:])


def test_csp_pool_is_another_artifact_and_the_neglabel_pool_keeps_its_id(clip, tmp_path):
    store = Store(tmp_path)
    plain = mine_negatives(clip, CLASS_NAMES, lexicon(), store, 0.5, 0.95)
    csp0 = mine_negatives(clip, CLASS_NAMES, lexicon(), store, 0.5, 0.95, pool="csp", pool_seed=0)
    csp1 = mine_negatives(clip, CLASS_NAMES, lexicon(), store, 0.5, 0.95, pool="csp", pool_seed=1)
    assert len({plain.artifact.id, csp0.artifact.id, csp1.artifact.id}) == 3
    assert "pool" not in plain.artifact.manifest["config"]  # NegLabel-pool ids are unchanged by pools
    assert csp0.artifact.manifest["config"]["pool"]["name"] == "csp"
    assert csp1.artifact.manifest["config"]["pool"]["seed"] == 1


def test_csp_caps_candidates_nearly_identical_to_an_id_class():
    from synood_cli.negatives import affinity
    from synood_cli.pools import cap_near_duplicates

    g = torch.Generator().manual_seed(0)
    ids = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    cand = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=1)
    cand[2] = torch.nn.functional.normalize(ids[4] + 0.05 * cand[2], dim=0)  # cosine > 0.95 to class 4
    cand[5] = torch.nn.functional.normalize(ids[1] + 0.6 * cand[5], dim=0)  # close, but under 0.95
    aff = affinity(cand, ids, 0.5)
    tmp = cand @ ids.T
    want = torch.quantile(tmp, q=0.5, dim=-1)
    want[torch.max(tmp, dim=1)[0] > 0.95] = 1.0
    got = cap_near_duplicates(aff, cand, ids, chunk=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got[2] == 1.0 and got[5] < 0.95


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_csp_score_equals_the_transcribed_reference(groups):
    g = torch.Generator().manual_seed(groups)
    f = torch.nn.functional.normalize(torch.randn(7, 16, generator=g), dim=1)
    ids = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    negs = torch.nn.functional.normalize(torch.randn(14, 16, generator=g), dim=1)
    got = neglabel(f, ids, negs, tau=0.01, groups=groups, seed=0)
    want = reference_score(100.0 * f @ ids.T, 100.0 * f @ negs.T, groups)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_evaluate_compares_neglabel_and_csp_and_records_each_pool(invoke, tmp_path, tiny_weights, image_tree, ood_folder):
    from conftest import seed_home

    home = seed_home(tiny_weights, tmp_path / "home")
    words = word_file(tmp_path)  # a small lexicon: CSP embeds every word with 8 templates
    r = invoke("evaluate", "--id", str(image_tree.root), "--ood", str(ood_folder.root), "--profile", "tiny", "--lexicon", words, "--neg-ratio", "1",
               "--compare", "neglabel,csp", "--format", "json", home=home)
    assert r.returncode == 0, r.stderr
    import json

    ids = json.loads(r.stdout)["identities"]
    assert ids["neglabel"]["pool"] == {"name": "neglabel", "filter": None} and ids["neglabel"]["templates"]["id"] == "the nice {}"
    assert ids["csp"]["pool"]["name"] == "csp" and ids["csp"]["pool"]["seed"] == 0 and len(ids["csp"]["pool"]["superclasses"]) == 14
    assert ids["csp"]["templates"]["id"][0] == "a close-up photo of the nice {}."
    assert ids["csp"]["negatives"] != ids["neglabel"]["negatives"]
    # `--method neglabel --pool csp` is the same negative set (the method name differs)
    r2 = invoke("evaluate", "--id", str(image_tree.root), "--ood", str(ood_folder.root), "--profile", "tiny", "--lexicon", words, "--neg-ratio", "1",
                "--method", "neglabel", "--pool", "csp", "--format", "json", home=home)
    assert r2.returncode == 0, r2.stderr
    same = json.loads(r2.stdout)["identities"]["neglabel"]
    assert same["negatives"] == ids["csp"]["negatives"] and same["pool"] == ids["csp"]["pool"]
    # and the same scores: the csp method is NegLabel's score over CSP's pool and ID ensemble
    compared = json.loads(r.stdout)
    block = compared["methods"]["csp"] if "methods" in compared else compared["results"]["csp"]
    assert json.loads(r2.stdout)["average"] == block["average"]


def test_the_csp_score_is_given_csps_id_ensemble_and_neglabel_its_own(tmp_path, tiny_weights):
    from conftest import seed_home
    from synood_cli.scoring import ScoringConfig, prepare_scoring

    home = seed_home(tiny_weights, tmp_path / "home")
    setup = prepare_scoring(ScoringConfig(home=home, profile="tiny", method="neglabel,csp", device="cpu", lexicon=word_file(tmp_path), neg_ratio=1.0),
                            ["dog", "red fox", "teapot"])
    ref_ids = reference_id(setup.clip, ["dog", "red fox", "teapot"])
    torch.testing.assert_close(setup.scorers["csp"].inputs.id_text, ref_ids, rtol=0, atol=1e-5)
    plain = setup.clip.encode_texts([f"the nice {c}" for c in ["dog", "red fox", "teapot"]])
    torch.testing.assert_close(setup.scorers["neglabel"].inputs.id_text, plain, rtol=0, atol=1e-5)
    assert setup.mined["csp"].artifact.id != setup.mined["neglabel"].artifact.id
    assert any(" " in label and label.split()[-1] in {"environment", "landscape", "thing", "scene", "space", "object", "place", "item",
                                                        "area", "view", "pattern", "structure", "vista", "creature"}
               for label, kind in zip(setup.mined["csp"].labels, setup.mined["csp"].kinds) if kind == "adj")
