"""`score -o`: the extension and --format agree or the run is refused; where rows went is said; a literal
threshold that flags every image is questioned."""

from __future__ import annotations

import pytest

from conftest import assert_clean_error, rows_of, seed_home
from synood_cli.cli.output import pick_format
from synood_cli.errors import UsageError


@pytest.mark.parametrize(
    "fmt,output,want",
    [
        (None, "-", "csv"),
        (None, "out.csv", "csv"),
        (None, "out.TSV", "tsv"),
        (None, "out.jsonl", "jsonl"),
        (None, "out.parquet", "parquet"),
        ("jsonl", "-", "jsonl"),
        ("tsv", "scores", "tsv"),  # no extension: --format says what
        (None, "scores", "csv"),
        ("csv", "out.txt", "csv"),  # an extension that names nothing, with --format: as asked
    ],
)
def test_pick_format(fmt, output, want):
    assert pick_format(fmt, output) == want


@pytest.mark.parametrize(
    "fmt,output,fragment",
    [
        (None, "out.xlsx", ".xlsx names no score format"),
        (None, "out.json", ".json names no score format"),  # JSON Lines is not one JSON document
        ("jsonl", "out.csv", "names csv, but --format says jsonl"),
        ("parquet", "out.tsv", "names tsv, but --format says parquet"),
    ],
)
def test_pick_format_refuses(fmt, output, fragment):
    with pytest.raises(UsageError) as e:
        pick_format(fmt, output)
    assert fragment in e.value.message and e.value.exit_code == 2


def test_score_refuses_an_unknown_extension_before_any_work(invoke, tmp_path, image_tree):
    out = tmp_path / "out.xlsx"
    r = invoke("score", str(image_tree.root), "--profile", "tiny", "-o", str(out))
    assert_clean_error(r, 2, "out.xlsx", ".xlsx names no score format")
    assert not out.exists() and not list(tmp_path.glob(".out.xlsx*"))
    r = invoke("score", str(image_tree.root), "--profile", "tiny", "-o", str(tmp_path / "out.csv"), "--format", "jsonl")
    assert_clean_error(r, 2, "names csv, but --format says jsonl")


def test_score_says_where_it_wrote_and_questions_a_threshold_that_flags_everything(invoke, tmp_path, tiny_weights, image_tree):
    home = seed_home(tiny_weights, tmp_path / "home")
    out = tmp_path / "scores.csv"
    r = invoke("score", str(image_tree.root), "--profile", "tiny", "--method", "mcm", "--classnames", str(image_tree.root),
               "--threshold", "1e9", "-o", str(out), home=home)
    assert r.returncode == 0, r.stderr
    rows = rows_of(out.read_text(), "csv")
    assert len(rows) >= 2 and all(row["is_ood"] == "True" for row in rows)
    assert f"wrote {len(rows)} rows (csv) to {out}" in r.stderr
    assert f"called all {len(rows)} images OOD" in r.stderr and "warning:" in r.stderr


class _Warnings:
    def __init__(self):
        self.lines = []

    def warn(self, message):
        self.lines.append(message)


@pytest.mark.parametrize(
    "value,flagged,scored,warned",
    [(0.95, 10, 10, True), (0.95, 9, 10, False), (0.95, 0, 10, False), (0.95, 1, 1, False)],
)
def test_literal_threshold_warning(value, flagged, scored, warned):
    from synood_cli.cli.score import _check_literal_threshold

    rep = _Warnings()
    _check_literal_threshold(str(value), value, flagged, 0.0071, scored, rep)
    assert bool(rep.lines) == warned
    if warned:  # the reading that was probably meant, spelled out
        assert "--threshold tpr95" in rep.lines[0] and "0.0071" in rep.lines[0]
