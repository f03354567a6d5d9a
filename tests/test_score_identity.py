"""Score identity and score files: what a file records about its scores is read, type-checked and compared; nothing else passes.

Unit tests over files written here (no model): the reader, the identity comparison, threshold files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error
from synood_cli.errors import DamagedArtifact, UsageError
from synood_cli.identity import check_identity, classes_entry, make

META = b"synood"


def ident(method="neglabel", **over) -> dict:
    base = dict(method=method, model="m", weights="w@1", checkpoint=None, classes=classes_entry(["cat", "dog", "fish"]), neg_ratio=0.15,
                percentile=0.95, pool={"name": "neglabel"}, negatives="abc", groups=10, seed=0, tau=0.01, temperature=None, preprocess="p",
                templates={"id": "the nice {}"}, adaptive=None)
    return make(**{**base, **over})


def write_parquet(path, columns: dict, meta: dict | None = None, raw_meta: bytes | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if meta is not None or raw_meta is not None:
        table = table.replace_schema_metadata({META: raw_meta if raw_meta is not None else json.dumps(meta).encode()})
    pq.write_table(table, path)
    return path


# --------------------------------------------------------------------------- the comparison


def test_every_difference_is_named_and_a_missing_key_is_a_refusal():
    a = ident()
    check_identity(a, dict(a), "calibration x", "here")  # the same: passes
    with pytest.raises(UsageError) as e:
        check_identity(a, ident(groups=100, classes=classes_entry(["a", "b"])), "calibration x", "here")
    msg = e.value.message
    assert "groups: 10 there, 100 here" in msg and "classes: 3 classes (cat, dog, fish) there, 2 classes (a, b) here" in msg
    assert "None" not in msg
    for key in ("negatives", "weights", "classes", "templates", "version"):
        partial = {k: v for k, v in a.items() if k != key}
        with pytest.raises(UsageError, match=f"{key}: missing there"):
            check_identity(partial, a, "calibration x", "here")
    for nothing in (None, {}, [], "x"):
        with pytest.raises(UsageError, match="records no scoring identity"):
            check_identity(nothing, a, "calibration x", "here")


def test_a_long_class_list_is_a_hash_and_count_and_long_values_are_shortened():
    long = [f"class number {i}" for i in range(1000)]
    e = classes_entry(long)
    assert e["count"] == 1000 and "names" not in e and len(e["sha256"]) == 16
    assert classes_entry(long[:999])["sha256"] != e["sha256"]
    with pytest.raises(UsageError) as err:
        check_identity(ident(model="x" * 5000), ident(), "f", "here")
    assert len(err.value.message) < 400


# --------------------------------------------------------------------------- the reader


def test_parquet_methods_stay_aligned_with_their_scores(tmp_path):
    from synood_cli.metrics import read_scores

    # three methods interleaved, each with its own score range: a shifted method column mixes them
    methods = ["a", "b", "c"] * 4
    scores = [10 * "abc".index(m) + i for i, m in enumerate(methods)]
    f = read_scores(write_parquet(tmp_path / "s.parquet", {"path": [f"p{i}" for i in range(12)], "method": methods, "score": [float(s) for s in scores]}))
    for m in "abc":
        np.testing.assert_array_equal(f.scores[m], [s for s, mm in zip(scores, methods) if mm == m])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_a_non_finite_score_cell_is_refused_with_file_and_line(tmp_path, fmt, bad):
    from synood_cli.metrics import read_scores

    values = [0.5, float(bad), 0.25]
    p = tmp_path / f"s.{fmt}"
    if fmt == "parquet":
        write_parquet(p, {"score": values})
    elif fmt == "jsonl":
        p.write_text("".join(json.dumps({"score": v}) + "\n" for v in values))  # json writes Infinity / NaN
    else:
        sep = "," if fmt == "csv" else "\t"
        p.write_text(f"path{sep}score\n" + "".join(f"p{i}{sep}{v}\n" for i, v in enumerate(values)))
    with pytest.raises(UsageError) as e:
        read_scores(p)
    line = 2 if fmt in ("parquet", "jsonl") else 3  # the second row; CSV counts its header line
    assert f"{p}: line {line}:" in e.value.message and "not a finite number" in e.value.message


def test_two_score_columns_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synood_cli.metrics import read_scores

    (tmp_path / "d.csv").write_text("path,score,score\na,1,9\nb,2,8\n")
    with pytest.raises(UsageError, match="2 columns are named `score`"):
        read_scores(tmp_path / "d.csv")
    pq.write_table(pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["score", "score"]), tmp_path / "d.parquet")
    with pytest.raises(UsageError, match="columns are named `score`"):
        read_scores(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text('{"score": 1, "score": 2}\n')
    with pytest.raises(UsageError, match="appears twice"):
        read_scores(tmp_path / "d.jsonl")


def test_rows_of_several_methods_never_silently_become_one(tmp_path):
    from synood_cli.metrics import read_scores

    # some rows name a method, one does not: not silently grouped as unnamed scores
    (tmp_path / "mixed.csv").write_text("path,method,score\na,m1,1\nb,,2\nc,m2,3\n")
    with pytest.raises(UsageError, match="row 2 names no method"):
        read_scores(tmp_path / "mixed.csv")
    # metadata naming one method over rows of three
    p = write_parquet(tmp_path / "m.parquet", {"method": ["m1", "m2", "m3"], "score": [1.0, 2.0, 3.0]}, {"method": "m1"})
    with pytest.raises(UsageError, match="records method m1, but its rows are of m1, m2, m3"):
        read_scores(p)


@pytest.mark.parametrize(
    "raw,fragment",
    [
        (b"[1, 2]", "JSON list, not an object"),
        (b"{broken", "not JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (json.dumps({"method": ["a", "b"]}).encode(), "recorded method is"),
        (json.dumps({"model": {"x": 1}}).encode(), "recorded model is"),
        (json.dumps({"method": "neglabel", "identities": [1]}).encode(), "`identities` is not an object"),
        (json.dumps({"method": "neglabel", "identities": {"neglabel": "x"}}).encode(), "not an object"),
        (json.dumps({"method": "neglabel", "identities": {"mcm": {"method": "mcm"}}}).encode(), "no identity for its neglabel scores"),
    ],
)
def test_hostile_parquet_metadata_is_one_line_exit_2(invoke, tmp_path, raw, fragment):
    p = write_parquet(tmp_path / "h.parquet", {"score": [1.0, 2.0]}, raw_meta=raw)
    r = invoke("evaluate", "--id-scores", str(p), "--ood-scores", str(p))
    assert_clean_error(r, 2, fragment)
    assert len(r.stderr.splitlines()) <= 2  # error + hint


def test_csv_identity_sidecar_is_used_and_ignored_once_the_file_changed(tmp_path):
    from synood_cli.cli.output import RowWriter
    from synood_cli.metrics import read_scores

    out = tmp_path / "s.csv"
    w = RowWriter("csv", str(out), ["path", "score"], {"method": "neglabel", "model": "m", "checkpoint": None, "identities": {"neglabel": ident()}})
    w.write([{"path": "a", "score": 0.5}, {"path": "b", "score": 0.25}])
    w.close()
    assert out.read_text().splitlines() == ["path,score", "a,0.5", "b,0.25"]  # plain CSV: readers see no identity column
    f = read_scores(out)
    assert f.identities == {"neglabel": ident()} and list(f.scores) == ["neglabel"] and f.note is None
    out.write_text(out.read_text() + "c,0.75\n")  # edited after the fact
    f = read_scores(out)
    assert f.identities is None and "describes another version" in f.note


# --------------------------------------------------------------------------- threshold files


def _threshold_file(tmp_path, **rec):
    p = tmp_path / "threshold.json"
    p.write_text(json.dumps({"method": "synood", "tpr": 0.95, "threshold": 0.5, "n_id": 4, "split": "held-out", "identity": ident("synood"), **rec}))
    return p


@pytest.mark.parametrize(
    "rec,fragment",
    [
        ({"threshold": float("nan")}, "threshold is nan, not a finite number"),
        ({"threshold": float("inf")}, "threshold is inf, not a finite number"),
        ({"threshold": "0.5"}, "threshold is \"0.5\", not a number"),
        ({"threshold": [0.5]}, "not a number"),
        ({"method": ["synood"]}, "not a method name"),
        ({"tpr": None}, "tpr is null"),
        ({"identity": [1, 2]}, "not an object"),
    ],
)
def test_threshold_json_is_type_checked_damaged_is_exit_3(tmp_path, rec, fragment):
    from synood_cli.thresholds import from_checkpoint, from_file

    p = _threshold_file(tmp_path, **rec)
    with pytest.raises((DamagedArtifact, UsageError)) as e:
        from_checkpoint(tmp_path, "ck", "synood", 0.95)
    assert fragment in e.value.message and "checkpoint ck" in e.value.message
    if not fragment.startswith("not an object"):
        assert isinstance(e.value, DamagedArtifact)  # a store file: exit 3
    with pytest.raises(UsageError) as e:  # a file the user names: exit 2, naming it
        from_file(p, "synood")
    assert str(p) in e.value.message and e.value.exit_code == 2


def test_threshold_json_without_identity_is_refused(tmp_path):
    from synood_cli.thresholds import from_checkpoint

    p = _threshold_file(tmp_path)
    body = json.loads(p.read_text())
    del body["identity"]
    p.write_text(json.dumps(body))
    t = from_checkpoint(tmp_path, "ck", "synood", 0.95)
    with pytest.raises(UsageError, match="records no scoring identity"):
        t.check(ident("synood"))
    nested = tmp_path / "deep.json"
    nested.write_text("[" * 100000 + "]" * 100000)
    from synood_cli.thresholds import from_file

    with pytest.raises(UsageError, match="nested too deeply"):
        from_file(nested, "synood")


# --------------------------------------------------------------------------- sets given the wrong way round


def test_overlapping_id_and_ood_sets_are_warned_before_any_model_loads(invoke, tmp_path):
    from conftest import write_flat, write_tree

    data = tmp_path / "data"
    write_tree(data / "train", {"cat": 2, "dog": 2}, corrupt=False, junk=False)
    write_flat(data / "ood", 2)
    # --id data (the parent folder): `train` and `ood` become ID classes, and the OOD images are ID images too
    r = invoke("evaluate", "--id", str(data), "--ood", str(data / "ood"), "--profile", "tiny", "--batch-size", "0")
    assert r.returncode == 2  # stopped by --batch-size 0 after the sets were opened: no model was loaded
    assert f"ID class folder {data / 'train'} holds 2 subfolders (cat, dog): did you mean --id {data / 'train'}?" in r.stderr
    assert f"2 of the 2 images of OOD set ood are also in the ID set (first: {data / 'ood' / 'ood0.png'})" in r.stderr
    r = invoke("evaluate", "--id", str(data / "train"), "--ood", str(data / "ood"), "--profile", "tiny", "--batch-size", "0")
    assert "did you mean" not in r.stderr and "also in the ID set" not in r.stderr
