"""BPTT and truncated BPTT on the LSTM, compiled: a range of steps of online training in one numba call.

The rules are :mod:`neuro.rules.bptt` (the exact gradient of the sequence's summed loss, emitted when the
sequence ends) and :mod:`neuro.rules.tbptt` (the same over windows of ``k`` steps, emitted when a window is
full, the last, shorter one when the sequence ends; the network state ``(h, c)`` is carried into the next
window but no gradient flows through it); the network :class:`models.lstm.LSTM` (not a subclass), its cell
from :mod:`neuro.engine.lstm`. Neither rule holds an estimate back at an update inside a window, so an update
there applies only what earlier windows emitted, and none at all when nothing was emitted since the last one.

As the torch path does, a window's forward steps run on a copy of the parameters taken at its first step.
Per step, :func:`lstm_bptt_range` stores what the backward pass reads and cannot recompute cheaply: the state
``(h_t, c_t)`` after the step and the loss's error ``eps_t = dl/dy_hat`` (the state before the window too).
At the window's end :func:`backward` runs through the stored steps, recomputing each step's gates from
``x_t``, ``h_{t-1}`` and the window's parameters (:func:`neuro.engine.lstm.gates`, the forward's arithmetic),
with ``dh``, ``dc`` what flows back from the later steps (zero after the window's last step)::

    dh_t = W_out^T eps_t + W_rec^T du_{t+1}         (du_t, dc_{t-1}) = cotangent of the cell at t of (dh_t, dc_t)
    dW_out += eps_t h_t^T   db_out += eps_t   dW_rec += du_t h_{t-1}^T   dW_in += du_t x_t^T   db += du_t

(:func:`neuro.engine.lstm.cotangent`; nothing flows into the window's first state), adding the window's
gradient to the loop's accumulator. The optimizer's update falls at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) when an estimate was emitted since the last one.

The torch rule state holds an autograd graph mid-window; between the ranges of one sequence the engine keeps
its own stored steps instead (the rule state it returns then carries the current ``(h, c)`` and the window's
step count only, and is handed back to it). At a sequence's end (where checkpoints are taken) the state is the
torch path's: ``(h, c)`` detached, no window, ``t = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.lstm import LSTM
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import lstm as L
from neuro.engine.base import RangeResult, SequenceArrays, flat, view
from neuro.engine.bptt import WindowsEngine, open_window, update_emitted
from neuro.engine.optim import OptimizerArrays
from neuro.rules.bptt import BPTT
from neuro.rules.tbptt import TBPTT

__all__ = ["LSTMBPTTEngine", "backward", "build", "lstm_bptt_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernels' order
LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True)
def backward(W_in, W_rec, b, W_out, xs, t_start, H, C, E, m, g_in, g_rec, g_b, g_out, g_bout,  # noqa: ANN001, ANN201
             dh, dc, du):
    """The gradient of a window's summed loss (module docstring) added to ``g_*``: its ``m`` steps are steps
    ``t_start ..`` of ``xs`` [T, B, n_in]; ``H``, ``C`` [>= m + 1, B, n] the state before the window and after
    each step, ``E`` [>= m, B, n_out] the steps' errors ``dl/dy_hat``; ``dh``, ``dc`` [B, n], ``du`` [B, 4n]
    scratch."""
    nb, n = H.shape[1], H.shape[2]
    n_in, n_out = xs.shape[2], E.shape[2]
    one = K.cast(1.0, H)
    dh[:, :] = 0.0
    dc[:, :] = 0.0
    for j in range(m - 1, -1, -1):
        x, hp, cp, hn, cn, e = xs[t_start + j], H[j], C[j], H[j + 1], C[j + 1], E[j]
        for s in range(nb):  # the cell's cotangent, unit by unit; dh_t's readout term added
            for a in range(n):
                v = dh[s, a]
                for k in range(n_out):
                    v += e[s, k] * W_out[k, a]
                i, f, g, o = L.gates(W_in, W_rec, b, x[s], hp[s], n, a, one)
                d = L.derivatives(i, f, g, o, cp[s, a], np.tanh(cn[s, a]), one)
                du[s, a], du[s, n + a], du[s, 2 * n + a], du[s, 3 * n + a], dc[s, a] = L.cotangent(d, f, v, dc[s, a])
        for k in range(n_out):
            for s in range(nb):
                ek = e[s, k]
                g_bout[k] += ek
                for q in range(n):
                    g_out[k, q] += ek * hn[s, q]
        carry = j > 0  # nothing flows into the window's first state
        if carry:
            dh[:, :] = 0.0
        for r in range(4 * n):  # one pass over the rows: the gradients and dh_{t-1} = W_rec^T du_t
            W_r, g_r, gi_r = W_rec[r], g_rec[r], g_in[r]
            for s in range(nb):
                dr = du[s, r]
                g_b[r] += dr
                hs, xsr = hp[s], x[s]
                for q in range(n):
                    g_r[q] += dr * hs[q]
                for q in range(n_in):
                    gi_r[q] += dr * xsr[q]
                if carry:
                    dhs = dh[s]
                    for q in range(n):
                        dhs[q] += dr * W_r[q]


@numba.njit(cache=True)
def lstm_bptt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, n_in, n, n_out, k,  # noqa: ANN001, ANN201
                    snap, H, C, E, h, c, xs, ys, mask, t0, t1, n_seq, every, tw, full, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``, ``steps``,
    ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``k`` the window length
    (0: the whole sequence); ``snap`` the window's parameters (flat, :data:`ORDER`); ``H``, ``C``, ``E`` the
    stored steps (:func:`backward`); ``h``, ``c`` [B, n] the network state; ``xs`` [T, B, n_in], ``ys`` [T, B,
    n_out], ``mask`` [T, B]; ``tw`` the steps already in the open window (0: none open); ``full`` whether the
    accumulator holds estimates not yet applied; ``losses`` [t1 - t0] (written). Returns the updates applied,
    ``full`` and ``tw`` after the range."""
    W_in, W_rec, b = snap[0].reshape((4 * n, n_in)), snap[1].reshape((4 * n, n)), snap[2]
    W_out, b_out = snap[3].reshape((n_out, n)), snap[4]
    g_in, g_rec, g_b = acc[0].reshape((4 * n, n_in)), acc[1].reshape((4 * n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    nb = h.shape[0]
    y_hat = np.empty((nb, n_out), h.dtype)
    dh, dc, du = np.empty((nb, n), h.dtype), np.empty((nb, n), h.dtype), np.empty((nb, 4 * n), h.dtype)
    updates = 0
    for t in range(t0, t1):
        if tw == 0:  # a window opens: the parameters it runs on, the state it starts from
            open_window(ps, snap)
            H[0] = h
            C[0] = c
        L.lstm_step(W_in, W_rec, b, xs[t], H[tw], C[tw], H[tw + 1], C[tw + 1])
        K.readout(W_out, b_out, H[tw + 1], y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], E[tw])
        tw += 1
        if tw == k or t == n_seq - 1:  # the window closes: its gradient to the sum
            backward(W_in, W_rec, b, W_out, xs, t + 1 - tw, H, C, E, tw, g_in, g_rec, g_b, g_out, g_bout, dh, dc, du)
            h[:, :] = H[tw]
            c[:, :] = C[tw]
            tw = 0
            full = True
        applied, full = update_emitted(full, t, n_seq, every, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
    if tw > 0:
        h[:, :] = H[tw]
        c[:, :] = C[tw]
    return updates, full, tw


class LSTMBPTTEngine(WindowsEngine):
    """:func:`lstm_bptt_range` for one BPTT or TBPTT rule on one LSTM (module docstring)."""

    def __init__(self, net: LSTM, rule: BPTT) -> None:
        self.net, self.rule = net, rule
        self.loss_kind = LOSSES[rule.loss]
        self.k = int(rule.k) if isinstance(rule, TBPTT) else 0

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        ps = tuple(flat(params[k]) for k in ORDER)
        gs = tuple(flat(acc[k]) for k in ORDER)
        o, (h, c) = self._begin(state, t0, ("h", "c"), lambda: self._buffers(ps, state.net.h.shape[0], n_seq))
        snap, H, C, E = o.buffers
        opt_arrays = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        losses = np.empty(t1 - t0, view(h).dtype)
        updates, full, tw = lstm_bptt_range(ps, gs, opt_arrays.ms, opt_arrays.vs, opt_arrays.steps, opt_arrays.kind,
                                            opt_arrays.hyper, self.loss_kind, net.n_in, net.n_hidden, net.n_out,
                                            self.k, snap, H, C, E, view(h), view(c), seq.xs, seq.ys,
                                            seq.mask, t0, t1, n_seq, every, o.tw, o.full, losses)
        return self._end(o, state, {"h": h, "c": c}, losses, updates, full, tw, t1, n_seq)

    def _buffers(self, ps: tuple[np.ndarray, ...], nb: int, n_seq: int) -> tuple[np.ndarray, ...]:
        """A sequence's buffers: its window's parameters (flat, :data:`ORDER`) and stored steps ``H``, ``C``,
        ``E`` (:func:`backward`)."""
        steps = n_seq if self.k == 0 else min(self.k, n_seq)
        n, dtype = self.net.n_hidden, ps[0].dtype
        return (tuple(np.empty_like(p) for p in ps), np.empty((steps + 1, nb, n), dtype),
                np.empty((steps + 1, nb, n), dtype), np.empty((steps, nb, self.net.n_out), dtype))


def build(net: object, rule: object) -> LSTMBPTTEngine | None:
    """The engine for ``rule`` on ``net``: BPTT or TBPTT (not a subclass) on the LSTM (not a subclass) with the
    loss mse or ce; ``None`` otherwise."""
    if type(net) is not LSTM or type(rule) not in (BPTT, TBPTT) or rule.loss not in LOSSES:
        return None
    return LSTMBPTTEngine(net, rule)
