"""RFLO on the rate RNN, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.rflo` (Murray 2019; its module docstring states the equations: the traces
``P_ab(t) = (1 - alpha) P_ab(t-1) + alpha phi'(u^t_a) a_b(t)``, the estimate ``[B eps^t]_a P_ab(t)`` of
``W_rec``, ``W_in``, ``b`` and the readout's exact gradient ``eps^t (h^t)^T``, ``eps^t``); the network
:class:`models.rate.RateRNN` (not a subclass). Per step, :func:`rflo_range`: the network step
(:func:`neuro.engine.kernels.rate_step`), the readout, the loss and its error, the traces, the step's estimate
added to the loop's accumulator, and at the loop's schedule (``(t + 1) % update_every == 0`` or the sequence's
last step) the optimizer's update with the sum, which zeroes it. The traces, the estimate and (at an update)
``W_rec``'s update are one pass over the rows of ``P_rec``: each row of ``W_rec`` is updated as soon as its sum
is complete (the network step of this step has already read it), the same arithmetic as the whole update after
the pass; where the previous step updated, the sum is the step's estimate alone, summed in a scratch row (the
accumulator of ``W_rec`` is not read or written).

Both forms of the rule's state are run: the definition's :class:`~neuro.rules.rflo.RFLOState` (``P`` the
current traces) and the windowed path's :class:`~neuro.rules._fast.rflo.RFLOWindowState` (``P`` the traces at
the start of the pending window, the window's rows, its length ``t``). The engine leaves the latter with no
pending window (``t = 0``, ``P`` the current traces) and every step's estimate already in the accumulator: the
same future as the torch path's (which holds the pending steps back until the next flush), and at every
update and sequence end (where checkpoints are taken) the same state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.rate import RateRNN
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, Views, view
from neuro.engine.optim import OptimizerArrays
from neuro.rules._fast.rflo import RFLOWindowState
from neuro.rules.base import add_into
from neuro.rules.rflo import RFLO

__all__ = ["RFLOEngine", "build", "rflo_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True)
def rflo_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, n_in, n, n_out,  # noqa: ANN001, ANN201
               h, P_rec, P_in, P_b, fb, readout_fb, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``,
    ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h`` [B, n]
    the network state, ``P_rec`` [B, n, n], ``P_in`` [B, n, n_in], ``P_b`` [B, n] the traces, ``fb`` [n, n_out]
    the random feedback (``readout_fb``: ``W_out^T`` instead); ``xs`` [T, B, n_in], ``ys`` [T, B, n_out],
    ``mask`` [T, B]; ``losses`` [t1 - t0] (written). All changed in place. Returns the updates applied and
    whether the accumulator holds estimates not yet applied."""
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    m_rec = ms[1].reshape((ms[1].size // n, n))  # the optimizer's state by rows of W_rec (none: no rows)
    v_rec = vs[1].reshape((vs[1].size // n, n))
    nb = h.shape[0]
    h_new = np.empty_like(h)
    D = np.empty_like(h)
    L = np.empty_like(h)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    d = K.cast(1.0 - alpha, h)
    scratch = np.zeros(n, h.dtype)  # a row's sum where W_rec's accumulator is known to be zero (kept zero)
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        x = xs[t]
        K.rate_step(W_in, W_rec, b, alpha, x, h, h_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):  # L = B eps: the error broadcast to the units
            for a in range(n):
                la = K.cast(0.0, h)
                for k in range(n_out):
                    la += eps[s, k] * (W_out[k, a] if readout_fb else fb[a, k])
                L[s, a] = la
        for k in range(n_out):  # the readout's exact gradient
            for s in range(nb):
                e = eps[s, k]
                for j in range(n):
                    g_out[k, j] += e * h_new[s, j]
                g_bout[k] += e
        update = K.update_due(t, n_seq, every)
        if update:  # W_rec's step begun; its rows are updated in the pass below, as each row's sum is done
            c = K.row_update_begin(opt_kind, steps[1], hyper, W_rec)
        direct = update and clean  # the row's sum is the step's estimate alone: summed in a scratch row instead
        for a in range(n):  # one pass over the rows: the traces, the estimate L_a P_ab summed over the batch
            g_row = scratch if direct else g_rec[a]
            for s in range(nb):
                Da, La = D[s, a], L[s, a]
                P_row, h_s = P_rec[s, a], h[s]
                for j in range(n):
                    p = d * P_row[j] + Da * h_s[j]
                    P_row[j] = p
                    g_row[j] += La * p
                for j in range(n_in):
                    P_in[s, a, j] = d * P_in[s, a, j] + Da * x[s, j]
                    g_in[a, j] += La * P_in[s, a, j]
                P_b[s, a] = d * P_b[s, a] + Da
                g_b[a] += La * P_b[s, a]
            if update:  # and W_rec's row updated with it, the row's sum zeroed
                K.row_update(opt_kind, W_rec[a], g_row, m_rec, v_rec, a, c)
        h[:, :] = h_new
        applied, full = K.scheduled_update(update, 1, opt_kind, ps, acc, ms, vs, steps, hyper)  # W_rec's done
        updates += applied
        clean = not full
    return updates, full


class RFLOEngine(Engine):
    """:func:`rflo_range` for one RFLO rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: RFLO) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self._params, self._acc, self._state = Views(), Views(), Views(self._state_arrays)

    def _state_arrays(self, tensors: tuple[torch.Tensor | None, ...]) -> tuple[np.ndarray, ...]:
        """``h``, the traces ``P_rec``, ``P_in``, ``P_b`` and the feedback ``B`` as the kernel's arrays: a trace
        the windowed form does not carry (alpha = 1) and the feedback of ``feedback="readout"`` as scratch."""
        net, h = self.net, view(tensors[0])
        nb, dtype = h.shape[0], h.dtype
        traces = tuple(view(t) if t.numel() else np.zeros((nb, net.n_hidden, *shape), dtype)
                       for t, shape in zip(tensors[1:4], ((net.n_hidden,), (net.n_in,), ())))
        B = tensors[4]
        return (h, *traces, view(B) if B is not None else np.zeros((net.n_hidden, net.n_out), dtype))

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        windowed = isinstance(state, RFLOWindowState)
        if windowed and state.t > 0:  # a window left pending by the torch path: its estimate to the sum first
            state, g = self.rule.flush(params, state)
            add_into(acc, g)
        h, state = _contiguous(state.net.h, state, lambda s, v: s._replace(net=s.net._replace(h=v)))
        for name in ("P_rec", "P_in", "P_b"):
            _, state = _contiguous(getattr(state, name), state, lambda s, v, k=name: s._replace(**{k: v}))
        readout_fb = self.rule.feedback == "readout"
        h_a, P_rec, P_in, P_b, fb = self._state((h, state.P_rec, state.P_in, state.P_b,
                                                   None if readout_fb else state.B))
        for trace, tensor in ((P_rec, state.P_rec), (P_in, state.P_in), (P_b, state.P_b)):
            if tensor.numel() == 0:  # alpha = 1 in the windowed form: nothing is carried, a zeroed scratch buffer
                trace[...] = 0.0
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = self._params([params[k] for k in ORDER])
        gs = self._acc([acc[k] for k in ORDER])
        losses = np.empty(t1 - t0, h_a.dtype)
        updates, full = rflo_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, self.alpha,
                                   net.n_in, net.n_hidden, net.n_out, h_a, P_rec, P_in, P_b, fb, readout_fb, seq.xs,
                                   seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        if windowed:
            state = state._replace(t=0)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def _contiguous(tensor: torch.Tensor, state: NamedTuple, put) -> tuple[torch.Tensor, NamedTuple]:  # noqa: ANN001
    """``tensor`` (a field of ``state``) and ``state``, with a contiguous copy put in its place where it is not."""
    if tensor.is_contiguous():
        return tensor, state
    tensor = tensor.contiguous()
    return tensor, put(state, tensor)


def build(net: object, rule: object) -> RFLOEngine | None:
    """The engine for ``rule`` on ``net``: RFLO (not a subclass) on the rate RNN (not a subclass) with the loss
    mse or ce; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) is not RFLO or rule.loss not in LOSSES:
        return None
    return RFLOEngine(net, rule)

