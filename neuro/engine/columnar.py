"""Columnar and constructive RTRL on networks of single-unit columns, compiled: a range of steps of online
training in one numba call.

The rules are :mod:`neuro.rules.columnar` and :mod:`neuro.rules.constructive` (Javed, Shah, Sutton & White
2023; their module docstrings state the equations), on :class:`models.columnar.Columnar` and
:class:`models.constructive.Constructive` (not subclasses); TD(lambda) over either is
:mod:`neuro.engine.td`. The columnar network is the constructive one with a single stage and no
feed-forward weights, so one kernel, :func:`columns_range`, runs both: the columns ``0 .. lo - 1`` are
frozen (computed in stage order, each reading the current ``h_t`` of the stages before it), ``lo .. hi - 1``
learn, the later ones are inactive (``h = c = 0``). A learning column ``k`` has the features
``z_{t,k} = (x_t, u_t, h_{t-1,k}, 1)`` (``u_t = h_t[:lo]``) and the traces ``M_{t,k} = d(h, c)_{t,k} /
dtheta_k``, stored as the rules' fast paths store them (``[B, S_c, m, G, F]``); per step, for the LSTM cell
(gates ``i, f, g, o``, ``'`` their derivatives)::

    kc = (i' g, f' c_{t-1}, i g', 0)        alpha = sum_G kc_G w_rec[G]
    Mc_t = f Mc_{t-1} + alpha Mh_{t-1} + kc (x) z
    Mh_t = o' tanh(c_t) w_rec[o] Mh_{t-1} + o (1 - tanh^2 c_t) Mc_t + (0, 0, 0, o' tanh c_t) (x) z

and for the rate cell ``Mh_t = (1 - h_t^2) (w_rec Mh_{t-1} + 1 (x) z)``. The estimate of step ``t``, with
``e_t = dl_t/dy_t`` (:func:`neuro.engine.kernels.loss_and_error`)::

    dl_t/dtheta_k = sum_b (e_t W_out)_{b,k} Mh_{t,k}      dl_t/dW_out = e_t^T h_t      dl_t/db_out = sum_b e_t

is added to the loop's accumulator, and at the loop's schedule (``(t + 1) % update_every == 0`` or the
sequence's last step) the optimizer applies the sum (:func:`update`: Adam's powers of the betas once per
update for the parameters whose step counts agree). Every other
parameter's estimate is zero; its accumulator stays zero and, with its optimizer state zero (a fresh stage's
optimizer, :mod:`neuro.staged`), an update of SGD, Adam or RMSprop leaves it exactly unchanged, so the update
runs over the learning columns' rows and the readout only (over every row where that state is not zero).

With the network's online normalisation (``normalise``, :mod:`models.columnar`, :mod:`models.constructive`)
a column reads its inputs normalised by its own statistics from before the step (the learning columns'
features ``z_{t,k}`` are these), the learning columns' input statistics then take the step's raw ``(x_t,
u_t)``, every column's feature statistics take ``h_t`` and the readout reads ``hhat_t``
(:func:`readout_features`); the estimate uses ``dl_t/dh_t = (e_t W_out)_k / sqrt(var_f[k])`` and
``dl_t/dW_out = e_t^T hhat_t`` (:mod:`neuro.engine.columns_norm`). The statistics are arrays of the network
state, changed in place.

The rule state is the fast path's (``fast=True``; a rule built with ``fast=False`` runs on the torch path):
the engine works on copies of its tensors and returns a new state holding them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from models.columnar import Columnar
from models.constructive import Constructive
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, flat, view
from neuro.engine.columns_norm import column_inputs, learn_inputs, normalisation, own_net_state, readout_features
from neuro.engine.optim import OptimizerArrays
from neuro.rules._fast.columnar_kernel import _tanh_from, _vexp
from neuro.rules.columnar import ColumnarRTRL
from neuro.rules.constructive import ConstructiveRTRL

__all__ = ["Arguments", "ColumnsEngine", "Layout", "build", "column_step", "columns_range", "update"]

LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True)
def _features(x, hn, lo, z):  # noqa: ANN001, ANN201
    """The learning columns' shared features ``z = (x, u = hn[:lo], ., 1)`` (the column's ``h_{t-1,k}`` goes
    at ``n_in + lo``)."""
    n_in = x.shape[0]
    for j in range(n_in):
        z[j] = x[j]
    for j in range(lo):
        z[n_in + j] = hn[j]
    z[n_in + lo + 1] = 1.0
    return 0


@numba.njit(cache=True)
def update(kind, ps, gs, ms, vs, steps, hyper):  # noqa: ANN001, ANN201
    """:func:`neuro.engine.kernels.apply_update`; with Adam, the step's scalars
    (:func:`neuro.engine.kernels.adam_step`: its powers of ``beta1`` and ``beta2``) computed once and given to
    every span whose step count is the first's (the counts of the parameters a run updates together are equal;
    a span whose count differs gets its own)."""
    if kind != K.ADAM:
        K.apply_update(kind, ps, gs, ms, vs, steps, hyper)
        return 0
    lr, b1, b2, eps = hyper[0], hyper[1], hyper[2], hyper[3]
    c = K.adam_step(steps[0], lr, b1, b2, eps, ps[0])
    for i in range(len(ps)):
        st = steps[i]
        if i == 0 or st[0] + 1 == steps[0][0]:
            if i > 0:
                st[0] += 1
            K.adam_span(ps[i], gs[i], ms[i], vs[i], c)
        else:
            K.adam_span(ps[i], gs[i], ms[i], vs[i], K.adam_step(st, lr, b1, b2, eps, ps[i]))
        g = gs[i]
        for j in range(g.size):
            g[j] = 0.0
    return 0


@numba.njit(cache=True)
def column_step(lstm, n_in, per_stage, lo, hi, W_in, W_ff, w_rec, b, x, h, c, hn, cn, M, z, S, bits,  # noqa: ANN001, ANN201
                norm, d, floor, mu, var, xk):
    """One sample's network step and the learning columns' traces (module docstring): ``x`` [n_in], ``h``,
    ``c`` [n] the state before the step (read), ``hn``, ``cn`` [n] after it (written), ``M`` [S_c, m, G F] the
    traces (updated in place); ``norm``: the online normalisation (rate ``d``, variance floor ``floor``) with
    the input statistics ``mu``, ``var`` [n, n_v] (the learning columns' updated in place); scratch: ``z`` [F]
    (a learning column's features), ``S`` [4, 4 n] float64, ``bits`` [4 n] int64, ``xk`` [n_in + n] float64
    (a column's inputs as it reads them).

    Stage by stage (the frozen ones in order, then the learning one): the pre-activations in float64, the
    exponentials of the stage at once (:func:`neuro.rules._fast.columnar_kernel._vexp`, with ``sigma(a) = 1 /
    (1 + e^{-a})`` and ``tanh`` from ``e^{-2|a|}``, as the rule's compiled step computes them), then each
    column's state and, for a learning column, its traces (their coefficients in the traces' dtype)."""
    n = h.shape[0]
    G = 4 if lstm else 1
    F = n_in + lo + 2
    A, arg, ex, tt = S[0], S[1], S[2], S[3]
    s0 = 0
    while s0 < hi:
        s1 = min(s0 + per_stage, lo) if s0 < lo else hi  # a frozen stage, or the learning one
        m, nff = s1 - s0, min(s0, lo)  # its columns read the columns before it (the earlier stages)
        for k in range(s0, s1):  # the pre-activations and the arguments of exp
            if norm or k == s0:  # the inputs as column k reads them (without normalisation: the stage's)
                column_inputs(norm, x, hn, mu, var, k, n_in + nff, xk)
            hk = float(h[k])
            for g in range(G):
                a = 0.0
                for j in range(n_in):
                    a += xk[j] * float(W_in[k, g, j])
                a = a + hk * float(w_rec[k, g]) + float(b[k, g])
                if nff > 0:
                    f = 0.0
                    for j in range(nff):
                        f += xk[n_in + j] * float(W_ff[k, g, j])
                    a = a + f
                i = G * (k - s0) + g
                A[i] = a
                arg[i] = -2.0 * abs(a) if (g == 2 or not lstm) else -a
        _vexp(arg[:G * m], ex[:G * m], tt[:G * m], bits[:G * m])
        if lstm:
            for k in range(s0, s1):  # the gates and c_t; exp of -2 |c_t| in the arguments' row
                i = 4 * (k - s0)
                si = 1.0 / (1.0 + ex[i])
                sf = 1.0 / (1.0 + ex[i + 1])
                gg = _tanh_from(A[i + 2], ex[i + 2])
                so = 1.0 / (1.0 + ex[i + 3])
                A[i], A[i + 1], A[i + 2], A[i + 3] = si, sf, gg, so
                ct = sf * float(c[k]) + si * gg
                cn[k] = ct
                arg[k - s0] = -2.0 * abs(ct)
            _vexp(arg[:m], ex[:m], tt[:m], bits[:m])
        for k in range(s0, s1):
            if lstm:
                i = 4 * (k - s0)
                si, sf, gg, so = A[i], A[i + 1], A[i + 2], A[i + 3]
                ct = float(cn[k])
                tc = _tanh_from(ct, ex[k - s0])
                hn[k] = so * tc
            else:
                ht = _tanh_from(A[k - s0], ex[k - s0])
                hn[k] = ht
            if k < lo:
                continue
            if norm:  # the column's own features
                column_inputs(norm, x, hn, mu, var, k, n_in + lo, xk)
                for j in range(n_in + lo):
                    z[j] = xk[j]
                z[n_in + lo + 1] = 1.0
            elif k == lo:
                _features(x, hn, lo, z)
            z[n_in + lo] = h[k]
            Mh = M[0, k - lo]
            if not lstm:
                d_ = 1.0 - ht * ht
                cw, cd = K.cast(d_ * float(w_rec[k, 0]), h), K.cast(d_, h)
                for f in range(F):
                    Mh[f] = Mh[f] * cw + cd * z[f]
                continue
            kc0 = si * (1.0 - si) * gg
            kc1 = sf * (1.0 - sf) * float(c[k])
            kc2 = si * (1.0 - gg * gg)
            do_tc = so * (1.0 - so) * tc
            alpha = K.cast(kc0 * float(w_rec[k, 0]) + kc1 * float(w_rec[k, 1]) + kc2 * float(w_rec[k, 2]), h)
            ch = K.cast(do_tc * float(w_rec[k, 3]), h)
            cc = K.cast(so * (1.0 - tc * tc), h)
            cf = K.cast(sf, h)
            Mc = M[1, k - lo]
            for g in range(4):
                kg = K.cast(kc0 if g == 0 else (kc1 if g == 1 else (kc2 if g == 2 else 0.0)), h)
                dz = K.cast(do_tc if g == 3 else 0.0, h)
                base = g * F
                for f in range(F):
                    zf = z[f]
                    q = base + f
                    mh = Mh[q]
                    mc = Mc[q] * cf + mh * alpha + kg * zf
                    Mc[q] = mc
                    Mh[q] = mh * ch + mc * cc + dz * zf
        s0 = s1
    for k in range(hi, n):  # inactive: held at zero
        hn[k] = 0.0
        cn[k] = 0.0
    if norm:
        learn_inputs(x, hn, mu, var, lo, hi, d, floor)
    return 0


@numba.njit(cache=True)
def columns_range(lstm, n_in, per_stage, lo, hi, W_in, W_ff, w_rec, b, W_out, b_out,  # noqa: ANN001, ANN201
                  g_in, g_ff, g_rec, g_b, g_out, g_bout, ups, ugs, ums, uvs, usteps, opt_kind, hyper, loss_kind,
                  h, c, M, mu_in, var_in, mu_f, var_f, norm, decay, floor, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps of columnar / constructive RTRL (module
    docstring). ``W_in`` [n, G, n_in], ``W_ff`` [n, G, n or 0], ``w_rec``, ``b`` [n, G], ``W_out`` [n_out, n],
    ``b_out``: the parameters, ``g_*`` the accumulator in the same shapes; ``ups``, ``ugs``, ``ums``, ``uvs``,
    ``usteps``: the flat spans the optimizer updates (the learning columns' rows and the readout), ``opt_kind``,
    ``hyper`` (:func:`neuro.engine.kernels.apply_update`); ``h``, ``c`` [B, n], ``M`` [B, S_c, m, G F] the rule
    state; where ``norm``, the online normalisation (rate ``decay``, variance floor ``floor``) with the
    statistics ``mu_in``, ``var_in`` [B, n, n_v], ``mu_f``, ``var_f`` [B, n] (else empty); ``xs`` [T, B, n_in],
    ``ys`` [T, B, n_out], ``mask`` [T, B]; ``losses`` [t1 - t0] (written). Returns the updates applied and
    whether the accumulator holds estimates not yet applied."""
    nb, n = h.shape
    n_out = W_out.shape[0]
    G = 4 if lstm else 1
    F = n_in + lo + 2
    hn = np.empty_like(h)
    cn = np.empty_like(c)
    hf = np.empty_like(h)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    z = np.empty(F, h.dtype)
    S, bits, xk = np.empty((4, 4 * n)), np.empty(4 * n, np.int64), np.empty(n_in + n)
    updates, full = 0, False
    for t in range(t0, t1):
        x = xs[t]
        for s in range(nb):
            column_step(lstm, n_in, per_stage, lo, hi, W_in, W_ff, w_rec, b, x[s], h[s], c[s], hn[s], cn[s], M[s], z,
                        S, bits, norm, decay, floor, mu_in[s], var_in[s], xk)
            if norm:
                readout_features(norm, hn[s], mu_f[s], var_f[s], decay, floor, hf[s])
        hr = hf if norm else hn  # what W_out reads
        K.readout(W_out, b_out, hr, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):
            for k in range(lo, hi):
                eh = K.cast(0.0, h)
                for o in range(n_out):
                    eh += eps[s, o] * W_out[o, k]
                if norm:  # dl/dh_k = (e W_out)_k / sqrt(var_f[k])
                    eh = K.cast(eh / math.sqrt(float(var_f[s, k])), h)
                Mh = M[s, 0, k - lo]
                for g in range(G):
                    base = g * F
                    for j in range(n_in):
                        g_in[k, g, j] += eh * Mh[base + j]
                    for j in range(lo):
                        g_ff[k, g, j] += eh * Mh[base + n_in + j]
                    g_rec[k, g] += eh * Mh[base + n_in + lo]
                    g_b[k, g] += eh * Mh[base + n_in + lo + 1]
        for o in range(n_out):
            for s in range(nb):
                e = eps[s, o]
                for k in range(n):
                    g_out[o, k] += e * hr[s, k]
                g_bout[o] += e
        h[:, :] = hn
        c[:, :] = cn
        if K.update_due(t, n_seq, every):
            update(opt_kind, ups, ugs, ums, uvs, usteps, hyper)
            updates += 1
            full = False
        else:
            full = True
    return updates, full


class Layout(NamedTuple):
    """Where a columns network's parameters sit for :func:`columns_range`: the model's parameter names in the
    kernel's order, the learning columns ``lo .. hi - 1``, the columns per stage, and whether it is LSTM."""

    names: tuple[str, ...]
    lo: int
    hi: int
    per_stage: int
    lstm: bool

    @classmethod
    def of(cls, net: Columnar | Constructive) -> Layout:
        if isinstance(net, Constructive):
            sl = net.stage_columns(net.stage)
            return cls(("W_in", "W_ff", "w_rec", "b", "W_out", "b_out"), sl.start, sl.stop, net.per_stage,
                       net.cell == "lstm")
        return cls(("W_in", "w_rec", "b", "W_out", "b_out"), 0, net.n_hidden, net.n_hidden, net.cell == "lstm")

    def arrays(self, tensors: Params) -> tuple[np.ndarray, ...]:
        """``W_in``, ``W_ff`` (an empty [n, G, 0] for the columnar network), ``w_rec``, ``b``, ``W_out``,
        ``b_out`` of ``tensors`` (parameters or an accumulator) as arrays sharing their memory."""
        W_in = view(tensors["W_in"])
        W_ff = view(tensors["W_ff"]) if "W_ff" in tensors else np.zeros((*W_in.shape[:2], 0), W_in.dtype)
        return (W_in, W_ff, view(tensors["w_rec"]), view(tensors["b"]), view(tensors["W_out"]), view(tensors["b_out"]))

    def spans(self, params: Params, acc: Params, opt: torch.optim.Optimizer) -> tuple:
        """The flat spans the optimizer updates (module docstring): ``ps, gs, ms, vs, steps, kind, hyper``."""
        o = OptimizerArrays.of(opt, [params[k] for k in self.names])
        ps = [flat(params[k]) for k in self.names]
        gs = [flat(acc[k]) for k in self.names]
        ms, vs = list(o.ms), list(o.vs)
        n = params["W_in"].shape[0]
        if (self.lo, self.hi) != (0, n):
            cols = [i for i, k in enumerate(self.names) if k not in ("W_out", "b_out")]
            per_row = [ps[i].size // n for i in cols]
            outside = any(np.any(a[:self.lo * r]) or np.any(a[self.hi * r:])
                          for i, r in zip(cols, per_row) for a in (ms[i], vs[i]) if a.size)
            if not outside:  # the rows outside are left exactly as they are: not visited
                for i, r in zip(cols, per_row):
                    sl = slice(self.lo * r, self.hi * r)
                    ps[i], gs[i] = ps[i][sl], gs[i][sl]
                    ms[i], vs[i] = (a[sl] if a.size else a for a in (ms[i], vs[i]))  # SGD: no moments
        return tuple(ps), tuple(gs), tuple(ms), tuple(vs), o.steps, o.kind, o.hyper


_data_ptr = torch.Tensor.data_ptr


class Arguments:
    """The kernels' arguments that stay the same between ranges, made once: the parameters, the accumulator and
    the optimizer's spans (while they are the same tensors and optimizer), and the rule state's arrays (while the
    state handed in is the one the engine returned last: its tensors are the engine's own, changed in place)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.opt: torch.optim.Optimizer | None = None
        self.key: list[int] = []
        self.params: tuple = ()
        self.last: NamedTuple | None = None  # the state returned last
        self.state: tuple = ()  # its arrays

    def of(self, params: Params, acc: Params, opt: torch.optim.Optimizer) -> tuple:
        key = [*map(_data_ptr, params.values()), *map(_data_ptr, acc.values())]
        if opt is not self.opt or key != self.key:
            lay = self.layout
            self.params = (*lay.arrays(params), *lay.arrays(acc), *lay.spans(params, acc, opt))
            self.opt, self.key = opt, key
        return self.params


class ColumnsEngine(Engine):
    """:func:`columns_range` for one columnar or constructive RTRL rule on its network (module docstring)."""

    def __init__(self, net: Columnar | Constructive, rule: ColumnarRTRL | ConstructiveRTRL) -> None:
        self.net, self.rule = net, rule
        self.layout = Layout.of(net)
        self.args = Arguments(self.layout)
        self.loss_kind = LOSSES[rule.loss]
        self.norm = normalisation(net)

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        lay, net, args = self.layout, self.net, self.args
        if state is not args.last:  # a state from elsewhere (the start, a reset, a new stage): copies of its tensors
            own, arrays = own_net_state(net, [state.net])
            M = state.M.clone(memory_format=torch.contiguous_format)
            args.last = state._replace(net=own, M=M)
            args.state = (*arrays[:2], view(M).reshape(M.shape[0], M.shape[1], M.shape[2], -1), *arrays[2:])
        losses = np.empty(t1 - t0, args.state[0].dtype)
        updates, full = columns_range(lay.lstm, net.n_in, lay.per_stage, lay.lo, lay.hi, *args.of(params, acc, opt),
                                      self.loss_kind, *args.state, *self.norm, seq.xs, seq.ys, seq.mask, t0, t1, n_seq,
                                      every, losses)
        return RangeResult(state=args.last, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> ColumnsEngine | None:
    """The engine for ``rule`` on ``net``: columnar RTRL on the columnar network or constructive RTRL on the
    constructive one (neither a subclass), on the fast path's state, with the loss mse or ce; ``None``
    otherwise."""
    pair = (type(net), type(rule))
    if pair not in ((Columnar, ColumnarRTRL), (Constructive, ConstructiveRTRL)) or not rule.fast \
            or rule.loss not in LOSSES:
        return None
    return ColumnsEngine(net, rule)
