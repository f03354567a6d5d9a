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
import stat
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
# kinds whose complete artifacts always hold payload files ("boundary" holds only a summary): a complete
# manifest of these kinds with an empty file list is not trusted (its files would go unchecked)
NONEMPTY_KINDS = ("checkpoint", "dataset", "features", "negatives", "prompts", "synth", "text-features", "weights")


class CacheMismatch(ValueError):
    """A cache whose files are intact but whose content does not fit its use (wrong rows or width): rebuilt."""


def check_rows(tensor: Any, rows: int, width: int | None, what: str) -> Any:
    """`tensor` must be [rows, width] (width None: any), else CacheMismatch: a cut or foreign cache is rebuilt, never used."""
    shape = tuple(getattr(tensor, "shape", ()))
    if len(shape) != 2 or shape[0] != rows or (width is not None and shape[1] != width):
        want = f"[{rows}, {width if width is not None else 'd'}]"
        raise CacheMismatch(f"{what} holds a tensor of shape {list(shape)}, not {want}")
    return tensor


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


def _sha256_member(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file inside the store, opened without following a link (a FIFO or device is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        h = hashlib.sha256()
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def payload_files(root: Path) -> Iterator[Path]:
    """Regular files under `root`, sorted, walked without following a link (links are never listed or read)."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            p = Path(folder) / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    yield p


def honour_umask(root: Path) -> None:
    """chmod what a build wrote to the umask: safetensors and mkstemp write 0600, mkdtemp 0700.

    A store shared by a group must stay readable by it; links are left alone.
    """
    mask = umask()
    for folder, dirs, files in os.walk(root, followlinks=False):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o777 & ~mask)
        for name in files:
            p = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    os.chmod(p, 0o666 & ~mask)


def temp_next_to(path: Path, suffix: str = ".tmp") -> Path:
    """A new, empty temp file beside `path` with an unpredictable name (mkstemp: O_EXCL, never a planted link), umask mode.

    For writers that take a path (Parquet, PNG): a predictable name like `.x.<pid>.tmp` lets
    anyone who can write the folder plant a link there and have us write through it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(tmp)


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
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = path or exc.filename
        full = "disk full" if exc.errno != errno.EFBIG else "file size limit reached"
        return ResourceMissing(
            f"{full} while writing {where if where else 'to the store'}; finished files are kept, the one in flight was not written",
            hint="free space (synood store gc, synood store rm NAME) or use --home / -o on a larger disk, then rerun",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = path or exc.filename or "a file"
        return ResourceMissing(
            f"cannot {verb} {where}: {exc.strerror or exc}",
            hint="check the folder's permissions (and that the disk is not mounted read-only), or use --home / -o with a writable place",
        )
    return None


def lock_holders(fd: int) -> list[int]:
    """The pids holding a lock on the file open at `fd`, from the kernel's lock table (Linux; else empty).

    Lock files stay empty (nothing is written into them): this is how a busy artifact names its writer.
    """
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    exact, by_inode = [], []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6:
            continue  # a process waiting for the lock, not holding it
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
        except ValueError:
            continue
        if int(inode) == st.st_ino and pid > 0:
            by_inode.append(pid)
            if f"{major}:{minor}" == dev:
                exact.append(pid)
    return sorted(set(exact or by_inode))


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
        """The parsed manifest ({} if there is none); a link, FIFO or device there, or a malformed one, is DamagedArtifact."""
        path = self.path / MANIFEST
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return {}
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is a link; synood never follows it", hint=self.repair_hint(["is a link"])) from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is not a regular file", hint=self.repair_hint(["not a regular file"]))
            raw = f.read()
        try:
            m = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is not valid JSON ({first_line(e, 120)})", hint=self.repair_hint()) from None
        if not isinstance(m, dict) or not isinstance(m.get("files", {}), dict) or not isinstance(m.get("status", ""), str) or not all(
            isinstance(m.get(k, {}), dict) for k in ("config", "inputs", "summary")
        ):
            raise DamagedArtifact(f"{self.ref} is damaged: its manifest.json is not a synood manifest", hint=self.repair_hint())
        return m

    def repair_hint(self, problems: list[str] | None = None) -> str:
        rm = f"synood store rm {self.ref}"
        if problems and any(p.startswith("the manifest lists an invalid") or "resolves outside" in p or "is a link" in p or "not a regular" in p for p in problems):
            # a tampered manifest or planted link: rerunning would meet it again
            return f"its manifest or folder was tampered with; remove it with: {rm}, then rerun the command that made it"
        if self.kind in PRODUCERS:
            return f"rerun the `{PRODUCERS[self.kind]}` command that made it (it redoes only what is missing), or remove it with: {rm}"
        return f"rerun the command that needed it (synood rebuilds a damaged cache), or remove it with: {rm}"

    def entry_problem(self, rel: Any, info: Any) -> str | None:
        """Why a manifest's file entry must not be touched (None: a plain file inside this artifact).

        A shared store is hostile ground: every entry is checked here before any stat, hash,
        unlink or write. `/abs`, `..`, `.`, empty or NUL parts, an entry that resolves out of the
        artifact through a linked folder, a link, and anything but a regular file are refused.
        """
        if not isinstance(rel, str) or not isinstance(info, dict) or not rel or "\x00" in rel or rel.startswith("/"):
            return f"the manifest lists an invalid file {str(rel)[:200]!r}"
        parts = rel.split("/")
        if any(part in ("", ".", "..") for part in parts) or rel == MANIFEST:
            return f"the manifest lists an invalid file {rel[:200]!r}"
        path = self.path / rel
        base = os.path.realpath(self.path)
        if os.path.commonpath([base, os.path.realpath(path)]) != base:
            return f"{rel} resolves outside the artifact (through a link); not followed"
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None  # missing: reported (and redone) by the caller
        except OSError as e:
            return f"{rel} cannot be read ({e.strerror})"
        if stat.S_ISLNK(st.st_mode):
            return f"{rel} is a link; synood never follows links in the store"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel} is not a regular file"
        return None

    def invalid_entries(self) -> list[str]:
        """The manifest's file entries that must not be touched (see `entry_problem`)."""
        files = self.manifest.get("files") or {}
        return [bad for rel, info in sorted(files.items()) if (bad := self.entry_problem(rel, info))]

    def problems(self, hashes: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
        """What is wrong with a complete artifact's files: invalid entries, missing, wrong size, (with `hashes`) wrong sha256.

        The manifest records each file's size and sha256; sizes are checked every
        time an artifact is used (a stat per file), hashes by `synood store verify`.
        Every entry passes `entry_problem` first: nothing outside the artifact is stat-ed or read.
        """
        m = self.manifest
        files = m.get("files") or {}
        out = []
        if m.get("status") == "complete" and not files and self.kind in NONEMPTY_KINDS:
            out.append("the manifest lists no files")
        for rel, info in sorted(files.items()):
            bad = self.entry_problem(rel, info)
            if bad:
                out.append(bad)
                continue
            p = self.path / rel
            try:
                size = os.lstat(p).st_size
            except (FileNotFoundError, NotADirectoryError):
                out.append(f"{rel} is missing")
                continue
            except OSError as e:
                out.append(f"{rel} cannot be read ({e.strerror})")
                continue
            if size != info.get("size"):
                recorded = info.get('size')
                out.append(f"{rel} has {size} bytes, the manifest says {recorded if isinstance(recorded, int) else repr(recorded)[:40]}")
            elif hashes:
                try:
                    digest = _sha256_member(p)
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

    def check(self, complete: bool = False) -> "Artifact":
        """Before using a complete artifact: every recorded file is there with its size, or exit 3.

        With `complete`, an artifact that is not complete (partial, or a manifest without a
        status) is refused too: only a producer resumes a partial artifact.
        """
        if complete and not self.complete:
            raise DamagedArtifact(f"{self.ref} is not complete (its manifest says {str(self.status)[:40]!r})", hint=self.repair_hint())
        if self.complete:
            bad = self.problems()
            if bad:
                more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
                raise DamagedArtifact(f"{self.ref} is damaged: {bad[0]}{more}", hint=self.repair_hint(bad))
        return self

    def reopen(self, remove_damaged: bool = True) -> list[str]:
        """Turn a damaged complete artifact back into a partial one so its producer redoes what is missing.

        Files of the wrong size are removed (unless the producer repairs them itself, like an
        append-only JSONL file); returns the problems found (empty: nothing to do). A manifest
        with an invalid entry (`/abs`, `..`, a link) is refused whole (exit 3) and nothing is
        removed: a tampered manifest must never steer an unlink.
        """
        invalid = self.invalid_entries()
        if invalid:
            raise DamagedArtifact(f"{self.ref} is damaged: {invalid[0]}; nothing was removed", hint=self.repair_hint(invalid))
        bad = self.problems()
        if bad:
            m = self.manifest
            for rel, info in (m.get("files") or {}).items():
                p = self.path / rel
                with contextlib.suppress(OSError):
                    st = os.lstat(p)
                    if remove_damaged and stat.S_ISREG(st.st_mode) and st.st_size != info.get("size"):
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
        The lock file stays empty: its holder is read from the kernel's lock table (/proc/locks).
        """
        fd = self._open_lock(f"{self.id}.{part}.lock" if part else f"{self.id}.lock")
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                pids = lock_holders(fd)
                who = f"pid {', '.join(map(str, pids))}" if pids else "a process this machine cannot name: another host sharing the store?"
                raise StoreBusy(
                    f"{self.ref}{' (' + part + ')' if part else ''} is being written by another process ({who})",
                    hint="wait for that run to finish, or change the config or --name to write a new artifact",
                ) from None
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _open_lock(self, name: str) -> int:
        """Open (create) `<kind>/.locks/NAME` without following a link; anything but a plain file inside the store is refused.

        A shared store is hostile ground: a link planted at the lock path must neither be
        followed (O_NOFOLLOW, also when creating) nor written through; nothing is ever written into a lock.
        """
        lock_dir = self.store.artifacts / self.kind / ".locks"
        path = lock_dir / name
        try:
            with contextlib.suppress(FileExistsError):  # a dangling link there: refused just below
                lock_dir.mkdir(parents=True, exist_ok=True)
            dfd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise self._bad_lock(lock_dir, "is a link or not a folder") from None
            raise (disk_full_hint(e, lock_dir) or e) from None
        try:
            real = os.path.realpath(f"/proc/self/fd/{dfd}") if os.path.isdir("/proc/self/fd") else os.path.realpath(lock_dir)
            base = os.path.realpath(self.store.artifacts)
            if os.path.commonpath([base, real]) != base:
                raise self._bad_lock(lock_dir, f"resolves outside the store ({real})")
            flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(name, flags, 0o666, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self._bad_lock(path, "is a symbolic link") from None
                raise (disk_full_hint(e, path, verb="open") or e) from None
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise self._bad_lock(path, "is not a plain file" if not stat.S_ISREG(st.st_mode) else "has other hard links")
        return fd

    def _bad_lock(self, path: Path, what: str) -> DamagedArtifact:
        return DamagedArtifact(
            f"the lock file {path} {what}; refusing to use it",
            hint=f"someone put it there: remove it (rm {path}) if no synood run is using {self.ref}, then rerun",
        )

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
        try:
            tmp = temp_next_to(target)
        except OSError as e:
            raise (disk_full_hint(e, target) or e) from None
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
        for p in payload_files(self.path):  # links are never listed, hashed or followed
            if p.name != MANIFEST and not p.name.startswith("."):
                rel = p.relative_to(self.path).as_posix()
                files[rel] = {"size": os.lstat(p).st_size, "sha256": _sha256_member(p)}
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
            return sum(recorded_size(f) for f in files.values())
        return sum(os.lstat(p).st_size for p in payload_files(self.path))


def recorded_size(info: Any) -> int:
    """A manifest entry's recorded size; 0 for an entry that is not `{"size": int}` (a tampered manifest)."""
    size = info.get("size") if isinstance(info, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


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
        built = False
        while not self._usable(art):
            if built:  # what was just built does not pass its own check: never loop on it
                raise DamagedArtifact(f"{art.ref} was built but does not pass its check ({(art.problems() or ['not complete'])[0]})", hint=art.repair_hint())
            try:
                with art.lock():
                    if not self._usable(art, warn=True):  # another process may have finished it meanwhile
                        self._build_into_place(art, config, inputs, build)
                        built = True
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
            if isinstance(e, CacheMismatch):  # intact files, wrong content for this use (cut, or from another model)
                warnings.warn(f"{art.ref} does not fit its use ({first}); rebuilding it", SynoodWarning, stacklevel=2)
            else:
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
            honour_umask(tmp)  # safetensors writes 0600 whatever the umask
            files = {
                p.relative_to(tmp).as_posix(): {"size": os.lstat(p).st_size, "sha256": _sha256_member(p)}
                for p in payload_files(tmp)
                if p.name != MANIFEST
            }
            atomic_write_json(tmp / MANIFEST, art._manifest("complete", config, inputs, summary, files))
            if os.path.islink(art.path):
                os.unlink(art.path)  # a link planted in its place (inside the store): removed, never followed
            elif art.path.exists():
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
        self._check_names_dir()
        atomic_write_json(self.names_dir / name, {"kind": art.kind, "id": art.id})  # replaces a planted link, never follows it

    def _check_names_dir(self) -> bool:
        """True if `<home>/names` is a real folder of this store (or absent); a link is refused (exit 3)."""
        if os.path.islink(self.names_dir) or (self.names_dir.exists() and os.path.realpath(self.names_dir) != os.path.join(os.path.realpath(self.root), "names")):
            raise ResourceMissing(
                f"{self.names_dir} is a link or lies outside the store; synood never follows it",
                hint=f"remove the link (rm {self.names_dir}); names are recreated by --name",
            )
        return self.names_dir.is_dir()

    def names_of(self, art: Artifact) -> list[str]:
        return sorted(n for n, (k, i) in self._names().items() if k == art.kind and i == art.id)

    def _names(self) -> dict[str, tuple[str, str]]:
        """Alias files: plain small files only (a link, FIFO or device planted in names/ is never opened)."""
        out = {}
        try:
            if not self._check_names_dir():
                return out
        except ResourceMissing:
            return out
        for p in self.names_dir.iterdir():
            if p.name.startswith("."):
                continue
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                with open(p, "rb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)) as f:
                    d = json.loads(f.read(4096))
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

    def list(self, kind: str | None = None, links: list | None = None) -> list[Artifact]:
        """Every artifact (of `kind`); a kind or artifact folder that is a link is never followed: appended to `links`."""
        out = []
        if not self.artifacts.is_dir() or os.path.islink(self.artifacts):
            return out
        for kdir in sorted(self.artifacts.iterdir()):
            if not KIND_PATTERN.match(kdir.name) or (kind and kdir.name != kind):
                continue
            if os.path.islink(kdir):
                if links is not None:
                    links.append((kdir, os.readlink(kdir)))
                continue
            if not kdir.is_dir():
                continue
            for adir in sorted(kdir.iterdir()):
                if not ID_PATTERN.match(adir.name):
                    continue
                if os.path.islink(adir):
                    if links is not None:
                        links.append((adir, os.readlink(adir)))
                    continue
                if adir.is_dir() and (adir / MANIFEST).exists():
                    with contextlib.suppress(UsageError):
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
        if os.path.islink(art.path):
            raise UsageError(
                f"{art.path} is a link (to {os.readlink(art.path)}); synood never follows or removes links in the store",
                hint=f"remove the link itself if you put it there: rm {art.path}",
            )
        if force:
            shutil.rmtree(art.path, ignore_errors=True)  # rmtree removes links inside, never what they point at
        else:
            try:
                with art.lock():
                    shutil.rmtree(art.path, ignore_errors=True)
            except StoreBusy as e:
                raise StoreBusy(e.message, hint="wait for that run to finish, or pass --force to remove it anyway (that run then fails)") from None
        for name in self.names_of(art):
            with contextlib.suppress(FileNotFoundError):
                (self.names_dir / name).unlink()

    def gc(
        self,
        dry_run: bool = False,
        partial: bool = False,
        force: bool = False,
        busy: list | None = None,
        damaged: list | None = None,
        links: list | None = None,
    ) -> list[str]:
        """Remove temp folders of crashed writes, folders left without a manifest, dangling names, and (with partial) unfinished artifacts.

        An unfinished artifact another process holds is kept and appended to `busy` as
        (artifact, pid) unless `force`; artifacts whose manifest cannot be read go to `damaged`;
        links (a kind or artifact folder, anything below) are never followed nor removed: the
        ones in place of a kind or artifact folder go to `links` as (path, target).
        """
        removed: list[str] = []
        links = links if links is not None else []

        def drop(p: Path, tree: bool) -> None:
            removed.append(str(p))
            if not dry_run:
                if tree:
                    shutil.rmtree(p, ignore_errors=True)  # removes links inside, never their targets
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

        def unlocked(art: Artifact) -> bool:
            """Nobody holds it; a planted lock path is reported with the damaged artifacts, and the folder kept."""
            try:
                return self._unlocked(art)
            except DamagedArtifact as e:
                if damaged is not None:
                    damaged.append((art, e.message))
                return False

        arts = self.list(links=links)  # also records the linked kind and artifact folders
        if self.artifacts.is_dir() and not os.path.islink(self.artifacts):
            for kdir in sorted(self.artifacts.iterdir()):
                if not KIND_PATTERN.match(kdir.name) or os.path.islink(kdir) or not kdir.is_dir():
                    continue
                for p in sorted(kdir.iterdir()):
                    if os.path.islink(p) or not p.is_dir():
                        continue
                    if p.name.startswith(".tmp-") and ID_PATTERN.match(p.name[5:].split("-")[0]):
                        # a cache build killed midway; its builder held the artifact's lock
                        if unlocked(Artifact(self, kdir.name, p.name[5:].split("-")[0])):
                            drop(p, tree=True)
                    elif ID_PATTERN.match(p.name):
                        art = Artifact(self, kdir.name, p.name)
                        if not (p / MANIFEST).exists() and not os.path.islink(p / MANIFEST):
                            # `store rm --force` under a running writer, which then recreated the folder
                            if unlocked(art):
                                drop(p, tree=True)
                            continue
                        for tmp in self._stale_tmp_files(p):
                            drop(tmp, tree=False)
            for art in arts:
                try:
                    status = art.status
                except DamagedArtifact as e:
                    if damaged is not None:
                        damaged.append((art, e.message))
                    continue
                if partial and status == "partial":
                    if not force:
                        try:
                            holder = self.holder(art)
                        except DamagedArtifact as e:  # a planted lock path: reported, kept
                            if damaged is not None:
                                damaged.append((art, e.message))
                            continue
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
                drop(self.names_dir / name, tree=False)
        return removed

    @staticmethod
    def _stale_tmp_files(folder: Path) -> list[Path]:
        """`.*.tmp` files a killed process was writing (shard, manifest), walked without following links.

        Live writers finish a file in minutes: only files older than STALE_TMP_S are taken.
        """
        out = []
        for p in payload_files(folder):
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - os.lstat(p).st_mtime > STALE_TMP_S:
                        out.append(p)
        return out

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
