"""CLI commands in-process through Typer's CliRunner: formats, store commands, every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import assert_clean_error, rows_of, write_tree

TINY = ["--profile", "tiny"]


def test_version_and_help(invoke):
    r = invoke("--version")
    assert r.returncode == 0 and r.stdout.startswith("synood ")
    r = invoke("--help")
    assert r.returncode == 0
    for command in ("score", "evaluate", "negatives", "demo", "store", "env"):
        assert command in r.stdout
    assert "Exit codes" in r.stdout
    for command in ("score", "evaluate", "negatives", "demo"):
        assert "Example" in invoke(command, "--help").stdout


def test_score_threshold_and_output_file(invoke, shared_home, image_tree, tmp_path):
    out = tmp_path / "s.jsonl"
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--threshold", "0.5", "-o", str(out), home=shared_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(image_tree.good)
    assert all(row["is_ood"] == (row["score"] < 0.5) for row in rows)


def test_score_same_results_for_any_batch_size(invoke, shared_home, image_tree):
    a = rows_of(invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "-b", "1", home=shared_home).stdout, "csv")
    b = rows_of(invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "-b", "64", home=shared_home).stdout, "csv")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    np.testing.assert_allclose([float(r["score"]) for r in a], [float(r["score"]) for r in b], rtol=1e-5, atol=1e-6)


def test_evaluate_table_layout(invoke, shared_home, image_tree, ood_folder):
    r = invoke("evaluate", "--id", str(image_tree.root), "--ood", f"far={ood_folder.root}", *TINY, "--method", "mcm", home=shared_home)
    assert r.returncode == 0, r.stderr
    for text in ("far", "Average", "FPR95", "AUROC", "AUPR-IN", "AUPR-OUT", "ID top-1 accuracy"):
        assert text in r.stdout


def test_evaluate_score_files_matches_sklearn(invoke, tmp_path):
    rng = np.random.default_rng(0)
    s_id = np.round(rng.normal(1.0, 1.0, 50), 1)  # rounded: many ties
    s_ood = np.round(rng.normal(0.0, 1.0, 40), 1)
    (tmp_path / "id.csv").write_text("path,score\n" + "".join(f"a{i}.png,{v}\n" for i, v in enumerate(s_id)))
    (tmp_path / "far.jsonl").write_text("".join(json.dumps({"score": float(v)}) + "\n" for v in s_ood))
    r = invoke("evaluate", "--id-scores", str(tmp_path / "id.csv"), "--ood-scores", str(tmp_path / "far.jsonl"), "--format", "json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["ood"]["far"]
    y = np.r_[np.ones(50), np.zeros(40)]
    s = np.r_[s_id, s_ood]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-9)
    k = int(np.ceil(0.95 * 50))
    assert m["fpr95"] == pytest.approx(np.mean(s_ood >= np.sort(s_id)[::-1][k - 1]), abs=1e-12)


def test_negatives_from_word_list(invoke, shared_home, tmp_path):
    words = [f"word{i}" for i in range(40)]
    (tmp_path / "lex.txt").write_text("".join(f"{w}\tnoun\n" for w in words) + "shiny\tadj\nmuddy\tadj\n" + "cat\tnoun\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    out = tmp_path / "neg.txt"
    r = invoke("negatives", "--classes", str(tmp_path / "classes.txt"), *TINY, "--lexicon", str(tmp_path / "lex.txt"),
            "--out", str(out), "--name", "my-neg", home=shared_home)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    # 40 nouns after dropping the ID name "cat": floor(0.15 * 40) = 6; 2 adjectives: floor(0.3) = 0
    assert len(lines) == 6 and all(line.endswith("\tnoun") for line in lines)
    assert "cat\tnoun" not in lines
    show = invoke("store", "show", "my-neg", "--format", "json", home=shared_home)
    assert json.loads(show.stdout)["summary"]["negatives"] == 6


def test_store_show_rm_gc(invoke, shared_home, tmp_path):
    from synood_cli.demo_data import ensure_demo_dataset
    from synood_cli.store import Store

    home = tmp_path / "own-home"
    ensure_demo_dataset(Store(home), per_class=2)
    show = invoke("store", "show", "demo-data", home=home)
    assert show.returncode == 0 and "dataset/" in show.stdout and "status=complete" in show.stdout
    (home / "artifacts" / "dataset" / ".tmp-deadbeefdeadbeef-x").mkdir()
    gc = invoke("store", "gc", home=home)
    assert gc.returncode == 0 and ".tmp-deadbeefdeadbeef-x" in gc.stdout
    rm = invoke("store", "rm", "demo-data", home=home)
    assert rm.returncode == 0
    missing = invoke("store", "show", "demo-data", home=home)
    assert missing.returncode == 2 and "no artifact named 'demo-data'" in missing.stderr


def test_env(invoke):
    r = invoke("env", "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["offline"] is True and "torch" in info


# -- errors: one line, a hint, the right exit code, no traceback ------------------------------


def test_missing_folder(invoke, tmp_path):
    assert_clean_error(invoke("score", str(tmp_path / "nope"), *TINY), 2, "not found")


def test_empty_folder(invoke, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(invoke("evaluate", "--id", str(tmp_path / "empty"), "--ood", str(tmp_path / "empty"), *TINY), 2, "no images")


def test_unknown_method_suggests(invoke, image_tree):
    assert_clean_error(invoke("score", str(image_tree.root), *TINY, "--method", "neglabl"), 2, "unknown score method", "did you mean")


def test_unknown_profile(invoke, image_tree):
    assert_clean_error(invoke("score", str(image_tree.root), "--profile", "tinny"), 2, "unknown profile", "tiny")


def test_classnames_length_mismatch(invoke, image_tree, ood_folder, tmp_path):
    (tmp_path / "names.txt").write_text("one\ntwo\n")
    r = invoke("evaluate", "--id", str(image_tree.root), "--ood", str(ood_folder.root), *TINY, "--classnames", str(tmp_path / "names.txt"))
    assert_clean_error(r, 2, "2", "3")


def test_unknown_model(invoke, image_tree):
    assert_clean_error(invoke("score", str(image_tree.root), "--model", "ViT-B-61", "--pretrained", "openai"), 2, "unknown CLIP model", "ViT-B-16")


def test_pickle_weights_refused(invoke, image_tree, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    r = invoke("score", str(image_tree.root), "--model", "ViT-B-16", "--pretrained", str(tmp_path / "model.pt"))
    assert_clean_error(r, 2, "safetensors")


def test_cuda_requested_without_cuda(invoke, image_tree):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_error(invoke("--device", "cuda", "score", str(image_tree.root), *TINY), 3, "CUDA")


def test_bad_device_and_precision(invoke, image_tree):
    assert_clean_error(invoke("--device", "tpu", "score", str(image_tree.root), *TINY), 2, "unknown device")
    assert_clean_error(invoke("--precision", "fp8", "score", str(image_tree.root), *TINY), 2, "unknown precision")


def test_flat_id_folder_needs_classnames(invoke, ood_folder, tmp_path):
    other = write_tree(tmp_path / "t", {"a": 2}, corrupt=False, junk=False)
    r = invoke("evaluate", "--id", str(ood_folder.root), "--ood", str(other.root), *TINY)
    assert_clean_error(r, 2, "flat", "--classnames")


def test_strict_turns_unreadable_files_into_exit_4(invoke, shared_home, image_tree):
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--strict", home=shared_home)
    assert r.returncode == 4
    assert len(rows_of(r.stdout, "csv")) == len(image_tree.good)  # the good rows were still written
    assert "2 input file(s) could not be read" in r.stderr


def test_score_parquet_output(invoke, shared_home, image_tree, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "scores.parquet"
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "-o", str(out), home=shared_home)
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out)
    assert table.column_names == ["path", "score", "pred_class", "pred_name"]
    assert table.num_rows == len(image_tree.good)
    assert invoke("score", str(image_tree.root), *TINY, "--format", "parquet").returncode == 2  # cannot stream to stdout


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_score_formats_in_process(invoke, shared_home, image_tree, fmt):
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--format", fmt, home=shared_home)
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, fmt)
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in image_tree.good)
    # JSON Lines rows also record how the scores were made (the first row its whole identity); CSV and TSV stay plain
    assert list(rows[0]) == ["path", "score", "pred_class", "pred_name"] + (["method", "model", "checkpoint", "identities"] if fmt == "jsonl" else [])
    assert list(rows[-1]) == ["path", "score", "pred_class", "pred_name"] + (["method", "model", "checkpoint"] if fmt == "jsonl" else [])
    assert all(0.0 < float(row["score"]) <= 1.0 for row in rows)
    assert "broken.jpg" in r.stderr and "broken.jpg" not in r.stdout
