"""The paper profile computes the published recipe (docs/method.md): noise step in u = z0 / vae_scale,
guidance direction per score, raw CLIP feature into the adapter, NegLabel's word pool and
templates, group remainder, the checkpoint's negative set, the research negatives stage."""

from __future__ import annotations

import json
import math

import pytest
import torch

from synood_cli.errors import UsageError

SIZE = 32


# -- 1 and 2: the noise step and the guidance direction --------------------------------------


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.store import Store

    return load_inpainter(TINY_DIFFUSION, Store(tmp_path_factory.mktemp("recipe-home")), torch.device("cpu"), torch.float32)


_W = torch.randn(3, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))


def _classifier(x):
    """A small differentiable 3-class classifier on images in [0, 1]."""
    return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ _W.T * 4


def _synth(inpainter, guidance: str, target: float, lr: float):
    from synood_cli.guidance import GuideModel
    from synood_cli.models.diffusion import TINY_DIFFUSION
    from synood_cli.synthesis import SynthConfig, Synthesizer

    cfg = SynthConfig(prompts="p", diffusion=TINY_DIFFUSION, size=SIZE, steps=10, lr=lr, guidance=guidance, target=str(target), device="cpu")
    return Synthesizer(cfg, inpainter, GuideModel(_classifier, "toy"), target, torch.device("cpu"))


def _by_hand(inpainter, guidance: str, z0, target: float):
    """The score and dL/du, L = sum_i (S(decode(u_i)) - target)^2, u = z0 / vae_scale, written out here."""
    from synood_cli.guidance import GUIDANCE

    u = (z0 / inpainter.latent_scale).clone().requires_grad_(True)
    x = (inpainter.vae.decode(u).sample / 2 + 0.5).clamp(0, 1)
    s = GUIDANCE.get(guidance)(_classifier(x))
    (g,) = torch.autograd.grad(((s - target) ** 2).sum(), u)
    return s.detach(), g


def _latents(inpainter, n=2, seed=1):
    side = SIZE // inpainter.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, side, side, generator=gen), torch.randn(n, 4, side, side, generator=gen)


@pytest.mark.parametrize("guidance", ["energy", "mean-log-softmax"])
def test_one_update_is_eps_minus_lr_times_the_gradient_in_u(inpainter, guidance):
    z0, eps = _latents(inpainter)
    s0, _ = _by_hand(inpainter, guidance, z0, 0.0)
    target = float(s0.max()) + 3.0  # above every source score
    lr = 5.0
    _, g = _by_hand(inpainter, guidance, z0, target)
    new_eps, x, ok = _synth(inpainter, guidance, target, lr).guidance_step(eps, z0)
    assert ok.all()
    want = eps - lr * g
    torch.testing.assert_close(new_eps, want, rtol=1e-5, atol=1e-7)
    # the gradient at the scaled z0 is 1/vae_scale = 5.49 times this step: it must not be what we take
    assert inpainter.latent_scale == pytest.approx(0.18215)
    assert (new_eps - eps).norm() == pytest.approx((lr * g).norm().item(), rel=1e-5)


@pytest.mark.parametrize("guidance", ["energy", "mean-log-softmax"])
@pytest.mark.parametrize("side", ["below", "above"])
def test_the_step_moves_the_score_toward_the_target(inpainter, guidance, side):
    """A small step along the update, applied where the gradient was taken, lowers |s - target|
    from either side, and by the amount the quadratic loss predicts (a linear loss would not)."""
    z0, eps = _latents(inpainter, seed=2)
    s0, _ = _by_hand(inpainter, guidance, z0, 0.0)
    target = float(s0.max()) + 1.0 if side == "below" else float(s0.min()) - 1.0
    lr = 1e-3
    new_eps, _, _ = _synth(inpainter, guidance, target, lr).guidance_step(eps, z0)
    delta_u = new_eps - eps  # -lr dL/du
    s1, _ = _by_hand(inpainter, guidance, z0 + delta_u * inpainter.latent_scale, 0.0)
    assert ((s1 - target).abs() < (s0 - target).abs()).all(), (s0, s1, target)
    # first order: ds_i = dS/du . delta_u = -lr * 2 (s_i - t) |dS/du|^2
    _, g = _by_hand(inpainter, guidance, z0, target)
    dsdu = g / (2 * (s0 - target))[:, None, None, None]
    predicted = -lr * 2 * (s0 - target) * dsdu.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(s1 - s0, predicted, rtol=0.2, atol=1e-6)


def test_mean_log_softmax_points_to_ood_and_its_boundary_is_the_high_tail():
    from synood_cli.guidance import GUIDANCE, boundary_target, higher_means_id

    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8], [0.0, 0.0, 0.0]])
    mls = GUIDANCE.get("mean-log-softmax")(logits)
    assert mls[2] == pytest.approx(-math.log(3)) and mls[2] > mls[1] > mls[0]  # uniform (OOD) is highest
    assert higher_means_id("energy") and higher_means_id("msp") and not higher_means_id("mean-log-softmax")
    scores = torch.arange(1, 41, dtype=torch.float32)  # 1..40
    # 95% TPR with higher = OOD: 38 of the 40 ID scores at or below the boundary
    assert boundary_target(scores, higher_means_id=False) == 38.0
    assert boundary_target(scores, higher_means_id=True) == 3.0
    with pytest.raises(UsageError):
        higher_means_id("none")


# -- 3: the adapter takes the raw CLIP image output g ----------------------------------------


def _adapter_by_hand(adapter, g):
    """normalize(g + ReLU(LayerNorm(W g + b))) written out from the adapter's weights."""
    w, b = adapter.linear.weight, adapter.linear.bias
    h = g @ w.T + b
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    ln = (h - mu) / torch.sqrt(var + adapter.norm.eps) * adapter.norm.weight + adapter.norm.bias
    return torch.nn.functional.normalize(g + torch.relu(ln), dim=-1)


def _raw(n, d, seed, scale=7.0):
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return g * scale  # CLIP image outputs are far from unit length (about 10 for ViT-B/16)


def test_training_feeds_the_adapter_the_raw_feature():
    from synood_cli.training import LOGIT_SCALE, TrainConfig, train

    d, k = 16, 3
    id_g, synth_g = _raw(12, d, 1), _raw(8, d, 2)
    id_y = torch.arange(12) % k
    targets = torch.arange(8) % 4
    id_text = torch.nn.functional.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(3)), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(4, d, generator=torch.Generator().manual_seed(4)), dim=1)
    cfg = TrainConfig(adapter_epochs=1, negatives_epochs=0, val_fraction=0.0, batch_size=4)
    result = train(id_g, id_y, synth_g, targets, id_text, neg, cfg)
    g = torch.cat([id_g, synth_g])
    y = torch.cat([id_y, targets + k])
    with torch.no_grad():
        logits = LOGIT_SCALE * _adapter_by_hand(result.adapter, g) @ torch.cat([id_text, neg]).T
        want = torch.nn.functional.cross_entropy(logits, y).item()
        on_f = LOGIT_SCALE * _adapter_by_hand(result.adapter, torch.nn.functional.normalize(g, dim=1)) @ torch.cat([id_text, neg]).T
    assert result.history["adapter_final"]["train_loss"] == pytest.approx(want, rel=1e-5)
    assert torch.nn.functional.cross_entropy(on_f, y).item() != pytest.approx(want, rel=1e-3)


def test_the_synood_scorer_feeds_the_adapter_the_raw_feature():
    from synood_cli.scores import ScoreInputs, Scorer
    from synood_cli.scores.neglabel import grouped_score
    from synood_cli.training import Adapter

    d = 16
    torch.manual_seed(0)
    adapter = Adapter(d).eval().requires_grad_(False)
    g = _raw(6, d, 5)
    id_t = torch.nn.functional.normalize(torch.randn(3, d, generator=torch.Generator().manual_seed(6)), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(20, d, generator=torch.Generator().manual_seed(7)), dim=1)
    inputs = ScoreInputs(id_text=id_t, neg_text=neg, tau=0.01, groups=4, seed=0, adapter=adapter)
    scores, pred = Scorer("synood", inputs)(g)
    grouped = neg[:20][torch.randperm(20, generator=torch.Generator().manual_seed(0))].reshape(4, 5, d)
    want = grouped_score(_adapter_by_hand(adapter, g), id_t, grouped, 0.01)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-6)
    on_f = grouped_score(_adapter_by_hand(adapter, torch.nn.functional.normalize(g, dim=1)), id_t, grouped, 0.01)
    assert (on_f - want).abs().max() > 1e-3
    # the zero-shot scores keep the normalised feature: scaling g changes nothing for them
    s1, _ = Scorer("neglabel", inputs)(g)
    s2, _ = Scorer("neglabel", inputs)(g * 3)
    torch.testing.assert_close(s1, s2)


def test_an_old_feature_cache_of_normalised_features_is_never_read(tmp_path):
    from PIL import Image

    from synood_cli.features import EncodeStats, cached_features
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.profiles import load_profile
    from synood_cli.store import Store

    store = Store(tmp_path / "home")
    clip = load_clip(clip_source(load_profile("tiny")), store, torch.device("cpu"), torch.float32)
    import hashlib
    import io

    blobs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (40 * i, 90, 200 - 30 * i)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    keys = [hashlib.sha256(b).hexdigest() for b in blobs]
    old_config = {"model": clip.fingerprint, "keys": hashlib.sha256("".join(keys).encode()).hexdigest(), "count": 3}

    def old_build(folder):
        from safetensors.torch import save_file

        save_file({"features": torch.full((3, clip.embed_dim), 0.25)}, str(folder / "features.safetensors"))
        return {"images": 3}

    store.build("features", old_config, old_build)  # what synood wrote before the schema bump
    stats = EncodeStats()
    got = cached_features(clip, store, [(lambda b=b: b) for b in blobs], stats)
    assert stats.encoded == 3 and stats.cached == 0
    want = torch.cat([clip.encode_raw(clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB"))[None]) for b in blobs])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# -- 4: NegLabel's word pool and templates ----------------------------------------------------

_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"


def _fake_wordnet(root):
    """A WordNet folder with hand-written data lines: file number second, first lemma fifth."""
    root.mkdir()
    noun = _HEADER + "\n".join([
        "00001740 03 n 01 entity 0 000 | that which exists",
        "00002000 05 n 02 dog 0 domestic_dog 0 000 | an animal: left out",
        "00002100 13 n 01 pizza 0 000 | a food: left out",
        "00002200 06 n 02 Cruise_Ship 0 cruise_liner 0 000 | multi-word, lowercased",
        "00002300 06 n 02 hammer 0 mallet 0 000 | an artifact",
        "00002400 04 n 01 hammer 1 000 | a duplicate first lemma: kept once",
        "00002500 07 n 02 red 0 redness 0 000 | also an adjective",
        "00002600 06 n 02 mallet 0 hammer 0 000 | second lemmas are never candidates by themselves",
    ]) + "\n"
    adj = _HEADER + "\n".join([
        "00001740 00 a 01 able 0 000 | head adjective",
        "00001800 00 s 01 above(a) 0 000 | satellite with a marker",
        "00001900 01 a 01 red 0 000 | already a noun: once in the pool",
        "00002000 44 a 01 well_known(ip) 0 000 | participial, multi-word",
        "00002100 00 a 01 able 0 000 | duplicate",
    ]) + "\n"
    (root / "data.noun").write_text(noun)
    (root / "data.adj").write_text(adj)
    (root / "index.noun").write_text(_HEADER + "entity n 1 0 1 0 00001740\n")
    (root / "index.adj").write_text(_HEADER + "able a 1 0 1 0 00001740\n")
    return root


def test_neglabel_pool_follows_neglabels_word_files(tmp_path):
    from synood_cli.lexicons import load_neglabel

    lex = load_neglabel(_fake_wordnet(tmp_path / "wn"))
    assert lex.name == "neglabel"
    assert lex.nouns == ("entity", "cruise ship", "hammer", "red", "mallet")
    assert lex.adjectives == ("able", "above", "well known")


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/wordnet/data.noun").exists(), reason="needs WordNet 3.0 in /usr/share/wordnet")
def test_neglabel_pool_from_debian_wordnet():
    from synood_cli.lexicons import load_lexicon

    lex = load_lexicon("neglabel")
    # about 70,000 candidates, as NegLabel's word files (whose union is 70,000)
    assert (len(lex.nouns), len(lex.adjectives)) == (58514, 12280)
    assert len(set(lex.nouns)) == len(lex.nouns) and not set(lex.nouns) & set(lex.adjectives)
    nouns = set(lex.nouns)
    assert {"physical entity", "cruise ship", "hydraulic pump"} <= nouns  # multi-word first lemmas kept
    assert not {"goldfish", "pizza", "cheeseburger"} & nouns  # noun.animal and noun.food left out
    assert {"unable", "abaxial"} <= set(lex.adjectives)
    assert not any(w.endswith(("(a)", "(p)", "(ip)")) or "_" in w or w != w.lower() for w in lex.nouns + lex.adjectives)


def test_templates_are_neglabels_exactly():
    from synood_cli.negatives import ADJ_TEMPLATE, ID_TEMPLATE, NOUN_TEMPLATE, RESEARCH_ADAPTER_ID_TEMPLATE

    assert (ID_TEMPLATE, NOUN_TEMPLATE, ADJ_TEMPLATE) == ("the nice {}", "the nice {}", "This is a {} photo")
    assert RESEARCH_ADAPTER_ID_TEMPLATE == "a nice {}"


def test_default_and_paper_profiles_use_the_neglabel_pool():
    from synood_cli.profiles import load_profile

    assert load_profile("default")["lexicon"] == load_profile("paper")["lexicon"] == "neglabel"


# -- 5: the group remainder ------------------------------------------------------------------


def test_groups_drop_the_last_m_mod_g_of_the_mined_list_then_shuffle():
    from synood_cli.scores import group_negatives

    m, g = 10499, 100
    neg = torch.arange(m, dtype=torch.float32)[:, None]
    grouped = group_negatives(neg, g, seed=0)
    assert grouped.shape == (g, 104, 1)
    assert sorted(grouped.flatten().long().tolist()) == list(range(10400))  # 10400..10498 dropped
    perm = torch.randperm(10400, generator=torch.Generator().manual_seed(0))
    assert grouped.flatten().long().tolist() == perm.tolist()
    assert group_negatives(neg, g, seed=1).flatten().tolist() != grouped.flatten().tolist()


# -- 7: the negatives stage as the research code trains it ----------------------------------


def test_paper_profile_trains_negatives_over_negatives_only_with_a_per_epoch_cosine_on_all_data():
    from synood_cli.finetuning import profile_train_config
    from synood_cli.training import LOGIT_SCALE, train

    cfg = profile_train_config("paper", seed=0, adapter_epochs=0)
    assert (cfg.negatives_logits, cfg.schedule, cfg.val_fraction) == ("negatives", "epoch", 0.0)
    default = profile_train_config("default")
    assert (default.negatives_logits, default.schedule, default.val_fraction) == ("all", "step", 0.05)

    d, k = 16, 3
    synth_g = _raw(40, d, 8)
    targets = torch.arange(40) % 5
    id_text = torch.nn.functional.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(9)), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(5, d, generator=torch.Generator().manual_seed(10)), dim=1)
    cfg.batch_size = 16
    result = train(_raw(6, d, 11), torch.arange(6) % k, synth_g, targets, id_text, neg, cfg)
    hist = result.history["negatives"]
    # the learning rate of each epoch: torch's CosineAnnealingLR(T_max=5) stepped once per epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.negatives_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.negatives_epochs)
    want_lr = []
    for _ in range(cfg.negatives_epochs):
        want_lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [h["lr"] for h in hist] == pytest.approx(want_lr, rel=1e-9)
    assert all("val_loss" not in h for h in hist)  # all the data, no held-out split
    # cross-entropy over the negatives only, on f = g / |g|
    f = torch.nn.functional.normalize(synth_g, dim=1)
    logits = LOGIT_SCALE * f @ result.negative_features.T
    want = torch.nn.functional.cross_entropy(logits, targets).item()
    assert result.history["negatives_final"]["train_loss"] == pytest.approx(want, rel=1e-5)


def test_profiles_show_paper_lists_the_recipe(invoke):
    r = invoke("profiles", "show", "paper")
    assert r.returncode == 0, r.stderr
    for fragment in ("neglabel", "the nice {}", "This is a {} photo", "mean-log-softmax", "torchvision:resnet50",
                     "lr 5", "u = z0 / vae_scale", "negatives only", "per epoch", "docs/method.md"):
        assert fragment in r.stdout, fragment


# -- 4 and 6: the checkpoint's negative set, end to end on the tiny profile --------------------

CLASSES = ("cat", "dog", "fish")


def _cli(home, *args):
    from typer.testing import CliRunner

    from conftest import Result
    from synood_cli.cli.app import app

    r = CliRunner().invoke(app, list(args), env={"SYNOOD_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """prompt -> synthesize -> finetune on the tiny profile; the checkpoint `ck`."""
    from conftest import write_flat, write_tree

    root = tmp_path_factory.mktemp("recipe-e2e")
    home = root / "home"
    tree = write_tree(root / "train", {c: 4 for c in CLASSES}, corrupt=False, junk=False)
    ood = write_flat(root / "ood", 5)
    for args in (("prompt", str(tree.root), "--profile", "tiny", "--per-class", "3", "--name", "ctx"),
                 ("synthesize", "--prompts", "ctx", "--profile", "tiny", "--name", "near"),
                 ("finetune", "--prompts", "ctx", "--synth", "near", "--profile", "tiny", "--name", "ck")):
        r = _cli(home, *args)
        assert r.returncode == 0, r.stderr
    return {"home": home, "tree": tree, "ood": ood}


def _checkpoint_and_mined(home):
    from synood_cli.negatives import load_negatives
    from synood_cli.store import Store
    from synood_cli.training import load_checkpoint

    store = Store(home)
    ck = load_checkpoint(store, "ck")
    mined = load_negatives(store.find(ck.manifest["config"]["negatives"], kind="negatives"))
    return store, ck, mined


@pytest.mark.slow
def test_the_checkpoint_records_every_mined_negative_once_with_its_kind(tuned):
    _, ck, mined = _checkpoint_and_mined(tuned["home"])
    meta = json.loads((ck_path(tuned["home"]) / "labels.json").read_text())
    assert meta["labels"] == ck.labels == list(mined.labels)
    assert meta["kinds"] == ck.kinds == list(mined.kinds)
    kinds = ck.kinds
    assert kinds == sorted(kinds, key=lambda k: k != "noun")  # nouns first, then adjectives
    pairs = list(zip(ck.labels, ck.kinds))
    assert len(pairs) == len(set(pairs)) == ck.negative_features.shape[0]
    summary = ck.manifest["summary"]
    assert sum(ck.tuned) == summary["assigned_labels"] > 0
    tuned_rows = torch.tensor(ck.tuned)
    # the tuned rows were trained (they moved); the others are the mined text features, unchanged
    assert (ck.negative_features[tuned_rows] - mined.features[tuned_rows]).abs().max() > 1e-4
    torch.testing.assert_close(ck.negative_features[~tuned_rows], mined.features[~tuned_rows], rtol=0, atol=0)


def ck_path(home):
    from synood_cli.store import Store

    return Store(home).find("ck", kind="checkpoint").path


@pytest.mark.slow
def test_synood_scores_use_the_adapter_on_g_and_the_checkpoints_negatives(tuned):
    """`synood score --checkpoint` against the formula: adapter(g), the checkpoint's negatives in
    mined order, the last M mod G dropped, a seeded shuffle, G groups (tiny profile: 10)."""
    from PIL import Image

    from conftest import rows_of
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.negatives import ID_TEMPLATE, text_features
    from synood_cli.profiles import load_profile
    from synood_cli.scores.neglabel import grouped_score

    home, ood = tuned["home"], tuned["ood"]
    r = _cli(home, "score", str(ood.root), "--profile", "tiny", "--checkpoint", "ck", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    got = {row["path"]: row["score"] for row in rows_of(r.stdout, "jsonl")}
    store, ck, mined = _checkpoint_and_mined(home)
    clip = load_clip(clip_source(load_profile("tiny")), store, torch.device("cpu"), torch.float32)
    paths = sorted(got)
    g = torch.cat([clip.encode_raw(clip.preprocess(Image.open(p).convert("RGB"))[None]) for p in paths])
    id_t = text_features(clip, store, list(CLASSES), ID_TEMPLATE)
    groups = load_profile("tiny")["neglabel"]["groups"]

    def by_hand(neg):
        per = neg.shape[0] // groups
        perm = torch.randperm(per * groups, generator=torch.Generator().manual_seed(0))
        return grouped_score(ck.adapter(g), id_t, neg[: per * groups][perm].reshape(groups, per, -1), 0.01)

    scores = torch.tensor([got[p] for p in paths], dtype=torch.float32)
    tol = dict(rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(scores, by_hand(ck.negative_features), **tol)
    # ignoring the fine-tuned features, or adding them on top of the mined ones, gives other scores
    assert not torch.allclose(scores, by_hand(mined.features), **tol)
    tuned_rows = torch.tensor(ck.tuned)
    doubled = torch.cat([ck.negative_features[tuned_rows], mined.features])
    assert not torch.allclose(scores, by_hand(doubled), **tol)


@pytest.mark.slow
@pytest.mark.parametrize("flag", [("--lexicon", "wordnet"), ("--neg-ratio", "0.3")])
def test_score_refuses_negatives_other_than_the_checkpoints(tuned, flag):
    r = _cli(tuned["home"], "score", str(tuned["ood"].root), "--profile", "tiny", "--checkpoint", "ck", *flag)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "checkpoint" in r.stderr and flag[0] in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_checkpoints_own_lexicon_and_ratio_are_accepted(tuned):
    r = _cli(tuned["home"], "score", str(tuned["ood"].root), "--profile", "tiny", "--checkpoint", "ck", "--lexicon", "basic",
             "--neg-ratio", "0.15", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
