"""OTTT on LIF and ALIF, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.ottt` (Xiao, Meng, Zhang, He & Lin 2022, "Online Training Through Time for Spiking
Neural Networks", NeurIPS, Sec. 4; its module docstring states the equations): the instantaneous error of each
step times presynaptic traces that are the model's sub-threshold filter of the sources ``s_t = [x_t,
z_{t-1}]``. The networks :class:`models.lif.LIF` and :class:`models.alif.ALIF` (exact types), whose step is
:mod:`neuro.engine.spiking`'s; their filter (``net.linear_filter()``) reaches the rows ``v`` and ``i`` of the
traces only (ALIF's ``a`` row stays 0). Per step :func:`ottt_range` runs the network step, the leaky readout, the
loss and its error ``g_y``, and::

    P_v <- vv P_v + vi P_i + vI s_t;     P_i <- ii P_i + iI s_t;     (Q the same with the source vb on v, 0 on i)
    L = g_y W_out;   g_I = L psi vI  (= L dz/dI)
    W_in, W_rec += (L psi)^T P_v    (= sum_f L dz/dh_f P_{t-1,f} + L dz/dI s_t, the paper's g_I^T a_t)
    b += sum_B L psi Q_v;   zbar <- kappa zbar + z;   obar <- kappa obar + 1;   W_out += g_y^T zbar;  b_out += obar sum_B g_y

Mode "O" adds each step's term to the loop's accumulator (the optimizer applies it at the loop's schedule);
mode "A" sums it in the rule's own sum, handed to the accumulator and applied at the sequence's end.

Both forms of the rule state are run: the definition's :class:`~neuro.rules.ottt.OTTTState` and the windowed
path's :class:`~neuro.rules._fast.ottt.OTTTWindowState` (traces divided by ``vI``), left with no pending window
(``k = 0``, every step's term already summed) and its buffer holding what the torch path's holds (each step's
``(g_I, P_v / vI, Q_v / vI, g_y, zbar, obar)`` at its position in its window).
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
from neuro.engine.spiking_engine import ORDER, Slots, SpikingEngine
from neuro.rules._fast.ottt import OTTTWindowState
from neuro.rules.base import add_into
from neuro.rules.ottt import OTTT

__all__ = ["OTTTEngine", "build", "ottt_range"]


@numba.njit(cache=True)
def ottt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, kappa, mode_a, racc,  # noqa: ANN001, ANN201
               v, i, z, r, a, y, Pv, Pi, Q, zbar, obar, b_gI, b_a, b_q, b_gy, b_zbar, b_obar, window, xs, ys, mask,
               t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the loop's summed estimates, flat, in
    :data:`~neuro.engine.spiking_engine.ORDER`; ``ms, vs, steps, opt_kind, hyper``: the optimizer; ``cf, ci``:
    the cell; ``wr`` the :class:`~neuro.engine.spiking.Wiring`; ``mode_a``: mode "A" (each step's term summed into ``racc``, the rule's sum, which goes to ``acc``
    at the sequence's end) or "O" (into ``acc``); ``v, i, z, r, a`` [B, n], ``y`` [B, n_out] the network; ``Pv``,
    ``Pi`` [B, n_in + n] the traces' rows, ``Q`` [2] the bias's, ``zbar`` [B, n], ``obar`` [1]; the windowed
    path's buffer (``window`` entries, none for the definition's state): ``b_gI``, ``b_zbar`` [W, B, n], ``b_a``
    [W, B, n_in + n], ``b_q``, ``b_obar`` [W], ``b_gy`` [W, B, n_out]; ``losses`` [t1 - t0] written. Returns the
    updates applied and whether the accumulator holds estimates not yet applied."""
    nb, n = v.shape
    n_out = y.shape[1]
    n_in = xs.shape[2]
    n_pre = n_in + n
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g = racc if mode_a else acc
    g_in, g_rec, g_b = g[0].reshape((n, n_in)), g[1].reshape((n, n)), g[2]
    g_out, g_bout = g[3].reshape((n_out, n)), g[4]
    vv, vi, vI, vb, ii, iI = cf[S.VV], cf[S.VI], cf[S.VII], cf[S.VB], cf[S.II], cf[S.III]
    kc = K.cast(kappa, v)
    pre = np.empty((nb, n_pre), v.dtype)
    I = np.empty_like(v)
    vt = np.empty_like(v)
    psi = np.empty_like(v)
    act = np.empty_like(v)
    L = np.empty_like(v)
    y_hat = np.empty((nb, n_out), v.dtype)
    eps = np.empty((nb, n_out), v.dtype)
    m_rec, v_rec = ms[1].reshape((ms[1].size // n, n)), vs[1].reshape((vs[1].size // n, n))  # by rows (or none)
    scr_rec = np.zeros(n, v.dtype)
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        S.network_step(W_in, W_rec, b, W_out, b_out, cf, ci, wr, xs[t], v, i, z, r, a, y, pre, I, vt, psi, act, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        S.signal(eps, W_out, L)
        for s in range(nb):  # the traces of step t
            pv, pi, p_s = Pv[s], Pi[s], pre[s]
            for k in range(n_pre):
                pv[k] = vv * pv[k] + vi * pi[k] + vI * p_s[k]
                pi[k] = ii * pi[k] + iI * p_s[k]
        Q[0], Q[1] = vv * Q[0] + vi * Q[1] + vb, ii * Q[1]
        for s in range(nb):
            for j in range(n):
                L[s, j] = L[s, j] * psi[s, j]  # L psi: d l_t / d v~
        last = t == n_seq - 1
        fused = not mode_a and (last or (t + 1) % every == 0)
        fuse = fused and wr[2].size == 0  # a dense W_rec: its rows updated in the pass below, each once summed
        if fuse:  # W_rec's step begun
            c_rec = K.row_update_begin(opt_kind, steps[1], hyper, W_rec)
        direct = fuse and clean  # a row's sum is the step's estimate alone: summed in a scratch row instead
        for j in range(n):
            gi = g_in[j]
            gr = scr_rec if direct else g_rec[j]  # the scratch row is kept zero by the update
            for s in range(nb):
                e = L[s, j]
                pv = Pv[s]
                S.wired_axpy(gi, e, pv[:n_in], wr[0], wr[1], j)
                S.wired_axpy(gr, e, pv[n_in:], wr[2], wr[3], j)
                g_b[j] += e * Q[0]
            if fuse:  # W_rec's row updated with its sum, the sum zeroed
                K.row_update(opt_kind, W_rec[j], gr, m_rec, v_rec, j, c_rec)
        S.filtered_readout_grad(eps, z, kc, zbar, obar, g_out, g_bout)
        if window > 0:
            pos = (t % every) % window
            for s in range(nb):
                for j in range(n):
                    b_gI[pos, s, j] = L[s, j] * vI
                for k in range(n_pre):
                    b_a[pos, s, k] = Pv[s, k] / vI
            b_q[pos] = Q[0] / vI
            b_gy[pos] = eps
            b_zbar[pos] = zbar
            b_obar[pos] = obar[0]
        if last and mode_a:  # the sequence's sum to the loop's accumulator, the rule's sum restarted
            for p in range(len(acc)):
                acc[p][:] += racc[p]
                racc[p][:] = 0.0
        if fused:  # the other parameters' update (W_rec's too where it is sparse)
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, 1 if fuse else -1, (wr,))
            updates += 1
            full, clean = False, True
        elif last:
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, -1, (wr,))
            updates += 1
            full, clean = False, True
        else:
            full, clean = full or not mode_a, False
    return updates, full


class OTTTEngine(SpikingEngine):
    """:func:`ottt_range` for one OTTT rule on one LIF or ALIF network (module docstring)."""

    def __init__(self, net: LIF, rule: OTTT) -> None:
        super().__init__(net, rule)
        self.slots = Slots()
        self.c_v = float(net.linear_filter().dh_dI[net.trace_fields.index("v")])

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        rule, net = self.rule, self.net
        windowed = isinstance(state, OTTTWindowState)
        if windowed and state.k > 0:  # a window left pending by the torch path: to the sum first
            state, g = rule.flush(params, state)
            if g is not None:
                add_into(acc, g)
        nets = S.net_arrays(state.net)
        dtype, nb, n = nets.v.dtype, nets.v.shape[0], net.n_hidden
        n_pre, cv = net.n_in + n, self.c_v
        Q = np.zeros(2, dtype)
        if windowed:
            fast = rule.fast_path
            rows = {f: view(p) * cv for f, p in zip(fast.rows, state.P)}
            Pv, Pi = rows[0].copy(), rows[1].copy()
            for f, q in zip(fast.q_rows, state.Q):
                Q[f] = q * cv
            obar = np.array([state.obar], dtype)
            buf, window = self.slots.of(state.buf, dtype), len(state.buf)
        else:
            P = view(state.P)
            Pv, Pi, Q[:] = P[:, 0].copy(), P[:, 1].copy(), view(state.Q)[:2]
            obar = view(state.obar).reshape(1).copy()
            shapes = ((nb, n), (nb, n_pre), (), (nb, net.n_out), (nb, n), ())
            buf, window = [np.zeros((0, *s), dtype) for s in shapes], 0
        zbar = view(state.zbar).copy()
        keys = list(params)
        mode_a = rule.mode == "A"
        racc = tuple(view(state.acc[keys.index(k)]).copy().reshape(-1) for k in ORDER) if mode_a else \
            tuple(np.zeros(0, dtype) for _ in ORDER)
        o, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, dtype)
        cell = self.cell(dtype)
        updates, full = ottt_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, cell.cf, cell.ci, self.wr,
                                   float(net.readout_decay), mode_a, racc, *nets, Pv, Pi, Q, zbar, obar, *buf, window,
                                   seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        T = torch.from_numpy
        new = {"net": S.net_state(state.net, nets), "zbar": T(zbar)}
        if mode_a:
            sums = dict(zip(ORDER, racc))
            new["acc"] = tuple(T(sums[k].reshape(params[k].shape)) for k in keys)
        if windowed:
            P = {0: Pv, 1: Pi}
            new.update(P=tuple(T(P[f] / cv) for f in fast.rows), Q=tuple(float(Q[f] / cv) for f in fast.q_rows),
                       obar=float(obar[0]), buf=self.slots.entries(), k=0)
        else:
            P = np.zeros(state.P.shape, dtype)
            P[:, 0], P[:, 1] = Pv, Pi
            Qd = np.zeros(state.Q.shape, dtype)
            Qd[:2] = Q
            new.update(P=T(P), Q=T(Qd), obar=T(obar.reshape(())))
        return RangeResult(state=state._replace(**new), losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> OTTTEngine | None:
    """The engine for ``rule`` on ``net``: OTTT (not a subclass), mode "A" or "O", on LIF or ALIF (exact types),
    loss mse or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) is not OTTT or not SpikingEngine.supports(rule):
        return None
    return OTTTEngine(net, rule)
