"""Tests for the input-spec grammar: ImageNet label files, image lists, tables and open_inputs.

Everything runs on real files built in tmp_path (PIL images, Parquet written by `datasets`,
`save_to_disk` folders). Expected values are derived independently of the code under test:
ImageNet-1k's standard class order is the sorted order of the 1000 wnids, so n01440764 is class 0
("tench"), n01443537 class 1 ("goldfish"), n01484850 class 2 ("great white shark"), n01751748
class 65 ("sea snake", the label of ILSVRC2012_val_00000001), n02123045 class 281 ("tabby cat")
and n15075141 class 999 ("toilet paper" in open_clip's names).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_image, write_flat, write_tree
from synood_cli.data.folders import REASON_NOT_IMAGE, names_for_classes, scan_folder
from synood_cli.data.imagenet import (
    as_imagenet_1k,
    find_label_file,
    imagenet_wnids,
    label_flat_set,
    read_label_file,
)
from synood_cli.data.imglist import REASON_MISSING, read_imglist
from synood_cli.data.sources import InputOptions, open_image_set, open_inputs, resolve_spec_path
from synood_cli.errors import ResourceMissing, UsageError

# Known ImageNet-1k facts (standard sorted-wnid order), independent of the library.
TENCH, GOLDFISH, SHARK = "n01440764", "n01443537", "n01484850"
SEA_SNAKE, TABBY, TOILET_TISSUE = "n01751748", "n02123045", "n15075141"
IDX = {TENCH: 0, GOLDFISH: 1, SHARK: 2, SEA_SNAKE: 65, TABBY: 281, TOILET_TISSUE: 999}
NAMES = {0: "tench", 1: "goldfish", 2: "great white shark", 65: "sea snake", 281: "tabby cat", 999: "toilet paper"}


# ---------------------------------------------------------------------------------------------
# helpers


def png_bytes(kind: str, seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed, size).save(buf, format="PNG")
    return buf.getvalue()


def write_val_folder(folder: Path, numbers=(1, 2, 3)) -> list[Path]:
    """A flat ImageNet val folder of ILSVRC2012_val_########.JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in numbers:
        p = folder / f"ILSVRC2012_val_{n:08d}.JPEG"
        make_image("val", n, 24).save(p, format="JPEG")
        out.append(p)
    return out


LOC_CSV = (
    "ImageId,PredictionString\n"
    f"ILSVRC2012_val_00000001,{GOLDFISH} 10 20 30 40 {GOLDFISH} 1 2 3 4\n"
    f"ILSVRC2012_val_00000002,{TENCH} 1 1 5 5\n"
    f"ILSVRC2012_val_00000003,{TABBY} 0 0 9 9\n"
    f"ILSVRC2012_val_00000099,{SHARK} 0 0 9 9\n"  # a row for an image that is not present is fine
)
LOC_LABELS = [1, 0, 281]

VAL_TXT = (
    "ILSVRC2012_val_00000001.JPEG 65\n"
    "ILSVRC2012_val_00000002.JPEG 0\n"
    "\n"
    "ILSVRC2012_val_00000003.JPEG 999\n"
)
VAL_TXT_LABELS = [65, 0, 999]


def tiny_transform(img):
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img.resize((8, 8))).float()


def image_dataset(pngs: list[bytes], labels: list[int] | None = None, label_names: list[str] | None = None, extra=None):
    """A datasets.Dataset with an Image column holding exactly these encoded bytes (+ ClassLabel)."""
    import datasets

    data = {"image": [{"bytes": b, "path": None} for b in pngs]}
    features = {"image": datasets.Image()}
    if labels is not None:
        data["label"] = labels
        features["label"] = datasets.ClassLabel(names=label_names)
    for key, (values, feature) in (extra or {}).items():
        data[key] = values
        features[key] = feature
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def binary_dataset(columns: dict[str, list]):
    import datasets

    features = {}
    for k, v in columns.items():
        if isinstance(v[0], bytes):
            features[k] = datasets.Value("binary")
        elif isinstance(v[0], str):
            features[k] = datasets.Value("string")
        elif isinstance(v[0], float):
            features[k] = datasets.Value("float64")
        else:
            features[k] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ---------------------------------------------------------------------------------------------
# 1. ImageNet wnids and flat val folders with a label file


def test_imagenet_wnids_are_the_sorted_1000():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids[0] == TENCH and wnids[1] == GOLDFISH and wnids[2] == SHARK
    assert wnids[65] == SEA_SNAKE and wnids[281] == TABBY and wnids[-1] == TOILET_TISSUE


def test_read_label_file_loc_solution(tmp_path):
    f = tmp_path / "LOC_val_solution.csv"
    f.write_text(LOC_CSV)
    assert read_label_file(f) == {
        "ILSVRC2012_val_00000001": 1,
        "ILSVRC2012_val_00000002": 0,
        "ILSVRC2012_val_00000003": 281,
        "ILSVRC2012_val_00000099": 2,
    }


def test_read_label_file_val_txt_keys_by_stem(tmp_path):
    f = tmp_path / "val.txt"
    f.write_text(VAL_TXT)
    assert read_label_file(f) == {
        "ILSVRC2012_val_00000001": 65,
        "ILSVRC2012_val_00000002": 0,
        "ILSVRC2012_val_00000003": 999,
    }


def test_read_label_file_accepts_bom_and_crlf(tmp_path):
    f = tmp_path / "LOC_val_solution.csv"
    f.write_bytes(b"\xef\xbb\xbf" + LOC_CSV.replace("\n", "\r\n").encode())
    assert read_label_file(f)["ILSVRC2012_val_00000003"] == 281


@pytest.mark.parametrize("label_name,text,expected", [("LOC_val_solution.csv", LOC_CSV, LOC_LABELS), ("val.txt", VAL_TXT, VAL_TXT_LABELS)])
def test_label_flat_set_with_explicit_file(tmp_path, label_name, text, expected):
    files = write_val_folder(tmp_path / "val")
    label_file = tmp_path / "elsewhere" / label_name
    label_file.parent.mkdir()
    label_file.write_text(text)
    flat = scan_folder(tmp_path / "val")
    assert flat.labels is None
    s = label_flat_set(flat, label_file)
    assert s.files == files
    assert s.labels == expected
    assert len(s.classes) == 1000 and s.classes[0] == TENCH and s.classes[281] == TABBY
    assert len(s.class_names) == 1000
    assert [s.class_names[i] for i in expected] == [NAMES[i] for i in expected]
    assert label_name in s.layout


def test_open_image_set_with_labels_option(tmp_path):
    write_val_folder(tmp_path / "val")
    label_file = tmp_path / "labels" / "my_labels.txt"  # any name works when passed explicitly
    label_file.parent.mkdir()
    label_file.write_text(VAL_TXT)
    s = open_image_set(str(tmp_path / "val"), options=InputOptions(labels=label_file))
    assert s.labels == VAL_TXT_LABELS
    assert s.class_names[0] == "tench" and s.class_names[1] == "goldfish"


def test_open_image_set_explicit_labels_for_non_ilsvrc_names(tmp_path):
    # explicit --labels works whatever the file names, matched by stem
    write_flat(tmp_path / "flat", 2, kind="pic")  # pic0.png, pic1.png
    lf = tmp_path / "val.txt"
    lf.write_text("pic0.JPEG 2\npic1.JPEG 281\n")
    s = open_image_set(str(tmp_path / "flat"), options=InputOptions(labels=lf))
    assert s.labels == [2, 281]


def test_label_file_auto_detected_inside_folder(tmp_path):
    write_val_folder(tmp_path / "val")
    (tmp_path / "val" / "LOC_val_solution.csv").write_text(LOC_CSV)
    s = open_image_set(str(tmp_path / "val"))
    assert s.labels == LOC_LABELS
    assert len(s.files) == 3  # the csv is not an image
    assert len(s.class_names) == 1000 and s.class_names[1] == "goldfish"


def test_label_file_auto_detected_in_parent(tmp_path):
    write_val_folder(tmp_path / "imagenet" / "val")
    (tmp_path / "imagenet" / "val.txt").write_text(VAL_TXT)
    s = open_image_set(str(tmp_path / "imagenet" / "val"))
    assert s.labels == VAL_TXT_LABELS
    assert s.classes[65] == SEA_SNAKE and s.class_names[65] == "sea snake"


def test_label_file_inside_folder_wins_over_parent(tmp_path):
    folder = tmp_path / "imagenet" / "val"
    write_val_folder(folder)
    (folder / "val.txt").write_text(VAL_TXT)
    (tmp_path / "imagenet" / "LOC_val_solution.csv").write_text(LOC_CSV)
    assert find_label_file(folder) == folder / "val.txt"
    assert open_image_set(str(folder)).labels == VAL_TXT_LABELS


def test_find_label_file_none(tmp_path):
    write_val_folder(tmp_path / "val")
    assert find_label_file(tmp_path / "val") is None
    assert open_image_set(str(tmp_path / "val")).labels is None


def test_image_missing_from_label_file_is_refused(tmp_path):
    write_val_folder(tmp_path / "val", numbers=(1, 2, 3, 4))
    (tmp_path / "val" / "val.txt").write_text(VAL_TXT)  # no line for 00000004
    with pytest.raises(UsageError) as ei:
        open_image_set(str(tmp_path / "val"))
    assert "1 of 4 images" in ei.value.message
    assert "ILSVRC2012_val_00000004" in ei.value.message


@pytest.mark.parametrize(
    "text,line",
    [
        ("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG\n", 2),  # no index
        ("ILSVRC2012_val_00000001.JPEG 1\n\nILSVRC2012_val_00000002.JPEG 1000\n", 3),  # index out of range
        ("ILSVRC2012_val_00000001.JPEG -1\n", 1),
        ("ILSVRC2012_val_00000001.JPEG one\n", 1),
        ("ILSVRC2012_val_00000001.JPEG 1 extra\n", 1),
    ],
)
def test_val_txt_malformed_line_names_file_and_line(tmp_path, text, line):
    f = tmp_path / "val.txt"
    f.write_text(text)
    with pytest.raises(UsageError) as ei:
        read_label_file(f)
    assert f"{f}:{line}:" in ei.value.message


def test_val_txt_double_minus_index_is_a_usage_error(tmp_path):
    # `"--5".lstrip("-").isdigit()` is True but int("--5") raises ValueError: must be a UsageError
    f = tmp_path / "val.txt"
    f.write_text("ILSVRC2012_val_00000001.JPEG --5\n")
    with pytest.raises(UsageError) as ei:
        read_label_file(f)
    assert f"{f}:1:" in ei.value.message


@pytest.mark.parametrize(
    "row",
    ["ILSVRC2012_val_00000002,n99999999 1 1 5 5", "ILSVRC2012_val_00000002,", ",n01440764 1 1 5 5"],
)
def test_loc_solution_malformed_row_names_file_and_line(tmp_path, row):
    f = tmp_path / "LOC_val_solution.csv"
    f.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{TENCH} 1 1 5 5\n{row}\n")
    with pytest.raises(UsageError) as ei:
        read_label_file(f)
    assert f"{f}:3:" in ei.value.message


def test_empty_val_txt_is_refused(tmp_path):
    f = tmp_path / "val.txt"
    f.write_text("\n\n")
    with pytest.raises(UsageError, match="empty"):
        read_label_file(f)


def test_devkit_ground_truth_is_refused(tmp_path):
    write_val_folder(tmp_path / "val")
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n361\n171\n")
    with pytest.raises(UsageError) as ei:
        read_label_file(gt)
    assert "meta.mat" in ei.value.message
    assert "LOC_val_solution.csv" in ei.value.hint
    with pytest.raises(UsageError, match="meta.mat"):
        open_image_set(str(tmp_path / "val"), options=InputOptions(labels=gt))


def test_devkit_ground_truth_beside_folder_is_not_auto_used(tmp_path):
    write_val_folder(tmp_path / "val")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n361\n171\n")
    s = open_image_set(str(tmp_path / "val"))
    assert s.labels is None


def test_missing_label_file_is_usage_error(tmp_path):
    write_val_folder(tmp_path / "val")
    with pytest.raises(UsageError):
        open_image_set(str(tmp_path / "val"), options=InputOptions(labels=tmp_path / "nope.csv"))


def test_flat_folder_not_named_ilsvrc_ignores_val_txt(tmp_path):
    write_flat(tmp_path / "ood", 3)  # ood0.png ...
    (tmp_path / "val.txt").write_text("ood0.png 1\nood1.png 2\nood2.png 3\n")
    (tmp_path / "ood" / "val.txt").write_text("ood0.png 1\nood1.png 2\nood2.png 3\n")
    s = open_image_set(str(tmp_path / "ood"))
    assert s.labels is None
    assert s.class_names == [] and s.classes == []
    assert (tmp_path / "ood" / "val.txt", REASON_NOT_IMAGE) in s.skipped


def test_labels_option_on_a_tree_is_refused(tmp_path):
    write_tree(tmp_path / "tree", {"cat": 1, "dog": 1}, corrupt=False, junk=False)
    lf = tmp_path / "val.txt"
    lf.write_text("img0.png 1\n")
    with pytest.raises(UsageError, match="--labels"):
        open_image_set(str(tmp_path / "tree"), options=InputOptions(labels=lf))


# ---------------------------------------------------------------------------------------------
# 2. as_imagenet_1k


def test_as_imagenet_1k_reindexes_a_wnid_subset(tmp_path):
    write_tree(tmp_path / "sub", {GOLDFISH: 2, TABBY: 3}, corrupt=False, junk=False)
    s = scan_folder(tmp_path / "sub")
    assert s.labels == [0, 0, 1, 1, 1]  # indices into the 2 folders
    full = as_imagenet_1k(s)
    by_file = dict(zip(full.files, full.labels))
    assert by_file[tmp_path / "sub" / GOLDFISH / "img0.png"] == 1
    assert by_file[tmp_path / "sub" / TABBY / "img0.png"] == 281
    assert full.labels == [1, 1, 281, 281, 281]
    assert full.files == s.files
    assert len(full.classes) == 1000 and full.classes[1] == GOLDFISH
    assert len(full.class_names) == 1000 and full.class_names[1] == "goldfish" and full.class_names[0] == "tench"


def test_as_imagenet_1k_unlabelled_gets_the_1000_names(tmp_path):
    s = scan_folder(write_flat(tmp_path / "ood", 2).root)
    full = as_imagenet_1k(s)
    assert full.labels is None and full.classes == []
    assert len(full.class_names) == 1000
    assert full.class_names[0] == "tench" and full.class_names[1] == "goldfish"


def test_as_imagenet_1k_refuses_non_wnid_classes(tmp_path):
    s = scan_folder(write_tree(tmp_path / "pets", {"cat": 1, "dog": 1}, corrupt=False, junk=False).root)
    with pytest.raises(UsageError) as ei:
        as_imagenet_1k(s)
    assert "2 classes" in ei.value.message


def test_as_imagenet_1k_refuses_unknown_wnids(tmp_path):
    s = scan_folder(write_tree(tmp_path / "w", {TENCH: 1, "n99999999": 1}, corrupt=False, junk=False).root)
    with pytest.raises(UsageError):
        as_imagenet_1k(s)


def test_as_imagenet_1k_keeps_indices_of_a_1000_class_list(tmp_path):
    write_flat(tmp_path / "imgs", 2, kind="x")
    lst = tmp_path / "list.txt"
    lst.write_text("imgs/x0.png 281\nimgs/x1.png 2\n")
    s = read_imglist(lst)
    full = as_imagenet_1k(s)
    assert full.labels == [281, 2]
    assert full.classes[281] == TABBY and full.class_names[281] == "tabby cat"


# ---------------------------------------------------------------------------------------------
# 3. names_for_classes


def test_names_for_wnid_subset_are_imagenet_names():
    assert names_for_classes([GOLDFISH, TENCH, TABBY]) == ["goldfish", "tench", "tabby cat"]


def test_names_for_wnid_subset_via_scan_folder(tmp_path):
    s = scan_folder(write_tree(tmp_path / "in100", {SHARK: 1, TENCH: 1}, corrupt=False, junk=False).root)
    assert s.classes == [TENCH, SHARK]
    assert s.class_names == ["tench", "great white shark"]


def test_names_for_non_wnid_folders_keep_names():
    assert names_for_classes(["golden_retriever", "cat"]) == ["golden retriever", "cat"]
    assert names_for_classes(["n99999999"]) == ["n99999999"]  # looks like a wnid but is not ImageNet-1k
    assert names_for_classes([TENCH, "other_thing"]) == [TENCH, "other thing"]


# ---------------------------------------------------------------------------------------------
# 4. OpenOOD image lists


@pytest.fixture
def list_root(tmp_path) -> Path:
    root = tmp_path / "images_largescale"
    for rel in ["ssb_hard/n01/a.JPEG", "ssb_hard/n01/b.JPEG", "ninco/c.png", "my dir/my file.png"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        make_image("list", len(rel), 16).save(p, format="PNG" if rel.endswith(".png") else "JPEG")
    return root


def test_imglist_paths_under_data_root(tmp_path, list_root):
    lst = tmp_path / "benchmark_imglist" / "test_x.txt"
    lst.parent.mkdir()
    lst.write_text("ssb_hard/n01/b.JPEG 5\nninco/c.png 3\nssb_hard/n01/a.JPEG 7\n")
    s = read_imglist(lst, data_root=list_root)
    # file order is kept (b before a), not sorted
    assert s.files == [list_root / "ssb_hard/n01/b.JPEG", list_root / "ninco/c.png", list_root / "ssb_hard/n01/a.JPEG"]
    assert all(p.is_absolute() for p in s.files)
    assert s.labels == [5, 3, 7]
    assert s.name == "test_x"
    assert s.root == list_root
    assert s.source == str(lst)
    assert s.skipped == []


def test_imglist_default_data_root_is_the_list_folder(list_root):
    lst = list_root / "list.lst"
    lst.write_text("ninco/c.png -1\n")
    s = read_imglist(lst)
    assert s.files == [list_root / "ninco" / "c.png"]
    assert s.root == list_root


def test_imglist_separators_spaces_comments(list_root):
    lst = list_root / "l.txt"
    lst.write_text(
        "# an OpenOOD list\n"
        "\n"
        "ssb_hard/n01/a.JPEG\t1\n"
        "   ssb_hard/n01/b.JPEG     2   \n"
        "my dir/my file.png 3\n"
        "\t\n"
        "ninco/c.png \t 4\r\n"
    )
    s = read_imglist(lst)
    assert s.files == [
        list_root / "ssb_hard/n01/a.JPEG",
        list_root / "ssb_hard/n01/b.JPEG",
        list_root / "my dir" / "my file.png",
        list_root / "ninco/c.png",
    ]
    assert s.labels == [1, 2, 3, 4]


def test_imglist_missing_files_are_skipped_with_reason(list_root):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 1\nninco/gone.png 2\nssb_hard/n01/a.JPEG 3\n")
    s = read_imglist(lst)
    assert s.files == [list_root / "ninco/c.png", list_root / "ssb_hard/n01/a.JPEG"]
    assert s.labels == [1, 3]  # the missing line's label goes with it
    assert s.skipped == [(list_root / "ninco/gone.png", REASON_MISSING)]


def test_imglist_all_missing_is_refused_with_data_root_hint(tmp_path, list_root):
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lst.write_text("ninco/c.png -1\nssb_hard/n01/a.JPEG -1\n")  # relative to list_root, not to lists/
    with pytest.raises(UsageError) as ei:
        read_imglist(lst)
    assert "2 files" in ei.value.message
    assert "--data-root" in ei.value.hint
    assert read_imglist(lst, data_root=list_root).files  # the right root works


@pytest.mark.parametrize("bad,line", [("ninco/c.png x1", 3), ("ninco/c.png 1.5", 3), ("ninco/c.png", 3)])
def test_imglist_bad_line_names_line_number(list_root, bad, line):
    lst = list_root / "l.txt"
    lst.write_text(f"# header\nssb_hard/n01/a.JPEG 1\n{bad}\n")
    with pytest.raises(UsageError) as ei:
        read_imglist(lst)
    assert f"{lst}:{line}:" in ei.value.message


def test_imglist_double_minus_label_is_a_usage_error(list_root):
    # `"--1".lstrip("-").isdigit()` is True but int("--1") raises ValueError: must be a UsageError
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png --1\n")
    with pytest.raises(UsageError) as ei:
        read_imglist(lst)
    assert f"{lst}:1:" in ei.value.message


def test_imglist_only_comments_is_refused(list_root):
    lst = list_root / "l.txt"
    lst.write_text("# nothing\n\n")
    with pytest.raises(UsageError):
        read_imglist(lst)


def test_imglist_labels_below_1000_are_imagenet(list_root):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 0\nssb_hard/n01/a.JPEG 999\n")
    s = read_imglist(lst)
    assert s.labels == [0, 999]
    assert len(s.class_names) == 1000 and len(s.classes) == 1000
    assert s.class_names[0] == "tench" and s.class_names[1] == "goldfish" and s.class_names[999] == "toilet paper"


def test_imglist_any_negative_label_is_unlabelled(list_root):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 3\nssb_hard/n01/a.JPEG -1\n")
    s = read_imglist(lst)
    assert s.labels is None
    assert len(s.files) == 2


def test_imglist_label_beyond_class_names_is_refused(list_root):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 0\nssb_hard/n01/a.JPEG 2\n")
    with pytest.raises(UsageError, match="label 2"):
        read_imglist(lst, class_names=["a", "b"])
    s = read_imglist(lst, class_names=["a", "b", "c"])
    assert s.labels == [0, 2] and s.class_names == ["a", "b", "c"]


def test_imglist_label_1000_needs_classnames(list_root):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 1000\n")
    with pytest.raises(UsageError, match="--classnames"):
        read_imglist(lst)


def test_imglist_missing_data_root_is_refused(list_root, tmp_path):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png 1\n")
    with pytest.raises(UsageError, match="data-root"):
        read_imglist(lst, data_root=tmp_path / "nope")


def test_open_image_set_list_with_data_root_and_classnames(tmp_path, list_root):
    lst = tmp_path / "l.txt"
    lst.write_text("ninco/c.png 1\nssb_hard/n01/a.JPEG 0\n")
    names = tmp_path / "names.txt"
    names.write_text("alpha\nbeta\n")
    s = open_image_set(str(lst), name="mylist", options=InputOptions(data_root=list_root, classnames=names))
    assert s.name == "mylist"
    assert s.files == [list_root / "ninco/c.png", list_root / "ssb_hard/n01/a.JPEG"]
    assert s.labels == [1, 0] and s.class_names == ["alpha", "beta"]


# ---------------------------------------------------------------------------------------------
# 5. tables: save_to_disk, DatasetDict, Parquet, hf:


IMAGENET_STYLE_NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great_white_shark, white shark"]


@pytest.fixture
def pngs() -> list[bytes]:
    return [png_bytes("row", i) for i in range(4)]


def test_save_to_disk_with_image_and_classlabel(tmp_path, pngs):
    from synood_cli.data.table_images import is_table_source, read_table_set

    folder = tmp_path / "saved"
    image_dataset(pngs, [0, 1, 2, 0], IMAGENET_STYLE_NAMES).save_to_disk(str(folder))
    assert is_table_source(str(folder))
    s = read_table_set(str(folder))
    assert list(s.labels) == [0, 1, 2, 0]
    assert s.class_names == ["tench", "goldfish", "great white shark"]
    assert s.classes == ["0", "1", "2"]
    assert [str(f) for f in s.files] == [f"{folder}#{i}" for i in range(4)]
    assert s.name == "saved"
    assert s.reader is not None and len(s.reader) == 4
    assert [s.reader.read(i) for i in range(4)] == pngs


def test_open_image_set_dispatches_tables(tmp_path, pngs):
    folder = tmp_path / "saved"
    image_dataset(pngs, [2, 1, 0, 0], IMAGENET_STYLE_NAMES).save_to_disk(str(folder))
    s = open_image_set(str(folder), name="t")
    assert s.name == "t" and list(s.labels) == [2, 1, 0, 0] and s.reader.read(3) == pngs[3]


def test_dataset_dict_folder_is_refused_with_split_hint(tmp_path, pngs):
    import datasets

    from synood_cli.data.table_images import is_table_source, read_table_set

    folder = tmp_path / "dd"
    ds = image_dataset(pngs, [0, 1, 2, 0], IMAGENET_STYLE_NAMES)
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(folder))
    assert is_table_source(str(folder))
    with pytest.raises(UsageError) as ei:
        read_table_set(str(folder))
    assert "test" in ei.value.message and "train" in ei.value.message
    hinted = [str(folder / split) for split in ("test", "train") if str(folder / split) in ei.value.hint]
    assert hinted, ei.value.hint
    # the hinted split folder really loads
    s = read_table_set(hinted[0])
    assert len(s.files) in (2, 4)


def test_single_parquet_file(tmp_path, pngs):
    from synood_cli.data.table_images import is_table_source, read_table_set

    f = tmp_path / "val.parquet"
    image_dataset(pngs, [1, 0, 1, 2], IMAGENET_STYLE_NAMES).to_parquet(str(f))
    assert is_table_source(str(f))
    s = read_table_set(str(f))
    assert list(s.labels) == [1, 0, 1, 2]
    assert s.class_names == ["tench", "goldfish", "great white shark"]
    assert [s.reader.read(i) for i in range(4)] == pngs
    assert [str(p) for p in s.files] == [f"{f}#{i}" for i in range(4)]
    assert s.name == "val"


def test_folder_of_parquet_shards(tmp_path):
    from synood_cli.data.table_images import is_table_source, read_table_set

    folder = tmp_path / "shards"
    (folder / "data").mkdir(parents=True)
    all_bytes = []
    for k, n in enumerate([2, 3, 4]):
        rows = [png_bytes(f"shard{k}", i) for i in range(n)]
        all_bytes += rows
        image_dataset(rows).to_parquet(str(folder / "data" / f"test-{k:05d}-of-00003.parquet"))
    (folder / "README.md").write_text("a dataset card")
    assert is_table_source(str(folder))
    s = read_table_set(str(folder))
    assert len(s.files) == 9 == len(s.reader)
    assert s.labels is None
    assert sorted(s.reader.read(i) for i in range(9)) == sorted(all_bytes)
    assert "3 files" in s.layout


def test_folder_with_images_and_parquet_is_not_a_table(tmp_path, pngs):
    from synood_cli.data.table_images import is_table_source

    folder = write_flat(tmp_path / "mixed", 2).root
    image_dataset(pngs).to_parquet(str(folder / "extra.parquet"))
    assert not is_table_source(str(folder))
    s = open_image_set(str(folder))
    assert s.reader is None
    assert len(s.files) == 2
    assert (folder / "extra.parquet", REASON_NOT_IMAGE) in s.skipped


def test_is_table_source_negatives(tmp_path):
    from synood_cli.data.table_images import is_table_source

    (tmp_path / "x.txt").write_text("a 1\n")
    write_flat(tmp_path / "flat", 1)
    assert not is_table_source(str(tmp_path / "x.txt"))
    assert not is_table_source(str(tmp_path / "flat"))
    assert not is_table_source(str(tmp_path / "does-not-exist"))
    assert is_table_source("hf:org/name:test")


def test_ambiguous_image_columns_refused_then_image_column_picks(tmp_path, pngs):
    import datasets

    from synood_cli.data.table_images import read_table_set

    other = [png_bytes("other", i) for i in range(4)]
    f = tmp_path / "two.parquet"
    image_dataset(pngs, extra={"thumb": ([{"bytes": b, "path": None} for b in other], datasets.Image())}).to_parquet(str(f))
    with pytest.raises(UsageError) as ei:
        read_table_set(str(f))
    assert "image" in ei.value.hint and "thumb" in ei.value.hint
    s = read_table_set(str(f), image_column="thumb")
    assert [s.reader.read(i) for i in range(4)] == other
    s = read_table_set(str(f), image_column="image")
    assert [s.reader.read(i) for i in range(4)] == pngs


def test_ambiguous_binary_columns_refused(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "bin2.parquet"
    binary_dataset({"a": pngs, "b": pngs[::-1]}).to_parquet(str(f))
    with pytest.raises(UsageError) as ei:
        read_table_set(str(f))
    assert "a, b" in ei.value.hint
    assert read_table_set(str(f), image_column="b").reader.read(0) == pngs[3]


def test_binary_column_of_png_bytes(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "bin.parquet"
    binary_dataset({"png": pngs, "caption": ["a", "b", "c", "d"]}).to_parquet(str(f))
    s = read_table_set(str(f))
    assert s.labels is None and s.classes == []
    assert [s.reader.read(i) for i in range(4)] == pngs
    with Image.open(io.BytesIO(s.reader.read(2))) as im:
        assert im.size == (16, 16)


def test_no_image_column_at_all_is_refused(tmp_path):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "text.parquet"
    binary_dataset({"caption": ["a", "b"], "n": [1, 2]}).to_parquet(str(f))
    with pytest.raises(UsageError) as ei:
        read_table_set(str(f))
    assert "caption" in ei.value.hint and "n" in ei.value.hint


def test_label_column_integer_uses_imagenet_names(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "lab.parquet"
    binary_dataset({"png": pngs, "cls": [281, 0, 1, 999]}).to_parquet(str(f))
    s = read_table_set(str(f))
    assert s.labels is None  # a plain int column is not a label column unless named
    s = read_table_set(str(f), label_column="cls")
    assert list(s.labels) == [281, 0, 1, 999]
    assert len(s.class_names) == 1000 and s.class_names[281] == "tabby cat" and s.class_names[0] == "tench"


def test_label_column_with_minus_one_is_unlabelled(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "ood.parquet"
    binary_dataset({"png": pngs, "cls": [-1, -1, -1, -1]}).to_parquet(str(f))
    assert read_table_set(str(f), label_column="cls").labels is None


@pytest.mark.parametrize("column,values", [("caption", ["a", "b", "c", "d"]), ("score", [0.5, 1.0, 2.0, 3.0])])
def test_label_column_not_integer_is_refused(tmp_path, pngs, column, values):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "lab.parquet"
    binary_dataset({"png": pngs, column: values}).to_parquet(str(f))
    with pytest.raises(UsageError) as ei:
        read_table_set(str(f), label_column=column)
    assert column in ei.value.message


def test_named_column_missing_lists_columns(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "t.parquet"
    binary_dataset({"png": pngs, "cls": [0, 1, 2, 3]}).to_parquet(str(f))
    for kw in ({"image_column": "img"}, {"label_column": "label"}):
        with pytest.raises(UsageError) as ei:
            read_table_set(str(f), **kw)
        assert "png" in ei.value.hint and "cls" in ei.value.hint


def test_classnames_option_names_table_labels(tmp_path, pngs):
    f = tmp_path / "t.parquet"
    binary_dataset({"png": pngs, "cls": [0, 1, 1, 0]}).to_parquet(str(f))
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    s = open_image_set(str(f), options=InputOptions(label_column="cls", classnames=names))
    assert s.class_names == ["cat", "dog"] and list(s.labels) == [0, 1, 1, 0]
    names.write_text("cat\n")
    with pytest.raises(UsageError):
        open_image_set(str(f), options=InputOptions(label_column="cls", classnames=names))


def test_plain_pyarrow_parquet_binary_and_struct_columns(tmp_path, pngs):
    """Parquet written without `datasets` metadata: a binary column is found; a struct needs --image-column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synood_cli.data.table_images import read_table_set

    pq.write_table(pa.table({"img": pa.array(pngs, type=pa.binary()), "y": pa.array([5, 0, 5, 1])}), tmp_path / "b.parquet")
    s = read_table_set(str(tmp_path / "b.parquet"), label_column="y")
    assert [s.reader.read(i) for i in range(4)] == pngs
    assert list(s.labels) == [5, 0, 5, 1]
    assert s.class_names[5] == "electric ray" and s.class_names[1] == "goldfish"

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = pa.array([{"bytes": b, "path": None} for b in pngs], type=struct)
    pq.write_table(pa.table({"image": rows, "label": pa.array([1, 2, 3, 4])}), tmp_path / "s.parquet")
    s = read_table_set(str(tmp_path / "s.parquet"), image_column="image")
    assert [s.reader.read(i) for i in range(4)] == pngs


def test_classlabel_with_minus_one_is_unlabelled(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    folder = tmp_path / "test_split"
    image_dataset(pngs, [-1, -1, -1, -1], IMAGENET_STYLE_NAMES).save_to_disk(str(folder))
    s = read_table_set(str(folder))
    assert s.labels is None and s.classes == []
    assert s.reader.read(0) == pngs[0]


def test_hf_local_parquet_folder_offline(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    folder = tmp_path / "hub_like"
    folder.mkdir()
    image_dataset(pngs[:2], [0, 1], IMAGENET_STYLE_NAMES).to_parquet(str(folder / "part-0.parquet"))
    image_dataset(pngs[2:], [2, 2], IMAGENET_STYLE_NAMES).to_parquet(str(folder / "part-1.parquet"))
    s = read_table_set(f"hf:{folder}")
    assert len(s.files) == 4
    names = [str(p) for p in s.files]
    assert all(n.startswith(f"hf:{folder}") for n in names)
    assert [n.rsplit("#", 1)[1] for n in names] == ["0", "1", "2", "3"]
    assert sorted(s.reader.read(i) for i in range(4)) == sorted(pngs)
    assert sorted(s.labels) == [0, 1, 2, 2]
    s2 = read_table_set(f"hf:{folder}:train")
    assert len(s2.files) == 4
    assert str(s2.files[0]) == f"hf:{folder}:train#0"


def test_hf_unknown_split_is_usage_error(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    folder = tmp_path / "hub_like"
    folder.mkdir()
    image_dataset(pngs).to_parquet(str(folder / "part-0.parquet"))
    with pytest.raises((UsageError, ResourceMissing)) as ei:
        read_table_set(f"hf:{folder}:validation")
    assert isinstance(ei.value, UsageError), ei.value.message


def test_hf_not_cached_offline_is_resource_missing_fast(monkeypatch):
    """Fast because offline means no network at all: no lookup, no connection, so no retries or timeouts."""
    import socket

    from synood_cli.data.table_images import read_table_set

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network used while offline")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ResourceMissing) as ei:
        read_table_set("hf:someorg/definitely-not-cached:test")
    assert attempts == []
    assert ei.value.exit_code == 3
    assert "someorg/definitely-not-cached" in ei.value.message
    assert "offline" in ei.value.message


def test_hf_without_name_is_usage_error():
    from synood_cli.data.table_images import read_table_set

    with pytest.raises(UsageError):
        read_table_set("hf:")


def test_corrupt_parquet_is_usage_error(tmp_path):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "broken.parquet"
    f.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(UsageError):
        read_table_set(str(f))


def test_table_images_reads_path_only_rows(tmp_path):
    import datasets

    from synood_cli.data.table_images import TableImages

    p = tmp_path / "x.png"
    make_image("path", 0, 16).save(p)
    ds = datasets.Dataset.from_dict({"image": [str(p)]}, features=datasets.Features({"image": datasets.Image(decode=False)}))
    assert TableImages(ds, "image").read(0) == p.read_bytes()


def test_table_reader_pickles(tmp_path, pngs):
    from synood_cli.data.table_images import read_table_set

    f = tmp_path / "t.parquet"
    image_dataset(pngs, [0, 1, 2, 0], IMAGENET_STYLE_NAMES).to_parquet(str(f))
    reader = read_table_set(str(f)).reader
    clone = pickle.loads(pickle.dumps(reader))
    assert len(clone) == 4
    assert [clone.read(i) for i in range(4)] == pngs


def test_loading_table_rows_with_one_garbage_row(tmp_path, pngs):
    import torch

    from synood_cli.data.loading import iterate_batches
    from synood_cli.data.table_images import read_table_set

    rows = [pngs[0], b"this is not an image at all", pngs[1], pngs[2], pngs[3]]
    f = tmp_path / "rows.parquet"
    binary_dataset({"png": rows}).to_parquet(str(f))
    s = read_table_set(str(f))
    batches = list(iterate_batches(s.files, tiny_transform, batch_size=2, reader=s.reader))
    assert [len(b[1]) for b in batches] == [2, 2, 1]
    images = torch.cat([b[0] for b in batches])
    indices = torch.cat([b[1] for b in batches]).tolist()
    errors = [e for b in batches for e in b[2]]
    assert indices == [0, 1, 2, 3, 4]
    assert [i for i, e in enumerate(errors) if e] == [1]
    assert isinstance(errors[1], str) and errors[1]
    assert "BytesIO object at" not in errors[1]
    assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
    for i, data in enumerate(rows):
        if i == 1:
            assert torch.count_nonzero(images[i]) == 0
            continue
        with Image.open(io.BytesIO(data)) as im:
            expected = tiny_transform(im.convert("RGB"))
        assert torch.equal(images[i], expected), i


# ---------------------------------------------------------------------------------------------
# 7. open_inputs and resolve_spec_path


def test_open_inputs_keeps_argument_order_and_groups_loose_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = write_flat(tmp_path / "a", 2, kind="a").root
    b = write_tree(tmp_path / "b", {"cat": 1, "dog": 1}, corrupt=False, junk=False).root
    loose = write_flat(tmp_path / "loose", 3, kind="l").good
    readme = tmp_path / "README.md"
    readme.write_text("# notes")
    specs = [str(a), "loose/l0.png", str(loose[1]), str(readme), str(b), str(loose[2])]
    sets, skipped = open_inputs(specs)
    assert len(sets) == 4
    assert sets[0].root == a and len(sets[0].files) == 2
    assert sets[1].files == [loose[0], loose[1]]  # relative path made absolute
    assert sets[1].labels is None and sets[1].name == "files"
    assert sets[2].root == b and sets[2].labels == [0, 1]
    assert sets[3].files == [loose[2]]
    assert sets[3].name != sets[1].name
    assert skipped == [(readme, REASON_NOT_IMAGE)]


def test_open_inputs_only_loose_files(tmp_path):
    loose = write_flat(tmp_path / "loose", 2).good
    sets, skipped = open_inputs([str(p) for p in loose])
    assert len(sets) == 1 and sets[0].files == loose and skipped == []


def test_open_inputs_missing_folder_raises(tmp_path):
    a = write_flat(tmp_path / "a", 1).root
    with pytest.raises(UsageError):
        open_inputs([str(a), str(tmp_path / "missing")])


def test_open_inputs_nothing_to_score(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x")
    with pytest.raises(UsageError, match="no images"):
        open_inputs([str(readme)])


def test_open_inputs_list_and_parquet(tmp_path, list_root, pngs):
    lst = list_root / "l.txt"
    lst.write_text("ninco/c.png -1\n")
    pq = tmp_path / "t.parquet"
    binary_dataset({"png": pngs}).to_parquet(str(pq))
    sets, skipped = open_inputs([str(pq), str(lst)])
    assert skipped == []
    assert sets[0].reader is not None and len(sets[0].files) == 4
    assert sets[1].reader is None and sets[1].files == [list_root / "ninco" / "c.png"]


def test_resolve_spec_path(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "cwd" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_spec_path("sub", root) == str(root / "sub")
    assert resolve_spec_path("here", root) == "here"  # exists as given
    assert resolve_spec_path("nowhere", root) == "nowhere"
    assert resolve_spec_path("sub", None) == "sub"
    assert resolve_spec_path("hf:sub", root) == "hf:sub"
    assert resolve_spec_path(str(tmp_path / "x"), root) == str(tmp_path / "x")


def test_open_image_set_relative_specs_under_data_root(tmp_path, monkeypatch, list_root):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    lists = list_root / "benchmark_imglist"
    lists.mkdir()
    (lists / "ninco.txt").write_text("ninco/c.png -1\nssb_hard/n01/a.JPEG -1\n")
    opts = InputOptions(data_root=list_root)
    s = open_image_set("benchmark_imglist/ninco.txt", options=opts)
    assert s.files == [list_root / "ninco/c.png", list_root / "ssb_hard/n01/a.JPEG"]
    assert s.labels is None
    s = open_image_set("ssb_hard", options=opts)
    assert s.root == list_root / "ssb_hard" and s.classes == ["n01"]
    with pytest.raises(UsageError):
        open_image_set("ssb_hard")  # not under the cwd without --data-root


def test_open_image_set_refuses_a_plain_file(tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        open_image_set(str(f))
