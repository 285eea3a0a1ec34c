"""TD(lambda) over columnar or constructive RTRL, compiled: a range of steps of online training in one numba
call.

The rule is :mod:`neuro.rules.td` (Sutton 1988; Javed, Shah, Sutton & White 2023; its module docstring
states the equations) with the inner rule ``columnar`` on :class:`models.columnar.Columnar` or
``constructive`` on :class:`models.constructive.Constructive` (:mod:`neuro.engine.columnar`: the network
step and the learning columns' traces, :func:`neuro.engine.columnar.column_step`). The inner rule's loss is
``value`` (``v_t = sum_k y_hat_{t,k}``, error 1 at every output), so its per-sample estimate is
``grad v_t``: ``(1 W_out)_k Mh_{t,k}`` for a learning column's ``theta_k``, ``h_t`` for ``W_out``, 1 for
``b_out``. Per step and sample ``b`` (each sample its own TD process)::

    delta_t = c_t + gamma_t v_t - v_{t-1}            (c_t = x_t[cumulant_input], or sum_k y_t)
    estimate_t += -[mask_t] delta_t e_{t-1} / B      e_t = lam gamma_t e_{t-1} + grad v_t

(``gamma_t = gamma``, or ``gamma x_t[discount_input]`` with the rule's ``discount_input``). With the network's
online normalisation the readout's facts apply (:mod:`neuro.engine.columnar`): ``grad v_t`` is ``(1 W_out)_k
Mh_{t,k} / sqrt(var_f[k])`` for ``theta_k`` and ``hhat_t`` for ``W_out``.

the estimate added to the loop's accumulator and applied at the loop's schedule as in
:mod:`neuro.engine.columnar` (the learning columns' rows and the readout). The per-step loss reported is the
rule's own (``mse`` or ``ce`` of ``y_hat_t`` against ``y_t``, :func:`neuro.engine.kernels.loss_and_error`).
The eligibility traces of the frozen and inactive columns are zero (the rule's ``init`` makes them so and
their ``grad v_t`` is zero) and are not visited.

The rule state is :class:`~neuro.rules.td.TDLambdaState` with the inner rule's fast-path states (batch 1
each, side by side in the kernel); the engine works on copies and returns a new state holding them.
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
from neuro.engine.base import Engine, RangeResult, SequenceArrays, view
from neuro.engine.columnar import LOSSES, Arguments, Layout, column_step, update
from neuro.engine.columns_norm import normalisation, own_net_state, readout_features, sample_net_state
from neuro.rules.columnar import ColumnarRTRL
from neuro.rules.constructive import ConstructiveRTRL
from neuro.rules.td import TDLambda

__all__ = ["TDEngine", "build", "td_range"]


@numba.njit(cache=True)
def td_range(lstm, n_in, per_stage, lo, hi, W_in, W_ff, w_rec, b, W_out, b_out,  # noqa: ANN001, ANN201
             g_in, g_ff, g_rec, g_b, g_out, g_bout, ups, ugs, ums, uvs, usteps, opt_kind, hyper, loss_kind,
             h, c, M, mu_in, var_in, mu_f, var_f, E_in, E_ff, E_rec, E_b, E_out, E_bout, v_prev, delta,
             norm, rate, floor, gamma, decay, ci, di, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps of TD(lambda) (module docstring). The arguments
    as :func:`neuro.engine.columnar.columns_range`'s (``rate``: its ``decay``, the normalisation's rate), and
    ``E_*`` the eligibility traces [B, *shape] of the parameters, ``v_prev``, ``delta`` [B], ``gamma``,
    ``decay = gamma lam``, ``ci`` the cumulant's input (-1: the target summed over outputs), ``di`` the
    discount's input (-1: none; else both scaled by ``x_t[di]``). All changed in place. Returns the updates
    applied and whether the accumulator holds estimates not yet applied."""
    nb, n = h.shape
    n_out = W_out.shape[0]
    G = 4 if lstm else 1
    F = n_in + lo + 2
    hn = np.empty_like(h)
    cn = np.empty_like(c)
    hf = np.empty_like(h)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    d = K.cast(decay, h)
    gm = K.cast(gamma, h)
    one = K.cast(1.0, h)
    fb = K.cast(nb, h)
    eh = np.empty(n, h.dtype)
    z = np.empty(F, h.dtype)
    S, bits, xk = np.empty((4, 4 * n)), np.empty(4 * n, np.int64), np.empty(n_in + n)
    for k in range(lo, hi):  # dv/dh_k = sum_o W_out[o, k] (/ sqrt(var_f[k]) with normalisation)
        eh[k] = 0.0
    updates, full = 0, False
    for t in range(t0, t1):
        x = xs[t]
        for s in range(nb):
            column_step(lstm, n_in, per_stage, lo, hi, W_in, W_ff, w_rec, b, x[s], h[s], c[s], hn[s], cn[s], M[s], z,
                        S, bits, norm, rate, floor, mu_in[s], var_in[s], xk)
            if norm:
                readout_features(norm, hn[s], mu_f[s], var_f[s], rate, floor, hf[s])
        hr = hf if norm else hn  # what W_out reads
        K.readout(W_out, b_out, hr, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for k in range(lo, hi):
            e = K.cast(0.0, h)
            for o in range(n_out):
                e += W_out[o, k]
            eh[k] = e
        for s in range(nb):
            v, dl, w, dt = K.td_error(y_hat[s], x[s], ys[t, s], mask[t, s] != 0, ci, di, gm, d, v_prev[s], fb)
            for k in range(lo, hi):
                ek = eh[k]
                if norm:
                    ek = K.cast(ek / math.sqrt(float(var_f[s, k])), h)
                Mh = M[s, 0, k - lo]
                for g in range(G):
                    base = g * F
                    ei, gi = E_in[s, k, g], g_in[k, g]
                    for j in range(n_in):
                        gi[j] += w * ei[j]
                        ei[j] = dt * ei[j] + ek * Mh[base + j]
                    ef, gf = E_ff[s, k, g], g_ff[k, g]
                    for j in range(lo):
                        gf[j] += w * ef[j]
                        ef[j] = dt * ef[j] + ek * Mh[base + n_in + j]
                    g_rec[k, g] += w * E_rec[s, k, g]
                    E_rec[s, k, g] = dt * E_rec[s, k, g] + ek * Mh[base + n_in + lo]
                    g_b[k, g] += w * E_b[s, k, g]
                    E_b[s, k, g] = dt * E_b[s, k, g] + ek * Mh[base + n_in + lo + 1]
            for o in range(n_out):
                eo, go = E_out[s, o], g_out[o]
                for k in range(n):
                    go[k] += w * eo[k]
                    eo[k] = dt * eo[k] + hr[s, k]
                g_bout[o] += w * E_bout[s, o]
                E_bout[s, o] = dt * E_bout[s, o] + one
            v_prev[s] = v
            delta[s] = dl
        h[:, :] = hn
        c[:, :] = cn
        if K.update_due(t, n_seq, every):
            update(opt_kind, ups, ugs, ums, uvs, usteps, hyper)
            updates += 1
            full = False
        else:
            full = True
    return updates, full


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


class TDEngine(Engine):
    """:func:`td_range` for one TD(lambda) rule over columnar or constructive RTRL (module docstring)."""

    def __init__(self, net: Columnar | Constructive, rule: TDLambda) -> None:
        self.net, self.rule = net, rule
        self.layout = Layout.of(net)
        self.args = Arguments(self.layout)
        self.loss_kind = LOSSES[rule.loss]
        self.ci = -1 if rule.cumulant_input is None else int(rule.cumulant_input)
        lay = self.layout  # the kernel's arguments fixed for the engine: before the arrays, after the rule state
        self.head = (lay.lstm, net.n_in, lay.per_stage, lay.lo, lay.hi)
        di = rule.discount_input
        self.td = (*normalisation(net), float(rule.gamma), float(rule.gamma * rule.lam), self.ci,
                   -1 if di is None else int(di))

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        args = self.args
        if state is not args.last:  # a state from elsewhere (the start, a reset, a new stage): copies of its tensors
            args.last, args.state = self._own(params, state)
        losses = np.empty(t1 - t0, args.state[0].dtype)
        updates, full = td_range(*self.head, *args.of(params, acc, opt), self.loss_kind, *args.state, *self.td,
                                 seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        return RangeResult(state=args.last, losses=losses, updates=int(updates), pending=bool(full))

    def _own(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, tuple]:
        """A state equal to ``state`` holding copies of its tensors (the inner states' side by side, each
        sample's a view), and the arrays of :func:`td_range` over them."""
        lay, net = self.layout, self.net
        inner = state.inner
        own, (h, c, *stats) = own_net_state(net, [s.net for s in inner])
        M = torch.cat([s.M for s in inner])
        e = {k: _copy(v) for k, v in state.e.items()}
        n = own.h.shape[1]
        if (lay.lo, lay.hi) != (0, n) and any(bool(e[k][:, :lay.lo].any() or e[k][:, lay.hi:].any())
                                              for k in ("W_in", "W_ff", "w_rec", "b")):
            raise ValueError(f"the eligibility traces of columns outside the learning stage {net.stage} are not zero: "
                             "valid is a state of this stage's rule (its init)")
        v_prev, delta = _copy(state.v_prev), _copy(state.delta)
        new_inner = tuple(s._replace(net=sample_net_state(own, b), M=M[b:b + 1]) for b, s in enumerate(inner))
        own_state = state._replace(net=own, inner=new_inner, e=e, v_prev=v_prev, delta=delta)
        if "W_ff" not in e:  # the columnar network: no feed-forward weights
            e = {**e, "W_ff": torch.zeros((own.h.shape[0], *params["W_in"].shape[:2], 0), dtype=own.h.dtype)}
        Mv = view(M).reshape(M.shape[0], M.shape[1], M.shape[2], -1)
        return own_state, (h, c, Mv, *stats, *lay.arrays(e), view(v_prev), view(delta))


def build(net: object, rule: object) -> TDEngine | None:
    """The engine for ``rule`` on ``net``: TD(lambda) (not a subclass) over ``columnar`` on the columnar network
    or ``constructive`` on the constructive one, the inner rule on its fast path, the rule's loss mse or ce;
    ``None`` otherwise."""
    if type(rule) is not TDLambda or rule.loss not in LOSSES:
        return None
    inner = rule.inner
    pair = (type(net), type(inner))
    if pair not in ((Columnar, ColumnarRTRL), (Constructive, ConstructiveRTRL)) or not inner.fast:
        return None
    return TDEngine(net, rule)
