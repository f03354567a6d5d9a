"""`synood prompt` names its unreadable images, not only their count (issue 21)."""

from __future__ import annotations

from conftest import write_tree
from test_image_guard import in_process


def test_prompt_names_the_unreadable_images(tmp_path, shared_home):
    tree = write_tree(tmp_path / "train", {"cat": 1, "dog": 1}, corrupt=True, junk=False)
    broken = tree.corrupt[0]
    r = in_process(shared_home, "prompt", str(tree.root), "--profile", "tiny", "--per-class", "2")
    assert r.returncode == 0, r.stderr
    assert "1 unreadable images" in r.stderr or "1 unreadable images" in r.stdout
    named = [line for line in r.stderr.splitlines() if line.startswith("warning: unreadable image")]
    assert len(named) == 1 and named[0].startswith(f"warning: unreadable image {broken}: "), r.stderr
    assert named[0].count("unreadable") == 1, named[0]  # "unreadable image X: unreadable: ..." said it twice
