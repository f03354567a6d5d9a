"""Deployment thresholds: evaluate reports them, finetune stores one, score applies and refuses them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from conftest import assert_clean_error, rows_of, write_flat, write_tree
from synood_cli.errors import UsageError
from synood_cli.metrics import threshold_at_tpr

TINY = ["--profile", "tiny"]


# --------------------------------------------------------------------------- the number itself


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 7, 20, 101])
def test_threshold_is_sklearns_first_point_at_95_tpr(seed, n):
    rng = np.random.default_rng(seed)
    ids = np.round(rng.normal(1, 1, n), 1)  # rounded: ties
    ood = np.round(rng.normal(0, 1, 30), 1)
    y = np.r_[np.ones(n), np.zeros(30)]
    fpr, tpr, thr = roc_curve(y, np.r_[ids, ood], drop_intermediate=False)
    want = thr[np.argmax(tpr >= 0.95)]
    t = threshold_at_tpr(ids, 0.95)
    assert t == want
    assert np.mean(ids >= t) >= 0.95  # keeps at least 95% of ID
    assert np.mean(ids > t) < 0.95  # and is the highest such score


def test_threshold_other_tprs_and_refusals():
    ids = np.arange(1.0, 11.0)  # 1..10
    assert threshold_at_tpr(ids, 0.9) == 2.0  # keeps 9 of 10
    assert threshold_at_tpr(ids, 1.0) == 1.0
    assert threshold_at_tpr(ids, 0.5) == 6.0
    for bad in (0, 1.5, -0.1):
        with pytest.raises(UsageError):
            threshold_at_tpr(ids, bad)


def test_parse_threshold():
    from synood_cli.thresholds import parse_threshold

    assert parse_threshold("fpr95") == ("tpr", 0.95)
    assert parse_threshold("tpr90") == ("tpr", 0.9)
    assert parse_threshold("0.25") == ("value", 0.25)
    for bad in ("fpr90x", "nan", "tpr0", "high"):
        with pytest.raises(UsageError):
            parse_threshold(bad)


# --------------------------------------------------------------------------- evaluate reports them


def test_evaluate_reports_thresholds_from_score_files(invoke, tmp_path):
    ids = np.arange(1.0, 21.0)  # 20 ID scores: 95% keeps 19 -> threshold 2.0; 90% keeps 18 -> 3.0
    (tmp_path / "id.csv").write_text("path,score\n" + "".join(f"i{i},{float(v)!r}\n" for i, v in enumerate(ids)))
    (tmp_path / "ood.csv").write_text("path,score\n" + "".join(f"o{i},{v!r}\n" for i, v in enumerate([0.5, 2.5, 30.0])))
    args = ["evaluate", "--id-scores", str(tmp_path / "id.csv"), "--ood-scores", str(tmp_path / "ood.csv"), "--tpr", "0.9"]
    body = json.loads(invoke(*args, "--format", "json").stdout)
    assert body["thresholds"] == {"0.95": 2.0, "0.9": 3.0}
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert "threshold at 95% ID TPR (score < T is OOD): score 2.0" in r.stdout
    assert "threshold at 90% ID TPR (score < T is OOD): score 3.0" in r.stdout
    assert_clean_error(invoke(*args[:-1], "1.5"), 2, "--tpr 1.5")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny-profile ID tree, an OOD folder, and the saved `evaluate --format json` result over them."""
    from test_finetune_cli import cli_in_process

    root = tmp_path_factory.mktemp("calib")
    home = root / "home"
    tree = write_tree(root / "id", {"cat": 7, "dog": 7, "fish": 6}, corrupt=False, junk=False)
    ood = write_flat(root / "ood", 6)
    r = cli_in_process(home, "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--method", "neglabel", "--tpr", "0.8", "--format", "json")
    assert r.returncode == 0, r.stderr
    result = root / "result.json"
    result.write_text(r.stdout)
    return {"home": home, "tree": tree, "ood": ood, "result": result, "body": json.loads(r.stdout)}


def test_evaluate_json_records_how_the_scores_were_made(calibrated):
    body = calibrated["body"]
    assert body["method"] == "neglabel"
    assert set(body["thresholds"]) == {"0.95", "0.8"}
    assert body["thresholds"]["0.95"] <= body["thresholds"]["0.8"]
    assert body["scoring"]["groups"] == 10 and body["scoring"]["model"] == body["model"]


def test_score_threshold_fpr95_from_calibration_keeps_95_percent_of_id(calibrated, tmp_path):
    from test_finetune_cli import cli_in_process
    import pyarrow.parquet as pq

    out = tmp_path / "id.parquet"
    c = calibrated
    r = cli_in_process(c["home"], "score", str(c["tree"].root), *TINY, "--method", "neglabel", "--classnames", str(c["tree"].root),
                       "--threshold", "fpr95", "--calibration", str(c["result"]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    t = c["body"]["thresholds"]["0.95"]
    assert f"threshold {t!r}" in r.stderr and str(c["result"]) in r.stderr  # the value and where it came from
    table = pq.read_table(out)
    scores, is_ood = np.array(table.column("score").to_pylist()), np.array(table.column("is_ood").to_pylist())
    assert len(scores) == 20
    np.testing.assert_array_equal(is_ood, scores < t)
    assert 1 - is_ood.mean() >= 0.95  # the same ID images: at least 95% kept
    meta = json.loads(table.schema.metadata[b"synood"])
    assert meta["threshold"]["value"] == t and meta["threshold"]["tpr"] == 0.95 and meta["method"] == "neglabel"
    # tprNN picks the other recorded threshold
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(c["tree"].root),
                       "--threshold", "tpr80", "--calibration", str(c["result"]), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert all(row["is_ood"] == (row["score"] < c["body"]["thresholds"]["0.8"]) for row in rows_of(r.stdout, "jsonl"))


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--method", "mcm"], "not for mcm"),
        (["--groups", "5"], "groups: 10 there, 5 in these neglabel scores"),
    ],
)
def test_score_refuses_a_threshold_made_for_other_scores(calibrated, extra, fragment):
    from test_finetune_cli import cli_in_process

    c = calibrated
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(c["tree"].root), *extra,
                       "--threshold", "fpr95", "--calibration", str(c["result"]))
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert fragment in r.stderr and "scale" in r.stderr


def test_score_refuses_a_calibration_of_another_model(calibrated, tmp_path):
    from test_finetune_cli import cli_in_process

    c = calibrated
    body = dict(c["body"], identities={"neglabel": dict(c["body"]["identities"]["neglabel"], model="ViT-B-16 / openai")})
    other = tmp_path / "other.json"
    other.write_text(json.dumps(body))
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(c["tree"].root), "--threshold", "fpr95", "--calibration", str(other))
    assert r.returncode == 2
    assert "model: 'ViT-B-16 / openai' there" in r.stderr and r.stdout == ""


def test_a_threshold_for_other_id_classes_is_refused_naming_them(calibrated, tmp_path):
    """The README's deployment line without --classnames scored against ImageNet's 1,000 names: it flagged nothing, exit 0."""
    from test_finetune_cli import cli_in_process

    c = calibrated
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--threshold", "fpr95", "--calibration", str(c["result"]))
    assert r.returncode == 2 and r.stdout == "" and "None" not in r.stderr
    assert f"error: --calibration {c['result']} was made for other scores: classes: 3 classes (cat, dog, fish) there, 1000 classes" in r.stderr
    other = tmp_path / "other.txt"
    other.write_text("cat\ndog\nbird\n")  # as many classes, other names
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(other), "--threshold", "fpr95", "--calibration", str(c["result"]))
    assert_clean_error(r, 2, "classes: 3 classes (cat, dog, fish) there, 3 classes (cat, dog, bird) in these neglabel scores")


def _edited(c, tmp_path, edit) -> str:
    body = json.loads(c["result"].read_text())
    edit(body)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(body))
    return str(p)


@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda b: b.pop("identities"), ["records no scoring identity"]),
        (lambda b: b["identities"]["neglabel"].pop("negatives"), ["negatives: missing there"]),
        (lambda b: b["identities"]["neglabel"].pop("classes"), ["classes: missing there"]),
        (lambda b: b["thresholds"].update({"0.95": float("nan")}), ["is nan, not a finite number"]),
        (lambda b: b["thresholds"].update({"0.95": float("inf")}), ["is inf, not a finite number", "every image OOD"]),
        (lambda b: b["thresholds"].update({"0.95": "0.3"}), ["not a number"]),
        (lambda b: b.update(thresholds=[0.3]), ["no thresholds object"]),
        (lambda b: b.update(identities={"neglabel": [1]}), ["not an object"]),
    ],
)
def test_a_damaged_or_stripped_calibration_is_refused_in_one_line(calibrated, tmp_path, edit, fragments):
    from test_finetune_cli import cli_in_process

    c = calibrated
    path = _edited(c, tmp_path, edit)
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(c["tree"].root), "--threshold", "fpr95", "--calibration", path)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    error = r.stderr.splitlines()[-2]  # one error line and its hint, last (a key compared after the model loads follows the input table)
    assert error.startswith(f"error: --calibration {path}") and all(f in error for f in fragments), r.stderr


@pytest.mark.parametrize("text", ["[1, 2]", "[" * 100000 + "]" * 100000, "{\"method\": [\"neglabel\"]}"])
def test_a_calibration_of_the_wrong_shape_is_one_line(calibrated, tmp_path, text):
    from test_finetune_cli import cli_in_process

    c = calibrated
    p = tmp_path / "bad.json"
    p.write_text(text)
    r = cli_in_process(c["home"], "score", str(c["ood"].root), *TINY, "--classnames", str(c["tree"].root), "--threshold", "fpr95", "--calibration", str(p))
    assert_clean_error(r, 2, str(p))
    assert len(r.stderr.splitlines()) <= 2


def test_threshold_fpr95_needs_a_source(invoke, image_tree):
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--threshold", "fpr95")
    assert_clean_error(r, 2, "needs the ID scores", "--calibration")
    assert_clean_error(invoke("score", str(image_tree.root), *TINY, "--threshold", "high"), 2, "neither a number")
    assert_clean_error(invoke("score", str(image_tree.root), *TINY, "--threshold", "0.3", "--calibration", "r.json"), 2, "--calibration goes with")


# --------------------------------------------------------------------------- finetune stores one


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_finetune_cli import cli_in_process

    root = tmp_path_factory.mktemp("ck")
    home = root / "home"
    tree = write_tree(root / "train", {"cat": 4, "dog": 4, "fish": 4}, corrupt=False, junk=False)
    for args in (["prompt", str(tree.root), *TINY, "--per-class", "4", "--name", "ctx"],
                 ["synthesize", "--prompts", "ctx", *TINY, "--name", "near"],
                 ["finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--name", "ck", "--val-fraction", "0.3"]):
        r = cli_in_process(home, *args)
        assert r.returncode == 0, r.stderr
    return {"home": home, "tree": tree}


@pytest.mark.slow
def test_finetune_stores_the_threshold_on_held_out_id_images(checkpoint):
    from synood_cli.store import Store
    from test_finetune_cli import cli_in_process

    art = Store(checkpoint["home"]).find("ck", kind="checkpoint")
    rec = json.loads((art.path / "threshold.json").read_text())
    assert rec["method"] == "synood" and rec["tpr"] == 0.95 and rec["split"] == "held-out"
    assert 0 < rec["n_id"] < 12  # some, not all, of the 12 ID images
    assert art.manifest["summary"]["threshold"] == rec if "summary" in art.manifest else True
    # score those ID images with the checkpoint: the stored value is one of their SynOOD scores
    r = cli_in_process(checkpoint["home"], "score", str(checkpoint["tree"].root), *TINY, "--checkpoint", "ck", "--threshold", "fpr95", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, "jsonl")
    assert min(abs(row["score"] - rec["threshold"]) for row in rows) < 1e-5
    assert all(row["is_ood"] == (row["score"] < rec["threshold"]) for row in rows)
    assert "from checkpoint ck" in r.stderr and "held-out ID images" in r.stderr
    # evaluate --checkpoint reports it too
    r = cli_in_process(checkpoint["home"], "evaluate", "--id", str(checkpoint["tree"].root), "--ood", str(checkpoint["tree"].root / "cat"), *TINY,
                       "--checkpoint", "ck", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checkpoint_threshold"]["threshold"] == rec["threshold"]
    # a checkpoint threshold belongs to SynOOD scores only
    r = cli_in_process(checkpoint["home"], "score", str(checkpoint["tree"].root), *TINY, "--checkpoint", "ck", "--method", "neglabel", "--threshold", "fpr95")
    assert r.returncode == 2 and "synood scores, not neglabel" in r.stderr
