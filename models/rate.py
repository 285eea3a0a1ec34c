"""Leaky tanh rate RNN.

    i_t = W_in x_t + W_rec h_{t-1} + b                       (current)
    h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t)              (neuron; alpha = 1: vanilla RNN)
    y_t = W_out h_t + b_out                                   (linear readout)

Shapes: W_in [n, n_in], W_rec [n, n], b [n], W_out [n_out, n], b_out [n_out].
Initialisation: W_in ~ N(0, 1/n_in), W_rec ~ N(0, g^2/n), W_out ~ N(0, 1/n), biases 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Derivatives, Params, check_positive, state_dtype

from . import _init


class RateState(NamedTuple):
    h: Tensor  # [B, n]


@dataclasses.dataclass(frozen=True)
class RateRNN(AbstractNetwork):
    alpha: float = 1.0
    g: float = 1.0

    name = "rate"
    spiking = False
    State = RateState
    local_form = True
    bias_in_current = True
    trace_fields = ("h",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("alpha", self.alpha)
        if self.alpha > 1:
            raise ValueError(f"alpha={self.alpha!r} is invalid: must be in (0, 1]")
        check_positive("g", self.g, allow_zero=True)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_hidden
        return {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n = self.n_hidden
        p = {
            "W_in": _init.normal(g, (n, self.n_in), 1.0 / math.sqrt(self.n_in)),
            "W_rec": _init.normal(g, (n, n), self.g / math.sqrt(n)),
            "b": torch.zeros(n, dtype=torch.float64),
            "W_out": _init.normal(g, (self.n_out, n), 1.0 / math.sqrt(n)),
            "b_out": torch.zeros(self.n_out, dtype=torch.float64),
        }
        return _init.finish(p, dtype, device)

    def init_state(self, params: Params, batch: int = 1) -> RateState:
        dtype, device = state_dtype(params)
        return RateState(h=torch.zeros(batch, self.n_hidden, dtype=dtype, device=device))

    def current(self, params: Params, state: RateState, x: Tensor) -> Tensor:
        return x @ params["W_in"].mT + state.h @ params["W_rec"].mT + params["b"]

    def neuron(self, params: Params, state: RateState, i: Tensor) -> tuple[RateState, Tensor]:
        h = torch.tanh(i) if self.alpha == 1.0 else (1.0 - self.alpha) * state.h + self.alpha * torch.tanh(i)
        return RateState(h=h), h

    def readout(self, params: Params, state: RateState, z: Tensor) -> tuple[RateState, Tensor]:
        return state, z @ params["W_out"].mT + params["b_out"]

    def observe(self, state: RateState) -> dict[str, Tensor]:
        return {"h": state.h}

    # -- facts for local rules (neuro.contract) --------------------------------------------------------
    def presynaptic(self, state: RateState) -> Tensor:
        return state.h

    @property
    def readout_decay(self) -> float:
        return 0.0

    def neuron_derivatives(self, params: Params, state: RateState, i: Tensor) -> Derivatives:
        """Closed form: ``dh_t/dh_{t-1} = 1 - alpha``, ``dh_t/dI_t = alpha (1 - tanh(i)^2)``; ``z = h``; ``b`` is
        in the current (``d/db`` with the current held is 0)."""
        with torch.no_grad():
            t = torch.tanh(i)
            h = t if self.alpha == 1.0 else (1.0 - self.alpha) * state.h + self.alpha * t
            dI = (1.0 - t * t) if self.alpha == 1.0 else (1.0 - t * t) * self.alpha
            dh = torch.full_like(h, 1.0 - self.alpha)
            zero = torch.zeros_like(h)
            return Derivatives(RateState(h=h), h, dh[..., None, None], dI[..., None], zero[..., None], dh[..., None],
                               dI, zero)
