"""The file a command writes with `-o` (`score`, `negatives`, `prompt --export`): nothing else is touched.

A regular file (or a new one) is written to a temp file with an unpredictable name, made with
O_EXCL (mkstemp) in the target's folder and chmod-ed to the umask, then renamed onto the target:
a planted `.NAME.partial` link is never followed and a failed run leaves the target as it was.
A link to a regular file is written the same way at the file it names (the link stays). A
device, FIFO or socket, or a link to one (`/dev/null`, `/dev/stdout`, a pipe), is opened and
written directly: renaming a temp file onto it would replace the device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO

from synood_cli.errors import UsageError

PARTIAL = ".partial"


class OutputFile:
    """An open output: `stream`, then `commit()` (rename into place) or `abort()` (drop the temp file).

    The temp file is flocked while it is written, so a later run can tell the `.NAME.*.partial`
    files of killed runs (SIGKILL, a killed torchrun rank 0) from live ones and removes them.
    """

    def __init__(self, output: str | os.PathLike, binary: bool = False):
        self.output = str(output)
        self._tmp: Path | None = None
        alias = open_fd_alias(Path(output))
        direct, self.target = (True, Path(output)) if alias is not None else where_to_write(Path(output))
        try:
            if alias is not None:
                fd = os.dup(alias)  # `-o /dev/stdout >> log`: the shell's own redirection, append mode included
            elif direct:
                fd = os.open(self.target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            else:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=PARTIAL, dir=self.target.parent)
                self._tmp = Path(tmp)
                from synood_cli.store import umask

                os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: the result keeps the umask's permissions
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # live: a later run's sweep leaves it alone
                sweep_stale_partials(self.target, keep=self._tmp)
        except OSError as e:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            raise self.error(e) from None
        raw = os.fdopen(fd, "wb")
        self.stream: IO = raw if binary else io.TextIOWrapper(raw, encoding="utf-8", newline="")

    @property
    def through_temp_file(self) -> bool:
        """True for a regular file written to a temp file and renamed on commit; False for a device, FIFO or fd."""
        return self._tmp is not None

    def error(self, e: OSError) -> Exception:
        """An OSError while writing, as one line naming the output file (full disk: exit 3)."""
        from synood_cli.store import disk_full_hint

        return disk_full_hint(e, self.output) or e

    def commit(self) -> None:
        """Close and, for a regular file, rename the temp file onto the target."""
        try:
            self.stream.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.target)
                self._tmp = None
        except OSError as e:
            self.abort()
            raise self.error(e) from None

    def abort(self) -> None:
        """Drop what was written: the temp file goes even when closing it fails (a full disk); the target is untouched."""
        with contextlib.suppress(OSError, ValueError):
            self.stream.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None


FD_LINK = re.compile(r"^/(?:proc/self|proc/(\d+)|dev)/fd/(\d+)$")
STD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


def open_fd_alias(path: Path) -> int | None:
    """The open fd that `path` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N, or a link to one), else None.

    Such a path is this process's own open file: it is written through that fd, so an output
    redirected with `>>` is appended to, and a file or device is never replaced.
    """
    text = os.path.abspath(path)
    for _ in range(16):  # follow a chain of links by hand: the last hop is the kernel's magic fd link
        if text in STD_NAMES:
            return STD_NAMES[text]
        m = FD_LINK.match(text)
        if m and (m.group(1) is None or int(m.group(1)) == os.getpid()):
            n = int(m.group(2))
            try:
                os.fstat(n)
            except OSError:
                return None
            return n
        try:
            target = os.readlink(text)
        except OSError:
            return None
        text = os.path.normpath(os.path.join(os.path.dirname(text), target))
    return None


def where_to_write(path: Path) -> tuple[bool, Path]:
    """(write directly?, the path to write) for an output path; a folder or a dangling link is refused (exit 2)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False, path
    except OSError as e:
        from synood_cli.store import disk_full_hint

        raise (disk_full_hint(e, path) or e) from None
    if stat.S_ISREG(st.st_mode):
        return False, path
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the output {path} is a folder", hint=f"name a file in it, e.g. {path}/scores.csv")
    try:
        st = os.stat(path)  # a link: what it names
    except OSError:
        raise UsageError(f"the output {path} is a link to {os.readlink(path)}, which does not exist", hint="name the file itself") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the output {path} is a link to a folder", hint="name a file in it")
    if not stat.S_ISREG(st.st_mode):
        return True, path  # a device, FIFO or socket (or a link to one): never replaced
    real = Path(os.path.realpath(path))
    try:
        real_st = os.stat(real)
        same = (real_st.st_ino, real_st.st_dev) == (st.st_ino, st.st_dev)
    except OSError:
        same = False
    # a link to a regular file: that file is replaced, the link stays; /dev/stdout onto a deleted file: directly
    return (False, real) if same else (True, path)


def sweep_stale_partials(target: Path, keep: Path) -> list[Path]:
    """Remove `.NAME.*.partial` files of killed runs: our own regular files that no live writer holds (flock).

    Links and other users' files are never opened for removal; returns what was removed.
    """
    prefix = f".{target.name}."
    try:
        names = sorted(n for n in os.listdir(target.parent) if n.startswith(prefix) and n.endswith(PARTIAL))
    except OSError:
        return []
    removed = []
    for name in names:
        p = target.parent / name
        if p == keep:
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # a link (ELOOP), gone, or unreadable: not ours to remove
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a run writing it right now
                raise
            now = os.lstat(p)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                p.unlink()
                removed.append(p)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def write_output(output: str | os.PathLike, data: bytes) -> None:
    """Write a whole output file at once, as OutputFile does (`negatives -o`, `prompt --export`)."""
    out = OutputFile(output, binary=True)
    try:
        out.stream.write(data)
        out.stream.flush()
    except OSError as e:
        out.abort()
        raise out.error(e) from None
    except BaseException:
        out.abort()
        raise
    out.commit()
