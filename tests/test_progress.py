"""Progress that moves: synthesis advances per denoising step; slow rates read per minute, never `0 img/s`."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from conftest import write_tree
from synood_cli.cli.render import _PlainTask, format_rate


def test_format_rate():
    assert format_rate(2310.4, "img") == "2310 img/s"
    assert format_rate(2.5, "img") == "2.5 img/s"
    assert format_rate(0.2, "img") == "12.0 img/min"
    assert format_rate(1 / 90, "img") == "0.7 img/min"


def test_plain_progress_line_shows_slow_rates_per_minute(capsys):
    task = _PlainTask("synthesizing", 12, "img")
    task.start -= 120.0  # two minutes in
    task.advance(0.5)  # no line yet: one every 30 s
    assert capsys.readouterr().err == ""
    task.last -= 120.0  # due for a line
    task.advance(0.5)  # 1 image in 2 minutes
    err = capsys.readouterr().err
    assert err.startswith("synthesizing: 1/12 ") and "0.5 img/min" in err  # whole images shown, rate per minute
    task.last -= 120.0
    task.advance(0.25)
    assert capsys.readouterr().err.startswith("synthesizing: 1/12 ")  # not 1.25/12
    assert "0 img/s" not in err


class Recorder:
    """A reporter that keeps every advance of every task (the library's Reporter protocol)."""

    def __init__(self):
        self.advances: dict[str, list[float]] = {}

    def info(self, message):
        pass

    def warn(self, message):
        pass

    @contextmanager
    def task(self, description, total, unit="img"):
        log = self.advances.setdefault(description, [])

        class T:
            def advance(self, n=1):
                log.append(n)

            def update(self, **kw):
                pass

        yield T()


@pytest.mark.slow
def test_synthesis_bar_moves_per_denoising_step(tmp_path):
    from test_finetune_cli import cli_in_process

    from synood_cli.store import Store
    from synood_cli.synthesis import SynthConfig, plan_synthesis, run_synthesis

    home = tmp_path / "home"
    tree = write_tree(tmp_path / "train", {"cat": 2, "dog": 2}, corrupt=False, junk=False)
    r = cli_in_process(home, "prompt", str(tree.root), "--profile", "tiny", "--per-class", "2", "--name", "ctx")
    assert r.returncode == 0, r.stderr
    from synood_cli.profiles import load_profile

    d = load_profile("tiny")["synthesize"]
    cfg = SynthConfig(prompts="ctx", diffusion=d["diffusion"], size=d["size"], steps=d["steps"], strength=d.get("strength", 0.6), iterations=2,
                      guidance="energy", target="boundary", guide_model=d.get("guide_model", "clip"), batch_size=2, device="cpu", profile="tiny")
    store = Store(home)
    rec = Recorder()
    run_synthesis(plan_synthesis(cfg, store), store, reporter=rec)
    steps = rec.advances["synthesizing"]
    batches = 2  # 2 classes x 2 images, batch 2
    assert len(steps) > 2 * batches  # many moves per batch, not one
    assert all(0 < s < 2 for s in steps)  # fractions of the batch of 2
    assert sum(steps) == pytest.approx(4)  # and the bar ends at exactly the number of images
