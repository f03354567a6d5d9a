"""AdaNeg under OpenOOD-VLM's evaluation protocol (docs/method.md, "Score"): a fresh memory per OOD set,
that set and the ID set shuffled together with the seed, batches of 256.

The reference loop here is written from the published evaluator (`OODEvaluatorClipTTA._eval_ood`:
`reset_memory()`, `ConcatDataset([ood, id])`, a shuffled loader) and never calls synood's protocol code.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from synood_cli.metrics import ood_metrics
from synood_cli.scores import ScoreInputs, Scorer
from synood_cli.scoring import adapt_published
from test_adaneg import stream


def _scorer(ids, negs):
    return Scorer("adaneg", ScoreInputs(id_text=ids, neg_text=negs, tau=0.01, seed=0))


def _sets(seed=7):
    ids, negs, f = stream(seed, n=150)
    # OOD sets of different sizes; ID first 70 images
    return ids, negs, f[:70], {"a": f[70:100], "b": f[100:150]}


def test_each_ood_set_runs_the_published_loop_with_a_fresh_memory():
    ids, negs, id_f, ood = _sets()
    _, paired = adapt_published(_scorer(ids, negs), id_f, ood, seed=3, batch=16)
    for name, o in ood.items():
        ref = _scorer(ids, negs)  # a new scorer: an empty memory
        both = torch.cat([o, id_f])
        perm = torch.randperm(len(both), generator=torch.Generator().manual_seed(3))
        got = torch.cat([ref(both[perm][i : i + 16])[0] for i in range(0, len(both), 16)])
        want = torch.empty(len(both))
        want[perm] = got
        np.testing.assert_array_equal(paired[name][0], want[len(o):].double().numpy())
        np.testing.assert_array_equal(paired[name][1], want[: len(o)].double().numpy())


def test_same_seed_same_scores_and_a_sets_metrics_do_not_depend_on_the_other_sets():
    ids, negs, id_f, ood = _sets()
    alone1, p1 = adapt_published(_scorer(ids, negs), id_f, ood, seed=3, batch=16)
    alone2, p2 = adapt_published(_scorer(ids, negs), id_f, ood, seed=3, batch=16)
    np.testing.assert_array_equal(alone1, alone2)
    for k in ood:
        np.testing.assert_array_equal(p1[k][0], p2[k][0])
        np.testing.assert_array_equal(p1[k][1], p2[k][1])
    # the other order, and each set alone: identical metrics per set (the memory is reset per set)
    _, swapped = adapt_published(_scorer(ids, negs), id_f, {"b": ood["b"], "a": ood["a"]}, seed=3, batch=16)
    _, only_b = adapt_published(_scorer(ids, negs), id_f, {"b": ood["b"]}, seed=3, batch=16)
    for k in ood:
        assert ood_metrics(*p1[k]) == ood_metrics(*swapped[k])
    assert ood_metrics(*p1["b"]) == ood_metrics(*only_b["b"])
    # the ID scores differ per OOD set (each pairing adapts its own memory), and another seed shuffles otherwise
    assert not np.allclose(p1["a"][0], p1["b"][0])
    _, other = adapt_published(_scorer(ids, negs), id_f, ood, seed=4, batch=16)
    assert not np.allclose(other["a"][1], p1["a"][1])


def test_evaluate_reports_per_set_id_scores_and_the_protocol(invoke, tmp_path, image_tree, ood_folder):
    """The world's CLIP (shipped weights), not the tiny one: the tiny CLIP's features never move AdaNeg's memory."""
    from conftest import write_flat

    home = tmp_path / "home"
    other = write_flat(tmp_path / "other", 9, kind="noise")

    def run(*ood, extra=()):
        r = invoke("evaluate", "--id", str(image_tree.root), *[x for o in ood for x in ("--ood", o)], "--profile", "world",
                   "--method", "adaneg", "--format", "json", *extra, home=home)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    a, b = f"a={ood_folder.root}", f"b={other.root}"
    first = run(a, b, extra=("--save-scores", str(tmp_path / "s")))
    swapped = run(b, a)
    assert first["ood"] == swapped["ood"]  # a set's metrics do not depend on the sets before it
    scores = {k: np.loadtxt(tmp_path / "s" / f"{k}.csv", delimiter=",", skiprows=1, usecols=1)
              for k in (image_tree.root.name, f"{image_tree.root.name}+a", f"{image_tree.root.name}+b")}
    assert len({v.tobytes() for v in scores.values()}) == 3  # the memory moved: ID alone, with a, with b all differ
    adaptive = first["identities"]["adaneg"]["adaptive"]
    assert adaptive["protocol"] == "published" and adaptive["batch_size"] == 256 and first["id_scores_per_ood_set"] == ["adaneg"]
    # each OOD set's metrics come from the ID scores made with it, saved as ID+SET
    id_name = image_tree.root.name
    for k in ("a", "b"):
        r = invoke("evaluate", "--id-scores", str(tmp_path / "s" / f"{id_name}+{k}.csv"), "--ood-scores", str(tmp_path / "s" / f"{k}.csv"),
                   "--format", "json", home=home)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ood"][k] == first["ood"][k]
    streamed = run(a, b, extra=("--adaptive-protocol", "stream"))
    assert streamed["identities"]["adaneg"]["adaptive"]["protocol"] == "stream" and "id_scores_per_ood_set" not in streamed
