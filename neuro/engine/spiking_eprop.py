"""e-prop on LIF and ALIF, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.eprop` (Bellec et al. 2020, "A solution to the learning dilemma for recurrent
networks of spiking neurons", Nat. Commun. 11:3625, Methods; its module docstring states the equations); the
networks :class:`models.lif.LIF` and :class:`models.alif.ALIF` (exact types), whose step and derivatives are
:mod:`neuro.engine.spiking`'s. Per step :func:`eprop_range` runs the network step, the leaky readout, the loss
and its error ``dE/dy``, the learning signal ``L = dE/dy B^T`` (``B^T = W_out``: symmetric feedback; the fixed
random matrix otherwise) and, per unit ``j`` and presynaptic source ``k`` (``pre = [x_t, z_{t-1}]``), with the
step's derivatives ``D`` (rows ``v, i, a``), ``c = dh/dI``, ``Z = dz/dh``, ``zi = dz/dI``::

    e_jk     = Z . eps_jk + zi pre_k
    eps_jk  <- D eps_jk + c pre_k
    ebar_jk <- kappa ebar_jk + e_jk;             g_jk += L_j ebar_jk
    zbar    <- kappa zbar + z;   bbar <- kappa bbar + 1;   g_out += dE/dy^T zbar,   g_bout += dE/dy bbar

the bias the same with ``pre = 1`` and ``dh/db``, ``dz/db``. The synaptic current's component ``eps^i_jk``
(``i_t = ii i_{t-1} + iI I_t``, the same for every ``j``) is carried once per source, as the windowed path
carries it. The step's estimate is added to the loop's accumulator and at the loop's schedule the optimizer
applies it (:func:`neuro.engine.kernels.apply_update`).

Both forms of the rule state are run: the definition's :class:`~neuro.rules.eprop.EPropState` and the windowed
path's :class:`~neuro.rules._fast.eprop.EPropWindowState`, left with no pending window (``t = 0``, the traces
current, every step's estimate already summed) and with its window's slots holding what the torch path's hold
(the steps since the last window start, at their positions), so that at every update and sequence end the
state equals the torch path's.
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
from neuro.rules._fast.eprop import EPropWindowState, Step
from neuro.rules.base import add_into
from neuro.rules.eprop import EProp

__all__ = ["EPropEngine", "bias_traces", "build", "compact", "eprop_range", "expand_into"]


@numba.njit(cache=True, inline="always")
def _synapse_lif(q, k, ebar, ev, sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj):  # noqa: ANN001, ANN202
    """Source ``k`` of one unit (LIF), its traces at ``q``: ``e``, ``eps_v``, ``ebar`` and the estimate
    ``g += L ebar``."""
    eI, pk, evk = sh[k], p[k], ev[q]
    e = zv * evk + zi * eI + zI * pk
    ev[q] = dvv * evk + dvi * eI + dvI * pk
    b = kc * ebar[q] + e
    ebar[q] = b
    g[k] += Lj * b


@numba.njit(cache=True, inline="always")
def _synapse_alif(q, k, ebar, ev, ea, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj):  # noqa: ANN001, ANN202
    """Source ``k`` of one unit (ALIF), its traces at ``q``: ``e``, ``eps_v``, ``eps_a``, ``ebar`` and ``g += L
    ebar``."""
    eI, pk, evk, eak = sh[k], p[k], ev[q], ea[q]
    e = zv * evk + zi * eI + za * eak + zI * pk
    ev[q] = dvv * evk + dvi * eI + dva * eak + dvI * pk
    ea[q] = zv * evk + zi * eI + zar * eak + zI * pk
    b = kc * ebar[q] + e
    ebar[q] = b
    g[k] += Lj * b


@numba.njit(cache=True, inline="always")
def _traces_lif(ebar, ev, sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj, ptr, idx, j):  # noqa: ANN001, ANN202
    """A span of unit ``j``'s sources (LIF): every one, the traces ``ebar``, ``ev`` the unit's span (``ptr``
    empty: a dense matrix), else its synapses ``idx[ptr[j]:ptr[j + 1]]`` with the traces compact (every
    synapse's of the matrix side by side, synapse ``q`` at ``q``: :func:`compact`)."""
    if ptr.size == 0:
        for k in range(ev.size):
            _synapse_lif(k, k, ebar, ev, sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj)
    else:
        for q in range(ptr[j], ptr[j + 1]):
            _synapse_lif(q, idx[q], ebar, ev, sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj)


@numba.njit(cache=True, inline="always")
def _traces_alif(ebar, ev, ea, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj, ptr, idx, j):  # noqa: ANN001, ANN202
    """:func:`_traces_lif` for ALIF."""
    if ptr.size == 0:
        for k in range(ev.size):
            _synapse_alif(k, k, ebar, ev, ea, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj)
    else:
        for q in range(ptr[j], ptr[j + 1]):
            _synapse_alif(q, idx[q], ebar, ev, ea, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj)


@numba.njit(cache=True, inline="always")
def bias_traces(q, ia, ib, adapt, zv, zi, za, zb, dvv, dvi, dva, dvb, zar, ii, kc):  # noqa: ANN001, ANN201
    """One unit's bias traces ``q = [ebar; eps_v; ...; eps_i]`` (``eps_a`` at ``ia`` where ``adapt``, ``eps_i`` at
    ``ib``) one step on, with ``pre = 1`` and ``c_b = (dv/db, (dz/db), 0)``; returns the new ``ebar``."""
    bv, bi = q[1], q[ib]
    ba = q[ia] if adapt else zv * 0
    e = zv * bv + zi * bi + za * ba + zb
    q[1] = dvv * bv + dvi * bi + dva * ba + dvb
    if adapt:
        q[ia] = zv * bv + zi * bi + zar * ba + zb
    q[ib] = ii * bi
    q[0] = kc * q[0] + e
    return q[0]


@numba.njit(cache=True, inline="always")
def _unit_traces(adapt, ebar, ev, ea, c, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj, ptr, idx, j):  # noqa: ANN001, ANN202
    """One matrix's span of a unit's traces: ``ebar``, ``ev``, ``ea`` the unit's spans (a dense matrix) or, for
    a sparse one, the rows of ``c`` [1 + R, nnz] (the matrix's compact traces, :func:`compact`)."""
    if ptr.size == 0:
        if adapt:
            _traces_alif(ebar, ev, ea, sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj, ptr, idx, j)
        else:
            _traces_lif(ebar, ev, sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj, ptr, idx, j)
    elif adapt:
        _traces_alif(c[0], c[1], c[2], sh, p, g, zv, zi, za, zI, dvv, dvi, dva, dvI, zar, kc, Lj, ptr, idx, j)
    else:
        _traces_lif(c[0], c[1], sh, p, g, zv, zi, zI, dvv, dvi, dvI, kc, Lj, ptr, idx, j)


def compact(el: np.ndarray, ptr: np.ndarray, idx: np.ndarray, off: int) -> np.ndarray:
    """The per-synapse traces ``el`` [B, n, F, n_pre] of one sparse matrix (rows ``ptr``, columns ``idx`` from
    ``off`` in ``n_pre``), compact: [B, F, nnz], synapse ``q`` (row-major) at ``q``."""
    rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    return np.ascontiguousarray(np.moveaxis(el[:, rows, :, idx + off], 0, 2))


def expand_into(el: np.ndarray, c: np.ndarray, ptr: np.ndarray, idx: np.ndarray, off: int) -> None:
    """:func:`compact`'s inverse: ``c`` written back into ``el`` (the entries off the synapses left as they are)."""
    rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    el[:, rows, :, idx + off] = np.moveaxis(c, 2, 0)


@numba.njit(cache=True)
def eprop_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, kappa, n_in,  # noqa: ANN001, ANN201
                v, i, z, r, a, y, F, el, cp_in, cp_rec, shared, eb, zbar, bbar, slot_pre, slot_L, slot_zbar, slot_dE, slot_loc,
                n_reads, window, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.spiking_engine.ORDER`;
    ``ms, vs, steps, opt_kind, hyper``: the optimizer; ``cf, ci``: the cell (:func:`neuro.engine.spiking.cell`);
    ``wr`` the :class:`~neuro.engine.spiking.Wiring` (a sparse matrix's traces run on its synapses only);
    ``v, i, z, r, a`` [B, n], ``y`` [B, n_out] the network; ``F`` [n_out, n] the feedback ``B^T``; ``el`` [B, n,
    1 + R, n_pre] ``[ebar; eps_v; (eps_a)]`` (a sparse matrix's in ``cp_in``, ``cp_rec`` [B, 1 + R, nnz] instead,
    :func:`compact`), ``shared`` [B, 1, n_pre] ``eps_i``, ``eb`` [B, n, 2 + R, 1] the bias's
    ``[ebar; v; (a); i]``, ``zbar`` [B, n], ``bbar`` [1]; the window's slots (``window`` of them, none for the
    definition's state): ``slot_pre`` [W, B, n_pre], ``slot_L``, ``slot_zbar`` [W, B, n], ``slot_dE`` [W, B,
    n_out], ``slot_loc`` [W, n_reads + 2, B, n] (the fields read, then ``I``, ``z``); ``losses`` [t1 - t0]
    written. Returns the updates applied and whether the accumulator holds estimates not yet applied."""
    nb, n = v.shape
    n_out = y.shape[1]
    n_pre = n_in + n
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    adapt = ci[S.ADAPT] == 1
    kf, ki = S.frozen(cf, ci)  # the cell's coefficients as scalars, read once
    kc = K.cast(kappa, v)
    ii, iI, rho = cf[S.II], cf[S.III], cf[S.RHO]
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
        x = xs[t]
        pos = (t % every) % window if window > 0 else 0
        if window > 0:
            slot_loc[pos, 0] = v
            slot_loc[pos, 1] = i
            if n_reads > 2:
                slot_loc[pos, 2] = r if ci[S.REFRACT] else a
            if n_reads > 3:
                slot_loc[pos, 3] = a
        S.network_step(W_in, W_rec, b, W_out, b_out, cf, ci, wr, x, v, i, z, r, a, y, pre, I, vt, psi, act, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        S.signal(eps, F, L)
        S.filtered_readout_grad(eps, z, kc, zbar, bbar, g_out, g_bout)
        fused = K.update_due(t, n_seq, every)
        fuse = fused and wr[2].size == 0  # a dense W_rec: its rows updated in the pass below, each once summed
        if fuse:  # W_rec's step begun
            c_rec = K.row_update_begin(opt_kind, steps[1], hyper, W_rec)
        direct = fuse and clean  # a row's sum is the step's estimate alone: summed in a scratch row instead
        for j in range(n):  # one pass over the units: the traces, the estimate summed over the batch
            gi = g_in[j]
            gr = scr_rec if direct else g_rec[j]  # the scratch row is kept zero by the update
            for s in range(nb):
                p_s, sh = pre[s], shared[s, 0]
                zv, zi, za, zI, zb, dvv, dvi, dva, dvI, dvb = S.jacobian(kf, ki, vt[s, j], z[s, j], psi[s, j],
                                                                         act[s, j])
                Lj = L[s, j]
                ebar, ev = el[s, j, 0], el[s, j, 1]
                ea = el[s, j, 2] if adapt else ev
                _unit_traces(adapt, ebar[:n_in], ev[:n_in], ea[:n_in], cp_in[s], sh[:n_in], p_s[:n_in], gi, zv, zi,
                             za, zI, dvv, dvi, dva, dvI, za + rho, kc, Lj, wr[0], wr[1], j)
                _unit_traces(adapt, ebar[n_in:], ev[n_in:], ea[n_in:], cp_rec[s], sh[n_in:], p_s[n_in:], gr, zv, zi,
                             za, zI, dvv, dvi, dva, dvI, za + rho, kc, Lj, wr[2], wr[3], j)
                q = eb[s, j, :, 0]  # the bias: [ebar; v; (a); i]
                g_b[j] += Lj * bias_traces(q, 2, q.size - 1, adapt, zv, zi, za, zb, dvv, dvi, dva, dvb, za + rho, ii,
                                           kc)
            if fuse:  # W_rec's row updated with its sum, the sum zeroed
                K.row_update(opt_kind, W_rec[j], gr, m_rec, v_rec, j, c_rec)
        for s in range(nb):  # the synaptic current's component, the same for every unit
            p_s, sh = pre[s], shared[s, 0]
            for k in range(n_pre):
                sh[k] = ii * sh[k] + iI * p_s[k]
        if window > 0:
            slot_pre[pos] = pre
            slot_L[pos] = L
            slot_zbar[pos] = zbar
            slot_dE[pos] = eps
            slot_loc[pos, n_reads] = I
            slot_loc[pos, n_reads + 1] = z
        if fused:  # the other parameters' update (W_rec's too where it is sparse)
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, 1 if fuse else -1, (wr,))
            updates += 1
            full, clean = False, True
        else:
            full, clean = True, False
    return updates, full


class EPropEngine(SpikingEngine):
    """:func:`eprop_range` for one e-prop rule on one LIF or ALIF network (module docstring)."""

    def __init__(self, net: LIF, rule: EProp) -> None:
        super().__init__(net, rule)
        adapt = type(net) is ALIF
        self.n_own = 2 if adapt else 1  # per-unit rows: v (and a)
        self.reads = ("v", "i") + (("r",) if net.refractory > 0 else ()) + (("a",) if adapt else ())
        self.slots: tuple | None = None  # (the window's steps as returned, their arrays)

    def _window(self, state: EPropWindowState, dtype: np.dtype) -> tuple:
        """The window's slots as arrays whose views are ``state.steps`` (those returned last, or copies)."""
        if self.slots is not None and self.slots[0] is state.steps:
            return self.slots[1]
        W, (nb, n_pre) = len(state.steps), state.steps[0].pre.shape
        n, n_out, R = self.net.n_hidden, self.net.n_out, len(self.reads)
        arrays = (np.empty((W, nb, n_pre), dtype), np.empty((W, nb, n), dtype), np.empty((W, nb, n), dtype),
                  np.empty((W, nb, n_out), dtype), np.empty((W, R + 2, nb, n), dtype))
        for w, st in enumerate(state.steps):
            for arr, tensor in zip(arrays[:4], st[:4]):
                arr[w] = view(tensor)
            for f, tensor in enumerate(st.local):
                arrays[4][w, f] = view(tensor)
        t = [torch.from_numpy(x) for x in arrays]
        steps = tuple(Step(t[0][w], t[1][w], t[2][w], t[3][w], tuple(t[4][w].unbind(0))) for w in range(W))
        self.slots = (steps, arrays)
        return arrays

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, n_in, n = self.net, self.net.n_in, self.net.n_hidden
        windowed = isinstance(state, EPropWindowState)
        if windowed and state.t > 0:  # a window left pending by the torch path: its estimate to the sum first
            state, g = self.rule.flush(params, state)
            add_into(acc, g)
        hit = self.reuse(state) if windowed else None
        nets = S.net_arrays(state.net) if hit is None else hit[0]
        dtype = nets.v.dtype
        nb = nets.v.shape[0]
        if windowed:
            if hit is None:
                el, shared = _copy(state.eps), _copy(state.shared)
                eb, bbar, zbar = _copy(state.eps_b), _copy(state.bbar).reshape(1), _copy(state.zbar)
            else:
                el, shared, eb, bbar, zbar = hit[1:]
            slots, window = self._window(state, dtype), self.rule.window
        else:  # the definition's eps [B, n, K, n_pre] (fields v, i, (a)) in the windowed layout
            eps, eps_b = view(state.eps), view(state.eps_b)
            own = [0] + ([2] if self.n_own == 2 else [])
            el = np.concatenate([view(state.ebar)[:, :, None], eps[:, :, own]], 2)
            shared = eps[:, :1, 1].copy()
            eb = np.concatenate([view(state.ebar_b)[:, :, None], eps_b[:, :, own], eps_b[:, :, 1:2]], 2)[..., None]
            bbar = _copy(state.bbar).reshape(1)
            empty = np.zeros((0, nb, 0), dtype)
            slots, window = (empty, empty, empty, empty, np.zeros((0, 0, nb, n), dtype)), 0
            zbar = _copy(state.zbar)
        F = view(params["W_out"]) if state.B is None else view(state.B)
        o, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, dtype)
        cell = self.cell(dtype)
        wr, none = self.wr, np.zeros((nb, el.shape[2], 0), dtype)
        if windowed and not wr.dense:
            raise RuntimeError("the compiled e-prop engine was handed the windowed rule state of a sparse network")
        cp_in = compact(el, wr.in_ptr, wr.in_idx, 0) if wr.in_ptr.size else none  # a sparse matrix's traces
        cp_rec = compact(el, wr.rec_ptr, wr.rec_idx, n_in) if wr.rec_ptr.size else none
        updates, full = eprop_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, cell.cf, cell.ci,
                                    wr, float(net.readout_decay), n_in, *nets, np.ascontiguousarray(F), el, cp_in,
                                    cp_rec, shared, eb, zbar, bbar, *slots, len(self.reads), window, seq.xs, seq.ys, seq.mask,
                                    t0, t1, n_seq, every, losses)
        if wr.in_ptr.size:
            expand_into(el, cp_in, wr.in_ptr, wr.in_idx, 0)
        if wr.rec_ptr.size:
            expand_into(el, cp_rec, wr.rec_ptr, wr.rec_idx, n_in)
        T = torch.from_numpy
        if windowed:  # the tensors returned are views of the arrays (the same state again where it was reused)
            if hit is None:
                state = state._replace(net=S.net_state(state.net, nets), eps=T(el), shared=T(shared), eps_b=T(eb),
                                       zbar=T(zbar), bbar=T(bbar.reshape(())), steps=self.slots[0], t=0)
            self.keep(state, (nets, el, shared, eb, bbar, zbar))
        else:
            net_state = S.net_state(state.net, nets)
            K_ = len(net.trace_fields)
            eps = np.empty((nb, n, K_, n_in + n), dtype)
            eps[:, :, 0], eps[:, :, 1] = el[:, :, 1], shared[:, None, 0]
            eps_b = np.empty((nb, n, K_), dtype)
            eps_b[:, :, 0], eps_b[:, :, 1] = eb[:, :, 1, 0], eb[:, :, -1, 0]
            if self.n_own == 2:
                eps[:, :, 2], eps_b[:, :, 2] = el[:, :, 2], eb[:, :, 2, 0]
            state = state._replace(net=net_state, eps=T(eps), eps_b=T(eps_b), ebar=T(el[:, :, 0].copy()),
                                   ebar_b=T(eb[:, :, 0, 0].copy()), zbar=T(zbar), bbar=T(bbar.reshape(())))
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def _copy(t: torch.Tensor) -> np.ndarray:
    return view(t.detach().clone(memory_format=torch.contiguous_format))


def build(net: object, rule: object) -> EPropEngine | None:
    """The engine for ``rule`` on ``net``: e-prop (not a subclass) with symmetric or random feedback and every
    eligibility component on LIF or ALIF (exact types), loss mse or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) is not EProp or rule.feedback == "adaptive" \
            or rule.adaptive_eligibility is False or not SpikingEngine.supports(rule):
        return None
    return EPropEngine(net, rule)
