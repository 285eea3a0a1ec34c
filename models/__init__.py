"""Concrete networks implementing the cell contract of :mod:`neuro.contract`.

``models.make(name, **kw)`` builds one; ``models.available()`` lists the names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neuro.contract import AbstractNetwork
from neuro.registry import Registry

from .alif import ALIF
from .columnar import Columnar
from .constructive import Constructive
from .influence import InfluenceBalancing
from .lif import LIF
from .lif_loihi import LIFLoihi
from .lstm import LSTM
from .rate import RateRNN
from .stack import Stack

__all__ = ["ALIF", "Columnar", "Constructive", "InfluenceBalancing", "LIF", "LIFLoihi", "LSTM", "RateRNN", "Stack", "available", "get",
           "make", "register"]

_MODELS: Registry[type[AbstractNetwork]] = Registry("model")
register = _MODELS.register
available = _MODELS.available
get = _MODELS.get

for _cls in (RateRNN, LSTM, LIF, ALIF, InfluenceBalancing, Columnar, Constructive, LIFLoihi, Stack):
    register(_cls)


def make(name: str, **kw: Any) -> AbstractNetwork:
    """Build the network ``name`` with hyper-parameters ``kw`` (``n_in``, ``n_hidden``, ``n_out``, ...).
    ``n_hidden`` given as a sequence of sizes, ``(64, 64)``, builds a :class:`Stack` of those layers of the model
    ``name`` (its other hyper-parameters are the layers'; ``connectivity`` and ``skip`` the stack's)."""
    hidden = kw.get("n_hidden")
    if isinstance(hidden, (tuple, list)) and name != "stack":
        if len(hidden) == 1:
            kw = {**kw, "n_hidden": hidden[0]}
        else:
            stack_kw = {k: kw.pop(k) for k in ("n_in", "n_out", "connectivity", "skip", "feedforward_scale", "per_layer") if k in kw}
            kw.pop("n_hidden")
            get(name)
            return Stack(layer=name, sizes=tuple(hidden), options=tuple(sorted(kw.items())), **stack_kw)
    cls = get(name)
    _MODELS.check_options(name, kw)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name in ("n_in", "n_hidden", "n_out") and f.name not in kw and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"model {name!r} needs {', '.join(missing)}")
    return cls(**kw)
