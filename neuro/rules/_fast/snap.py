"""SnAp's fast paths on the leaky tanh rate RNN (:mod:`neuro.rules.snap`, Menick et al. 2021;
:class:`models.rate.RateRNN`).

*Dense* (:class:`DenseRateSnAp`, SnAp-2, and SnAp-1 with ``sparse=False``): RTRL's closed-form step
(:mod:`neuro.rules._fast.rtrl`) from ``M~_{t-1}``, then the mask: ``M~_t = (J_t M~_{t-1} + I_t) (.) P_n``.
Its estimate is ``(dl_t/dh_t) M~_t`` before the mask, which is the definition's ``(dl_t/ds_{t-1})
M~_{t-1} + partial l_t/partial theta`` in another order.

*Sparse SnAp-1* (:class:`SparseRateSnAp1`, ``sparse=True``): ``W_rec[i, j]``, ``W_in[i, j]`` and ``b_i``
reach only ``h_i`` in one step, so ``P_1`` keeps unit i's own row: ``M~`` is stored as its nonzeros,
[B, n, n + n_in + 1] (``M~[b, i, :]``: unit i's ``W_rec[i, :]``, ``W_in[i, :]``, ``b_i``). With
``D_t = alpha (1 - tanh^2(i_t))``::

    J_t[i, i] = D_t,i W_rec[i, i] + 1 - alpha          I_t[i, :] = D_t,i (h_{t-1}, x_t, 1)
    M~_t = J_t[i, i] M~_{t-1} + I_t                    (row by row)
    dl_t/dtheta ~ (dl_t/dh_{t-1}) M~_{t-1} + (dl_t/dh_t) I_t (+ the readout's own gradient)

with ``dl_t/dh_{t-1} = (dl_t/dh_t) J_t``: O(p) memory and compute per step (plus O(n^2) for
``dl_t/dh_{t-1}``). ``e_t = dl_t/dy_t`` is written out (:func:`neuro.losses.grad`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.rate import RateRNN
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.rtrl import RTRLState
from neuro.rules.snap import SnAp1, SnAp2, SnApState

from .rtrl import RateRTRL

__all__ = ["DenseRateSnAp", "SparseRateSnAp1", "build"]


class DenseRateSnAp(RateRTRL):
    """SnAp-n on the rate RNN: RTRL's closed-form step, masked by ``P_n`` (dense [B, S, P])."""

    rule: SnAp1 | SnAp2

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SnApState:
        r = super().init(params, batch, seed)
        return SnApState(net=r.net, M=r.M, P=self.rule.pattern(params))

    def step(self, params: Params, state: SnApState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        out = super().step(params, RTRLState(net=state.net, M=state.M), x, y, mask)
        return out._replace(state=SnApState(net=out.state.net, M=out.state.M * state.P, P=state.P))


class SparseRateSnAp1(FastPath):
    """SnAp-1 on the rate RNN with only the nonzeros of ``M~`` (module docstring)."""

    rule: SnAp1 | SnAp2

    def memory_bytes(self, params: Params, batch: int) -> int:
        """Bytes of ``M~``'s nonzeros [B, n, n + n_in + 1]."""
        n, n_in = params["W_in"].shape
        return params["W_in"].element_size() * batch * n * (n + n_in + 1)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SnApState:
        check_positive("batch", batch, integer=True)
        n, n_in = params["W_in"].shape
        M = params["W_in"].new_zeros(batch, n, n + n_in + 1)
        return SnApState(net=self.rule.net.init_state(params, batch), M=M, P=None)

    def step(self, params: Params, state: SnApState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net = self.rule, self.rule.net
        params = {k: v.detach() for k, v in params.items()}
        alpha = float(net.alpha)
        h0 = state.net.h  # h_{t-1} [B, n]
        n, n_in = h0.shape[1], x.shape[1]
        W = params["W_rec"]
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        D = alpha * (1.0 - torch.tanh(i) ** 2)  # [B, n]
        e = losses.grad(rule.loss or "mse", y_hat, y, mask)  # dl_t/dy_t [B, n_out]
        delta = e @ params["W_out"]  # dl_t/dh_t [B, n]
        u = (delta * D) @ W + (1.0 - alpha) * delta  # dl_t/dh_{t-1} = (dl_t/dh_t) J_t   [B, n]
        pre = torch.cat([h0, x, torch.ones_like(h0[:, :1])], dim=1)  # [B, n + n_in + 1]
        Ik = D[:, :, None] * pre[:, None, :]  # I_t restricted to P_1   [B, n, n + n_in + 1]
        # estimate: (dl_t/dh_{t-1}) M~_{t-1} + (dl_t/dh_t) I_t  (+ the readout's own gradient)
        G = (u[:, :, None] * state.M + delta[:, :, None] * Ik).sum(0)  # [n, n + n_in + 1]
        Jd = D * torch.diagonal(W) + (1.0 - alpha)  # J_t[i, i]   [B, n]
        M = Jd[:, :, None] * state.M + Ik  # M~_t = (J_t M~_{t-1} + I_t) (.) P_1
        grad = {"W_rec": G[:, :n], "W_in": G[:, n:n + n_in], "b": G[:, n + n_in],
                "W_out": e.T @ h, "b_out": e.sum(0)}
        return StepOutput(SnApState(net=net_state, M=M, P=None), y_hat.detach(),
                          rule.loss_fn(y_hat, y, mask).detach(), {k: grad[k].to(params[k].dtype) for k in params})


def build(rule: SnAp1 | SnAp2) -> DenseRateSnAp | SparseRateSnAp1 | None:
    """On the rate RNN: the sparse SnAp-1 where the rule is SnAp-1 with ``sparse``, else the dense masked
    closed-form step; None on any other network."""
    if not isinstance(rule.net, RateRNN):
        return None
    return SparseRateSnAp1(rule) if rule.n == 1 and getattr(rule, "sparse", False) else DenseRateSnAp(rule)
