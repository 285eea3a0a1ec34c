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
``W_out ~ N(0, 1/n)``, ``b_out = 0``. ``init_scale=s``: ``U(-s, s)`` for every column weight and bias
instead (Javed et al.'s code: ``s = 0.01``); ``readout_init="zeros"``: ``W_out = 0`` (theirs).

*Online normalisation* (``normalise=d``, a rate in (0, 1); Javed et al.'s code, ``lstm.cpp``
``get_normalized_values`` / ``update_statistics`` and ``lstm_incremental_networks.cpp`` ``forward``), with
``floor = variance_floor`` (their ``std_cap``, a floor on the variance). Column ``k`` reads its inputs
normalised by its own running statistics from *before* the step, which then take the step's raw values::

    xhat_{t,k,j} = (x_{t,j} - mu_in[k, j]) / sqrt(var_in[k, j])                  (W_in[k] reads xhat_{t,k})
    mu_in <- d mu_in + (1 - d) x_t;  var_in <- max(d var_in + (1 - d) (x_t - mu_in)^2, floor)  (mu_in updated)

and the readout reads each column's output normalised by statistics that first take ``h_t``::

    mu_f <- d mu_f + (1 - d) h_t;  var_f <- max(d var_f + (1 - d) (h_t - mu_f)^2, floor)
    y_t = W_out hhat_t + b_out,    hhat_{t,k} = (h_{t,k} - mu_f[k]) / sqrt(var_f[k])

The statistics (start 0 and 1) are network state, per sample: ``mu_in``, ``var_in`` [B, n, n_in], ``mu_f``,
``var_f`` [B, n]. They take detached values, so a gradient treats them as constants: ``dy/dW_out[:, k] =
hhat_k``, ``dy/dh_k = W_out[:, k] / sqrt(var_f[k])`` (the facts :meth:`ColumnCells.readout_features`,
:meth:`ColumnCells.readout_backward`; :meth:`ColumnCells.column_inputs` gives the normalised inputs). With
``normalise`` set, ``current`` returns the pre-activations followed by ``x_t`` itself (``i`` [B, n G + n_in]),
whose raw values ``neuron``'s statistics take. ``normalise=None`` (the default): none of this, no statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice, check_positive, state_dtype

from . import _init

__all__ = ["Columnar", "ColumnCells", "ColumnarLSTMNormState", "ColumnarLSTMState", "ColumnarRateNormState",
           "ColumnarRateState"]

CELLS = ("lstm", "rate")
_GATES = {"lstm": 4, "rate": 1}
READOUT_INITS = ("normal", "zeros")


class ColumnarLSTMState(NamedTuple):
    h: Tensor  # [B, n]
    c: Tensor  # [B, n]


class ColumnarRateState(NamedTuple):
    h: Tensor  # [B, n]


class ColumnarLSTMNormState(NamedTuple):
    h: Tensor  # [B, n]
    c: Tensor  # [B, n]
    mu_in: Tensor  # [B, n, n_v]: each column's running mean of its inputs
    var_in: Tensor  # [B, n, n_v]: and variance
    mu_f: Tensor  # [B, n]: the readout's running mean of each column's output
    var_f: Tensor  # [B, n]: and variance


class ColumnarRateNormState(NamedTuple):
    h: Tensor  # [B, n]
    mu_in: Tensor  # [B, n, n_v]
    var_in: Tensor  # [B, n, n_v]
    mu_f: Tensor  # [B, n]
    var_f: Tensor  # [B, n]


_STATES = {("lstm", False): ColumnarLSTMState, ("rate", False): ColumnarRateState,
           ("lstm", True): ColumnarLSTMNormState, ("rate", True): ColumnarRateNormState}


class ColumnCells:
    """What every network of single-unit columns shares (``Columnar``, ``models.constructive``): the
    options' checks, the state, the element-wise cell, the online normalisation, the linear readout.
    The subclass is a frozen dataclass with fields ``n_hidden``, ``cell``, ``forget_bias``, ``normalise``,
    ``variance_floor``, ``init_scale`` and ``readout_init``, and gives ``n_inputs`` (the inputs a column may
    read: ``n_v``)."""

    n_hidden: int
    cell: str
    forget_bias: float
    normalise: float | None
    variance_floor: float
    init_scale: float | None
    readout_init: str

    def _check_cell(self) -> None:
        """Validate the options and set the instance's ``State`` to follow ``cell`` and ``normalise``."""
        check_choice("cell", self.cell, CELLS)
        fb = self.forget_bias
        if isinstance(fb, bool) or not isinstance(fb, (int, float)) or not math.isfinite(fb):
            raise ValueError(f"forget_bias={fb!r} is invalid: expected a finite number")
        d = self.normalise
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d < 1.0):
            raise ValueError(f"normalise={d!r} is invalid: expected None or a rate in (0, 1), e.g. 0.99999")
        check_positive("variance_floor", self.variance_floor)
        if self.init_scale is not None:
            check_positive("init_scale", self.init_scale)
        check_choice("readout_init", self.readout_init, READOUT_INITS)
        object.__setattr__(self, "State", _STATES[self.cell, d is not None])

    @property
    def n_gates(self) -> int:
        """``G``: gates per column (4 for the LSTM cell, 1 for the rate cell)."""
        return _GATES[self.cell]

    @property
    def n_cell_state(self) -> int:
        """``S_c``: the state numbers a column's cell carries (``h, c`` or ``h``)."""
        return 2 if self.cell == "lstm" else 1

    def _init_columns(self, g: torch.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
        """The column parameters of ``shapes`` (in order; ``b`` [n, G] with the forget bias added): ``U(-1, 1)``,
        or ``U(-s, s)`` with ``init_scale=s``."""
        s = 1.0 if self.init_scale is None else float(self.init_scale)
        p = {k: _init.uniform(g, shape, s) for k, shape in shapes.items()}
        if self.cell == "lstm":
            p["b"][:, 1] += self.forget_bias
        return p

    def _init_readout(self, g: torch.Generator) -> dict[str, Tensor]:
        W_out = _init.normal(g, (self.n_out, self.n_hidden), 1.0 / math.sqrt(self.n_hidden))
        if self.readout_init == "zeros":
            W_out = torch.zeros_like(W_out)
        return {"W_out": W_out, "b_out": torch.zeros(self.n_out, dtype=torch.float64)}

    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        cell = (z, z.clone()) if self.cell == "lstm" else (z,)
        if self.normalise is None:
            return self.State(*cell)
        zin = torch.zeros(batch, self.n_hidden, self.n_inputs, dtype=dtype, device=device)
        return self.State(*cell, zin, torch.ones_like(zin), z.clone(), torch.ones_like(z))

    def cell_update(self, a: Tensor, c_prev: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The element-wise cell on pre-activations ``a`` [B, m, G]: ``(h, c)`` [B, m] (``c`` None for rate)."""
        if self.cell == "rate":
            return torch.tanh(a[:, :, 0]), None
        gi, gf, gg, go = a.unbind(-1)
        c = torch.sigmoid(gf) * c_prev + torch.sigmoid(gi) * torch.tanh(gg)
        return torch.sigmoid(go) * torch.tanh(c), c

    # -- online normalisation (module docstring) -------------------------------------------------------
    def running(self, mu: Tensor, var: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the running statistics ``(mu, var)`` on the raw values ``v`` (detached)."""
        d, v = self.normalise, v.detach()
        mu = d * mu + (1.0 - d) * v
        dv = v - mu
        return mu, torch.clamp_min(d * var + (1.0 - d) * (dv * dv), self.variance_floor)

    def column_inputs(self, state: NamedTuple, v: Tensor, cols: slice = slice(None)) -> Tensor:
        """The inputs ``v`` [B, n_v'] (``x_t``, then earlier columns' ``h_t``: the first ``n_v'`` a column may
        read) as the columns ``cols`` read them [B, m, n_v']: normalised by each column's statistics in
        ``state`` (from before the step), or ``v`` itself for each column without normalisation."""
        m = len(range(self.n_hidden)[cols])
        if self.normalise is None:
            return v[:, None, :].expand(v.shape[0], m, v.shape[1])
        nv = v.shape[1]
        return (v[:, None, :] - state.mu_in[:, cols, :nv]) / torch.sqrt(state.var_in[:, cols, :nv])

    def learn_inputs(self, state: NamedTuple, v: Tensor, cols: slice) -> NamedTuple:
        """``state`` with the input statistics of the learning columns ``cols`` over their inputs ``v``
        [B, n_v'] stepped (the other columns' left as they are); ``state`` itself without normalisation."""
        if self.normalise is None:
            return state
        nv = v.shape[1]
        mu, var = self.running(state.mu_in[:, cols, :nv], state.var_in[:, cols, :nv], v[:, None, :])
        if mu.shape == state.mu_in.shape:
            return state._replace(mu_in=mu, var_in=var)
        mu_in, var_in = state.mu_in.clone(), state.var_in.clone()
        mu_in[:, cols, :nv], var_in[:, cols, :nv] = mu, var
        return state._replace(mu_in=mu_in, var_in=var_in)

    def readout_features(self, state: NamedTuple, h: Tensor) -> Tensor:
        """What ``W_out`` reads [B, n]: ``hhat = (h - mu_f) / sqrt(var_f)`` with the statistics of ``state``
        (after the step's update), or ``h`` without normalisation. ``dl/dW_out = e^T hhat``."""
        if self.normalise is None:
            return h
        return (h - state.mu_f) / torch.sqrt(state.var_f)

    def readout_backward(self, params: Params, state: NamedTuple, e: Tensor) -> Tensor:
        """``dl/dh_t`` [B, n] from ``e = dl/dy_t`` [B, n_out], the statistics held constant: ``(e W_out)_k /
        sqrt(var_f[k])`` (``e W_out`` without normalisation)."""
        eh = e @ params["W_out"]
        return eh if self.normalise is None else eh / torch.sqrt(state.var_f)

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        if self.normalise is not None:
            mu, var = self.running(state.mu_f, state.var_f, z)
            state = state._replace(mu_f=mu, var_f=var)
        return state, self.readout_features(state, z) @ params["W_out"].T + params["b_out"]

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        """The per-column variables [B, n]: ``h`` (``c``; with normalisation the readout's ``mu_f``, ``var_f``)."""
        return {k: v for k, v in state._asdict().items() if v.dim() == 2}


@dataclasses.dataclass(frozen=True)
class Columnar(ColumnCells, AbstractNetwork):
    """``n_hidden`` independent single-unit columns (``cell``: ``"lstm"`` or ``"rate"``) and a linear readout;
    options: online normalisation (``normalise``, ``variance_floor``), the initialisation (``init_scale``,
    ``readout_init``)."""

    cell: str = "lstm"
    forget_bias: float = 1.0
    normalise: float | None = None
    variance_floor: float = 0.01
    init_scale: float | None = None
    readout_init: str = "normal"

    name = "columnar"
    spiking = False
    State = ColumnarLSTMState  # the instance's State follows ``cell`` and ``normalise`` (set in __post_init__)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_cell()

    @property
    def n_inputs(self) -> int:
        """The inputs a column reads: ``x``."""
        return self.n_in

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n, G = self.n_hidden, self.n_gates
        return {"W_in": (n, G, self.n_in), "w_rec": (n, G), "b": (n, G),
                "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n, G = self.n_hidden, self.n_gates
        p = self._init_columns(g, {"b": (n, G), "W_in": (n, G, self.n_in), "w_rec": (n, G)})
        # torch.nn.LSTM with hidden_size 1: U(-1, 1)
        return _init.finish({"W_in": p["W_in"], "w_rec": p["w_rec"], "b": p["b"], **self._init_readout(g)},
                            dtype, device)

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        """``i`` [B, n * G]: each column's gate pre-activations, from ``x`` and its own ``h_{t-1,k}``; with
        normalisation, from the column's ``xhat`` and followed by ``x`` [B, n G + n_in]."""
        if self.normalise is None:
            a = torch.einsum("bj,kgj->bkg", x, params["W_in"])
        else:
            a = torch.einsum("bkj,kgj->bkg", self.column_inputs(state, x), params["W_in"])
        a = a + state.h[:, :, None] * params["w_rec"] + params["b"]
        a = a.reshape(a.shape[0], -1)
        return a if self.normalise is None else torch.cat([a, x], dim=1)

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        nG = self.n_hidden * self.n_gates
        a = i[:, :nG].reshape(i.shape[0], self.n_hidden, self.n_gates)
        h, c = self.cell_update(a, state.c if self.cell == "lstm" else None)
        state = state._replace(h=h) if c is None else state._replace(h=h, c=c)
        return self.learn_inputs(state, i[:, nG:], slice(None)), h
