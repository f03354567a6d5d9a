"""How library code reports progress and warnings without printing.

The CLI passes a Rich-backed reporter; Python users get the silent default or their own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def update(self, *, total: int | None = None, description: str | None = None) -> None: ...


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def task(self, description: str, total: int | None, unit: str = "img"): ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        pass


class NullReporter:
    """Reports nothing; the default for library calls."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[_NullTask]:
        yield _NullTask()
