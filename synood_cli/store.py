"""The artifact store: every stage's output lives under a content-hash id, written atomically.

Layout (DESIGN.md 3.1): ``<home>/artifacts/<kind>/<id>/`` holds ``manifest.json`` and the payload;
``<home>/names/<name>`` is a small alias file pointing at one artifact. The id is a hash of the
kind, schema version, resolved config and input ids, so rerunning a command with the same inputs
finds its own earlier work. Files are written to a temp name and renamed; the manifest is written
last. A per-artifact ``flock`` keeps two processes from writing one artifact at once. No SQLite on
the write path: stores may live on NFS and be shared by SLURM arrays.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from synood_cli import __version__
from synood_cli.errors import ResourceMissing, StoreBusy, SynoodError, UsageError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_LENGTH = 16
STALE_TMP_S = 3600


def canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: the same config always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def artifact_id(kind: str, config: dict, inputs: dict | None = None) -> str:
    payload = {"kind": kind, "schema": SCHEMA_VERSION, "config": config, "inputs": inputs or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:ID_LENGTH]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def disk_full_hint(exc: OSError) -> SynoodError | None:
    if exc.errno == errno.ENOSPC:
        return ResourceMissing(
            "disk full while writing to the store; finished files are kept, the one in flight was not written",
            hint="free space (synood store gc, synood store rm NAME) or use --home on a larger disk, then rerun",
        )
    return None


@dataclass
class Artifact:
    """One artifact folder; may not exist yet."""

    store: "Store"
    kind: str
    id: str

    @property
    def path(self) -> Path:
        return self.store.artifacts / self.kind / self.id

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.id}"

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def manifest(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise SynoodError(
                f"manifest of {self.ref} is not valid JSON ({e})",
                hint=f"remove it with: synood store rm {self.id}",
            ) from None

    @property
    def exists(self) -> bool:
        return (self.path / MANIFEST).exists()

    @property
    def status(self) -> str:
        return self.manifest.get("status", "missing")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def names(self) -> list[str]:
        return self.store.names_of(self)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, part: str | None = None) -> Iterator[None]:
        """Exclusive, non-blocking: a second writer is told who holds the artifact.

        `part` locks one piece (e.g. one class shard) so that several processes can fill one
        artifact side by side without ever writing the same file.
        """
        lock_dir = self.store.artifacts / self.kind / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / (f"{self.id}.{part}.lock" if part else f"{self.id}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise StoreBusy(
                    f"{self.ref}{' (' + part + ')' if part else ''} is being written by another process (pid {holder})",
                    hint="wait for that run to finish, or change the config or --name to write a new artifact",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def begin(self, config: dict, inputs: dict | None = None, summary: dict | None = None) -> None:
        """Create the folder with a `partial` manifest (kept if a partial one is there: resume)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.exists and self.status == "partial":
            return
        atomic_write_json(self.path / MANIFEST, self._manifest("partial", config, inputs, summary, {}))

    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self.path / rel
        try:
            atomic_write_bytes(target, data)
        except OSError as e:
            raise (disk_full_hint(e) or e) from None
        return target

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, default=str) + "\n").encode())

    @contextlib.contextmanager
    def writing(self, rel: str) -> Iterator[Path]:
        """Yield a temp path next to `rel`; it is renamed onto `rel` only if the block succeeds."""
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise (disk_full_hint(e) or e) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def finish(self, summary: dict | None = None) -> None:
        """Record every payload file with size and sha256, then mark the manifest complete."""
        old = self.manifest
        files = {}
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
                rel = p.relative_to(self.path).as_posix()
                files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        merged = dict(old.get("summary", {}))
        merged.update(summary or {})
        manifest = self._manifest("complete", old.get("config", {}), old.get("inputs", {}), merged, files)
        manifest["created"] = old.get("created", manifest["created"])
        atomic_write_json(self.path / MANIFEST, manifest)

    def update_summary(self, **fields: Any) -> None:
        m = self.manifest
        m.setdefault("summary", {}).update(fields)
        m["updated"] = _now()
        atomic_write_json(self.path / MANIFEST, m)

    def _manifest(self, status: str, config: dict, inputs: dict | None, summary: dict | None, files: dict) -> dict:
        return {
            "kind": self.kind,
            "id": self.id,
            "schema": SCHEMA_VERSION,
            "synood_version": __version__,
            "created": _now(),
            "updated": _now(),
            "status": status,
            "config": config,
            "inputs": inputs or {},
            "summary": summary or {},
            "files": files,
        }

    def size_bytes(self) -> int:
        files = self.manifest.get("files") or {}
        if files:
            return sum(int(f.get("size", 0)) for f in files.values())
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class Store:
    """All artifacts under one home folder."""

    def __init__(self, home: str | os.PathLike):
        self.root = Path(home).expanduser()
        self.artifacts = self.root / "artifacts"
        self.names_dir = self.root / "names"

    def artifact(self, kind: str, config: dict, inputs: dict | None = None) -> Artifact:
        return Artifact(self, kind, artifact_id(kind, config, inputs))

    def build(
        self,
        kind: str,
        config: dict,
        build: Callable[[Path], dict | None],
        inputs: dict | None = None,
        name: str | None = None,
        wait: bool = True,
    ) -> Artifact:
        """Return the complete artifact for (kind, config, inputs), building it once if needed.

        `build(folder)` writes the payload into a fresh temp folder and returns a summary dict;
        the folder is renamed into place only when it succeeded, so a crash leaves nothing behind.
        With `wait` (the default), a process that finds another one building the artifact waits
        for it: the ranks of one torchrun job all ask for the same weights and features at once.
        """
        art = self.artifact(kind, config, inputs)
        while not art.complete:
            try:
                with art.lock():
                    if not art.complete:  # another process may have finished it meanwhile
                        self._build_into_place(art, config, inputs, build)
            except StoreBusy:
                if not wait:
                    raise
                time.sleep(1.0)
        if name:
            self.set_name(name, art)
        return art

    def _build_into_place(self, art: Artifact, config: dict, inputs: dict | None, build) -> None:
        parent = art.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{art.id}-", dir=parent))
        try:
            summary = build(tmp) or {}
            files = {
                p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            atomic_write_json(tmp / MANIFEST, art._manifest("complete", config, inputs, summary, files))
            if art.path.exists():
                shutil.rmtree(art.path)  # a partial leftover of a crashed run; we hold the lock
            os.replace(tmp, art.path)  # the whole folder appears at once
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise (disk_full_hint(e) or e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- names ----------------------------------------------------------------------------

    def set_name(self, name: str, art: Artifact) -> None:
        if not NAME_PATTERN.match(name):
            raise UsageError(
                f"invalid artifact name {name!r}",
                hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        atomic_write_json(self.names_dir / name, {"kind": art.kind, "id": art.id})

    def names_of(self, art: Artifact) -> list[str]:
        return sorted(n for n, (k, i) in self._names().items() if k == art.kind and i == art.id)

    def _names(self) -> dict[str, tuple[str, str]]:
        out = {}
        if self.names_dir.is_dir():
            for p in self.names_dir.iterdir():
                if p.name.startswith("."):
                    continue
                try:
                    d = json.loads(p.read_text())
                    out[p.name] = (d["kind"], d["id"])
                except (OSError, ValueError, KeyError):
                    continue
        return out

    # -- lookup ---------------------------------------------------------------------------

    def list(self, kind: str | None = None) -> list[Artifact]:
        out = []
        if not self.artifacts.is_dir():
            return out
        for kdir in sorted(self.artifacts.iterdir()):
            if not kdir.is_dir() or kdir.name.startswith(".") or (kind and kdir.name != kind):
                continue
            for adir in sorted(kdir.iterdir()):
                if adir.is_dir() and not adir.name.startswith(".") and (adir / MANIFEST).exists():
                    out.append(Artifact(self, kdir.name, adir.name))
        return out

    def find(self, ref: str, kind: str | None = None) -> Artifact:
        """Look an artifact up by name, `kind/id`, full id or a unique id prefix (4+ chars)."""
        names = self._names()
        if ref in names:
            k, i = names[ref]
            art = Artifact(self, k, i)
            if not art.exists:
                raise UsageError(
                    f"name {ref!r} points at {k}/{i}, which is no longer in the store",
                    hint="rerun the command that made it, or drop the name with: synood store gc",
                )
            return self._check_kind(art, kind, ref)
        if "/" in ref:
            k, _, i = ref.partition("/")
            art = Artifact(self, k, i)
            if art.exists:
                return self._check_kind(art, kind, ref)
        elif len(ref) >= 4 and re.fullmatch(r"[0-9a-f]+", ref):
            hits = [a for a in self.list(kind) if a.id.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise UsageError(
                    f"{ref!r} matches {len(hits)} artifacts: {', '.join(a.ref for a in hits[:5])}",
                    hint="give more characters of the id, or its name",
                )
        what = f"{kind} artifact" if kind else "artifact"
        raise UsageError(f"no {what} named {ref!r} in the store at {self.root}", hint="list them with: synood store ls")

    @staticmethod
    def _check_kind(art: Artifact, kind: str | None, ref: str) -> Artifact:
        if kind and art.kind != kind:
            raise UsageError(f"{ref!r} is a {art.kind} artifact, not a {kind} one", hint="list them with: synood store ls")
        return art

    # -- removal --------------------------------------------------------------------------

    def remove(self, art: Artifact) -> None:
        with art.lock():
            shutil.rmtree(art.path, ignore_errors=True)
        for name in self.names_of(art):
            with contextlib.suppress(FileNotFoundError):
                (self.names_dir / name).unlink()

    def gc(self, dry_run: bool = False, partial: bool = False) -> list[str]:
        """Remove temp folders of crashed writes, dangling names, and (with partial) unfinished artifacts."""
        removed: list[str] = []
        if self.artifacts.is_dir():
            for kdir in self.artifacts.iterdir():
                if not kdir.is_dir():
                    continue
                for p in kdir.iterdir():
                    if p.name.startswith(".tmp-") and p.is_dir():
                        art_id = p.name[5:].split("-")[0]
                        if self._unlocked(Artifact(self, kdir.name, art_id)):
                            removed.append(str(p))
                            if not dry_run:
                                shutil.rmtree(p, ignore_errors=True)
            for tmp in self.artifacts.glob("*/*/**/.*.tmp"):
                # a file a killed process was writing (shard, manifest); live writers finish in minutes
                if tmp.is_file() and time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                    removed.append(str(tmp))
                    if not dry_run:
                        tmp.unlink(missing_ok=True)
            if partial:
                for art in self.list():
                    if art.status == "partial" and self._unlocked(art):
                        removed.append(str(art.path))
                        if not dry_run:
                            self.remove(art)
        for name, (k, i) in self._names().items():
            if not Artifact(self, k, i).exists:
                removed.append(str(self.names_dir / name))
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        (self.names_dir / name).unlink()
        return removed

    @staticmethod
    def _unlocked(art: Artifact) -> bool:
        try:
            with art.lock():
                return True
        except StoreBusy:
            return False


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows and fsync: a killed run loses at most the batch being appended."""
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise (disk_full_hint(e) or e) from None


def read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file; with `repair`, a torn last line (a crash mid-append) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good_end = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
        good_end += len(line)
    if good_end != len(raw):
        if not repair:
            raise SynoodError(f"{path} has a damaged line at byte {good_end}", hint="rerun the command that writes it to repair it")
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows
