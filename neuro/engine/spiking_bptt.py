"""BPTT and truncated BPTT on the LIF and ALIF networks, compiled: a range of steps of online training in one
numba call.

The rules are :mod:`neuro.rules.bptt` (the exact gradient of the sequence's summed loss, emitted when the
sequence ends) and :mod:`neuro.rules.tbptt` (the same over windows of ``k`` steps); the networks
:class:`models.lif.LIF` and :class:`models.alif.ALIF` (not subclasses), any ``dynamics``, reset, refractory
period and surrogate. Windows, the parameter copy taken at a window's first step, the updates at the loop's
schedule and the state between ranges are those of the rate engine (:mod:`neuro.engine.bptt`).

The forward step is the neuron's compiled step (:mod:`neuro.engine.spiking`). The gradient is the one torch's
autograd takes through the model's step: the spike's surrogate derivative ``psi`` (``dz/dv~``, gated by the
refractory mask ``A``), the reset's gradient unless ``detach_reset``, the adaptive threshold (ALIF) and the
leaky readout. With the sub-threshold coefficients of :meth:`models.lif.LIF.subthreshold` (``v~ = vv v + vi i +
vI I + vb b``, ``i_t = ii i + iI I``), ``z`` the step's spikes, ``kout`` the readout's decay, going back through
a window's steps with the adjoints ``gv, gi, ga, gy`` of the state after the step (zero after the window's last
step) and ``gr`` (``W_rec^T gI`` of the step after)::

    gy  = eps_t + kout gy                        dW_out += gy z_t^T       db_out += gy
    gz  = W_out^T gy + gr + ga + gv dv_t/dz      (dv_t/dz = -v_th (subtract), v_reset - v~ (zero); 0 detached)
    gv~ = A (gv dv_t/dv~ + psi gz)               (dv_t/dv~ = 1 (subtract), 1 - z_t (zero))
    ga  = rho ga - beta_a psi gz                 (ALIF: the threshold v_th + beta_a a_{t-1})
    gI  = vI gv~ + iI gi     gv = vv gv~     gi = vi gv~ + ii gi     db += vb gv~
    dW_in += gI x_t^T        dW_rec += gI z_{t-1}^T                  gr = W_rec^T gI

Per step the forward stores only what this reads: ``z_t`` and ``A psi``, plus ``v~`` for the zero reset and
``A`` with a refractory period (at most four of the network's ``[B, n]`` values per step).
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
from neuro.rules.bptt import BPTT, BPTTState
from neuro.rules.tbptt import TBPTT

__all__ = ["SpikingBPTTEngine", "backward", "build", "spiking_bptt_range"]

@numba.njit(cache=True)
def backward(W_rec, W_out, cf, ci, wr, xs, t_start, Z, PS, VT, AR, E, m, g_in, g_rec, g_b, g_out, g_bout):  # noqa: ANN001, ANN201
    """The gradient of a window's summed loss (module docstring) added to ``g_*``: its ``m`` steps are steps
    ``t_start ..`` of ``xs`` [T, B, n_in]; ``Z`` [>= m + 1, B, n] the spikes before the window and of each step,
    ``PS`` [>= m, B, n] the steps' ``A psi``, ``VT`` their ``v~`` (read with the zero reset), ``AR`` their ``A``
    (read with a refractory period), ``E`` [>= m, B, n_out] their errors ``dl/dy``; ``cf``, ``ci`` the cell
    (:func:`neuro.engine.spiking.cell`); ``wr`` the :class:`~neuro.engine.spiking.Wiring` (a sparse matrix's
    gradient and transposed product run over its synapses)."""
    nb, n = Z.shape[1], Z.shape[2]
    in_ptr, in_idx, rec_ptr, rec_idx, cptr, cidx = wr
    n_out = E.shape[2]
    vv, vi, vI, vb, ii, iI = cf[S.VV], cf[S.VI], cf[S.VII], cf[S.VB], cf[S.II], cf[S.III]
    kout, dvth, delta, v_reset = cf[S.KAPPA_OUT], cf[S.DVTH], cf[S.DELTA], cf[S.V_RESET]
    beta_a, rho = cf[S.BETA_A], cf[S.RHO]
    zero_reset, refractory, alif = ci[S.RESET] == S.ZERO, ci[S.REFRACT] != 0, ci[S.ADAPT] != 0
    one = K.cast(1.0, Z)
    gv = np.zeros((nb, n), Z.dtype)
    gi = np.zeros((nb, n), Z.dtype)
    ga = np.zeros((nb, n), Z.dtype)
    gr = np.zeros((nb, n), Z.dtype)
    gz = np.empty(n, Z.dtype)
    gI = np.empty((nb, n), Z.dtype)
    gy = np.zeros((nb, n_out), Z.dtype)
    idx, cnt = np.empty((nb, n), np.int64), np.empty(nb, np.int64)  # the spikes of z_{t-1}
    for j in range(m - 1, -1, -1):
        x, zp, zn, e, ps = xs[t_start + j], Z[j], Z[j + 1], E[j], PS[j]
        for s in range(nb):
            for k in range(n_out):
                gy[s, k] = e[s, k] + kout * gy[s, k]
        for k in range(n_out):
            for s in range(nb):
                gk = gy[s, k]
                g_bout[k] += gk
                for a in range(n):
                    g_out[k, a] += gk * zn[s, a]
        for s in range(nb):
            gz[:] = gr[s]
            for k in range(n_out):
                gk = gy[s, k]
                for a in range(n):
                    gz[a] += gk * W_out[k, a]
            for a in range(n):
                w = gz[a] + ga[s, a] if alif else gz[a]
                if zero_reset:  # v_t = v~ (1 - z) + z v_reset
                    w += gv[s, a] * (delta * (v_reset - VT[j, s, a]))
                    p = ps[s, a] * w
                    d = gv[s, a] * (one - zn[s, a]) + p
                else:  # v_t = v~ - z v_th
                    w -= gv[s, a] * dvth
                    p = ps[s, a] * w
                    d = gv[s, a] + p
                if refractory:  # v~ held at v_reset where A = 0
                    d = AR[j, s, a] * d
                if alif:  # a_t = rho a_{t-1} + z_t, the threshold v_th + beta_a a_{t-1}
                    ga[s, a] = rho * ga[s, a] - beta_a * p
                gI[s, a] = vI * d + iI * gi[s, a]
                gv[s, a] = vv * d
                gi[s, a] = vi * d + ii * gi[s, a]
                g_b[a] += vb * d
        if rec_ptr.size == 0:
            for s in range(nb):
                cnt[s] = S.active(zp[s], idx[s])
        else:  # gI z_{t-1}^T: the synapses of the spikes
            for s in range(nb):
                S.spike_outer(g_rec, gI[s], zp[s], cptr, cidx)
        for a in range(n):
            for s in range(nb):
                d = gI[s, a]
                if rec_ptr.size == 0:
                    for q in range(cnt[s]):  # gI z_{t-1}^T: the columns of the spikes
                        i = idx[s, q]
                        g_rec[a, i] += d * zp[s, i]
                S.wired_axpy(g_in[a], d, x[s], in_ptr, in_idx, a)
        for s in range(nb):
            gr[s, :] = 0.0
            for a in range(n):
                d = gI[s, a]
                if d != 0.0:
                    if rec_ptr.size == 0:
                        for i in range(n):
                            gr[s, i] += d * W_rec[a, i]
                    else:
                        for q in range(rec_ptr[a], rec_ptr[a + 1]):
                            i = rec_idx[q]
                            gr[s, i] += d * W_rec[a, i]


@numba.njit(cache=True)
def spiking_bptt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, n_in, n, n_out, k,  # noqa: ANN001, ANN201
                       snap, Z, PS, VT, AR, E, v, i, z, r, a, y, xs, ys, mask, t0, t1, n_seq, every, tw, full,
                       losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring), as
    :func:`neuro.engine.bptt.bptt_range` runs them on the rate RNN.

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.spiking_engine.ORDER`;
    ``ms``, ``vs``, ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`);
    ``cf``, ``ci``: the cell; ``wr`` the :class:`~neuro.engine.spiking.Wiring`; ``k`` the window length (0: the whole sequence); ``snap`` the window's parameters (flat, in the same order);
    ``Z``, ``PS``, ``VT``, ``AR``, ``E`` the stored steps (:func:`backward`; ``VT``, ``AR`` may have no rows where
    they are not read); ``v, i, z, r, a`` [B, n], ``y`` [B, n_out] the network state; ``xs`` [T, B, n_in], ``ys``
    [T, B, n_out], ``mask`` [T, B]; ``tw`` the steps already in the open window (0: none open); ``full`` whether
    the accumulator holds estimates not yet applied; ``losses`` [t1 - t0] (written). Returns the updates
    applied, ``full`` and ``tw`` after the range."""
    W_in, W_rec, b = snap[0].reshape((n, n_in)), snap[1].reshape((n, n)), snap[2]
    W_out, b_out = snap[3].reshape((n_out, n)), snap[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    nb = v.shape[0]
    y_hat = np.empty((nb, n_out), v.dtype)
    cur = np.empty((nb, n), v.dtype)
    vt_scratch = np.empty((nb, n), v.dtype)  # v~ or A where the backward pass does not read them
    act_scratch = np.empty((nb, n), v.dtype)
    keep_vt, keep_act = VT.shape[0] > 0, AR.shape[0] > 0
    updates = 0
    for t in range(t0, t1):
        if tw == 0:  # a window opens: the parameters it runs on, the spikes it starts from
            for q in range(len(ps)):
                snap[q][:] = ps[q]
            Z[0] = z
        S.layer(W_in, W_rec, b, cf, ci, wr, xs[t], v, i, z, r, a, cur, VT[tw] if keep_vt else vt_scratch, PS[tw],
                AR[tw] if keep_act else act_scratch)
        Z[tw + 1] = z
        S.leaky_readout(W_out, b_out, cf[S.KAPPA_OUT], z, y, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], E[tw])
        tw += 1
        if tw == k or t == n_seq - 1:  # the window closes: its gradient to the sum
            backward(W_rec, W_out, cf, ci, wr, xs, t + 1 - tw, Z, PS, VT, AR, E, tw, g_in, g_rec, g_b, g_out, g_bout)
            tw = 0
            full = True
        if full and K.update_due(t, n_seq, every):
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, -1, (wr,))
            updates += 1
            full = False
    return updates, full, tw


class _Open(NamedTuple):
    """A sequence under way between two ranges: the rule state handed out, the network's arrays, the window's
    parameters and stored steps, the steps in the open window and whether the accumulator holds estimates not
    yet applied."""

    state: BPTTState
    net: S.NetArrays
    snap: tuple[np.ndarray, ...]
    stored: tuple[np.ndarray, ...]  # Z, PS, VT, AR, E
    tw: int
    full: bool


class SpikingBPTTEngine(SpikingEngine):
    """:func:`spiking_bptt_range` for one BPTT or TBPTT rule on one LIF or ALIF network (module docstring)."""

    def __init__(self, net: LIF, rule: BPTT) -> None:
        super().__init__(net, rule)
        self.k = int(rule.k) if isinstance(rule, TBPTT) else 0
        self._open: _Open | None = None

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        opt_arrays, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, view(params["W_in"]).dtype)
        dtype = ps[0].dtype
        if t0 == 0:
            if state.window is not None or state.t != 0:
                raise RuntimeError("the compiled bptt engine was handed a rule state with an open window at a "
                                   "sequence's start")
            arrays = S.net_arrays(state.net)
            steps = n_seq if self.k == 0 else min(self.k, n_seq)
            nb, n = arrays.v.shape
            zero, refr = net.reset == "zero", net.refractory > 0
            stored = (np.empty((steps + 1, nb, n), dtype), np.empty((steps, nb, n), dtype),
                      np.empty((steps if zero else 0, nb, n), dtype), np.empty((steps if refr else 0, nb, n), dtype),
                      np.empty((steps, nb, net.n_out), dtype))
            o = _Open(state=state, net=arrays, snap=tuple(np.empty_like(p) for p in ps), stored=stored, tw=0,
                      full=False)
        else:
            o = self._open
            if o is None or o.state is not state:
                raise RuntimeError("the compiled bptt engine was handed a rule state it did not leave mid-sequence")
        cf, ci = self.cell(dtype)
        a = o.net
        updates, full, tw = spiking_bptt_range(ps, gs, opt_arrays.ms, opt_arrays.vs, opt_arrays.steps,
                                               opt_arrays.kind, opt_arrays.hyper, self.loss_kind, cf, ci, self.wr, net.n_in,
                                               net.n_hidden, net.n_out, self.k, o.snap, *o.stored, a.v, a.i, a.z,
                                               a.r, a.a, a.y, seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, o.tw,
                                               o.full, losses)
        out = BPTTState(net=S.net_state(state.net, a), window=None, total=None, t=int(tw))
        self._open = None if t1 == n_seq else o._replace(state=out, tw=int(tw), full=bool(full))
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> SpikingBPTTEngine | None:
    """The engine for ``rule`` on ``net``: BPTT or TBPTT (not a subclass) on LIF or ALIF (not a subclass) with
    the loss mse or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) not in (BPTT, TBPTT) or not SpikingEngine.supports(rule):
        return None
    return SpikingBPTTEngine(net, rule)
