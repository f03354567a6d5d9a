"""The store keeps what it promises (issue 12): nothing outside it is touched, artifacts are checked
when used, damaged or busy artifacts get one clear line, writes are atomic and honour the umask.

Cheap, store-level checks: real files, real locks held by a second process, the CLI in-process
(Typer's CliRunner) or, where the issue asks for it, in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from conftest import assert_clean_error, files_builder
from synood_cli.errors import DamagedArtifact, SynoodWarning, UsageError
from synood_cli.store import Artifact, Store, atomic_write_bytes, atomic_write_json


@pytest.fixture
def store(synood_home) -> Store:
    return Store(synood_home)


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. references stay inside the store


def make_victim(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")  # looks like an artifact to a careless lookup
    (folder / "precious.txt").write_text("keep me")
    return tree_of(folder)


def test_store_rm_with_dot_dot_leaves_a_folder_outside_the_store_alone(store, cli):
    """`store rm ../../victim` removed a folder beside the store and exited 0 (real CLI run)."""
    store.build("dataset", {"a": 1}, files_builder({"x.txt": b"x"}))  # artifacts/ exists, so `..` resolves
    victim = store.root.parent / "victim"
    before = make_victim(victim)
    r = cli("store", "rm", "../../victim")
    assert_clean_error(r, 2)
    assert tree_of(victim) == before


def test_an_alias_pointing_outside_is_never_followed(store, cli, invoke):
    store.build("dataset", {"a": 1}, files_builder({"x.txt": b"x"}))
    victim = store.root.parent / "victim"
    before = make_victim(victim)
    store.names_dir.mkdir(parents=True, exist_ok=True)
    (store.names_dir / "evil").write_text(json.dumps({"kind": "..", "id": "../../victim"}))
    (store.names_dir / "evil2").write_text(json.dumps({"kind": "dataset", "id": "../../../victim"}))
    r = cli("store", "rm", "evil")
    assert_clean_error(r, 2, "evil")
    for name in ("evil", "evil2"):
        for args in (("store", "rm", name), ("store", "show", name), ("store", "show", name, "--format", "json")):
            r = invoke(*args)
            assert r.returncode == 2, (args, r.stderr)
            assert r.stdout == "" and r.stderr.startswith("error:") and name in r.stderr
    assert tree_of(victim) == before
    # gc drops such an alias instead of following it
    r = invoke("store", "gc")
    assert r.returncode == 0, r.stderr
    assert not (store.names_dir / "evil").exists() and not (store.names_dir / "evil2").exists()
    assert tree_of(victim) == before


@pytest.mark.parametrize("ref", ["../x", "dataset/..", "dataset/../../x", "dataset/ABCDEF0123456789", "dataset/0123", "weird kind/0123456789abcdef", "[/oops]"])
def test_malformed_references_are_usage_errors(store, invoke, ref):
    store.build("dataset", {"a": 1}, files_builder({"x.txt": b"x"}))
    before = tree_of(store.root)
    for cmd in ("show", "rm"):
        r = invoke("store", cmd, ref)
        assert r.returncode == 2, (cmd, ref, r.stderr)
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert tree_of(store.root) == before


def test_an_artifact_folder_symlinked_out_of_the_store_is_refused(store, tmp_path):
    outside = tmp_path / "outside"
    make_victim(outside)
    kdir = store.artifacts / "dataset"
    kdir.mkdir(parents=True)
    (kdir / "0123456789abcdef").symlink_to(outside)
    with pytest.raises(UsageError) as e:
        store.find("dataset/0123456789abcdef")
    assert "outside the store" in e.value.message
    assert store.list() == []
    assert (outside / "precious.txt").exists()


# ---------------------------------------------------------------- 2. files checked when used; store verify


def test_a_missing_or_truncated_file_is_exit_3_naming_artifact_file_and_repair(store):
    art = store.build("synth", {"s": 1}, files_builder({"shards/class-00000.parquet": b"a" * 10, "shards/class-00001.parquet": b"b" * 10}))
    assert art.check() is art
    (art.path / "shards/class-00001.parquet").unlink()
    with pytest.raises(DamagedArtifact) as e:
        art.check()
    assert e.value.exit_code == 3
    assert art.ref in e.value.message and "shards/class-00001.parquet is missing" in e.value.message
    assert "synood synthesize" in e.value.hint and f"synood store rm {art.ref}" in e.value.hint
    (art.path / "shards/class-00001.parquet").write_bytes(b"b" * 4)
    with pytest.raises(DamagedArtifact) as e:
        art.check()
    assert "has 4 bytes" in e.value.message


def test_store_build_rebuilds_a_damaged_cache_with_a_warning(store):
    calls = []

    def build(folder: Path) -> dict:
        calls.append(1)
        (folder / "features.safetensors").write_bytes(b"f" * 32)
        return {}

    art = store.build("features", {"c": 1}, build)
    (art.path / "features.safetensors").write_bytes(b"f" * 5)  # truncated
    with pytest.warns(SynoodWarning, match="damaged"):
        again = store.build("features", {"c": 1}, build)
    assert len(calls) == 2 and (again.path / "features.safetensors").read_bytes() == b"f" * 32
    # a cache whose bytes cannot be read (same size) is rebuilt by build_and_load
    (art.path / "features.safetensors").write_bytes(b"X" * 32)

    def load(a: Artifact) -> bytes:
        data = (a.path / "features.safetensors").read_bytes()
        if data != b"f" * 32:
            raise ValueError("header too large")
        return data

    with pytest.warns(SynoodWarning, match="could not be read"):
        _, value = store.build_and_load("features", {"c": 1}, build, load)
    assert value == b"f" * 32 and len(calls) == 3


def test_store_verify_checks_hashes_and_names_each_damaged_artifact(store, invoke):
    good = store.build("dataset", {"g": 1}, files_builder({"a.bin": b"1" * 100}))
    flipped = store.build("dataset", {"f": 1}, files_builder({"a.bin": b"1" * 100}))
    gone = store.build("synth", {"s": 1}, files_builder({"shards/class-00000.parquet": b"2" * 50}))
    (flipped.path / "a.bin").write_bytes(b"1" * 99 + b"0")  # same size: only a hash check sees it
    (gone.path / "shards/class-00000.parquet").unlink()
    flipped.check()  # the cheap check on use does not read contents
    r = invoke("store", "verify")
    assert r.returncode == 3, r.stderr
    lines = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert lines[good.ref] == "ok"
    assert lines[flipped.ref].startswith("damaged") and "sha256" in lines[flipped.ref]
    assert lines[gone.ref].startswith("damaged") and "class-00000.parquet is missing" in lines[gone.ref]
    assert "Traceback" not in r.stderr and "2 of 3 artifact(s) damaged" in r.stderr
    r = invoke("store", "verify", good.id)
    assert r.returncode == 0 and r.stdout == f"{good.ref}\tok\n"


# ---------------------------------------------------------------- 5. busy artifacts

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from synood_cli.store import Artifact, Store

    home, kind, art_id, marker = sys.argv[1:]
    art = Artifact(Store(home), kind, art_id)
    with art.lock(shared=True):
        Path(marker).write_text("held")
        sys.stdin.read()  # until the test closes our stdin
    """
)


@contextlib.contextmanager
def writer_holding(art: Artifact, tmp_path: Path):
    """A second process holding the artifact the way a writer (synthesize's ranks) does."""
    marker = tmp_path / f"held-{art.id}"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(art.store.root), art.kind, art.id, str(marker)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"holder exited early: {proc.stderr.read().decode()}")
            time.sleep(0.02)
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def partial_artifact(store: Store, kind: str = "synth") -> Artifact:
    art = store.artifact(kind, {"p": 1})
    art.begin({"p": 1})
    art.write_bytes("shards/class-00000.parquet", b"half")
    return art


def test_rm_and_gc_refuse_an_artifact_being_written_unless_forced(store, invoke, tmp_path):
    art = partial_artifact(store)
    with writer_holding(art, tmp_path) as proc:
        r = invoke("store", "rm", art.id)
        assert r.returncode == 2 and f"pid {proc.pid}" in r.stderr and "--force" in r.stderr, r.stderr
        assert art.exists
        r = invoke("store", "gc", "--partial")
        assert r.returncode == 2 and f"pid {proc.pid}" in r.stderr, r.stderr
        assert art.exists
        r = invoke("store", "gc", "--partial", "--force")
        assert r.returncode == 0, r.stderr
        assert not art.path.exists()
    art = partial_artifact(store)
    with writer_holding(art, tmp_path):
        r = invoke("store", "rm", "--force", art.id)
        assert r.returncode == 0 and not art.path.exists()


def test_a_writer_whose_artifact_was_removed_does_not_report_it_complete(store):
    art = partial_artifact(store)
    store.remove(art, force=True)  # `store rm --force` while the writer runs
    art.write_bytes("shards/class-00001.parquet", b"late")  # the writer goes on, recreating the folder
    with pytest.raises(DamagedArtifact) as e:
        art.finish({"images": 2})
    assert "removed while" in e.value.message and e.value.exit_code == 3
    assert not art.complete


# ---------------------------------------------------------------- 8. a damaged manifest does not stop the repair tools


def test_store_ls_and_gc_list_a_truncated_manifest_as_damaged(store, invoke):
    ok = store.build("dataset", {"a": 1}, files_builder({"x.txt": b"x"}))
    bad = store.build("dataset", {"b": 1}, files_builder({"x.txt": b"y"}))
    text = (bad.path / "manifest.json").read_text()
    (bad.path / "manifest.json").write_text(text[: len(text) // 2])
    r = invoke("store", "ls", "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["id"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert rows[ok.id]["status"] == "complete" and rows[bad.id]["status"] == "damaged"
    r = invoke("store", "ls")
    assert r.returncode == 0 and bad.id in r.stdout and "damaged" in r.stdout, r.stderr
    for args in (("store", "gc"), ("store", "gc", "--partial")):
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
        assert bad.ref in r.stderr and "store rm" in r.stderr
    assert bad.path.exists() and ok.complete
    r = invoke("store", "show", bad.id)
    assert r.returncode == 3 and r.stderr.startswith("error:") and bad.ref in r.stderr and "store rm" in r.stderr
    r = invoke("store", "rm", bad.id)
    assert r.returncode == 0 and not bad.path.exists()


# ---------------------------------------------------------------- atomic writes, umask


@pytest.mark.parametrize("fault", ["fsync", "replace"])
def test_a_crash_inside_the_atomic_write_keeps_the_old_content(tmp_path, monkeypatch, fault):
    target = tmp_path / "names" / "alias"
    atomic_write_json(target, {"kind": "dataset", "id": "0" * 16})
    old = target.read_bytes()

    def crash(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, fault, crash)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"kind": "dataset", "id": "' + b"1" * 16 + b'"}')
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert sorted(p.name for p in target.parent.iterdir()) == ["alias"]  # no temp file left


def test_store_files_and_folders_honour_the_umask(store, tmp_path):
    old = os.umask(0o002)  # a group-shared store
    try:
        art = store.build("dataset", {"u": 1}, files_builder({"x.txt": b"x"}))
        store.set_name("shared", art)
        out = tmp_path / "negatives.tsv"
        atomic_write_bytes(out, b"w\n")  # `negatives --out`, `prompt --export`
    finally:
        os.umask(old)
    assert (art.path.stat().st_mode & 0o777) == 0o775
    assert ((art.path / "manifest.json").stat().st_mode & 0o777) == 0o664
    assert ((store.names_dir / "shared").stat().st_mode & 0o777) == 0o664
    assert (out.stat().st_mode & 0o777) == 0o664


# ---------------------------------------------------------------- 4. export folder names


def synth_with_classes(store: Store, names: list[str]) -> Artifact:
    from conftest import make_image
    from synood_cli.data.shards import shard_name, write_shard

    def build(folder: Path) -> dict:
        for c, name in enumerate(names):
            rows = [{"image": make_image("s", c), "source_path": f"/data/{c}/src.png", "class_index": c, "class_name": name, "prompt": "p", "seed": c}]
            write_shard(folder / shard_name(c), rows)
        return {}

    return store.build("synth", {"classes": names}, build)


def test_export_keeps_hostile_class_names_inside_the_target(store, invoke, tmp_path):
    absolute = tmp_path / "absolute-target"
    hostile = ["../../escape", str(absolute), "a/b", "..", ".", "same", "same", "Same", "x\x00y\nz", "[/red]"]
    art = synth_with_classes(store, hostile)
    area = tmp_path / "area"
    to = area / "out" / "export"
    r = invoke("store", "export", art.id, "--to", str(to))
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(area).as_posix() for p in area.rglob("*") if "export" not in p.parts) == ["out"]  # nothing beside the export
    folders = sorted(p for p in to.iterdir())
    assert len(folders) == len(hostile)  # one folder per class: unique names
    assert all(p.is_dir() and len(list(p.iterdir())) == 1 for p in folders)
    assert all(p.resolve().parent == to.resolve() for p in folders)
    assert not absolute.exists()


# ---------------------------------------------------------------- 9. read-only store, permissions


def test_a_store_that_cannot_be_written_is_exit_3_with_a_hint(invoke, tmp_path):
    from conftest import write_tree

    tree = write_tree(tmp_path / "id", {"cat": 2, "dog": 2}, corrupt=False, junk=False)
    home = Path("/sys/synood-test-home")  # mkdir there is refused even to root (EPERM), as on a read-only disk
    r = invoke("prompt", str(tree.root), "--profile", "tiny", "--per-class", "1", "--name", "ctx", home=home)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("error: cannot write") and "hint:" in r.stderr and "internal error" not in r.stderr


# ---------------------------------------------------------------- 13. messages


def test_checkpoint_name_prefers_the_store_over_a_folder_of_that_name(store, tmp_path, monkeypatch):
    from synood_cli.training import checkpoint_classes

    art = store.build("checkpoint", {"k": 1}, files_builder({"classes.json": b'["cat", "dog"]'}))
    store.set_name("ck", art)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "classes.json").write_text('["from", "the", "folder"]')
    assert checkpoint_classes(store, "ck") == ["cat", "dog"]
    assert checkpoint_classes(store, "./ck") == ["from", "the", "folder"]
    assert checkpoint_classes(store, str(tmp_path / "ck")) == ["from", "the", "folder"]
    # the threshold and the id recorded with scores come from the same checkpoint as the weights
    from synood_cli.thresholds import checkpoint_folder_and_id

    assert checkpoint_folder_and_id(store.root, "ck") == (art.path, art.id)
    assert checkpoint_folder_and_id(store.root, "./ck") == (Path("ck"), str(tmp_path / "ck"))


def test_damaged_checkpoint_json_is_exit_3_naming_the_file(store, tmp_path):
    from synood_cli.training import checkpoint_classes

    art = store.build("checkpoint", {"k": 2}, files_builder({"classes.json": b'["cat", "do'}))
    with pytest.raises(DamagedArtifact) as e:
        checkpoint_classes(store, art.id)
    assert e.value.exit_code == 3 and art.ref in e.value.message and "classes.json" in e.value.message
    assert "synood finetune" in e.value.hint


def test_an_unreadable_class_folder_is_refused_not_skipped(tmp_path, monkeypatch):
    from conftest import write_tree
    from synood_cli.data.folders import scan_folder

    tree = write_tree(tmp_path / "id", {"ant": 1, "bee": 1, "cat": 1}, corrupt=False, junk=False)
    real_scandir = os.scandir
    blocked = str(tree.root / "bee")

    def scandir(path="."):  # root runs the tests here, so chmod 000 would not stop the read
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UsageError) as e:
        scan_folder(tree.root)
    assert "bee" in e.value.message and "shift" in e.value.message


def test_library_warnings_are_one_line_each(capsys):
    from PIL import Image

    from synood_cli.cli.render import error_boundary

    @error_boundary
    def command():
        warnings.warn("Image size (100000000 pixels) exceeds limit of 89478485 pixels,\ncould be decompression bomb DOS attack.", Image.DecompressionBombWarning)
        warnings.warn("features/0123456789abcdef is damaged; rebuilding it", SynoodWarning)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        command()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: DecompressionBombWarning: Image size (100000000 pixels) exceeds limit of 89478485 pixels, could be decompression bomb DOS attack.",
        "warning: features/0123456789abcdef is damaged; rebuilding it",
    ]


# ---------------------------------------------------------------- 3. markup in the error handler's fallback


def test_the_internal_error_fallback_prints_markup_literally(capsys):
    import typer

    from synood_cli.cli.render import error_boundary

    @error_boundary
    def command():
        raise RuntimeError("bad value [/red] in x[bold]y.jpg\nsecond line")

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: bad value [/red] in x[bold]y.jpg" in err and "second line" not in err

