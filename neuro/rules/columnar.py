"""Columnar RTRL (Javed, Shah, Sutton & White 2023, "Scalable real-time recurrent learning using
columnar-constructive networks", JMLR 24, Sec. 4): exact RTRL for a network of independent columns.

Column ``k`` has the state ``s_k`` (``(h_k, c_k)`` for an LSTM column, ``h_k`` for a rate column) and
the parameters ``theta_k = (W_in[k], w_rec[k], b[k])`` (``q = G (n_in + 2)`` numbers); it reads the input
and only its own ``h_{t-1,k}``. So ``s_k`` depends on ``theta_k`` alone and the influence matrix
``ds_t/dtheta`` is block-diagonal: only the per-column traces (the paper's ``dh_k/dw``, ``dc_k/dw``)

    M_{t,k} = ds_{t,k}/dtheta_k                                   [B, n, S_c, q],   M_{0,k} = 0
    M_{t,k} = (partial s_{t,k}/partial s_{t-1,k}) M_{t-1,k} + partial s_{t,k}/partial theta_k

are kept: O(p) memory and compute per step (``S_c`` = 2 or 1 state numbers per column). The one-step
Jacobians of a single column come from ``torch.func.jacrev`` of the network's own ``current`` and
``neuron`` on a one-column network, ``vmap``-ed over columns and the batch; the full [S, P] influence
matrix is never built. The estimate of step ``t`` (exact; the readout gets its immediate gradient)::

    e_t = dl_t/dy_t                    dl_t/dtheta_k = (e_t W_out)_k  M_{t,k}[h]
    dl_t/dW_out = e_t^T h_t            dl_t/db_out = sum_b e_t

averaged over the batch as :mod:`neuro.losses` does. Summed over a sequence with the parameters frozen
it equals BPTT's (and RTRL's) gradient. Only the columnar network is supported (a stack of layers,
:mod:`models.stack`, is refused: its units are not independent columns).

With the network's online normalisation (``normalise``, :mod:`models.columnar`) its statistics are constants
of the step: column ``k`` reads its normalised input ``xhat_{t,k}`` (the network's ``column_inputs``), so
the one-column step is the plain column on ``xhat_{t,k}``; the readout reads ``hhat_t`` (``readout_features``)
and ``dl_t/dh_t = (e_t W_out)_k / sqrt(var_f[k])`` (``readout_backward``)::

    dl_t/dtheta_k = (dl_t/dh_t)_k  M_{t,k}[h]      dl_t/dW_out = e_t^T hhat_t

Faster computations of the same numbers (the one-column Jacobians written out; a compiled step) live in
:mod:`neuro.rules._fast.columnar` and run by default; ``fast=False`` runs this definition, ``kernel=False``
keeps the compiled step off (the written-out Jacobians in torch).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from models.stack import Stack
from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated

#: the refusal's pointer to the rules that do run on a stack of layers (models.stack)
ON_STACKS = ("on a stack run bptt, tbptt, rtrl, snap1, snap2, uoro, nobacktrack, nobacktrack-kalman, td-lambda (over "
             "one of those), rflo (rate layers) or three-factor")

__all__ = ["ColumnarRTRL", "ColumnarRTRLState"]

_COLUMN_KEYS = ("W_in", "w_rec", "b")  # theta_k, packed in this order


class ColumnarRTRLState(NamedTuple):
    net: NamedTuple
    M: Tensor  # per-column traces ds_{t,k}/dtheta_k: [B, n, S_c, q] (the fast paths: [B, S_c, n, G, F])


@accelerated
@dataclasses.dataclass(frozen=True)
class ColumnarRTRL(AbstractRule):
    """Exact RTRL over independent columns, with block-diagonal (per-column) traces. ``fast``: the fast
    paths of :mod:`neuro.rules._fast.columnar` (default) or this definition (``torch.func``); ``kernel``: on
    the fast path, the compiled step where numba and the dtype allow it (default) or torch only."""

    fast: bool = True
    kernel: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.net, Stack):
            raise self._refuse("columnar RTRL is exact for independent columns, each reading only its own state; "
                               "a stack's units read their whole layer and the layer below, so its influence "
                               "matrix is not block-diagonal; " + ON_STACKS)
        super().__post_init__()
        for name in ("fast", "kernel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected True or False")

    name = "columnar"
    needs = Needs.JACOBIAN
    supports = ("columnar",)

    # -- packing theta_k -----------------------------------------------------------------------------
    @staticmethod
    def _pack(params: Params) -> Tensor:
        """``Theta`` [n, q]: row k is ``theta_k = (W_in[k], w_rec[k], b[k])`` flattened."""
        n = params["W_in"].shape[0]
        return torch.cat([params[k].reshape(n, -1) for k in _COLUMN_KEYS], dim=1)

    @staticmethod
    def _unpack(g: Tensor, n_in: int) -> Params:
        """The inverse of :meth:`_pack` for ``g`` [m, q], ``q = G (n_in + 2)``."""
        G = g.shape[1] // (n_in + 2)
        w_in, w_rec, b = g.split([G * n_in, G, G], dim=1)
        return {"W_in": w_in.reshape(-1, G, n_in), "w_rec": w_rec, "b": b}

    def _column_step(self, theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """One column, one sample: ``s_{t,k}`` [S_c] from ``theta_k`` [q], ``s_{t-1,k}`` [S_c], the input as
        the column reads it ``x`` [n_in], through the network's own ``current`` and ``neuron`` on a one-column
        copy (without normalisation: ``x`` is already the column's)."""
        net1 = dataclasses.replace(self.net, n_hidden=1, normalise=None)
        p1 = self._unpack(theta[None], x.shape[0])  # W_in [1, G, n_in], w_rec [1, G], b [1, G]
        state = net1.State(*(s[j].reshape(1, 1) for j in range(s.shape[0])))
        i = net1.current(p1, state, x[None])
        state, _ = net1.neuron(p1, state, i)
        return torch.stack([f.reshape(()) for f in state])

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ColumnarRTRLState:
        check_positive("batch", batch, integer=True)
        self.net.check_params(params)
        net_state = self.net.init_state(params, batch)
        theta = self._pack(params)
        M = theta.new_zeros(batch, theta.shape[0], self.net.n_cell_state, theta.shape[1])
        return ColumnarRTRLState(net=net_state, M=M)

    def memory_numel(self, params: Params, batch: int = 1) -> int:
        """Numbers held by the traces: ``B n S_c q = B S_c (p - readout)``, O(p)."""
        return batch * self.net.n_cell_state * self._pack(params).numel()

    def step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        params = {k: v.detach() for k, v in params.items()}
        net = self.net
        theta = self._pack(params)  # [n, q]
        s = torch.stack(tuple(state.net)[:net.n_cell_state], dim=-1).detach()  # s_{t-1} [B, n, S_c]
        xk = net.column_inputs(state.net, x)  # each column's input [B, n, n_in]

        # per-column one-step Jacobians: vmap over columns (inner) and the batch (outer)
        jac = jacrev(self._column_step, argnums=(0, 1))
        J_theta, J_s = vmap(vmap(jac, in_dims=(0, 0, 0)), in_dims=(None, 0, 0))(theta, s, xk)
        M = torch.einsum("bkij,bkjq->bkiq", J_s, state.M) + J_theta  # [B, n, S_c, q]

        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        fn = self.loss_fn
        e = torch.func.grad(lambda yh: fn(yh, y, mask))(y_hat)  # dl_t/dy_t [B, n_out] (masked, / B)
        g_cols = torch.einsum("bk,bkq->kq", net.readout_backward(params, net_state, e), M[:, :, 0])
        # (dl_t/dh_t) M_t[h]: the readout reads h only
        grad = {**self._unpack(g_cols, x.shape[1]), "W_out": e.T @ net.readout_features(net_state, h),
                "b_out": e.sum(0)}
        return StepOutput(ColumnarRTRLState(net=net_state, M=M.detach()), y_hat.detach(),
                          fn(y_hat, y, mask).detach(), {k: grad[k].detach().contiguous() for k in params})
