"""Pictures where people look: --plot honours the extension, marks FPR95, has a title; demo/run write roc.png; labelled preview."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import assert_clean_error
from synood_cli.errors import UsageError
from synood_cli.metrics import plot_roc

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


@pytest.mark.parametrize("ext", ["png", "pdf", "svg"])
def test_plot_writes_the_format_its_extension_names(tmp_path, ext):
    rng = np.random.default_rng(0)
    out = plot_roc({"far": (rng.normal(1, 1, 40), rng.normal(0, 1, 30))}, tmp_path / f"roc.{ext}", title="neglabel · tiny")
    assert out.read_bytes()[:5].startswith(MAGIC[ext])


def test_plot_marks_fpr95_and_carries_the_title(tmp_path):
    ids = np.arange(1.0, 21.0)  # 95% of ID kept at >= 2.0
    ood = np.array([0.5, 1.5, 2.5, 3.0, 30.0])  # 3 of 5 at or above 2.0: FPR95 60%
    svg = plot_roc({"far": (ids, ood)}, tmp_path / "roc.svg", title="neglabel · ViT-B-16 / openai · checkpoint ck").read_text()
    assert "neglabel · ViT-B-16 / openai · checkpoint ck" in svg
    assert "far FPR95 60.0%" in svg  # the operating point, in the legend next to its marker


def test_plot_refuses_an_unknown_extension(tmp_path):
    with pytest.raises(UsageError, match="unknown figure format 'jpg'") as info:
        plot_roc({"far": ([1.0, 2.0], [0.0])}, tmp_path / "roc.jpg")
    assert ".png, .pdf or .svg" in info.value.hint


def test_evaluate_refuses_a_bad_plot_extension_before_any_work(invoke, tmp_path):
    (tmp_path / "id.csv").write_text("score\n1\n2\n")
    (tmp_path / "o.csv").write_text("score\n0\n")
    assert_clean_error(invoke("evaluate", "--id-scores", str(tmp_path / "id.csv"), "--ood-scores", str(tmp_path / "o.csv"), "--plot", str(tmp_path / "r.gif")), 2, "r.gif")
    r = invoke("evaluate", "--id-scores", str(tmp_path / "id.csv"), "--ood-scores", str(tmp_path / "o.csv"), "--plot", str(tmp_path / "r.pdf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.pdf").read_bytes()[:4] == b"%PDF"


def test_preview_label_names_class_and_final_score():
    from synood_cli.synthesis import preview_label

    assert preview_label({"class_name": "cat", "guidance": "energy", "final_score": 1.234567}) == "cat · energy 1.235"
