"""Learning rules: online gradient estimators behind one contract (see :mod:`neuro.rules.base`).

``neuro.rules.make(name, net, **hyper)`` builds one; ``neuro.rules.available()`` lists the names.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from neuro.contract import AbstractNetwork

from .base import AbstractRule, Needs, StepOutput, add_into, zeros_like_params
from .bptt import BPTT
from .columnar import ColumnarRTRL
from .constructive import ConstructiveRTRL
from .kf_rtrl import KFRTRL
from .nobacktrack import NoBackTrack
from .nobacktrack_kalman import NoBackTrackKalman
from .rtrl import RTRL
from .snap import SnAp1, SnAp2
from .tbptt import TBPTT
from .td import TDLambda
from .uoro import UORO

__all__ = ["AbstractRule", "BPTT", "ColumnarRTRL", "ConstructiveRTRL", "KFRTRL", "Needs", "NoBackTrack", "NoBackTrackKalman", "RTRL", "SnAp1",
           "SnAp2", "StepOutput", "TBPTT", "TDLambda", "UORO", "add_into", "available", "get", "make", "register", "zeros_like_params"]

_REGISTRY: dict[str, type[AbstractRule]] = {}


def register(cls: type[AbstractRule]) -> type[AbstractRule]:
    """Add a rule class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (BPTT, TBPTT, RTRL, ColumnarRTRL, ConstructiveRTRL, KFRTRL, UORO, NoBackTrack, NoBackTrackKalman, SnAp1, SnAp2, TDLambda):
    register(_cls)

#: rules imported on first use ("module:Class"): the local and perturbation rules
_LAZY: dict[str, str] = {
    # -- local rules (eligibility traces and an error broadcast) --
    "rflo": "neuro.rules.rflo:RFLO",
    "eprop": "neuro.rules.eprop:EProp",
    "three-factor": "neuro.rules.three_factor:ThreeFactor",
    "ottt": "neuro.rules.ottt:OTTT",
    "sltt": "neuro.rules.sltt:SLTT",
    "sltt-k": "neuro.rules.sltt:SLTTK",
    # -- perturbation rules (forward passes and a scalar loss) --
    "wp": "neuro.rules.wp:WeightPerturbation",
    "np": "neuro.rules.node_perturbation:NodePerturbation",
    "anp": "neuro.rules.anp:ANP",
    "anp-time": "neuro.rules.anp_time:ANPTime",
}


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def get(name: str) -> type[AbstractRule]:
    if name not in _REGISTRY:
        if name not in _LAZY:
            raise ValueError(f"rule {name!r} is unknown: valid choices are {', '.join(available())}")
        module, attr = _LAZY[name].split(":")
        cls = getattr(importlib.import_module(module), attr)
        if cls.name != name:
            raise RuntimeError(f"{_LAZY[name]} is registered as {name!r} but its name is {cls.name!r}")
        _REGISTRY[name] = cls
    return _REGISTRY[name]


def make(name: str, net: AbstractNetwork, **kw: Any) -> AbstractRule:
    """Build the rule ``name`` on ``net`` with hyper-parameters ``kw``."""
    cls = get(name)
    fields = {f.name for f in dataclasses.fields(cls)} - {"net"}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ValueError(f"rule {name!r} has no option {', '.join(unknown)}: valid options are {', '.join(sorted(fields))}")
    return cls(net=net, **kw)
