"""`--select random` draws each class's sources with its own seed (run seed and class index).

ImageNet-style trees repeat file names across classes (or number them the same way): a generator
seeded by the run alone would pick the same names in every class, and a generator shared across
classes would make a class's picks depend on which other classes were selected.
"""

from __future__ import annotations

from synood_cli.data.folders import scan_folder
from synood_cli.data.selection import select_images


def _tree(root, classes=("a", "b", "c")):
    from PIL import Image

    for cname in classes:
        (root / cname).mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / cname / f"im{i}.png")
    return scan_folder(root)


def _names(image_set, classes, seed=0):
    sel = select_images(image_set, classes, 5, "random", seed)
    return {c: [p.name for p, ci in sel.items if ci == c] for c in classes}


def test_classes_with_the_same_file_names_get_their_own_picks(tmp_path):
    picks = _names(_tree(tmp_path / "data"), [0, 1, 2])
    assert all(len(set(n)) == 5 for n in picks.values())
    # three classes of the same 20 names: equal picks would be a shared seed (1 in 15,504 by chance)
    assert picks[0] != picks[1] and picks[1] != picks[2] and picks[0] != picks[2]


def test_a_class_picks_the_same_sources_whatever_else_is_selected(tmp_path):
    image_set = _tree(tmp_path / "data")
    together = _names(image_set, [0, 1, 2])
    assert _names(image_set, [2])[2] == together[2]
    assert _names(image_set, [1, 2])[1] == together[1]
    assert _names(image_set, [2], seed=1)[2] != together[2]  # and the run seed still matters
