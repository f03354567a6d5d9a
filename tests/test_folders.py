"""Tests for synood_cli.data.folders and synood_cli.data.loading, on real files in tmp_path."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from synood_cli.data.folders import (
    IMAGE_EXTENSIONS,
    ImageSet,
    names_for_classes,
    read_classnames,
    scan_folder,
)
from synood_cli.errors import UsageError

# ---------------------------------------------------------------------------------------------
# helpers


def _noise_image(size=(48, 40), seed=0) -> Image.Image:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    return Image.frombytes("RGB", size, data)


def write_image(path: Path, fmt: str, size=(48, 40), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise_image(size, seed).save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    _noise_image((64, 64), seed=7).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def make_tree(root: Path) -> Path:
    """Class-folder tree with mixed formats, junk, hidden files, an empty class and a loose file."""
    write_image(root / "zebra" / "img10.png", "PNG")
    write_image(root / "zebra" / "img2.png", "PNG")
    write_image(root / "zebra" / "img1.jpg", "JPEG")
    write_image(root / "apple_pie" / "A.JPG", "JPEG")
    write_image(root / "apple_pie" / "sub" / "b.webp", "WEBP")
    write_image(root / "Mango" / "m.bmp", "BMP")
    (root / "apple_pie" / "notes.txt").write_text("hello")
    (root / "apple_pie" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden_class").mkdir()
    write_image(root / ".hidden_class" / "x.png", "PNG")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.md").write_text("nothing here")
    write_image(root / "loose.png", "PNG")
    (root / "notes.txt").write_text("root notes")
    return root


def make_flat(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_image(root / "img10.png", "PNG", seed=1)
    write_image(root / "img2.jpeg", "JPEG", seed=2)
    write_image(root / "img1.JPG", "JPEG", seed=3)
    write_image(root / "pic.Jpeg", "JPEG", seed=4)
    write_image(root / "w.webp", "WEBP", seed=5)
    write_image(root / "b.bmp", "BMP", seed=6)
    write_truncated_jpeg(root / "trunc.jpg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "emptydir").mkdir()
    return root


# ---------------------------------------------------------------------------------------------
# folders


def test_extensions_constant():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def test_tree_layout_classes_labels_and_order(tmp_path):
    root = make_tree(tmp_path / "ds")
    s = scan_folder(root)
    assert isinstance(s, ImageSet)
    assert s.name == "ds"
    assert s.root == root.absolute()
    assert s.has_labels
    # plain sorted(): uppercase before lowercase, hidden and empty folders excluded
    assert s.classes == ["Mango", "apple_pie", "zebra"]
    assert s.class_names == ["Mango", "apple pie", "zebra"]
    assert s.empty_classes == ["empty_class"]
    expected_files = [
        root / "Mango" / "m.bmp",
        root / "apple_pie" / "A.JPG",
        root / "apple_pie" / "sub" / "b.webp",
        root / "zebra" / "img1.jpg",
        root / "zebra" / "img2.png",
        root / "zebra" / "img10.png",
    ]
    assert s.files == expected_files
    assert all(p.is_absolute() for p in s.files)
    assert s.labels == [0, 1, 1, 2, 2, 2]
    assert len(s) == 6


def test_tree_skipped_contents(tmp_path):
    root = make_tree(tmp_path / "ds")
    s = scan_folder(root)
    skipped = {p: reason for p, reason in s.skipped}
    assert skipped == {
        root / "loose.png": "loose file in a class-folder tree",
        root / "notes.txt": "not an image extension",
        root / "apple_pie" / "notes.txt": "not an image extension",
        root / "empty_class" / "readme.md": "not an image extension",
    }
    # hidden files never appear anywhere
    everything = [str(p) for p in s.files] + [str(p) for p, _ in s.skipped]
    assert not any("/." in p for p in everything)


def test_flat_layout_natural_order_and_skipped(tmp_path):
    root = make_flat(tmp_path / "flat")
    s = scan_folder(root, name="ood1")
    assert s.name == "ood1"
    assert not s.has_labels
    assert s.labels is None
    assert s.classes == []
    assert s.class_names == []
    assert s.empty_classes == []
    assert s.files == [
        root / "b.bmp",
        root / "empty.png",
        root / "img1.JPG",
        root / "img2.jpeg",
        root / "img10.png",
        root / "pic.Jpeg",
        root / "trunc.jpg",
        root / "w.webp",
    ]
    assert s.skipped == [(root / "notes.txt", "not an image extension")]


def test_flat_recursive_is_not_a_tree_when_subfolders_lack_images(tmp_path):
    root = tmp_path / "f"
    write_image(root / "a.png", "PNG")
    (root / "docs").mkdir()
    (root / "docs" / "x.txt").write_text("x")
    s = scan_folder(root)
    assert s.labels is None
    assert s.files == [root / "a.png"]
    assert s.skipped == [(root / "docs" / "x.txt", "not an image extension")]


def test_classnames_file_tree(tmp_path):
    root = make_tree(tmp_path / "ds")
    names = tmp_path / "names.txt"
    names.write_text("  mango fruit \n\napple pie\n   \nzebra animal\n")
    s = scan_folder(root, classnames=names)
    assert s.classes == ["Mango", "apple_pie", "zebra"]
    assert s.class_names == ["mango fruit", "apple pie", "zebra animal"]


def test_classnames_length_mismatch(tmp_path):
    root = make_tree(tmp_path / "ds")
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    with pytest.raises(UsageError) as ei:
        scan_folder(root, classnames=names)
    msg = ei.value.message
    assert "2" in msg and "3" in msg and str(names) in msg


def test_classnames_flat_any_length(tmp_path):
    root = make_flat(tmp_path / "flat")
    names = tmp_path / "id_names.txt"
    names.write_text("cat\ndog\nbird\nfish\n")
    s = scan_folder(root, classnames=names)
    assert s.class_names == ["cat", "dog", "bird", "fish"]
    assert s.labels is None


def test_read_classnames_errors(tmp_path):
    with pytest.raises(UsageError):
        read_classnames(tmp_path / "missing.txt")
    with pytest.raises(UsageError):
        read_classnames(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(UsageError):
        read_classnames(blank)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa cat\n")
    with pytest.raises(UsageError):
        read_classnames(bad)
    good = tmp_path / "good.txt"
    good.write_text("\ufeffa\r\nb c\r\n")
    assert read_classnames(good) == ["a", "b c"]


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError) as ei:
        scan_folder(missing)
    assert ei.value.message == f"folder not found: {missing}"
    assert ei.value.hint


def test_file_instead_of_folder(tmp_path):
    f = write_image(tmp_path / "one.png", "PNG")
    with pytest.raises(UsageError) as ei:
        scan_folder(f)
    assert ei.value.hint


@pytest.mark.parametrize("junk", [False, True])
def test_empty_folder(tmp_path, junk):
    root = tmp_path / "empty"
    root.mkdir()
    if junk:
        (root / "a.txt").write_text("x")
        (root / ".b.png").write_bytes(b"")  # hidden: ignored even with an image extension
        (root / "sub").mkdir()
    with pytest.raises(UsageError) as ei:
        scan_folder(root)
    assert ei.value.message.startswith("no images found in")
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        assert ext in ei.value.hint


def test_names_for_classes_plain():
    assert names_for_classes(["b_c", "a", "golden_retriever"]) == ["b c", "a", "golden retriever"]


def _fake_wnids(n: int) -> list[str]:
    # first is the real first ImageNet wnid (tench); others are synthetic but wnid-shaped
    return ["n01440764"] + [f"n{2000000 + 37 * i:08d}" for i in range(1, n)]


def test_names_for_classes_imagenet_sorted_order():
    import open_clip

    reference = list(open_clip.IMAGENET_CLASSNAMES)
    assert len(reference) == 1000
    wnids = _fake_wnids(1000)
    shuffled = wnids[:]
    random.Random(3).shuffle(shuffled)
    got = names_for_classes(shuffled)
    rank = {w: i for i, w in enumerate(sorted(wnids))}
    assert got == [reference[rank[w]] for w in shuffled]
    assert got[shuffled.index("n01440764")] == "tench"


def test_names_for_classes_not_imagenet():
    wnids = _fake_wnids(999)
    assert names_for_classes(wnids) == wnids
    almost = _fake_wnids(999) + ["not_a_wnid"]
    assert names_for_classes(almost)[-1] == "not a wnid"


def test_scan_folder_imagenet_tree(tmp_path):
    import open_clip

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    png = buf.getvalue()
    root = tmp_path / "imagenet"
    wnids = _fake_wnids(1000)
    for w in wnids:
        (root / w).mkdir(parents=True)
        (root / w / "0.png").write_bytes(png)
    s = scan_folder(root)
    assert s.classes == sorted(wnids)
    assert s.class_names == list(open_clip.IMAGENET_CLASSNAMES)
    assert s.class_names[0] == "tench"
    assert s.labels == list(range(1000))


def test_folders_module_is_import_light():
    code = (
        "import sys, synood_cli.data.folders; "
        "bad = [m for m in ('torch', 'open_clip', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------------------------------------
# loading


def _transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])


def test_dataset_good_and_bad_files(tmp_path):
    import torch

    from synood_cli.data.loading import ImageFileDataset

    root = make_flat(tmp_path / "flat")
    good = [root / "img10.png", root / "img1.JPG", root / "w.webp", root / "b.bmp"]
    bad = [root / "trunc.jpg", root / "empty.png", root / "notes.txt", root / "gone.png"]
    ds = ImageFileDataset(good + bad, _transform())
    assert len(ds) == 8
    assert ds.shape == (3, 32, 32)
    for i in range(len(good)):
        t, idx, err = ds[i]
        assert idx == i and err is None
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32
        assert t.abs().sum() > 0  # noise image, not the placeholder
    for i in range(len(good), len(good) + len(bad)):
        t, idx, err = ds[i]
        assert idx == i
        assert isinstance(err, str) and err
        assert t.shape == (3, 32, 32)
        assert torch.count_nonzero(t) == 0
    assert "truncated or corrupt image" in ds[4][2]
    assert "empty" in ds[5][2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterate_batches(tmp_path, num_workers):
    import torch

    from synood_cli.data.loading import iterate_batches

    root = make_flat(tmp_path / "flat")
    s = scan_folder(root)
    bad_names = {"trunc.jpg", "empty.png"}
    batches = list(iterate_batches(s.files, _transform(), batch_size=3, num_workers=num_workers))
    assert [len(b[1]) for b in batches] == [3, 3, 2]
    images = torch.cat([b[0] for b in batches])
    indices = torch.cat([b[1] for b in batches])
    errors = [e for b in batches for e in b[2]]
    assert indices.dtype == torch.long
    assert indices.tolist() == list(range(8))
    assert images.shape == (8, 3, 32, 32)
    for i, path in enumerate(s.files):
        if path.name in bad_names:
            assert isinstance(errors[i], str) and errors[i]
            assert torch.count_nonzero(images[i]) == 0
        else:
            assert errors[i] is None
            assert torch.count_nonzero(images[i]) > 0


def test_iterate_batches_empty_and_bad_batch_size():
    from synood_cli.data.loading import iterate_batches

    assert list(iterate_batches([], _transform(), batch_size=4)) == []
    with pytest.raises(UsageError):
        list(iterate_batches([], _transform(), batch_size=0))


def test_collate_shapes():
    import torch

    from synood_cli.data.loading import collate

    batch = [(torch.ones(3, 2, 2), 5, None), (torch.zeros(3, 2, 2), 7, "bad")]
    images, indices, errors = collate(batch)
    assert images.shape == (2, 3, 2, 2)
    assert indices.tolist() == [5, 7] and indices.dtype == torch.long
    assert errors == [None, "bad"]


def test_default_num_workers():
    from synood_cli.data.loading import default_num_workers

    n = default_num_workers()
    assert isinstance(n, int) and n >= 0  # one per core, uncapped (tests/test_image_pipeline.py)
