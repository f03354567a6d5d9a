"""Bad input and faults as a hostile or unlucky user meets them (issue 12), on the tiny profile.

One module-scoped store holds a small pipeline (prompts `ctx`, synthesis `near`, checkpoint `ck`);
tests that damage it work on a copy. Most runs are in-process (Typer's CliRunner); the ones the
issue names as real CLI runs (a deleted shard, markup in file names, `store rm` under a running
`synthesize`) run `python -m synood_cli` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import Result, Tripwire, make_image, run_cli, truncated_jpeg_bytes, write_flat, write_tree

TINY = ["--profile", "tiny"]
CLASSES = ("cat", "dog")


def in_process(home: Path, *args: str) -> Result:
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    env = {"SYNOOD_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "SYNOOD_DEVICE": "cpu"}
    r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, shared_home):
    """The session's shared store (tiny weights built once) plus prompts `h-ctx`, synthesis `h-near`, checkpoint `h-ck`."""
    root = tmp_path_factory.mktemp("hostile")
    home = shared_home
    tree = write_tree(root / "train", {c: 2 for c in CLASSES}, corrupt=False, junk=False)
    for args in (
        ("prompt", str(tree.root), *TINY, "--per-class", "1", "--name", "h-ctx"),
        ("synthesize", "--prompts", "h-ctx", *TINY, "--name", "h-near"),
        ("finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--name", "h-ck"),
    ):
        r = in_process(home, *args)
        assert r.returncode == 0, (args, r.stderr)
    from synood_cli.store import Store

    store = Store(home)
    return {"root": root, "home": home, "tree": tree, "synth": store.find("h-near"), "ck": store.find("h-ck"), "ood": write_flat(root / "ood", 2)}


@pytest.fixture
def home(pipe, tmp_path) -> Path:
    """A private copy of the pipeline's store, free to damage."""
    dst = tmp_path / "home-copy"
    shutil.copytree(pipe["home"], dst, ignore=shutil.ignore_patterns(".locks"))
    return dst


def one_error_line(r: Result, code: int, *fragments: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def strict_json(line: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


# ---------------------------------------------------------------- 2. a missing shard


@pytest.mark.slow
def test_a_deleted_shard_is_noticed_by_finetune_export_and_synthesize(pipe, home, tmp_path):
    synth = pipe["synth"]
    shard = home / "artifacts" / "synth" / synth.id / "shards" / "class-00001.parquet"
    original = shard.read_bytes()
    shard.unlink()
    r = run_cli("finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--adapter-epochs", "1", home=home)  # real CLI run
    one_error_line(r, 3, synth.ref, "shards/class-00001.parquet is missing", "synood synthesize", f"synood store rm {synth.ref}")
    r = in_process(home, "store", "export", "h-near", "--to", str(tmp_path / "exported"))
    one_error_line(r, 3, "shards/class-00001.parquet is missing")
    assert not (tmp_path / "exported").exists()
    r = in_process(home, "store", "verify", "h-near")
    assert r.returncode == 3 and "damaged" in r.stdout
    # the producing command redoes only what is missing, bit for bit
    r = in_process(home, "synthesize", "--prompts", "h-ctx", *TINY)
    assert r.returncode == 0, r.stderr
    assert "damaged" in r.stderr and shard.read_bytes() == original
    r = in_process(home, "store", "verify", "h-near")
    assert r.returncode == 0 and r.stdout == f"{synth.ref}\tok\n", r.stderr


def test_a_truncated_or_garbled_shard_is_exit_3_naming_it(pipe, home):
    shard = home / "artifacts" / "synth" / pipe["synth"].id / "shards" / "class-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    r = in_process(home, "finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--adapter-epochs", "1")
    one_error_line(r, 3, "class-00000.parquet has")
    shard.write_bytes(b"\0" * len(data))  # same size: only reading it shows the damage
    r = in_process(home, "finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--adapter-epochs", "1")
    one_error_line(r, 3, pipe["synth"].ref, "class-00000.parquet cannot be read")


# ---------------------------------------------------------------- 3. Rich markup in paths and arguments


@pytest.mark.slow
def test_file_names_with_markup_are_printed_literally(pipe, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "x[").mkdir(parents=True)
    make_image("m", 0).save(folder / "x[bold red]boom.png")
    (folder / "x[" / "red].jpg").write_bytes(truncated_jpeg_bytes())  # the path reads x[/red].jpg
    r = run_cli("score", str(folder / "x[bold red]boom.png"), str(folder / "x[/red].jpg"), *TINY, home=pipe["home"])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "x[bold red]boom.png" in r.stdout
    assert "x[/red].jpg" in r.stderr  # the skipped corrupt file, named as it is


@pytest.mark.parametrize(
    "args",
    [
        ("score", "PLACEHOLDER", "--method", "[/b]", *TINY),
        ("synthesize", "--prompts", "h-ctx", "--classes", "[/x]", *TINY),
        ("store", "show", "[/oops]"),
        ("finetune", "--prompts", "[/h-ctx]", "--synth", "h-near", *TINY),
    ],
)
def test_arguments_with_markup_give_one_error_line(pipe, args):
    args = tuple(str(pipe["ood"].root) if a == "PLACEHOLDER" else a for a in args)
    r = in_process(pipe["home"], *args)
    one_error_line(r, 2)
    assert "[/" in r.stderr  # the user's text, shown as typed


# ---------------------------------------------------------------- 5. busy artifacts

PART_HOLDER = """
import sys
from pathlib import Path
from synood_cli.store import Artifact, Store
home, art_id, marker = sys.argv[1:]
with Artifact(Store(home), "synth", art_id).lock(part="class-0"):
    Path(marker).write_text("held")
    sys.stdin.read()
"""


@pytest.mark.slow
def test_a_process_that_skipped_busy_classes_does_not_report_success(pipe, home, tmp_path):
    synth = pipe["synth"]
    r = in_process(home, "store", "rm", "h-near")
    assert r.returncode == 0, r.stderr
    marker = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", PART_HOLDER, str(home), synth.id, str(marker)], stdin=subprocess.PIPE)
    try:
        while not marker.exists():
            assert holder.poll() is None, "the holder died"
            time.sleep(0.02)
        r = in_process(home, "synthesize", "--prompts", "h-ctx", *TINY)
        one_error_line(r, 3, "partial", "class(es) 0")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    from synood_cli.store import Store

    art = Store(home).find(synth.ref)
    assert art.status == "partial"  # a rerun then completes it (the deleted-shard test shows a rerun redoing what is missing)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer ended before {path} appeared: {proc.stderr.read()}")
        time.sleep(0.05)


@pytest.mark.slow
def test_store_rm_refuses_an_artifact_synthesize_is_writing(pipe, home):
    """Real CLI run: `store rm` while `synthesize` writes is exit 2 naming the writer, which then completes.

    (With --force the writer fails instead of reporting success: test_store_safety covers that.)
    """
    synth = pipe["synth"]
    manifest = home / "artifacts" / "synth" / synth.id / "manifest.json"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SYNOOD_")}, "SYNOOD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    assert in_process(home, "store", "rm", synth.id).returncode == 0
    writer = subprocess.Popen([sys.executable, "-m", "synood_cli", "synthesize", "--prompts", "h-ctx", *TINY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(manifest, writer)
        r = in_process(home, "store", "rm", synth.id)
        one_error_line(r, 2, f"pid {writer.pid}", "--force")
        assert manifest.exists()
        out, err = writer.communicate(timeout=600)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert json.loads(manifest.read_text())["status"] == "complete"


# ---------------------------------------------------------------- 6. --model local:DIR never unpickles


def local_folder(tmp_path: Path, name: str, files: dict[str, dict]) -> Path:
    from safetensors.torch import save_file

    from synood_cli.profiles import profile_dir

    folder = tmp_path / name
    folder.mkdir()
    arch = json.loads((profile_dir() / "models" / "synood-tiny-clip.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": {}}))
    for fname, state in files.items():
        if fname.endswith(".safetensors"):
            save_file(state, str(folder / fname))
        else:
            torch.save(state, folder / fname)
    return folder


def tiny_state(pipe) -> dict:
    from safetensors.torch import load_file

    from synood_cli.store import Store

    (weights,) = [a for a in Store(pipe["home"]).list("weights") if (a.path / "open_clip_model.safetensors").exists()]
    return load_file(str(weights.path / "open_clip_model.safetensors"))



def test_local_folder_with_pickle_weights_is_refused_unread(pipe, tmp_path):
    from synood_cli.errors import UsageError
    from synood_cli.models.clip import ClipSource, load_clip
    from synood_cli.store import Store

    marker = tmp_path / "UNPICKLED"
    folder = local_folder(tmp_path, "both", {"model.safetensors": tiny_state(pipe), "open_clip_pytorch_model.bin": {"state_dict": Tripwire(str(marker))}})
    with pytest.raises(UsageError) as e:
        load_clip(ClipSource(f"local:{folder}"), Store(pipe["home"]), torch.device("cpu"), torch.float32)
    assert "open_clip_pytorch_model.bin" in e.value.message and "unpickle" in e.value.message
    assert not marker.exists()


def test_local_folder_loads_and_fingerprints_exactly_one_safetensors_file(pipe, tmp_path):
    from synood_cli.models.clip import ClipSource, load_clip
    from synood_cli.store import Store, sha256_file

    a = tiny_state(pipe)
    b = {k: v + 1 if v.is_floating_point() else v for k, v in a.items()}
    folder = local_folder(tmp_path, "two", {"open_clip_model.safetensors": a, "extra.safetensors": b})
    clip = load_clip(ClipSource(f"local:{folder}"), Store(pipe["home"]), torch.device("cpu"), torch.float32)
    # the weights part; "+gelu+pre:..." after it records the build (docs/method.md, "CLIP")
    assert clip.fingerprint.split("+")[0] == f"local@sha256:{sha256_file(folder / 'open_clip_model.safetensors')[:16]}"
    loaded = clip.model.state_dict()
    assert all(torch.equal(loaded[k], a[k]) for k in a)


# ---------------------------------------------------------------- 7. damaged checkpoints and caches


def checkpoint_copy(pipe, tmp_path: Path) -> Path:
    folder = tmp_path / "ck-copy"
    shutil.copytree(pipe["ck"].path, folder)
    return folder


def test_a_checkpoint_with_wrong_shapes_is_exit_3_naming_it(pipe, tmp_path):
    from safetensors.torch import save_file

    folder = checkpoint_copy(pipe, tmp_path)
    save_file({"linear.weight": torch.zeros(3, 3), "linear.bias": torch.zeros(3), "norm.weight": torch.ones(3), "norm.bias": torch.zeros(3)}, str(folder / "adapter.safetensors"))
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", str(folder))
    one_error_line(r, 3, f"checkpoint folder {folder} is damaged")
    assert r.stdout == ""


def test_a_checkpoint_with_invalid_labels_is_exit_3_naming_it(pipe, home):
    ck = home / "artifacts" / "checkpoint" / pipe["ck"].id
    (ck / "labels.json").write_text('["a", ')
    r = in_process(home, "score", str(pipe["ood"].root), *TINY, "--checkpoint", "h-ck")
    one_error_line(r, 3, pipe["ck"].ref, "labels.json")


def test_damaged_feature_and_weight_caches_are_rebuilt_with_a_warning(pipe, home):
    from synood_cli.store import Store

    store = Store(home)
    for art in store.list("features") + store.list("text-features"):
        f = art.path / "features.safetensors"
        f.write_bytes(b"\xff" * f.stat().st_size)  # same size: the size check passes, reading fails
    r = in_process(home, "finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--adapter-epochs", "1")
    assert r.returncode == 0, r.stderr
    assert "could not be read" in r.stderr and "rebuilding" in r.stderr
    before = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--format", "jsonl")
    (weights,) = [a for a in store.list("weights") if (a.path / "open_clip_model.safetensors").exists()]
    f = weights.path / "open_clip_model.safetensors"
    f.write_bytes(b"\xff" * f.stat().st_size)
    r = in_process(home, "score", str(pipe["ood"].root), *TINY, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert "tiny CLIP weights" in r.stderr and "rebuilding" in r.stderr
    assert r.stdout.replace(str(pipe["home"]), "") == before.stdout.replace(str(pipe["home"]), "")  # the same weights again


# ---------------------------------------------------------------- 9-11. outputs, options, NaN


def test_score_into_an_unwritable_place_is_exit_3(pipe):
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "-o", "/sys/synood-test/out.csv")
    one_error_line(r, 3, "cannot write")


def test_a_score_run_that_fails_midway_leaves_no_partial_file(pipe, tmp_path, monkeypatch):
    import synood_cli.scoring as scoring

    real = scoring.iter_scores

    def failing(*a, **k):
        for batch in real(*a, **k):
            yield batch
            raise RuntimeError("disk went away")

    monkeypatch.setattr(scoring, "iter_scores", failing)
    out = tmp_path / "out" / "scores.csv"
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "-o", str(out), "--batch-size", "1")
    assert r.returncode == 1 and "disk went away" in r.stderr
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("cmd", ["score", "prompt"])
def test_batch_size_zero_is_refused(pipe, cmd):
    target = str(pipe["ood"].root) if cmd == "score" else str(pipe["tree"].root)
    r = in_process(pipe["home"], cmd, target, *TINY, "--batch-size", "0")
    one_error_line(r, 2, "--batch-size")


def test_a_bad_name_is_refused_before_finetune_trains(pipe, home):
    from synood_cli.store import Store

    before = len(Store(home).list("checkpoint"))
    r = in_process(home, "finetune", "--prompts", "h-ctx", "--synth", "h-near", *TINY, "--adapter-epochs", "1", "--name", "../bad name")
    one_error_line(r, 2, "invalid artifact name")
    assert len(Store(home).list("checkpoint")) == before  # nothing was trained and stored


def test_nan_scores_are_null_in_jsonl_counted_and_exit_4_under_strict(pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = checkpoint_copy(pipe, tmp_path)
    state = load_file(str(folder / "adapter.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(folder / "adapter.safetensors"))
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", str(folder), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [strict_json(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(row["score"] is None for row in rows)  # the 2 OOD images
    assert "2 image(s) got a non-finite score" in r.stderr
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", str(folder), "--format", "jsonl", "--strict")
    one_error_line(r, 4, "non-finite")
    # with a threshold: a NaN score is neither ID nor OOD (null, an empty CSV cell), and still counts toward --strict
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", str(folder), "--format", "jsonl", "--threshold", "0.5")
    assert r.returncode == 0, r.stderr
    assert [strict_json(line)["is_ood"] for line in r.stdout.splitlines()] == [None, None]
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", str(folder), "--threshold", "0.5", "--strict")
    assert r.returncode == 4 and [row.rsplit(",", 1)[1] for row in r.stdout.splitlines()[1:]] == ["", ""]


# ---------------------------------------------------------------- a checkpoint brings its own settings (issue 22)


def test_a_checkpoint_needs_no_profile_and_refuses_flags_that_contradict_it(pipe, tmp_path):
    with_profile = in_process(pipe["home"], "score", str(pipe["ood"].root), *TINY, "--checkpoint", "h-ck", "--format", "jsonl")
    bare = in_process(pipe["home"], "score", str(pipe["ood"].root), "--checkpoint", "h-ck", "--format", "jsonl")
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == with_profile.stdout  # the checkpoint's tiny profile, model and groups, without flags
    r = in_process(pipe["home"], "evaluate", "--id", str(pipe["tree"].root), "--ood", str(pipe["ood"].root), "--checkpoint", "h-ck",
                   "--model", "tiny", "--format", "json")  # --model tiny agrees with the checkpoint: accepted, the tiny profile's settings
    assert r.returncode == 0, r.stderr
    ident = json.loads(r.stdout)["identities"]["synood"]
    assert ident["checkpoint"] == pipe["ck"].id and ident["groups"] == 10 and ident["classes"]["names"] == list(CLASSES)
    for flags, fragments in (
        (["--profile", "default"], ["--profile default", "--profile tiny"]),
        (["--groups", "5"], ["--groups 5", "--groups 10"]),
        (["--model", "ViT-B-32"], ["--model ViT-B-32", "synood-tiny-clip"]),
    ):
        r = in_process(pipe["home"], "score", str(pipe["ood"].root), "--checkpoint", "h-ck", *flags)
        one_error_line(r, 2, *fragments)
    other = tmp_path / "classes.txt"
    other.write_text("cat\nbird\n")
    for cmd in (["score", str(pipe["ood"].root)], ["evaluate", "--id", str(pipe["tree"].root), "--ood", str(pipe["ood"].root)]):
        r = in_process(pipe["home"], *cmd, "--checkpoint", "h-ck", "--classnames", str(other))
        one_error_line(r, 2, "2 classes (cat, bird)", "trained on 2 classes (cat, dog)")


def test_the_checkpoint_threshold_fits_its_scores_and_a_tampered_identity_is_refused(pipe, tmp_path):
    r = in_process(pipe["home"], "score", str(pipe["tree"].root), "--checkpoint", "h-ck", "--threshold", "fpr95", "--format", "jsonl")
    assert r.returncode == 0, r.stderr  # finetune recorded exactly the identity score computes
    rows = [strict_json(line) for line in r.stdout.splitlines()]
    assert rows[0]["identities"]["synood"]["checkpoint"] == pipe["ck"].id and all(isinstance(row["is_ood"], bool) for row in rows)
    folder = checkpoint_copy(pipe, tmp_path)  # a copied folder keeps the checkpoint's identity
    r = in_process(pipe["home"], "score", str(pipe["tree"].root), "--checkpoint", str(folder), "--threshold", "fpr95", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rec = json.loads((folder / "threshold.json").read_text())
    rec["identity"]["groups"] = 5
    (folder / "threshold.json").write_text(json.dumps(rec))
    r = in_process(pipe["home"], "score", str(pipe["tree"].root), "--checkpoint", str(folder), "--threshold", "fpr95")
    one_error_line(r, 2, "groups: 5 there, 10 in these synood scores")


def test_detector_takes_the_checkpoints_settings_and_threshold(pipe):
    from synood_cli.api import Detector

    det = Detector(checkpoint="h-ck", home=pipe["home"], device="cpu")  # no profile: the checkpoint's
    t = det.threshold_info
    assert t is not None and "checkpoint h-ck" in t.source and t.tpr == 0.95
    got = det.score_folder(pipe["tree"].root)
    assert got.threshold is t and got.is_ood.dtype == bool
    np = pytest.importorskip("numpy")
    np.testing.assert_array_equal(got.is_ood, got.scores < t.value)
    with pytest.raises(ValueError, match=r"classnames names 2 classes \(cat, bird\), but checkpoint h-ck was trained on 2 classes \(cat, dog\)"):
        Detector(["cat", "bird"], checkpoint="h-ck", home=pipe["home"], device="cpu")
    with pytest.raises(ValueError, match="--profile default contradicts checkpoint h-ck, made with --profile tiny"):
        Detector(checkpoint="h-ck", profile="default", home=pipe["home"], device="cpu")


# ---------------------------------------------------------------- 13. a corrupt --pretrained file


def test_a_corrupt_pretrained_file_is_not_called_missing_from_the_cache(pipe, tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    r = in_process(pipe["home"], "score", str(pipe["ood"].root), "--profile", "tiny", "--model", "ViT-B-32", "--pretrained", str(bad))
    one_error_line(r, 2, str(bad), "could not be loaded")
    assert "not in the local cache" not in r.stderr
