"""RFLO's windowed path on the rate RNN (:mod:`neuro.rules.rflo`, Murray 2019; :class:`models.rate.RateRNN`):
the same estimate, a window of steps at a time, one matrix product per parameter.

On the rate RNN the trace's leak is ``d = 1 - alpha`` for every unit and step, so ``P`` is a rank-one update
with one common decay, ``P(t) = d P(t-1) + D_t a_t^T`` (``D_t = alpha phi'(u_t)``, computed in place:
:mod:`neuro.rules._fast._local`), and over a window of ``window`` steps from ``P(0)``
(:mod:`neuro.rules._fast._window`, ``S = 1``)::

    sum_t L_t (.) P(t) = diag(sum_t d^t L_t) P(0) + sum_s (sum_{t>=s} d^(t-s) L_t (.) D_s) a_s^T
    P(w) = d^w P(0) + sum_s d^(w-s) D_s a_s^T

with ``L_t = B eps_t`` and ``a_t`` = ``x_t``, ``h_{t-1}``, ``1`` (``W_in``, ``W_rec``, ``b``): per window and
parameter one matrix product [n, w B] @ [w B, n_pre] and one per sample for the carry (none when ``alpha = 1``:
nothing outlives a step; with batch 1 the two are one product [2n, w] @ [w, n_pre]); per step only ``D_t``,
``L_t``, ``a_t``, ``eps_t``, ``h_t`` (O(n)) are kept. The estimate of a window is returned at its last step,
by ``flush`` (an update is due) and by ``finish``; other steps return ``None``. Memory O(B p + window B n).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from models.rate import RateRNN
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules._common import feedback_matrix
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.rflo import RFLO

from . import _local, _window

__all__ = ["RFLOWindowState", "Windowed", "build"]


class RFLOWindowState(NamedTuple):
    net: NamedTuple
    P_rec: Tensor  # [B, n, n]     eligibility of W_rec at the start of the pending window
    P_in: Tensor  # [B, n, n_in]   eligibility of W_in (size 0 with alpha = 1: nothing is carried)
    P_b: Tensor  # [B, n]          eligibility of b
    B: Tensor  # [n, n_out] the random feedback (feedback="random"), size 0 with feedback="readout"
    rows: tuple  # ``window`` rows [B, 4n + n_in + n_out] (D, L, x, h_{t-1}, h, eps) of the pending steps
    t: int  # the number of pending steps


class Windowed(FastPath):
    """RFLO a window at a time on the rate RNN (module docstring)."""

    rule: RFLO

    def __init__(self, rule: RFLO) -> None:
        super().__init__(rule)
        self.filter = _window.Filter.decay(1.0 - float(rule.net.alpha))

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RFLOWindowState:
        check_positive("batch", batch, integer=True)
        rule, net = self.rule, self.rule.net
        p, n = params["W_rec"].detach(), net.n_hidden
        self.filter.coefficients(rule.window, p.dtype, p.device)  # a full window's coefficients, once (cached)
        B = feedback_matrix(n, net.n_out, seed, p, rule.feedback_scale) if rule.feedback == "random" else p.new_zeros(0)
        P = (lambda *s: p.new_zeros(batch, n, *s)) if self.filter.carries else (lambda *s: p.new_zeros(0))  # noqa: E731
        rows = _window.slots(rule.window, p.new_zeros(batch, 4 * n + net.n_in + net.n_out))
        return RFLOWindowState(net=net.init_state(params, batch), P_rec=P(n), P_in=P(net.n_in), P_b=P(), B=B,
                               rows=rows, t=0)

    @torch.no_grad()
    def step(self, params: Params, state: RFLOWindowState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net = self.rule, self.rule.net
        h_prev = net.presynaptic(state.net)  # h_{t-1}
        f = _local.step(net, params, state.net, net.current(params, state.net, x))
        s, y_hat = net.readout(params, f.state, f.z)
        eps = losses.grad(rule.loss or "mse", y_hat, y, mask)
        B = params["W_out"] if rule.feedback == "readout" else state.B.T  # [n_out, n]
        row = torch.cat([f.dz_dI, eps @ B, x, h_prev, f.z, eps], dim=1)  # D, L, a, h, eps
        new = state._replace(net=s, rows=_window.push(state.rows, state.t, row), t=state.t + 1)
        grad = None
        if new.t >= rule.window:
            new, grad = self._flush(params, new)
        return StepOutput(new, y_hat, rule.loss_fn(y_hat, y, mask), grad)

    def flush(self, params: Params, state: RFLOWindowState) -> tuple[RFLOWindowState, Params | None]:
        return self._flush(params, state)

    def finish(self, params: Params, state: RFLOWindowState) -> tuple[RFLOWindowState, Params | None]:
        return self._flush(params, state)

    @torch.no_grad()
    def _flush(self, params: Params, state: RFLOWindowState) -> tuple[RFLOWindowState, Params | None]:
        """The estimate of the pending steps (module docstring); the traces move to the window's end."""
        if state.t == 0:
            return state, None
        net = self.rule.net
        n, n_in, n_out = net.n_hidden, net.n_in, net.n_out
        R = _window.stacked(state.rows, state.t)  # [w, B, 4n + n_in + n_out]
        w, nb = R.shape[:2]
        D, L, x, h_prev, h, eps = torch.split(R, [n, n, n_in, n, n, n_out], dim=2)
        f = self.filter
        ones = torch.ones(w, nb, 1, dtype=R.dtype, device=R.device)
        (g_in, q_in), (g_rec, q_rec), (g_b, q_b) = _window.window_sum(
            f, L, [(D, (state.P_in,), x), (D, (state.P_rec,), h_prev), (D, (state.P_b[..., None],), ones)])
        grad = {"W_in": g_in, "W_rec": g_rec, "b": g_b[:, 0],
                "W_out": eps.reshape(w * nb, n_out).T @ h.reshape(w * nb, n), "b_out": eps.sum((0, 1))}
        new = state._replace(t=0, rows=_window.slots(self.rule.window, R[0]))
        if f.carries:
            new = new._replace(P_in=q_in[0], P_rec=q_rec[0], P_b=q_b[0][..., 0])
        return new, {k: grad[k] for k in params}


def build(rule: RFLO) -> Windowed | None:
    """The windowed path on the rate RNN (one leak for every unit, tanh), not a subclass; None on any other network."""
    return Windowed(rule) if type(rule.net) is RateRNN else None  # a subclass may change the neuron
