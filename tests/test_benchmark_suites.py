"""`synood evaluate --benchmark` (named suites), image lists and table inputs, `synood score --imglist`.

Every suite is built on disk in tmp_path, a few images per set, in the layouts the suites document:
an ImageNet val tree of wnid folders, a flat val folder with LOC_val_solution.csv or val.txt, the
usual OOD folder spellings, OpenOOD v1.5 image lists, save_to_disk folders and Parquet files.

The ID labels are chosen so that the expected top-1 accuracy is known: the four ID images are
scored once (tiny profile, the 1000 ImageNet-1k names), then images 0-2 are labelled with their
predicted class and image 3 with the next class, so every labelled layout must give exactly 75 %
accuracy (a label map shifted by one class gives 25 % or 0 %). That only holds if a layout maps its
labels (wnid folders, wnids in the CSV, indices in val.txt or the image list) onto the standard
sorted-wnid class order.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_clean_error, make_image, truncated_jpeg_bytes

TINY = ["--profile", "tiny"]
MOS_KEYS = ["inaturalist", "sun", "places", "textures"]
METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_ood_positive")


def _wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in sorted order, read from timm's data file (not from synood)."""
    spec = importlib.util.find_spec("timm")
    for loc in spec.submodule_search_locations:
        path = Path(loc, "data", "_info", "imagenet_synsets.txt")
        if path.is_file():
            return sorted(path.read_text().split())
    raise AssertionError("timm's imagenet_synsets.txt not found")


WNIDS = _wnids()


# -- fixtures and builders -------------------------------------------------------------------


@dataclass
class IdImages:
    files: list[Path]  # four JPEGs named ILSVRC2012_val_0000000{1..4}.JPEG
    preds: list[int]  # the tiny model's predicted ImageNet-1k class per image
    labels: list[int]  # preds for images 0-2, pred + 1 for image 3: accuracy 0.75


@pytest.fixture(scope="module")
def id_images(tmp_path_factory, shared_home) -> IdImages:
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    src = tmp_path_factory.mktemp("id-src")
    files = []
    for i in range(4):
        p = src / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        make_image("imagenet-val", i).save(p, format="JPEG")
        files.append(p)
    env = {"SYNOOD_HOME": str(shared_home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = CliRunner().invoke(app, ["score", *map(str, files), *TINY, "--format", "jsonl"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    by_name = {Path(row["path"]).name: int(row["pred_class"]) for row in rows}
    preds = [by_name[f.name] for f in files]
    labels = [preds[0], preds[1], preds[2], (preds[3] + 1) % 1000]
    return IdImages(files, preds, labels)


def _put(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _image(dst: Path, kind: str, seed: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    make_image(kind, seed).save(dst, format="PNG" if dst.suffix == ".png" else "JPEG")
    return dst


def id_tree(root: Path, ids: IdImages, rel: str = "imagenet/val") -> Path:
    for f, label in zip(ids.files, ids.labels):
        _put(f, root / rel / WNIDS[label] / f.name)
    return root / rel


def id_flat_loc(root: Path, ids: IdImages, rel: str = "ILSVRC2012/val") -> Path:
    folder = root / rel
    for f in ids.files:
        _put(f, folder / f.name)
    # Kaggle's format: ImageId without extension, PredictionString = boxes "wnid x0 y0 x1 y1 ..."; rows in another order
    lines = ["ImageId,PredictionString"] + [
        f"{f.stem},{WNIDS[label]} 10 12 40 44 {WNIDS[label]} 1 2 30 31" for f, label in reversed(list(zip(ids.files, ids.labels)))
    ]
    (folder / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    return folder


def id_flat_valtxt(root: Path, ids: IdImages, rel: str = "val") -> Path:
    folder = root / rel
    for f in ids.files:
        _put(f, folder / f.name)
    order = [2, 0, 3, 1]
    (folder.parent / "val.txt").write_text("".join(f"{ids.files[i].name} {ids.labels[i]}\n" for i in order))  # beside the folder
    return folder


MOS_FOLDERS = {"inaturalist": "iNaturalist", "sun": "SUN", "places": "Places", "textures": "dtd/images"}
MOS_COUNTS = {"inaturalist": 3, "sun": 2, "places": 4, "textures": 3}


def mos_ood(root: Path, folders: dict | None = None, counts: dict | None = None) -> dict[str, Path]:
    """OOD folders of imagenet-mos; Textures in DTD's layout (class subfolders under dtd/images)."""
    folders = {**MOS_FOLDERS, **(folders or {})}
    counts = {**MOS_COUNTS, **(counts or {})}
    out = {}
    for key, rel in folders.items():
        if rel is None:
            continue
        for i in range(counts[key]):
            if key == "textures":
                cls = ["banded", "dotted"][i % 2]
                _image(root / rel / cls / f"{cls}_{i:04d}.jpg", key, i)
            else:
                _image(root / rel / f"{key}_{i}.jpg", key, i)
        out[key] = root / rel
    return out


def input_table(stderr: str) -> dict[str, dict]:
    """The stderr "inputs" table as {set name: {column: cell}}; folded cells are joined back."""
    header_lines, rows = [], []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("┃"):
            header_lines.append([c.strip() for c in line.strip("┃").split("┃")])
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                rows.append(cells)
            else:  # a folded cell continues on the next line
                rows[-1] = [a + b for a, b in zip(rows[-1], cells)]
    assert header_lines, stderr
    header = [" ".join(p for p in parts if p) for parts in zip(*header_lines)]
    return {r[1]: dict(zip(header, r)) for r in rows}


def table_row(stdout: str, label: str) -> list[str]:
    """Cells after the first of the stdout table row whose first cell is `label`."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def saved_scores(folder: Path, name: str) -> list[dict]:
    with open(folder / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def auroc(ids: list[float], ood: list[float]) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in ids for b in ood)
    return wins / (len(ids) * len(ood))


def fpr95_id_positive(ids: list[float], ood: list[float]) -> float:
    """Share of OOD scores at or above the threshold that keeps 95 % of ID."""
    k = math.ceil(0.95 * len(ids))
    threshold = sorted(ids, reverse=True)[k - 1]
    return sum(o >= threshold for o in ood) / len(ood)


def fpr95_ood_positive(ids: list[float], ood: list[float]) -> float:
    """OpenOOD v1.5: share of ID scores at or below the threshold that flags 95 % of OOD."""
    k = math.ceil(0.95 * len(ood))
    threshold = sorted(ood)[k - 1]
    return sum(s <= threshold for s in ids) / len(ids)


def suite_json(r) -> tuple[dict, dict, dict]:
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert list(body["methods"]) == ["neglabel"]
    return body, body["methods"]["neglabel"]["ood"], body["methods"]["neglabel"]["average"]


def check_average(per_set: dict, average: dict) -> None:
    for metric in METRICS:
        assert average[metric] == pytest.approx(sum(m[metric] for m in per_set.values()) / len(per_set), abs=1e-12)
    assert average["n_ood"] == sum(m["n_ood"] for m in per_set.values())


# -- imagenet-mos ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout,build,layout_cell",
    [
        ("tree", id_tree, "class folders"),
        ("loc", id_flat_loc, "flat + LOC_val_solution.csv"),
        ("valtxt", id_flat_valtxt, "flat + val.txt"),
    ],
)
def test_imagenet_mos_each_id_layout(invoke, shared_home, id_images, tmp_path, layout, build, layout_cell):
    root = tmp_path / "data"
    id_dir = build(root, id_images)
    ood = mos_ood(root)
    scores = tmp_path / "scores"
    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--format", "json",
               "--save-scores", str(scores), home=shared_home)
    body, per_set, average = suite_json(r)
    assert body["benchmark"] == "imagenet-mos" and body["fpr95_convention"] == "fpr95"
    assert "reference" not in body
    assert list(per_set) == MOS_KEYS  # the paper's column order
    assert body["id_images"] == 4
    assert body["id_accuracy"] == 0.75  # images 0-2 labelled with their prediction, 3 not
    check_average(per_set, average)

    # the inputs table, printed before the model loads: where each set was found and how many images
    table = input_table(r.stderr)
    assert list(table) == ["imagenet"] + MOS_KEYS
    assert table["imagenet"]["source"] == str(id_dir)
    assert table["imagenet"]["layout"] == layout_cell
    assert table["imagenet"]["images"] == "4"
    assert table["imagenet"]["expected"] == "50,000"
    for key in MOS_KEYS:
        assert table[key]["source"] == str(ood[key])
        assert table[key]["images"] == str(MOS_COUNTS[key])
        assert table[key]["status"] == "count differs"
    assert table["inaturalist"]["expected"] == "10,000" and table["textures"]["expected"] == "5,640"
    assert f"ImageNet-1k val: found 4 images in {id_dir}, the benchmark has 50,000" in r.stderr
    assert r.stderr.index("inputs") < r.stderr.index("loading CLIP")

    # every number follows from the per-image scores of the sets found where the table says
    id_rows = saved_scores(scores, "imagenet")
    assert {Path(x["path"]).name: int(x["pred_class"]) for x in id_rows} == {f.name: p for f, p in zip(id_images.files, id_images.preds)}
    id_s = [float(x["score"]) for x in id_rows]
    for key in MOS_KEYS:
        rows = saved_scores(scores, key)
        assert len(rows) == MOS_COUNTS[key] == per_set[key]["n_ood"]
        assert all(Path(x["path"]).is_relative_to(ood[key]) for x in rows)
        ood_s = [float(x["score"]) for x in rows]
        m = per_set[key]
        assert m["n_id"] == 4
        assert m["auroc"] == pytest.approx(auroc(id_s, ood_s), abs=1e-9)
        assert m["fpr95"] == pytest.approx(fpr95_id_positive(id_s, ood_s), abs=1e-12)
        assert m["fpr95_ood_positive"] == pytest.approx(fpr95_ood_positive(id_s, ood_s), abs=1e-12)


def test_imagenet_mos_folder_spellings(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    id_dir = id_tree(root, id_images, rel="id_data/ILSVRC-2012/val")
    spell = {"inaturalist": "inaturalist", "sun": "ood_data/SUN", "places": "Places365", "textures": "dtd/images"}
    ood = mos_ood(root, folders=spell)
    # decoys: later spellings of Textures must lose to dtd/images, which comes first
    for i in range(2):
        _image(root / "Textures" / f"decoy{i}.png", "decoy", i)
    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--format", "json", home=shared_home)
    body, per_set, _ = suite_json(r)
    table = input_table(r.stderr)
    assert table["imagenet"]["source"] == str(id_dir)
    for key in MOS_KEYS:
        assert table[key]["source"] == str(ood[key]), table[key]
        assert per_set[key]["n_ood"] == MOS_COUNTS[key]
    assert body["id_accuracy"] == 0.75


def test_find_ci_matches_each_component_case_insensitively(tmp_path):
    from synood_cli.suites import find_ci

    (tmp_path / "OOD_Data" / "sun").mkdir(parents=True)
    (tmp_path / "dtd" / "Images").mkdir(parents=True)
    assert find_ci(tmp_path, "ood_data/SUN") == tmp_path / "OOD_Data" / "sun"
    assert find_ci(tmp_path, "dtd/images") == tmp_path / "dtd" / "Images"
    assert find_ci(tmp_path, "dtd/labels") is None
    assert find_ci(tmp_path, "nothing/here") is None


def test_missing_ood_set_is_an_error_naming_where_it_looked(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    id_tree(root, id_images)
    mos_ood(root, folders={"places": None})
    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, home=shared_home)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    error = next(line for line in r.stderr.splitlines() if line.startswith("error:"))
    assert "1 of 4 OOD sets missing" in error and "Places" in error
    assert str(root / "Places") in error and str(root / "Places365") in error
    assert "--allow-partial" in r.stderr  # the hint
    table = input_table(r.stderr)  # the table comes first and shows what was found
    assert table["places"]["status"] == "missing" and table["places"]["images"] == "0"
    assert table["sun"]["images"] == "2"
    assert "loading CLIP" not in r.stderr  # refused before the model loads


def test_allow_partial_evaluates_the_sets_found(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    id_tree(root, id_images)
    mos_ood(root, folders={"places": None})
    args = ("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--allow-partial")
    r = invoke(*args, "--format", "json", home=shared_home)
    body, per_set, average = suite_json(r)
    assert list(per_set) == ["inaturalist", "sun", "textures"]
    check_average(per_set, average)
    assert average["n_ood"] == 3 + 2 + 3
    assert "evaluating 3 of 4 OOD sets (missing: Places)" in r.stderr

    t = invoke(*args, home=shared_home)
    assert t.returncode == 0, t.stderr
    ours = table_row(t.stdout, "neglabel (this run)")
    assert ours[4:6] == ["–", "–"]  # Places: FPR95, AUROC
    assert ours[2] == f"{100 * per_set['sun']['fpr95']:.2f}"
    assert ours[-1] == f"{100 * average['auroc']:.2f}"
    assert "not evaluated (--allow-partial): Places" in t.stdout


def test_missing_id_set_is_an_error_even_with_allow_partial(invoke, tmp_path):
    root = tmp_path / "data"
    mos_ood(root)
    for extra in ([], ["--allow-partial"]):
        r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, *extra)
        assert r.returncode == 2, r.stderr
        error = next(line for line in r.stderr.splitlines() if line.startswith("error:"))
        assert "the ID set (ImageNet-1k val) was not found" in error
        assert str(root / "imagenet" / "val") in error
        assert input_table(r.stderr)["imagenet"]["status"] == "missing"


def test_no_ood_set_at_all_with_allow_partial(invoke, id_images, tmp_path):
    root = tmp_path / "data"
    id_tree(root, id_images)
    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--allow-partial")
    assert r.returncode == 2
    assert "none of its OOD sets were found" in r.stderr


# -- published reference rows ---------------------------------------------------------------


def test_reference_rows_in_table_json_and_csv(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    id_flat_loc(root, id_images)
    mos_ood(root)
    args = ("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--reference")

    j = invoke(*args, "--format", "json", home=shared_home)
    body, per_set, average = suite_json(j)
    ref = body["reference"]
    # NegLabel (Jiang et al., ICLR 2024) Table 1, CLIP ViT-B/16
    assert ref["NegLabel"]["average"] == {"fpr95": 25.40, "auroc": 94.21}
    assert ref["NegLabel"]["inaturalist"] == {"fpr95": 1.91, "auroc": 99.49}
    assert ref["NegLabel"]["textures"] == {"fpr95": 43.56, "auroc": 90.22}
    assert ref["SynOOD"]["average"] == {"fpr95": 14.27, "auroc": 97.01}
    assert ref["MCM"]["average"] == {"fpr95": 42.74, "auroc": 90.77}
    assert body["reference_note"]

    t = invoke(*args, home=shared_home)
    assert t.returncode == 0, t.stderr
    header = "\n".join(line for line in t.stdout.splitlines() if line.startswith("┃"))
    for name in ("iNaturalist", "SUN", "Places", "Textures", "Average", "FPR95↓", "AUROC↑"):
        assert name in header
    ours = table_row(t.stdout, "neglabel (this run)")
    want = []
    for m in [per_set[k] for k in MOS_KEYS] + [average]:
        want += [f"{100 * m['fpr95']:.2f}", f"{100 * m['auroc']:.2f}"]
    assert ours == want
    assert table_row(t.stdout, "NegLabel (paper)") == ["1.91", "99.49", "20.53", "95.49", "35.59", "91.64", "43.56", "90.22", "25.40", "94.21"]
    assert table_row(t.stdout, "SynOOD (paper)")[-2:] == ["14.27", "97.01"]
    assert table_row(t.stdout, "MCM (paper)")[-2:] == ["42.74", "90.77"]
    assert "ID top-1 accuracy: 75.00%" in t.stdout

    c = invoke(*args, "--format", "csv", home=shared_home)
    assert c.returncode == 0, c.stderr
    rows = list(csv.DictReader(io.StringIO(c.stdout)))
    paper = {(x["method"], x["set"]): x for x in rows if x["source"] == "paper"}
    assert float(paper["NegLabel", "average"]["fpr95"]) == 25.40 and float(paper["NegLabel", "average"]["auroc"]) == 94.21
    assert float(paper["SynOOD", "average"]["fpr95"]) == 14.27 and float(paper["SynOOD", "average"]["auroc"]) == 97.01
    mine = {x["set"]: x for x in rows if x["source"] == "ours"}
    assert list(mine) == MOS_KEYS + ["average"]
    assert float(mine["average"]["auroc"]) == pytest.approx(100 * average["auroc"], abs=1e-9)


def test_no_reference_rows_without_the_flag(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    id_flat_valtxt(root, id_images)
    mos_ood(root)
    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, home=shared_home)
    assert r.returncode == 0, r.stderr
    assert "neglabel (this run)" in r.stdout
    assert "(paper)" not in r.stdout and "25.40" not in r.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--reference"], ["--reference needs --benchmark"]),
        (["--allow-partial"], ["--allow-partial needs --benchmark"]),
        (["--benchmark", "imagenet-mo", "--data-root", "."], ["unknown benchmark 'imagenet-mo'", "did you mean 'imagenet-mos'"]),
        (["--benchmark", "imagenet-mos"], ["--benchmark imagenet-mos needs --data-root"]),
    ],
)
def test_benchmark_usage_errors(invoke, tmp_path, args, fragments):
    (tmp_path / "a").mkdir()
    extra = [] if "--benchmark" in args else ["--id", str(tmp_path / "a"), "--ood", str(tmp_path / "a")]
    assert_clean_error(invoke("evaluate", *args, *extra, *TINY), 2, *fragments)


# -- OpenOOD v1.5 image lists ----------------------------------------------------------------


def openood_root(root: Path, ids: IdImages, sets: dict[str, list[str]], missing: dict[str, str] | None = None) -> dict[str, Path]:
    """OpenOOD's data folder: lists under benchmark_imglist/imagenet, images under images_largescale
    (images_classic for texture/). `sets` maps a list name to its relative image paths; `missing`
    adds one listed line without a file."""
    lists = root / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    id_lines = []
    for f, label in zip(ids.files, ids.labels):
        rel = f"imagenet_1k/val/{WNIDS[label]}/{f.name}"
        _put(f, root / "images_largescale" / rel)
        id_lines.append(f"{rel} {label}")
    (lists / "test_imagenet.txt").write_text("\n".join(id_lines) + "\n")
    out = {"imagenet": lists / "test_imagenet.txt"}
    for name, rels in sets.items():
        lines = []
        for i, rel in enumerate(rels):
            base = root / ("images_classic" if rel.startswith("texture/") else "images_largescale")
            _image(base / rel, name, i)
            lines.append(f"{rel} -1")
            if missing and name in missing and i == 0:
                lines.append(f"{missing[name]} -1")  # listed, no file
        (lists / f"test_{name}.txt").write_text("\n".join(lines) + "\n")
        out[name] = lists / f"test_{name}.txt"
    return out


def test_openood_near_image_lists(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "OpenOOD" / "data"
    sets = {
        "ssb_hard": [f"ssb_hard/n0000000{i}/ssb_{i}.JPEG" for i in range(3)],
        "ninco": [f"ninco/ninco_{i}.jpg" for i in range(3)],
    }
    lists = openood_root(root, id_images, sets, missing={"ninco": "ninco/ninco_gone.jpg"})
    scores = tmp_path / "scores"
    args = ("evaluate", "--benchmark", "openood-imagenet-near", "--data-root", str(root), *TINY)
    r = invoke(*args, "--format", "json", "--save-scores", str(scores), home=shared_home)
    body, per_set, average = suite_json(r)
    assert body["fpr95_convention"] == "fpr95_ood_positive"
    assert list(per_set) == ["ssb_hard", "ninco"]
    assert per_set["ssb_hard"]["n_ood"] == 3 and per_set["ninco"]["n_ood"] == 3
    assert body["id_images"] == 4 and body["id_accuracy"] == 0.75  # the lists' indices are sorted-wnid classes
    check_average(per_set, average)

    table = input_table(r.stderr)
    assert list(table) == ["imagenet", "ssb_hard", "ninco"]
    assert table["imagenet"]["expected"] == "45,000" and table["imagenet"]["images"] == "4"
    assert table["ssb_hard"]["expected"] == "49,000" and table["ssb_hard"]["images"] == "3"
    assert table["ninco"]["expected"] == "5,879" and table["ninco"]["images"] == "3"
    assert table["ninco"]["left out"] == "1" and table["ssb_hard"]["left out"] == ""
    for name in table:
        assert table[name]["source"] == str(lists[name])
        assert "images_largescale" in table[name]["layout"]
    gone = root / "images_largescale" / "ninco" / "ninco_gone.jpg"
    assert f"skipped {gone}: listed in the image list but not found" in r.stderr
    assert body["skipped"] == 1

    # the FPR95 column is OpenOOD's: ID rejected at 95 % OOD recall, from the per-image scores
    id_s = [float(x["score"]) for x in saved_scores(scores, "imagenet")]
    for name in ("ssb_hard", "ninco"):
        rows = saved_scores(scores, name)
        assert [Path(x["path"]).name for x in rows] == [Path(p).name for p in sets[name]]  # list order
        ood_s = [float(x["score"]) for x in rows]
        assert per_set[name]["fpr95_ood_positive"] == pytest.approx(fpr95_ood_positive(id_s, ood_s), abs=1e-12)
        assert per_set[name]["auroc"] == pytest.approx(auroc(id_s, ood_s), abs=1e-9)

    t = invoke(*args, "--reference", home=shared_home)
    assert t.returncode == 0, t.stderr
    header = "\n".join(line for line in t.stdout.splitlines() if line.startswith("┃"))
    assert "FPR95 OOD+↓" in header and "FPR95↓" not in header
    ours = table_row(t.stdout, "neglabel (this run)")
    assert ours == [f"{100 * m[k]:.2f}" for m in (per_set["ssb_hard"], per_set["ninco"], average) for k in ("fpr95_ood_positive", "auroc")]
    assert table_row(t.stdout, "SynOOD (paper)")[-1] == "77.55"  # SynOOD's published near-OOD AUROC
    assert "OpenOOD v1.5 convention" in t.stdout

    s = invoke(*args, "--strict", "--format", "json", home=shared_home)
    assert s.returncode == 4  # the listed-but-missing file counts under --strict
    assert json.loads(s.stdout)["methods"]["neglabel"]["ood"]["ninco"]["n_ood"] == 3


def test_openood_far_image_lists_over_two_image_roots(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    sets = {
        "inaturalist": [f"inaturalist/inat_{i}.jpg" for i in range(2)],
        "textures": [f"texture/{c}/{c}_{i:04d}.jpg" for i, c in enumerate(["banded", "dotted", "banded"])],
        "openimage_o": [f"openimage_o/oi_{i}.jpg" for i in range(4)],
    }
    lists = openood_root(root, id_images, sets)
    r = invoke("evaluate", "--benchmark", "openood-imagenet-far", "--data-root", str(root), *TINY, "--format", "json", home=shared_home)
    body, per_set, average = suite_json(r)
    assert body["fpr95_convention"] == "fpr95_ood_positive"
    assert list(per_set) == ["inaturalist", "textures", "openimage_o"]
    assert [per_set[k]["n_ood"] for k in per_set] == [2, 3, 4]
    table = input_table(r.stderr)
    assert table["textures"]["source"] == str(lists["textures"])
    assert "images_classic" in table["textures"]["layout"]
    assert "images_largescale" in table["openimage_o"]["layout"]
    assert [table[k]["expected"] for k in ("inaturalist", "textures", "openimage_o")] == ["10,000", "5,160", "15,869"]
    assert all(table[k]["left out"] == "" for k in table)



def test_resolve_suite_reports_found_counts_and_missing_sets(id_images, tmp_path):
    """The listing step alone (no model): statuses against expected counts, where it looked, ID labels."""
    from synood_cli.suites import SetSpec, Suite, resolve_suite

    root = tmp_path / "data"
    id_tree(root, id_images, rel="imagenet/val")
    for i in range(3):
        _image(root / "alt" / "A" / f"a{i}.png", "a", i)
    for i in range(2):
        _image(root / "b" / f"b{i}.png", "b", i)
    suite = Suite(
        "toy", "toy suite", SetSpec("imagenet", "ID", 4, ("imagenet/val",)),
        (SetSpec("a", "A", 3, ("A", "alt/A")), SetSpec("b", "B", 10, ("B",)), SetSpec("c", "C", 1, ("C", "ood/C"))),
        fpr_key="fpr95",
    )
    found = {f.spec.key: f for f in resolve_suite(suite, root)}
    assert [f.role for f in found.values()] == ["id", "ood", "ood", "ood"]
    assert (found["imagenet"].status, found["imagenet"].found) == ("ok", 4)
    labels = {p.name: label for p, label in zip(found["imagenet"].image_set.files, found["imagenet"].image_set.labels)}
    assert labels == {f.name: label for f, label in zip(id_images.files, id_images.labels)}  # sorted-wnid indices
    assert (found["a"].status, found["a"].found, found["a"].source) == ("ok", 3, str(root / "alt" / "A"))
    assert found["a"].tried == [str(root / "A"), str(root / "alt" / "A")]
    assert (found["b"].status, found["b"].found) == ("count differs", 2)  # "B" matched the folder "b"
    assert (found["c"].status, found["c"].image_set, found["c"].source) == ("missing", None, None)
    assert found["c"].tried == [str(root / "C"), str(root / "ood" / "C")]

    other = tmp_path / "other"
    for i in range(2):
        _image(other / f"o{i}.png", "o", i)
    found = {f.spec.key: f for f in resolve_suite(suite, root, overrides={"c": str(other)})}
    assert (found["c"].found, found["c"].source, found["c"].tried) == (2, str(other), [str(other)])


def test_openood_set_replaced_by_an_openood_image_list(invoke, shared_home, id_images, tmp_path):
    root = tmp_path / "data"
    sets = {"ssb_hard": [f"ssb_hard/n0000000{i}/ssb_{i}.JPEG" for i in range(2)], "ninco": [f"ninco/ninco_{i}.jpg" for i in range(3)]}
    openood_root(root, id_images, sets)
    r = invoke("evaluate", "--benchmark", "openood-imagenet-near", "--data-root", str(root), *TINY, "--format", "json",
               "--ood", "ninco=benchmark_imglist/imagenet/test_ninco.txt", home=shared_home)
    _, per_set, _ = suite_json(r)
    assert per_set["ninco"]["n_ood"] == 3

# -- overrides and table inputs --------------------------------------------------------------


def _table_dataset(images: list[bytes], **columns):
    import datasets

    features = {"image": datasets.Image()}
    for k, v in columns.items():
        features[k] = v[1]
    data = {"image": [{"bytes": b, "path": None} for b in images], **{k: v[0] for k, v in columns.items()}}
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def _png_bytes(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed).save(buf, format="PNG")
    return buf.getvalue()


def test_overrides_replace_sets_with_folders_save_to_disk_and_parquet(invoke, shared_home, id_images, tmp_path):
    import datasets

    root = tmp_path / "data"
    mos_ood(root)  # no ID folder under the root: --id supplies it
    saved = tmp_path / "imagenet-val-saved"
    _table_dataset([f.read_bytes() for f in id_images.files], label=(id_images.labels, datasets.ClassLabel(names=WNIDS))).save_to_disk(str(saved))
    sun_pq = tmp_path / "sun.parquet"
    _table_dataset([_png_bytes("sun-pq", i) for i in range(5)]).to_parquet(str(sun_pq))
    other = tmp_path / "other-textures"
    for i in range(2):
        _image(other / f"t{i}.png", "other-textures", i)

    r = invoke("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY, "--format", "json",
               "--id", str(saved), "--ood", f"sun={sun_pq}", "--ood", f"textures={other}", home=shared_home)
    body, per_set, _ = suite_json(r)
    assert list(per_set) == MOS_KEYS
    assert per_set["sun"]["n_ood"] == 5 and per_set["textures"]["n_ood"] == 2
    assert per_set["inaturalist"]["n_ood"] == 3 and per_set["places"]["n_ood"] == 4
    assert body["id_images"] == 4 and body["id_accuracy"] == 0.75
    table = input_table(r.stderr)
    assert table["imagenet"]["source"] == str(saved) and "save_to_disk" in table["imagenet"]["layout"]
    assert table["sun"]["source"] == str(sun_pq) and "parquet" in table["sun"]["layout"]
    assert table["textures"]["source"] == str(other)
    assert table["inaturalist"]["source"] == str(root / "iNaturalist")


def test_override_with_an_unknown_key_or_no_key_is_a_usage_error(invoke, id_images, tmp_path):
    root = tmp_path / "data"
    id_tree(root, id_images)
    mos_ood(root)
    base = ("evaluate", "--benchmark", "imagenet-mos", "--data-root", str(root), *TINY)
    r = invoke(*base, "--ood", f"texture={root / 'SUN'}")
    assert_clean_error(r, 2, "imagenet-mos has no set 'texture'", "id, inaturalist, places, sun, textures")
    r = invoke(*base, "--ood", str(root / "SUN"))
    assert_clean_error(r, 2, "--ood takes KEY=SPEC", "inaturalist, sun, places, textures")
    r = invoke("evaluate", "--benchmark", "openood-imagenet-near", "--data-root", str(root), *TINY, "--ood", f"sun={root / 'SUN'}")
    assert_clean_error(r, 2, "openood-imagenet-near has no set 'sun'", "id, ninco, ssb_hard")


def test_plain_evaluate_with_an_image_list_save_to_disk_and_parquet(invoke, shared_home, id_images, tmp_path):
    images = tmp_path / "images"
    lines = []
    for f, label in zip(id_images.files, id_images.labels):
        rel = f"val/{f.name}"
        _put(f, images / rel)
        lines.append(f"{rel} {label}")
    id_list = tmp_path / "lists" / "id.txt"
    id_list.parent.mkdir()
    id_list.write_text("\n".join(lines) + "\n")
    saved = tmp_path / "ood-saved"
    _table_dataset([_png_bytes("saved", i) for i in range(3)]).save_to_disk(str(saved))
    pq = tmp_path / "ood.parquet"
    _table_dataset([_png_bytes("pq", i) for i in range(2)]).to_parquet(str(pq))

    r = invoke("evaluate", "--id", str(id_list), "--data-root", str(images), "--ood", f"far-saved={saved}", "--ood", f"near-pq={pq}",
               *TINY, "--format", "json", home=shared_home)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert list(body["ood"]) == ["far-saved", "near-pq"]
    assert body["ood"]["far-saved"]["n_ood"] == 3 and body["ood"]["near-pq"]["n_ood"] == 2
    assert body["id_images"] == 4 and body["id_accuracy"] == 0.75
    check_average(body["ood"], body["average"])
    table = input_table(r.stderr)
    assert table["far-saved"]["images"] == "3" and "save_to_disk" in table["far-saved"]["layout"]
    assert table["near-pq"]["images"] == "2" and "parquet" in table["near-pq"]["layout"]
    assert table["id"]["images"] == "4" and table["id"]["source"] == str(id_list)


# -- synood score over image lists and tables ------------------------------------------------


def test_score_imglist_streams_listed_files_in_list_order(invoke, shared_home, tmp_path):
    root = tmp_path / "images"
    rels = ["b/x.png", "a/missing.png", "c/z.jpg", "a/y.png"]
    for i, rel in enumerate(rels):
        if "missing" not in rel:
            _image(root / rel, "list", i)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{rel} -1\n" for rel in rels))
    r = invoke("score", "--imglist", str(listing), "--data-root", str(root), *TINY, "--format", "csv", home=shared_home)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [x["path"] for x in rows] == [str(root / rel) for rel in rels if "missing" not in rel]
    assert f"skipped {root / 'a/missing.png'}: listed in the image list but not found" in r.stderr
    assert "scored 3 images; 0 unreadable, 0 not images, 1 listed but missing (skipped)" in r.stderr
    assert input_table(r.stderr)["list"]["left out"] == "1"


def test_score_parquet_rows_and_a_corrupt_row(invoke, shared_home, tmp_path):
    pq = tmp_path / "rows.parquet"
    images = [_png_bytes("row", 0), _png_bytes("row", 1), truncated_jpeg_bytes(3), _png_bytes("row", 3)]
    _table_dataset(images).to_parquet(str(pq))
    args = ("score", str(pq), *TINY, "--format", "jsonl")
    r = invoke(*args, home=shared_home)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in rows] == [f"{pq}#0", f"{pq}#1", f"{pq}#3"]
    assert f"{pq}#2" in r.stderr
    assert "scored 3 images; 1 unreadable" in r.stderr

    s = invoke(*args, "--strict", home=shared_home)
    assert s.returncode == 4
    assert [json.loads(line)["path"] for line in s.stdout.splitlines()] == [x["path"] for x in rows]
    assert "1 input file(s) could not be read" in s.stderr
