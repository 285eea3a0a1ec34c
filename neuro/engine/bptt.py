"""BPTT and truncated BPTT on the rate RNN, compiled: a range of steps of online training in one numba call.

The rules are :mod:`neuro.rules.bptt` (the exact gradient of the sequence's summed loss, emitted when the
sequence ends) and :mod:`neuro.rules.tbptt` (the same over windows of ``k`` steps, emitted when a window is
full, the last, shorter one when the sequence ends; the network state is carried into the next window but no
gradient flows through it); the network :class:`models.rate.RateRNN` (not a subclass). Neither rule holds an
estimate back at an update inside a window (their ``flush`` returns nothing), so an update there applies only
what earlier windows emitted, and none at all when nothing was emitted since the last one.

As the torch path does, a window's forward steps run on a copy of the parameters taken at its first step (an
update inside the window changes the live parameters, not the window's). Per step, :func:`bptt_range` stores
what the backward pass reads: the network state ``h`` after the step, ``D = dh/du = alpha (1 - tanh(u)^2)``
and the loss's error ``eps = dl/dy_hat``. At the window's end :func:`backward` runs through the stored steps::

    dh_t = W_out^T eps_t + c_{t+1}     du_t = D_t dh_t     c_t = (1 - alpha) dh_t + W_rec^T du_t
    dW_out += eps_t h_t^T   db_out += eps_t   dW_rec += du_t h_{t-1}^T   dW_in += du_t x_t^T   db += du_t

(``c`` zero after the window's last step; nothing flows to the window's first ``h_{t-1}``), adding the window's
gradient to the loop's accumulator. The optimizer's update falls at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) when an estimate was emitted since the last one.

The torch rule state holds an autograd graph mid-window; between the ranges of one sequence the engine keeps
its own stored steps instead (the rule state it returns then carries the current ``h`` and the window's step
count only, and is handed back to it). At a sequence's end (where checkpoints are taken) the state is the torch
path's: ``h`` detached, no window, ``t = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.rate import RateRNN
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, flat, view
from neuro.engine.optim import OptimizerArrays
from neuro.rules.bptt import BPTT, BPTTState
from neuro.rules.tbptt import TBPTT

__all__ = ["BPTTEngine", "backward", "bptt_range", "build"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernels' order
LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True)
def backward(W_rec, W_out, alpha, xs, t_start, H, Dst, E, m, g_in, g_rec, g_b, g_out, g_bout):  # noqa: ANN001, ANN201
    """The gradient of a window's summed loss (module docstring) added to ``g_*``: its ``m`` steps are steps
    ``t_start ..`` of ``xs`` [T, B, n_in]; ``H`` [>= m + 1, B, n] the state before the window and after each
    step, ``Dst`` [>= m, B, n] the steps' ``dh/du``, ``E`` [>= m, B, n_out] their errors ``dl/dy_hat``."""
    nb, n = H.shape[1], H.shape[2]
    n_in, n_out = xs.shape[2], E.shape[2]
    leak = K.cast(1.0 - alpha, H)
    dh = np.empty((nb, n), H.dtype)
    du = np.empty((nb, n), H.dtype)
    carry = np.zeros((nb, n), H.dtype)
    for j in range(m - 1, -1, -1):
        x, hp, hn, e, D = xs[t_start + j], H[j], H[j + 1], E[j], Dst[j]
        for s in range(nb):
            for a in range(n):
                v = carry[s, a]
                for k in range(n_out):
                    v += e[s, k] * W_out[k, a]
                dh[s, a] = v
                du[s, a] = v * D[s, a]
        for k in range(n_out):
            for s in range(nb):
                ek = e[s, k]
                g_bout[k] += ek
                for a in range(n):
                    g_out[k, a] += ek * hn[s, a]
        for a in range(n):
            for s in range(nb):
                d = du[s, a]
                g_b[a] += d
                for i in range(n):
                    g_rec[a, i] += d * hp[s, i]
                for i in range(n_in):
                    g_in[a, i] += d * x[s, i]
        for s in range(nb):
            for i in range(n):
                v = leak * dh[s, i]
                for a in range(n):
                    v += W_rec[a, i] * du[s, a]
                carry[s, i] = v


@numba.njit(cache=True)
def bptt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, n_in, n, n_out, k,  # noqa: ANN001, ANN201
               snap, H, Dst, E, h, xs, ys, mask, t0, t1, n_seq, every, tw, full, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``, ``steps``,
    ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``k`` the window length
    (0: the whole sequence); ``snap`` the window's parameters (flat, :data:`ORDER`); ``H``, ``Dst``, ``E`` the
    stored steps (:func:`backward`); ``h`` [B, n] the network state; ``xs`` [T, B, n_in], ``ys`` [T, B, n_out],
    ``mask`` [T, B]; ``tw`` the steps already in the open window (0: none open); ``full`` whether the
    accumulator holds estimates not yet applied; ``losses`` [t1 - t0] (written). Returns the updates applied,
    ``full`` and ``tw`` after the range."""
    W_in, W_rec, b = snap[0].reshape((n, n_in)), snap[1].reshape((n, n)), snap[2]
    W_out, b_out = snap[3].reshape((n_out, n)), snap[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    y_hat = np.empty((h.shape[0], n_out), h.dtype)
    updates = 0
    for t in range(t0, t1):
        if tw == 0:  # a window opens: the parameters it runs on, the state it starts from
            for i in range(len(ps)):
                snap[i][:] = ps[i]
            H[0] = h
        K.rate_step(W_in, W_rec, b, alpha, xs[t], H[tw], H[tw + 1], Dst[tw])
        K.readout(W_out, b_out, H[tw + 1], y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], E[tw])
        tw += 1
        if tw == k or t == n_seq - 1:  # the window closes: its gradient to the sum
            backward(W_rec, W_out, alpha, xs, t + 1 - tw, H, Dst, E, tw, g_in, g_rec, g_b, g_out, g_bout)
            h[:, :] = H[tw]
            tw = 0
            full = True
        if full and (t == n_seq - 1 or (t + 1) % every == 0):
            K.apply_update(opt_kind, ps, acc, ms, vs, steps, hyper)
            updates += 1
            full = False
    if tw > 0:
        h[:, :] = H[tw]
    return updates, full, tw


class _Open(NamedTuple):
    """A sequence under way between two ranges: the rule state handed out, the window's parameters and stored
    steps, the steps in the open window and whether the accumulator holds estimates not yet applied."""

    state: BPTTState
    snap: tuple[np.ndarray, ...]
    H: np.ndarray
    D: np.ndarray
    E: np.ndarray
    tw: int
    full: bool


class BPTTEngine(Engine):
    """:func:`bptt_range` for one BPTT or TBPTT rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: BPTT) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self.k = int(rule.k) if isinstance(rule, TBPTT) else 0
        self._open: _Open | None = None

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        ps = tuple(flat(params[k]) for k in ORDER)
        gs = tuple(flat(acc[k]) for k in ORDER)
        if t0 == 0:
            if state.window is not None or state.t != 0:
                raise RuntimeError("the compiled bptt engine was handed a rule state with an open window at a "
                                   "sequence's start")
            h = state.net.h.detach().clone().contiguous()
            steps = n_seq if self.k == 0 else min(self.k, n_seq)
            nb, dtype = h.shape[0], view(h).dtype
            o = _Open(state=state, snap=tuple(np.empty_like(p) for p in ps),
                      H=np.empty((steps + 1, nb, net.n_hidden), dtype), D=np.empty((steps, nb, net.n_hidden), dtype),
                      E=np.empty((steps, nb, net.n_out), dtype), tw=0, full=False)
        else:
            o = self._open
            if o is None or o.state is not state:
                raise RuntimeError("the compiled bptt engine was handed a rule state it did not leave mid-sequence")
            h = state.net.h
        opt_arrays = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        losses = np.empty(t1 - t0, view(h).dtype)
        updates, full, tw = bptt_range(ps, gs, opt_arrays.ms, opt_arrays.vs, opt_arrays.steps, opt_arrays.kind,
                                       opt_arrays.hyper, self.loss_kind, self.alpha, net.n_in, net.n_hidden,
                                       net.n_out, self.k, o.snap, o.H, o.D, o.E, view(h), seq.xs, seq.ys, seq.mask,
                                       t0, t1, n_seq, every, o.tw, o.full, losses)
        out = BPTTState(net=state.net._replace(h=h), window=None, total=None, t=int(tw))
        self._open = None if t1 == n_seq else o._replace(state=out, tw=int(tw), full=bool(full))
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> BPTTEngine | None:
    """The engine for ``rule`` on ``net``: BPTT or TBPTT (not a subclass) on the rate RNN (not a subclass) with
    the loss mse or ce; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) not in (BPTT, TBPTT) or rule.loss not in LOSSES:
        return None
    return BPTTEngine(net, rule)
