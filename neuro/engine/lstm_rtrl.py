"""RTRL on the LSTM, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.rtrl` (Williams & Zipser 1989): the influence matrix ``M_t = ds_t/dtheta``
[B, S, P] of the state ``s = (h, c)`` (``S = 2n``, ``h`` rows first) on the parameters flattened in sorted key
order (``W_in, W_out, W_rec, b, b_out``, as :class:`neuro.rules._onestep.FlatStep` lays them out), carried
forward as ``M_t = J_t M_{t-1} + I_t``, and the estimate of each step ``dl_t/dtheta``. The network
:class:`models.lstm.LSTM` (not a subclass), its cell from :mod:`neuro.engine.lstm`. With the cell's
derivatives ``d`` (:func:`neuro.engine.lstm.derivatives`) the step's Jacobians are closed form: the
pre-activations' rows ``du_t/dtheta = W_rec M^h_{t-1} + I^u_t`` (``I^u_t``: row ``r`` of ``W_in``, ``W_rec``,
``b`` gets ``x_t``, ``h_{t-1}``, ``1``), then, per unit, the cell's tangent (:func:`neuro.engine.lstm.tangent`)::

    M^c_t = dc/du_i du_i + dc/du_f du_f + dc/du_g du_g + f M^c_{t-1}        M^h_t = dh/du_o du_o + dh/dc M^c_t

and the estimate ``(dl_t/dh_t) M^h_t`` plus the readout's exact gradient ``eps_t h_t^T``, ``eps_t``, with
``dl_t/dh_t = W_out^T eps_t`` (the definition's ``(dl_t/ds_{t-1}) M_{t-1} + partial l_t/partial theta``, the
same quantity in another order), averaged over the batch as the loss is. At the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) the optimizer's update with the summed estimates.

:func:`lstm_rtrl_range` forms ``W_rec M^h_{t-1}`` in column blocks (the four rows of a unit at once) and adds
``I^u_t`` after, in each unit's few columns; ``M^c`` is updated in place (its row ``a`` is read by unit ``a``
only), ``M^h`` through one scratch copy. The rule state is the torch path's throughout (``M`` and ``(h, c)``
changed in place). The builder runs networks whose influence matrix per sample is at most :data:`MAX_BYTES`.
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
from neuro.engine.base import Engine, RangeResult, SequenceArrays, flat, view
from neuro.engine.optim import OptimizerArrays
from neuro.rules.rtrl import RTRL, RTRLState

__all__ = ["LSTMRTRLEngine", "MAX_BYTES", "build", "lstm_rtrl_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}
#: the largest influence matrix of one sample (float64) the engine runs
MAX_BYTES = 64 * 2 ** 20
BLOCK = 256  # columns of M per block of W_rec M^h


@numba.njit(cache=True)
def lstm_rtrl_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, n_in, n, n_out,  # noqa: ANN001, ANN201
                    o_in, o_rec, o_b, h, c, M, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``, ``steps``,
    ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``o_in``, ``o_rec``,
    ``o_b``: the first columns of ``W_in``, ``W_rec``, ``b`` in ``M``; ``h``, ``c`` [B, n] the network state,
    ``M`` [B, 2n, P] the influence matrix; ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B];
    ``losses`` [t1 - t0] (written). All changed in place. Returns the updates applied and whether the
    accumulator holds estimates not yet applied."""
    W_in, W_rec, b = ps[0].reshape((4 * n, n_in)), ps[1].reshape((4 * n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    nb, P = h.shape[0], M.shape[2]
    one = K.cast(1.0, h)
    h_new, c_new, dl_dh = np.empty_like(h), np.empty_like(h), np.empty_like(h)
    D = np.empty((nb, n, 6), h.dtype)  # per unit: the cell's derivatives and f
    y_hat, eps = np.empty((nb, n_out), h.dtype), np.empty((nb, n_out), h.dtype)
    Mh = np.empty((n, P), h.dtype)  # M^h_t while M^h_{t-1} is still read
    Q = np.empty((4, BLOCK), h.dtype)
    gsum = np.empty(P, h.dtype)
    updates, full = 0, False
    for t in range(t0, t1):
        x = xs[t]
        L.step_derivatives(W_in, W_rec, b, x, h, c, h_new, c_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):  # dl/dh_t, and the readout's exact gradient
            for a in range(n):
                v = K.cast(0.0, h)
                for k in range(n_out):
                    v += eps[s, k] * W_out[k, a]
                dl_dh[s, a] = v
            for k in range(n_out):
                e = eps[s, k]
                g_bout[k] += e
                for q in range(n):
                    g_out[k, q] += e * h_new[s, q]
        gsum[:] = 0.0
        for s in range(nb):
            Ms = M[s]
            for q0 in range(0, P, BLOCK):  # W_rec M^h_{t-1}, a column block at a time, and the cell's tangent
                q1 = min(P, q0 + BLOCK)
                w = q1 - q0
                for a in range(n):
                    Q[:, :w] = 0.0
                    for j in range(n):
                        w0, w1, w2, w3 = W_rec[a, j], W_rec[n + a, j], W_rec[2 * n + a, j], W_rec[3 * n + a, j]
                        m = Ms[j, q0:q1]
                        for q in range(w):
                            mq = m[q]
                            Q[0, q] += w0 * mq
                            Q[1, q] += w1 * mq
                            Q[2, q] += w2 * mq
                            Q[3, q] += w3 * mq
                    d = (D[s, a, 0], D[s, a, 1], D[s, a, 2], D[s, a, 3], D[s, a, 4])
                    f, la = D[s, a, 5], dl_dh[s, a]
                    mc, mh = Ms[n + a, q0:q1], Mh[a, q0:q1]
                    gs = gsum[q0:q1]
                    for q in range(w):
                        vc, vh = L.tangent(d, f, Q[0, q], Q[1, q], Q[2, q], Q[3, q], mc[q])
                        mc[q] = vc
                        mh[q] = vh
                        gs[q] += la * vh
            for a in range(n):  # I^u_t: row r = k n + a of W_in, W_rec, b gets x_t, h_{t-1}, 1
                d4, la = D[s, a, 4], dl_dh[s, a]
                mc, mh = Ms[n + a], Mh[a]
                for k in range(4):
                    r = k * n + a
                    dk = D[s, a, 3] if k == 3 else D[s, a, k]
                    for j in range(n_in + n + 1):
                        if j < n_in:
                            col, v = o_in + r * n_in + j, x[s, j]
                        elif j < n_in + n:
                            col, v = o_rec + r * n + j - n_in, h[s, j - n_in]
                        else:
                            col, v = o_b + r, one
                        if k == 3:
                            dh_ = dk * v
                        else:
                            dc_ = dk * v
                            mc[col] += dc_
                            dh_ = d4 * dc_
                        mh[col] += dh_
                        gs_col = la * dh_
                        gsum[col] += gs_col
            Ms[:n] = Mh
        h[:, :] = h_new
        c[:, :] = c_new
        for p, o0, size in ((0, o_in, 4 * n * n_in), (1, o_rec, 4 * n * n), (2, o_b, 4 * n)):
            ga = acc[p]
            for q in range(size):
                ga[q] += gsum[o0 + q]
        applied, full = K.scheduled_update(K.update_due(t, n_seq, every), -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
    return updates, full


class LSTMRTRLEngine(Engine):
    """:func:`lstm_rtrl_range` for one RTRL rule on one LSTM (module docstring)."""

    def __init__(self, net: LSTM, rule: RTRL) -> None:
        self.net, self.rule = net, rule
        self.loss_kind = LOSSES[rule.loss]
        n, n_in, n_out = net.n_hidden, net.n_in, net.n_out
        sizes = {"W_in": 4 * n * n_in, "W_out": n_out * n, "W_rec": 4 * n * n, "b": 4 * n, "b_out": n_out}
        self.offsets = {k: sum(sizes[q] for q in sorted(sizes) if q < k) for k in sizes}

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        fields = {k: v if v.is_contiguous() else v.contiguous() for k, v in state.net._asdict().items()}
        M = state.M if state.M.is_contiguous() else state.M.contiguous()
        state = RTRLState(net=state.net._replace(**fields), M=M)
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = tuple(flat(params[k]) for k in ORDER)
        gs = tuple(flat(acc[k]) for k in ORDER)
        losses = np.empty(t1 - t0, view(M).dtype)
        off = self.offsets
        updates, full = lstm_rtrl_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, net.n_in,
                                        net.n_hidden, net.n_out, off["W_in"], off["W_rec"], off["b"],
                                        view(fields["h"]), view(fields["c"]), view(M), seq.xs, seq.ys, seq.mask,
                                        t0, t1, n_seq, every, losses)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> LSTMRTRLEngine | None:
    """The engine for ``rule`` on ``net``: RTRL (not a subclass) on the LSTM (not a subclass) with the loss mse or
    ce, where one sample's influence matrix in float64 is at most :data:`MAX_BYTES`; ``None`` otherwise."""
    if type(net) is not LSTM or type(rule) is not RTRL or rule.loss not in LOSSES:
        return None
    n = net.n_hidden
    P = 4 * n * (net.n_in + n + 1) + net.n_out * (n + 1)
    if 2 * n * P * 8 > MAX_BYTES:
        return None
    return LSTMRTRLEngine(net, rule)
