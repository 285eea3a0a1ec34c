"""Columnar RTRL's fast paths (:mod:`neuro.rules.columnar`, Javed et al. 2023): the same per-column traces
and estimate with the one-column Jacobians written out instead of taken by ``torch.func``.

*Written-out traces* (:class:`ColumnarTraces`, :func:`column_traces`): the recursion vectorised over the
batch and the columns, in the layout ``M[b, s, k, G, f]`` (stored ``[B, S_c, n, G, F]``; gate ``G``, feature
``f`` of ``z_{t,k} = (x_t, h_{t-1,k}, 1)``: ``theta_k``'s entry ``(G, f)`` is ``W_in[k, G, f]``, ``w_rec[k, G]``
or ``b[k, G]``). With ``da_{t,k,G}/dtheta_{k,(G',f)} = delta_{GG'} z_f + w_rec[k, G] Mh_{t-1}`` and the
LSTM cell (``i, f, g, o`` the gate values, ``'`` their derivatives)::

    Mc_t = (sum_G kc_G w_rec[G]) Mh_{t-1} + f Mc_{t-1} + kc (x) z,      kc = (i' g, f' c_{t-1}, i g', 0)
    Mh_t = o' tanh(c_t) w_rec[o] Mh_{t-1} + o (1 - tanh^2 c_t) Mc_t + kh (x) z,   kh = (0, 0, 0, o' tanh c_t)

and the rate cell ``Mh_t = (1 - h_t^2) (w_rec Mh_{t-1} + 1 (x) z)``: a few in-place element-wise passes
over the ``B n S_c q`` numbers per step. ``e_t`` is written out too (:func:`neuro.losses.grad`).

*Compiled step* (:class:`ColumnarKernel`, the rule's ``kernel=True``, where numba is importable): where the
parameters, state and input are float32 or float64 CPU tensors of one dtype, one compiled call
(:mod:`neuro.rules._fast.columnar_kernel`) does the step: the columns' forward step (gates, ``c_t``,
``h_t``), the readout and the traces above in one pass over the columns, then ``e_t`` and the loss
(``mse``, ``value``, ``ce`` with a bool mask; other losses or masks: torch between two calls), then the
estimate. Same equations; in float64 it agrees with the written-out traces to rounding (the tests:
1e-12). Every output is a new tensor: the previous state is left as it was. Elsewhere (another dtype or
device) it runs the written-out traces. The bench case (``neuro bench rules --rules columnar``, n = 1024,
float32, batch 1) spends ~0.12 ms a step there against ~0.29 ms on the written-out traces in torch.

Both apply to the columnar network (:class:`models.columnar.Columnar`); the rule's ``kernel=False`` keeps
the written-out traces in torch. With the network's online normalisation a column's features are its
normalised input (``z_{t,k} = (xhat_{t,k}, h_{t-1,k}, 1)``, the network's ``column_inputs``) and the readout's
facts give ``dl_t/dh_t`` and ``dl_t/dW_out`` (:mod:`neuro.rules.columnar`); the written-out traces run it (the
compiled step has no statistics).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.columnar import Columnar
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.columnar import ColumnarRTRL, ColumnarRTRLState

__all__ = ["ColumnarKernel", "ColumnarTraces", "build", "column_traces"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_KERNEL_LOSSES = {"mse": 0, "value": 1, "ce": 2}  # the losses the kernel writes out (others: torch)


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


class ColumnarTraces(FastPath):
    """Columnar RTRL with the one-column Jacobians written out (:func:`column_traces`), in torch. The traces
    ``M`` are stored ``[B, S_c, n, G, F]``."""

    rule: ColumnarRTRL

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ColumnarRTRLState:
        check_positive("batch", batch, integer=True)
        net = self.rule.net
        net.check_params(params)
        net_state = net.init_state(params, batch)
        n, G, n_in = params["W_in"].shape
        M = params["W_in"].new_zeros(batch, net.n_cell_state, n, G, n_in + 2)
        return ColumnarRTRLState(net=net_state, M=M)

    def step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        return self._torch_step({k: v.detach() for k, v in params.items()}, state, x, y, mask)

    def _torch_step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor,
                    mask: Tensor) -> StepOutput:
        rule, net, B = self.rule, self.rule.net, x.shape[0]
        n, G, n_in = params["W_in"].shape
        h_prev = state.net.h
        c_prev = state.net.c if net.cell == "lstm" else None
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        a = i[:, :n * G].reshape(B, n, G)
        z = x.new_empty(B, n, n_in + 2)  # z_{t,k} = (xhat_{t,k}, h_{t-1,k}, 1): the input as column k reads it
        z[:, :, :n_in] = net.column_inputs(state.net, x)
        z[:, :, n_in] = h_prev
        z[:, :, n_in + 1] = 1
        M = column_traces(net.cell, a, c_prev, h, net_state.c if c_prev is not None else None, params["w_rec"], z,
                          state.M)
        e = losses.grad(rule.loss or "mse", y_hat, y, mask)  # dl_t/dy_t [B, n_out]
        eh = net.readout_backward(params, net_state, e)  # dl_t/dh_t [B, n]
        g = eh[0, :, None, None] * M[0, 0] if B == 1 else torch.einsum("bk,bkgf->kgf", eh, M[:, 0])
        grad = {"W_in": g[:, :, :n_in].contiguous(), "w_rec": g[:, :, n_in].contiguous(),
                "b": g[:, :, n_in + 1].contiguous(), "W_out": e.T @ net.readout_features(net_state, h),
                "b_out": e.sum(0)}
        return StepOutput(ColumnarRTRLState(net=net_state, M=M), y_hat.detach(),
                          rule.loss_fn(y_hat, y, mask).detach(), grad)


class ColumnarKernel(ColumnarTraces):
    """Columnar RTRL in one compiled call per step (:mod:`neuro.rules._fast.columnar_kernel`) where the
    tensors allow it (:meth:`applies`), the written-out traces in torch elsewhere."""

    def applies(self, params: Params, state: ColumnarRTRLState, x: Tensor) -> bool:
        """True where the parameters, state and input are CPU tensors of one dtype, float32 or float64, and the
        network does not normalise online (the compiled step has no statistics: torch runs that)."""
        dt = params["W_in"].dtype
        if dt not in _KERNEL_DTYPES or self.rule.net.normalise is not None:
            return False
        return all(t.dtype == dt and t.is_cpu for t in (*params.values(), *state.net, state.M, x))

    def step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        params = {k: v.detach() for k, v in params.items()}
        if not self.applies(params, state, x):
            return self._torch_step(params, state, x, y, mask)
        return self._kernel_step(params, state, x, y, mask)

    def _kernel_step(self, params: Params, state: ColumnarRTRLState, x: Tensor, y: Tensor,
                     mask: Tensor) -> StepOutput:
        """Every output a new tensor; one compiled call where the kernel writes the loss out (``mse``,
        ``value``, ``ce`` with a bool mask), else the loss and ``e_t`` in torch between the column step and
        the estimate."""
        rule, net, kern = self.rule, self.rule.net, _kernel()
        B, (n, G, n_in), n_out = x.shape[0], params["W_in"].shape, params["W_out"].shape[0]
        new = x.new_empty
        M = new(state.M.shape)  # a new array: the previous state stays as it was
        h, y_hat = new(B, n), new(B, n_out)
        grad = {"W_in": new(n, G, n_in), "w_rec": new(n, G), "b": new(n, G), "W_out": new(n_out, n),
                "b_out": new(n_out)}
        W_in, w_rec, b, W_out, b_out = (params[k].contiguous().numpy() for k in ("W_in", "w_rec", "b", "W_out", "b_out"))
        Mp = state.M.contiguous().numpy().reshape(B, -1, n, G * (n_in + 2))
        Mn = M.numpy().reshape(Mp.shape)
        xn, h_prev = x.detach().contiguous().numpy(), state.net.h.contiguous().numpy()
        lstm = net.cell == "lstm"
        c = new(B, n) if lstm else None
        cols = (xn, h_prev, state.net.c.contiguous().numpy(), W_in) if lstm else (xn, h_prev, W_in)
        outs = (h.numpy(), c.numpy(), y_hat.numpy(), Mn) if lstm else (h.numpy(), y_hat.numpy(), Mn)
        net_state = net.State(h=h, c=c) if lstm else net.State(h=h)
        name = rule.loss or "mse"
        if name in _KERNEL_LOSSES and y.dtype == y_hat.dtype and mask.dtype == torch.bool:
            loss = new(())
            (kern.lstm_full if lstm else kern.rate_full)(
                _KERNEL_LOSSES[name], *cols, w_rec, b, W_out, b_out, Mp, y.detach().contiguous().numpy(),
                mask.contiguous().numpy(), *outs, np.empty((B, n_out), Mp.dtype), loss.numpy().reshape(1),
                *(g.numpy() for g in grad.values()))
        else:
            (kern.lstm_step if lstm else kern.rate_step)(*cols, w_rec, b, W_out, b_out, Mp, *outs)
            e, loss = losses.grad(name, y_hat, y, mask).detach().contiguous(), rule.loss_fn(y_hat, y, mask).detach()
            kern.estimate(e.numpy(), W_out, h.numpy(), Mn, *(g.numpy() for g in grad.values()))
        return StepOutput(ColumnarRTRLState(net=net_state, M=M), y_hat, loss, grad)


_KERNEL: list = []


def _kernel():
    """:mod:`neuro.rules._fast.columnar_kernel`, imported once (None where numba is not importable)."""
    if not _KERNEL:
        try:
            from . import columnar_kernel
        except ImportError as e:
            if "numba" not in str(e):
                raise
            columnar_kernel = None
        _KERNEL.append(columnar_kernel)
    return _KERNEL[0]


def build(rule: ColumnarRTRL) -> ColumnarTraces | None:
    """The compiled step where the rule's ``kernel`` is on and numba is importable, else the written-out
    traces in torch; None on a network that is not columnar."""
    if not isinstance(rule.net, Columnar):
        return None
    return ColumnarKernel(rule) if rule.kernel and _kernel() is not None else ColumnarTraces(rule)
