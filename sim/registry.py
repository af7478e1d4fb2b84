"""Name → implementation registries, one per plug point.

Each plug point (cost models, mixed-batch formulas, schedulers, arrival strategies, length
distributions) owns one :class:`Registry`. Registering a name twice is an error; looking up an
unknown name raises :class:`~sim.errors.ConfigError` listing the valid names. The registry is the
single source of truth for names: configs and the CLI read their choices from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sim.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations of one plug point."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. Raises ValueError on a duplicate name."""

        def deco(obj: T) -> T:
            self.add(name, obj, doc)
            return obj

        return deco

    def add(self, name: str, obj: T, doc: str | None = None) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        text = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
        self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""

    def get(self, name: str, field: str | None = None) -> T:
        """Return the implementation named ``name``; ConfigError listing valid names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            where = f"{field}: " if field else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        """Name → first docstring line, for help texts."""
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
