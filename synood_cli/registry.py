"""A tiny name -> implementation registry; implementations register where they are defined.

OpenOOD kept two hand-written registries that drifted apart; one registry per kind, filled by
decorators in the implementing module, avoids that.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from synood_cli.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one kind (scores, lexicons, backends, ...)."""

    def __init__(self, kind: str, option: str | None = None):
        self.kind = kind
        self.option = option
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return decorate

    def add(self, name: str, item: T) -> None:
        self.register(name)(item)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(self.unknown_message(name), hint=self.hint(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def hint(self, name: str) -> str | None:
        close = difflib.get_close_matches(name, self.names(), n=1)
        if close:
            flag = f"{self.option} " if self.option else ""
            return f"did you mean {flag}{close[0]}?"
        return None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
