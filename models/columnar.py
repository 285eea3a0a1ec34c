"""A columnar network (Javed, Shah, Sutton & White 2023, "Scalable real-time recurrent learning using
columnar-constructive networks", JMLR 24): ``n_hidden`` independent columns, each a single recurrent
unit that reads the input ``x`` and only its own previous output, and a linear readout over all columns.

Cell ``"lstm"`` (the paper's column: one LSTM cell with scalar ``h_k``, ``c_k``), gates in the order
i, f, g, o (``G = 4`` gates per column)::

    a_{t,k}   = W_in[k] x_t + w_rec[k] h_{t-1,k} + b[k]                   (current, [B, n, 4] -> [B, 4n])
    c_{t,k}   = sigma(a_f) c_{t-1,k} + sigma(a_i) tanh(a_g)
    h_{t,k}   = sigma(a_o) tanh(c_{t,k})                                  (neuron, element-wise per column)
    y_t       = W_out h_t + b_out                                         (linear readout)

Cell ``"rate"`` (``G = 1``): ``h_{t,k} = tanh(W_in[k] x_t + w_rec[k] h_{t-1,k} + b[k])``.

Parameters (per-column tensors, column first): ``W_in`` [n, G, n_in], ``w_rec`` [n, G], ``b`` [n, G],
``W_out`` [n_out, n], ``b_out`` [n_out]. The current ``i`` is [B, n * G], column ``k``'s gate
pre-activations at ``i[:, k*G:(k+1)*G]``. State: ``h`` [B, n] (and ``c`` [B, n] for the LSTM cell).

Initialisation as ``torch.nn.LSTM`` with ``hidden_size=1`` per column: ``U(-1, 1)`` for ``W_in``,
``w_rec`` and ``b`` (with ``forget_bias`` added to the forget gate's bias of the LSTM cell);
``W_out ~ N(0, 1/n)``, ``b_out = 0``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice, state_dtype

from . import _init

__all__ = ["Columnar", "ColumnCells", "ColumnarLSTMState", "ColumnarRateState"]

CELLS = ("lstm", "rate")
_GATES = {"lstm": 4, "rate": 1}


class ColumnarLSTMState(NamedTuple):
    h: Tensor  # [B, n]
    c: Tensor  # [B, n]


class ColumnarRateState(NamedTuple):
    h: Tensor  # [B, n]


class ColumnCells:
    """What every network of single-unit columns shares (``Columnar``, ``models.constructive``): the
    ``cell`` and ``forget_bias`` checks, the state, the element-wise cell, the linear readout.
    The subclass is a frozen dataclass with fields ``n_hidden``, ``cell`` and ``forget_bias``."""

    n_hidden: int
    cell: str
    forget_bias: float

    def _check_cell(self) -> None:
        """Validate ``cell`` and ``forget_bias`` and set the instance's ``State`` to follow ``cell``."""
        check_choice("cell", self.cell, CELLS)
        fb = self.forget_bias
        if isinstance(fb, bool) or not isinstance(fb, (int, float)) or not math.isfinite(fb):
            raise ValueError(f"forget_bias={fb!r} is invalid: expected a finite number")
        object.__setattr__(self, "State", ColumnarLSTMState if self.cell == "lstm" else ColumnarRateState)

    @property
    def n_gates(self) -> int:
        """``G``: gates per column (4 for the LSTM cell, 1 for the rate cell)."""
        return _GATES[self.cell]

    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        return ColumnarLSTMState(h=z, c=z.clone()) if self.cell == "lstm" else ColumnarRateState(h=z)

    def cell_update(self, a: Tensor, c_prev: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The element-wise cell on pre-activations ``a`` [B, m, G]: ``(h, c)`` [B, m] (``c`` None for rate)."""
        if self.cell == "rate":
            return torch.tanh(a[:, :, 0]), None
        gi, gf, gg, go = a.unbind(-1)
        c = torch.sigmoid(gf) * c_prev + torch.sigmoid(gi) * torch.tanh(gg)
        return torch.sigmoid(go) * torch.tanh(c), c

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        return state, z @ params["W_out"].T + params["b_out"]

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return dict(state._asdict())


@dataclasses.dataclass(frozen=True)
class Columnar(ColumnCells, AbstractNetwork):
    """``n_hidden`` independent single-unit columns (``cell``: ``"lstm"`` or ``"rate"``) and a linear readout."""

    cell: str = "lstm"
    forget_bias: float = 1.0

    name = "columnar"
    spiking = False
    State = ColumnarLSTMState  # the instance's State follows ``cell`` (set in __post_init__)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_cell()

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n, G = self.n_hidden, self.n_gates
        return {"W_in": (n, G, self.n_in), "w_rec": (n, G), "b": (n, G),
                "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n, G = self.n_hidden, self.n_gates
        b = _init.uniform(g, (n, G), 1.0)  # torch.nn.LSTM with hidden_size 1: U(-1, 1)
        if self.cell == "lstm":
            b[:, 1] += self.forget_bias
        p = {
            "W_in": _init.uniform(g, (n, G, self.n_in), 1.0),
            "w_rec": _init.uniform(g, (n, G), 1.0),
            "b": b,
            "W_out": _init.normal(g, (self.n_out, n), 1.0 / math.sqrt(n)),
            "b_out": torch.zeros(self.n_out, dtype=torch.float64),
        }
        return _init.finish(p, dtype, device)

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        """``i`` [B, n * G]: each column's gate pre-activations, from ``x`` and its own ``h_{t-1,k}``."""
        a = torch.einsum("bj,kgj->bkg", x, params["W_in"]) + state.h[:, :, None] * params["w_rec"] + params["b"]
        return a.reshape(a.shape[0], -1)

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        a = i.reshape(i.shape[0], self.n_hidden, self.n_gates)
        h, c = self.cell_update(a, state.c if self.cell == "lstm" else None)
        return (ColumnarRateState(h=h), h) if c is None else (ColumnarLSTMState(h=h, c=c), h)
