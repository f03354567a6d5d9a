"""--groups, --neg-ratio and --percentile out of range are exit 2 before any model loads (issue 21)."""

from __future__ import annotations

import pytest

from conftest import make_image
from test_image_guard import in_process

TINY = ["--profile", "tiny"]


@pytest.mark.parametrize("command, option, value", [
    ("score", "--groups", "0"),
    ("score", "--neg-ratio", "1.5"),
    ("evaluate", "--groups", "-3"),
    ("evaluate", "--neg-ratio", "nan"),
    ("negatives", "--neg-ratio", "0"),
    ("negatives", "--percentile", "2"),
    ("finetune", "--neg-ratio", "inf"),
])
def test_out_of_range_is_refused_before_the_model_loads(tmp_path, command, option, value):
    folder = tmp_path / "images"
    folder.mkdir()
    make_image("x", 0).save(folder / "a.png")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    where = {
        "score": [str(folder), "--classnames", str(tmp_path / "classes.txt")],
        "evaluate": ["--id", str(folder), "--ood", str(folder), "--classnames", str(tmp_path / "classes.txt")],
        "negatives": ["--classnames", str(tmp_path / "classes.txt")],
        "finetune": ["--prompts", "no-such-prompts", "--synth", "no-such-synth"],
    }[command]
    home = tmp_path / "home"
    r = in_process(home, command, *where, *TINY, option, value)
    assert r.returncode == 2, r.stderr
    assert f"{option} must be" in r.stderr and "loading" not in r.stderr, r.stderr
    assert not (home / "artifacts" / "weights").exists()  # no model was built or loaded
