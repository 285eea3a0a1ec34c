"""UORO on the LSTM, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.uoro` (Tallec & Ollivier 2017, Algorithm 1; its module docstring states the
equations), run in its definition's form (:class:`~neuro.rules.uoro.UOROState`: ``s~`` [B K, 2n] over the state
``(h, c)``, ``theta~`` [B K, P] flat in sorted key order); the network :class:`models.lstm.LSTM` (not a
subclass), its cell from :mod:`neuro.engine.lstm`. With ``z_t = [x_t; h_{t-1}; 1]`` and ``e_t = dl_t/dy_t``
(carrying the loss's ``1/B``), the step's products are closed form through the cell's tangent and cotangent:
``theta~`` is zero on the readout and kept, per pair, as the matrix ``Theta`` [4n, n_in + n + 1] over
``[W_in | W_rec | b]``, and :func:`lstm_uoro_range` computes, per step and per rank-one pair, in the rule's
order::

    (du_l, dc_l) = cotangent of (W_out^T e_t, 0)          (dl_t/du_t and dl_t/dc_{t-1}; dl_t/dh_{t-1} = W_rec^T du_l)
    J s~ = tangent of (W_rec s~_h, s~_c);    k = du_l . (W_rec s~_h) + dc_l . s~_c        (= dl_t/ds_{t-1} . s~)
    estimate += k Theta / samples + du_l z_t^T,   e_t h_t^T and e_t on W_out, b_out
    nu = the step's random signs [2n];   a = cotangent of (nu_h, nu_c) [4n];   ||delta|| = ||a|| ||z_t||
    rho_0 = sqrt(||Theta|| / (||J s~|| + eps)) + eps;    rho_1 = sqrt(||delta|| / (sqrt(2n) + eps)) + eps
    s~ <- rho_0 J s~ + rho_1 nu;    Theta <- Theta / rho_0 + a z_t^T / rho_1

(the norms in float64), after the cell's step (:func:`neuro.engine.lstm.step_derivatives`), the readout and the
loss's error; at the loop's schedule (``(t + 1) % update_every == 0`` or the sequence's last step) the
optimizer's update with the sum, which zeroes it (with Adam, ``W_rec``'s rows updated in the pass over
``Theta``, as each row's sum is complete: the same arithmetic as the whole update after the pass). The signs are the torch path's: drawn from the state's
generator per range, ``[steps, B samples, 2n]`` at once (the numbers, and the generator's state after them, of
one draw per step).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from models.lstm import LSTM
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import lstm as L
from neuro.engine.base import Engine, RangeResult, SequenceArrays, flat, view
from neuro.engine.optim import OptimizerArrays
from neuro.engine.uoro import theta_pass
from neuro.rules._onestep import flat_step
from neuro.rules.uoro import UORO

__all__ = ["LSTMUOROEngine", "build", "lstm_uoro_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True, error_model="numpy")
def lstm_uoro_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, eps_u, n_in, n, n_out,  # noqa: ANN001, ANN201
                    samples, h, c, S, Th, NU, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``,
    ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h``, ``c``
    [B, n] the network state; the pairs (``samples`` a sample, sample-major): ``S`` [BK, 2n] ``s~``, ``Th`` [BK,
    4n, n_in + n + 1] ``Theta``; ``NU`` [t1 - t0, BK, 2n] the signs; ``xs`` [T, B, n_in], ``ys`` [T, B, n_out],
    ``mask`` [T, B]; ``losses`` [t1 - t0] (written). All changed in place. Returns the updates applied and
    whether the accumulator holds estimates not yet applied."""
    W_in, W_rec, b = ps[0].reshape((4 * n, n_in)), ps[1].reshape((4 * n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((4 * n, n_in)), acc[1].reshape((4 * n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    nb, BK = h.shape[0], S.shape[0]
    zero = K.cast(0.0, h)
    h_new, c_new = np.empty_like(h), np.empty_like(h)
    D = np.empty((nb, n, 6), h.dtype)
    y_hat, eps = np.empty((nb, n_out), h.dtype), np.empty((nb, n_out), h.dtype)
    DU = np.empty((nb, 4 * n), h.dtype)  # dl_t/du_t
    DC = np.empty((nb, n), h.dtype)  # dl_t/dc_{t-1}
    U = np.empty(4 * n, h.dtype)  # W_rec s~_h
    Js = np.empty((BK, 2 * n), h.dtype)
    A = np.empty((BK, 4 * n), h.dtype)  # a, then a / rho_1
    kg = np.empty(BK, h.dtype)  # k / samples
    inv0 = np.empty(BK, h.dtype)  # 1 / rho_0
    sq = np.empty(BK)  # ||Theta||^2
    zz = np.empty(nb)  # ||z||^2
    root_s = math.sqrt(2 * n)
    m_rec = ms[1].reshape((ms[1].size // n, n))  # Adam's moments (rows of W_rec; no rows where there are none)
    v_rec = vs[1].reshape((vs[1].size // n, n))
    scratch = np.zeros(n, h.dtype)  # a row's sum where W_rec's accumulator is known to be zero (kept zero)
    for p in range(BK):
        sq[p] = 0.0
        for r in range(4 * n):
            sq[p] += K.sum_squares(Th[p, r])
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        x, nu = xs[t], NU[t - t0]
        L.step_derivatives(W_in, W_rec, b, x, h, c, h_new, c_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):  # dl_t/du_t, dl_t/dc_{t-1}, ||z||^2, the readout's exact gradient
            for a in range(n):
                la = zero
                for k in range(n_out):
                    la += eps[s, k] * W_out[k, a]
                Ds = D[s, a]
                DU[s, a], DU[s, n + a], DU[s, 2 * n + a], DU[s, 3 * n + a], DC[s, a] = L.cotangent(Ds[:5], Ds[5], la,
                                                                                                  zero)
            z2 = 1.0
            for j in range(n_in):
                z2 += np.float64(x[s, j]) * np.float64(x[s, j])
            for j in range(n):
                z2 += np.float64(h[s, j]) * np.float64(h[s, j])
            zz[s] = z2
            for k in range(n_out):
                e = eps[s, k]
                g_bout[k] += e
                for j in range(n):
                    g_out[k, j] += e * h_new[s, j]
        for p in range(BK):  # J s~, k, a, the factors rho_0 and rho_1, the new s~
            s = p // samples
            sp, Jp, nup = S[p], Js[p], nu[p]
            for r in range(4 * n):
                U[r] = K.dot(W_rec[r], sp[:n])
            nJ2, kd, na2 = 0.0, 0.0, 0.0
            for a in range(n):
                Ds = D[s, a]
                d, f = Ds[:5], Ds[5]
                dc, dh = L.tangent(d, f, U[a], U[n + a], U[2 * n + a], U[3 * n + a], sp[n + a])
                Jp[a], Jp[n + a] = dh, dc
                nJ2 += np.float64(dh) * np.float64(dh) + np.float64(dc) * np.float64(dc)
                kd += np.float64(DC[s, a]) * np.float64(sp[n + a])
                ai, af, ag, ao, _ = L.cotangent(d, f, nup[a], nup[n + a])
                A[p, a], A[p, n + a], A[p, 2 * n + a], A[p, 3 * n + a] = ai, af, ag, ao
                na2 += np.float64(ai) * np.float64(ai) + np.float64(af) * np.float64(af) + \
                    np.float64(ag) * np.float64(ag) + np.float64(ao) * np.float64(ao)
            for r in range(4 * n):
                kd += np.float64(DU[s, r]) * np.float64(U[r])
            r0 = math.sqrt(math.sqrt(sq[p]) / (math.sqrt(nJ2) + eps_u)) + eps_u
            r1 = math.sqrt(math.sqrt(na2 * zz[s]) / (root_s + eps_u)) + eps_u
            kg[p] = K.cast(kd / samples, h)
            inv0[p] = K.cast(1.0 / r0, h)
            c0, c1, inv1 = K.cast(r0, h), K.cast(r1, h), K.cast(1.0 / r1, h)
            for q in range(2 * n):
                sp[q] = c0 * Jp[q] + c1 * nup[q]
            for r in range(4 * n):
                A[p, r] = A[p, r] * inv1
        update = K.update_due(t, n_seq, every)
        fused = update and opt_kind == K.ADAM  # W_rec's rows updated in the pass over Theta
        theta_pass(Th, kg, inv0, A, DU, x, h, samples, g_in, g_rec, g_b, sq, scratch, fused and clean, fused, opt_kind,
                   W_rec, m_rec, v_rec, steps[1], hyper)
        h[:, :] = h_new
        c[:, :] = c_new
        applied, full = K.scheduled_update(update, 1 if fused else -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
        clean = not full
    return updates, full


class LSTMUOROEngine(Engine):
    """:func:`lstm_uoro_range` for one UORO rule on one LSTM (module docstring)."""

    def __init__(self, net: LSTM, rule: UORO) -> None:
        self.net, self.rule = net, rule
        self.loss_kind = LOSSES[rule.loss]

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, rule = self.net, self.rule
        n, n_in = net.n_hidden, net.n_in
        fields = {k: v if v.is_contiguous() else v.contiguous() for k, v in state.net._asdict().items()}
        h, c = fields["h"], fields["c"]
        S = state.s_tilde.contiguous().clone()
        BK = S.shape[0]
        sl = flat_step(net, rule.loss, params).param_slices()
        tt = state.theta_tilde
        Th = torch.cat([tt[:, sl["W_in"]].reshape(BK, 4 * n, n_in), tt[:, sl["W_rec"]].reshape(BK, 4 * n, n),
                        tt[:, sl["b"]].reshape(BK, 4 * n, 1)], 2).contiguous()
        r = torch.randint(0, 2, (t1 - t0, BK, 2 * n), generator=state.gen, dtype=torch.int8)  # the torch path's draws
        NU = (2 * r - 1).to(h.dtype)
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = tuple(flat(params[k]) for k in ORDER)
        gs = tuple(flat(acc[k]) for k in ORDER)
        losses = np.empty(t1 - t0, view(h).dtype)
        updates, full = lstm_uoro_range(ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, float(rule.eps),
                                        n_in, n, net.n_out, rule.samples, view(h), view(c), view(S), view(Th),
                                        view(NU), seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, losses)
        tt = torch.zeros_like(state.theta_tilde)
        tt[:, sl["W_in"]] = Th[:, :, :n_in].reshape(BK, -1)
        tt[:, sl["W_rec"]] = Th[:, :, n_in:n_in + n].reshape(BK, -1)
        tt[:, sl["b"]] = Th[:, :, -1]
        state = state._replace(net=state.net._replace(**fields), s_tilde=S, theta_tilde=tt, t=state.t + t1 - t0)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))


def build(net: object, rule: object) -> LSTMUOROEngine | None:
    """The engine for ``rule`` on ``net``: UORO (not a subclass) on the LSTM (not a subclass) with the loss mse or
    ce, running the rule's definition (no fast path applies); ``None`` otherwise."""
    if type(net) is not LSTM or type(rule) is not UORO or rule.loss not in LOSSES or rule.fast_path is not None:
        return None
    return LSTMUOROEngine(net, rule)
