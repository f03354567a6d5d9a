"""`synood synthesize` (docs/method.md section 3; the store and class slices per rank: README.md) on the tiny profile, CPU only.

One module-scoped store holds three prompts artifacts (made once through the library) and one
finished synthesis run; every test that writes synthesized images works on its own copy of that
store. Torch runs on one thread here (and OMP_NUM_THREADS=1 in subprocesses): CPU kernels may
round differently with another thread count, and on a shared 2-core machine one thread is also
several times faster.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_clean_error, kill_when_paused, seed_home, start_paused, write_tree

TINY = ("--profile", "tiny")
SIZE = 32  # the tiny profile's --size
COLUMNS = ["image", "source_path", "class_index", "class_name", "prompt", "seed", "guidance", "target", "final_score", "nonfinite_grad"]


@dataclass
class Base:
    home: Path  # prompts ctx, ctxbad + models + one finished run of `synthesize --prompts ctx --profile tiny`
    data: dict  # prompts name -> image tree root
    prompt_rows: dict  # prompts name -> rows of the prompts artifact
    synth: Path  # the artifact folder of that finished run
    result: object  # its CLI result


@pytest.fixture(scope="module")
def one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _invoke(home: Path, *args: str):
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    env = {"SYNOOD_HOME": str(home), "SYNOOD_DEVICE": "cpu", "COLUMNS": "200"}  # CPU tests, also on a GPU machine
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_thread, tiny_weights) -> Base:
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.prompting import PromptConfig, plan_prompts, read_prompts, run_prompts
    from synood_cli.store import Store

    root = tmp_path_factory.mktemp("synth")
    home = seed_home(tiny_weights, root / "home")
    trees = {
        "ctx": {"cat": 4, "dog": 4, "fish": 4},
        "ctxbad": {"ant": 3, "bee": 3},  # the unreadable-source test corrupts one of these
    }
    data, rows = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("SYNOOD_HOME", str(home))
        for name, classes in trees.items():
            tree = write_tree(root / f"data-{name}", classes, corrupt=False, junk=False)
            plan = plan_prompts(PromptConfig(tree.root, mllm_spec("tiny"), per_class=3, max_new_tokens=8, batch_size=4, device="cpu"))
            art = run_prompts(plan, Store(home), name=name)
            assert art.complete
            data[name] = tree.root
            rows[name] = read_prompts(art)
            assert {r["class_index"] for r in rows[name]} == set(range(len(classes))), "every class needs prompt rows"
        r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert r.exit_code == 0, r.stderr
    (synth,) = Store(home).list("synth")
    return Base(home, data, rows, synth.path, r)


def copy_home(base: Base, dst: Path, models: bool = True) -> Path:
    """A private store: the prompts artifacts, plus (with `models`) the tiny weights, text features and
    boundary targets already built; never the finished synth run."""
    if models:
        shutil.copytree(base.home, dst, ignore=lambda d, names: ["synth"] if Path(d).name == "artifacts" else [])
    else:
        (dst / "artifacts").mkdir(parents=True)
        shutil.copytree(base.home / "artifacts" / "prompts", dst / "artifacts" / "prompts")
        shutil.copytree(base.home / "names", dst / "names")
    for n in (dst / "names").iterdir():
        if json.loads(n.read_text())["kind"] != "prompts":
            n.unlink()
    return dst


def synth_artifacts(home: Path):
    from synood_cli.store import Store

    return Store(home).list("synth")


def only_synth(home: Path) -> Path:
    arts = synth_artifacts(home)
    assert len(arts) == 1, [a.ref for a in arts]
    return arts[0].path


def manifest(art_dir: Path) -> dict:
    return json.loads((art_dir / "manifest.json").read_text())


def shard_files(art_dir: Path) -> list[str]:
    return sorted(p.name for p in (art_dir / "shards").iterdir()) if (art_dir / "shards").is_dir() else []


def read_rows(art_dir: Path) -> list[dict]:
    """All rows of all shards, in shard order; `image` is the raw PNG bytes."""
    import pyarrow.parquet as pq

    out = []
    for name in shard_files(art_dir):
        for row in pq.read_table(art_dir / "shards" / name).to_pylist():
            row["image"] = row["image"]["bytes"]
            row["shard"] = name
            out.append(row)
    return out


def decode(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def by_class(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(int(r["class_index"]), []).append(r)
    return out


# -- end to end ------------------------------------------------------------------------------


def test_end_to_end_prompts_to_shards(base):
    from PIL import Image

    from synood_cli.store import sha256_file

    r = base.result
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # stdout carries data only; the summary goes to stderr
    assert "9 images in 3 shards" in r.stderr
    m = manifest(base.synth)
    assert m["kind"] == "synth" and m["status"] == "complete"
    assert m["inputs"]["prompts"].startswith("prompts/")
    prompts = base.prompt_rows["ctx"]
    expected = by_class(prompts)
    assert shard_files(base.synth) == [f"class-{c:05d}.parquet" for c in sorted(expected)]

    import pyarrow.parquet as pq

    assert set(COLUMNS) <= set(pq.read_schema(base.synth / "shards" / "class-00000.parquet").names)
    rows = read_rows(base.synth)
    got = by_class(rows)
    target = m["summary"]["target"]
    assert isinstance(target, float) and math.isfinite(target)
    for c, want in expected.items():
        # one row per prompt row of the class, in prompt order
        assert [x["source_path"] for x in got[c]] == [w["image_path"] for w in want]
        for row, w in zip(got[c], want):
            assert row["shard"] == f"class-{c:05d}.parquet"
            assert row["class_name"] == w["class_name"] and row["prompt"] == w["prompt"]
            # the seed hashes the run seed with the path below the dataset root ("class/file"), so
            # moving the dataset does not change the noise
            rel = f"{Path(w['image_path']).parent.name}/{Path(w['image_path']).name}"
            assert row["seed"] == int(hashlib.sha256(f"0:{rel}".encode()).hexdigest()[:15], 16)
            assert row["guidance"] == "energy"
            assert row["target"] == target
            assert math.isfinite(row["final_score"])
            assert row["nonfinite_grad"] is False
            assert decode(row["image"]).shape == (SIZE, SIZE, 3)
    s = m["summary"]
    assert s["images"] == len(prompts) == 9
    assert s["shards"] == 3 and s["failures"] == 0 and s["failed_images"] == [] and s["nonfinite_gradients"] == 0
    mean = sum(abs(x["final_score"] - target) for x in rows) / len(rows)
    assert s["mean_abs_distance_to_target"] == pytest.approx(mean, rel=1e-9)
    # every payload file is in the manifest with its sha256
    for rel in [f"shards/{n}" for n in shard_files(base.synth)] + ["preview.png"]:
        assert m["files"][rel]["sha256"] == sha256_file(base.synth / rel)
    with Image.open(base.synth / "preview.png") as im:
        im.verify()
    with Image.open(base.synth / "preview.png") as im:
        from synood_cli.synthesis import PREVIEW_GAP, PREVIEW_LABEL, PREVIEW_THUMB

        assert im.format == "PNG"
        thumb = max(PREVIEW_THUMB, SIZE)  # tiny images are upscaled to be judged
        rows = math.ceil(9 / 4)  # 4 pairs (source | synthesized) a row, a gap around each, a label under each
        assert im.size == (4 * 2 * thumb + 5 * PREVIEW_GAP, rows * (thumb + PREVIEW_LABEL) + (rows + 1) * PREVIEW_GAP)
        px = im.convert("RGB")
        assert all(px.getpixel((PREVIEW_GAP + 2 * thumb + k, PREVIEW_GAP + thumb // 2)) == (255, 255, 255) for k in range(PREVIEW_GAP))  # the gap
        label_row = [px.getpixel((PREVIEW_GAP + k, PREVIEW_GAP + thumb + PREVIEW_LABEL // 2)) for k in range(2 * thumb)]
        assert any(p != (255, 255, 255) for p in label_row)  # the label is drawn under the first pair


def test_rerun_of_a_complete_run_does_nothing(base, tmp_path):
    home = copy_home(base, tmp_path / "home")
    shutil.copytree(base.synth, home / "artifacts" / "synth" / base.synth.name)
    before = {p: p.stat().st_mtime_ns for p in (home / "artifacts" / "synth").rglob("*.parquet")}
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert r.exit_code == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in (home / "artifacts" / "synth").rglob("*.parquet")} == before


def test_same_command_in_a_fresh_store_gives_identical_bytes(base, tmp_path):
    # only the prompts are copied: the tiny models and the boundary target are rebuilt from scratch
    home = copy_home(base, tmp_path / "home", models=False)
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert r.exit_code == 0, r.stderr
    art = only_synth(home)
    assert art.name == base.synth.name  # same config and inputs: same artifact id
    a, b = read_rows(base.synth), read_rows(art)
    assert [x["source_path"] for x in a] == [x["source_path"] for x in b]
    assert [x["image"] for x in a] == [x["image"] for x in b]
    assert [x["final_score"] for x in a] == [x["final_score"] for x in b]
    assert manifest(art)["summary"]["target"] == manifest(base.synth)["summary"]["target"]


@pytest.fixture(scope="module")
def batch_of_one(base, tmp_path_factory) -> Path:
    """`synthesize --prompts ctx --batch-size 1` in a copy of the base store: its synth artifact folder."""
    home = copy_home(base, tmp_path_factory.mktemp("batch-of-one") / "home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--batch-size", "1")
    assert r.exit_code == 0, r.stderr
    return only_synth(home)


def test_batch_size_does_not_change_results(base, batch_of_one):
    import numpy as np

    art = batch_of_one
    assert art.name == base.synth.name  # the batch size is not part of the result's identity
    a, b = read_rows(base.synth), read_rows(art)  # base ran with the tiny profile's batch of 4
    assert [(x["shard"], x["source_path"], x["seed"]) for x in a] == [(x["shard"], x["source_path"], x["seed"]) for x in b]
    # Per-image seeds make the runs the same computation; only CPU GEMM/conv rounding differs with
    # the batch shape, so pixels may differ by a rounding step and scores in the last digits.
    for x, y in zip(a, b):
        assert np.abs(decode(x["image"]) - decode(y["image"])).max() <= 2
        assert y["final_score"] == pytest.approx(x["final_score"], rel=1e-3)


# -- guidance --------------------------------------------------------------------------------


def test_guidance_moves_scores_toward_the_target(base, tmp_path):
    home = copy_home(base, tmp_path / "home")
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--lr", "0", "--name", "lr0")
    assert r.exit_code == 0, r.stderr
    from synood_cli.store import Store

    still = Store(home).find("lr0").path
    guided, unguided = read_rows(base.synth), read_rows(still)  # base: --lr 10 (the tiny profile's)
    target = manifest(base.synth)["summary"]["target"]
    assert manifest(still)["summary"]["target"] == target  # same boundary target for both
    assert {x["target"] for x in unguided} == {target}

    def distance(rows):
        return sum(abs(x["final_score"] - target) for x in rows) / len(rows)

    # without a step the noise never moves; with it the final energy lands much nearer the boundary
    assert distance(guided) < 0.5 * distance(unguided)
    assert manifest(still)["summary"]["mean_abs_distance_to_target"] == pytest.approx(distance(unguided))
    assert all(x["image"] != y["image"] for x, y in zip(guided, unguided))


@pytest.fixture(scope="module")
def inpainter(base):
    import torch

    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.store import Store

    return load_inpainter(TINY_DIFFUSION, Store(base.home), torch.device("cpu"), torch.float32)


def _config(**over):
    from synood_cli.models.diffusion import TINY_DIFFUSION
    from synood_cli.synthesis import SynthConfig

    kw = dict(prompts="ctx", diffusion=TINY_DIFFUSION, size=SIZE, steps=10, iterations=3, lr=10.0, profile="tiny", device="cpu")
    return SynthConfig(**{**kw, **over})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_drops_only_that_images_update(base, inpainter, bad):
    import torch

    from synood_cli.guidance import GuideModel
    from synood_cli.synthesis import Synthesizer, load_source

    cfg, inp = _config(), inpainter
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3 * 8 * 8, generator=gen)

    def fine(x):  # a small differentiable 3-class classifier
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ w.T

    def broken(x):  # row 1's logits (and so its score and gradient) are not finite
        scale = torch.ones(x.shape[0], 1)
        scale[1] = bad
        return fine(x) * scale

    rows = base.prompt_rows["ctx"][:2]
    sources = torch.stack([load_source(r["image_path"], SIZE) for r in rows])
    prompts, seeds = [r["prompt"] for r in rows], [11, 22]
    cpu = torch.device("cpu")
    x_ok, s_ok, nf_ok = Synthesizer(cfg, inp, GuideModel(fine, "fine"), 0.0, cpu).run(sources, prompts, seeds)
    x_bad, s_bad, nf_bad = Synthesizer(cfg, inp, GuideModel(broken, "broken"), 0.0, cpu).run(sources, prompts, seeds)
    x_still, _, _ = Synthesizer(_config(lr=0.0), inp, GuideModel(fine, "fine"), 0.0, cpu).run(sources, prompts, seeds)

    assert nf_ok.tolist() == [False, False]
    assert nf_bad.tolist() == [False, True]
    assert torch.isfinite(x_bad).all()
    assert torch.isfinite(s_bad[0]) and not torch.isfinite(s_bad[1])
    # image 0 got its update as if nothing were wrong; image 1 kept its unguided start noise
    torch.testing.assert_close(x_bad[0], x_ok[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(x_bad[1], x_still[1], rtol=0, atol=1e-5)
    assert (x_ok[1] - x_still[1]).abs().max() > 1e-3  # the guided update does change image 1


def test_source_fit_reaches_every_source_load_and_the_manifest(base, tmp_path, monkeypatch):
    """--source-fit squash (the paper profile's) is how the boundary target, the synthesis and the preview load sources."""
    import synood_cli.synthesis as synthesis

    home = copy_home(base, tmp_path / "home")
    fits = []
    real_load = synthesis.load_source

    def load_source(path, size, fit="crop"):
        fits.append(fit)
        return real_load(path, size, fit)

    monkeypatch.setattr(synthesis, "load_source", load_source)
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--classes", "0", "--source-fit", "squash")
    assert r.exit_code == 0, r.stderr
    assert manifest(only_synth(home))["config"]["source_fit"] == "squash"
    # class 0's 3 sources, each for the boundary target (a new one: it keys on the fit), the synthesis and the preview
    assert fits == ["squash"] * 9


def test_nonfinite_gradient_is_recorded_in_shards_and_manifest(base, tmp_path, monkeypatch):
    import synood_cli.synthesis as synthesis

    home = copy_home(base, tmp_path / "home")  # boundary target cached: the guide only sees synthesis
    victim = base.prompt_rows["ctx"][4]["image_path"]
    current = {}
    real_load, real_build = synthesis.load_source, synthesis.build_guide

    def load_source(path, size, fit="crop"):
        current["path"] = path
        return real_load(path, size, fit)

    def build_guide(*a, **k):
        guide = real_build(*a, **k)
        forward = guide.forward

        def poisoned(x):  # with --batch-size 1 the last loaded source is the image being synthesized
            logits = forward(x)
            return logits * float("nan") if current.get("path") == victim else logits

        guide.forward = poisoned
        return guide

    monkeypatch.setattr(synthesis, "load_source", load_source)
    monkeypatch.setattr(synthesis, "build_guide", build_guide)
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--batch-size", "1")
    assert r.exit_code == 0, r.stderr
    assert "non-finite guidance gradient" in r.stderr and Path(victim).name in r.stderr
    art = only_synth(home)
    rows = read_rows(art)
    assert len(rows) == 9
    flagged = [x["source_path"] for x in rows if x["nonfinite_grad"]]
    assert flagged == [victim]
    assert all(math.isfinite(x["final_score"]) for x in rows if x["source_path"] != victim)
    assert decode(next(x["image"] for x in rows if x["source_path"] == victim)).shape == (SIZE, SIZE, 3)
    assert manifest(art)["summary"]["nonfinite_gradients"] == 1
    assert math.isfinite(manifest(art)["summary"]["mean_abs_distance_to_target"])


# -- resumption and distribution -------------------------------------------------------------


def _subprocess_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNOOD_")}
    env.update({"SYNOOD_HOME": str(home), "SYNOOD_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.mark.slow
def test_resume_after_kill_loses_and_duplicates_nothing(base, batch_of_one, tmp_path):
    reference = read_rows(batch_of_one)  # the same command, never killed
    n_classes = 3

    home = copy_home(base, tmp_path / "home")
    # killed in the middle of class 1 (one image at a time, 3 per class): class 0's shard is written,
    # class 1's first image is synthesized and held only in memory
    args = ["synthesize", "--prompts", "ctx", *TINY, "--batch-size", "1"]
    log = tmp_path / "killed.log"
    proc, paused = start_paused("synood_cli.synthesis:run_with_backoff", 5, args, home, log, env={"SYNOOD_DEVICE": "cpu"})
    kill_when_paused(proc, paused, log)
    art = only_synth(home)
    done = shard_files(art)
    assert done == ["class-00000.parquet"], done
    assert manifest(art)["status"] == "partial"
    assert list(art.glob("shards/.*")) == []  # nothing of class 1 reached the store, not even a temp file
    kept = {n: (art / "shards" / n).stat().st_mtime_ns for n in done}

    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--batch-size", "1")
    assert r.exit_code == 0, r.stderr
    assert f"{len(done)} class shard(s) already complete" in r.stderr
    assert manifest(art)["status"] == "complete"
    assert {n: (art / "shards" / n).stat().st_mtime_ns for n in done} == kept  # skipped, not redone
    resumed = read_rows(art)
    assert shard_files(art) == [f"class-{c:05d}.parquet" for c in range(n_classes)]
    paths = [x["source_path"] for x in resumed]
    assert len(paths) == len(set(paths)) == len(base.prompt_rows["ctx"])
    assert [(x["shard"], x["source_path"]) for x in resumed] == [(x["shard"], x["source_path"]) for x in reference]
    assert [x["image"] for x in resumed] == [x["image"] for x in reference]
    assert manifest(art)["summary"]["images"] == len(reference)


@pytest.mark.slow
def test_torchrun_two_ranks_match_a_single_process(base, tmp_path):
    # Only the prompts are kept: both ranks ask for the tiny models, text features and the boundary
    # target at once, and must wait for each other instead of failing (store.build waits by default).
    home = copy_home(base, tmp_path / "home")
    for kind in ("weights", "text-features", "boundary", "synth"):
        shutil.rmtree(home / "artifacts" / kind, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "synood_cli", "synthesize", "--prompts", "ctx", *TINY],
        env=_subprocess_env(home), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr
    art = only_synth(home)
    assert art.name == base.synth.name
    m = manifest(art)
    assert m["status"] == "complete"
    assert m["summary"]["images"] == 9
    assert shard_files(art) == shard_files(base.synth)
    a, b = read_rows(base.synth), read_rows(art)
    assert [(x["shard"], x["source_path"]) for x in a] == [(x["shard"], x["source_path"]) for x in b]
    assert [x["image"] for x in a] == [x["image"] for x in b]  # the single-process run, also 1 thread
    assert (art / "preview.png").is_file()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--prompts", "nope"), ("no prompts artifact named 'nope'",)),
        (("--prompts", "ctx", "--classes", "0:99"), ("--classes 0:99", "no prompts", "the prompts cover classes 0:3")),
        (("--prompts", "ctx", "--classes", "5"), ("--classes 5", "cover classes 0:3")),
        (("--prompts", "ctx", "--guidance", "bogus"), ("unknown guidance 'bogus'", "energy, mean-log-softmax, msp, none")),
        (("--prompts", "ctx", "--guidance", "enrgy"), ("unknown guidance 'enrgy'", "did you mean --guidance energy?")),
        (("--prompts", "ctx", "--mask", "box"), ("--mask 'box' is not supported", "--mask full")),
        (("--prompts", "ctx", "--target", "abc"), ("--target must be 'boundary' or a number", "'abc'")),
        (("--prompts", "ctx", "--guide-model", "foo"), ("unknown --guide-model 'foo'", "torchvision:")),
        (("--prompts", "ctx", "--size", "30"), ("--size must be a multiple of 8",)),
        (("--prompts", "ctx", "--steps", "1"), ("runs no denoising step",)),
    ],
)
def test_usage_errors_exit_2_before_any_work(base, tmp_path, args, fragments):
    home = copy_home(base, tmp_path / "home")
    r = _invoke(home, "synthesize", *args, *TINY)
    assert_clean_error(_result(r), 2, *fragments)
    assert not (home / "artifacts" / "synth").exists()


def _result(r):
    from conftest import Result

    return Result(r.exit_code, r.stdout, r.stderr)


def test_incomplete_prompts_artifact_is_refused(base, tmp_path):
    from synood_cli.store import Store

    home = copy_home(base, tmp_path / "home", models=False)
    prompts = Store(home).find("ctx", kind="prompts")
    m = json.loads(prompts.file("manifest.json").read_text())
    m["status"] = "partial"
    prompts.file("manifest.json").write_text(json.dumps(m))
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert_clean_error(_result(r), 2, f"the prompts artifact {prompts.ref} is incomplete (partial)", "synood prompt")
    assert not (home / "artifacts" / "synth").exists()


def test_diffusion_model_not_cached_offline_exits_3(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = copy_home(base, tmp_path / "home")
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY, "--diffusion", "some-org/x")
    assert_clean_error(_result(r), 3, "diffusion model some-org/x is not in the local cache", str(tmp_path / "hf"))
    assert not (home / "artifacts" / "synth").exists()


def test_unreadable_source_image_is_skipped_and_recorded(base, tmp_path):
    home = copy_home(base, tmp_path / "home")
    rows = base.prompt_rows["ctxbad"]
    victim = rows[1]["image_path"]
    Path(victim).write_bytes(b"\x00garbage, not an image" * 10)
    r = _invoke(home, "synthesize", "--prompts", "ctxbad", *TINY)
    assert r.exit_code == 0, r.stderr
    assert f"skipped {victim}: unreadable source image" in r.stderr
    art = only_synth(home)
    m = manifest(art)
    assert m["status"] == "complete"
    got = [x["source_path"] for x in read_rows(art)]
    assert got == [x["image_path"] for x in rows if x["image_path"] != victim]
    assert m["summary"]["images"] == len(rows) - 1
    assert m["summary"]["failures"] == 1
    (failed,) = m["summary"]["failed_images"]
    assert failed.startswith(f"{victim}: unreadable")
    assert shard_files(art) == ["class-00000.parquet", "class-00001.parquet"]


def test_disk_full_while_writing_a_shard(base, tmp_path, monkeypatch):
    import datasets

    from synood_cli.errors import SynoodError
    from synood_cli.profiles import load_profile
    from synood_cli.store import Store
    from synood_cli.synthesis import SynthConfig, plan_synthesis, run_synthesis

    home = copy_home(base, tmp_path / "home")
    store = Store(home)
    cfg = SynthConfig(prompts="ctx", profile="tiny", device="cpu", **load_profile("tiny")["synthesize"])
    plan = plan_synthesis(cfg, store)
    real = datasets.Dataset.to_parquet

    def to_parquet(self, path, *a, **k):
        # a real full disk cannot be made in a test: the second shard's write fails half-way
        if "class-00001" in str(path):
            Path(path).write_bytes(b"PAR1 half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet)
    with pytest.raises(SynoodError) as e:
        run_synthesis(plan, store)
    assert "disk full" in e.value.message
    assert "the one in flight was not written" in e.value.message
    assert "free space" in e.value.hint
    art = store.artifact("synth", plan.artifact_config)
    assert art.status == "partial"
    assert sorted(os.listdir(art.path / "shards")) == ["class-00000.parquet"]  # no half shard, no temp file
    first = (art.path / "shards" / "class-00000.parquet").stat().st_mtime_ns

    monkeypatch.setattr(datasets.Dataset, "to_parquet", real)
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert r.exit_code == 0, r.stderr
    assert art.complete
    assert (art.path / "shards" / "class-00000.parquet").stat().st_mtime_ns == first
    assert [x["image"] for x in read_rows(art.path)] == [x["image"] for x in read_rows(base.synth)]


def test_disk_full_through_the_cli_is_a_clean_error(base, tmp_path, monkeypatch):
    import datasets

    home = copy_home(base, tmp_path / "home")

    def to_parquet(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet)
    r = _invoke(home, "synthesize", "--prompts", "ctx", *TINY)
    assert r.exit_code == 3, r.stderr  # a missing resource (CONVENTIONS.md), not an internal error
    assert "\nerror: disk full while writing to the store" in r.stderr, r.stderr
    assert "hint: free space" in r.stderr and "Traceback" not in r.stderr
    art = only_synth(home)
    assert manifest(art)["status"] == "partial"
    assert list(art.glob("shards/*")) == [] and list(art.glob("shards/.*")) == []


# -- export ----------------------------------------------------------------------------------


def test_store_export_writes_an_image_folder(base, tmp_path):
    out = tmp_path / "exported"
    r = _invoke(base.home, "store", "export", base.synth.name, "--to", str(out))
    assert r.exit_code == 0, r.stderr
    rows = read_rows(base.synth)
    assert f"exported {len(rows)} images" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "fish"]
    for want in by_class(rows).values():
        name = want[0]["class_name"]
        files = sorted((out / name).iterdir())
        assert len(files) == len(want)
        assert all(f.suffix == ".png" for f in files)
        exported = sorted(decode(f.read_bytes()).tobytes() for f in files)
        assert exported == sorted(decode(x["image"]).tobytes() for x in want)


def test_store_export_refuses_other_kinds(base):
    r = _invoke(base.home, "store", "export", "ctx", "--to", "/nonexistent/never-written")
    assert_clean_error(_result(r), 2, "is a prompts artifact")


def _exported_rows(ds) -> list[tuple]:
    import datasets

    raw = ds.cast_column("image", datasets.Image(decode=False))
    return sorted((r["class_index"], r["class_name"], r["source_path"], r["prompt"], r["seed"], r["image"]["bytes"]) for r in raw)


def test_store_export_to_parquet_reloads_with_datasets_and_reruns_idempotently(base, tmp_path):
    import datasets

    out = tmp_path / "exported-parquet"
    r = _invoke(base.home, "store", "export", base.synth.name, "--to-parquet", str(out))
    assert r.exit_code == 0, r.stderr
    rows = read_rows(base.synth)
    assert f"exported {len(rows)} images" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == shard_files(base.synth)  # no temp files left
    want = sorted((x["class_index"], x["class_name"], x["source_path"], x["prompt"], x["seed"], x["image"]) for x in rows)

    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert len(ds) == len(rows)
    assert isinstance(ds.features["image"], datasets.Image)  # still an Image column for datasets users
    assert _exported_rows(ds) == want
    first = ds[0]["image"]
    assert first.size == (SIZE, SIZE)

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = _invoke(base.home, "store", "export", base.synth.name, "--to-parquet", str(out))
    assert again.exit_code == 0, again.stderr
    assert f"exported {len(rows)} images" in again.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before  # left alone
    ds2 = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert _exported_rows(ds2) == want  # nothing doubled


def test_store_export_to_parquet_replaces_a_different_file_of_the_same_size(base, tmp_path):
    out = tmp_path / "exported-parquet"
    assert _invoke(base.home, "store", "export", base.synth.name, "--to-parquet", str(out)).exit_code == 0
    name = shard_files(base.synth)[0]
    target = out / name
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(16)  # same size, different content (a stale or damaged copy)
    target.write_bytes(bytes(data))
    r = _invoke(base.home, "store", "export", base.synth.name, "--to-parquet", str(out))
    assert r.exit_code == 0, r.stderr
    assert target.read_bytes() == (base.synth / "shards" / name).read_bytes()


def test_store_export_to_hub_offline_is_a_clean_error(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _invoke(base.home, "store", "export", base.synth.name, "--to-hub", "some-org/synood-near-ood", "--private")
    assert_clean_error(_result(r), 3, "cannot push to some-org/synood-near-ood", "HF_HUB_OFFLINE")
    assert r.stderr.splitlines()[0].startswith("error:") and len(r.stderr.splitlines()) <= 2  # the error and its hint


@pytest.mark.parametrize(
    "targets,fragments",
    [
        (["--to", "A", "--to-parquet", "B"], ["give exactly one of --to DIR, --to-parquet DIR, --to-hub REPO"]),
        (["--to-parquet", "B", "--to-hub", "org/name"], ["give exactly one of"]),
        ([], ["give exactly one of"]),
        (["--to-hub", "just-a-name"], ["--to-hub takes ORG/NAME", "just-a-name"]),
    ],
)
def test_store_export_needs_exactly_one_target(base, tmp_path, targets, fragments):
    args = [str(tmp_path / t) if t in ("A", "B") else t for t in targets]
    r = _invoke(base.home, "store", "export", base.synth.name, *args)
    assert_clean_error(_result(r), 2, *fragments)
    assert not (tmp_path / "A").exists() and not (tmp_path / "B").exists()
