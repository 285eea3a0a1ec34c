"""Names to classes (or functions): the registry behind ``models``, ``neuro.rules``, ``neuro.tasks`` and
``neuro.backends``.

Each of those packages keeps one :class:`Registry` and exposes its methods as module-level functions
(``available``, ``get``, ``register``, ``make``)::

    _RULES = Registry("rule")
    _RULES.register(BPTT)                      # under BPTT.name; usable as a class decorator
    _RULES.get("bptt")                         # -> BPTT; an unknown name lists the valid ones
    _RULES.make("bptt", net, loss="mse")       # -> BPTT(net, loss="mse"); an unknown option lists the valid ones

An entry may be a ``"module:attr"`` path instead of the object: it is imported on first ``get`` (backends
whose packages are heavy or optional).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries of one ``kind`` (``"model"``, ``"rule"``, ...), which the error messages name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        #: name -> entry, or its ``"module:attr"`` path until first used
        self.entries: dict[str, T | str] = {}

    def register(self, entry: T | str, name: str | None = None) -> T | str:
        """Add ``entry`` under ``name`` (default: ``entry.name``) and return it, so that it decorates a class."""
        if name is None:
            name = getattr(entry, "name", "")
        if not name or not isinstance(name, str):
            raise ValueError(f"{getattr(entry, '__name__', repr(entry))} has no registry name")
        self.entries[name] = entry
        return entry

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (imported now if it was registered by path)."""
        if name not in self.entries:
            raise ValueError(f"{self.kind} {name!r} is unknown: valid choices are {', '.join(self.available())}")
        entry = self.entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":")
            entry = self.entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def options(self, name: str, skip: int = 0) -> list[str]:
        """The options (dataclass fields, the first ``skip`` left out) of the class registered as ``name``."""
        return sorted(f.name for f in dataclasses.fields(self.get(name))[skip:] if f.init)

    def check_options(self, name: str, kw: dict[str, Any], skip: int = 0) -> None:
        """Raise ``ValueError`` naming the keys of ``kw`` that are no option of ``name``, and the valid ones."""
        valid = self.options(name, skip)
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} has no option {', '.join(unknown)}: "
                             f"valid options are {', '.join(valid) or '(none)'}")

    def make(self, name: str, *args: Any, **kw: Any) -> Any:
        """Build the class ``name`` from ``args`` (its first fields, e.g. a rule's network) and options ``kw``."""
        cls = self.get(name)
        self.check_options(name, kw, skip=len(args))
        return cls(*args, **kw)
