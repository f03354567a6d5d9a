"""The real `synood` CLI in subprocesses: outputs, exit codes, streams and store contents."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import assert_clean_error, rows_of, write_flat

TINY = ["--profile", "tiny"]


def test_app_import_does_not_pull_torch():
    code = "import sys, synood_cli.cli.app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


@pytest.mark.parametrize("command", [["score", "MISSING"], ["evaluate", "--id", "MISSING", "--ood", "MISSING"],
                                     ["evaluate", "--benchmark", "imagenet-mos", "--data-root", "MISSING"]])
def test_a_wrong_input_path_is_refused_before_torch_is_imported(tmp_path, command):
    """Inputs are checked first: a typo costs a fraction of a second, not the seconds torch and open_clip take."""
    missing = str(tmp_path / "no-such-folder")
    args = [missing if a == "MISSING" else a for a in command] + ["--profile", "tiny"]
    code = (
        "import sys\n"
        "from synood_cli.cli.app import main\n"
        f"sys.argv = ['synood'] + {args!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "no-such-folder" in r.stderr and "error:" in r.stderr, r.stderr
    assert r.stderr.strip().endswith("exit 2 False"), r.stderr


@pytest.mark.slow
def test_tiny_demo_end_to_end(cli, invoke, synood_home):
    # its wall time is a benchmark's business, not a verdict here (benchmarks/README.md)
    r = cli("demo", "--profile", "tiny")
    assert r.returncode == 0, r.stderr
    assert "stripes" in r.stdout and "noise" in r.stdout and "Average" in r.stdout
    assert "random weights" in r.stderr and "say nothing about the method" in r.stderr  # an honest note
    assert f"store: {synood_home}" in r.stderr
    # the pictures: where they are, and that they are what they claim
    roc = synood_home / "reports" / "demo-tiny" / "roc.png"
    assert f"plots: {roc}" in r.stderr and roc.read_bytes()[:4] == b"\x89PNG"
    assert "synthesis preview:" in r.stderr and "preview.png" in r.stderr
    # the final `try:` command is one copyable line, whatever the terminal width
    try_line = next(line for line in r.stderr.splitlines() if line.startswith("try: "))
    assert try_line.endswith("--compare neglabel,synood")
    assert "broken" in r.stderr and "1 unreadable" in r.stderr  # the planted corrupt file is reported
    assert "neglabel" in r.stdout and "synood" in r.stdout  # the comparison table
    before = invoke("store", "ls", "--json").stdout
    kinds = {json.loads(line)["kind"] for line in before.splitlines()}
    assert {"dataset", "weights", "negatives", "text-features", "prompts", "synth", "features", "checkpoint"} <= kinds
    # a second run (in-process: the imports are paid for) reuses every artifact instead of building new ones
    again = invoke("demo", "--profile", "tiny")
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout
    assert invoke("store", "ls", "--json").stdout == before


@pytest.mark.parametrize("fmt", ["csv"])  # jsonl and tsv run in-process in test_cli_commands.py
def test_score_streams_rows_and_reports_corrupt_files(cli, shared_home, image_tree, fmt):
    r = cli("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--format", fmt, home=shared_home)
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, fmt)
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in image_tree.good)
    assert list(rows[0]) == ["path", "score", "pred_class", "pred_name"]
    scores = [float(row["score"]) for row in rows]
    assert all(0.0 < s <= 1.0 for s in scores)  # NegLabel is a share of softmax mass
    assert all(row["pred_name"] in ("cat", "dog", "fish") for row in rows)
    assert "broken.jpg" in r.stderr and "notes.txt" in r.stderr
    assert "1 unreadable, 1 not images" in r.stderr
    assert "broken.jpg" not in r.stdout


def test_score_broken_pipe_ends_quietly(shared_home, tmp_path):
    data = write_flat(tmp_path / "many", 40)
    cmd = (
        f"{sys.executable} -m synood_cli score {data.root} --profile tiny --classnames {data.root}/../names.txt -b 4 "
        "| head -n 2; echo \"status=${PIPESTATUS[0]}\""
    )
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    env = {"SYNOOD_HOME": str(shared_home), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    lines = r.stdout.splitlines()
    assert lines[0] == "path,score,pred_class,pred_name" and len(lines) == 3
    assert lines[-1] == "status=0"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_evaluate_folders_json_plot_and_saved_scores(cli, shared_home, image_tree, ood_folder, tmp_path):
    plot, saved = tmp_path / "roc.png", tmp_path / "scores"
    r = cli(
        "evaluate", "--id", str(image_tree.root), "--ood", str(ood_folder.root), "--ood", f"second={ood_folder.root}",
        *TINY, "--format", "json", "--plot", str(plot), "--save-scores", str(saved), home=shared_home,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result["ood"]) == {"ood", "second"}
    assert result["ood"]["ood"]["n_id"] == len(image_tree.good)
    assert result["ood"]["ood"]["n_ood"] == len(ood_folder.good)
    assert result["ood"]["ood"] == result["ood"]["second"]  # the same folder scores the same
    assert 0.0 <= result["id_accuracy"] <= 1.0
    assert result["id_images"] == len(image_tree.good)
    assert result["failed"] == 1 and result["skipped"] == 1
    for key in ("auroc", "fpr95", "fpr95_ood_positive", "aupr_in", "aupr_out"):
        assert 0.0 <= result["average"][key] <= 1.0
    assert plot.stat().st_size > 1000
    id_rows = list(csv.DictReader(open(saved / "id.csv")))
    ood_rows = list(csv.DictReader(open(saved / "ood.csv")))
    assert len(id_rows) == len(image_tree.good) and len(ood_rows) == len(ood_folder.good)
    # the metrics in the table are those of the saved per-image scores (checked with scikit-learn)
    s_id = np.array([float(x["score"]) for x in id_rows])
    s_ood = np.array([float(x["score"]) for x in ood_rows])
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    assert result["ood"]["ood"]["auroc"] == pytest.approx(roc_auc_score(y, np.r_[s_id, s_ood]), abs=1e-9)


def test_pretrained_not_cached_offline(cli, image_tree, tmp_path):
    r = cli("score", str(image_tree.root), "--model", "ViT-B-16", "--pretrained", "openai", "--classnames", str(image_tree.root),
            env={"HF_HOME": str(tmp_path / "hf")})
    assert_clean_error(r, 3, "not in the local cache", str(tmp_path / "hf" / "hub"))
    assert "hint:" in r.stderr


