"""Exact RTRL on the rate RNN, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.rtrl` (Williams & Zipser 1989; its module docstring states the equations, its fast
path :mod:`neuro.rules._fast.rtrl` their closed form on the rate RNN); the network :class:`models.rate.RateRNN`
(not a subclass). With ``D_t = alpha (1 - tanh(u_t)^2)`` the influence matrix ``M_t = dh_t/dtheta`` [B, n, P]
(``theta`` the parameters flattened in sorted key order, as the rule's state holds it) and the estimate are, per
step, what :func:`rtrl_range` computes::

    J_t = diag(D_t) W_rec + (1 - alpha) I
    M_t = J_t M_{t-1} + I_t        I_t[k, W_rec[k, j]] = D_t,k h_{t-1,j}   I_t[k, W_in[k, j]] = D_t,k x_t,j
                                   I_t[k, b_k] = D_t,k                      (zero on the readout's columns)
    dl_t/dtheta = (W_out^T e_t) M_t  on W_in, W_rec, b;   e_t h_t^T, e_t  on W_out, b_out     (e_t = dl_t/dy_t)

summed over the batch (``e_t`` carries the loss's ``1/B``), after the network step
(:func:`neuro.engine.kernels.rate_step`), the readout and the loss's error; at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) the optimizer's update with the summed estimate, which zeroes
it. The readout's columns of ``M`` stay zero (nothing of the state depends on the readout) and are not read.

Both forms of the rule (the definition and the closed-form path) hold the same state,
:class:`~neuro.rules.rtrl.RTRLState`; the engine leaves its ``M`` the current influence matrix (one of two
buffers it alternates between, handed out in the state). ``M`` costs ``n P`` numbers a sample and a step
``O(n^2 P) = O(n^4)``: :func:`build` declines networks whose influence matrix exceeds :data:`MAX_BYTES`, which
stay on the torch path.
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
from neuro.rules.rtrl import RTRL, RTRLState

__all__ = ["MAX_BYTES", "RTRLEngine", "build", "rtrl_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}
#: the largest influence matrix (one sample, float64) the engine runs
MAX_BYTES = 64 * 2 ** 20


@numba.njit(cache=True)
def rtrl_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, n_in, n, n_out,  # noqa: ANN001, ANN201
               h, M, M2, o_in, o_rec, o_b, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``,
    ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h`` [B, n]
    the network state; ``M`` [B, n, P] the influence matrix and ``M2`` a buffer of its shape (the steps alternate
    between them); ``o_in``, ``o_rec``, ``o_b`` the first columns of ``W_in``, ``W_rec``, ``b`` in ``M``; ``xs``
    [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B]; ``losses`` [t1 - t0] (written). All changed in place.
    Returns the updates applied, whether the accumulator holds estimates not yet applied, and whether the
    current influence matrix is in ``M2``."""
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0], acc[1], acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    nb = h.shape[0]
    h_new = np.empty_like(h)
    D = np.empty_like(h)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    r = np.empty(n, h.dtype)
    leak = K.cast(1.0 - alpha, h)
    # the columns of W_in, then of W_rec and b (the readout's between or after them are zero and skipped)
    spans = np.array([[o_in, o_in + n * n_in], [o_rec, o_rec + n * n], [o_b, o_b + n]])
    updates, full, flipped = 0, False, False
    for t in range(t0, t1):
        x = xs[t]
        K.rate_step(W_in, W_rec, b, alpha, x, h, h_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        src, dst = (M2, M) if flipped else (M, M2)
        for s in range(nb):
            Ms, Md = src[s], dst[s]
            for a in range(n):  # row a of M_t: sum_i J_ai M_{t-1}[i], then the immediate terms
                Da = D[s, a]
                for q in range(3):
                    c0, c1 = spans[q, 0], spans[q, 1]
                    row = Md[a, c0:c1]
                    row[:] = 0.0
                    for i in range(n):
                        J = Da * W_rec[a, i]
                        if i == a and alpha != 1.0:
                            J = J + leak
                        src_row = Ms[i, c0:c1]
                        for c in range(c1 - c0):
                            row[c] += J * src_row[c]
                for j in range(n):
                    Md[a, o_rec + a * n + j] += h[s, j] * Da
                for j in range(n_in):
                    Md[a, o_in + a * n_in + j] += x[s, j] * Da
                Md[a, o_b + a] += Da
            for a in range(n):  # r = W_out^T e: the loss's gradient at h_t
                ra = K.cast(0.0, h)
                for k in range(n_out):
                    ra += eps[s, k] * W_out[k, a]
                r[a] = ra
            for q in range(3):  # the estimate r M_t on W_in, W_rec, b
                c0, c1 = spans[q, 0], spans[q, 1]
                g = g_in if q == 0 else (g_rec if q == 1 else g_b)
                for a in range(n):
                    ra = r[a]
                    row = Md[a, c0:c1]
                    for c in range(c1 - c0):
                        g[c] += ra * row[c]
            for k in range(n_out):  # the readout's exact gradient
                e = eps[s, k]
                for j in range(n):
                    g_out[k, j] += e * h_new[s, j]
                g_bout[k] += e
        flipped = not flipped
        h[:, :] = h_new
        applied, full = K.scheduled_update(K.update_due(t, n_seq, every), -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
    return updates, full, flipped


class RTRLEngine(Engine):
    """:func:`rtrl_range` for one RTRL rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: RTRL) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None  # the two influence buffers
        self._params, self._acc = Views(), Views()
        self._columns: tuple[int, int, int] | None = None  # where W_in, W_rec, b start in M's columns

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        h = state.net.h if state.net.h.is_contiguous() else state.net.h.contiguous()
        M = state.M if state.M.is_contiguous() else state.M.contiguous()
        pair = self._pair
        if pair is not None and M is pair[0]:
            other = pair[1]
        elif pair is not None and M is pair[1]:
            other = pair[0]
        else:
            other = torch.empty_like(M)
            self._pair = (M, other)
        if self._columns is None:
            sl = self.rule._flat(params).param_slices()
            self._columns = (sl["W_in"].start, sl["W_rec"].start, sl["b"].start)
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = self._params([params[k] for k in ORDER])
        gs = self._acc([acc[k] for k in ORDER])
        losses = np.empty(t1 - t0, view(h).dtype)
        updates, full, flipped = rtrl_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, self.alpha,
                                            net.n_in, net.n_hidden, net.n_out, view(h), view(M), view(other),
                                            *self._columns, seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        state = RTRLState(net=state.net._replace(h=h), M=other if flipped else M)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> RTRLEngine | None:
    """The engine for ``rule`` on ``net``: RTRL (not a subclass) on the rate RNN (not a subclass) with the loss mse
    or ce and an influence matrix of at most :data:`MAX_BYTES` a sample in float64; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) is not RTRL or rule.loss not in LOSSES:
        return None
    n = net.n_hidden
    n_params = n * (net.n_in + n + 1 + net.n_out) + net.n_out
    if 8 * n * n_params > MAX_BYTES:
        return None
    return RTRLEngine(net, rule)
