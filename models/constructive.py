"""Constructive and columnar-constructive networks (Javed, Shah, Sutton & White 2023, "Scalable real-time
recurrent learning using columnar-constructive networks", JMLR 24, Sec. 5-6).

``n_hidden`` single-unit columns (cell ``"lstm"`` or ``"rate"``, the columns of :mod:`models.columnar`)
grouped into stages of ``per_stage`` consecutive columns: column ``k`` belongs to stage ``k // per_stage``
(the last stage is smaller when ``per_stage`` does not divide ``n_hidden``). A column of stage ``j`` reads
the input ``x_t``, the *current* outputs ``h_t`` of every column of the stages ``< j`` (feed-forward within
the time step: earlier stages are computed first) and its own previous ``h_{t-1,k}``; no recurrence
across columns. ``per_stage=1`` is the paper's constructive network (one feature per stage),
``per_stage=n_hidden`` the columnar network (one stage), in between the CCN.

Gates (i, f, g, o for the LSTM cell, ``G = 4``; ``G = 1`` for the rate cell)::

    a_{t,k} = W_in[k] x_t + (W_ff[k] * mask[k]) h_t + w_rec[k] h_{t-1,k} + b[k]
    LSTM:  c_{t,k} = sigma(a_f) c_{t-1,k} + sigma(a_i) tanh(a_g),  h_{t,k} = sigma(a_o) tanh(c_{t,k})
    rate:  h_{t,k} = tanh(a_{t,k})
    y_t = W_out h_t + b_out

``mask[k, j] = 1`` iff stage(j) < stage(k): the feed-forward weights ``W_ff`` [n, G, n] are stored dense
(padded) and masked in the forward pass, so entries outside the mask never act and get zero gradient
(they are initialised to zero). The dense layout keeps every parameter one tensor of fixed shape across
stages, so parameters carry over unchanged when the network grows a stage.

``stage`` (0-based) is the stage that learns; stages ``<= stage`` are active. Every column exists from the
start (``param_shapes`` does not depend on ``stage``) but the columns of stages ``> stage`` are inactive:
their ``h`` and ``c`` are held at zero, so they feed neither later columns nor the readout.
``net.next_stage()`` returns the network with ``stage + 1`` (the same parameters apply); the rule
``constructive`` (:mod:`neuro.rules.constructive`) learns only the stage ``net.stage``.

Parameters: ``W_in`` [n, G, n_in], ``W_ff`` [n, G, n], ``w_rec`` [n, G], ``b`` [n, G], ``W_out``
[n_out, n], ``b_out`` [n_out]. ``current`` returns ``i`` [B, n * G] (column k's pre-activations at
``i[:, k*G:(k+1)*G]``; it runs the earlier stages' element-wise dynamics internally to get their ``h_t``),
``neuron`` applies the cell and zeroes inactive columns. State: ``h`` [B, n] (and ``c`` for the LSTM).

Initialisation as :mod:`models.columnar` (``torch.nn.LSTM`` with ``hidden_size=1``: ``U(-1, 1)``, forget
bias added), ``W_ff ~ U(-1, 1)`` on the mask, zero off it; ``W_out ~ N(0, 1/n)``, ``b_out = 0``; the options
``init_scale`` (every column weight and bias ``U(-s, s)``, ``W_ff`` on the mask) and ``readout_init`` as there.

*Online normalisation* (``normalise``, ``variance_floor``) as :mod:`models.columnar`'s, a column's inputs
being ``x_t`` and the earlier stages' current outputs ``u_t = h_t[:lo]`` (raw ``h`` values): the input
statistics ``mu_in``, ``var_in`` [B, n, n_in + n] (column ``k``'s over ``(x, h_{:lo})``, the entries past
what it reads unused). Each column reads its inputs normalised by its own statistics from before the step;
only the *learning* stage's columns' statistics then take the step's raw values: a frozen column's stay
fixed, an inactive column's stay at 0 and 1 until its stage begins. The readout's feature statistics take
every column's ``h_t`` every step (an inactive column's ``h_t = 0``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive

from . import _init
from .columnar import ColumnarLSTMState, ColumnCells

__all__ = ["Constructive"]

@dataclasses.dataclass(frozen=True)
class Constructive(ColumnCells, AbstractNetwork):
    """Columns in stages of ``per_stage``; stage ``stage`` learns, later stages are inactive (zero)."""

    per_stage: int = 1
    stage: int = 0
    cell: str = "lstm"
    forget_bias: float = 1.0
    normalise: float | None = None
    variance_floor: float = 0.01
    init_scale: float | None = None
    readout_init: str = "normal"

    name = "constructive"
    spiking = False
    State = ColumnarLSTMState  # the instance's State follows ``cell`` (set in __post_init__)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("per_stage", self.per_stage, integer=True)
        if self.per_stage > self.n_hidden:
            raise ValueError(f"per_stage={self.per_stage} is invalid: must be <= n_hidden={self.n_hidden}")
        check_positive("stage", self.stage, allow_zero=True, integer=True)
        if self.stage >= self.n_stages:
            raise ValueError(f"stage={self.stage} is invalid: n_hidden={self.n_hidden} in stages of "
                             f"{self.per_stage} gives {self.n_stages} stages, 0..{self.n_stages - 1}")
        self._check_cell()

    # -- structure -----------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return -(-self.n_hidden // self.per_stage)

    def stage_columns(self, j: int) -> slice:
        """The columns of stage ``j``: ``slice(lo, hi)``; the columns ``< lo`` are its inputs."""
        return slice(j * self.per_stage, min((j + 1) * self.per_stage, self.n_hidden))

    @property
    def n_inputs(self) -> int:
        """The inputs a column may read: ``x`` and every column's ``h_t`` (the earlier stages')."""
        return self.n_in + self.n_hidden

    @property
    def readout_fan_in(self) -> int:
        """The features the readout currently reads: the active columns (``hi`` of the learning stage)."""
        return self.n_active

    @property
    def n_active(self) -> int:
        """Columns of the stages ``<= stage``."""
        return self.stage_columns(self.stage).stop

    def ff_mask(self, dtype=torch.float64, device=None) -> Tensor:
        """``mask`` [n, n]: 1 where column k reads column j (stage(j) < stage(k))."""
        s = torch.arange(self.n_hidden, device=device) // self.per_stage
        return (s[None, :] < s[:, None]).to(dtype)

    def next_stage(self) -> "Constructive":
        """The network with the next stage learning (the earlier ones frozen); same parameters."""
        if self.stage + 1 >= self.n_stages:
            raise ValueError(f"stage={self.stage} is the last of {self.n_stages} stages: no next stage")
        return dataclasses.replace(self, stage=self.stage + 1)

    # -- parameters and state ------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n, G = self.n_hidden, self.n_gates
        return {"W_in": (n, G, self.n_in), "W_ff": (n, G, n), "w_rec": (n, G), "b": (n, G),
                "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n, G = self.n_hidden, self.n_gates
        p = self._init_columns(g, {"b": (n, G), "W_in": (n, G, self.n_in), "W_ff": (n, G, n), "w_rec": (n, G)})
        p["W_ff"] = p["W_ff"] * self.ff_mask()[:, None, :]
        return _init.finish({"W_in": p["W_in"], "W_ff": p["W_ff"], "w_rec": p["w_rec"], "b": p["b"],
                             **self._init_readout(g)}, dtype, device)

    # -- one column group (shared with the rule) -------------------------------------------------------
    @staticmethod
    def column_preact(W_in: Tensor, W_ff: Tensor, w_rec: Tensor, b: Tensor, x: Tensor, u: Tensor,
                      h_prev: Tensor) -> Tensor:
        """Pre-activations [B, m, G] of m columns: ``W_in`` [m, G, n_in], ``W_ff`` [m, G, n_u] over the
        inputs ``u`` [B, n_u] (earlier stages' current h), ``w_rec``, ``b`` [m, G], ``h_prev`` [B, m]."""
        return (torch.einsum("bj,kgj->bkg", x, W_in) + torch.einsum("bj,kgj->bkg", u, W_ff)
                + h_prev[:, :, None] * w_rec + b)

    # -- one time step ---------------------------------------------------------------------------------
    def _feedforward(self, state: NamedTuple, x: Tensor, u: Tensor, W_ff: Tensor, sl: slice) -> Tensor:
        """The feed-forward part [B, m, G] of the columns ``sl`` over the earlier columns' ``u`` [B, lo]
        (normalised by each column's statistics, with normalisation)."""
        B, lo, G = x.shape[0], u.shape[1], self.n_gates
        if self.normalise is None:
            return (u @ W_ff[sl, :, :lo].reshape(-1, lo).T).reshape(B, -1, G)
        uk = self.column_inputs(state, torch.cat([x, u], dim=1), sl)[:, :, self.n_in:]
        return torch.einsum("bkj,kgj->bkg", uk, W_ff[sl, :, :lo])

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        """``i`` [B, n * G], stage by stage (each stage reads the earlier stages' h_t); with normalisation
        followed by ``x`` [B, n G + n_in].

        The input, recurrent and bias parts of every column are one product; the frozen stages' outputs
        are then computed in order, each stage's feed-forward part from the stages before it; the learning
        stage and the inactive ones read only the frozen stages (the learning stage's own output goes only
        to inactive columns, whose output is zeroed, so it is not computed here)."""
        B, n, G = x.shape[0], self.n_hidden, self.n_gates
        W_ff = params["W_ff"] * self.ff_mask(params["W_ff"].dtype, params["W_ff"].device)[:, None, :]
        if self.normalise is None:
            a = (x @ params["W_in"].reshape(n * G, -1).T).reshape(B, n, G)
        else:
            a = torch.einsum("bkj,kgj->bkg", self.column_inputs(state, x), params["W_in"])
        a = a + state.h[:, :, None] * params["w_rec"] + params["b"]
        c_prev = state.c if self.cell == "lstm" else None
        parts, hs = [], []
        for j in range(self.stage):  # the frozen stages, in order
            sl = self.stage_columns(j)
            aj = a[:, sl]
            if sl.start:
                aj = aj + self._feedforward(state, x, torch.cat(hs, dim=1), W_ff, sl)
            parts.append(aj)
            hs.append(self.cell_update(aj, None if c_prev is None else c_prev[:, sl])[0])
        lo = self.stage_columns(self.stage).start
        rest = a[:, lo:]
        if lo:
            rest = rest + self._feedforward(state, x, torch.cat(hs, dim=1), W_ff, slice(lo, None))
        parts.append(rest)
        a = torch.cat(parts, dim=1).reshape(B, -1)
        return a if self.normalise is None else torch.cat([a, x], dim=1)

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        nG = self.n_hidden * self.n_gates
        a = i[:, :nG].reshape(i.shape[0], self.n_hidden, self.n_gates)
        active = (torch.arange(self.n_hidden, device=i.device) < self.n_active).to(i.dtype)
        h, c = self.cell_update(a, state.c if self.cell == "lstm" else None)
        h = h * active
        state = state._replace(h=h) if c is None else state._replace(h=h, c=c * active)
        if self.normalise is None:
            return state, h
        sl = self.stage_columns(self.stage)  # the learning columns' statistics take (x_t, u_t)
        return self.learn_inputs(state, torch.cat([i[:, nG:], h[:, :sl.start]], dim=1), sl), h
