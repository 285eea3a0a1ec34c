"""Adaptive LIF (ALIF): the LSNN neuron of e-prop (Bellec et al. 2018, 2020, eq. in Methods).

Everything of :mod:`models.lif` (same ``dynamics``, reset and readout), plus an adaptive threshold::

    A_t     = v_th + beta_a a_{t-1}                (threshold of step t)
    z_t     = H(v~_t - A_t)                         (surrogate normalised by v_th, as e-prop's psi)
    a_t     = rho a_{t-1} + z_t,   rho = exp(-dt / tau_adapt)

Reset by subtraction removes ``v_th`` (not ``A_t``), as in the e-prop paper.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Derivatives, LinearFilter, Params, check_positive

from . import _init
from .lif import LIF


class ALIFState(NamedTuple):
    v: Tensor  # [B, n]
    i: Tensor  # [B, n]
    z: Tensor  # [B, n]
    r: Tensor  # [B, n]
    a: Tensor  # [B, n] threshold adaptation
    y: Tensor  # [B, n_out]


@dataclasses.dataclass(frozen=True)
class ALIF(LIF):
    tau_adapt: float = 200.0
    beta_a: float = 1.0
    bias_mean: float = 1.4  # higher than LIF's: adaptation holds a tonic neuron's rate down

    name = "alif"
    State = ALIFState
    trace_fields = ("v", "i", "a")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("tau_adapt", self.tau_adapt)
        check_positive("beta_a", self.beta_a, allow_zero=True)

    @property
    def rho(self) -> float:
        return _init.decay(self.dt, self.tau_adapt)

    def init_state(self, params: Params, batch: int = 1) -> ALIFState:
        s = super().init_state(params, batch)
        return ALIFState(v=s.v, i=s.i, z=s.z, r=s.r, a=torch.zeros_like(s.z), y=s.y)

    def neuron(self, params: Params, state: ALIFState, i: Tensor) -> tuple[ALIFState, Tensor]:
        v, i_new = self._integrate(params, state, i)
        threshold = self.v_th + self.beta_a * state.a
        v, z, r = self._fire(state, v, threshold)
        a = self.rho * state.a + z
        return ALIFState(v=v, i=i_new, z=z, r=r, a=a, y=state.y), z

    def linear_filter(self) -> LinearFilter:
        """LIF's sub-threshold filter of ``(v, i)`` and ``a_t = rho a_{t-1}`` (spikes held fixed)."""
        f = super().linear_filter()
        return LinearFilter(dh_dh=tuple(r + (0.0,) for r in f.dh_dh) + ((0.0, 0.0, self.rho),),
                            dh_dI=f.dh_dI + (0.0,), dh_db=f.dh_db + (0.0,))

    def neuron_derivatives(self, params: Params, state: ALIFState, i: Tensor) -> Derivatives:
        return self._derivatives(params, state, i, self.v_th + self.beta_a * state.a, (self.beta_a, self.rho))

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return {**super().observe(state), "a": state.a}
