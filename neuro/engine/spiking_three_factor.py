"""The three-factor rule on LIF and ALIF, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.three_factor` (Gerstner, Lehmann, Liakoni, Corneil & Brea 2018, "Eligibility
traces and plasticity on behavioral time scales", Front. Neural Circuits 12:53; its module docstring states the
equations) with the error as third factor; the networks :class:`models.lif.LIF` and :class:`models.alif.ALIF`
(exact types), whose step is :mod:`neuro.engine.spiking`'s. Per step :func:`three_factor_range` runs the network
step, the leaky readout, the loss and its error ``eps = dl_t/dy_t``, the third factor ``M = eps B^T`` (``B``
the random feedback, or ``W_out^T``), and per synapse group (``W_in``: ``a = x_t``; ``W_rec``: ``a = z_{t-1}``;
``b``: ``a = 1``)::

    x_k,j <- d_k x_k,j + c_k a_j;        pre_j = sum_k x_k,j
    y_i   <- d_y y_i + c_y post_i        (post: dz/dI = psi vI, dz/db = psi vb for b; or z_t)
    e_ij  <- lambda_e e_ij + y_i pre_j;  ebar_ij <- kappa ebar_ij + e_ij;   g_ij += sum_B M_i ebar_ij
    zbar  <- kappa zbar + z;  cbar <- kappa cbar + 1;   W_out += eps^T zbar;   b_out += sum_B eps cbar

then, at the loop's schedule, the optimizer's update (:func:`neuro.engine.kernels.apply_update`).

Both forms of the rule state are run: the definition's :class:`~neuro.rules.three_factor.ThreeFactorState` and
the windowed path's :class:`~neuro.rules._fast.three_factor.ThreeFactorWindowState`, left with no pending window
(``t = 0``, ``e`` and ``ebar`` current, empty rows, every step's estimate already summed): the state the torch
path's flush leaves at every update and sequence end.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.alif import ALIF
from models.lif import LIF
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import spiking as S
from neuro.engine.base import RangeResult, SequenceArrays, view
from neuro.engine.spiking_engine import SpikingEngine
from neuro.engine.spiking_eprop import compact, expand_into
from neuro.rules._fast import _window
from neuro.rules._fast.three_factor import ThreeFactorWindowState
from neuro.rules.base import add_into
from neuro.rules.three_factor import ThreeFactor

__all__ = ["ThreeFactorEngine", "build", "three_factor_range"]


@numba.njit(cache=True, inline="always")
def _synapse(q, j, lam, ei, bi, gi, yi, pre, kappa, Mi):  # noqa: ANN001, ANN202
    """Source ``j`` of a row, its traces at ``q``: ``e`` (read with ``lam > 0``), ``ebar`` and the estimate ``g +=
    M ebar``."""
    ev = yi * pre[j]
    if lam > 0:
        ev = lam * ei[q] + ev
        ei[q] = ev
    bv = kappa * bi[q] + ev
    bi[q] = bv
    gi[j] += Mi * bv


@numba.njit(cache=True)
def group_step(dec, imp, xk, a, post, c_y, d_y, y, lam, e, kappa, ebar, M, g, ptr, idx, ce, cbar):  # noqa: ANN001, ANN201
    """One synapse group's traces and estimate (module docstring), on every synapse where ``ptr`` is empty, else on
    row ``i``'s synapses ``idx[ptr[i]:ptr[i + 1]]`` (a sparse matrix, compressed rows) with their traces compact,
    ``ce``, ``cbar`` [B, nnz] in place of ``e``, ``ebar`` (:func:`neuro.engine.spiking_eprop.compact`): ``xk`` [K,
    B, n_pre] the presynaptic traces,
    ``a`` [B, n_pre] the activity, ``post`` [B, n] the postsynaptic factor, ``y`` [B, n] its trace (``d_y > 0``),
    ``e``, ``ebar`` [B, n, n_pre] (``e`` read with ``lam > 0``), ``M`` [B, n], ``g`` [n, n_pre] (added to);
    ``dec``, ``imp`` [K] and the other coefficients in the arrays' dtype."""
    nb, n_pre = a.shape
    n = post.shape[1]
    pre = np.empty(n_pre, a.dtype)
    for s in range(nb):
        for j in range(n_pre):
            acc = dec[0] * xk[0, s, j] + imp[0] * a[s, j]
            xk[0, s, j] = acc
            for k in range(1, xk.shape[0]):
                xv = dec[k] * xk[k, s, j] + imp[k] * a[s, j]
                xk[k, s, j] = xv
                acc = acc + xv
            pre[j] = acc
        for i in range(n):
            yi = c_y * post[s, i]
            if d_y > 0:
                yi = d_y * y[s, i] + yi
                y[s, i] = yi
            Mi = M[s, i]
            ei, bi, gi = e[s, i], ebar[s, i], g[i]
            if ptr.size > 0 and lam > 0:
                ce_s, cb_s = ce[s], cbar[s]
                for q in range(ptr[i], ptr[i + 1]):
                    _synapse(q, idx[q], lam, ce_s, cb_s, gi, yi, pre, kappa, Mi)
            elif ptr.size > 0:
                cb_s = cbar[s]
                for q in range(ptr[i], ptr[i + 1]):
                    j = idx[q]
                    bv = kappa * cb_s[q] + yi * pre[j]
                    cb_s[q] = bv
                    gi[j] += Mi * bv
            elif lam > 0:
                for j in range(n_pre):
                    _synapse(j, j, lam, ei, bi, gi, yi, pre, kappa, Mi)
            else:
                for j in range(n_pre):
                    bv = kappa * bi[j] + yi * pre[j]
                    bi[j] = bv
                    gi[j] += Mi * bv


@numba.njit(cache=True)
def three_factor_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, kappa, co, activity,  # noqa: ANN001, ANN201
                       v, i, z, r, a, y, F, x_in, x_rec, x_b, y_in, y_rec, y_b, e_in, e_rec, e_b, q_in, q_rec, q_b,
                       ce_in, cq_in, ce_rec, cq_rec, zbar, cbar, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.spiking_engine.ORDER`;
    ``ms, vs, steps, opt_kind, hyper``: the optimizer; ``cf, ci``: the cell; ``wr`` the
    :class:`~neuro.engine.spiking.Wiring`; ``co`` the rule's coefficients
    (:meth:`ThreeFactorEngine.coefficients`); ``activity``: ``post = z_t``; ``v, i, z, r, a`` [B, n], ``y`` [B,
    n_out] the network; ``F`` [n_out, n] the feedback ``B^T``; per group (``in``, ``rec``, ``b``) the presynaptic
    traces ``x_*`` [K, B, n_pre], the postsynaptic ``y_*`` [B, n], ``e_*``, ``q_*`` (``ebar``) [B, n, n_pre] (a
    sparse matrix's compact in ``ce_*``, ``cq_*`` [B, nnz]);
    ``zbar`` [B, n], ``cbar`` [B, 1]; ``losses`` [t1 - t0] written. Returns the updates applied and whether the
    accumulator holds estimates not yet applied."""
    nb, n = v.shape
    n_out = y.shape[1]
    n_in = xs.shape[2]
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2].reshape((n, 1))
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    K_ = x_in.shape[0]
    dec, imp = co[:K_], co[K_:2 * K_]
    dec_b, imp_b = co[2 * K_:2 * K_ + x_b.shape[0]], co[2 * K_ + x_b.shape[0]:2 * K_ + 2 * x_b.shape[0]]
    c_y, d_y, lam = co[co.size - 3], co[co.size - 2], co[co.size - 1]
    vI, vb = cf[S.VII], cf[S.VB]
    kc = K.cast(kappa, v)
    pre = np.empty((nb, n_in + n), v.dtype)
    zp = np.empty_like(v)
    ones = np.ones((nb, 1), v.dtype)
    I = np.empty_like(v)
    vt = np.empty_like(v)
    psi = np.empty_like(v)
    act = np.empty_like(v)
    M = np.empty_like(v)
    p_syn = np.empty_like(v)
    p_b = np.empty_like(v)
    y_hat = np.empty((nb, n_out), v.dtype)
    eps = np.empty((nb, n_out), v.dtype)
    updates, full = 0, False
    for t in range(t0, t1):
        S.network_step(W_in, W_rec, b, W_out, b_out, cf, ci, wr, xs[t], v, i, z, r, a, y, pre, I, vt, psi, act, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        S.signal(eps, F, M)
        for s in range(nb):
            for j in range(n):
                zp[s, j] = pre[s, n_in + j]
                if activity:
                    p_syn[s, j], p_b[s, j] = z[s, j], z[s, j]
                else:
                    p_syn[s, j], p_b[s, j] = psi[s, j] * vI, psi[s, j] * vb
        group_step(dec, imp, x_in, xs[t], p_syn, c_y, d_y, y_in, lam, e_in, kc, q_in, M, g_in, wr[0], wr[1], ce_in,
                   cq_in)
        group_step(dec, imp, x_rec, zp, p_syn, c_y, d_y, y_rec, lam, e_rec, kc, q_rec, M, g_rec, wr[2], wr[3], ce_rec,
                   cq_rec)
        group_step(dec_b, imp_b, x_b, ones, p_b, c_y, d_y, y_b, lam, e_b, kc, q_b, M, g_b, wr[0][:0], wr[1], ce_in,
                   cq_in)
        S.filtered_readout_grad(eps, z, kc, zbar, cbar.reshape(-1), g_out, g_bout)
        applied, full = S.wired_scheduled_update(K.update_due(t, n_seq, every), -1, opt_kind, ps, acc, ms, vs, steps,
                                                 hyper, wr)
        updates += applied
    return updates, full


def _compact(t: np.ndarray, ptr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-synapse traces ``t`` [B, n, n_pre] of a sparse matrix compact, [B, nnz] (:func:`compact`)."""
    return compact(t[:, :, None], ptr, idx, 0)[:, 0]


def _expand_into(t: np.ndarray, c: np.ndarray, ptr: np.ndarray, idx: np.ndarray) -> None:
    expand_into(t[:, :, None], c[:, None], ptr, idx, 0)


class ThreeFactorEngine(SpikingEngine):
    """:func:`three_factor_range` for one three-factor rule on one LIF or ALIF network (module docstring)."""

    def coefficients(self, dtype: np.dtype) -> np.ndarray:
        """``[d_k, c_k (W_in, W_rec), d, c (b), c_y, d_y, lambda_e]`` in ``dtype``."""
        rule = self.rule
        (dec, imp), (dec_b, imp_b) = rule.traces("W_in"), rule.traces("b")
        return np.array([*dec, *imp, *dec_b, *imp_b, rule.post_impulse, rule.post_decay, rule.eligibility_decay],
                        dtype)

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        rule, net = self.rule, self.net
        windowed = isinstance(state, ThreeFactorWindowState)
        if windowed and state.t > 0:  # a window left pending by the torch path: its estimate to the sum first
            state, g = rule.flush(params, state)
            add_into(acc, g)
        nets = S.net_arrays(state.net)
        dtype, nb, n = nets.v.dtype, nets.v.shape[0], net.n_hidden
        copy = lambda ts: [view(t).copy() for t in ts]  # noqa: E731
        xk = copy(state.x)
        pre = (net.n_in, n, 1)
        ys_ = [view(t).copy() if rule.post_decay > 0 else np.zeros((nb, n), dtype) for t in state.y]
        es = [view(t).copy() if rule.eligibility_decay > 0 else np.zeros((nb, n, m), dtype) for t, m in zip(state.e, pre)]
        qs = copy(state.ebar)
        zbar, cbar = view(state.zbar).copy(), view(state.cbar).copy()
        F = view(params["W_out"]) if rule.feedback == "readout" else np.ascontiguousarray(view(state.B).T)
        o, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, dtype)
        cell = self.cell(dtype)
        wr = self.wr
        sparse = ((0, wr.in_ptr, wr.in_idx), (1, wr.rec_ptr, wr.rec_idx))
        cs = [[_compact(t, ptr, idx) if ptr.size else np.zeros((nb, 0), dtype) for t in (es[g], qs[g])]
              for g, ptr, idx in sparse]  # a sparse matrix's traces, compact
        updates, full = three_factor_range(
            ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, cell.cf, cell.ci, wr,
            float(net.readout_decay), self.coefficients(dtype), rule.post == "activity", *nets, np.ascontiguousarray(F), *xk, *ys_, *es, *qs,
            *cs[0], *cs[1], zbar, cbar, seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        for (g, ptr, idx), (ce, cq) in zip(sparse, cs):
            if ptr.size:
                _expand_into(es[g], ce, ptr, idx)
                _expand_into(qs[g], cq, ptr, idx)
        T = torch.from_numpy
        keep = lambda on, new, old: tuple(T(a) for a in new) if on else old  # noqa: E731
        state = state._replace(net=S.net_state(state.net, nets), x=tuple(T(a) for a in xk),
                               y=keep(rule.post_decay > 0, ys_, state.y), e=keep(rule.eligibility_decay > 0, es, state.e),
                               ebar=tuple(T(a) for a in qs), zbar=T(zbar), cbar=T(cbar))
        if windowed:
            state = state._replace(rows=_window.slots(rule.window, state.rows[0]), t=0)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> ThreeFactorEngine | None:
    """The engine for ``rule`` on ``net``: the three-factor rule (not a subclass) with the error as third factor
    and its three synapse groups, on LIF or ALIF (exact types), loss mse or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) is not ThreeFactor or rule.third != "error" \
            or not SpikingEngine.supports(rule) or net.readout_decay <= 0:
        return None
    return ThreeFactorEngine(net, rule)
