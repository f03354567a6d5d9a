"""Tests for synood_cli.store: ids, atomic builds, incremental writes, names, locks, removal, gc."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synood_cli.errors import EXIT_USAGE, StoreBusy, UsageError
from synood_cli.store import Artifact, Store, artifact_id, atomic_write_bytes

HEX16 = re.compile(r"^[0-9a-f]{16}$")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Names of temp folders/files a crashed write could leave in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-") or p.name.endswith(".tmp"))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "home")


# ------------------------------------------------------------------ artifact_id


def test_artifact_id_is_16_hex_chars():
    aid = artifact_id("scores", {"a": 1})
    assert HEX16.match(aid)
    assert len(aid) == 16


def test_artifact_id_ignores_key_order():
    a = {"model": "clip", "batch": 32, "opts": {"x": 1, "y": [1, 2], "z": {"p": 1, "q": 2}}}
    b = {"opts": {"z": {"q": 2, "p": 1}, "y": [1, 2], "x": 1}, "batch": 32, "model": "clip"}
    assert list(a) != list(b)
    assert artifact_id("scores", a) == artifact_id("scores", b)
    assert artifact_id("scores", a, {"feat": "1", "lex": "2"}) == artifact_id("scores", b, {"lex": "2", "feat": "1"})


def test_artifact_id_changes_with_config_kind_and_inputs():
    base = artifact_id("scores", {"model": "clip", "batch": 32}, {"feat": "abc"})
    others = {
        artifact_id("scores", {"model": "clip", "batch": 64}, {"feat": "abc"}),  # config value
        artifact_id("scores", {"model": "clip"}, {"feat": "abc"}),  # config key dropped
        artifact_id("scores", {"model": "clip", "batch": "32"}, {"feat": "abc"}),  # type differs
        artifact_id("features", {"model": "clip", "batch": 32}, {"feat": "abc"}),  # kind
        artifact_id("scores", {"model": "clip", "batch": 32}, {"feat": "abd"}),  # input id
        artifact_id("scores", {"model": "clip", "batch": 32}, {"other": "abc"}),  # input role
        artifact_id("scores", {"model": "clip", "batch": 32}),  # no inputs
    }
    assert base not in others
    assert len(others) == 7


def test_store_artifact_uses_artifact_id(store):
    art = store.artifact("scores", {"b": 2, "a": 1}, {"x": "y"})
    assert art.id == artifact_id("scores", {"a": 1, "b": 2}, {"x": "y"})
    assert art.kind == "scores"
    assert art.path == store.root / "artifacts" / "scores" / art.id
    assert art.ref == f"scores/{art.id}"
    assert not art.exists and art.status == "missing" and not art.complete


# ------------------------------------------------------------------ Store.build


PAYLOAD = {
    "scores.bin": b"\x00\x01\x02" * 1000,
    "meta.json": b'{"n": 3}\n',
    "sub/deep/table.csv": b"a,b\n1,2\n",
    "empty.txt": b"",
}


def make_builder(calls: list, payload: dict[str, bytes] = PAYLOAD, summary: dict | None = None):
    def build(folder: Path):
        calls.append(folder)
        for rel, data in payload.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return summary

    return build


def test_build_runs_once_and_records_files(store):
    calls: list[Path] = []
    config = {"model": "clip", "batch": 32}
    inputs = {"features": "0123456789abcdef"}
    build = make_builder(calls, summary={"rows": 3})

    art = store.build("scores", config, build, inputs=inputs)
    assert len(calls) == 1
    # The callback wrote into a temp folder, not into the final place.
    assert calls[0] != art.path
    assert calls[0].name.startswith(".tmp-")
    assert not calls[0].exists()

    assert art.exists and art.complete and art.status == "complete"
    m = art.manifest
    assert m["kind"] == "scores" and m["id"] == art.id
    assert m["config"] == config
    assert m["inputs"] == inputs
    assert m["summary"] == {"rows": 3}
    expected_files = {rel: {"size": len(data), "sha256": sha256_of(data)} for rel, data in PAYLOAD.items()}
    assert m["files"] == expected_files
    for rel, data in PAYLOAD.items():
        assert art.file(rel).read_bytes() == data
    assert art.size_bytes() == sum(len(d) for d in PAYLOAD.values())
    assert leftovers(art.path.parent) == []

    # Same inputs again, config keys in another order, even through a new Store object: no rebuild.
    again = Store(store.root).build("scores", {"batch": 32, "model": "clip"}, build, inputs=inputs)
    assert len(calls) == 1
    assert again.id == art.id and again.complete

    # A different config is a different artifact and is built.
    other = store.build("scores", {"model": "clip", "batch": 64}, build, inputs=inputs)
    assert len(calls) == 2
    assert other.id != art.id and other.complete


def test_build_without_summary(store):
    art = store.build("k", {"a": 1}, make_builder([], {"x": b"1"}, summary=None))
    assert art.manifest["summary"] == {}
    assert art.manifest["files"] == {"x": {"size": 1, "sha256": sha256_of(b"1")}}


def test_build_with_name(store):
    art = store.build("k", {"a": 1}, make_builder([]), name="first")
    assert store.find("first").ref == art.ref
    assert art.names() == ["first"]


def test_build_failure_leaves_nothing(store):
    calls: list[Path] = []

    def build(folder: Path):
        calls.append(folder)
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        store.build("scores", {"a": 1}, build)
    art = store.artifact("scores", {"a": 1})
    assert len(calls) == 1
    assert not art.path.exists()
    assert not calls[0].exists()
    assert leftovers(art.path.parent) == []
    assert not art.exists and art.status == "missing"
    assert store.list() == []

    # A later build with a working callback succeeds.
    ok = store.build("scores", {"a": 1}, make_builder([], {"x": b"ok"}))
    assert ok.complete and ok.file("x").read_bytes() == b"ok"


def test_build_interrupted_leaves_nothing(store):
    def build(folder: Path):
        (folder / "half.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.build("scores", {"a": 1}, build)
    art = store.artifact("scores", {"a": 1})
    assert not art.path.exists()
    assert leftovers(art.path.parent) == []


def test_build_replaces_partial_leftover(store):
    art = store.artifact("scores", {"a": 1})
    art.path.mkdir(parents=True)
    (art.path / "manifest.json").write_text(json.dumps({"status": "partial", "kind": "scores", "id": art.id}))
    (art.path / "stale.bin").write_bytes(b"from a crashed run")
    assert art.exists and art.status == "partial" and not art.complete

    calls: list[Path] = []
    built = store.build("scores", {"a": 1}, make_builder(calls, {"fresh.bin": b"new"}))
    assert len(calls) == 1
    assert built.id == art.id
    assert built.complete
    assert not (built.path / "stale.bin").exists()
    assert built.file("fresh.bin").read_bytes() == b"new"
    assert built.manifest["files"] == {"fresh.bin": {"size": 3, "sha256": sha256_of(b"new")}}
    assert sorted(p.name for p in built.path.iterdir()) == ["fresh.bin", "manifest.json"]
    assert leftovers(built.path.parent) == []


# ------------------------------------------------------------------ incremental writing


def test_begin_write_finish(store):
    config, inputs = {"model": "clip"}, {"feat": "abc"}
    art = store.artifact("features", config, inputs)
    art.begin(config, inputs, summary={"started": True})
    assert art.exists
    assert art.status == "partial" and not art.complete
    assert art.manifest["config"] == config and art.manifest["inputs"] == inputs
    assert art.manifest["files"] == {}

    p1 = art.write_bytes("shard-0.bin", b"zero")
    assert p1 == art.path / "shard-0.bin" and p1.read_bytes() == b"zero"
    art.write_json("nested/info.json", {"n": 1})
    with art.writing("shard-1.bin") as tmp:
        assert tmp.parent == art.path
        assert tmp != art.path / "shard-1.bin"
        tmp.write_bytes(b"one")
        assert not (art.path / "shard-1.bin").exists()  # not renamed until the block ends
    assert (art.path / "shard-1.bin").read_bytes() == b"one"
    assert not tmp.exists()
    assert art.status == "partial"

    art.finish(summary={"shards": 2})
    assert art.status == "complete" and art.complete
    m = art.manifest
    info = (art.path / "nested" / "info.json").read_bytes()
    assert json.loads(info) == {"n": 1}
    assert m["files"] == {
        "nested/info.json": {"size": len(info), "sha256": sha256_of(info)},
        "shard-0.bin": {"size": 4, "sha256": sha256_of(b"zero")},
        "shard-1.bin": {"size": 3, "sha256": sha256_of(b"one")},
    }
    assert m["summary"] == {"started": True, "shards": 2}
    assert m["config"] == config and m["inputs"] == inputs

    # A complete artifact is found by build without calling the callback.
    calls: list[Path] = []
    assert store.build("features", config, make_builder(calls), inputs=inputs).id == art.id
    assert calls == []


def test_begin_resumes_partial(store):
    config = {"model": "clip"}
    art = store.artifact("features", config)
    art.begin(config, summary={"first": 1})
    art.write_bytes("shard-0.bin", b"zero")
    created = art.manifest["created"]

    # A second run (a fresh Artifact object, as in a new process) resumes: nothing is lost.
    again = Artifact(Store(store.root), "features", art.id)
    again.begin(config, summary={"second": 2})
    assert again.status == "partial"
    assert again.file("shard-0.bin").read_bytes() == b"zero"
    assert again.manifest["created"] == created
    assert again.manifest["summary"] == {"first": 1}
    again.write_bytes("shard-1.bin", b"one")
    again.finish()
    assert again.complete
    assert set(again.manifest["files"]) == {"shard-0.bin", "shard-1.bin"}
    assert again.manifest["created"] == created


def test_writing_leaves_no_file_when_block_raises(store):
    art = store.artifact("features", {"a": 1})
    art.begin({"a": 1})
    with pytest.raises(ValueError, match="boom"):
        with art.writing("out.bin") as tmp:
            tmp.write_bytes(b"half written")
            raise ValueError("boom")
    assert not (art.path / "out.bin").exists()
    assert not tmp.exists()
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json"]

    # An existing file keeps its old content when a rewrite fails.
    art.write_bytes("out.bin", b"old")
    with pytest.raises(ValueError):
        with art.writing("out.bin") as tmp:
            tmp.write_bytes(b"new")
            raise ValueError("boom")
    assert (art.path / "out.bin").read_bytes() == b"old"
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "out.bin"]


def test_write_bytes_overwrites_atomically(store):
    art = store.artifact("features", {"a": 1})
    art.begin({"a": 1})
    art.write_bytes("x.bin", b"first")
    art.write_bytes("x.bin", b"second")
    assert art.file("x.bin").read_bytes() == b"second"
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "x.bin"]


# ------------------------------------------------------------------ names and lookup


def test_set_name_and_find(store):
    a = store.build("scores", {"a": 1}, make_builder([]))
    b = store.build("features", {"b": 2}, make_builder([]))
    store.set_name("best-run_1.v2", a)
    store.set_name("feats", b)
    assert store.find("best-run_1.v2").ref == a.ref
    assert store.find("feats").ref == b.ref
    assert a.names() == ["best-run_1.v2"]
    # Renaming points the name at another artifact.
    store.set_name("best-run_1.v2", b)
    assert store.find("best-run_1.v2").ref == b.ref
    assert a.names() == []
    assert b.names() == ["best-run_1.v2", "feats"]


def test_find_by_id_ref_and_prefix(store):
    a = store.build("scores", {"a": 1}, make_builder([]))
    assert store.find(a.id).ref == a.ref
    assert store.find(f"scores/{a.id}").ref == a.ref
    assert store.find(a.id[:4]).ref == a.ref
    assert store.find(a.id[:9]).ref == a.ref
    assert store.find(a.id, kind="scores").ref == a.ref
    # Fewer than 4 characters is not accepted as a prefix.
    with pytest.raises(UsageError):
        store.find(a.id[:3])
    # kind/id with the wrong kind does not exist.
    with pytest.raises(UsageError):
        store.find(f"features/{a.id}")


def test_find_unknown_ref(store):
    with pytest.raises(UsageError) as info:
        store.find("nothing-here")
    assert info.value.exit_code == EXIT_USAGE == 2
    assert "'nothing-here'" in info.value.message
    assert str(store.root) in info.value.message
    assert info.value.hint
    store.build("scores", {"a": 1}, make_builder([]))
    for ref in ("ffffffffffffffff", "scores/ffffffffffffffff", "nothing-here"):
        with pytest.raises(UsageError) as info:
            store.find(ref)
        assert info.value.exit_code == 2


def test_find_dangling_name(store):
    a = store.build("scores", {"a": 1}, make_builder([]))
    store.set_name("gone", a)
    shutil.rmtree(a.path)
    with pytest.raises(UsageError, match="no longer in the store"):
        store.find("gone")


def _two_ids_sharing_four_hex_chars(kind: str) -> tuple[dict, dict, str, str]:
    seen: dict[str, tuple[dict, str]] = {}
    for i in range(200_000):
        config = {"i": i}
        aid = artifact_id(kind, config)
        if aid[:4] in seen:
            other_config, other_id = seen[aid[:4]]
            return other_config, config, other_id, aid
        seen[aid[:4]] = (config, aid)
    raise AssertionError("no two ids share 4 hex chars")  # pragma: no cover


def test_find_ambiguous_prefix(store):
    ca, cb, ida, idb = _two_ids_sharing_four_hex_chars("scores")
    assert ida != idb and ida[:4] == idb[:4]
    a = store.build("scores", ca, make_builder([]))
    b = store.build("scores", cb, make_builder([]))
    assert (a.id, b.id) == (ida, idb)

    with pytest.raises(UsageError) as info:
        store.find(ida[:4])
    assert info.value.exit_code == 2
    assert "matches 2 artifacts" in info.value.message
    assert f"scores/{ida}" in info.value.message and f"scores/{idb}" in info.value.message
    assert info.value.hint

    # One more character than they share tells them apart; full ids always work.
    common = len(os.path.commonprefix([ida, idb]))
    assert store.find(ida[: common + 1]).id == ida
    assert store.find(idb[: common + 1]).id == idb
    assert store.find(ida).id == ida and store.find(idb).id == idb


@pytest.mark.parametrize(
    "bad",
    ["", "-leading-dash", ".hidden", "_under", "with space", "a/b", "../up", "x" * 129, "tab\there", "é"],
)
def test_invalid_names_rejected(store, bad):
    art = store.build("scores", {"a": 1}, make_builder([]))
    with pytest.raises(UsageError) as info:
        store.set_name(bad, art)
    assert info.value.exit_code == 2
    assert info.value.hint
    assert not store.names_dir.exists() or list(store.names_dir.iterdir()) == []


@pytest.mark.parametrize("good", ["a", "0", "Run_1.final-v2", "x" * 128])
def test_valid_names_accepted(store, good):
    art = store.build("scores", {"a": 1}, make_builder([]))
    store.set_name(good, art)
    assert store.find(good).ref == art.ref


def test_find_with_wrong_kind(store):
    a = store.build("scores", {"a": 1}, make_builder([]))
    store.set_name("mine", a)
    assert store.find("mine", kind="scores").ref == a.ref
    for ref in ("mine", f"scores/{a.id}", a.id, a.id[:6]):
        with pytest.raises(UsageError) as info:
            store.find(ref, kind="features")
        assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="is a scores artifact, not a features one"):
        store.find("mine", kind="features")


# ------------------------------------------------------------------ locks

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from synood_cli.store import Artifact, Store

    home, kind, art_id, marker, release = sys.argv[1:]
    art = Artifact(Store(home), kind, art_id)
    with art.lock():
        Path(marker).write_text("held")
        deadline = time.monotonic() + 600  # a guard: the test releases it
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    """
)


@contextlib.contextmanager
def lock_held_by_subprocess(art: Artifact, tmp_path: Path):
    """Run a second Python process that holds ``art.lock()`` until the block ends."""
    marker = tmp_path / f"held-{art.id}"
    release = tmp_path / f"release-{art.id}"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(art.store.root), art.kind, art.id, str(marker), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # a guard against a holder that never starts
        while not marker.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"lock holder exited early ({proc.returncode}): {err.decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("lock holder never took the lock")
            time.sleep(0.02)
        yield proc
    finally:
        release.write_text("go")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def test_lock_excludes_second_process(store, tmp_path):
    art = store.artifact("scores", {"a": 1})
    with lock_held_by_subprocess(art, tmp_path) as proc:
        with pytest.raises(StoreBusy) as info:
            with art.lock():
                pytest.fail("took a lock another process holds")  # pragma: no cover
        assert f"pid {proc.pid}" in info.value.message
        assert art.ref in info.value.message
        assert info.value.exit_code == 2
        assert info.value.hint

        # Building the same artifact without waiting is refused too, before the callback runs.
        calls: list[Path] = []
        with pytest.raises(StoreBusy):
            store.build("scores", {"a": 1}, make_builder(calls), wait=False)
        assert calls == []
        assert not art.path.exists()

        # Other artifacts are not affected.
        with store.artifact("scores", {"a": 2}).lock():
            pass
    assert proc.returncode == 0
    with art.lock():
        pass
    assert store.build("scores", {"a": 1}, make_builder([])).complete


def test_build_waits_for_another_process_by_default(store, tmp_path, monkeypatch):
    """Ranks of one job ask for the same artifact at once: the second waits, then builds once."""
    import threading

    art = store.artifact("scores", {"w": 1})
    calls: list[Path] = []
    result = {}
    waiting = threading.Event()  # set when the builder pauses because the lock is busy: a state, not a duration
    real_sleep = time.sleep

    def sleep(seconds):
        if threading.current_thread().name == "builder":
            waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with lock_held_by_subprocess(art, tmp_path):
        worker = threading.Thread(target=lambda: result.setdefault("art", store.build("scores", {"w": 1}, make_builder(calls))), name="builder")
        worker.start()
        while worker.is_alive() and not waiting.wait(timeout=0.05):
            pass
        assert waiting.is_set(), "the builder ended without waiting for the lock"
        assert worker.is_alive() and calls == []  # still waiting while the lock is held
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert result["art"].complete and len(calls) == 1


def test_lock_can_be_taken_again_after_release(store):
    art = store.artifact("scores", {"a": 1})
    with art.lock():
        pass
    with art.lock():
        pass


# ------------------------------------------------------------------ remove and gc


def test_remove_deletes_folder_and_names(store):
    a = store.build("scores", {"a": 1}, make_builder([]))
    b = store.build("scores", {"a": 2}, make_builder([]))
    store.set_name("one", a)
    store.set_name("uno", a)
    store.set_name("two", b)
    store.remove(a)
    assert not a.path.exists()
    assert not (store.names_dir / "one").exists() and not (store.names_dir / "uno").exists()
    assert (store.names_dir / "two").exists()
    assert [x.ref for x in store.list()] == [b.ref]
    with pytest.raises(UsageError):
        store.find("one")
    with pytest.raises(UsageError):
        store.find(a.id)
    assert store.find("two").ref == b.ref


def _gc_scene(store: Store):
    """A complete named artifact, a partial one, a crashed temp folder and a dangling name."""
    done = store.build("scores", {"done": 1}, make_builder([]))
    store.set_name("done", done)
    partial = store.artifact("scores", {"partial": 1})
    partial.begin({"partial": 1})
    partial.write_bytes("shard-0.bin", b"zero")
    crashed_id = artifact_id("scores", {"crashed": 1})
    tmp = store.artifacts / "scores" / f".tmp-{crashed_id}-abc123"
    tmp.mkdir(parents=True)
    (tmp / "half.bin").write_bytes(b"half")
    ghost = Artifact(store, "scores", artifact_id("scores", {"ghost": 1}))
    store.set_name("ghost", ghost)  # never built: a dangling name
    return done, partial, tmp, store.names_dir / "ghost"


def test_gc_dry_run_removes_nothing(store):
    done, partial, tmp, ghost_name = _gc_scene(store)
    reported = store.gc(dry_run=True)
    assert sorted(reported) == sorted([str(tmp), str(ghost_name)])
    reported = store.gc(dry_run=True, partial=True)
    assert sorted(reported) == sorted([str(tmp), str(ghost_name), str(partial.path)])
    assert tmp.is_dir() and ghost_name.exists() and partial.exists and done.complete


def test_gc_removes_temp_folders_and_dangling_names(store):
    done, partial, tmp, ghost_name = _gc_scene(store)
    reported = store.gc()
    assert sorted(reported) == sorted([str(tmp), str(ghost_name)])
    assert not tmp.exists()
    assert not ghost_name.exists()
    # Complete artifacts and their names stay; partial ones stay without partial=True.
    assert done.complete and store.find("done").ref == done.ref
    assert partial.status == "partial" and partial.file("shard-0.bin").read_bytes() == b"zero"
    assert store.gc() == []


def test_gc_partial_removes_unfinished_artifacts(store):
    done, partial, tmp, ghost_name = _gc_scene(store)
    store.set_name("wip", partial)
    reported = store.gc(partial=True)
    assert str(partial.path) in reported
    assert sorted(reported) == sorted([str(tmp), str(ghost_name), str(partial.path)])
    assert not partial.path.exists()
    assert not (store.names_dir / "wip").exists()
    assert done.complete and store.find("done").ref == done.ref
    assert [a.ref for a in store.list()] == [done.ref]
    assert store.gc(partial=True) == []


def test_gc_keeps_temp_folder_of_a_running_build(store, tmp_path):
    art = store.artifact("scores", {"running": 1})
    tmp = store.artifacts / "scores" / f".tmp-{art.id}-xyz"
    tmp.mkdir(parents=True)
    with lock_held_by_subprocess(art, tmp_path):
        assert store.gc() == []
        assert tmp.is_dir()
    assert store.gc() == [str(tmp)]
    assert not tmp.exists()


def test_gc_on_empty_store(store):
    assert store.gc() == []
    assert store.gc(partial=True, dry_run=True) == []


# ------------------------------------------------------------------ atomic_write_bytes


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    atomic_write_bytes(target, b"\x00" * 100_000)
    assert target.read_bytes() == b"\x00" * 100_000
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_bytes_failure_keeps_old_content(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
