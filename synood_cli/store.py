"""The artifact store: every stage's output lives under a content-hash id, written atomically.

Layout (README.md, "The store"): ``<home>/artifacts/<kind>/<id>/`` holds ``manifest.json`` and the payload;
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from synood_cli import __version__
from synood_cli.errors import DamagedArtifact, ResourceMissing, StoreBusy, SynoodError, SynoodWarning, UsageError, first_line

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_LENGTH = 16
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# the kinds synood writes; a user reference `kind/id` must name one of these
KINDS = ("boundary", "checkpoint", "dataset", "features", "negatives", "prompts", "synth", "text-features", "weights")
# artifacts a user made with a command (the rest are caches, rebuilt automatically when damaged)
PRODUCERS = {"prompts": "synood prompt", "synth": "synood synthesize", "checkpoint": "synood finetune"}
STALE_TMP_S = 3600


def umask() -> int:
    """The process umask: files made through mkstemp/mkdtemp are chmod-ed to honour it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (disk_full_hint(e, path) or e) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: a group-shared store must stay readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise (disk_full_hint(e, path) or e) from None
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def disk_full_hint(exc: OSError, path: os.PathLike | str | None = None, verb: str = "write") -> ResourceMissing | None:
    """Full disk, quota, read-only file system, permission denied: one exit-3 error with a hint."""
    if isinstance(exc, SynoodError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceMissing(
            f"disk full while writing {path if path else 'to the store'}; finished files are kept, the one in flight was not written",
            hint="free space (synood store gc, synood store rm NAME) or use --home on a larger disk, then rerun",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = path or exc.filename or "a file"
        return ResourceMissing(
            f"cannot {verb} {where}: {exc.strerror or exc}",
            hint="check the folder's permissions (and that the disk is not mounted read-only), or use --home / -o with a writable place",
        )
    return None


@dataclass
class Artifact:
    """One artifact folder; may not exist yet."""

    store: "Store"
    kind: str
    id: str

    def __post_init__(self) -> None:
        # every reference (kind, id, alias target) is checked before any path is built from it
        if not (isinstance(self.kind, str) and KIND_PATTERN.match(self.kind)) or not (isinstance(self.id, str) and ID_PATTERN.match(self.id)):
            raise UsageError(
                f"{self.kind!s}/{self.id!s} is not a valid artifact reference",
                hint="a reference is NAME, KIND/ID, an id or an id prefix (ids are 16 hex characters); list them with: synood store ls",
            )
        self.store.check_inside(self.path, f"{self.kind}/{self.id}")

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
            m = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as e:
            raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is not valid JSON ({e})", hint=self.repair_hint()) from None
        if not isinstance(m, dict) or not isinstance(m.get("files", {}), dict):
            raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is not a synood manifest", hint=self.repair_hint())
        return m

    def repair_hint(self) -> str:
        rm = f"synood store rm {self.ref}"
        if self.kind in PRODUCERS:
            return f"rerun the `{PRODUCERS[self.kind]}` command that made it (it redoes only what is missing), or remove it with: {rm}"
        return f"rerun the command that needed it (synood rebuilds a damaged cache), or remove it with: {rm}"

    def problems(self, hashes: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
        """What is wrong with a complete artifact's files: missing, wrong size, (with `hashes`) wrong sha256.

        The manifest records each file's size and sha256; sizes are checked every
        time an artifact is used (a stat per file), hashes by `synood store verify`.
        """
        m = self.manifest
        out = []
        for rel, info in sorted((m.get("files") or {}).items()):
            p = self.path / rel
            if rel.startswith("/") or ".." in Path(rel).parts or not isinstance(info, dict):
                out.append(f"the manifest lists an invalid file {rel!r}")
                continue
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                out.append(f"{rel} is missing")
                continue
            except OSError as e:
                out.append(f"{rel} cannot be read ({e.strerror})")
                continue
            if size != info.get("size"):
                out.append(f"{rel} has {size} bytes, the manifest says {info.get('size')}")
            elif hashes:
                try:
                    digest = sha256_file(p)
                except OSError as e:
                    out.append(f"{rel} cannot be read ({e.strerror})")
                    continue
                if digest != info.get("sha256"):
                    out.append(f"{rel} does not match its sha256 (its content changed)")
            if progress is not None:
                progress(size)
        return out

    def usable(self) -> bool:
        """Complete with every recorded file present at its recorded size."""
        return Store._usable(self)

    def check(self) -> "Artifact":
        """Before using a complete artifact: every recorded file is there with its size, or exit 3."""
        if self.complete:
            bad = self.problems()
            if bad:
                more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
                raise DamagedArtifact(f"{self.ref} is damaged: {bad[0]}{more}", hint=self.repair_hint())
        return self

    def reopen(self, remove_damaged: bool = True) -> list[str]:
        """Turn a damaged complete artifact back into a partial one so its producer redoes what is missing.

        Files of the wrong size are removed (unless the producer repairs them itself, like an
        append-only JSONL file); returns the problems found (empty: nothing to do).
        """
        bad = self.problems()
        if bad:
            m = self.manifest
            for rel, info in (m.get("files") or {}).items():
                p = self.path / rel
                with contextlib.suppress(OSError):
                    if remove_damaged and p.stat().st_size != info.get("size"):
                        p.unlink()
            m["status"], m["files"], m["updated"] = "partial", {}, _now()
            atomic_write_json(self.path / MANIFEST, m)
        return bad

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
    def lock(self, part: str | None = None, shared: bool = False) -> Iterator[None]:
        """Exclusive, non-blocking: a second writer is told who holds the artifact.

        `part` locks one piece (e.g. one class shard) so that several processes can fill one
        artifact side by side without ever writing the same file; those processes hold the whole
        artifact's lock `shared` meanwhile, so `store rm`/`gc` (exclusive) cannot remove it under them.
        """
        lock_dir = self.store.artifacts / self.kind / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / (f"{self.id}.{part}.lock" if part else f"{self.id}.lock"), os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        except OSError as e:
            raise (disk_full_hint(e, lock_dir) or e) from None
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise (disk_full_hint(e, self.path) or e) from None
        if self.exists and self.status == "partial":
            return
        atomic_write_json(self.path / MANIFEST, self._manifest("partial", config, inputs, summary, {}))

    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self.path / rel
        try:
            atomic_write_bytes(target, data)
        except OSError as e:
            raise (disk_full_hint(e, target) or e) from None
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
            raise (disk_full_hint(e, target) or e) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _writing_manifest(self) -> dict:
        """The manifest of an artifact this process is writing; gone means `store rm` removed it meanwhile."""
        m = self.manifest
        if not m:
            raise DamagedArtifact(f"{self.ref} was removed while this process was writing it; it is not complete", hint="rerun the same command to make it again")
        return m

    def finish(self, summary: dict | None = None) -> None:
        """Record every payload file with size and sha256, then mark the manifest complete."""
        old = self._writing_manifest()
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
        m = self._writing_manifest()
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

    def check_inside(self, path: Path, ref: str) -> None:
        """Refuse (exit 2) a path that resolves outside `<home>/artifacts`, through `..` or a symlink."""
        base = os.path.realpath(self.artifacts)
        real = os.path.realpath(path)
        if real == base or os.path.commonpath([base, real]) != base:
            raise UsageError(f"{ref!r} resolves outside the store ({real}); refusing to touch it", hint="list the store's artifacts with: synood store ls")

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
        while not self._usable(art):
            try:
                with art.lock():
                    if not self._usable(art, warn=True):  # another process may have finished it meanwhile
                        self._build_into_place(art, config, inputs, build)
            except StoreBusy:
                if not wait:
                    raise
                time.sleep(1.0)
        if name:
            self.set_name(name, art)
        return art

    def build_and_load(self, kind: str, config: dict, build: Callable[[Path], dict | None], load: Callable[[Artifact], Any], inputs: dict | None = None) -> tuple[Artifact, Any]:
        """`build`, then `load(artifact)`; a cache that cannot be read (damaged on disk) is rebuilt once, with a warning."""
        art = self.build(kind, config, build, inputs=inputs)
        try:
            return art, load(art)
        except SynoodError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader error means the cached files are damaged
            first = first_line(e)
            warnings.warn(f"{art.ref} could not be read ({type(e).__name__}: {first}); rebuilding it", SynoodWarning, stacklevel=2)
            with art.lock():
                self._build_into_place(art, config, inputs, build)
            return art, load(art)

    @staticmethod
    def _usable(art: Artifact, warn: bool = False) -> bool:
        """Complete with every recorded file present at its size; a damaged cache is rebuilt."""
        try:
            bad = art.problems() if art.complete else None
        except DamagedArtifact as e:
            bad = [e.message]
        if bad is None:
            return False
        if bad and warn:
            warnings.warn(f"{art.ref} is damaged ({bad[0]}); rebuilding it", SynoodWarning, stacklevel=3)
        return not bad

    def _build_into_place(self, art: Artifact, config: dict, inputs: dict | None, build) -> None:
        parent = art.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{art.id}-", dir=parent))
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        except OSError as e:
            raise (disk_full_hint(e, parent) or e) from None
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
            raise (disk_full_hint(e, art.path) or e) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- names ----------------------------------------------------------------------------

    def set_name(self, name: str, art: Artifact) -> None:
        validate_name(name)
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
                    out[p.name] = (str(d["kind"]), str(d["id"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out

    def _named(self, name: str, kind: str, art_id: str) -> Artifact:
        try:
            return Artifact(self, kind, art_id)
        except UsageError:
            raise UsageError(
                f"the name {name!r} points at {kind}/{art_id}, which is not a valid artifact reference; refusing to use it",
                hint=f"remove the alias file {self.names_dir / name}, or run: synood store gc",
            ) from None

    # -- lookup ---------------------------------------------------------------------------

    def list(self, kind: str | None = None) -> list[Artifact]:
        out = []
        if not self.artifacts.is_dir():
            return out
        for kdir in sorted(self.artifacts.iterdir()):
            if not kdir.is_dir() or not KIND_PATTERN.match(kdir.name) or (kind and kdir.name != kind):
                continue
            for adir in sorted(kdir.iterdir()):
                if ID_PATTERN.match(adir.name) and adir.is_dir() and (adir / MANIFEST).exists():
                    with contextlib.suppress(UsageError):  # a symlink out of the store is not listed
                        out.append(Artifact(self, kdir.name, adir.name))
        return out

    def find(self, ref: str, kind: str | None = None) -> Artifact:
        """Look an artifact up by name, `kind/id`, full id or a unique id prefix (4+ chars)."""
        names = self._names()
        if ref in names:
            k, i = names[ref]
            art = self._named(ref, k, i)
            if not art.exists:
                raise UsageError(
                    f"name {ref!r} points at {k}/{i}, which is no longer in the store",
                    hint="rerun the command that made it, or drop the name with: synood store gc",
                )
            return self._check_kind(art, kind, ref)
        if "/" in ref:
            k, _, i = ref.partition("/")
            if k not in KINDS and not (KIND_PATTERN.match(k) and (self.artifacts / k).is_dir()):
                raise UsageError(f"{ref!r}: unknown artifact kind {k!r}", hint=f"kinds: {', '.join(KINDS)}; list the store with: synood store ls")
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

    def remove(self, art: Artifact, force: bool = False) -> None:
        """Delete an artifact and its names; one another process is writing is refused (exit 2) unless `force`."""
        self.check_inside(art.path, art.ref)
        if force:
            shutil.rmtree(art.path, ignore_errors=True)
        else:
            try:
                with art.lock():
                    shutil.rmtree(art.path, ignore_errors=True)
            except StoreBusy as e:
                raise StoreBusy(e.message, hint="wait for that run to finish, or pass --force to remove it anyway (that run then fails)") from None
        for name in self.names_of(art):
            with contextlib.suppress(FileNotFoundError):
                (self.names_dir / name).unlink()

    def gc(self, dry_run: bool = False, partial: bool = False, force: bool = False, busy: list | None = None, damaged: list | None = None) -> list[str]:
        """Remove temp folders of crashed writes, dangling names, and (with partial) unfinished artifacts.

        An unfinished artifact another process holds is kept and appended to `busy` as
        (artifact, pid) unless `force`; artifacts whose manifest cannot be read go to `damaged`.
        """
        removed: list[str] = []
        if self.artifacts.is_dir():
            for kdir in self.artifacts.iterdir():
                if not kdir.is_dir():
                    continue
                for p in kdir.iterdir():
                    if p.name.startswith(".tmp-") and p.is_dir() and KIND_PATTERN.match(kdir.name) and ID_PATTERN.match(p.name[5:].split("-")[0]):
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
            for art in self.list():
                try:
                    status = art.status
                except DamagedArtifact as e:
                    if damaged is not None:
                        damaged.append((art, e.message))
                    continue
                if partial and status == "partial":
                    holder = None if force else self.holder(art)
                    if holder is not None:
                        if busy is not None:
                            busy.append((art, holder))
                        continue
                    removed.append(str(art.path))
                    if not dry_run:
                        self.remove(art, force=True)
        for name, (k, i) in self._names().items():
            try:
                gone = not Artifact(self, k, i).exists
            except UsageError:
                gone = True  # an alias pointing outside the store is dropped, never followed
            if gone:
                removed.append(str(self.names_dir / name))
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        (self.names_dir / name).unlink()
        return removed

    @staticmethod
    def _unlocked(art: Artifact) -> bool:
        return Store.holder(art) is None

    @staticmethod
    def holder(art: Artifact) -> str | None:
        """None if nobody holds the artifact's lock, else the holder as the lock reports it."""
        try:
            with art.lock():
                return None
        except StoreBusy as e:
            return e.message


def validate_name(name: str) -> str:
    """An alias must be a plain file name: checked before any work (`--name` of every command)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UsageError(
            f"invalid artifact name {name!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


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
        raise (disk_full_hint(e, path) or e) from None


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
