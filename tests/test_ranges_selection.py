"""Class ranges (`--classes`) and the selection of ID source images (docs/method.md section 1; README.md, "More than one GPU").

Expected values are written by hand or computed here from file sizes and known image dimensions,
never by the code under test.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from synood_cli.data.folders import scan_folder
from synood_cli.data.ranges import format_class_spec, parse_class_spec, shard_for_rank
from synood_cli.data.selection import select_images
from synood_cli.errors import UsageError

# -- class ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:3", [0, 1, 2]),
        ("5", [5]),
        ("1,3,7", [1, 3, 7]),
        ("0:2,5", [0, 1, 5]),
        (":2", [0, 1]),
        ("8:", [8, 9]),
        ("all", list(range(10))),
        (None, list(range(10))),
        ("7,1,3", [1, 3, 7]),  # sorted
        ("0:3,2,1:4", [0, 1, 2, 3]),  # overlaps de-duplicated
        (" 2 : 4 , 9 ", [2, 3, 9]),  # spaces tolerated
        ("0:10", list(range(10))),
        ("9", [9]),
    ],
)
def test_parse_class_spec(spec, expected):
    assert parse_class_spec(spec, 10) == expected


@pytest.mark.parametrize("spec", ["0:11", "-1", "3:3", "a:b", "1,,2", "10", "5:2", "x", "0:3,", "-2:4", "1.5"])
def test_parse_class_spec_errors(spec):
    with pytest.raises(UsageError) as info:
        parse_class_spec(spec, 10)
    assert info.value.exit_code == 2
    assert info.value.hint  # every range error says how to write one


def test_parse_class_spec_outside_names_the_class_count():
    with pytest.raises(UsageError) as info:
        parse_class_spec("0:11", 10)
    assert "10" in info.value.message and "0:11" in info.value.message


@pytest.mark.parametrize(
    "indices, text",
    [
        ([0, 1, 2], "0:3"),
        ([5], "5"),
        ([1, 3, 7], "1,3,7"),
        ([0, 1, 5], "0:2,5"),
        ([0, 1, 2, 5, 6, 9], "0:3,5:7,9"),
        ([], ""),
    ],
)
def test_format_class_spec(indices, text):
    assert format_class_spec(indices) == text
    if indices:
        assert parse_class_spec(text, 10) == indices


def test_format_parse_round_trip_random_subsets():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randrange(1, 30)
        subset = sorted(rng.sample(range(n), rng.randrange(1, n + 1)))
        assert parse_class_spec(format_class_spec(subset), n) == subset


@pytest.mark.parametrize("indices", [[], [4], [0, 1, 2], list(range(7)), list(range(10)), [0, 1, 2, 5, 8, 9, 20], list(range(100, 113))])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_shard_for_rank(indices, world):
    shards = [shard_for_rank(indices, r, world) for r in range(world)]
    # concatenated in rank order they give the input back: disjoint, contiguous, nothing lost
    assert [i for s in shards for i in s] == indices
    for s in shards:
        if s:
            start = indices.index(s[0])
            assert indices[start : start + len(s)] == s
    # balanced: slice sizes differ by at most one
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


# -- selection ---------------------------------------------------------------------------------


def _noise_jpeg(path: Path, w: int, h: int, seed: int, quality: int = 95) -> None:
    from PIL import Image

    data = random.Random(seed).randbytes(w * h * 3)
    Image.frombytes("RGB", (w, h), data).save(path, format="JPEG", quality=quality)


def _flat_jpeg(path: Path, w: int, h: int, color=(120, 130, 140), quality: int = 75) -> None:
    from PIL import Image

    Image.new("RGB", (w, h), color).save(path, format="JPEG", quality=quality)


def _ratio(path: Path, w: int, h: int) -> float:
    return os.path.getsize(path) / (w * h)


def test_select_top_n_by_bytes_per_pixel_numeric_order(tmp_path):
    root = tmp_path / "data"
    cls = root / "animal"
    cls.mkdir(parents=True)
    # known dimensions; tiny images are dominated by the JPEG headers, so their ratios run to
    # tens of bytes per pixel, while big flat ones are well below one
    specs = {
        "n01.jpg": (4, 4, "noise", 95),
        "n02.jpg": (8, 8, "noise", 95),
        "n03.jpg": (12, 12, "noise", 95),
        "n04.jpg": (20, 20, "noise", 95),
        "n05.jpg": (64, 64, "noise", 95),
        "n06.jpg": (64, 64, "noise", 40),
        "n07.jpg": (64, 64, "flat", 75),
        "n08.jpg": (96, 48, "noise", 70),
        "n09.jpg": (160, 120, "flat", 90),
        "n10.jpg": (6, 6, "noise", 95),
    }
    ratios = {}
    for i, (name, (w, h, kind, q)) in enumerate(specs.items()):
        p = cls / name
        if kind == "noise":
            _noise_jpeg(p, w, h, seed=i, quality=q)
        else:
            _flat_jpeg(p, w, h, quality=q)
        ratios[name] = _ratio(p, w, h)
    assert len(set(ratios.values())) == len(ratios)  # no ties in this class

    by_number = sorted(ratios, key=lambda n: -ratios[n])
    by_string = sorted(ratios, key=lambda n: str(ratios[n]), reverse=True)
    assert by_number != by_string  # the research code's string sort would pick differently
    assert by_number[:3] != by_string[:3]

    image_set = scan_folder(root)
    for n in (1, 3, 5, len(specs)):
        sel = select_images(image_set, [0], n)
        assert [p.name for p, _ in sel.items] == by_number[:n]
        assert all(c == 0 for _, c in sel.items)
        assert sel.per_class == {0: n}
        assert sel.unreadable == []
    # more asked than there are: all of them, still in ratio order
    sel = select_images(image_set, [0], 50)
    assert [p.name for p, _ in sel.items] == by_number


def test_select_ties_broken_by_natural_file_name(tmp_path):
    root = tmp_path / "data"
    cls = root / "c"
    cls.mkdir(parents=True)
    _noise_jpeg(cls / "top.jpg", 8, 8, seed=1)  # far above the tied ones
    buf = io.BytesIO()
    from PIL import Image

    Image.frombytes("RGB", (32, 32), random.Random(2).randbytes(32 * 32 * 3)).save(buf, format="JPEG", quality=60)
    for name in ("b.jpg", "a.jpg", "a10.jpg", "a2.jpg"):  # byte-identical: the same ratio
        (cls / name).write_bytes(buf.getvalue())
    _flat_jpeg(cls / "low.jpg", 64, 64)  # far below
    assert _ratio(cls / "top.jpg", 8, 8) > _ratio(cls / "a.jpg", 32, 32) > _ratio(cls / "low.jpg", 64, 64)

    image_set = scan_folder(root)
    assert [p.name for p, _ in select_images(image_set, [0], 3).items] == ["top.jpg", "a.jpg", "a2.jpg"]
    assert [p.name for p, _ in select_images(image_set, [0], 5).items] == ["top.jpg", "a.jpg", "a2.jpg", "a10.jpg", "b.jpg"]
    assert [p.name for p, _ in select_images(image_set, [0], 6).items] == ["top.jpg", "a.jpg", "a2.jpg", "a10.jpg", "b.jpg", "low.jpg"]


def test_select_per_class_and_class_subset(tmp_path):
    root = tmp_path / "data"
    expected = {}
    for ci, cname in enumerate(["ant", "bee", "cow"]):
        (root / cname).mkdir(parents=True)
        ratios = {}
        for i in range(5):
            w = 8 + 8 * i
            p = root / cname / f"{cname}{i}.jpg"
            _noise_jpeg(p, w, w, seed=100 * ci + i)
            ratios[p.name] = _ratio(p, w, w)
        expected[ci] = sorted(ratios, key=lambda n: -ratios[n])
    image_set = scan_folder(root)
    sel = select_images(image_set, [0, 2], 2)
    assert [(p.name, c) for p, c in sel.items] == [(n, 0) for n in expected[0][:2]] + [(n, 2) for n in expected[2][:2]]
    assert sel.per_class == {0: 2, 2: 2}


def test_select_corrupt_file_reported_not_selected(tmp_path):
    root = tmp_path / "data"
    cls = root / "c"
    cls.mkdir(parents=True)
    for i in range(3):
        _flat_jpeg(cls / f"ok{i}.jpg", 32, 32, color=(10 * i, 20, 30))
    (cls / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 40)  # big file: would rank first
    (cls / "empty.jpg").write_bytes(b"")
    image_set = scan_folder(root)
    sel = select_images(image_set, [0], 10)
    names = [p.name for p, _ in sel.items]
    assert sorted(names) == ["ok0.jpg", "ok1.jpg", "ok2.jpg"]
    assert sorted(p.name for p, _ in sel.unreadable) == ["empty.jpg", "garbage.jpg"]
    assert all(reason for _, reason in sel.unreadable)
    assert sel.per_class == {0: 3}


def test_select_random_is_seeded(tmp_path):
    root = tmp_path / "data"
    for cname in ("x", "y"):
        (root / cname).mkdir(parents=True)
        for i in range(20):
            _flat_jpeg(root / cname / f"im{i}.jpg", 16, 16, color=(i, i, i))
    image_set = scan_folder(root)

    def pick(seed):
        return [(p.name, c) for p, c in select_images(image_set, [0, 1], 5, "random", seed).items]

    a, b, c = pick(0), pick(0), pick(1)
    assert a == b  # same seed, same selection
    assert a != c  # another seed, another selection
    assert len(a) == 10
    for cls in (0, 1):
        names = [n for n, ci in a if ci == cls]
        assert len(names) == len(set(names)) == 5
        # listed in natural file order within a class
        assert names == sorted(names, key=lambda n: int(n[2:-4]))


def test_select_all_and_unknown_method(tmp_path):
    root = tmp_path / "data"
    (root / "c").mkdir(parents=True)
    for i in (1, 10, 2):
        _flat_jpeg(root / "c" / f"im{i}.jpg", 8, 8)
    image_set = scan_folder(root)
    assert [p.name for p, _ in select_images(image_set, [0], 2, "all").items] == ["im1.jpg", "im2.jpg", "im10.jpg"]
    assert [p.name for p, _ in select_images(image_set, [0], None).items] == ["im1.jpg", "im2.jpg", "im10.jpg"]
    with pytest.raises(UsageError):
        select_images(image_set, [0], 2, "largest")
    with pytest.raises(UsageError):
        select_images(image_set, [0], 0)
