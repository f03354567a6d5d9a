"""--plot's histograms: one panel per method on its own scale, the threshold as a line, one colour per OOD set."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from synood_cli.metrics import plot_roc, roc_figure


@pytest.fixture
def two_scales():
    rng = np.random.default_rng(0)
    # SynOOD-like scores crowd near 0, NegLabel-like ones spread over 0.2..1 (what one shared axis crushed)
    syn_id, syn_far, syn_near = rng.uniform(0, 2e-3, 40), rng.uniform(0, 1e-4, 30), rng.uniform(0, 5e-4, 30)
    neg_id, neg_far, neg_near = rng.uniform(0.5, 1.0, 40), rng.uniform(0.2, 0.6, 30), rng.uniform(0.3, 0.8, 30)
    return {
        ("far", "neglabel"): (neg_id, neg_far), ("near", "neglabel"): (neg_id, neg_near),
        ("far", "synood"): (syn_id, syn_far), ("near", "synood"): (syn_id, syn_near),
    }


def _hist_colour(ax, label):
    patch = next(p for p in ax.patches if p.get_label() == label)
    return to_rgba(patch.get_facecolor(), alpha=1)


def test_one_histogram_panel_per_method_on_its_own_scale(two_scales):
    import matplotlib.pyplot as plt

    fig = roc_figure(two_scales, "neglabel, synood")
    try:
        roc, *panels = fig.axes
        assert len(panels) == 2
        assert [ax.get_title() for ax in panels] == ["neglabel scores", "synood scores"]
        for ax, method in zip(panels, ["neglabel", "synood"]):
            scores = np.concatenate([a for (_, m), pair in two_scales.items() if m == method for a in pair])
            lo, hi = ax.get_xlim()
            assert lo <= scores.min() and scores.max() <= hi  # covers its own scores
            assert hi - lo < 2 * (scores.max() - scores.min())  # and is not stretched by the other method's
            # the threshold that keeps 95% of ID, drawn as a vertical line at its value
            ids = two_scales[("far", method)][0]
            want = np.sort(ids)[::-1][int(np.ceil(0.95 * len(ids))) - 1]
            xs = [line.get_xdata() for line in ax.lines]
            assert any(len(x) == 2 and x[0] == x[1] == pytest.approx(want) for x in xs), xs
        # a set has the same colour in every panel, and a different one from the other set
        for name in ("far", "near"):
            assert _hist_colour(panels[0], name) == _hist_colour(panels[1], name)
        assert _hist_colour(panels[0], "far") != _hist_colour(panels[0], "near")
    finally:
        plt.close(fig)


def test_single_method_and_plain_names_still_plot(tmp_path):
    ids = np.arange(1.0, 21.0)
    out = plot_roc({"far": (ids, np.array([0.5, 30.0]))}, tmp_path / "roc.svg")
    svg = out.read_text()
    assert "threshold 2 (95% ID kept)" in svg and "far FPR95 50.0%" in svg


def test_scores_over_many_decades_get_a_log_axis():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    ids, ood = 10 ** rng.uniform(-7, -0.5, 40), 10 ** rng.uniform(-8, -3, 30)
    fig = roc_figure({("far", "neglabel"): (ids, ood)})
    try:
        ax = fig.axes[1]
        assert ax.get_xscale() == "log"
        lo, hi = ax.get_xlim()
        assert lo <= min(ids.min(), ood.min()) and max(ids.max(), ood.max()) <= hi
    finally:
        plt.close(fig)
    fig = roc_figure({("far", "energy"): (rng.normal(5, 1, 40), rng.normal(2, 1, 30))})  # negative-capable, one scale
    try:
        assert fig.axes[1].get_xscale() == "linear"
    finally:
        plt.close(fig)
