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

*Compiled kernel* (``kernel=True``, the default, on the fast path): where numba is importable and the
parameters, state and input are float32 or float64 CPU tensors of one dtype, one compiled call
(:mod:`neuro.rules._columnar_kernel`) does the step: the columns' forward step (gates, ``c_t``, ``h_t``),
the readout and the traces above in one pass over the columns, then ``e_t`` and the loss (``mse``,
``value``, ``ce`` with a bool mask; other losses or masks: torch between two calls), then the estimate.
Same equations; in float64 it agrees with the torch fast path to rounding (the tests: 1e-12). Every
output is a new tensor: the previous state is left as it was, as on the torch paths. ``kernel=False``:
the torch fast path (``torch`` ops over all columns). The bench case (``neuro bench rules --rules
columnar``, n = 1024, float32, batch 1) spends ~0.12 ms a step there against ~0.29 ms on torch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev, vmap

from neuro import losses
from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["ColumnarRTRL", "ColumnarRTRLState", "column_traces", "output_error"]

_COLUMN_KEYS = ("W_in", "w_rec", "b")  # theta_k, packed in this order
_KERNEL_DTYPES = (torch.float32, torch.float64)
_KERNEL_LOSSES = {"mse": 0, "value": 1, "ce": 2}  # the losses the kernel writes out (others: torch)


def _load_kernel():
    """The compiled step (:mod:`neuro.rules._columnar_kernel`), or None where numba is not importable."""
    try:
        from . import _columnar_kernel
    except ImportError as e:
        if "numba" not in str(e):
            raise
        return None
    return _columnar_kernel


def output_error(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``e_t = dl_t/dy_hat_t`` [B, n_out] of the per-step loss ``loss`` (:mod:`neuro.losses`: masked, / B),
    written out (:func:`neuro.losses.grad`)."""
    return losses.grad(loss, y_hat, y, mask)


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
    written-out Jacobians (default) or ``torch.func`` (the reference); ``kernel``: on the fast path, the
    compiled step where numba and the dtype allow it (default) or torch only."""

    fast: bool = True
    kernel: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("fast", "kernel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected True or False")

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
            if self.kernel and self._kernel_applies(params, state, x):
                return self._kernel_step(params, state, x, y, mask)
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

    def _kernel_applies(self, params: Params, state: ColumnarRTRLState, x: Tensor) -> bool:
        dt = params["W_in"].dtype
        if dt not in _KERNEL_DTYPES or _kernel() is None:
            return False
        for t in (*params.values(), *state.net, state.M, x):
            if t.dtype != dt or not t.is_cpu:
                return False
        return True

    def _kernel_step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor,
                     mask: Tensor) -> StepOutput:
        """The fast path through :mod:`neuro.rules._columnar_kernel`: every output a new tensor; one compiled
        call where the kernel writes the loss out (``mse``, ``value``, ``ce`` with a bool mask), else the
        loss and ``e_t`` in torch between the column step and the estimate."""
        net, kern = self.net, _kernel()
        B, (n, G, n_in), n_out = x.shape[0], params["W_in"].shape, self.net.n_out
        new = x.new_empty
        M = new(state.M.shape)  # a new array: the previous state stays as it was
        h, y_hat = new(B, n), new(B, n_out)
        grad = {"W_in": new(n, G, n_in), "w_rec": new(n, G), "b": new(n, G), "W_out": new(n_out, n),
                "b_out": new(n_out)}
        W_in, w_rec, b, W_out, b_out = (params[k].contiguous().numpy() for k in (*_COLUMN_KEYS, "W_out", "b_out"))
        Mp = state.M.contiguous().numpy().reshape(B, -1, n, G * (n_in + 2))
        Mn = M.numpy().reshape(Mp.shape)
        xn, h_prev = x.detach().contiguous().numpy(), state.net.h.contiguous().numpy()
        lstm = net.cell == "lstm"
        c = new(B, n) if lstm else None
        cols = (xn, h_prev, state.net.c.contiguous().numpy(), W_in) if lstm else (xn, h_prev, W_in)
        outs = (h.numpy(), c.numpy(), y_hat.numpy(), Mn) if lstm else (h.numpy(), y_hat.numpy(), Mn)
        net_state = net.State(h=h, c=c) if lstm else net.State(h=h)
        name = self.loss or "mse"
        if name in _KERNEL_LOSSES and y.dtype == y_hat.dtype and mask.dtype == torch.bool:
            loss = new(())
            (kern.lstm_full if lstm else kern.rate_full)(
                _KERNEL_LOSSES[name], *cols, w_rec, b, W_out, b_out, Mp, y.detach().contiguous().numpy(),
                mask.contiguous().numpy(), *outs, np.empty((B, n_out), Mp.dtype), loss.numpy().reshape(1),
                *(g.numpy() for g in grad.values()))
        else:
            (kern.lstm_step if lstm else kern.rate_step)(*cols, w_rec, b, W_out, b_out, Mp, *outs)
            e, loss = output_error(name, y_hat, y, mask).detach().contiguous(), self.loss_fn(y_hat, y, mask).detach()
            kern.estimate(e.numpy(), W_out, h.numpy(), Mn, *(g.numpy() for g in grad.values()))
        return StepOutput(ColumnarRTRLState(net=net_state, M=M), y_hat, loss, grad)


_KERNEL: list = []


def _kernel():
    """:mod:`neuro.rules._columnar_kernel`, imported once (None without numba)."""
    if not _KERNEL:
        _KERNEL.append(_load_kernel())
    return _KERNEL[0]
