"""Metric tables in a narrow terminal: a number is never cut (`100.…`), the layout changes instead."""

from __future__ import annotations

import re

import pytest

from synood_cli.cli import tables
from synood_cli.suites import get_suite

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _metrics(seed: float) -> dict:
    # values chosen to print as 6-character numbers (100.00) and as short ones (1.23)
    return {"fpr95": 1.0, "auroc": 0.0123 + seed, "aupr_in": 0.5 + seed, "aupr_out": 0.99999, "fpr95_ood_positive": 0.875 - seed,
            "n_id": 36, "n_ood": 1234}


def _terminal(monkeypatch, columns: int) -> None:
    """What Rich sees in an interactive terminal of `columns` columns."""
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("TTY_COMPATIBLE", "1")


def _printed(capsys) -> str:
    out = ANSI.sub("", capsys.readouterr().out)
    assert "…" not in out, out
    return out


def _assert_whole(out: str, numbers: list[str]) -> None:
    tokens = {t.rstrip(".,") for t in re.findall(r"[0-9][0-9.,]*", out)}
    missing = [n for n in numbers if n not in tokens]
    assert not missing, (missing, out)


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_demo_table_keeps_every_number_whole(monkeypatch, capsys, columns):
    _terminal(monkeypatch, columns)
    per = {"stripes": _metrics(0.1), "noise": _metrics(0.2)}
    by_method = {"neglabel": (per, _metrics(0.15)), "synood": (per, _metrics(0.3))}
    tables.render_metrics(by_method, "table", "synood demo · NegLabel vs SynOOD · tiny profile", {"id_images": 36})
    out = _printed(capsys)
    numbers = [f"{100 * m[k]:.2f}" for per_set, avg in by_method.values() for m in [*per_set.values(), avg] for k, _ in tables.COLUMNS]
    _assert_whole(out, numbers + ["1234"])
    for label in ("stripes", "noise", "neglabel", "synood", "Average"):
        assert label in out
    assert max(len(line) for line in out.splitlines() if "1234" in line or "100.00" in line) <= columns


@pytest.mark.parametrize("name,columns", [("imagenet-mos", 100), ("imagenet-mos", 80), ("openood-imagenet-far", 80), ("imagenet-mos", 40)])
def test_benchmark_table_with_reference_keeps_every_number_whole(monkeypatch, capsys, name, columns):
    _terminal(monkeypatch, columns)
    suite = get_suite(name)
    per = {s.key: _metrics(0.01 * i) for i, s in enumerate(suite.ood)}
    by_method = {"neglabel": (per, _metrics(0.05)), "synood": (per, _metrics(0.07))}
    tables.render_suite(suite, by_method, "table", {"model": "ViT-B-16 (openai)"}, reference=True)
    out = _printed(capsys)
    ours = [f"{100 * m[key]:.2f}" for per_set, avg in by_method.values() for m in [*per_set.values(), avg] for key in (suite.fpr_key, "auroc")]
    paper = [f"{v:.2f}" for r in suite.references.values() for pair in r.values() for v in pair if v is not None]
    _assert_whole(out, ours + paper)
    for s in suite.ood:
        assert s.label in out


def test_a_pipe_gets_the_wide_table(monkeypatch, capsys):
    """Without a terminal nothing limits the width: the one-row-per-set table, as before."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    per = {"stripes": _metrics(0.1)}
    tables.render_metrics({"neglabel": (per, _metrics(0.1)), "synood": (per, _metrics(0.2))}, "table", "t", {})
    out = _printed(capsys)
    assert "FPR95 OOD+↓" in out and "AUPR-OUT↑" in out  # unfolded headers: the wide layout


@pytest.mark.parametrize("columns", [60, 100, 200])
def test_inputs_table_keeps_counts_whole(monkeypatch, capsys, columns):
    from synood_cli.cli.inputs import render_inputs

    _terminal(monkeypatch, columns)
    long = "/data/" + "/".join(["some-rather-long-folder"] * 4)
    rows = [{"role": "id", "name": "imagenet", "source": f"{long}/val", "layout": "class folders", "expected": 50000, "found": 49999, "left_out": 1, "status": "count differs"},
            {"role": "ood", "name": "inaturalist", "source": f"{long}/inat", "layout": "flat", "expected": 10000, "found": 10000, "left_out": 0, "status": "ok"}]

    class Reporter:
        quiet = False

    render_inputs(rows, Reporter())
    err = ANSI.sub("", capsys.readouterr().err)
    assert "…" not in err
    _assert_whole(err, ["50,000", "49,999", "10,000"])
