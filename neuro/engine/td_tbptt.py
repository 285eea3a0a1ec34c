"""TD(lambda) over sliding truncated BPTT on the LSTM, compiled: a range of steps of online training in one numba
call.

The rule is :mod:`neuro.rules.td` (Sutton 1988; Javed, Shah, Sutton & White 2023, whose baseline this is; its
module docstring states the equations) with the inner rule ``tbptt`` (:class:`neuro.rules.td.SlidingTBPTT`,
option ``k``) on :class:`models.lstm.LSTM` (not a subclass), the cell from :mod:`neuro.engine.lstm`. Per step
``t`` and sample ``b`` (each sample its own TD process and window)::

    window_t = the last (up to k) pairs (s_{j-1}, x_j), j <= t, oldest first        (s = (h, c), detached)
    s_t = the cell run from the window's first state over its inputs, with the current parameters
    grad v_t = d v_t / d theta through the window's steps only (the first state held fixed)
    delta_t = c_t + gamma_t v_t - v_{t-1}            (c_t = x_t[cumulant_input], or sum_k y_t)
    estimate_t += -[mask_t] delta_t e_{t-1} / B      e_t = lam gamma_t e_{t-1} + grad v_t
    (gamma_t = gamma x_t[discount_input], or gamma)

``v_t = sum_k y_hat_{t,k}``, so the inner loss ``value``'s error is 1 at every output of the window's last
step and 0 before it: ``grad v_t`` is the window's backward pass with those errors (:func:`value_gradient`,
the cell's cotangent from the derivatives kept by the window's forward steps). The estimate is added to the loop's accumulator and applied at the
loop's schedule (``(t + 1) % update_every == 0`` or the sequence's last step) by
:func:`neuro.engine.kernels.apply_update`. The per-step loss reported is the rule's own (``mse`` or ``ce`` of
``y_hat_t`` against ``y_t``, :func:`neuro.engine.kernels.loss_and_error`).

The rule state is :class:`~neuro.rules.td.TDLambdaState`; the engine works on copies of its tensors (the
windows' states and inputs in buffers of ``k`` entries per sample) and returns a state of views of them, the
windows as the torch path holds them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.lstm import LSTM, LSTMState
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import lstm as L
from neuro.engine.base import Engine, RangeResult, SequenceArrays, Views, view
from neuro.engine.lstm_bptt import ORDER
from neuro.engine.optim import OptimizerArrays
from neuro.rules.td import SlidingTBPTT, SlidingTBPTTState, TDLambda

__all__ = ["TDTBPTTEngine", "build", "td_tbptt_range", "value_gradient"]

LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True)
def value_gradient(W_rec, W_out, X, H, D, m, g_in, g_rec, g_b, g_out, g_bout, dh, dc, du):  # noqa: ANN001, ANN201
    """``grad v_t`` (written over ``g_*``) of one sample through its window's ``m`` steps (module docstring):
    ``X`` [>= m, 1, n_in] the inputs, ``H`` [>= m + 1, 1, n] the states (the window's first and after each step),
    ``D`` [>= m, 1, n, 6] the cell's derivatives (:func:`neuro.engine.lstm.step_derivatives`); ``dh``, ``dc``
    [n], ``du`` [4n] scratch. The backward pass of :func:`neuro.engine.lstm_bptt.backward` with the error 1 at
    every output of the last step and 0 before it::

        dh_t = sum_k W_out[k]    dh_{j-1} = W_rec^T du_j    (du_j, dc_{j-1}) = cotangent of the cell at j
        dW_out[k] = h_t    db_out = 1    dW_rec += du_j h_{j-1}^T    dW_in += du_j x_j^T    db += du_j"""
    n, n_out = dh.shape[0], W_out.shape[0]
    g_in[:, :] = 0.0
    g_rec[:, :] = 0.0
    g_b[:] = 0.0
    for q in range(n):
        v = W_out[0, q]
        for o in range(1, n_out):
            v += W_out[o, q]
        dh[q] = v
        dc[q] = 0.0
    for o in range(n_out):
        g_out[o, :] = H[m, 0]
        g_bout[o] = 1.0
    for j in range(m - 1, -1, -1):
        Dj = D[j, 0]
        for a in range(n):
            du[a], du[n + a], du[2 * n + a], du[3 * n + a], dc[a] = L.cotangent(Dj[a], Dj[a, 5], dh[a], dc[a])
        if j > 0:
            dh[:] = 0.0
        hp, x = H[j, 0], X[j, 0]
        for r in range(4 * n):
            dr = du[r]
            g_b[r] += dr
            gr, gi = g_rec[r], g_in[r]
            for q in range(n):
                gr[q] += dr * hp[q]
            for q in range(x.shape[0]):
                gi[q] += dr * x[q]
            if j > 0:
                Wr = W_rec[r]
                for q in range(n):
                    dh[q] += dr * Wr[q]


@numba.njit(cache=True)
def td_tbptt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, n_in, n, n_out, k,  # noqa: ANN001, ANN201
                   h, c, Hw, Cw, Xw, m, es, v_prev, delta, gamma, decay, ci, di, xs, ys, mask, t0, t1, n_seq, every,
                   losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps of TD(lambda) over sliding TBPTT (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``, ``steps``,
    ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h``, ``c`` [B, n] the
    network state; ``Hw``, ``Cw`` [B, k, 1, n], ``Xw`` [B, k, 1, n_in] the windows' states and inputs, oldest
    first, ``m`` entries each; ``es`` the eligibility traces [B, size] in :data:`ORDER`; ``v_prev``, ``delta``
    [B]; ``gamma``, ``decay = gamma lam``, ``ci`` the cumulant's input (-1: the target summed over outputs), ``di``
    the discount's input (-1: none; else ``gamma`` and ``decay`` are scaled by ``x_t[di]``);
    ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B]; ``losses`` [t1 - t0] (written). All changed in
    place. Returns the updates applied, whether the accumulator holds estimates not yet applied, and ``m``."""
    W_in, W_rec, b = ps[0].reshape((4 * n, n_in)), ps[1].reshape((4 * n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    nb = h.shape[0]
    gs = (np.empty(4 * n * n_in, h.dtype), np.empty(4 * n * n, h.dtype), np.empty(4 * n, h.dtype),
          np.empty(n_out * n, h.dtype), np.empty(n_out, h.dtype))
    g_in, g_rec, g_b = gs[0].reshape((4 * n, n_in)), gs[1].reshape((4 * n, n)), gs[2]
    g_out, g_bout = gs[3].reshape((n_out, n)), gs[4]
    H, C = np.empty((k + 1, 1, n), h.dtype), np.empty((k + 1, 1, n), h.dtype)
    D = np.empty((k, 1, n, 6), h.dtype)
    dh, dc, du = np.empty(n, h.dtype), np.empty(n, h.dtype), np.empty(4 * n, h.dtype)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    d = K.cast(decay, h)
    gm = K.cast(gamma, h)
    fb = K.cast(nb, h)
    updates, full = 0, False
    for t in range(t0, t1):
        x = xs[t]
        shift = m == k
        if not shift:
            m += 1
        for s in range(nb):
            if shift:  # the oldest pair leaves the window
                for j in range(k - 1):
                    Hw[s, j] = Hw[s, j + 1]
                    Cw[s, j] = Cw[s, j + 1]
                    Xw[s, j] = Xw[s, j + 1]
            Hw[s, m - 1, 0] = h[s]
            Cw[s, m - 1, 0] = c[s]
            Xw[s, m - 1, 0] = x[s]
            H[0] = Hw[s, 0]
            C[0] = Cw[s, 0]
            for j in range(m):  # forward from the window's first state, the cell's derivatives kept
                L.step_derivatives(W_in, W_rec, b, Xw[s, j], H[j], C[j], H[j + 1], C[j + 1], D[j])
            h[s] = H[m, 0]
            c[s] = C[m, 0]
            K.readout(W_out, b_out, H[m], y_hat[s:s + 1])
            value_gradient(W_rec, W_out, Xw[s], H, D, m, g_in, g_rec, g_b, g_out, g_bout, dh, dc, du)
            # the TD error needs v_t only: this sample's estimate and trace now
            v, dl, w, dt = K.td_error(y_hat[s], x[s], ys[t, s], mask[t, s] != 0, ci, di, gm, d, v_prev[s], fb)
            for i in range(5):
                e, a, g = es[i][s], acc[i], gs[i]
                for q in range(e.shape[0]):
                    a[q] += w * e[q]
                    e[q] = dt * e[q] + g[q]
            v_prev[s] = v
            delta[s] = dl
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        applied, full = K.scheduled_update(K.update_due(t, n_seq, every), -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
    return updates, full, m


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format)


class _Own(NamedTuple):
    """The engine's copies of a rule state's tensors, and the window's length."""

    h: torch.Tensor
    c: torch.Tensor
    Hw: torch.Tensor
    Cw: torch.Tensor
    Xw: torch.Tensor
    e: dict
    v_prev: torch.Tensor
    delta: torch.Tensor
    m: int
    arrays: tuple  # the kernel's arrays of them: h, c, Hw, Cw, Xw, the traces (flat per sample), v_prev, delta


class TDTBPTTEngine(Engine):
    """:func:`td_tbptt_range` for one TD(lambda) rule over sliding TBPTT on one LSTM (module docstring)."""

    def __init__(self, net: LSTM, rule: TDLambda) -> None:
        self.net, self.rule = net, rule
        self.k = int(rule.inner.k)
        self.loss_kind = LOSSES[rule.loss]
        self.ci = -1 if rule.cumulant_input is None else int(rule.cumulant_input)
        self.di = -1 if rule.discount_input is None else int(rule.discount_input)
        self.last: NamedTuple | None = None
        self.own: _Own | None = None
        self.ps, self.gs = Views(), Views()

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, rule = self.net, self.rule
        if state is not self.last or self.own is None:  # a state from elsewhere (the start, a reset): copies
            self.own = self._own(state)
            self.last = None
        o = self.own
        ps = self.ps(params[k] for k in ORDER)
        gs = self.gs(acc[k] for k in ORDER)
        oa = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        losses = np.empty(t1 - t0, o.arrays[0].dtype)
        updates, full, m = td_tbptt_range(ps, gs, oa.ms, oa.vs, oa.steps, oa.kind, oa.hyper, self.loss_kind, net.n_in,
                                          net.n_hidden, net.n_out, self.k, *o.arrays[:5], o.m, *o.arrays[5:],
                                          float(rule.gamma), float(rule.gamma * rule.lam), self.ci, self.di, seq.xs, seq.ys,
                                          seq.mask, t0, t1, n_seq, every, losses)
        if self.last is None or m != o.m:  # the windows' lengths changed: a new state of views
            self.own = o._replace(m=int(m))
            self.last = self._state(state)
        return RangeResult(state=self.last, losses=losses, updates=int(updates), pending=bool(full))

    def _own(self, state: NamedTuple) -> _Own:
        inner, k = state.inner, self.k
        m = len(inner[0].window)
        h = torch.cat([_copy(s.net.h) for s in inner])
        c = torch.cat([_copy(s.net.c) for s in inner])
        nb, n = h.shape
        Hw = torch.zeros((nb, k, 1, n), dtype=h.dtype)
        Cw = torch.zeros_like(Hw)
        Xw = torch.zeros((nb, k, 1, self.net.n_in), dtype=h.dtype)
        for b, s in enumerate(inner):
            if len(s.window) != m or m > k:
                raise ValueError(f"the windows of the td-lambda state hold {[len(q.window) for q in inner]} steps: "
                                 f"valid is the same number, at most k={k}, in every sample")
            for j, (sj, xj) in enumerate(s.window):
                Hw[b, j], Cw[b, j], Xw[b, j] = sj.h, sj.c, xj
        e = {key: _copy(v) for key, v in state.e.items()}
        v_prev, delta = _copy(state.v_prev), _copy(state.delta)
        arrays = (view(h), view(c), view(Hw), view(Cw), view(Xw), tuple(view(e[key]).reshape(nb, -1) for key in ORDER),
                  view(v_prev), view(delta))
        return _Own(h, c, Hw, Cw, Xw, e, v_prev, delta, m, arrays)

    def _state(self, state: NamedTuple) -> NamedTuple:
        """The rule state of views of the engine's copies (the windows as the torch path holds them)."""
        o = self.own
        inner = tuple(SlidingTBPTTState(net=LSTMState(h=o.h[b:b + 1], c=o.c[b:b + 1]),
                                        window=tuple((LSTMState(h=o.Hw[b, j], c=o.Cw[b, j]), o.Xw[b, j])
                                                     for j in range(o.m)))
                      for b in range(o.h.shape[0]))
        return state._replace(net=LSTMState(h=o.h, c=o.c), inner=inner, e=o.e, v_prev=o.v_prev, delta=o.delta)


def build(net: object, rule: object) -> TDTBPTTEngine | None:
    """The engine for ``rule`` on ``net``: TD(lambda) (not a subclass) over ``tbptt`` on the LSTM (not a
    subclass), the rule's loss mse or ce; ``None`` otherwise."""
    if type(net) is not LSTM or type(rule) is not TDLambda or rule.loss not in LOSSES:
        return None
    if type(rule.inner) is not SlidingTBPTT:
        return None
    return TDTBPTTEngine(net, rule)
