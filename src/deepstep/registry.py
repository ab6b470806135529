"""A name -> entry registry with a decorator, as in timm's `register_model`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from deepstep.errors import DeepstepError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries looked up by name; unknown names get a one-line error with close names."""

    def __init__(self, kind: str, list_command: str, unknown_hint: str = ""):
        self.kind = kind
        self.list_command = list_command
        self.unknown_hint = unknown_hint  # said after an unknown name, e.g. where else names come from
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        del self._entries[name]

    def register(self, name: str, make_entry: Callable[[Callable], T]) -> Callable[[Callable], Callable]:
        """Decorator: register `make_entry(fn)` under `name` and return `fn` unchanged."""

        def decorate(fn: Callable) -> Callable:
            self.add(name, make_entry(fn))
            return fn

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self._entries)
            raise DeepstepError(
                f"unknown {self.kind} {name!r}{hint}; `{self.list_command}` lists them{self.unknown_hint}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._entries if fnmatch.fnmatch(n, pattern)]

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
