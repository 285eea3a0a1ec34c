"""An ensemble of independent copies of one network, run as one batched computation.

``Ensemble(base, members=S)`` is itself a network of the cell contract. Its parameters are the base
network's with a leading member axis (``W_rec`` [S, n, n], ...); its batch holds ``S`` groups of ``B``
sequences, member-major (rows ``m B .. (m + 1) B - 1`` are member ``m``'s), and member ``m``'s rows run
with member ``m``'s parameters. Every step is the base network's step under ``torch.func.vmap`` over the
members (a batched matrix product instead of ``S`` small ones), so nothing couples two members::

    state[m], y[m] = base.step(params[m], state[m], x[m])        for every member m, at once

A loss averaged over the ``S B`` rows is ``1/S`` times the sum of the members' own losses (each averaged
over its ``B`` rows), so its gradient with respect to member ``m``'s parameters is ``1/S`` times the
gradient member ``m`` alone would get (:func:`neuro.comparison.vectorised` scales it back). Elementwise
optimizers (Adam, SGD) on the stacked parameters then do exactly what ``S`` separate optimizers do.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from neuro.contract import AbstractNetwork, Params, check_positive

__all__ = ["Ensemble", "stack_params", "unstack_params"]


def stack_params(members: list[Params]) -> Params:
    """Member parameter dicts (same keys and shapes) -> one dict with a leading member axis."""
    keys = sorted(members[0])
    for i, p in enumerate(members):
        if sorted(p) != keys:
            raise ValueError(f"member {i} has parameters {sorted(p)}; member 0 has {keys}")
    return {k: torch.stack([p[k] for p in members]) for k in keys}


def unstack_params(params: Params) -> list[Params]:
    """The inverse of :func:`stack_params`."""
    S = next(iter(params.values())).shape[0]
    return [{k: v[m] for k, v in params.items()} for m in range(S)]


@dataclasses.dataclass(frozen=True)
class Ensemble(AbstractNetwork):
    """``members`` independent copies of ``base`` (module docstring). ``n_in``/``n_hidden``/``n_out`` are the
    base network's (set from it)."""

    base: AbstractNetwork = None  # type: ignore[assignment]
    members: int = 2
    n_in: int = 0
    n_hidden: int = 0
    n_out: int = 0

    name = "ensemble"

    def __init__(self, base: AbstractNetwork, members: int = 2) -> None:
        if not isinstance(base, AbstractNetwork):
            raise TypeError(f"base={base!r} is invalid: expected a network from models.make")
        if isinstance(base, Ensemble):
            raise ValueError("base is already an Ensemble: give the member network")
        check_positive("members", members, integer=True)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "members", members)
        for f in ("n_in", "n_hidden", "n_out"):
            object.__setattr__(self, f, getattr(base, f))
        self.__post_init__()

    @property
    def spiking(self) -> bool:  # type: ignore[override]
        return self.base.spiking

    @property
    def State(self) -> type:  # type: ignore[override]
        return self.base.State

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: (self.members, *s) for k, s in self.base.param_shapes().items()}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        """Member ``m`` gets ``base.init_params(seed + m)``."""
        return stack_params([self.base.init_params(seed + m, dtype, device) for m in range(self.members)])

    def _split(self, t: Tensor) -> Tensor:
        if t.shape[0] % self.members:
            raise ValueError(f"a batch of {t.shape[0]} rows cannot hold {self.members} members equally")
        return t.reshape(self.members, t.shape[0] // self.members, *t.shape[1:])

    @staticmethod
    def _merge(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])

    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        """The resting state of ``batch`` rows (``members`` groups of ``batch / members``)."""
        if batch % self.members:
            raise ValueError(f"batch={batch} is invalid for an ensemble of {self.members}: must be a multiple of it")
        member0 = {k: v[0] for k, v in params.items()}
        return self.base.init_state(member0, batch)

    def _map(self, fn, params: Params, state: NamedTuple, arg: Tensor):
        s = type(state)(*(self._split(f) for f in state))
        out = vmap(fn)(params, s, self._split(arg))
        return out

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        return self._merge(self._map(self.base.current, params, state, x))

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        st, z = self._map(self.base.neuron, params, state, i)
        return type(st)(*(self._merge(f) for f in st)), self._merge(z)

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        st, y = self._map(self.base.readout, params, state, z)
        return type(st)(*(self._merge(f) for f in st)), self._merge(y)

    def step(self, params: Params, state: NamedTuple, x: Tensor) -> tuple[NamedTuple, Tensor]:
        st, y = self._map(self.base.step, params, state, x)
        return type(st)(*(self._merge(f) for f in st)), self._merge(y)

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return self.base.observe(state)
