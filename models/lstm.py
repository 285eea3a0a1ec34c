"""A standard LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate, Gers et al. 2000).

    i_t = W_in x_t + W_rec h_{t-1} + b        (current, [B, 4n]: gates in the order i, f, g, o)
    c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
    h_t = sigma(o) * tanh(c_t)                (neuron)
    y_t = W_out h_t + b_out                   (linear readout)

Initialisation as torch.nn.LSTM (U(-1/sqrt(n), 1/sqrt(n))) with the forget-gate bias set to 1;
``W_out ~ N(0, 1/n)`` (``readout_init="normal"``) or ``W_out = 0`` (``"zeros"``, as Javed et al.'s code starts
its prediction weights), ``b_out = 0``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice, state_dtype

from . import _init


class LSTMState(NamedTuple):
    h: Tensor  # [B, n]
    c: Tensor  # [B, n]


@dataclasses.dataclass(frozen=True)
class LSTM(AbstractNetwork):
    forget_bias: float = 1.0
    readout_init: str = "normal"

    name = "lstm"
    local_form = True
    maskable = ("W_in", "W_rec")
    bias_in_current = True
    spiking = False
    State = LSTMState

    def __post_init__(self) -> None:
        super().__post_init__()
        fb = self.forget_bias
        if isinstance(fb, bool) or not isinstance(fb, (int, float)) or not math.isfinite(fb):
            raise ValueError(f"forget_bias={fb!r} is invalid: expected a finite number")
        check_choice("readout_init", self.readout_init, ("normal", "zeros"))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_hidden
        return {"W_in": (4 * n, self.n_in), "W_rec": (4 * n, n), "b": (4 * n,),
                "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n = self.n_hidden
        k = 1.0 / math.sqrt(n)
        b = _init.uniform(g, (4 * n,), k)
        b[n:2 * n] += self.forget_bias
        p = {
            "W_in": _init.uniform(g, (4 * n, self.n_in), k),
            "W_rec": _init.uniform(g, (4 * n, n), k),
            "b": b,
            "W_out": _init.normal(g, (self.n_out, n), 1.0 / math.sqrt(n)),
            "b_out": torch.zeros(self.n_out, dtype=torch.float64),
        }
        if self.readout_init == "zeros":
            p["W_out"] = torch.zeros_like(p["W_out"])
        return _init.finish(self.sparse_init(p), dtype, device)

    def init_state(self, params: Params, batch: int = 1) -> LSTMState:
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        return LSTMState(h=z, c=z.clone())

    def current(self, params: Params, state: LSTMState, x: Tensor) -> Tensor:
        return x @ self.weight(params, "W_in").mT + state.h @ self.weight(params, "W_rec").mT + params["b"]

    def neuron(self, params: Params, state: LSTMState, i: Tensor) -> tuple[LSTMState, Tensor]:
        gi, gf, gg, go = i.chunk(4, dim=-1)
        c = torch.sigmoid(gf) * state.c + torch.sigmoid(gi) * torch.tanh(gg)
        h = torch.sigmoid(go) * torch.tanh(c)
        return LSTMState(h=h, c=c), h

    def readout(self, params: Params, state: LSTMState, z: Tensor) -> tuple[LSTMState, Tensor]:
        return state, z @ params["W_out"].mT + params["b_out"]

    def presynaptic(self, state: LSTMState) -> Tensor:
        return state.h

    @property
    def readout_decay(self) -> float:
        return 0.0

    def observe(self, state: LSTMState) -> dict[str, Tensor]:
        return {"h": state.h, "c": state.c}
