"""ANP in time on the LIF and ALIF networks, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.anp_time` (Garcia Fernandez, Keemink & van Gerven 2024, arXiv:2405.08967: activity-
based node perturbation whose noisy copies keep their own state; its module docstring and
:mod:`neuro.rules.node` state the step); the networks :class:`models.lif.LIF` and :class:`models.alif.ALIF`
(not subclasses). A clean network and ``K`` noisy copies per sequence (rows ``m = s K + k``, each its own state)
run on the same input; the noise ``xi_h`` is on the noisy currents, ``xi_y`` on the noisy outputs::

    I_t  = W_in x_t + W_rec z_{t-1}                   I~_t = W_in x_t + W_rec z~_{t-1} + xi_h
    (v, i, z, r, a)_t = the neuron's step on I_t      (the noisy copy's on I~_t, from its own state)
    a_t  = W_out z_t + b_out                          a~_t = W_out z~_t + b_out + xi_y
    y_t  = kappa_out y_{t-1} + a_t                    y~_t = kappa_out y~_{t-1} + a~_t
    dL_t = L(y~_t) - L(y_t)                           (per row; the clean loss of the row's sequence)
    e_h  = sqrt(N) dL_t dh / ||dh||^2,   e_y = sqrt(N) dL_t da / ||da||^2,   dh = I~_t - I_t,   da = a~_t - a_t
    dW_in += e_h x_t^T / M     dW_rec += e_h z_{t-1}^T / M     dW_out += e_y z_t^T / M     db_out += e_y / M

(``N = n_in + n + n_out``, ``M = B K``; ``norm="global"``: ``||dh||^2 + ||da||^2`` for both; ``b``, a bias of
the neuron and not of the current, gets no estimate). The neuron's step is :func:`neuro.engine.spiking.unit`.

Per step: the passes, the losses, the estimate added to the loop's accumulator, and at the loop's schedule
(``(t + 1) % update_every == 0`` or the sequence's last step) the optimizer's update with the sum, which zeroes
it. The noise is the torch path's, drawn per range from the rule's generator by
:class:`neuro.engine.noise.GaussianRows`. As the rate and LSTM engines (:mod:`neuro.engine.perturb`) do, both
forms of the rule's state are run, and the windowed path's is left with no pending window and its slots as the
torch path fills them (the last step at each window position, recorded by the kernel).
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
from neuro.engine.noise import GaussianRows
from neuro.engine.perturb import positions
from neuro.engine.spiking_engine import SpikingEngine
from neuro.rules._fast.node import Entry, WindowState
from neuro.rules.anp_time import ANPTime
from neuro.rules.base import add_into
from neuro.rules.node import NodeState

__all__ = ["SpikingANPEngine", "anp_time_range", "build"]

@numba.njit(cache=True)
def _neurons(cf, ci, b, I, st):  # noqa: ANN001, ANN201
    """The neuron's step (:func:`neuro.engine.spiking.unit`) of every row of the state ``st`` = ``(v, i, z, r,
    a, y)`` on the currents ``I`` [rows, n], in place."""
    v, i, z, r, a = st[0], st[1], st[2], st[3], st[4]
    kf, ki = S.frozen(cf, ci)
    for s in range(v.shape[0]):
        for j in range(v.shape[1]):
            v[s, j], i[s, j], z[s, j], r[s, j], a[s, j], _, _, _ = S.unit(kf, ki, b[j], I[s, j], v[s, j], i[s, j],
                                                                         r[s, j], a[s, j])


@numba.njit(cache=True)
def anp_time_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, cf, ci, wr, glob, root_n, tiny,  # noqa: ANN001, ANN201
                   cs, ns, xi, xs, ys, mask, t0, t1, n_seq, every, last, rec_l, rec_yn, rec_p, rec_z, rec_i,
                   rec_in, rec_a, rec_an, losses):
    """Steps ``t0 .. t1 - 1`` of ANP in time (module docstring) on a sequence of ``n_seq`` steps.

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.spiking_engine.ORDER`;
    ``ms``, ``vs``, ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``cf``, ``ci``: the cell
    (:func:`neuro.engine.spiking.cell`); ``wr`` the :class:`~neuro.engine.spiking.Wiring` (a dense ``W_rec``
    is read at the spikes, a sparse one on its synapses); ``glob``: the global norm; ``cs``, ``ns``: the clean [B] and noisy [M]
    states ``(v, i, z, r, a, y)``; ``xi`` [t1 - t0, M, n + n_out] the steps' noise; ``xs`` [T, B, n_in], ``ys``
    [T, B, n_out], ``mask`` [T, B]; ``last`` [W] (:func:`neuro.engine.perturb.positions`): the step whose window
    slot the ``rec_*`` arrays [W, ...] get (the clean losses, noisy outputs, ``z_{t-1}``, ``z_t``, the clean and
    noisy currents and output pre-activations); ``losses`` [t1 - t0] (written). Returns the updates applied and
    whether the accumulator holds estimates."""
    cz, cy = cs[2], cs[5]
    nz, ny = ns[2], ns[5]
    nb, n = cz.shape
    M = nz.shape[0]
    kk = M // nb
    n_in, n_out = xs.shape[2], ys.shape[2]
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec = acc[0].reshape((n, n_in)), acc[1].reshape((n, n))
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    in_ptr, in_idx, rec_ptr, rec_idx, cptr, cidx = wr
    wired = rec_ptr.size > 0
    dt = cz.dtype
    zp = np.empty((nb, n), dt)
    ic, inz = np.empty((nb, n), np.int64), np.empty((M, n), np.int64)  # the spikes of z_{t-1}, z~_{t-1}
    cc, cn = np.empty(nb, np.int64), np.empty(M, np.int64)
    Ic, In = np.empty((nb, n), dt), np.empty((M, n), dt)
    ac, an = np.empty((nb, n_out), dt), np.empty((M, n_out), dt)
    Lc, Ln = np.empty(nb, dt), np.empty(M, dt)
    eps = np.empty((1, n_out), dt)
    dh, Eh = np.empty(n, dt), np.empty(n, dt)
    da, Ey = np.empty(n_out, dt), np.empty(n_out, dt)
    kout, rn, tn = cf[S.KAPPA_OUT], K.cast(root_n, cz), K.cast(tiny, cz)
    fb, fm = K.cast(nb, cz), K.cast(M, cz)
    updates, full = 0, False
    for t in range(t0, t1):
        x, y, mk, noise = xs[t], ys[t], mask[t], xi[t - t0]
        zp[:, :] = cz
        for s in range(nb):
            cc[s] = S.active(cz[s], ic[s])
        for m in range(M):
            cn[m] = S.active(nz[m], inz[m])
        for s in range(nb):  # the currents: x W_in^T once, the recurrent products over the spikes
            if wired:  # the recurrent products by the spikes, each over its synapses
                for a in range(n):
                    xin = S.wired_dot(W_in[a], x[s], in_ptr, in_idx, a)
                    Ic[s, a] = xin
                    for m in range(s * kk, s * kk + kk):
                        In[m, a] = xin
                S.spikes_into(Ic[s], W_rec, cz[s], cptr, cidx)
                for m in range(s * kk, s * kk + kk):
                    S.spikes_into(In[m], W_rec, nz[m], cptr, cidx)
                    for a in range(n):
                        In[m, a] += noise[m, a]
                continue
            for a in range(n):
                xin = S.wired_dot(W_in[a], x[s], in_ptr, in_idx, a)
                Ic[s, a] = xin + S.sparse_dot(W_rec[a], cz[s], ic[s], cc[s])
                for m in range(s * kk, s * kk + kk):
                    In[m, a] = (xin + S.sparse_dot(W_rec[a], nz[m], inz[m], cn[m])) + noise[m, a]
        _neurons(cf, ci, b, Ic, cs)
        _neurons(cf, ci, b, In, ns)
        total = K.cast(0.0, cz)
        for s in range(nb):  # the clean readout and loss
            for k in range(n_out):
                zw = K.dot(cz[s], W_out[k])  # grouped as the model's readout: (kappa_out y + W_out z) + b_out
                ac[s, k] = zw + b_out[k]
                cy[s, k] = (kout * cy[s, k] + zw) + b_out[k]
            Lc[s] = K.loss_and_error(loss_kind, cy[s:s + 1], y[s:s + 1], mk[s:s + 1], eps)
            total += Lc[s]
        losses[t - t0] = total / fb
        for m in range(M):  # the noisy readouts (the output noise kept in the readout's memory) and losses
            s = m // kk
            for k in range(n_out):
                zw = K.dot(nz[m], W_out[k])
                an[m, k] = (zw + b_out[k]) + noise[m, n + k]
                ny[m, k] = ((kout * ny[m, k] + zw) + b_out[k]) + noise[m, n + k]
            Ln[m] = K.loss_and_error(loss_kind, ny[m:m + 1], y[s:s + 1], mk[s:s + 1], eps)
        for s in range(nb):  # the signals summed over the sequence's rows, the estimate
            Eh[:] = 0.0
            Ey[:] = 0.0
            for m in range(s * kk, s * kk + kk):
                for a in range(n):
                    dh[a] = In[m, a] - Ic[s, a]
                for k in range(n_out):
                    da[k] = an[m, k] - ac[s, k]
                sq_h, sq_y = K.dot(dh, dh), K.dot(da, da)
                if glob:
                    sq_h = sq_y = sq_h + sq_y
                c = rn * (Ln[m] - Lc[s])
                ch, cy_ = c / max(sq_h, tn), c / max(sq_y, tn)
                for a in range(n):
                    Eh[a] += ch * dh[a]
                for k in range(n_out):
                    Ey[k] += cy_ * da[k]
            for a in range(n):
                Eh[a] = Eh[a] / fm
            if wired:  # e_h z_{t-1}^T: the synapses of the spikes
                S.spike_outer(g_rec, Eh, zp[s], cptr, cidx)
            for a in range(n):
                f = Eh[a]
                row, pre, idx = g_rec[a], zp[s], ic[s]
                if not wired:  # the columns of the spikes
                    for q in range(cc[s]):
                        j = idx[q]
                        row[j] += f * pre[j]
                S.wired_axpy(g_in[a], f, x[s], in_ptr, in_idx, a)
            for k in range(n_out):
                f = Ey[k] / fm
                g_bout[k] += f
                for j in range(n):
                    g_out[k, j] += f * cz[s, j]
        for p in range(last.size):
            if last[p] == t:  # the step a window slot holds at the end
                rec_l[p] = Lc
                rec_yn[p] = ny
                rec_p[p] = zp
                rec_z[p] = cz
                rec_i[p] = Ic
                rec_in[p] = In
                rec_a[p] = ac
                rec_an[p] = an
        applied, full = S.wired_scheduled_update(K.update_due(t, n_seq, every), -1, opt_kind, ps, acc, ms, vs, steps,
                                                 hyper, wr)
        updates += applied
    return updates, full


class SpikingANPEngine(SpikingEngine):
    """:func:`anp_time_range` for one ``anp-time`` rule on one LIF or ALIF network (module docstring). The range's
    noise is drawn into a buffer kept between ranges; the network states returned are views of the arrays the
    next range continues in place."""

    def __init__(self, net: LIF, rule: ANPTime) -> None:
        super().__init__(net, rule)
        self._noise = GaussianRows()
        self._left: tuple[NamedTuple, int] | None = None  # the state handed out mid-sequence, its window position

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, rule = self.net, self.rule
        n, n_out = net.n_hidden, net.n_out
        windowed = isinstance(state, WindowState)
        W = len(state.buf) if windowed else 0
        vk = 0
        if windowed:
            vk = self._left[1] if self._left is not None and self._left[0] is state else state.k
            if state.k > 0:  # a window left pending by the torch path: its estimate to the sum first
                state, g = rule.flush(params, state)
                add_into(acc, g)
        hit = self.reuse(state)
        cs, ns = (S.net_arrays(state.net), S.net_arrays(state.noisy)) if hit is None else hit
        nb, M, dtype = cs.v.shape[0], ns.v.shape[0], params["W_in"].dtype
        xi = self._noise(state.gen, t1 - t0, (M * (n + n_out),), rule.sigma, dtype).reshape(t1 - t0, M, n + n_out)
        last, vk_end = positions(W, vk, t0, t1, n_seq, every) if W > 1 else (np.full(0, -1), 0)
        o, ps, gs, losses = self.arrays(params, acc, opt, t1 - t0, cs.v.dtype)
        rec = [np.empty((len(last), *s), cs.v.dtype) for s in
               ((nb,), (M, n_out), (nb, n), (nb, n), (nb, n), (M, n), (nb, n_out), (M, n_out))]
        cell = self.cell(cs.v.dtype)
        updates, full = anp_time_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, cell.cf, cell.ci, self.wr,
                                       rule.norm == "global", float(net.n_in + n + n_out) ** 0.5,
                                       float(torch.finfo(dtype).tiny), tuple(cs), tuple(ns), xi.numpy(), seq.xs,
                                       seq.ys, seq.mask, t0, t1, n_seq, every, last, *rec, losses)
        if hit is None:  # the tensors returned are views of the arrays (the same again where the state was reused)
            s_net, s_noisy = S.net_state(state.net, cs), S.net_state(state.noisy, ns)
        else:
            s_net, s_noisy = state.net, state.noisy
        steps = state.t + t1 - t0
        if not windowed:
            out = NodeState(net=s_net, noisy=s_noisy, gen=state.gen, t=steps)
        else:
            buf = list(state.buf)
            for p, t in enumerate(last):
                if t >= 0:
                    buf[p] = self._entry(rec, p, int(t), t0, xi, seq)
            out = WindowState(net=s_net, noisy=s_noisy, gen=state.gen, t=steps, buf=tuple(buf), k=0)
        self.keep(out, (cs, ns))
        self._left = (out, int(vk_end)) if t1 < n_seq else None
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))

    def _entry(self, rec: list, p: int, t: int, t0: int, xi: torch.Tensor, seq: SequenceArrays) -> Entry:
        """The window slot of step ``t``, as the windowed path holds it (views of the range's own records and of the
        sequence's arrays, which nothing writes later; the noise copied out of the kept buffer)."""
        l, yn, zp, z, i_c, i_n, a, a_n = (torch.from_numpy(r[p]) for r in rec)
        n, T = self.net.n_hidden, torch.from_numpy
        return Entry(l=l, y_noisy=yn, y=T(seq.ys[t]), mask=T(seq.mask[t] != 0), xi_h=xi[t - t0, :, :n].clone(),
                     xi_y=xi[t - t0, :, n:].clone(), h_noisy=i_n, h=i_c, a_noisy=a_n, a=a, x=T(seq.xs[t]), p=zp, z=z)


def build(net: object, rule: object) -> SpikingANPEngine | None:
    """The engine for ``rule`` on ``net``: ``anp-time`` (not a subclass) with the torch forward (no ``forward=``)
    on LIF or ALIF (not a subclass) with the loss mse or ce; ``None`` otherwise."""
    if type(net) not in (LIF, ALIF) or type(rule) is not ANPTime or not SpikingEngine.supports(rule) \
            or rule.forward is not None:
        return None
    return SpikingANPEngine(net, rule)
