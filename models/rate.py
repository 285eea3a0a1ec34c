"""Leaky tanh rate RNN.

    i_t = W_in x_t + W_rec h_{t-1} + b                       (current)
    h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t)              (neuron; alpha = 1: vanilla RNN)
    y_t = W_out h_t + b_out                                   (linear readout)

Shapes: W_in [n, n_in], W_rec [n, n], b [n], W_out [n_out, n], b_out [n_out].
Initialisation (``init="normal"``): W_in ~ N(0, 1/n_in), W_rec ~ N(0, g^2/n), W_out ~ N(0, 1/n), biases 0;
``init="xavier"``: every weight matrix [fan_out, fan_in] ~ N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010,
torch's ``xavier_normal_``).

``bias=False``: no biases; ``b`` and ``b_out`` stay in the parameters at 0 (every model keeps the same keys)
and are :attr:`fixed_params`, which no rule perturbs and no optimizer steps.

``decorrelation=eta`` (> 0, with ``alpha = 1``): the hidden layer's output passes through a decorrelating
matrix ``D`` [n, n] (identity at the start), as in Dalm, van Gerven & Ahmad 2023 (arXiv:2310.00965, artcogsys/decorbp) and
the recurrent networks of Garcia Fernandez, Keemink & van Gerven 2024 (jesusgf96/NP_RNNs ``RNN.forward``)::

    i_t = W_in x_t + W_rec xhat_{t-1} + b,     xhat_t = D tanh(i_t),     y_t = W_out xhat_t + b_out

(the state ``h`` holds ``xhat``, which ``W_rec`` and the readout read). ``D`` is learnt by its own local rule,
never from the loss (it is a :attr:`local_params` entry at rate ``eta``), whose estimate after a step is::

    dD = offdiag(xhat_t^T xhat_t / B) D       (D <- D - eta dD: their ``update_params``, with the trailing D of
                                              the later code; an earlier version of it lacked that factor)

which drives the off-diagonal second moments of ``xhat`` to 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Derivatives, Params, check_choice, check_positive, state_dtype

from . import _init

INITS = ("normal", "xavier")


class RateState(NamedTuple):
    h: Tensor  # [B, n]


@dataclasses.dataclass(frozen=True)
class RateRNN(AbstractNetwork):
    alpha: float = 1.0
    g: float = 1.0
    bias: bool = True
    init: str = "normal"
    decorrelation: float = 0.0

    name = "rate"
    spiking = False
    State = RateState
    local_form = True
    maskable = ("W_in", "W_rec")
    bias_in_current = True
    trace_fields = ("h",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("alpha", self.alpha)
        if self.alpha > 1:
            raise ValueError(f"alpha={self.alpha!r} is invalid: must be in (0, 1]")
        check_positive("g", self.g, allow_zero=True)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias={self.bias!r} is invalid: must be True or False")
        check_choice("init", self.init, INITS)
        check_positive("decorrelation", self.decorrelation, allow_zero=True)
        if self.decorrelation and self.alpha != 1.0:
            raise ValueError(f"decorrelation={self.decorrelation!r} is invalid with alpha={self.alpha!r}: the "
                             "decorrelation layer is defined on the vanilla RNN (alpha = 1)")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_hidden
        shapes = {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}
        return {**shapes, "D": (n, n)} if self.decorrelation else shapes

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n, n_in, n_out = self.n_hidden, self.n_in, self.n_out
        if self.init == "xavier":  # N(0, 2 / (fan_in + fan_out)) for each [fan_out, fan_in] matrix
            std_in, std_rec, std_out = (math.sqrt(2.0 / (a + b)) for a, b in ((n_in, n), (n, n), (n, n_out)))
        else:
            std_in, std_rec, std_out = 1.0 / math.sqrt(n_in), self.g / math.sqrt(n), 1.0 / math.sqrt(n)
        p = {
            "W_in": _init.normal(g, (n, n_in), std_in),
            "W_rec": _init.normal(g, (n, n), std_rec),
            "b": torch.zeros(n, dtype=torch.float64),
            "W_out": _init.normal(g, (n_out, n), std_out),
            "b_out": torch.zeros(n_out, dtype=torch.float64),
        }
        if self.decorrelation:
            p["D"] = torch.eye(n, dtype=torch.float64)
        return _init.finish(self.sparse_init(p), dtype, device)

    @property
    def fixed_params(self) -> tuple[str, ...]:
        return () if self.bias else ("b", "b_out")

    @property
    def local_params(self) -> dict[str, float]:
        return {"D": self.decorrelation} if self.decorrelation else {}

    def local_estimate(self, params: Params, state: RateState) -> Params:
        """``dD = offdiag(xhat^T xhat / B) D`` with ``xhat = state.h`` [B, n] (module docstring)."""
        if not self.decorrelation:
            return super().local_estimate(params, state)
        with torch.no_grad():
            xh, D = state.h, params["D"]
            # offdiag(xhat^T xhat) D = xhat^T (xhat D) - diag(sum_b xhat_b^2) D: O(B n^2), not the n^3 product
            return {"D": (xh.mT @ (xh @ D) - (xh * xh).sum(0)[:, None] * D) / xh.shape[0]}

    def init_state(self, params: Params, batch: int = 1) -> RateState:
        dtype, device = state_dtype(params)
        return RateState(h=torch.zeros(batch, self.n_hidden, dtype=dtype, device=device))

    def current(self, params: Params, state: RateState, x: Tensor) -> Tensor:
        return x @ self.weight(params, "W_in").mT + state.h @ self.weight(params, "W_rec").mT + params["b"]

    def neuron(self, params: Params, state: RateState, i: Tensor) -> tuple[RateState, Tensor]:
        h = torch.tanh(i) if self.alpha == 1.0 else (1.0 - self.alpha) * state.h + self.alpha * torch.tanh(i)
        if self.decorrelation:
            h = h @ params["D"].mT  # xhat_t = D tanh(i_t)
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
        in the current (``d/db`` with the current held is 0). Not element-wise with a decorrelation layer
        (``D`` couples the units): a ``ValueError`` there."""
        if self.decorrelation:
            raise ValueError(f"decorrelation={self.decorrelation!r} is invalid here: with the decorrelation layer "
                             "the rate network's neuron couples its units (xhat = D tanh(i)), so it has no "
                             "element-wise derivatives; use bptt, tbptt, np, anp, anp-time or wp")
        with torch.no_grad():
            t = torch.tanh(i)
            h = t if self.alpha == 1.0 else (1.0 - self.alpha) * state.h + self.alpha * t
            dI = (1.0 - t * t) if self.alpha == 1.0 else (1.0 - t * t) * self.alpha
            dh = torch.full_like(h, 1.0 - self.alpha)
            zero = torch.zeros_like(h)
            return Derivatives(RateState(h=h), h, dh[..., None, None], dI[..., None], zero[..., None], dh[..., None],
                               dI, zero)
