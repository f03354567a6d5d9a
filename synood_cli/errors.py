"""Errors the library raises; the CLI turns them into one line plus a hint and an exit code.

Exit codes (CONVENTIONS.md): 0 done, 1 internal error, 2 usage or validation error before any
work, 3 resource missing (weights not cached offline, CUDA absent, out of memory), 4 data errors
under --strict, 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_RESOURCE = 3
EXIT_DATA = 4
EXIT_INTERRUPTED = 130


class SynoodError(Exception):
    """Base error: a message saying what is wrong and a hint saying how to fix it."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(SynoodError, ValueError):
    """Bad flags or bad input found before any work started (exit 2); a ValueError, so `except ValueError` works."""

    exit_code = EXIT_USAGE


class ResourceMissing(SynoodError, OSError):
    """Weights not in the cache while offline, CUDA asked for but absent, out of memory (exit 3); an OSError."""

    exit_code = EXIT_RESOURCE


class DataError(SynoodError, ValueError):
    """Unreadable inputs under --strict (exit 4); a ValueError."""

    exit_code = EXIT_DATA


class DamagedArtifact(ResourceMissing):
    """A store artifact whose files or manifest are missing or damaged (exit 3, with the repair command)."""


class PartialArtifact(ResourceMissing):
    """A run ended with its artifact still partial because another process holds part of it (exit 3)."""


class SynoodWarning(UserWarning):
    """A warning from the library (e.g. a damaged cache rebuilt); the CLI prints it as one `warning:` line."""


class StoreBusy(SynoodError):
    """Another process holds the lock on an artifact (exit 2: nothing was done)."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut to `limit` characters (its type's name when it says nothing): for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def read_user_text(path, what: str, hint: str) -> str:
    """A UTF-8 text file a user named (BOM allowed); every way it can be wrong is one UsageError.

    `what` names the file in messages ("classnames file", "word-list file"); `hint` says what
    the file should contain.
    """
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} {str(path)!r} does not exist", hint=f"pass {hint}")
    if p.is_dir():
        raise UsageError(f"{str(path)!r} is a folder, not a {what}", hint=f"pass {hint}")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint="save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}", hint="check the path and its permissions") from None
