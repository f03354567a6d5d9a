"""Metrics checked against scikit-learn and against values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from synood_cli.errors import UsageError
from synood_cli.metrics import (
    accuracy,
    average_metrics,
    ood_metrics,
    plot_roc,
    read_score_file,
    roc_curve_points,
)


def sklearn_reference(ids, ood) -> dict[str, float]:
    """The same metrics computed by scikit-learn, the independent reference."""
    ids, ood = np.asarray(ids, float), np.asarray(ood, float)
    s = np.concatenate([ids, ood])
    y_id = np.r_[np.ones(ids.size), np.zeros(ood.size)]
    fpr, tpr, _ = roc_curve(y_id, s, drop_intermediate=False)
    fpr_o, tpr_o, _ = roc_curve(1 - y_id, -s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y_id, s),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "fpr95_ood_positive": fpr_o[np.argmax(tpr_o >= 0.95)],
        "aupr_in": average_precision_score(y_id, s),
        "aupr_out": average_precision_score(1 - y_id, -s),
    }


def assert_matches_sklearn(ids, ood):
    got = ood_metrics(ids, ood)
    want = sklearn_reference(ids, ood)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["n_id"] == len(ids) and got["n_ood"] == len(ood)


SIZES = [1, 2, 7, 19, 20, 21, 40, 101, 1000]


@pytest.mark.parametrize("n_id", SIZES)
@pytest.mark.parametrize("n_ood", [1, 3, 19, 101, 500])
def test_random_continuous_scores(n_id, n_ood):
    rng = np.random.default_rng(1000 * n_id + n_ood)
    assert_matches_sklearn(rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood))


@pytest.mark.parametrize("n_id", SIZES)
@pytest.mark.parametrize("levels", [2, 3, 5])
def test_tie_heavy_integer_scores(n_id, levels):
    rng = np.random.default_rng(n_id * 7 + levels)
    ids = rng.integers(0, levels, n_id).astype(float)
    ood = rng.integers(0, levels, 37).astype(float)
    assert_matches_sklearn(ids, ood)


def test_ties_across_many_seeds():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n_id, n_ood = rng.integers(1, 60, 2)
        assert_matches_sklearn(rng.integers(0, 4, n_id), rng.integers(-1, 3, n_ood))


@pytest.mark.parametrize("n_id,n_ood", [(1, 1), (7, 3), (21, 21), (100, 5)])
def test_all_tied(n_id, n_ood):
    ids, ood = np.full(n_id, 0.3), np.full(n_ood, 0.3)
    assert_matches_sklearn(ids, ood)
    got = ood_metrics(ids, ood)
    # By hand: every pair is a tie; one threshold keeps everything.
    assert got["auroc"] == 0.5
    assert got["fpr95"] == 1.0 and got["fpr95_ood_positive"] == 1.0
    assert got["aupr_in"] == pytest.approx(n_id / (n_id + n_ood))
    assert got["aupr_out"] == pytest.approx(n_ood / (n_id + n_ood))


@pytest.mark.parametrize("n_id,n_ood", [(1, 1), (19, 7), (21, 50), (1000, 3)])
def test_perfectly_separated_and_reversed(n_id, n_ood):
    rng = np.random.default_rng(n_id)
    ids, ood = rng.uniform(2, 3, n_id), rng.uniform(0, 1, n_ood)
    assert_matches_sklearn(ids, ood)
    good = ood_metrics(ids, ood)
    assert good["auroc"] == 1.0 and good["fpr95"] == 0.0 and good["fpr95_ood_positive"] == 0.0
    assert good["aupr_in"] == 1.0 and good["aupr_out"] == 1.0

    assert_matches_sklearn(ood, ids)  # swapped: ID now scores lower than OOD
    bad = ood_metrics(ood, ids)
    assert bad["auroc"] == 0.0 and bad["fpr95"] == 1.0 and bad["fpr95_ood_positive"] == 1.0


def test_hand_computed_small_case():
    # id=[1,2,3,4], ood=[0,2.5]. Pairs (id, ood): 1 beats 0, loses to 2.5; 2 likewise;
    # 3 and 4 beat both -> 6 wins of 8 pairs.
    got = ood_metrics([1, 2, 3, 4], [0, 2.5])
    assert got["auroc"] == pytest.approx(6 / 8)
    # fpr95: ceil(0.95*4)=4 -> threshold = 4th largest ID = 1; OOD >= 1 is {2.5} -> 1/2.
    assert got["fpr95"] == pytest.approx(0.5)
    # OOD positive: ceil(0.95*2)=2 -> threshold = 2nd smallest OOD = 2.5; ID <= 2.5 is {1,2}.
    assert got["fpr95_ood_positive"] == pytest.approx(0.5)
    # aupr_in, ranking 4 I, 3 I, 2.5 O, 2 I, 1 I, 0 O; recall steps of 1/4 at
    # precisions 1, 1, 3/4, 4/5 -> (1 + 1 + 0.75 + 0.8) / 4.
    assert got["aupr_in"] == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    # aupr_out, negated ranking 0 O, -1 I, -2 I, -2.5 O; recall steps of 1/2 at precisions 1, 2/4.
    assert got["aupr_out"] == pytest.approx((1 + 0.5) / 2)
    assert got["n_id"] == 4 and got["n_ood"] == 2


def test_hand_computed_ties():
    # id=[1,1,2], ood=[1,0]: each ID 1 ties ood 1 (1/2) and beats 0 (1); ID 2 beats both.
    # U = 1.5 + 1.5 + 2 = 5 of 6 pairs.
    got = ood_metrics([1, 1, 2], [1, 0])
    assert got["auroc"] == pytest.approx(5 / 6)
    # ceil(0.95*3)=3 -> threshold 1 (3rd largest ID); OOD >= 1 is {1} -> 1/2.
    assert got["fpr95"] == pytest.approx(0.5)
    # aupr_in: threshold 2 -> P=1, R=1/3; threshold 1 (tie group of 3: 2 ID, 1 OOD) -> P=3/4, R=1.
    assert got["aupr_in"] == pytest.approx(1 / 3 + (2 / 3) * (3 / 4))


def test_fpr95_boundary_n_id_20():
    # n_id=20: exactly 19 of 20 IDs = 95 % must be enough (no float rounding up to 20).
    ids = np.arange(1, 21, dtype=float)  # 19th largest is 2
    ood = np.array([1.5, 2.0, 0.0, 10.0])  # >= 2: 2.0 and 10.0
    assert ood_metrics(ids, ood)["fpr95"] == pytest.approx(2 / 4)
    assert_matches_sklearn(ids, ood)


def test_accepts_lists_arrays_and_torch():
    torch = pytest.importorskip("torch")
    ids, ood = [0.9, 0.8, 0.4], [0.1, 0.5]
    want = ood_metrics(np.array(ids), np.array(ood))
    assert ood_metrics(ids, ood) == want
    assert ood_metrics(torch.tensor(ids, requires_grad=True), torch.tensor(ood)) == want


def test_nan_and_inf_are_rejected_with_counts():
    with pytest.raises(UsageError, match=r"2 of 3 OOD scores are not finite"):
        ood_metrics([1.0, 2.0], [np.nan, 0.5, np.inf])
    with pytest.raises(UsageError, match=r"1 of 2 ID scores"):
        ood_metrics([1.0, -np.inf], [0.5])


def test_empty_is_rejected():
    with pytest.raises(UsageError, match="ID scores are empty") as info:
        ood_metrics([], [1.0])
    assert info.value.hint
    with pytest.raises(UsageError, match="OOD scores are empty"):
        ood_metrics([1.0], np.array([]))


def test_non_1d_and_non_numeric_rejected():
    with pytest.raises(UsageError, match="1-D"):
        ood_metrics([[1.0, 2.0]], [1.0])
    with pytest.raises(UsageError, match="not numeric"):
        ood_metrics(["a"], [1.0])


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(3 / 4)
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])  # argmax 1, 0, 1
    assert accuracy(logits, [1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(UsageError, match="3 predictions but 2 labels"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(UsageError, match="empty"):
        accuracy([], [])


def test_average_metrics():
    per_set = {
        "a": {"auroc": 0.9, "fpr95": 0.2, "n_id": 100.0, "n_ood": 50.0},
        "b": {"auroc": 0.7, "fpr95": 0.6, "n_id": 100.0, "n_ood": 30.0},
    }
    avg = average_metrics(per_set)
    assert avg["auroc"] == pytest.approx(0.8)
    assert avg["fpr95"] == pytest.approx(0.4)
    assert avg["n_ood"] == 80.0 and avg["n_id"] == 100.0
    per_set["b"]["n_id"] = 90.0
    assert "n_id" not in average_metrics(per_set)
    with pytest.raises(UsageError):
        average_metrics({})


# --------------------------------------------------------------------------- score files


@pytest.mark.parametrize(
    "name,text",
    [
        ("s.csv", "path,score,label\na.jpg,0.5,1\nb.jpg,-1.25,0\n\nc.jpg,3,2\n"),
        ("s.tsv", "path\tscore\na.jpg\t0.5\nb.jpg\t-1.25\nc.jpg\t3\n"),
        ("s.jsonl", '{"path": "a.jpg", "score": 0.5}\n{"score": -1.25}\n\n{"score": "3"}\n'),
        ("s.json", '{"score": 0.5}\n{"score": -1.25}\n{"score": 3}\n'),
        ("s.txt", "path\tscore\na\t0.5\nb\t-1.25\nc\t3\n"),  # sniffed: tab -> tsv
        ("s.scores", '{"score": 0.5}\n{"score": -1.25}\n{"score": 3}\n'),  # sniffed: jsonl
        ("noext", "score,path\n0.5,a\n-1.25,b\n3,c\n"),  # sniffed: csv
        ("bom.csv", "\ufeffscore\n0.5\n-1.25\n3\n"),
    ],
)
def test_read_score_file_formats(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    scores = read_score_file(path)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [0.5, -1.25, 3.0])


def test_read_score_file_missing_column(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("path,Score,logit\na,1,2\n")
    with pytest.raises(UsageError) as info:
        read_score_file(path)
    assert "s.csv" in info.value.message
    assert "path, Score, logit" in info.value.message
    assert info.value.hint == "the file needs a header with a `score` column, one row per image"

    jl = tmp_path / "s.jsonl"
    jl.write_text(json.dumps({"path": "a", "logit": 1}) + "\n")
    with pytest.raises(UsageError, match="path, logit"):
        read_score_file(jl)


@pytest.mark.parametrize(
    "name,text,line",
    [
        ("s.csv", "path,score\na,0.1\nb,oops\n", 3),
        ("s.csv", "path,score\na,0.1\nb,0.2\nc,\n", 4),
        ("s.csv", "path,score\na\n", 2),  # short row: empty cell
        ("s.tsv", "path\tscore\na\tnan\n", 2),
        ("s.jsonl", '{"score": 1}\n{"score": null}\n', 2),
        ("s.jsonl", '{"score": 1}\n\n{"score": "x"}\n', 3),
    ],
)
def test_read_score_file_bad_cells_name_the_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=rf"line {line}\b"):
        read_score_file(path)


def test_read_score_file_other_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_score_file(tmp_path / "nope.csv")
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(UsageError, match="empty"):
        read_score_file(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("path,score\n")
    with pytest.raises(UsageError, match="no score rows"):
        read_score_file(header_only)
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"score": 1}\n{"score": \n')
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        read_score_file(broken)


# --------------------------------------------------------------------------- plots


def test_roc_curve_points_match_sklearn():
    rng = np.random.default_rng(3)
    ids, ood = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 25).astype(float)
    fpr, tpr = roc_curve_points(ids, ood)
    y = np.r_[np.ones(40), np.zeros(25)]
    want_fpr, want_tpr, _ = roc_curve(y, np.r_[ids, ood], drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)


def test_plot_roc_writes_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    ids = rng.normal(1, 1, 200)
    curves = {"near": (ids, rng.normal(0.5, 1, 150)), "far": (ids, rng.normal(-2, 1, 80))}
    out = plot_roc(curves, tmp_path / "sub" / "roc.png")
    assert out.stat().st_size > 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size[0] > img.size[1] > 100


def test_plot_roc_rejects_bad_input(tmp_path):
    with pytest.raises(UsageError):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(UsageError, match="not finite"):
        plot_roc({"a": ([1.0], [np.nan])}, tmp_path / "x.png")
