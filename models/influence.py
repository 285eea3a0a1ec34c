"""The influence-balancing system of Tallec & Ollivier (2018), "Unbiased online recurrent optimization"
(UORO), ICLR, section 5, as a network: a linear chain with one scalar parameter ``theta``::

    i_t = A s_{t-1} + theta u            (current; A = 1/2 I + 1/2 superdiagonal, u = (+1 x n+, -1 x n-))
    s_t = i_t                            (neuron: the identity)
    y_t = s_t[0]                         (readout: the first unit)

with ``n = n_hidden = 23``, ``n+ = n_positive = 10``, ``s_0 = 1`` (all ones) and ``theta_0 = 1/2``. The
input ``x`` is ignored (``neuro.tasks.make("influence-balancing")`` feeds ones; its target is 1, so the
task's mse is ``1/2 (s[0] - 1)^2``). Shapes: ``s`` [B, n], ``theta`` [1]. ``init_params`` is
deterministic (``theta = theta0`` for every seed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive, state_dtype

from . import _init

__all__ = ["InfluenceBalancing", "InfluenceState"]


class InfluenceState(NamedTuple):
    s: Tensor  # [B, n]


@dataclasses.dataclass(frozen=True)
class InfluenceBalancing(AbstractNetwork):
    n_in: int = 1
    n_hidden: int = 23
    n_out: int = 1
    n_positive: int = 10
    theta0: float = 0.5

    name = "influence-balancing"
    spiking = False
    State = InfluenceState

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_out != 1:
            raise ValueError(f"n_out={self.n_out!r} is invalid: the readout is the first unit, so n_out must be 1")
        check_positive("n_positive", self.n_positive, allow_zero=True, integer=True)
        if self.n_positive > self.n_hidden:
            raise ValueError(f"n_positive={self.n_positive!r} is invalid: must be <= n_hidden={self.n_hidden!r}")
        if isinstance(self.theta0, bool) or not isinstance(self.theta0, (int, float)) or not math.isfinite(self.theta0):
            raise ValueError(f"theta0={self.theta0!r} is invalid: expected a finite number")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"theta": (1,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        self._generator(seed)  # checks the seed; nothing is random
        return _init.finish({"theta": torch.full((1,), float(self.theta0), dtype=torch.float64)}, dtype, device)

    def init_state(self, params: Params, batch: int = 1) -> InfluenceState:
        dtype, device = state_dtype(params)
        return InfluenceState(s=torch.ones(batch, self.n_hidden, dtype=dtype, device=device))

    def u(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """The input direction ``(+1 x n_positive, -1 x (n_hidden - n_positive))`` [n]."""
        u = -torch.ones(self.n_hidden, dtype=dtype, device=device)
        u[: self.n_positive] = 1.0
        return u

    def A(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The transition matrix ``1/2 I + 1/2 superdiagonal`` [n, n] (``current`` applies it without it)."""
        n = self.n_hidden
        return 0.5 * torch.eye(n, dtype=dtype, device=device) + 0.5 * torch.diag(torch.ones(n - 1, dtype=dtype, device=device), 1)

    def current(self, params: Params, state: InfluenceState, x: Tensor) -> Tensor:
        s = state.s
        As = 0.5 * s + 0.5 * F.pad(s[:, 1:], (0, 1))                # (A s)_i = (s_i + s_{i+1}) / 2, s_n = 0
        return As + params["theta"] * self.u(s.dtype, s.device)

    def neuron(self, params: Params, state: InfluenceState, i: Tensor) -> tuple[InfluenceState, Tensor]:
        return InfluenceState(s=i), i

    def readout(self, params: Params, state: InfluenceState, z: Tensor) -> tuple[InfluenceState, Tensor]:
        return state, z[:, :1]

    def observe(self, state: InfluenceState) -> dict[str, Tensor]:
        return {"h": state.s}
