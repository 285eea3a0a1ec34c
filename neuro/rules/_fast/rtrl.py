"""RTRL's fast path on the leaky tanh rate RNN (:mod:`neuro.rules.rtrl`, Williams & Zipser 1989;
:class:`models.rate.RateRNN`, ``h_t = (1 - alpha) h_{t-1} + alpha tanh(W_in x_t + W_rec h_{t-1} + b)``).

The one-step Jacobians are closed form, with ``D_t = alpha (1 - tanh^2(i_t))``::

    J_t = diag(D_t) W_rec + (1 - alpha) I
    I_t[k, W_rec[i, j]] = delta_ki D_t,k h_{t-1,j}      I_t[k, W_in[i, j]] = delta_ki D_t,k x_t,j
    I_t[k, b_i] = delta_ki D_t,k                         (the readout's W_out, b_out: 0)

so ``J_t`` is built from ``W_rec`` without autodiff, ``M_t = J_t M_{t-1}`` is one batched matmul, and the
immediate terms are added, as outer products, to the diagonal of their column blocks: ``I_t`` (``J_theta``,
[B, S, P]) is never materialised. The estimate is then ``(dl_t/dh_t) M_t`` plus the readout's own
gradient (the definition's quantity in another order), with ``e_t = dl_t/dy_t`` written out
(:func:`neuro.losses.grad`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.rate import RateRNN
from neuro import losses
from neuro.contract import Params
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.rtrl import RTRL, RTRLState

__all__ = ["RateRTRL", "build"]


class RateRTRL(FastPath):
    """RTRL on the rate RNN with closed-form one-step Jacobians (module docstring)."""

    rule: RTRL

    def memory_bytes(self, params: Params, batch: int) -> int:
        """Bytes of ``M`` [B, S, P] and of one more [B, S, P] (``J_t M_{t-1}``); no ``J_s`` or ``J_theta``."""
        fs = self.rule._flat(params)
        return next(iter(params.values())).element_size() * batch * fs.n_state * 2 * fs.n_params

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RTRLState:
        return RTRLState(net=self.rule.net.init_state(params, batch), M=self.rule._influence(params, batch))

    def step(self, params: Params, state: RTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule = self.rule
        net, fs = rule.net, rule._flat(params)
        params = {k: v.detach() for k, v in params.items()}
        alpha = float(net.alpha)
        h0 = state.net.h  # h_{t-1} [B, n]
        n = h0.shape[1]
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        D = alpha * (1.0 - torch.tanh(i) ** 2)  # [B, n]

        J = D[:, :, None] * params["W_rec"]  # J_t = diag(D_t) W_rec + (1 - alpha) I   [B, n, n]
        if alpha != 1.0:
            J.diagonal(dim1=1, dim2=2).add_(1.0 - alpha)
        M = torch.bmm(J, state.M)  # J_t M_{t-1}   [B, n, P]
        sl = fs.param_slices()
        # I_t: row k of each block W[i, j] is nonzero only where i = k (the block's diagonal in (k, i))
        M[:, :, sl["W_rec"]].unflatten(2, (n, n)).diagonal(dim1=1, dim2=2).add_(h0[:, :, None] * D[:, None, :])
        M[:, :, sl["W_in"]].unflatten(2, (n, net.n_in)).diagonal(dim1=1, dim2=2).add_(x[:, :, None] * D[:, None, :])
        M[:, :, sl["b"]].diagonal(dim1=1, dim2=2).add_(D)

        e = losses.grad(rule.loss or "mse", y_hat, y, mask)  # dl_t/dy_t [B, n_out]
        g = torch.einsum("bk,bkp->p", e @ params["W_out"], M)  # (dl_t/dh_t) M_t
        g[sl["W_out"]] += (e.T @ h).reshape(-1)
        g[sl["b_out"]] += e.sum(0)
        grad = fs.unflat_params(g)
        return StepOutput(RTRLState(net=net_state, M=M), y_hat.detach(), rule.loss_fn(y_hat, y, mask).detach(),
                          {k: grad[k].detach() for k in params})


def build(rule: RTRL) -> RateRTRL | None:
    """The closed-form path on the rate RNN; None on any other network."""
    return RateRTRL(rule) if isinstance(rule.net, RateRNN) else None
