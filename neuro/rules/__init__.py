"""Learning rules: online gradient estimators behind one contract (see :mod:`neuro.rules.base`).

``neuro.rules.make(name, net, **hyper)`` builds one; ``neuro.rules.available()`` lists the names. Every
rule class is imported and registered here; compiled kernels (numba) are imported only by the fast paths
that use them (:mod:`neuro.rules._fast`).
"""

from __future__ import annotations

from typing import Any

from neuro.contract import AbstractNetwork
from neuro.registry import Registry

from .anp import ANP
from .anp_time import ANPTime
from .base import AbstractRule, Needs, StepOutput, add_into, zeros_like_params
from .bptt import BPTT
from .columnar import ColumnarRTRL
from .constructive import ConstructiveRTRL
from .eprop import EProp
from .kf_rtrl import KFRTRL
from .nobacktrack import NoBackTrack
from .nobacktrack_kalman import NoBackTrackKalman
from .node import AbstractNodeRule
from .node_perturbation import NodePerturbation
from .ottt import OTTT
from .rflo import RFLO
from .rtrl import RTRL
from .sltt import SLTT, SLTTK
from .snap import SnAp1, SnAp2
from .tbptt import TBPTT
from .td import TDLambda
from .three_factor import ThreeFactor
from .uoro import UORO
from .wp import WeightPerturbation

__all__ = [
    # the contract
    "AbstractNodeRule", "AbstractRule", "Needs", "StepOutput", "add_into", "zeros_like_params",
    # gradient rules: exact, truncated, forward-mode and its approximations
    "BPTT", "ColumnarRTRL", "ConstructiveRTRL", "KFRTRL", "NoBackTrack", "NoBackTrackKalman", "RTRL", "SnAp1", "SnAp2",
    "TBPTT", "TDLambda", "UORO",
    # local rules: eligibility traces and an error broadcast
    "EProp", "OTTT", "RFLO", "SLTT", "SLTTK", "ThreeFactor",
    # perturbation rules: forward passes and a scalar loss
    "ANP", "ANPTime", "NodePerturbation", "WeightPerturbation",
    # the registry
    "available", "get", "make", "refusal", "register",
]

_RULES: Registry[type[AbstractRule]] = Registry("rule")
register = _RULES.register
available = _RULES.available
get = _RULES.get

for _cls in (BPTT, TBPTT, RTRL, ColumnarRTRL, ConstructiveRTRL, KFRTRL, UORO, NoBackTrack, NoBackTrackKalman, SnAp1, SnAp2,
             TDLambda, EProp, OTTT, RFLO, SLTT, SLTTK, ThreeFactor, ANP, ANPTime, NodePerturbation, WeightPerturbation):
    register(_cls)


def make(name: str, net: AbstractNetwork, **kw: Any) -> AbstractRule:
    """Build the rule ``name`` on ``net`` with hyper-parameters ``kw``."""
    return _RULES.make(name, net, **kw)


def refusal(name: str, net: AbstractNetwork, **kw: Any) -> str | None:
    """Why the rule ``name`` (with options ``kw``) refuses ``net``, or None where it runs on it. A rule decides
    from the cell contract when it is built; this asks it, so callers need no list of models per rule."""
    try:
        make(name, net, **kw)
    except ValueError as e:
        return str(e)
    return None
