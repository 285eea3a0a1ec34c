"""Constructive RTRL's fast path (:mod:`neuro.rules.constructive`, Javed et al. 2023): the learning stage's
per-column traces with the one-column Jacobians written out, as for columnar RTRL
(:func:`neuro.rules._fast.columnar.column_traces`), with the features ``z_{t,k} = (x_t, u_t, h_{t-1,k}, 1)``
(``u_t = h_t[:, :lo]``, the frozen stages' current outputs) and the traces stored ``[B, S_c, m, G, F]``;
``e_t`` written out (:func:`neuro.losses.grad`). No ``torch.func``. It applies to the constructive network
(:class:`models.constructive.Constructive`); with its online normalisation ``(x_t, u_t)`` are the column's
normalised inputs (the network's ``column_inputs``) and the readout's facts give ``dl_t/dh_t`` and
``dl_t/dW_out``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.constructive import Constructive
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.constructive import ConstructiveRTRL, ConstructiveRTRLState

from .columnar import column_traces

__all__ = ["ConstructiveTraces", "build"]


class ConstructiveTraces(FastPath):
    """Constructive RTRL with the one-column Jacobians written out, in torch."""

    rule: ConstructiveRTRL

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ConstructiveRTRLState:
        check_positive("batch", batch, integer=True)
        net = self.rule.net
        net.check_params(params)
        net_state = net.init_state(params, batch)
        sl = net.stage_columns(net.stage)
        F = net.n_in + sl.start + 2
        M = params["W_in"].new_zeros(batch, net.n_cell_state, sl.stop - sl.start, net.n_gates, F)
        return ConstructiveRTRLState(net=net_state, M=M)

    def step(self, params: Params, state: ConstructiveRTRLState, x: Tensor, y: Tensor,
             mask: Tensor) -> StepOutput:
        params = {k: v.detach() for k, v in params.items()}
        rule, net, B = self.rule, self.rule.net, x.shape[0]
        sl = net.stage_columns(net.stage)
        lo, m, G, n_in = sl.start, sl.stop - sl.start, net.n_gates, net.n_in
        h_prev = state.net.h[:, sl]
        c_prev = state.net.c[:, sl] if net.cell == "lstm" else None
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        a = i[:, :net.n_hidden * G].reshape(B, net.n_hidden, G)[:, sl]
        z = x.new_empty(B, m, n_in + lo + 2)  # z_{t,k} = (x_t, u_t, h_{t-1,k}, 1), (x_t, u_t) as column k reads them
        z[:, :, :n_in + lo] = net.column_inputs(state.net, torch.cat([x, h[:, :lo]], dim=1), sl)
        z[:, :, n_in + lo] = h_prev
        z[:, :, n_in + lo + 1] = 1
        M = column_traces(net.cell, a, c_prev, h[:, sl], None if c_prev is None else net_state.c[:, sl],
                          params["w_rec"][sl], z, state.M)
        e = losses.grad(rule.loss or "mse", y_hat, y, mask)  # dl_t/dy_t [B, n_out]
        eh = net.readout_backward(params, net_state, e)[:, sl]  # dl_t/dh_t of the stage [B, m]
        g = torch.einsum("bk,bkgf->kgf", eh, M[:, 0])  # [m, G, F]
        grad = {k: torch.zeros_like(v) for k, v in params.items()}
        grad["W_in"][sl] = g[:, :, :n_in]
        grad["W_ff"][sl, :, :lo] = g[:, :, n_in:n_in + lo]
        grad["w_rec"][sl] = g[:, :, n_in + lo]
        grad["b"][sl] = g[:, :, n_in + lo + 1]
        grad["W_out"] = e.T @ net.readout_features(net_state, h)
        grad["b_out"] = e.sum(0)
        return StepOutput(ConstructiveRTRLState(net=net_state, M=M), y_hat.detach(),
                          rule.loss_fn(y_hat, y, mask).detach(), grad)


def build(rule: ConstructiveRTRL) -> ConstructiveTraces | None:
    """The written-out traces; None on a network that is not constructive."""
    return ConstructiveTraces(rule) if isinstance(rule.net, Constructive) else None
