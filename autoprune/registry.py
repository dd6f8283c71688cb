"""A tiny decorator-based registry, shared by models, importance criteria and searchers."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from autoprune.errors import AutopruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``@registry.register("name")`` adds one; ``get`` looks one up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]  # a registered class knows its name
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AutopruneError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}.{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
