"""Score files round-trip: evaluate reads every format score writes (Parquet too, and stdin), score reads paths from stdin."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_clean_error, rows_of, write_flat, write_tree
from synood_cli.errors import UsageError
from synood_cli.metrics import read_score_file, read_scores

TINY = ["--profile", "tiny"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """An ID tree and an OOD folder; score's files of both in every format; evaluate's own JSON on the folders."""
    from test_finetune_cli import cli_in_process

    root = tmp_path_factory.mktemp("scorefiles")
    home = root / "home"
    tree = write_tree(root / "id", {"cat": 5, "dog": 5}, corrupt=False, junk=False)
    ood = write_flat(root / "ood", 6)
    common = [*TINY, "--method", "neglabel", "--classnames", str(tree.root)]
    files = {}
    for name, folder in (("id", tree.root), ("ood", ood.root)):
        for ext in ("csv", "tsv", "jsonl", "parquet"):
            out = root / f"{name}.{ext}"
            r = cli_in_process(home, "score", str(folder), *common, "-o", str(out))
            assert r.returncode == 0, r.stderr
            files[name, ext] = out
    r = cli_in_process(home, "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--method", "neglabel", "--format", "json")
    assert r.returncode == 0, r.stderr
    return {"home": home, "root": root, "tree": tree, "ood": ood, "files": files, "direct": json.loads(r.stdout)}


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet"])
def test_evaluate_reads_every_format_score_writes(invoke, scored, ext):
    f = scored["files"]
    r = invoke("evaluate", "--id-scores", str(f["id", ext]), "--ood-scores", str(f["ood", ext]), "--format", "json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = scored["direct"]["ood"]["ood"]
    for key in ("auroc", "fpr95", "aupr_in", "aupr_out", "fpr95_ood_positive"):
        assert got["ood"]["ood"][key] == pytest.approx(want[key], abs=1e-12), key
    assert got["thresholds"]["0.95"] == pytest.approx(scored["direct"]["thresholds"]["0.95"], abs=1e-12)
    # every format says how its scores were made (CSV and TSV in their sidecar): the same identity evaluate records
    assert got["method"] == "neglabel" and got["model"] == scored["direct"]["model"]
    assert got["identities"] == scored["direct"]["identities"]


def test_score_files_record_method_model_checkpoint(scored):
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_table(scored["files"]["id", "parquet"]).schema.metadata[b"synood"])
    assert meta["method"] == "neglabel" and meta["model"] == scored["direct"]["model"] and meta["checkpoint"] is None
    assert meta["identities"]["neglabel"]["groups"] == 10
    with open(scored["files"]["id", "csv"]) as fh:
        assert next(csv.reader(fh)) == ["path", "score", "pred_class", "pred_name"]  # plain, no placeholder method column


def test_evaluate_csv_from_plain_score_files_has_no_placeholder_method(invoke, scored, tmp_path):
    f = scored["files"]
    plain = {}
    for name in ("id", "ood"):  # another tool's CSVs: the same cells, no identity sidecar
        plain[name] = tmp_path / f"{name}.csv"
        plain[name].write_bytes(f[name, "csv"].read_bytes())
    r = invoke("evaluate", "--id-scores", str(plain["id"]), "--ood-scores", str(plain["ood"]), "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert "method" not in rows[0] and "scores" not in r.stdout
    assert "records no scoring identity" in r.stderr and "nothing could be checked" in r.stderr
    r = invoke("evaluate", "--id-scores", str(f["id", "parquet"]), "--ood-scores", str(f["ood", "parquet"]), "--format", "csv")
    assert [row["method"] for row in csv.DictReader(io.StringIO(r.stdout))] == ["neglabel", "neglabel"]


def _run(args, stdin: bytes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNOOD_")}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "synood_cli", *args], input=stdin, capture_output=True, env=env, timeout=300)


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_evaluate_reads_a_score_file_from_stdin(scored, ext):
    f = scored["files"]
    p = _run(["evaluate", "--id-scores", "-", "--ood-scores", f"far={f['ood', ext]}", "--format", "json"], f["id", ext].read_bytes())
    assert p.returncode == 0, p.stderr.decode()
    got = json.loads(p.stdout)
    assert got["ood"]["far"]["auroc"] == pytest.approx(scored["direct"]["ood"]["ood"]["auroc"], abs=1e-12)


def test_only_one_score_file_from_stdin(invoke):
    assert_clean_error(invoke("evaluate", "--id-scores", "-", "--ood-scores", "-"), 2, "only one score file")


def test_score_reads_paths_from_stdin(cli, scored, shared_home):
    tree = scored["tree"]
    listed = [str(p) for p in tree.good] + [str(scored["root"] / "gone.png")]
    r = cli("score", "-", *TINY, "--classnames", str(tree.root), "--format", "jsonl", home=shared_home, input="\n".join(listed) + "\n")
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, "jsonl")
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in tree.good)
    assert "gone.png" in r.stderr and "1 listed but missing" in r.stderr  # reported, counted, skipped
    r = cli("score", "-", *TINY, home=shared_home, input="\n")
    assert r.returncode == 2 and "no image paths on stdin" in r.stderr


def test_a_plain_path_list_is_an_input_list(invoke, scored, shared_home, tmp_path):
    tree = scored["tree"]
    lst = tmp_path / "paths.txt"
    lst.write_text("".join(f"{p}\n" for p in tree.good))
    r = invoke("score", str(lst), *TINY, "--classnames", str(tree.root), home=shared_home)
    assert r.returncode == 0, r.stderr
    assert len(rows_of(r.stdout, "csv")) == len(tree.good)


def test_compare_saved_scores_round_trip_per_method(invoke, scored, shared_home, tmp_path):
    """--compare --save-scores writes one plain CSV per set with a method column; evaluate reads each method back."""
    tree, ood = scored["tree"], scored["ood"]
    out = tmp_path / "saved"
    r = invoke("evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--compare", "neglabel,mcm", "--save-scores", str(out), "--format", "json", home=shared_home)
    assert r.returncode == 0, r.stderr
    direct = json.loads(r.stdout)["methods"]
    with open(out / "id.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "method", "score", "pred_class", "pred_name"]
    assert {row["method"] for row in rows} == {"neglabel", "mcm"}
    r = invoke("evaluate", "--id-scores", str(out / "id.csv"), "--ood-scores", str(out / "ood.csv"), "--format", "json")
    assert r.returncode == 0, r.stderr
    back = json.loads(r.stdout)["methods"]
    for m in ("neglabel", "mcm"):
        assert back[m]["ood"]["ood"]["auroc"] == pytest.approx(direct[m]["ood"]["ood"]["auroc"], abs=1e-12)
    r = invoke("evaluate", "--id-scores", str(out / "id.csv"), "--ood-scores", str(out / "ood.csv"), "--method", "mcm", "--format", "json")
    assert json.loads(r.stdout)["method"] == "mcm"
    # the saved CSVs carry their identity (a sidecar), so a result made from them can calibrate
    assert json.loads(r.stdout)["identities"] == {"mcm": json.loads((out / "id.csv.identity.json").read_text())["identities"]["mcm"]}
    assert json.loads(r.stdout)["identities"]["mcm"]["method"] == "mcm"


def test_csv_mixes_with_parquet_and_its_result_calibrates_score(invoke, scored, tmp_path):
    f, tree = scored["files"], scored["tree"]
    r = invoke("evaluate", "--id-scores", str(f["id", "tsv"]), "--ood-scores", str(f["ood", "parquet"]), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "None" not in r.stderr and "warning" not in r.stderr
    result = tmp_path / "result.json"
    result.write_text(r.stdout)
    r = invoke("score", str(tree.root), *TINY, "--classnames", str(tree.root), "--threshold", "fpr95", "--calibration", str(result),
               "--format", "jsonl", home=scored["home"])
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, "jsonl")
    t = json.loads(result.read_text())["thresholds"]["0.95"]
    assert all(row["is_ood"] == (row["score"] < t) for row in rows) and sum(not row["is_ood"] for row in rows) >= 0.95 * len(rows)
    assert rows[0]["identities"]["neglabel"]["groups"] == 10 and "identities" not in rows[1]  # JSON Lines: on the first row


def test_score_files_made_another_way_are_refused_naming_the_difference(invoke, scored, tmp_path):
    f, ood = scored["files"], scored["ood"]
    other = tmp_path / "ood_g5.parquet"
    r = invoke("score", str(ood.root), *TINY, "--method", "neglabel", "--classnames", str(scored["tree"].root), "--groups", "5", "-o", str(other),
               home=scored["home"])
    assert r.returncode == 0, r.stderr
    r = invoke("evaluate", "--id-scores", str(f["id", "csv"]), "--ood-scores", str(other))
    assert_clean_error(r, 2, "groups: 5 there, 10 in", "not comparable")
    # another tool's file (a bare `score` column) is accepted, with a warning that nothing could be checked
    bare = tmp_path / "bare.csv"
    bare.write_text("score\n0.1\n0.2\n")
    r = invoke("evaluate", "--id-scores", str(f["id", "parquet"]), "--ood-scores", str(bare))
    assert r.returncode == 0, r.stderr
    assert f"{bare} records no scoring identity" in r.stderr and "nothing could be checked" in r.stderr


def test_score_files_of_different_models_are_refused(invoke, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"score": 1, "model": "ViT-B-16 / openai"}\n{"score": 2, "model": "ViT-B-16 / openai"}\n')
    (tmp_path / "b.jsonl").write_text('{"score": 0, "model": "ViT-L-14 / openai"}\n')
    r = invoke("evaluate", "--id-scores", str(tmp_path / "a.jsonl"), "--ood-scores", str(tmp_path / "b.jsonl"))
    assert_clean_error(r, 2, "different models", "not comparable")


def test_read_scores_units(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"path": ["a", "b", "c"], "score": [0.5, -1.0, 2.0]}).replace_schema_metadata({b"synood": b'{"method": "mcm", "model": "m"}'})
    pq.write_table(t, tmp_path / "s.bin")  # the magic bytes decide, not the extension
    f = read_scores(tmp_path / "s.bin")
    assert list(f.scores) == ["mcm"] and f.meta["model"] == "m"
    np.testing.assert_array_equal(f.scores["mcm"], [0.5, -1.0, 2.0])
    (tmp_path / "m.csv").write_text("path,method,score\na,x,1\na,y,2\nb,x,3\nb,y,4\n")
    f = read_scores(tmp_path / "m.csv")
    np.testing.assert_array_equal(f.scores["x"], [1, 3])
    np.testing.assert_array_equal(f.scores["y"], [2, 4])
    with pytest.raises(UsageError, match="several methods"):
        read_score_file(tmp_path / "m.csv")
    pq.write_table(pa.table({"score": [1.0, None]}), tmp_path / "n.parquet")
    with pytest.raises(UsageError, match="line 2"):
        read_scores(tmp_path / "n.parquet")


def test_tables_are_not_cut_without_a_terminal(tmp_path):
    """Piped, with no COLUMNS: the two-method table is wider than 80 columns and keeps every header whole."""
    (tmp_path / "id.csv").write_text("path,method,score\n" + "".join(f"i{i},{m},{i + (m == 'mcm')}\n" for i in range(10) for m in ("neglabel", "mcm")))
    (tmp_path / "far.csv").write_text("path,method,score\n" + "".join(f"o{i},{m},{i / 2}\n" for i in range(6) for m in ("neglabel", "mcm")))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES") and not k.startswith("SYNOOD_")}
    p = subprocess.run([sys.executable, "-m", "synood_cli", "evaluate", "--id-scores", str(tmp_path / "id.csv"), "--ood-scores", str(tmp_path / "far.csv")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    for header in ("FPR95↓", "AUROC↑", "AUPR-IN↑", "AUPR-OUT↑", "FPR95 OOD+↓", "images"):
        assert header in p.stdout, header
    assert "…" not in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) > 80
