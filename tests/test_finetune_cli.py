"""`synood finetune`, `synood run` and `synood demo` through the CLI, on the tiny profile.

Fast checks run in-process (Typer's CliRunner) over one module-scoped store; resume after a kill
runs the real CLI in subprocesses, as a user would.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import Result, Tripwire, assert_clean_error, kill_when_paused, rows_of, seed_home, start_paused, write_flat, write_tree

TINY = ["--profile", "tiny"]
CLASSES = ("cat", "dog", "fish")
PER_CLASS = 3  # prompted (and synthesized) images per class
N_ID = len(CLASSES) * PER_CLASS


def cli_in_process(home: Path, *args: str) -> Result:
    """Like conftest's `invoke`, usable from a module-scoped fixture."""
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    env = {"SYNOOD_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


class EncodeCounter:
    """Counts images through every CLIP image forward (open_clip's CLIP.encode_image) while active."""

    def __init__(self, monkeypatch):
        import open_clip

        self.images = 0
        original = open_clip.model.CLIP.encode_image

        def counting(model, images, *args, **kwargs):
            self.images += int(images.shape[0])
            return original(model, images, *args, **kwargs)

        monkeypatch.setattr(open_clip.model.CLIP, "encode_image", counting)


@pytest.fixture(scope="module")
def ft(tmp_path_factory, tiny_weights):
    """One store: a 3 x 4 tree, prompts `ctx` (3 per class), synthesis `near`, checkpoint `ck`."""
    root = tmp_path_factory.mktemp("finetune")
    home = seed_home(tiny_weights, root / "home")
    tree = write_tree(root / "train", {c: 4 for c in CLASSES}, corrupt=False, junk=False)
    ood = write_flat(root / "ood", 6)
    r = cli_in_process(home, "prompt", str(tree.root), *TINY, "--per-class", str(PER_CLASS), "--name", "ctx")
    assert r.returncode == 0, r.stderr
    r = cli_in_process(home, "synthesize", "--prompts", "ctx", *TINY, "--name", "near")
    assert r.returncode == 0, r.stderr
    mp = pytest.MonkeyPatch()
    counter = EncodeCounter(mp)
    try:
        first = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--name", "ck")
    finally:
        mp.undo()
    return {"home": home, "tree": tree, "ood": ood, "first": first, "encoded": counter.images}


def assert_refused(r: Result, *fragments: str) -> None:
    """Exit 2 with one `error:` line (a refusal found after the model loaded may follow an info line)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def show(home: Path, ref: str) -> dict:
    r = cli_in_process(home, "store", "show", ref, "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_finetune_encodes_every_image_once(ft):
    r = ft["first"]
    assert r.returncode == 0, r.stderr
    n = N_ID + N_ID  # 9 selected source images + one synthesized image each
    assert ft["encoded"] == n  # counted at the CLIP forward, not taken from the tool's report
    assert f"{n} images encoded now, 0 from the cache" in r.stderr
    assert f"fine-tuned on {N_ID} synthesized and {N_ID} ID images" in r.stderr
    assert r.stdout == ""  # data only on stdout; finetune prints none


def test_feature_encoding_shows_one_bar_per_image_set(ft):
    """Not one bar per class (1,000 for ImageNet): ID and synthesized features each advance one bar
    to its total, whether images are encoded (here: --exact-preprocess, a new cache key) or cached."""
    from test_progress import Recorder

    from synood_cli.finetuning import FinetuneConfig, profile_train_config, run_finetune

    for lr in (0.003, 0.004):  # the second run finds every feature in the cache
        rec = Recorder()
        cfg = FinetuneConfig(prompts="ctx", synth="near", home=ft["home"], profile="tiny", device="cpu", exact_preprocess=True,
                             train=profile_train_config("tiny", adapter_lr=lr))
        _, stats = run_finetune(cfg, reporter=rec)
        assert (stats.encoded, stats.cached) == ((2 * N_ID, 0) if lr == 0.003 else (0, 2 * N_ID))
        assert {d for d in rec.advances if "features" in d} == {"ID features", "synthesized features"}, rec.advances
        assert sum(rec.advances["ID features"]) == N_ID and sum(rec.advances["synthesized features"]) == N_ID


def test_second_finetune_reuses_the_feature_cache(ft, monkeypatch):
    home = ft["home"]
    counter = EncodeCounter(monkeypatch)
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--adapter-lr", "0.002", "--name", "ck2")
    assert r.returncode == 0, r.stderr
    assert counter.images == 0  # no image went through CLIP
    assert f"0 images encoded now, {2 * N_ID} from the cache" in r.stderr
    a, b = show(home, "ck"), show(home, "ck2")
    assert a["id"] != b["id"]
    assert a["config"]["train"]["adapter_lr"] == 1e-3 and b["config"]["train"]["adapter_lr"] == 0.002
    # the same command again finds its checkpoint: nothing is trained or encoded
    again = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--adapter-lr", "0.002")
    assert again.returncode == 0 and counter.images == 0
    assert b["id"] in again.stderr and "nothing to do" in again.stderr


def test_checkpoint_artifact_contents(ft):
    m = show(ft["home"], "ck")
    assert m["kind"] == "checkpoint" and m["status"] == "complete" and "ck" in m["names"]
    for f in ("adapter.safetensors", "negatives.safetensors", "labels.json", "classes.json", "label_histogram.json"):
        assert f in m["files"], f
    s = m["summary"]
    assert s["id_images"] == N_ID and s["synth_images"] == N_ID
    for key in ("assigned_labels", "final", "history"):
        assert key in s
    assert set(s["history"]) == {"adapter", "negatives"}  # the research code's separate training by default
    assert len(s["history"]["adapter"]) == 3 and len(s["history"]["negatives"]) == 5  # docs/method.md section 6: 3 and 5 epochs
    # training lowers the loss: epoch 1 is one step from the untrained adapter (18 images < batch 128)
    assert s["final"]["adapter_final"]["train_loss"] < s["history"]["adapter"][0]["train_loss"]
    assert s["final"]["negatives_final"]["train_loss"] <= s["history"]["negatives"][0]["train_loss"]
    folder = Path(m["path"])
    meta = json.loads((folder / "labels.json").read_text())  # every mined negative, the tuned ones marked
    tuned = [label for label, t in zip(meta["labels"], meta["tuned"]) if t]
    hist = json.loads((folder / "label_histogram.json").read_text())
    assert sum(hist.values()) == N_ID
    assert len(tuned) == s["assigned_labels"] == len(hist) and set(hist) == set(tuned)
    assert len(meta["labels"]) == len(meta["kinds"]) == s["negatives"]
    assert json.loads((folder / "classes.json").read_text()) == list(CLASSES)
    from safetensors.torch import load_file

    neg = load_file(str(folder / "negatives.safetensors"))["features"]
    labels = meta["labels"]
    assert neg.shape[0] == len(labels)
    torch.testing.assert_close(neg.norm(dim=1), torch.ones(len(labels)), rtol=0, atol=1e-5)


def test_assignment_is_the_top1_negative_by_cosine(ft):
    """Recompute the label histogram here: encode the synthesized images, argmax cosine over the mined negatives."""
    import pyarrow.parquet as pq
    from PIL import Image
    from safetensors.torch import load_file

    from synood_cli.models.clip import ClipSource, load_clip
    from synood_cli.store import Store

    home = ft["home"]
    m = show(home, "ck")
    negatives = show(home, f"negatives/{m['config']['negatives']}")
    neg_folder = Path(negatives["path"])
    neg_labels = json.loads((neg_folder / "labels.json").read_text())["labels"]
    neg_feats = load_file(str(neg_folder / "negatives.safetensors"))["features"]
    clip = load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), torch.device("cpu"), torch.float32)
    assert clip.fingerprint == m["config"]["base_model"]
    synth = Path(show(home, "near")["path"])
    images = []
    for shard in sorted(synth.glob("shards/*.parquet")):
        images += [Image.open(io.BytesIO(c["bytes"])).convert("RGB") for c in pq.read_table(shard).column("image").to_pylist()]
    assert len(images) == N_ID
    feats = torch.cat([clip.encode_images(clip.preprocess(im)[None]) for im in images])
    cos = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(neg_feats, dim=1).T
    expected = Counter(neg_labels[j] for j in cos.argmax(1).tolist())
    hist = json.loads((Path(m["path"]) / "label_histogram.json").read_text())
    assert hist == dict(expected)


def test_evaluate_compares_neglabel_and_synood(ft):
    tree, ood = ft["tree"], ft["ood"]
    r = cli_in_process(ft["home"], "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--checkpoint", "ck",
                       "--compare", "neglabel,synood", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["methods"]) == {"neglabel", "synood"}
    assert out["id_images"] == len(tree.good)  # images, not the number of methods
    for method in ("neglabel", "synood"):
        avg = out["methods"][method]["average"]
        assert 0.0 <= avg["auroc"] <= 1.0 and 0.0 <= avg["fpr95"] <= 1.0
        assert avg["n_id"] == len(tree.good) and avg["n_ood"] == len(ood.good)
    # the adapter changes the scores: the two methods do not coincide
    assert out["methods"]["neglabel"]["ood"] != out["methods"]["synood"]["ood"]


def test_score_takes_the_classes_from_the_checkpoint(ft):
    tree = ft["tree"]
    r = cli_in_process(ft["home"], "score", str(tree.root), *TINY, "--checkpoint", "ck", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = rows_of(r.stdout, "jsonl")
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in tree.good)
    assert {row["pred_name"] for row in rows} <= set(CLASSES)
    assert all(0.0 < row["score"] <= 1.0 for row in rows)
    assert "ImageNet" not in r.stderr  # not the 1000-class fallback


def test_checkpoint_of_another_model_is_refused(ft, tmp_path):
    src = Path(show(ft["home"], "ck")["path"])
    folder = tmp_path / "other-model-ck"
    shutil.copytree(src, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["base_model"] = "ViT-B-16@sha256:0123456789abcdef"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    tree, ood = ft["tree"], ft["ood"]
    # the untouched copy is accepted as a folder checkpoint ...
    ok = shutil.copytree(src, tmp_path / "same-model-ck")
    r = cli_in_process(ft["home"], "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--checkpoint", str(ok), "--format", "json")
    assert r.returncode == 0, r.stderr
    # ... the edited one is not
    r = cli_in_process(ft["home"], "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--checkpoint", str(folder))
    assert_refused(r, "trained on", "ViT-B-16@sha256:0123456789abcdef", "synood-tiny-clip")



def test_a_pickle_checkpoint_is_refused_without_unpickling(ft, tmp_path):
    marker = tmp_path / "UNPICKLED"
    ck = tmp_path / "ck.pt"
    torch.save({"a": 1, "adapter": Tripwire(str(marker))}, ck)
    tree, ood = ft["tree"], ft["ood"]
    r = cli_in_process(ft["home"], "evaluate", "--id", str(tree.root), "--ood", str(ood.root), *TINY, "--checkpoint", str(ck))
    assert_clean_error(r, 2, "never unpickles", str(ck))
    r = cli_in_process(ft["home"], "score", str(tree.root), *TINY, "--checkpoint", str(ck))
    assert_clean_error(r, 2, "never unpickles")
    r = cli_in_process(ft["home"], "score", str(tree.root), *TINY, "--checkpoint", str(ck), "--classnames", str(tree.root))
    assert_refused(r, "never unpickles")
    assert not marker.exists()
    torch.load(ck, weights_only=False)  # the tripwire works: an unsafe load writes the marker
    assert marker.exists()


def test_joint_and_separate_training_both_complete(ft, capsys):
    home = ft["home"]
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--joint", "--name", "ck-joint")
    assert r.returncode == 0, r.stderr
    assert "0 images encoded now" in r.stderr
    sep, joint = show(home, "ck"), show(home, "ck-joint")
    assert sep["id"] != joint["id"]
    assert set(joint["summary"]["history"]) == {"joint"} and len(joint["summary"]["history"]["joint"]) == 5  # max(3, 5)
    assert joint["config"]["train"]["joint"] is True and sep["config"]["train"]["joint"] is False
    f_sep, f_joint = sep["summary"]["final"], joint["summary"]["final"]
    with capsys.disabled():
        print(
            f"\n[joint vs separate, tiny profile, {N_ID} ID + {N_ID} synthesized images] "
            f"separate: adapter train loss {f_sep['adapter_final']['train_loss']:.4f} "
            f"(epoch 1 {sep['summary']['history']['adapter'][0]['train_loss']:.4f}), "
            f"negatives train loss {f_sep['negatives_final']['train_loss']:.4f}; "
            f"joint: train loss {f_joint['joint_final']['train_loss']:.4f} "
            f"(epoch 1 {joint['summary']['history']['joint'][0]['train_loss']:.4f})"
        )


def test_run_in_process_reuses_the_stages_and_names_them(ft):
    """`synood run` over the same folder and per-class count finds the prompts/synthesis made above."""
    home, tree, ood = ft["home"], ft["tree"], ft["ood"]
    r = cli_in_process(home, "run", str(tree.root), *TINY, "--per-class", str(PER_CLASS), "--id-val", str(tree.root),
                       "--ood", str(ood.root), "--name", "r1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("neglabel" in line and "Average" in line for line in lines)
    assert any("synood" in line and "Average" in line for line in lines)
    assert "say nothing about the method" in r.stderr  # the tiny-profile note
    for alias, kind in (("prompts-r1", "prompts"), ("synth-r1", "synth"), ("checkpoint-r1", "checkpoint")):
        m = show(home, alias)
        assert m["kind"] == kind and m["status"] == "complete"
    assert show(home, "prompts-r1")["id"] == show(home, "ctx")["id"]
    assert show(home, "synth-r1")["id"] == show(home, "near")["id"]
    assert show(home, "checkpoint-r1")["id"] == show(home, "ck")["id"]  # same defaults, same seed: the same artifact
    assert "is complete; nothing to do" in r.stderr


@pytest.mark.slow
def test_run_from_openood_image_lists(tiny_weights, tmp_path):
    """Train and ID-val sets as OpenOOD image lists under --data-root, OOD as Parquet: every stage runs,
    labels come from the lists (ImageNet-1k indices), and finetune reads the 1000 classes back from the list."""
    import datasets

    from conftest import make_image

    root = tmp_path / "images"
    train_lines, val_lines = [], []
    for label in range(3):  # ImageNet indices 0..2: tench, goldfish, great white shark
        for i in range(3):
            rel = f"train/c{label}/{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            make_image(f"t{label}", i).save(root / rel)
            train_lines.append(f"{rel} {label}")
        rel = f"val/v{label}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_image("v", label).save(root / rel)
        val_lines.append(f"{rel} {label}")
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(val_lines) + "\n")
    ood = datasets.Dataset.from_dict({"image": [make_image("o", i) for i in range(4)]}, features=datasets.Features({"image": datasets.Image()}))
    ood.to_parquet(str(tmp_path / "ood.parquet"))
    home = seed_home(tiny_weights, tmp_path / "home")
    r = cli_in_process(home, "run", str(tmp_path / "train.txt"), *TINY, "--per-class", "2", "--data-root", str(root),
                       "--id-val", str(tmp_path / "val.txt"), "--ood", f"par={tmp_path / 'ood.parquet'}", "--name", "lists")
    assert r.returncode == 0, r.stderr
    for method in ("neglabel", "synood"):
        assert re.search(rf"│ {method}\s+│ par\s+│.*│\s+4 │", r.stdout), r.stdout  # the Parquet set, 4 images
    assert "ID images: 3" in r.stdout  # the val list's three files
    prompts = show(home, "prompts-lists")
    assert prompts["config"]["image_list"] == str((tmp_path / "train.txt").resolve())
    assert prompts["config"]["folder"] == str(root)  # the data root: synthesis re-reads images below it
    ck = json.loads(cli_in_process(home, "store", "show", "checkpoint-lists", "--format", "json").stdout)
    names = json.loads((Path(ck["path"]) / "classes.json").read_text())
    assert len(names) == 1000 and names[:3] == ["tench", "goldfish", "great white shark"]


def _labelled_parquet(path: Path) -> None:
    """Two image columns (the photos and decoys) and a ClassLabel column, written by datasets."""
    import datasets

    from conftest import make_image

    feats = datasets.Features({"photo": datasets.Image(), "decoy": datasets.Image(),
                               "label": datasets.ClassLabel(names=["tench, Tinca tinca", "goldfish", "great white shark"])})
    ds = datasets.Dataset.from_dict({"photo": [make_image(f"p{i % 3}", i) for i in range(9)],
                                     "decoy": [make_image("decoy", 0) for _ in range(9)],
                                     "label": [i % 3 for i in range(9)]}, features=feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def _shard_images(home: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    out = {}
    for f in sorted(home.glob("artifacts/synth/*/shards/*.parquet")):
        for row in pq.read_table(f, columns=["source_path", "image"]).to_pylist():
            out[row["source_path"].rsplit("#", 1)[1]] = row["image"]["bytes"]
    return out


@pytest.mark.slow
def test_pipeline_from_a_parquet_table_with_a_chosen_image_column(tiny_weights, tmp_path):
    """prompt/synthesize/finetune read their source images as rows of a table; the image column the
    user named is used by every stage, and the synthesis seeds do not depend on where the table lives."""
    first = tmp_path / "a" / "train.parquet"
    _labelled_parquet(first)
    home = seed_home(tiny_weights, tmp_path / "home")
    r = cli_in_process(home, "prompt", str(first), *TINY, "--per-class", "2", "--name", "ctx")
    assert r.returncode == 2 and "--image-column" in r.stderr and "photo" in r.stderr  # two image columns: refused
    r = cli_in_process(home, "prompt", str(first), *TINY, "--per-class", "2", "--image-column", "photo", "--name", "ctx")
    assert r.returncode == 0, r.stderr
    assert show(home, "ctx")["config"]["image_column"] == "photo"
    assert cli_in_process(home, "synthesize", "--prompts", "ctx", *TINY, "--name", "near").returncode == 0
    assert cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--name", "ck").returncode == 0
    ck = show(home, "ck")
    assert json.loads((Path(ck["path"]) / "classes.json").read_text()) == ["tench", "goldfish", "great white shark"]
    images = _shard_images(home)
    assert len(images) == 6 and all(row.isdigit() for row in images)

    # the decoy column as the source gives other synthesized images: the chosen column reached synthesis
    home_decoy = seed_home(tiny_weights, tmp_path / "home-decoy")
    assert cli_in_process(home_decoy, "prompt", str(first), *TINY, "--per-class", "2", "--image-column", "decoy", "--name", "ctx").returncode == 0
    assert cli_in_process(home_decoy, "synthesize", "--prompts", "ctx", *TINY, "--name", "near").returncode == 0
    decoy = _shard_images(home_decoy)
    assert decoy.keys() <= set(map(str, range(9))) and all(decoy[k] != images.get(k) for k in decoy)

    # the same table elsewhere, a fresh store: identical synthesized bytes
    second = tmp_path / "b" / "moved.parquet"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    home2 = seed_home(tiny_weights, tmp_path / "home2")
    assert cli_in_process(home2, "prompt", str(second), *TINY, "--per-class", "2", "--image-column", "photo", "--name", "ctx").returncode == 0
    assert cli_in_process(home2, "synthesize", "--prompts", "ctx", *TINY, "--name", "near").returncode == 0
    assert _shard_images(home2) == images


# --------------------------------------------------------------------------------------------
# subprocesses: `synood run` killed at each stage, then resumed


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _dirs(home: Path, kind: str) -> list[Path]:
    d = home / "artifacts" / kind
    return [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")] if d.is_dir() else []


def _images_per_shard(folder: Path) -> dict[str, list[bytes]]:
    import pyarrow.parquet as pq

    return {s.name: [c["bytes"] for c in pq.read_table(s).column("image").to_pylist()] for s in sorted(folder.glob("shards/*.parquet"))}


@pytest.mark.slow
def test_run_resumes_after_a_kill_at_each_stage(ft, tiny_weights, tmp_path):
    """`synood run` over the module's tree, killed in prompting, in synthesis and in feature encoding,
    then run to the end: each rerun continues where the last stopped, and the result is bit for bit
    the module's store, made by `prompt`, `synthesize` and `finetune` without any kill."""
    tree, ood, ref = ft["tree"], ft["ood"], ft["home"]
    args = ["run", str(tree.root), *TINY, "--per-class", str(PER_CLASS), "--id-val", str(tree.root), "--ood", str(ood.root),
            "--name", "r", "--format", "json"]
    home = seed_home(tiny_weights, tmp_path / "home")
    # Each run stops for good at one call and is killed there (tests/pausing.py): the tiny profile asks
    # the MLLM 4 images at a time (9 images) and synthesizes class by class (3 images per class).
    stops = [
        ("synood_cli.models.mllm:TransformersAnswerer.answer", 2),  # 4 prompt rows written, 5 to go
        ("synood_cli.synthesis:run_with_backoff", 2),  # class 0's shard written, class 1 started
        ("synood_cli.finetuning:cached_features", 4),  # the 3 ID feature groups cached, 3 synthesized to go
    ]
    logs = []
    for stage, (target, n) in enumerate(stops, start=1):
        log = tmp_path / f"kill{stage}.log"
        proc, paused = start_paused(target, n, args, home, log)
        kill_when_paused(proc, paused, log)
        logs.append(log.read_text())
        if stage == 1:
            (prompts,) = _dirs(home, "prompts")
            assert _manifest(prompts)["status"] == "partial"
            assert len((prompts / "prompts.jsonl").read_text().splitlines()) == 4
        elif stage == 2:
            (synth,) = _dirs(home, "synth")
            assert _manifest(synth)["status"] == "partial"
            assert sorted(p.name for p in synth.glob("shards/*")) == ["class-00000.parquet"]
        else:
            assert sum(_manifest(p).get("status") == "complete" for p in _dirs(home, "features")) == 3
            assert not _dirs(home, "checkpoint")
    final = cli_in_process(home, *args)
    assert final.returncode == 0, final.stderr

    # every rerun continued where the previous one stopped
    assert "resuming prompts/" in logs[1] and "4 rows done, 5 images to go" in logs[1]
    assert "resuming synth/" in logs[2] and "1 class shard(s) already complete" in logs[2]
    assert f"features: {N_ID} images encoded, {N_ID} from the cache" in final.stderr  # the synthesized ones now

    # ... and ended where the uninterrupted stages did
    for alias, ref_name in (("prompts-r", "ctx"), ("synth-r", "near"), ("checkpoint-r", "ck")):
        got, want = show(home, alias), show(ref, ref_name)
        assert got["id"] == want["id"], alias
        assert got["status"] == "complete"
        if alias != "synth-r":
            assert got["files"] == want["files"], alias  # sizes and sha256 of the rows and the weights
    assert _images_per_shard(Path(show(home, "synth-r")["path"])) == _images_per_shard(Path(show(ref, "near")["path"]))
    uninterrupted = cli_in_process(ref, *args[:-4], "--name", "r-ref", "--format", "json")  # every stage is found complete
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    got, want = json.loads(final.stdout), json.loads(uninterrupted.stdout)
    assert set(got["methods"]) == set(want["methods"]) == {"neglabel", "synood"}
    for method in want["methods"]:
        for key, value in want["methods"][method]["average"].items():
            assert got["methods"][method]["average"][key] == pytest.approx(value, abs=1e-6), (method, key)
        for name, metrics in want["methods"][method]["ood"].items():
            for key, value in metrics.items():
                assert got["methods"][method]["ood"][name][key] == pytest.approx(value, abs=1e-6), (method, name, key)


@pytest.mark.parametrize("command", [["demo"], ["run", "train", "--id-val", "val", "--ood", "ood", *TINY]])
def test_an_unknown_format_is_refused_before_any_work(invoke, synood_home, command):
    r = invoke(*command, "--format", "xml")
    assert_clean_error(r, 2, "unknown --format 'xml'", "table, csv or json")
    assert not (synood_home / "artifacts").exists()  # no sample dataset, no stage started


def test_synood_score_uses_the_id_template_the_checkpoint_was_trained_with(ft):
    """finetune --id-template "a nice {}": score --checkpoint must use those ID texts, as the stored threshold does."""
    import numpy as np

    from synood_cli.metrics import threshold_at_tpr

    home = ft["home"]
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--id-template", "a nice {}", "--val-fraction", "0", "--name", "ck-a")
    assert r.returncode == 0, r.stderr
    stored = json.loads((Path(show(home, "ck-a")["path"]) / "threshold.json").read_text())
    assert stored["split"] == "training"  # no hold-out: every prompted ID image
    prompted = [json.loads(line)["image_path"] for line in (Path(show(home, "ctx")["path"]) / "prompts.jsonl").read_text().splitlines()]
    r = cli_in_process(home, "score", *prompted, *TINY, "--checkpoint", "ck-a", "--method", "synood", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    scores = [row["score"] for row in rows_of(r.stdout, "jsonl")]
    assert threshold_at_tpr(np.asarray(scores), 0.95) == pytest.approx(stored["threshold"], rel=1e-5)


def test_finetune_with_the_csp_pool_records_it_and_score_refuses_another_pool(ft):
    """finetune --pool csp: negatives mined from CSP's pool, recorded in the checkpoint; score --checkpoint keeps to it."""
    home = ft["home"]
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", *TINY, "--pool", "csp", "--name", "ck-csp")
    assert r.returncode == 0, r.stderr
    ck = show(home, "ck-csp")
    config = ck["config"]
    assert config["pool"] == "csp" and config["pool_seed"] == 0
    assert show(home, config["negatives"])["config"]["pool"]["name"] == "csp"
    assert config["negatives"] != show(home, "ck")["config"]["negatives"] and "pool" not in show(home, "ck")["config"]
    assert_refused(cli_in_process(home, "score", str(ft["ood"].root), *TINY, "--checkpoint", "ck-csp", "--pool", "neglabel"),
                   "--pool neglabel differs from the checkpoint's csp")
    r = cli_in_process(home, "score", str(ft["ood"].root), *TINY, "--checkpoint", "ck-csp", "--format", "jsonl", "--threshold", "fpr95")
    assert r.returncode == 0, r.stderr  # the checkpoint's threshold fits its scores: the identities agree, csp pool included
    assert "csp" in json.dumps(json.loads((Path(ck["path"]) / "threshold.json").read_text())["identity"]["pool"])


def test_finetune_takes_its_training_settings_from_the_profile(ft):
    """`synood finetune --profile world` trains as `synood run`/`demo` do: 60 epochs at batch 32 (the
    profile's finetune section), not the option defaults of the other profiles; an explicit flag still wins."""
    from synood_cli.store import Store
    from synood_cli.training import checkpoint_config

    home = ft["home"]
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", "--profile", "world", "--name", "ck-world")
    assert r.returncode == 0, r.stderr
    train = checkpoint_config(Store(home), "ck-world")["train"]
    assert (train["adapter_epochs"], train["negatives_epochs"], train["batch_size"]) == (60, 60, 32)
    r = cli_in_process(home, "finetune", "--prompts", "ctx", "--synth", "near", "--profile", "world", "--adapter-epochs", "2", "--name", "ck-world2")
    assert r.returncode == 0, r.stderr
    train = checkpoint_config(Store(home), "ck-world2")["train"]
    assert (train["adapter_epochs"], train["negatives_epochs"], train["batch_size"]) == (2, 60, 32)
    tiny = checkpoint_config(Store(home), "ck")["train"]  # the tiny profile has no finetune epochs: the library's
    assert (tiny["adapter_epochs"], tiny["negatives_epochs"], tiny["batch_size"]) == (3, 5, 128)


def test_run_takes_iterations_and_a_lexicon(ft, tmp_path):
    """`synood run --iterations N --lexicon FILE` (what a full-size rehearsal needs): the synthesis runs N
    iterations and finetune and evaluate mine from FILE; a missing lexicon is refused before any stage runs."""
    from synood_cli.store import Store
    from synood_cli.training import checkpoint_config

    home, tree, ood = ft["home"], ft["tree"], ft["ood"]
    words = tmp_path / "words.txt"
    basic = (Path(__file__).resolve().parent.parent / "synood_cli" / "data_files" / "basic_words.txt").read_text().splitlines()
    words.write_text("\n".join(basic[:300]) + "\n")
    args = ["run", str(tree.root), *TINY, "--per-class", str(PER_CLASS), "--id-val", str(tree.root), "--ood", str(ood.root)]
    missing = cli_in_process(home, *args, "--lexicon", str(tmp_path / "nowhere.txt"), "--name", "bad")
    assert missing.returncode == 2 and "nowhere.txt" in missing.stderr, missing.stderr
    assert "stage 1/4" not in missing.stderr
    r = cli_in_process(home, *args, "--iterations", "1", "--lexicon", str(words), "--name", "it1")
    assert r.returncode == 0, r.stderr
    assert show(home, "synth-it1")["config"]["iterations"] == 1 and show(home, "near")["config"]["iterations"] == 3
    assert show(home, "prompts-it1")["id"] == show(home, "ctx")["id"]  # the prompts do not depend on either
    config = checkpoint_config(Store(home), "checkpoint-it1")
    assert config["lexicon_name"] == str(words) and config["synth"] == show(home, "synth-it1")["id"]
