"""Concrete networks implementing the cell contract of :mod:`neuro.contract`.

``models.make(name, **kw)`` builds one; ``models.available()`` lists the names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neuro.contract import AbstractNetwork

from .alif import ALIF
from .columnar import Columnar
from .constructive import Constructive
from .influence import InfluenceBalancing
from .lif import LIF
from .lif_loihi import LIFLoihi
from .lstm import LSTM
from .rate import RateRNN

__all__ = ["ALIF", "Columnar", "Constructive", "InfluenceBalancing", "LIF", "LSTM", "RateRNN", "available", "get", "make", "register"]

_REGISTRY: dict[str, type[AbstractNetwork]] = {}


def register(cls: type[AbstractNetwork]) -> type[AbstractNetwork]:
    """Add a network class to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (RateRNN, LSTM, LIF, ALIF, InfluenceBalancing, Columnar, Constructive, LIFLoihi):
    register(_cls)


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[AbstractNetwork]:
    """The network class registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"model {name!r} is unknown: valid choices are {', '.join(available())}")
    return _REGISTRY[name]


def make(name: str, **kw: Any) -> AbstractNetwork:
    """Build the network ``name`` with hyper-parameters ``kw`` (``n_in``, ``n_hidden``, ``n_out``, ...)."""
    cls = get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)}: valid options are {', '.join(sorted(fields))}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name in ("n_in", "n_hidden", "n_out") and f.name not in kw and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"model {name!r} needs {', '.join(missing)}")
    return cls(**kw)
