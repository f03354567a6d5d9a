"""The checkpoint's negative set, fast: the slow end-to-end tests of test_paper_recipe.py (prompt ->
synthesize -> finetune -> score) have these twins at library level on hand-built tensors.

The set the SynOOD score uses is every mined negative once, in mined order (nouns, then
adjectives), the fine-tuned rows replaced by their trained vectors (docs/method.md, "Score"):
not the tuned rows alone, not the mined set untouched, not the tuned rows on top of the mined set.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from conftest import seed_home
from synood_cli.finetuning import checkpoint_negative_set
from synood_cli.store import Store
from synood_cli.training import CHECKPOINT_SCHEMA, Adapter, TrainResult, load_checkpoint, save_checkpoint

LABELS = ["rock", "cloud", "ladder", "river", "fence", "dusty", "round"]
KINDS = ["noun"] * 5 + ["adj"] * 2


def test_the_negative_set_is_every_mined_row_once_the_tuned_ones_replaced():
    mined = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)  # row i holds 3i, 3i+1, 3i+2
    trained = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    features, tuned = checkpoint_negative_set(mined, [4, 1], trained)
    assert features.tolist() == [[0, 1, 2], [-2, -2, -2], [6, 7, 8], [9, 10, 11], [-1, -1, -1], [15, 16, 17], [18, 19, 20]]
    assert tuned == [False, True, False, False, True, False, False]
    assert mined[1].tolist() == [3, 4, 5]  # the mined features are not changed in place


def test_a_partly_tuned_set_round_trips_through_the_checkpoint(synood_home):
    torch.manual_seed(0)
    features = F.normalize(torch.randn(7, 16), dim=1)
    tuned = [False, True, False, False, True, False, True]
    result = TrainResult(Adapter(16).eval(), features[[1, 4, 6]])

    def build(folder: Path) -> dict:
        save_checkpoint(folder, result, LABELS, KINDS, features, tuned)
        (folder / "classes.json").write_text(json.dumps(["cat", "dog"]))
        return {}

    Store(synood_home).build("checkpoint", {"base_model": "m", "schema": CHECKPOINT_SCHEMA}, build, name="ck")
    ck = load_checkpoint(Store(synood_home), "ck", expected_model="m")
    assert torch.equal(ck.negative_features, features)
    assert (ck.labels, ck.kinds, ck.tuned) == (LABELS, KINDS, tuned)


def test_score_with_a_checkpoint_uses_its_negative_set_and_adapter(tiny_weights, synood_home):
    """`prepare_scoring` binds SynOOD to the checkpoint's set: the scores are the formula written out
    (adapter(g), the set in order, last M mod G dropped, seeded shuffle, G groups) on that set."""
    from synood_cli.models.clip import ClipSource, load_clip
    from synood_cli.scores.neglabel import grouped_score
    from synood_cli.scoring import ScoringConfig, prepare_scoring

    home = seed_home(tiny_weights, synood_home)
    store = Store(home)
    clip = load_clip(ClipSource("synood-tiny-clip", "tiny", 0), store, torch.device("cpu"), torch.float32)
    d = clip.embed_dim
    torch.manual_seed(1)
    mined = F.normalize(torch.randn(25, d), dim=1)
    rows = [2, 11, 20]
    features, tuned = checkpoint_negative_set(mined, rows, F.normalize(torch.randn(3, d), dim=1))
    adapter = Adapter(d).eval()
    torch.nn.init.normal_(adapter.linear.weight, std=0.2)

    def build(folder: Path) -> dict:
        save_checkpoint(folder, TrainResult(adapter, features[rows]), [f"w{i}" for i in range(25)], ["noun"] * 25, features, tuned)
        (folder / "classes.json").write_text(json.dumps(["cat", "dog", "fish"]))
        return {}

    store.build("checkpoint", {"base_model": clip.fingerprint, "schema": CHECKPOINT_SCHEMA}, build, name="ck")
    setup = prepare_scoring(ScoringConfig(home=home, profile="tiny", method="synood", checkpoint="ck", device="cpu"), ["cat", "dog", "fish"])
    scorer = setup.scorers["synood"]
    assert torch.equal(scorer.inputs.neg_text.cpu(), features)

    g = 3.0 * torch.randn(6, d)  # raw image outputs
    groups = 10  # the tiny profile's

    def by_hand(neg):
        per = neg.shape[0] // groups
        perm = torch.randperm(per * groups, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return grouped_score(adapter(g), scorer.inputs.id_text.cpu(), neg[: per * groups][perm].reshape(groups, per, -1), 0.01)

    scores = scorer(g)[0].cpu()
    tol = dict(rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(scores, by_hand(features), **tol)
    assert not torch.allclose(scores, by_hand(mined), **tol)  # the mined set, fine-tuning ignored
    assert not torch.allclose(scores, by_hand(torch.cat([features[rows], mined])), **tol)  # tuned rows on top of the mined set
