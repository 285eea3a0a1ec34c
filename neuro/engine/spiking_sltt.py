"""SLTT on LIF and ALIF, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.sltt` (Meng, Xiao, Yan, Wang, Lin & Luo 2023, "Towards Memory- and Time-Efficient
Backpropagation for Training Spiking Neural Networks", ICCV, Sec. 4; its module docstring states the
equations): the gradient of each step's loss through that step alone, every state carried to the next step
detached. The networks :class:`models.lif.LIF` and :class:`models.alif.ALIF` (exact types), whose step is
:mod:`neuro.engine.spiking`'s. Per step :func:`sltt_range` runs the network step, the leaky readout, the loss and
its error ``g_y = d l_t / d y_t``, and adds the step's term::

    d l_t / d z_t = g_y W_out;      g_I = (d l_t / d z_t) dz/dI        (dz/dI = psi vI)
    W_in += g_I^T x_t;   W_rec += g_I^T z_{t-1};   b += sum_B (d l_t / d z_t) dz/db
    W_out += g_y^T z_t;  b_out += sum_B g_y

then, at the loop's schedule, the optimizer's update (:func:`neuro.engine.kernels.apply_update`).

Both forms of the rule state are run: the definition's :class:`~neuro.rules.sltt.SLTTState` (the network alone)
and the windowed path's :class:`~neuro.rules._fast.sltt.SLTTWindowState`, left with no pending window (``k =
0``, every step's term already summed) and its buffer holding what the torch path's holds (each step's ``(g_I,
x_t, z_{t-1}, g_b, g_y, z_t)`` at its position in its window), so that at every update and sequence end the
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
from neuro.engine.base import RangeResult, SequenceArrays
from neuro.engine.spiking_engine import Slots, SpikingEngine
from neuro.rules._fast.sltt import SLTTWindowState
from neuro.rules.base import add_into
from neuro.rules.sltt import SLTT

__all__ = ["SLTTEngine", "build", "sltt_range"]


@numba.njit(cache=True)
def sltt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, v, i, z, r, a, y,  # noqa: ANN001, ANN201
               b_gI, b_x, b_p, b_gb, b_gy, b_z, window, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.spiking_engine.ORDER`;
    ``ms, vs, steps, opt_kind, hyper``: the optimizer; ``cf, ci``: the cell (:func:`neuro.engine.spiking.cell`);
    ``wr`` the :class:`~neuro.engine.spiking.Wiring`; ``v, i, z, r, a`` [B, n], ``y`` [B, n_out] the network; the windowed path's buffer (``window`` entries, none
    for the definition's state): ``b_gI``, ``b_p``, ``b_z`` [W, B, n], ``b_x`` [W, B, n_in], ``b_gb`` [W, n],
    ``b_gy`` [W, B, n_out]; ``losses`` [t1 - t0] written. Returns the updates applied and whether the accumulator
    holds estimates not yet applied."""
    nb, n = v.shape
    n_out = y.shape[1]
    n_in = xs.shape[2]
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    vI, vb = cf[S.VII], cf[S.VB]
    one = K.cast(1.0, v)
    pre = np.empty((nb, n_in + n), v.dtype)
    I = np.empty_like(v)
    vt = np.empty_like(v)
    psi = np.empty_like(v)
    act = np.empty_like(v)
    dl_dz = np.empty_like(v)
    gI = np.empty_like(v)
    gb = np.empty(n, v.dtype)
    y_hat = np.empty((nb, n_out), v.dtype)
    eps = np.empty((nb, n_out), v.dtype)
    m_rec, v_rec = ms[1].reshape((ms[1].size // n, n)), vs[1].reshape((vs[1].size // n, n))  # by rows (or none)
    scr_rec = np.zeros(n, v.dtype)
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        S.network_step(W_in, W_rec, b, W_out, b_out, cf, ci, wr, xs[t], v, i, z, r, a, y, pre, I, vt, psi, act, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        S.signal(eps, W_out, dl_dz)
        gb[:] = 0.0
        for s in range(nb):
            for j in range(n):
                gI[s, j] = dl_dz[s, j] * (psi[s, j] * vI)
                gb[j] += dl_dz[s, j] * (psi[s, j] * vb)
        if wr[2].size > 0:  # a sparse W_rec: gI z_{t-1}^T on the synapses of the spikes
            for s in range(nb):
                S.spike_outer(g_rec, gI[s], pre[s, n_in:], wr[4], wr[5])
        fused = K.update_due(t, n_seq, every)
        fuse = fused and wr[2].size == 0  # a dense W_rec: its rows updated in the pass below, each once summed
        if fuse:  # W_rec's step begun
            c_rec = K.row_update_begin(opt_kind, steps[1], hyper, W_rec)
        direct = fuse and clean  # a row's sum is the step's estimate alone: summed in a scratch row instead
        for j in range(n):
            gi = g_in[j]
            gr = scr_rec if direct else g_rec[j]  # the scratch row is kept zero by the update
            for s in range(nb):
                e = gI[s, j]
                p_s = pre[s]
                S.wired_axpy(gi, e, p_s[:n_in], wr[0], wr[1], j)
                if wr[2].size == 0:
                    S.wired_axpy(gr, e, p_s[n_in:], wr[2], wr[3], j)
            g_b[j] += gb[j]
            if fuse:  # W_rec's row updated with its sum, the sum zeroed
                K.row_update(opt_kind, W_rec[j], gr, m_rec, v_rec, j, c_rec)
        S.readout_grad(eps, z, one, g_out, g_bout)
        if window > 0:
            pos = (t % every) % window
            b_gI[pos] = gI
            b_x[pos] = pre[:, :n_in]
            b_p[pos] = pre[:, n_in:]
            b_gb[pos] = gb
            b_gy[pos] = eps
            b_z[pos] = z
        if fused:  # the other parameters' update (W_rec's too where it is sparse)
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, 1 if fuse else -1, (wr,))
            updates += 1
            full, clean = False, True
        else:
            full, clean = True, False
    return updates, full


class SLTTEngine(SpikingEngine):
    """:func:`sltt_range` for one SLTT rule on one LIF or ALIF network (module docstring)."""

    def __init__(self, net: LIF, rule: SLTT) -> None:
        super().__init__(net, rule)
        self.slots = Slots()

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        windowed = isinstance(state, SLTTWindowState)
        if windowed and state.k > 0:  # a window left pending by the torch path: its estimate to the sum first
            state, g = self.rule.flush(params, state)
            add_into(acc, g)
        hit = self.reuse(state)
        nets = S.net_arrays(state.net) if hit is None else hit[0]
        dtype, nb, n = nets.v.dtype, nets.v.shape[0], self.net.n_hidden
        if windowed:
            buf, window = self.slots.of(state.buf, dtype), len(state.buf)
        else:
            shapes = ((nb, n), (nb, self.net.n_in), (nb, n), (n,), (nb, self.net.n_out), (nb, n))
            buf, window = [np.zeros((0, *s), dtype) for s in shapes], 0
        o, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, dtype)
        cell = self.cell(dtype)
        updates, full = sltt_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, cell.cf, cell.ci, self.wr,
                                   *nets, *buf, window, seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        if hit is None:  # the tensors returned are views of the arrays (the same state again where it was reused)
            state = state._replace(net=S.net_state(state.net, nets))
            if windowed:
                state = state._replace(buf=self.slots.entries(), k=0)
            self.keep(state, (nets,))
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> SLTTEngine | None:
    """The engine for ``rule`` on ``net``: SLTT (not a subclass, not SLTT-K) on LIF or ALIF (exact types), loss mse
    or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) is not SLTT or not SpikingEngine.supports(rule):
        return None
    return SLTTEngine(net, rule)
