"""e-prop, SLTT and OTTT on stacks of LIF or ALIF layers (:class:`models.stack.Stack`), compiled: a range of steps of
online training in one numba call, dense or sparse layers alike.

The rules are :mod:`neuro.rules.eprop` (Bellec et al. 2020; the multi-layer form of its module docstring),
:mod:`neuro.rules.sltt` (Meng et al. 2023, Sec. 4; the spatial pass through the layers) and :mod:`neuro.rules.ottt`; the layers' step and
derivatives are :mod:`neuro.engine.spiking`'s. Per step :func:`stack_range` runs, with ``u^0 = x_t`` and ``u^l =
z^(l-1)_t`` (no skip connections):

- the layers bottom-up, ``I^l = W^l_in u^l + W^l_rec z^l_(t-1)`` on each matrix's synapses (its
  :class:`~neuro.engine.spiking.Wiring`), then each unit's step (:func:`neuro.engine.spiking.unit`);
- the leaky readout of the last layer, the loss and its error ``g_y = dE/dy``;
- the signal of every layer, top-down: ``L^(L-1) = g_y W_out``, ``L^l = (L^(l+1) * dz/dI^(l+1)) W^(l+1)_in`` (e-prop's
  symmetric learning signal, SLTT's and OTTT's ``d l_t / d z^l_t``), or e-prop's random ``L^l = g_y B^l``;
- SLTT: ``W^l_in += g_I^T u^l``, ``W^l_rec += g_I^T z^l_(t-1)`` (``g_I = L^l dz/dI^l``), ``b^l += L^l dz/db^l``,
  ``W_out += g_y^T z^(L-1)_t``, ``b_out += sum_B g_y``;
- e-prop: each layer's eligibility vectors and filtered traces over ``pre^l = [u^l, z^l_(t-1)]`` exactly as
  :mod:`neuro.engine.spiking_eprop` runs one layer's (its per-synapse functions), ``g^l += L^l ebar^l``, and the
  readout's ``g_y^T zbar`` with ``zbar`` the filtered last layer;
- OTTT (:mod:`neuro.rules.ottt`, Xiao et al. 2022, Algorithm 1): each layer's presynaptic traces, the membrane's
  filter of its sources ``P^l_t = A P^l_(t-1) + c pre^l_t`` (rows ``v``, ``i``; the bias's ``Q`` once), and
  ``[W^l_in, W^l_rec] += (L^l psi^l)^T P^l_v``, ``b^l += (L^l psi^l) Q_v``, the readout's as e-prop's; mode "A"
  sums the terms over the sequence and hands the sum over at its end, mode "O" every term (layers of one cell
  only: the rule's one filter);

and at the loop's schedule the optimizer's update of every parameter (a sparse matrix's on its synapses alone).
A sparse matrix's per-synapse traces run on its synapses only; what the torch path carries off them reaches
nothing. The rule state is the definition's (a stack has no windowed path), read into per-layer arrays at a
range's start and written back at its end.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.alif import ALIF
from models.lif import LIF
from models.stack import Stack
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import spiking as S
from neuro.engine.base import Engine, RangeResult, SequenceArrays, Views, view
from neuro.engine.optim import OptimizerArrays
from neuro.engine.spiking_engine import LOSSES
from neuro.engine.spiking_eprop import _unit_traces, bias_traces, compact, expand_into
from neuro.rules.eprop import EProp
from neuro.rules.ottt import OTTT
from neuro.rules.sltt import SLTT, SLTTState

__all__ = ["StackEngine", "build", "stack_range"]

SLTT_RULE, EPROP_RULE, OTTT_RULE = 0, 1, 2


@numba.njit(cache=True)
def _down(Lu, zI, W_in, wr, Ld):  # noqa: ANN001, ANN201
    """``Ld = (Lu * zI) W_in`` [B, n_below]: the signal of the layer above ``Lu`` [B, n] through its current's
    derivative ``zI`` [B, n] and its feed-forward matrix ``W_in`` [n, n_below] (on its synapses)."""
    nb, n = Lu.shape
    Ld[:, :] = 0.0
    ptr, idx = wr[0], wr[1]
    for s in range(nb):
        row = Ld[s]
        for j in range(n):
            S.wired_axpy(row, Lu[s, j] * zI[s, j], W_in[j], ptr, idx, j)


@numba.njit(cache=True)
def stack_range(rule, ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, sizes, n_in, cfs, cis, wrs, kappa,  # noqa: ANN001, ANN201, C901
                vs_, is_, zs, rs, as_, y, Fs, random, ev, ea, sh, ebar, eb, cin, crec, zbar, bbar, Pv, Pi, Q, mode_a,
                racc, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring) of SLTT (``rule`` 0), e-prop (1)
    or OTTT (2).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, layer by layer (``W_in``, ``W_rec``, ``b``),
    then ``W_out``, ``b_out``; ``ms, vs, steps, opt_kind, hyper``: the optimizer; ``sizes`` [L] the layers'
    units, ``n_in`` the input's; ``cfs`` [L, N_CF], ``cis`` [L, 5] the layers' cells, ``wrs`` their wirings;
    ``vs_, is_, zs, rs, as_`` the layers' state ([B, n_l] each), ``y`` [B, n_out]; e-prop's ``Fs`` (random: the
    layers' ``B^l`` [n_out, n_l]), ``ev``, ``ea``, ``ebar`` [B, n_l, n_pre_l], ``sh`` [B, n_pre_l], ``eb`` [B,
    n_l, 4] (the bias's ``ebar``, ``v``, ``a``, ``i``), ``cin``, ``crec`` [B, 3, nnz] a sparse ``W_in``'s,
    ``W_rec``'s traces ``[ebar; eps_v; eps_a]`` compact instead (:func:`neuro.engine.spiking_eprop.compact`),
    ``zbar`` [B, n_L], ``bbar`` [1] (OTTT's ``obar``); OTTT's traces ``Pv``, ``Pi`` [B, n_pre_l] per layer (the
    ``v`` and ``i`` rows of ``P``), ``Q`` [2] (the bias's), ``mode_a`` (mode "A": the terms summed in ``racc``, the
    rule's sum in the order of ``ps``, which goes to ``acc`` at the sequence's end); ``losses`` [t1 - t0]
    written. Returns the updates applied and whether the accumulator holds estimates not yet applied."""
    n_layers = sizes.size
    top = n_layers - 1
    nb = y.shape[0]
    n_out = y.shape[1]
    W_out, b_out = ps[3 * n_layers].reshape((n_out, sizes[top])), ps[3 * n_layers + 1]
    g_out, g_bout = acc[3 * n_layers].reshape((n_out, sizes[top])), acc[3 * n_layers + 1]
    dt = y.dtype
    pres = [np.empty((nb, (n_in if l == 0 else sizes[l - 1]) + sizes[l]), dt) for l in range(n_layers)]
    Is = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    vts = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    psis = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    acts = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    Ls = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    zIs = [np.empty((nb, sizes[l]), dt) for l in range(n_layers)]
    y_hat = np.empty((nb, n_out), dt)
    eps = np.empty((nb, n_out), dt)
    one = K.cast(1.0, y)
    kc = K.cast(kappa, y)
    updates, full = 0, False
    for t in range(t0, t1):
        x = xs[t]
        for l in range(n_layers):  # the layers bottom-up, each reading the output of the one below of this step
            n_l = sizes[l]
            n_u = n_in if l == 0 else sizes[l - 1]
            W_in, W_rec = ps[3 * l].reshape((n_l, n_u)), ps[3 * l + 1].reshape((n_l, n_l))
            u = x if l == 0 else zs[l - 1]
            pre = pres[l]
            for s in range(nb):
                pre[s, :n_u] = u[s]
                pre[s, n_u:] = zs[l][s]
            S.layer(W_in, W_rec, ps[3 * l + 2], cfs[l], cis[l], wrs[l], u, vs_[l], is_[l], zs[l], rs[l], as_[l],
                    Is[l], vts[l], psis[l], acts[l])
        S.leaky_readout(W_out, b_out, kc, zs[top], y, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for l in range(n_layers):  # dz/dI of every unit
            vI = cfs[l][S.VII]
            for s in range(nb):
                for j in range(sizes[l]):
                    zIs[l][s, j] = psis[l][s, j] * vI
        for l in range(top, -1, -1):  # the signals, top-down
            if random:
                S.signal(eps, Fs[l], Ls[l])
            elif l == top:
                S.signal(eps, W_out, Ls[l])
            else:
                n_u = sizes[l]
                _down(Ls[l + 1], zIs[l + 1], ps[3 * (l + 1)].reshape((sizes[l + 1], n_u)), wrs[l + 1], Ls[l])
        for l in range(n_layers):  # each layer's estimate
            n_l = sizes[l]
            n_u = n_in if l == 0 else sizes[l - 1]
            g_in, g_rec, g_b = acc[3 * l].reshape((n_l, n_u)), acc[3 * l + 1].reshape((n_l, n_l)), acc[3 * l + 2]
            wr, pre, L = wrs[l], pres[l], Ls[l]
            kf, ki = S.frozen(cfs[l], cis[l])
            if rule == OTTT_RULE:  # the traces of step t, then (L psi)_j (psi: the surrogate) times them
                g3 = racc if mode_a else acc
                h_in, h_rec, h_b = g3[3 * l].reshape((n_l, n_u)), g3[3 * l + 1].reshape((n_l, n_l)), g3[3 * l + 2]
                c = cfs[l]
                vv, vi, vI, vb, ii, iI = c[S.VV], c[S.VI], c[S.VII], c[S.VB], c[S.II], c[S.III]
                for s in range(nb):
                    pv, pi, p_s = Pv[l][s], Pi[l][s], pre[s]
                    for k in range(p_s.size):
                        pv[k] = vv * pv[k] + vi * pi[k] + vI * p_s[k]
                        pi[k] = ii * pi[k] + iI * p_s[k]
                if l == 0:  # the bias's trace, the same for every layer (one filter)
                    Q[0], Q[1] = vv * Q[0] + vi * Q[1] + vb, ii * Q[1]
                for j in range(n_l):
                    for s in range(nb):
                        e = L[s, j] * psis[l][s, j]
                        pv = Pv[l][s]
                        S.wired_axpy(h_in[j], e, pv[:n_u], wr[0], wr[1], j)
                        S.wired_axpy(h_rec[j], e, pv[n_u:], wr[2], wr[3], j)
                        h_b[j] += e * Q[0]
                continue
            if rule == SLTT_RULE:
                for j in range(n_l):
                    for s in range(nb):
                        e = L[s, j] * zIs[l][s, j]
                        S.wired_axpy(g_in[j], e, pre[s, :n_u], wr[0], wr[1], j)
                        if wr[2].size == 0:
                            S.wired_axpy(g_rec[j], e, pre[s, n_u:], wr[2], wr[3], j)
                        g_b[j] += L[s, j] * (psis[l][s, j] * cfs[l][S.VB])
                if wr[2].size > 0:  # a sparse W_rec: g_I z_{t-1}^T on the synapses of the spikes
                    for s in range(nb):
                        e_s = Ls[l][s] * zIs[l][s]
                        S.spike_outer(g_rec, e_s, pre[s, n_u:], wr[4], wr[5])
                continue
            adapt = cis[l][S.ADAPT] == 1
            ii, iI, rho = cfs[l][S.II], cfs[l][S.III], cfs[l][S.RHO]
            for j in range(n_l):
                for s in range(nb):
                    p_s, shs = pre[s], sh[l][s]
                    zv, zi, za, zI, zb, dvv, dvi, dva, dvI, dvb = S.jacobian(kf, ki, vts[l][s, j], zs[l][s, j],
                                                                             psis[l][s, j], acts[l][s, j])
                    Lj = L[s, j]
                    eb_, ev_, ea_ = ebar[l][s, j], ev[l][s, j], ea[l][s, j]
                    _unit_traces(adapt, eb_[:n_u], ev_[:n_u], ea_[:n_u], cin[l][s], shs[:n_u], p_s[:n_u], g_in[j],
                                 zv, zi, za, zI, dvv, dvi, dva, dvI, za + rho, kc, Lj, wr[0], wr[1], j)
                    _unit_traces(adapt, eb_[n_u:], ev_[n_u:], ea_[n_u:], crec[l][s], shs[n_u:], p_s[n_u:], g_rec[j],
                                 zv, zi, za, zI, dvv, dvi, dva, dvI, za + rho, kc, Lj, wr[2], wr[3], j)
                    g_b[j] += Lj * bias_traces(eb[l][s, j], 2, 3, adapt, zv, zi, za, zb, dvv, dvi, dva, dvb, za + rho,
                                               ii, kc)  # the bias: [ebar; v; a; i]
            for s in range(nb):  # the synaptic current's component, the same for every unit
                p_s, shs = pre[s], sh[l][s]
                for k in range(p_s.size):
                    shs[k] = ii * shs[k] + iI * p_s[k]
        if rule == SLTT_RULE:
            S.readout_grad(eps, zs[top], one, g_out, g_bout)
        elif rule == OTTT_RULE and mode_a:
            S.filtered_readout_grad(eps, zs[top], kc, zbar, bbar, racc[3 * n_layers].reshape((n_out, sizes[top])),
                                    racc[3 * n_layers + 1])
        else:
            S.filtered_readout_grad(eps, zs[top], kc, zbar, bbar, g_out, g_bout)
        last = t == n_seq - 1
        if rule == OTTT_RULE and mode_a:  # the sum over the sequence, to the loop's accumulator at its end
            if last:
                for q in range(len(acc)):
                    acc[q][:] += racc[q]
                    racc[q][:] = 0.0
                S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, -1, wrs)
                updates += 1
                full = False
        elif K.update_due(t, n_seq, every):
            S.wired_update_rest(opt_kind, ps, acc, ms, vs, steps, hyper, -1, wrs)
            updates += 1
            full = False
        else:
            full = True
    return updates, full


class _Layers(NamedTuple):
    """The stack's state per layer: contiguous ``[B, n_l]`` copies of ``v, i, z, r, a``."""

    v: tuple
    i: tuple
    z: tuple
    r: tuple
    a: tuple


class StackEngine(Engine):
    """:func:`stack_range` for one SLTT, e-prop or OTTT rule on one stack of LIF or ALIF layers (module docstring)."""

    def __init__(self, net: Stack, rule: SLTT | EProp) -> None:
        self.net, self.rule = net, rule
        self.kind = {SLTT: SLTT_RULE, EProp: EPROP_RULE, OTTT: OTTT_RULE}[type(rule)]
        self.loss_kind = LOSSES[rule.loss]
        self.keys = tuple(f"{l}.{k}" for l in range(len(net.layers)) for k in ("W_in", "W_rec", "b")) + ("W_out",
                                                                                                          "b_out")
        self.sizes = np.array(net.sizes, np.int64)
        masks = net.masks
        self.wrs = tuple(S.wiring_of(masks.get(f"{l}.W_in"), masks.get(f"{l}.W_rec")) for l in range(len(net.layers)))
        self._cells: dict = {}
        self._params, self._acc = Views(), Views()

    def cells(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        if dtype not in self._cells:
            cs = [S.cell(layer, dtype) for layer in self.net.layers]
            self._cells[dtype] = (np.stack([c.cf for c in cs]), np.stack([c.ci for c in cs]))
        return self._cells[dtype]

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, slices = self.net, self.net.slices
        whole = S.net_arrays(state.net)
        dtype, nb = whole.v.dtype, whole.v.shape[0]
        lay = _Layers(*(tuple(np.ascontiguousarray(getattr(whole, f)[:, sl]) for sl in slices)
                        for f in ("v", "i", "z", "r", "a")))
        n_layers = len(slices)
        pre_sizes = [(net.n_in if l == 0 else net.sizes[l - 1]) + net.sizes[l] for l in range(n_layers)]
        if self.kind == EPROP_RULE:
            ev, ea, sh, ebar, eb = [], [], [], [], []
            for l in range(n_layers):
                eps, eps_b = view(state.eps[l]), view(state.eps_b[l])
                ev.append(eps[:, :, 0].copy())
                ea.append(eps[:, :, 2].copy() if eps.shape[2] > 2 else np.zeros_like(eps[:, :, 0]))
                sh.append(eps[:, 0, 1].copy())
                ebar.append(view(state.ebar[l]).copy())
                q = np.zeros((nb, net.sizes[l], 4), dtype)
                q[:, :, 0], q[:, :, 1], q[:, :, 3] = view(state.ebar_b[l]), eps_b[:, :, 0], eps_b[:, :, 1]
                if eps_b.shape[2] > 2:
                    q[:, :, 2] = eps_b[:, :, 2]
                eb.append(q)
            zbar, bbar = view(state.zbar).copy(), view(state.bbar).copy().reshape(1)
            random = state.B is not None
            Fs = tuple(np.ascontiguousarray(view(state.B)[:, sl]) for sl in slices) if random else tuple(
                np.zeros((net.n_out, n), dtype) for n in net.sizes)
        else:  # SLTT, OTTT: no per-synapse traces (empty arrays of the right types, unread)
            ev = [np.zeros((nb, n, 0), dtype) for n in net.sizes]
            ea, ebar = list(ev), list(ev)
            sh = [np.zeros((nb, n), dtype) for n in pre_sizes]
            eb = [np.zeros((nb, n, 4), dtype) for n in net.sizes]
            zbar, bbar, random = np.zeros((nb, net.sizes[-1]), dtype), np.zeros(1, dtype), False
            Fs = tuple(np.zeros((net.n_out, n), dtype) for n in net.sizes)
        cols, start = [], 0  # each layer's sources among OTTT's traces P
        for n_pre in pre_sizes:
            cols.append(slice(start, start + n_pre))
            start += n_pre
        keys = list(params)
        mode_a = self.kind == OTTT_RULE and self.rule.mode == "A"
        if self.kind == OTTT_RULE:
            P = view(state.P)
            Pv, Pi = tuple(P[:, 0, c].copy() for c in cols), tuple(P[:, 1, c].copy() for c in cols)
            Q = view(state.Q)[:2].copy()
            zbar, bbar = view(state.zbar).copy(), view(state.obar).copy().reshape(1)
        else:
            Pv = Pi = tuple(np.zeros((nb, n), dtype) for n in pre_sizes)
            Q = np.zeros(2, dtype)
        racc = tuple(view(state.acc[keys.index(k)]).copy().reshape(-1) if mode_a else np.zeros(0, dtype)
                     for k in self.keys)
        cin, crec = [], []  # each sparse matrix's traces, compact
        for l, wr in enumerate(self.wrs):
            el = np.stack([ebar[l], ev[l], ea[l]], 2) if not wr.dense and self.kind == EPROP_RULE else None
            n_u = pre_sizes[l] - net.sizes[l]
            for out, ptr, idx, off in ((cin, wr.in_ptr, wr.in_idx, 0), (crec, wr.rec_ptr, wr.rec_idx, n_u)):
                out.append(compact(el, ptr, idx, off) if el is not None and ptr.size else np.zeros((nb, 3, 0), dtype))
        o = OptimizerArrays.of(opt, [params[k] for k in self.keys])
        ps, gs = self._params([params[k] for k in self.keys]), self._acc([acc[k] for k in self.keys])
        losses = np.empty(t1 - t0, dtype)
        cf, ci = self.cells(dtype)
        updates, full = stack_range(self.kind, ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind,
                                    self.sizes, net.n_in, cf, ci, self.wrs, float(net.readout_decay), *lay, whole.y,
                                    Fs, random, tuple(ev), tuple(ea), tuple(sh), tuple(ebar), tuple(eb), tuple(cin),
                                    tuple(crec), zbar, bbar, Pv, Pi, Q, mode_a, racc, seq.xs, seq.ys, seq.mask, t0,
                                    t1, n_seq, every, losses)
        for l, wr in enumerate(self.wrs):  # the compact traces back into the layers'
            n_u = pre_sizes[l] - net.sizes[l]
            for c, ptr, idx, off in ((cin[l], wr.in_ptr, wr.in_idx, 0), (crec[l], wr.rec_ptr, wr.rec_idx, n_u)):
                if c.shape[2]:
                    for f, arr in enumerate((ebar[l], ev[l], ea[l])):
                        expand_into(arr[:, :, None], c[:, f:f + 1], ptr, idx, off)
        for f in ("v", "i", "z", "r", "a"):
            for sl, arr in zip(slices, getattr(lay, f)):
                getattr(whole, f)[:, sl] = arr
        net_state = S.net_state(state.net, whole)
        T = torch.from_numpy
        if self.kind == SLTT_RULE:
            state = SLTTState(net=net_state)
        elif self.kind == OTTT_RULE:
            P = view(state.P).copy()
            for c, pv, pi in zip(cols, Pv, Pi):
                P[:, 0, c], P[:, 1, c] = pv, pi
            Qd = view(state.Q).copy()
            Qd[:2] = Q
            sums = dict(zip(self.keys, racc))
            state = state._replace(net=net_state, P=T(P), Q=T(Qd), zbar=T(zbar), obar=T(bbar.reshape(())),
                                   acc=tuple(T(sums[k].reshape(params[k].shape)) for k in keys) if mode_a else None)
        else:
            K_ = view(state.eps[0]).shape[2]
            eps, eps_b = [], []
            for l in range(n_layers):
                e = np.empty((nb, net.sizes[l], K_, pre_sizes[l]), dtype)
                e[:, :, 0], e[:, :, 1] = ev[l], sh[l][:, None]
                q = np.empty((nb, net.sizes[l], K_), dtype)
                q[:, :, 0], q[:, :, 1] = eb[l][:, :, 1], eb[l][:, :, 3]
                if K_ > 2:
                    e[:, :, 2], q[:, :, 2] = ea[l], eb[l][:, :, 2]
                eps.append(T(e))
                eps_b.append(T(q))
            state = state._replace(net=net_state, eps=tuple(eps), eps_b=tuple(eps_b),
                                   ebar=tuple(T(e) for e in ebar), ebar_b=tuple(T(q[:, :, 0].copy()) for q in eb),
                                   zbar=T(zbar), bbar=T(bbar.reshape(())))
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> StackEngine | None:
    """The engine for ``rule`` on ``net``: SLTT, e-prop (symmetric or random feedback, every eligibility
    component) or OTTT (layers of one cell), not subclasses, on a stack of LIF or ALIF layers without skip
    connections, loss mse or ce; ``None`` otherwise."""
    if type(net) is not Stack or net.skip or any(type(layer) not in (LIF, ALIF) for layer in net.layers):
        return None
    if rule.loss not in LOSSES:
        return None
    if type(rule) is SLTT:
        return StackEngine(net, rule)
    if type(rule) is OTTT:  # one filter for every layer's traces: the layers' cells must be the same
        cells = {S.cell(layer, np.float64).cf.tobytes() for layer in net.layers}
        return StackEngine(net, rule) if len(cells) == 1 else None
    if type(rule) is EProp and rule.feedback != "adaptive" and rule.adaptive_eligibility is not False:
        return StackEngine(net, rule)
    return None
