"""Nothing outside the store is written or deleted, whatever is planted in a shared store (issue 21).

Each test plants what a hostile member of the group could (a link at a lock path, a tampered
manifest, a symlinked kind or artifact folder), runs the real command in-process (Typer's
CliRunner, the same code as the CLI) and checks that the outside files keep their content and
type, and the exit code. Also the store's own leftovers gc must collect, and caches that are
intact on disk but do not fit their use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from conftest import files_builder
from synood_cli.errors import DamagedArtifact, SynoodWarning
from synood_cli.store import STALE_TMP_S, Artifact, Store, atomic_write_json


@pytest.fixture
def store(synood_home) -> Store:
    return Store(synood_home)


def victim(tmp_path: Path, name: str = "victim.txt", text: str = "precious") -> Path:
    """A file outside the store that must survive, unchanged and still a regular file."""
    p = tmp_path / "outside" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def assert_kept(p: Path, text: str = "precious") -> None:
    assert stat.S_ISREG(os.lstat(p).st_mode), f"{p} is no longer a regular file"
    assert p.read_text() == text, f"{p} was overwritten"


def old(p: Path) -> None:
    t = time.time() - STALE_TMP_S - 60
    os.utime(p, (t, t), follow_symlinks=False)


# ---------------------------------------------------------------- lock files


@pytest.mark.parametrize("planted", ["link", "dangling-link", "fifo", "hard-link", "locks-folder-link", "dangling-locks-folder"])
def test_a_lock_path_that_is_not_a_plain_file_of_the_store_is_refused(store, invoke, tmp_path, planted):
    """A link at `.locks/<id>.lock` made `store rm` overwrite its target with a pid (exit 0); a dangling one created a file outside."""
    art = store.artifact("synth", {"p": 1})
    art.begin({"p": 1})  # partial: `gc --partial` asks its lock too
    lock = art.path.parent / ".locks" / f"{art.id}.lock"
    target = victim(tmp_path)
    if "locks-folder" in planted:  # the whole .locks folder planted as a link
        outside = target.parent if planted == "locks-folder-link" else tmp_path / "outside" / "new"
        lock.parent.symlink_to(outside)
        lock = lock.parent
    else:
        lock.parent.mkdir()
    if planted == "link":
        lock.symlink_to(target)
    elif planted == "dangling-link":
        target = tmp_path / "outside" / "created.txt"
        lock.symlink_to(target)
    elif planted == "fifo":
        os.mkfifo(lock)
    elif planted == "hard-link":
        os.link(target, lock)
    r = invoke("store", "rm", art.id)
    assert r.returncode == 3, (planted, r.returncode, r.stderr)
    assert r.stderr.startswith("error:") and str(lock) in r.stderr and "Traceback" not in r.stderr
    r = invoke("store", "gc", "--partial")
    assert r.returncode == 0 and str(lock) in r.stderr and "Traceback" not in r.stderr, (planted, r.stderr)
    assert art.exists  # nothing removed
    if "locks-folder" in planted:
        assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["victim.txt"]  # no lock file made there
        assert_kept(target)
    elif planted == "dangling-link":
        assert not os.path.lexists(target), "a file was created outside the store"
        assert os.readlink(lock) == str(target)
    elif planted == "fifo":
        assert stat.S_ISFIFO(os.lstat(lock).st_mode)
    else:
        assert_kept(target)


def test_lock_files_stay_empty_and_the_holder_is_still_named(store, tmp_path):
    art = store.build("dataset", {"a": 1}, files_builder({"x.txt": b"x"}))
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from synood_cli.store import Artifact, Store
        art = Artifact(Store(sys.argv[1]), "dataset", sys.argv[2])
        with art.lock():
            Path(sys.argv[3]).write_text("held")
            sys.stdin.read()
        """
    )
    marker = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", code, str(store.root), art.id, str(marker)], stdin=subprocess.PIPE)
    try:
        while not marker.exists():
            assert proc.poll() is None, "the holder died"
            time.sleep(0.02)
        assert f"pid {proc.pid}" in store.holder(art)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert (art.path.parent / ".locks" / f"{art.id}.lock").stat().st_size == 0  # nothing is written into a lock


# ---------------------------------------------------------------- manifest entries


def tamper(art: Artifact, entries: dict) -> None:
    m = art.manifest
    m["files"].update(entries)
    atomic_write_json(art.path / "manifest.json", m)


def test_a_manifest_entry_with_dot_dot_is_reported_invalid_by_verify_and_show(store, invoke):
    """Issue 20: `sub/../a.bin` names a real file of the right size and hash; only the `..` check refuses it."""
    art = store.build("dataset", {"d": 1}, files_builder({"a.bin": b"1" * 10, "sub/b.bin": b"2"}))
    tamper(art, {"sub/../a.bin": dict(art.manifest["files"]["a.bin"])})
    r = invoke("store", "verify", art.id)
    assert r.returncode == 3, r.stderr
    assert "invalid file 'sub/../a.bin'" in r.stdout and "tampered" in r.stderr
    r = invoke("store", "show", art.id, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert any("invalid file 'sub/../a.bin'" in p for p in json.loads(r.stdout)["problems"])
    r = invoke("store", "show", art.id)
    assert "status=damaged" in r.stdout and "invalid file 'sub/../a.bin'" in r.stderr
    with pytest.raises(DamagedArtifact):
        art.check()


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "linked-folder", "link"])
def test_reopening_a_tampered_artifact_removes_nothing_and_is_exit_3(store, tmp_path, how):
    """`synthesize` reopens a damaged synth artifact and removes its files of the wrong size: a tampered entry deleted outside files."""
    art = store.build("synth", {"s": 1}, files_builder({"shards/class-00000.parquet": b"a" * 10}))
    target = victim(tmp_path)
    wrong = {"size": 1, "sha256": "0" * 64}  # any size but the victim's: the old reopen unlinked it
    if how == "absolute":
        tamper(art, {str(target): wrong})
    elif how == "dot-dot":
        tamper(art, {os.path.relpath(target, art.path): wrong})
    elif how == "linked-folder":
        (art.path / "evil").symlink_to(target.parent)
        tamper(art, {f"evil/{target.name}": wrong})
    else:
        (art.path / "shards" / "class-00001.parquet").symlink_to(target)
        tamper(art, {"shards/class-00001.parquet": wrong})
    with pytest.raises(DamagedArtifact) as e:
        art.reopen()
    assert e.value.exit_code == 3 and "nothing was removed" in e.value.message and f"synood store rm {art.ref}" in e.value.hint
    assert_kept(target)
    assert (art.path / "shards" / "class-00000.parquet").read_bytes() == b"a" * 10


# ---------------------------------------------------------------- gc, rm, verify never follow a link out


def outside_artifact(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An artifact-shaped folder outside the store with an old `.x.tmp` file gc would collect if it went there."""
    folder = tmp_path / "outside" / name
    (folder / "shards").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kind": "synth", "status": "partial", "files": {}}))
    tmp = folder / "shards" / ".class-00000.parquet.1234.tmp"
    tmp.write_text("precious")
    old(tmp)
    return folder, tmp


def test_gc_rm_and_verify_never_follow_a_link_out_of_the_store(store, invoke, tmp_path):
    art = store.build("dataset", {"d": 1}, files_builder({"x.txt": b"x"}))
    kind_dir, in_kind = outside_artifact(tmp_path, "kind/0123456789abcdef")
    (store.artifacts / "synth").symlink_to(kind_dir.parent)  # a symlinked kind folder
    art_dir, in_art = outside_artifact(tmp_path, "art")
    linked = store.artifacts / "dataset" / "fedcba9876543210"
    linked.symlink_to(art_dir)  # a symlinked artifact folder
    sub_dir, in_sub = outside_artifact(tmp_path, "sub")
    (art.path / "more").symlink_to(sub_dir)  # a link inside a real artifact
    mine = art.path / ".x.txt.1234.tmp"  # a real leftover of the store: collected
    mine.write_text("left by a killed run")
    old(mine)
    for args in (("store", "gc"), ("store", "gc", "--partial", "--force")):
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
        assert str(linked) in r.stderr and "not followed" in r.stderr
    assert not mine.exists()
    r = invoke("store", "verify")
    assert r.returncode == 3 and "dataset/fedcba9876543210\tdamaged\ta link" in r.stdout, (r.stdout, r.stderr)
    r = invoke("store", "rm", "dataset/fedcba9876543210")
    assert r.returncode == 2, r.stderr
    for p in (in_kind, in_art, in_sub):
        assert_kept(p)
    assert os.path.islink(linked) and art.complete


# ---------------------------------------------------------------- leftovers gc collects


def test_gc_collects_the_folder_a_writer_recreates_after_rm_force(store, invoke):
    art = store.artifact("synth", {"p": 1})
    art.begin({"p": 1})
    with art.lock(shared=True):  # the writer runs
        assert invoke("store", "rm", "--force", art.id).returncode == 0
        art.write_bytes("shards/class-00001.parquet", b"late")  # it goes on and recreates the folder
        r = invoke("store", "gc")
        assert r.returncode == 0 and art.path.exists()  # kept while its writer holds it
    with pytest.raises(DamagedArtifact):
        art.finish()
    r = invoke("store", "gc")
    assert r.returncode == 0 and str(art.path) in r.stdout
    assert not art.path.exists()


BUILDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from synood_cli.store import Store

    def build(folder):
        (folder / "features.safetensors").write_bytes(b"half")
        Path(sys.argv[2]).write_text("building")
        time.sleep(600)

    Store(sys.argv[1]).build("features", {"k": 1}, build)
    """
)


def test_gc_collects_the_temp_folder_of_a_cache_build_killed_midway(store, invoke, tmp_path):
    marker = tmp_path / "building"
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(store.root), str(marker)], start_new_session=True)
    try:
        while not marker.exists():
            assert proc.poll() is None, "the builder died"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kdir = store.artifacts / "features"
    (left,) = [p for p in kdir.iterdir() if p.name.startswith(".tmp-")]
    r = invoke("store", "gc")
    assert r.returncode == 0 and str(left) in r.stdout
    assert not left.exists()


# ---------------------------------------------------------------- manifests that must not be trusted


def test_a_partial_checkpoint_or_an_empty_file_list_is_not_trusted(store):
    from synood_cli.training import resolve_checkpoint

    ck = store.build("checkpoint", {"k": 1}, files_builder({"adapter.safetensors": b"a", "negatives.safetensors": b"n", "labels.json": b"{}"}))
    m = ck.manifest
    m["status"] = "partial"
    atomic_write_json(ck.path / "manifest.json", m)
    with pytest.raises(DamagedArtifact) as e:
        resolve_checkpoint(store, ck.id)
    assert "not complete" in e.value.message and e.value.exit_code == 3
    synth = store.build("synth", {"s": 1}, files_builder({"shards/class-00000.parquet": b"a"}))
    m = synth.manifest
    m["files"] = {}
    atomic_write_json(synth.path / "manifest.json", m)
    with pytest.raises(DamagedArtifact, match="lists no files"):
        synth.check()
    # a cache with an empty file list is rebuilt, not used
    calls = []

    def build(folder: Path) -> dict:
        calls.append(1)
        (folder / "features.safetensors").write_bytes(b"f" * 8)
        return {}

    cache = store.build("features", {"c": 1}, build)
    m = cache.manifest
    m["files"] = {}
    atomic_write_json(cache.path / "manifest.json", m)
    with pytest.warns(SynoodWarning, match="lists no files"):
        store.build("features", {"c": 1}, build)
    assert len(calls) == 2


# ---------------------------------------------------------------- caches: permissions and content


def test_cache_files_honour_the_umask(store):
    import torch
    from safetensors.torch import save_file

    def build(folder: Path) -> dict:
        save_file({"features": torch.zeros(2, 3)}, str(folder / "features.safetensors"))  # safetensors writes 0600
        return {}

    mask = os.umask(0o002)  # a group-shared store
    try:
        art = store.build("text-features", {"u": 1}, build)
    finally:
        os.umask(mask)
    assert (os.stat(art.path / "features.safetensors").st_mode & 0o777) == 0o664


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch

    from synood_cli.models.clip import ClipSource, load_clip

    home = tmp_path_factory.mktemp("links-weights")
    return load_clip(ClipSource("synood-tiny-clip", "tiny", 0), Store(home), torch.device("cpu"), torch.float32)


def cut_cache(art: Artifact, rows: int) -> None:
    """Cut a cache's features to `rows` rows and record the new file honestly: the manifest stays consistent."""
    from safetensors.torch import load_file, save_file

    from synood_cli.store import sha256_file

    f = art.path / "features.safetensors"
    data = load_file(str(f))
    save_file({k: v[:rows] for k, v in data.items()}, str(f))
    m = art.manifest
    m["files"]["features.safetensors"] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    atomic_write_json(art.path / "manifest.json", m)
    assert art.problems(hashes=True) == []


def test_a_cut_text_feature_cache_is_rebuilt_with_a_warning(store, tiny_clip):
    from synood_cli.negatives import text_features

    labels = [f"label {i}" for i in range(12)]
    want = text_features(tiny_clip, store, labels, "a photo of a {}")
    (art,) = store.list("text-features")
    cut_cache(art, 3)
    with pytest.warns(SynoodWarning, match=r"does not fit its use .*\[3, .*not \[12, "):
        got = text_features(tiny_clip, store, labels, "a photo of a {}")
    assert tuple(got.shape) == (12, tiny_clip.embed_dim)
    assert got.cpu().equal(want.cpu())


def test_an_image_feature_cache_of_the_wrong_shape_is_rebuilt_with_a_warning(store, tiny_clip):
    import io

    from conftest import make_image
    from synood_cli.features import EncodeStats, cached_features

    blobs = []
    for i in range(4):
        buf = io.BytesIO()
        make_image("cache", i).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    loaders = [(lambda b=b: b) for b in blobs]
    want = cached_features(tiny_clip, store, loaders, EncodeStats())
    (art,) = store.list("features")
    cut_cache(art, 2)
    stats = EncodeStats()
    with pytest.warns(SynoodWarning, match="does not fit its use"):
        got = cached_features(tiny_clip, store, loaders, stats)
    assert stats.encoded == 4 and got.equal(want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache is used from now on, silently
        assert cached_features(tiny_clip, store, loaders, EncodeStats()).equal(want)


@pytest.mark.parametrize("planted", ["link", "fifo", "deeply-nested", "status-not-text", "config-not-object"])
def test_a_manifest_that_is_a_link_a_fifo_or_malformed_is_damaged_never_followed_or_waited_on(store, invoke, tmp_path, planted):
    import threading

    art = store.build("dataset", {"d": 1}, files_builder({"x.txt": b"x"}))
    manifest = art.path / "manifest.json"
    good = manifest.read_text()
    manifest.unlink()
    if planted == "link":
        outside = victim(tmp_path, "manifest.json", good)  # a valid manifest outside: still not followed
        manifest.symlink_to(outside)
    elif planted == "fifo":
        os.mkfifo(manifest)

        def release() -> None:  # readers that wait on the FIFO are let go after 10 s (EOF), so a regression fails, not hangs
            time.sleep(10)
            while os.path.lexists(manifest):
                with contextlib.suppress(OSError):
                    os.close(os.open(manifest, os.O_WRONLY | os.O_NONBLOCK))
                time.sleep(0.05)

        threading.Thread(target=release, daemon=True).start()
    elif planted == "deeply-nested":
        manifest.write_text("[" * 100_000 + "]" * 100_000)
    else:
        m = json.loads(good)
        m["status" if planted == "status-not-text" else "config"] = ["complete"]
        manifest.write_text(json.dumps(m))
    started = time.monotonic()
    r = invoke("store", "ls", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "damaged"
    r = invoke("store", "verify")
    assert r.returncode == 3 and f"{art.ref}\tdamaged" in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - started < 8, "a FIFO manifest was waited on"
    if planted == "link":
        assert_kept(outside, good)
    manifest.unlink()  # ends the FIFO releaser
