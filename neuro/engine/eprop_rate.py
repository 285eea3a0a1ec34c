"""e-prop on the rate RNN, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.eprop` (Bellec et al. 2020; its module docstring states the equations); the network
:class:`models.rate.RateRNN` (not a subclass), whose one trace field ``h`` has the one-step derivatives
``D = Z = dh^t/dh^{t-1} = 1 - alpha`` (the neuron-local part) and ``c = zi = dh^t/dI^t = alpha (1 - tanh(u)^2)``,
the bias in the current (``c_b = zi_b = c``) and a linear readout (``kappa = 0``, ``z = h``). With
``pre^t = [x^t, h^{t-1}]`` the rule's recursions are, per step, what :func:`eprop_range` computes::

    eps^t_ji = (1 - alpha) eps^{t-1}_ji + c^t_j pre^t_i      bar e^t = e^t = eps^t   (kappa = 0)
    eps^t_j  = (1 - alpha) eps^{t-1}_j  + c^t_j               (the bias, pre = 1)
    L^t_j = sum_k B_jk (dE/dy^t_k)          B = W_out^T (symmetric) or the state's feedback (random, adaptive)
    dW_ji += L^t_j bar e^t_ji    db_j += L^t_j bar e^t_j    dW_out += (dE/dy^t) (h^t)^T    db_out += dE/dy^t
    adaptive feedback: B <- B - feedback_lr ((dE/dy^t) (h^t)^T + feedback_decay B)

with the network step (:func:`neuro.engine.kernels.rate_step`), the readout, the loss and its error before them,
the traces and the summed estimate in one pass over the rows, and at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) the optimizer's update with the sum, which zeroes it (with
Adam, ``W_rec``'s rows updated in the same pass, as each row's sum is complete).

Both forms of the rule's state are run: the definition's :class:`~neuro.rules.eprop.EPropState` (``eps``,
``ebar`` equal, ``bbar = 1`` after a step) and the windowed path's
:class:`~neuro.rules._fast.eprop.EPropWindowState` (``[bar e; eps]`` at the start of the pending window and the
window's steps in its slots). The engine leaves the latter with no pending window (``t = 0``, the traces the
current ones, every step's estimate in the accumulator: the same future as the torch path's, and at every update
and sequence end, where checkpoints are taken, the same state), and writes each step into the slot the torch
path writes it to (the slots are views of the engine's buffers).
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
from neuro.rules._fast.eprop import EPropWindowState, Step
from neuro.rules.base import add_into
from neuro.rules.eprop import EProp

__all__ = ["EPropRateEngine", "build", "eprop_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}
FEEDBACKS = {"symmetric": 0, "random": 1, "adaptive": 2}


@numba.njit(cache=True)
def eprop_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, n_in, n, n_out,  # noqa: ANN001, ANN201
                h, P, P_b, fb, feedback, fb_lr, fb_decay, xs, ys, mask, t0, t1, n_seq, every,
                window, rec_pre, rec_L, rec_z, rec_e, rec_c, rec_d, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``,
    ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h`` [B, n]
    the network state, ``P`` [B, n, n_in + n], ``P_b`` [B, n] the eligibility traces, ``fb`` [n_out, n] the
    feedback ``B^T`` (``feedback`` 0: ``W_out`` read instead; 2: adapted with ``fb_lr``, ``fb_decay``); ``xs``
    [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B]; ``window`` > 0: each step's ``pre``, ``L``, ``h``,
    ``dE/dy``, ``c``, ``D`` written to ``rec_*[slot]``, the slot the windowed torch path writes it to; ``losses``
    [t1 - t0] (written). All changed in place. Returns the updates applied and whether the accumulator holds
    estimates not yet applied."""
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    F = W_out if feedback == 0 else fb  # [n_out, n]: L = (dE/dy) F
    m_rec = ms[1].reshape((ms[1].size // n, n))  # Adam's moments (rows of W_rec; no rows where there are none)
    v_rec = vs[1].reshape((vs[1].size // n, n))
    nb = h.shape[0]
    h_new = np.empty_like(h)
    D = np.empty_like(h)
    L = np.empty_like(h)
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    G = np.empty((n_out, n), h.dtype)  # the step's readout gradient (adaptive feedback)
    d = K.cast(1.0 - alpha, h)
    lr, decay = K.cast(fb_lr, h), K.cast(fb_decay, h)
    scratch = np.zeros(n, h.dtype)  # a row's sum where W_rec's accumulator is known to be zero (kept zero)
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        x = xs[t]
        K.rate_step(W_in, W_rec, b, alpha, x, h, h_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):  # the learning signal L = (dE/dy) B^T, with B before this step's adaptation
            for a in range(n):
                la = K.cast(0.0, h)
                for k in range(n_out):
                    la += eps[s, k] * F[k, a]
                L[s, a] = la
        if window > 0:  # the step in its slot of the windowed path
            j = (t - (t // every) * every) % window
            for s in range(nb):
                rec_pre[j, s, :n_in] = x[s]
                rec_pre[j, s, n_in:] = h[s]
            rec_L[j] = L
            rec_z[j] = h_new
            rec_e[j] = eps
            rec_c[j] = D
            rec_d[j] = d
        for k in range(n_out):  # the readout's exact gradient (dE/dy) h^T (bar z = h, bar 1 = 1)
            G[k] = 0.0
            for s in range(nb):
                e = eps[s, k]
                for j in range(n):
                    G[k, j] += e * h_new[s, j]
                g_bout[k] += e
            for j in range(n):
                g_out[k, j] += G[k, j]
            if feedback == 2:
                for j in range(n):
                    fb[k, j] = fb[k, j] - lr * (G[k, j] + decay * fb[k, j])
        update = K.update_due(t, n_seq, every)
        fused = update and opt_kind == K.ADAM
        if fused:  # W_rec's Adam step begun; its rows are updated in the pass below, as each row's sum is done
            c = K.row_update_begin(opt_kind, steps[1], hyper, W_rec)
        direct = fused and clean  # the row's sum is the step's estimate alone: summed in a scratch row instead
        for a in range(n):  # one pass over the rows: the traces, the estimate L_a e_ab summed over the batch
            g_row = scratch if direct else g_rec[a]
            for s in range(nb):
                Da, La = D[s, a], L[s, a]
                P_row, h_s, x_s = P[s, a], h[s], x[s]
                for j in range(n_in):
                    p = d * P_row[j] + Da * x_s[j]
                    P_row[j] = p
                    g_in[a, j] += La * p
                for j in range(n):
                    p = d * P_row[n_in + j] + Da * h_s[j]
                    P_row[n_in + j] = p
                    g_row[j] += La * p
                P_b[s, a] = d * P_b[s, a] + Da
                g_b[a] += La * P_b[s, a]
            if fused:  # and W_rec's row updated with it, the row's sum zeroed
                K.row_update(opt_kind, W_rec[a], g_row, m_rec, v_rec, a, c)
        h[:, :] = h_new
        applied, full = K.scheduled_update(update, 1 if fused else -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
        clean = not full
    return updates, full


class _Slots(NamedTuple):
    """The windowed path's step slots as views of the engine's buffers: the steps tuple handed out, and the
    buffers (torch, and numpy views of them) the kernel writes."""

    steps: tuple
    tensors: tuple
    arrays: tuple


class EPropRateEngine(Engine):
    """:func:`eprop_range` for one e-prop rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: EProp) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self.feedback = FEEDBACKS[rule.feedback]
        self._slots: _Slots | None = None
        self._out: tuple[torch.Tensor, ...] | None = None  # zbar, bbar, bar e, bar e_b: handed out, rewritten per range
        self._eps: tuple[torch.Tensor, torch.Tensor] | None = None  # the windowed form's eps, eps_b, handed out
        self._params, self._acc = Views(), Views()

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        n, n_in = net.n_hidden, net.n_in
        windowed = isinstance(state, EPropWindowState)
        if windowed and state.t > 0:  # a window left pending by the torch path: its estimate to the sum first
            state, g = self.rule.flush(params, state)
            add_into(acc, g)
        h = state.net.h if state.net.h.is_contiguous() else state.net.h.contiguous()
        nb, dtype = h.shape[0], view(h).dtype
        out = self._out
        if out is None or out[0].shape != h.shape or out[0].dtype != h.dtype:  # zbar, bbar = 1, bar e, bar e_b
            out = self._out = (torch.empty_like(h), torch.ones((), dtype=h.dtype), h.new_empty(nb, n, n_in + n),
                               torch.empty_like(h))
        zbar, one, ebar, ebar_b = out
        if windowed:  # the traces [bar e; eps] [B, n, 2, n_pre]: the engine's, handed out, or copied in
            mine = self._eps
            if mine is None or mine[0] is not state.eps or mine[1] is not state.eps_b:
                mine = self._eps = (state.eps.contiguous().clone(), state.eps_b.contiguous().clone())
            E, Eb = mine
            P, P_b = view(ebar), view(ebar_b)
            P[...] = view(E)[:, :, 1]
            P_b[...] = view(Eb)[:, :, 1, 0]
            slots = self._slots_for(state, h)
            rec = slots.arrays
        else:
            eps = state.eps if state.eps.is_contiguous() else state.eps.contiguous()
            eps_b = state.eps_b if state.eps_b.is_contiguous() else state.eps_b.contiguous()
            P, P_b = view(eps).reshape(nb, n, n_in + n), view(eps_b).reshape(nb, n)
            rec = tuple(np.zeros((0, nb, 0), dtype) for _ in range(6))
        B = state.B
        if B is not None and not B.is_contiguous():
            B = B.contiguous()
        fb = view(B) if B is not None else np.zeros((net.n_out, n), dtype)
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = self._params([params[k] for k in ORDER])
        gs = self._acc([acc[k] for k in ORDER])
        losses = np.empty(t1 - t0, dtype)
        updates, full = eprop_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, self.alpha, n_in,
                                    n, net.n_out, view(h), P, P_b, fb, self.feedback, float(self.rule.feedback_lr),
                                    float(self.rule.feedback_decay), seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every,
                                    self.rule.window if windowed else 0, *rec, losses)
        view(zbar)[...] = view(h)
        if windowed:
            Ea, Eba = view(E), view(Eb)
            Ea[:, :, 0], Ea[:, :, 1] = P, P
            Eba[:, :, 0, 0], Eba[:, :, 1, 0] = P_b, P_b
            state = state._replace(net=state.net._replace(h=h), eps=E, eps_b=Eb, zbar=zbar, bbar=one, B=B,
                                   steps=self._slots.steps, t=0)
        else:
            P_out, Pb_out = view(ebar), view(ebar_b)
            P_out[...], Pb_out[...] = P, P_b
            state = state._replace(net=state.net._replace(h=h), eps=eps, eps_b=eps_b, ebar=ebar, ebar_b=ebar_b,
                                   zbar=zbar, bbar=one, B=B)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))

    def _slots_for(self, state: EPropWindowState, h: torch.Tensor) -> _Slots:
        """The slot buffers, holding the steps of ``state`` (filled from its slots unless they are already the
        engine's views; made once per dtype and batch)."""
        s = self._slots
        if s is not None and s.steps is state.steps:
            return s
        W, (nb, n) = len(state.steps), h.shape
        if s is None or s.tensors[0].dtype != h.dtype or s.tensors[0].shape[:2] != (W, nb):
            new = h.new_zeros
            tensors = (new(W, nb, self.net.n_in + n), new(W, nb, n), new(W, nb, n), new(W, nb, self.net.n_out),
                       new(W, nb, n), new(W, nb, n))
            pre, L, z, e, c, d = tensors
            zero = new(nb, n)
            steps = tuple(Step(pre[j], L[j], z[j], e[j], (d[j][..., None, None], c[j][..., None], zero[..., None],
                                                          d[j][..., None], c[j], zero)) for j in range(W))
            s = self._slots = _Slots(steps, tensors, tuple(view(t) for t in tensors))
        first = state.steps[0]
        fill = ((slice(None), first),) if all(st is first for st in state.steps) else enumerate(state.steps)
        for j, st in fill:  # one blank in every slot (init, reset), or each slot's own step
            for buf, v in zip(s.tensors, (st.pre, st.L, st.zbar, st.dE_dy, st.local[1][..., 0],
                                          st.local[0][..., 0, 0])):
                buf[j] = v
        return s


def build(net: object, rule: object) -> EPropRateEngine | None:
    """The engine for ``rule`` on ``net``: e-prop (not a subclass) on the rate RNN (not a subclass) with the loss
    mse or ce; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) is not EProp or rule.loss not in LOSSES:
        return None
    return EPropRateEngine(net, rule)
