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
it equals BPTT's (and RTRL's) gradient. Only the network registered as ``"columnar"`` is supported.

*Fast path* (``fast=True``, the default): the same recursion with the one-column Jacobians written out
(:func:`column_traces`), vectorised over the batch and the columns, in the layout ``M[b, s, k, G, f]``
(stored ``[B, S_c, n, G, F]``; gate ``G``, feature ``f`` of ``z_{t,k} = (x_t, h_{t-1,k}, 1)``: ``theta_k``'s entry ``(G, f)`` is
``W_in[k, G, f]``, ``w_rec[k, G]`` or ``b[k, G]``). With ``da_{t,k,G}/dtheta_{k,(G',f)} = delta_{GG'}
z_f + w_rec[k, G] Mh_{t-1}`` and the LSTM cell (``i, f, g, o`` the gate values, ``'`` their derivatives)::

    Mc_t = (sum_G kc_G w_rec[G]) Mh_{t-1} + f Mc_{t-1} + kc (x) z,      kc = (i' g, f' c_{t-1}, i g', 0)
    Mh_t = o' tanh(c_t) w_rec[o] Mh_{t-1} + o (1 - tanh^2 c_t) Mc_t + kh (x) z,   kh = (0, 0, 0, o' tanh c_t)

and the rate cell ``Mh_t = (1 - h_t^2) (w_rec Mh_{t-1} + 1 (x) z)``: a few in-place element-wise passes
over the ``B n S_c q`` numbers per step, no ``torch.func``. ``fast=False`` keeps the ``jacrev`` path (the
reference the tests compare it with).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from neuro import losses
from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["ColumnarRTRL", "ColumnarRTRLState", "column_traces", "output_error"]

_COLUMN_KEYS = ("W_in", "w_rec", "b")  # theta_k, packed in this order


def output_error(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``e_t = dl_t/dy_hat_t`` [B, n_out] of the per-step loss ``loss`` (:mod:`neuro.losses`: masked, / B),
    written out for ``mse``, ``value`` and ``ce`` (``torch.func.grad`` of the loss otherwise)."""
    w = (mask.to(y_hat.dtype) / y_hat.shape[0])[:, None]
    if loss == "mse":
        return (y_hat - y) * w
    if loss == "value":
        return w.expand_as(y_hat).clone()
    if loss == "ce":
        return (torch.softmax(y_hat, -1) * y.sum(-1, keepdim=True) - y) * w
    fn = losses.get(loss)
    return torch.func.grad(lambda yh: fn(yh, y, mask))(y_hat)


def column_traces(cell: str, a: Tensor, c_prev: Tensor | None, h: Tensor, c: Tensor | None, w_rec: Tensor,
                  z: Tensor, M: Tensor) -> Tensor:
    """One step of the per-column traces, written out (see the module docstring).

    ``a`` [B, m, G]: the columns' pre-activations at ``t``; ``c_prev``, ``h``, ``c`` [B, m] (``c``'s None for
    the rate cell); ``w_rec`` [m, G]; ``z`` [B, m, F]: each column's features (``da_G = theta_{G,:} . z``);
    ``M`` [B, S_c, m, G, F]: ``d(h, c)_{t-1}/dtheta`` (state-major: ``M[:, 0]`` for ``h`` is contiguous).
    Returns ``M_t`` (same shape)."""
    Mh = M[:, 0]
    out = torch.empty_like(M)
    oh = out[:, 0]
    if cell == "rate":  # Mh_t = d (w_rec Mh_{t-1} + 1 (x) z),  d = 1 - h_t^2
        d = 1 - h * h
        torch.mul(Mh, (d * w_rec[:, 0])[..., None, None], out=oh)
        oh.addcmul_(d[..., None, None], z[:, :, None, :])
        return out
    sg = torch.sigmoid(a)  # i, f, (unused), o
    dsg = sg * (1 - sg)
    i, f, o = sg[..., 0], sg[..., 1], sg[..., 3]
    g = torch.tanh(a[..., 2])
    tc = torch.tanh(c)
    do_tc = dsg[..., 3] * tc
    kc = torch.empty_like(a)  # (i' g, f' c_{t-1}, i g', 0): the direct terms of dc_t/da_t
    torch.mul(dsg[..., 0], g, out=kc[..., 0])
    torch.mul(dsg[..., 1], c_prev, out=kc[..., 1])
    torch.mul(i, 1 - g * g, out=kc[..., 2])
    kc[..., 3] = 0
    alpha = (kc * w_rec).sum(-1)  # [B, m]
    oc = out[:, 1]
    torch.mul(M[:, 1], f[..., None, None], out=oc)  # in place: each pass reads and writes once
    oc.addcmul_(Mh, alpha[..., None, None])
    oc.addcmul_(kc[..., None], z[:, :, None, :])
    torch.mul(Mh, (do_tc * w_rec[:, 3])[..., None, None], out=oh)
    oh.addcmul_(oc, (o * (1 - tc * tc))[..., None, None])
    oh[:, :, 3].addcmul_(do_tc[..., None], z)
    return out


class ColumnarRTRLState(NamedTuple):
    net: NamedTuple
    M: Tensor  # per-column traces ds_{t,k}/dtheta_k: [B, n, S_c, q] (fast=False), [B, S_c, n, G, F] (fast)


@dataclasses.dataclass(frozen=True)
class ColumnarRTRL(AbstractRule):
    """Exact RTRL over independent columns, with block-diagonal (per-column) traces; ``fast``: the
    written-out Jacobians (default) or ``torch.func`` (the reference)."""

    fast: bool = True

    name = "columnar"
    needs = Needs.JACOBIAN
    supports = ("columnar",)

    # -- packing theta_k -----------------------------------------------------------------------------
    def _pack(self, params: Params) -> Tensor:
        """``Theta`` [n, q]: row k is ``theta_k = (W_in[k], w_rec[k], b[k])`` flattened."""
        n = self.net.n_hidden
        return torch.cat([params[k].reshape(n, -1) for k in _COLUMN_KEYS], dim=1)

    def _unpack(self, g: Tensor) -> Params:
        net = self.net
        n, G = g.shape[0], net.n_gates
        w_in, w_rec, b = g.split([G * net.n_in, G, G], dim=1)
        return {"W_in": w_in.reshape(n, G, net.n_in), "w_rec": w_rec, "b": b}

    def _column_step(self, theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """One column, one sample: ``s_{t,k}`` [S_c] from ``theta_k`` [q], ``s_{t-1,k}`` [S_c], ``x`` [n_in],
        through the network's own ``current`` and ``neuron`` on a one-column copy."""
        net1 = dataclasses.replace(self.net, n_hidden=1)
        p1 = self._unpack(theta[None])  # W_in [1, G, n_in], w_rec [1, G], b [1, G]
        state = net1.State(*(s[j].reshape(1, 1) for j in range(s.shape[0])))
        i = net1.current(p1, state, x[None])
        state, _ = net1.neuron(p1, state, i)
        return torch.stack([f.reshape(()) for f in state])

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ColumnarRTRLState:
        check_positive("batch", batch, integer=True)
        self.net.check_params(params)
        net_state = self.net.init_state(params, batch)
        p = params["W_in"]
        q = self._pack(params).shape[1]
        G = self.net.n_gates
        n, S = self.net.n_hidden, len(net_state)
        shape = (batch, S, n, G, q // G) if self.fast else (batch, n, S, q)
        M = torch.zeros(shape, dtype=p.dtype, device=p.device)
        return ColumnarRTRLState(net=net_state, M=M)

    def memory_numel(self, params: Params, batch: int = 1) -> int:
        """Numbers held by the traces: ``B n S_c q = B S_c (p - readout)``, O(p)."""
        return batch * self.net.n_hidden * len(self.net.init_state(params, 1)) * self._pack(params).shape[1]

    def step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        params = {k: v.detach() for k, v in params.items()}
        if self.fast:
            return self._fast_step(params, state, x, y, mask)
        net = self.net
        theta = self._pack(params)  # [n, q]
        s = torch.stack(tuple(state.net), dim=-1).detach()  # s_{t-1} [B, n, S_c]

        # per-column one-step Jacobians: vmap over columns (inner) and the batch (outer)
        jac = jacrev(self._column_step, argnums=(0, 1))
        J_theta, J_s = vmap(vmap(jac, in_dims=(0, 0, None)), in_dims=(None, 0, 0))(theta, s, x)
        M = torch.einsum("bkij,bkjq->bkiq", J_s, state.M) + J_theta  # [B, n, S_c, q]

        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        fn = self.loss_fn
        e = torch.func.grad(lambda yh: fn(yh, y, mask))(y_hat)  # dl_t/dy_t [B, n_out] (masked, / B)
        g_cols = torch.einsum("bk,bkq->kq", e @ params["W_out"], M[:, :, state.net._fields.index("h")])
        # (dl_t/dh_t) M_t[h]: the readout reads h only
        grad = {**self._unpack(g_cols), "W_out": e.T @ h, "b_out": e.sum(0)}
        return StepOutput(ColumnarRTRLState(net=net_state, M=M.detach()), y_hat.detach(),
                          fn(y_hat, y, mask).detach(), {k: grad[k].detach().contiguous() for k in params})

    def _fast_step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, B = self.net, x.shape[0]
        n, G, n_in = net.n_hidden, net.n_gates, net.n_in
        h_prev = state.net.h
        c_prev = state.net.c if net.cell == "lstm" else None
        a = net.current(params, state.net, x).reshape(B, n, G)
        h, c = net.cell_update(a, c_prev)
        net_state = net.State(h=h) if c is None else net.State(h=h, c=c)
        net_state, y_hat = net.readout(params, net_state, h)
        z = x.new_empty(B, n, n_in + 2)  # z_{t,k} = (x_t, h_{t-1,k}, 1)
        z[:, :, :n_in] = x[:, None, :]
        z[:, :, n_in] = h_prev
        z[:, :, n_in + 1] = 1
        M = column_traces(net.cell, a, c_prev, h, c, params["w_rec"], z, state.M)
        e = output_error(self.loss or "mse", y_hat, y, mask)
        eh = e @ params["W_out"]  # dl_t/dh_t [B, n]
        g = eh[0, :, None, None] * M[0, 0] if B == 1 else torch.einsum("bk,bkgf->kgf", eh, M[:, 0])
        grad = {"W_in": g[:, :, :n_in].contiguous(), "w_rec": g[:, :, n_in].contiguous(),
                "b": g[:, :, n_in + 1].contiguous(), "W_out": e.T @ h, "b_out": e.sum(0)}
        return StepOutput(ColumnarRTRLState(net=net_state, M=M), y_hat.detach(),
                          self.loss_fn(y_hat, y, mask).detach(), grad)
