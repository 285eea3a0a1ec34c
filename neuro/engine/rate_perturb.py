"""The perturbation rules on the rate RNN, compiled: a range of steps of online training in one numba call.

The rules are ``np``, ``anp``, ``anp-time`` and ``wp`` (:mod:`neuro.engine.perturb` states their step and cites
their papers); the network :class:`models.rate.RateRNN` (not a subclass), whose step is
:func:`neuro.engine.kernels.rate_step`::

    I_t = W_in x_t + W_rec h_{t-1} + b        h_t = (1 - alpha) h_{t-1} + alpha tanh(I_t)        a_t = W_out h_t + b_out

*Node rules* (:func:`node_range`): the clean pass, then each noisy row's from its own ``h~_{t-1}`` (np,
anp-time) or the clean ``h_{t-1}`` (anp) with the bias ``b + xi_h`` (``I~_t = I_t + xi_h`` where the rows start
from the same state), and the output ``a~_t = W_out h~_t + b_out + xi_y``; the signals, the estimate, the
window slots and the update are :mod:`neuro.engine.perturb`'s.

*Weight perturbation* (:func:`wp_range`): the clean network with ``theta``, the ``K`` perturbed copies with
``theta + xi_k``, each its own ``h``; ``g_t = sum_k (L~_{k,t} - L_t) / (sigma^2 K) xi_k``.

*The decorrelation layer* (``decorrelation=eta``, ``alpha = 1``; :mod:`models.rate`): every pass, clean, noisy
or perturbed, ends in ``xhat = D tanh(I)`` (:func:`decorrelate`), which the state holds (``W_rec`` reads
``xhat_{t-1}``, the readout ``xhat_t``); ``D`` is no parameter of the rules (not perturbed, no estimate) but
learnt by the network's own rule as the training loop applies it: after every step the clean ``xhat_t``'s
``offdiag(xhat^T xhat / B) D`` is added to its own sum (:func:`local_add`), and at each update ``D <- D - eta
sum`` (:func:`local_apply`). The sum pending between two ranges of a sequence is the engine's (a sequence
ends in an update, which leaves it zero).
"""

from __future__ import annotations

import numpy as np

from models.rate import RateRNN
from neuro._numba import numba
from neuro.engine import kernels as K
from neuro.engine import perturb as P
from neuro.engine.base import Engine, flat, view
from neuro.rules.wp import WeightPerturbation

__all__ = ["build", "decorrelate", "local_add", "local_apply", "node_range", "wp_range"]


@numba.njit(cache=True)
def decorrelate(Dc, rows, scratch):  # noqa: ANN001, ANN201
    """``rows[s] <- Dc rows[s]`` for each row of ``rows`` [R, n] (``Dc`` [n, n]; [0, 0]: no layer, unchanged;
    ``scratch`` [n])."""
    if Dc.shape[0] == 0:
        return
    for s in range(rows.shape[0]):
        for i in range(Dc.shape[0]):
            scratch[i] = K.dot(Dc[i], rows[s])
        rows[s, :] = scratch


@numba.njit(cache=True)
def local_add(Dc, xh, V, acc_l, c):  # noqa: ANN001, ANN201
    """``acc_l += (xh^T (xh Dc) - diag(sum_s xh_s^2) Dc) / B``: the step's ``offdiag(xh^T xh / B) Dc`` from the
    clean ``xh`` [B, n] (``V`` [B, n], ``c`` [n] scratch; ``Dc`` [0, 0]: nothing)."""
    nb, n = xh.shape
    if Dc.shape[0] == 0:
        return
    V[:, :] = 0.0
    for s in range(nb):
        for i in range(n):
            a, di = xh[s, i], Dc[i]
            for j in range(n):
                V[s, j] += a * di[j]
    fb = K.cast(nb, xh)
    for i in range(n):
        sq = K.cast(0.0, xh)
        for s in range(nb):
            sq += xh[s, i] * xh[s, i]
        row, di = acc_l[i], Dc[i]
        c[:] = 0.0
        for s in range(nb):
            a, v = xh[s, i], V[s]
            for j in range(n):
                c[j] += a * v[j]
        for j in range(n):
            row[j] += (c[j] - sq * di[j]) / fb


@numba.njit(cache=True)
def local_apply(Dc, acc_l, eta):  # noqa: ANN001, ANN201
    """The network's own update ``Dc <- Dc - eta acc_l``, the sum then zeroed."""
    e = K.cast(eta, Dc)
    for i in range(Dc.shape[0]):
        for j in range(Dc.shape[1]):
            Dc[i, j] = Dc[i, j] - e * acc_l[i, j]
            acc_l[i, j] = 0.0


@numba.njit(cache=True)
def node_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, Dc, acc_l, eta, signal, keep, sigma2,  # noqa: ANN001, ANN201
               root_n, tiny, h, hn, xi, xs, ys, mask, t0, t1, n_seq, every, last, rec_l, rec_yn, rec_p, rec_z,
               rec_i, rec_in, rec_a, losses):
    """Steps ``t0 .. t1 - 1`` of a node rule (:mod:`neuro.engine.perturb`) on the rate RNN, a sequence of
    ``n_seq`` steps.

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`~neuro.engine.perturb.ORDER`;
    ``ms``, ``vs``, ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`);
    ``Dc`` [n, n], ``acc_l`` [n, n], ``eta``: the decorrelation layer, its pending sum and rate ([0, 0]: none);
    ``signal``: ``NP``, ``ANP_LAYER`` or ``ANP_GLOBAL`` (:mod:`neuro.engine.perturb`); ``keep``: the noisy copies
    keep their state; ``h`` [B, n], ``hn`` [M, n] the clean and noisy states (``hn`` scratch unless ``keep``);
    ``xi`` [t1 - t0, M, n + n_out] the steps' noise; ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B];
    ``last`` [W] (:func:`~neuro.engine.perturb.positions`) and the ``rec_*`` arrays [W, ...]:
    :func:`~neuro.engine.perturb.record`; ``losses`` [t1 - t0] (written). Returns the updates applied and whether
    the accumulator holds estimates."""
    nb, n = h.shape
    M = hn.shape[0]
    kk = M // nb
    n_in, n_out = xs.shape[2], ys.shape[2]
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g = (acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2], acc[3].reshape((n_out, n)), acc[4])
    h_new, D = np.empty_like(h), np.empty_like(h)
    hn_new, r_D = np.empty_like(hn), np.empty((1, n), h.dtype)
    yc, yn = np.empty((nb, n_out), h.dtype), np.empty((M, n_out), h.dtype)
    Lc, Ln = np.empty(nb, h.dtype), np.empty(M, h.dtype)
    eps = np.empty((1, n_out), h.dtype)
    bn, dh, diff, Eh = np.empty(n, h.dtype), np.empty(n, h.dtype), np.empty(n, h.dtype), np.empty(n, h.dtype)
    da, Ey = np.empty(n_out, h.dtype), np.empty(n_out, h.dtype)
    s2, rn, tn, fm = K.cast(sigma2, h), K.cast(root_n, h), K.cast(tiny, h), K.cast(M, h)
    updates, full = 0, False
    for t in range(t0, t1):
        x, y, mk, noise = xs[t], ys[t], mask[t], xi[t - t0]
        K.rate_step(W_in, W_rec, b, alpha, x, h, h_new, D)  # the clean pass
        decorrelate(Dc, h_new, dh)
        K.readout(W_out, b_out, h_new, yc)
        losses[t - t0] = P.clean_losses(loss_kind, yc, y, mk, Lc, eps)
        for m in range(M):  # the noisy passes (one row each): the current's noise in the bias
            s = m // kk
            for a in range(n):
                bn[a] = b[a] + noise[m, a]
            K.rate_step(W_in, W_rec, bn, alpha, x[s:s + 1], hn[m:m + 1] if keep else h[s:s + 1], hn_new[m:m + 1], r_D)
            decorrelate(Dc, hn_new[m:m + 1], dh)
            Ln[m] = P.noisy_loss(loss_kind, W_out, b_out, hn_new[m:m + 1], noise[m, n:], y[s:s + 1], mk[s:s + 1],
                               yn[m:m + 1], eps)
        P.node_estimate(signal, keep, W_rec, noise, Lc, Ln, h, hn, yc, yn, x, h_new, s2, rn, tn, fm, *g, dh, diff, da,
                      Eh, Ey)
        P.record(last, t, signal, keep, W_in, W_rec, b, noise, x, h, hn, h_new, Lc, yc, yn, rec_l, rec_yn, rec_p,
               rec_z, rec_i, rec_in, rec_a)
        local_add(Dc, h_new, D, acc_l, dh)
        h[:, :] = h_new
        if keep:
            hn[:, :] = hn_new
        full = not P.at_schedule(ps, acc, ms, vs, steps, opt_kind, hyper, t, n_seq, every)
        if not full:
            updates += 1
            local_apply(Dc, acc_l, eta)
    return updates, full


@numba.njit(cache=True)
def wp_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, Dc, acc_l, eta, denom, h, hk, xi, offs,  # noqa: ANN001, ANN201
             redraw, tr0, xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of weight perturbation (:mod:`neuro.engine.perturb`) on the rate RNN, a sequence
    of ``n_seq`` steps.

    ``ps``, ``acc``, ``ms``, ``vs``, ``steps``, ``opt_kind``, ``hyper``, ``Dc``, ``acc_l``, ``eta``: as
    :func:`node_range`; ``denom`` =
    ``sigma^2 K``; ``h`` [B, n], ``hk`` [K, B, n] the clean and perturbed states; ``xi`` [R, K, P] the
    perturbations, ``xi[0]`` the state's, then one per step drawn (``redraw``: each step whose count since the
    sequence's start, ``tr0`` at ``t0``, is > 0); ``offs`` [6] the parameters' offsets in ``P``
    (:data:`~neuro.engine.perturb.ORDER`). Returns the updates applied, whether the accumulator holds estimates,
    and the row of ``xi`` last used."""
    nb, n = h.shape
    nk, Pn = xi.shape[1], xi.shape[2]
    n_in, n_out = xs.shape[2], ys.shape[2]
    pert = np.empty((nk, Pn), h.dtype)
    g = np.empty(Pn, h.dtype)
    h_new, D = np.empty_like(h), np.empty_like(h)
    hk_new = np.empty_like(hk)
    y_hat, eps = np.empty((nb, n_out), h.dtype), np.empty((nb, n_out), h.dtype)
    row = np.empty(n, h.dtype)
    den = K.cast(denom, h)
    r, stale, updates, full, clean = 0, True, 0, False, False  # clean: the previous step updated (the sum is zero)
    for t in range(t0, t1):
        if redraw and tr0 + t - t0 > 0:
            r += 1
            stale = True
        if stale:  # theta + xi_k, as the step's parameters after an update or a new draw
            P.perturbed(ps, xi[r], offs, pert)
            stale = False
        x, y, mk = xs[t], ys[t], mask[t]
        K.rate_step(ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2], alpha, x, h, h_new, D)
        decorrelate(Dc, h_new, row)
        K.readout(ps[3].reshape((n_out, n)), ps[4], h_new, y_hat)
        l = K.loss_and_error(loss_kind, y_hat, y, mk, eps)
        losses[t - t0] = l
        for k in range(nk):
            q = pert[k]
            K.rate_step(q[offs[0]:offs[1]].reshape((n, n_in)), q[offs[1]:offs[2]].reshape((n, n)),
                        q[offs[2]:offs[3]], alpha, x, hk[k], hk_new[k], D)
            decorrelate(Dc, hk_new[k], row)
            K.readout(q[offs[3]:offs[4]].reshape((n_out, n)), q[offs[4]:offs[5]], hk_new[k], y_hat)
            P.wp_add(g, (K.loss_and_error(loss_kind, y_hat, y, mk, eps) - l) / den, xi[r, k], k == 0)
        update = K.update_due(t, n_seq, every)
        local_add(Dc, h_new, D, acc_l, row)
        h[:, :] = h_new
        hk[:, :, :] = hk_new
        P.wp_apply(update, clean, ps, acc, g, offs, ms, vs, steps, opt_kind, hyper)
        if update:
            local_apply(Dc, acc_l, eta)
            updates += 1
            full, stale, clean = False, True, True
        else:
            full, clean = True, False
    return updates, full, r



class _Decorrelation:
    """The rate RNN's kernel arguments per range: ``alpha``, the decorrelation layer ``D`` (a view of the
    parameter), its pending sum (the engine's, zeroed at a sequence's start) and rate; ``[0, 0]`` arrays without
    the layer."""

    net: RateRNN
    _acc_l: np.ndarray | None = None

    def model_arguments(self, params: dict, t0: int) -> tuple:
        net, like = self.net, view(params["W_in"])
        if not net.decorrelation:
            none = np.zeros((0, 0), like.dtype)
            return float(net.alpha), none, none, 0.0
        n = net.n_hidden
        if t0 == 0 or self._acc_l is None or self._acc_l.dtype != like.dtype:
            self._acc_l = np.zeros((n, n), like.dtype)
        return float(net.alpha), flat(params["D"]).reshape(n, n), self._acc_l, float(net.decorrelation)


class RateNodeEngine(_Decorrelation, P.NodeEngine):
    """:func:`node_range` for one node rule on one rate RNN."""


class RateWPEngine(_Decorrelation, P.WPEngine):
    """:func:`wp_range` for one ``wp`` rule on one rate RNN."""


def build(net: object, rule: object) -> Engine | None:
    """The engine for ``rule`` on ``net``: ``np``, ``anp``, ``anp-time`` or ``wp`` on the rate RNN where
    :func:`neuro.engine.perturb.applies` holds; ``None`` otherwise."""
    if not P.applies(net, RateRNN, rule):
        return None
    if type(rule) is WeightPerturbation:
        return RateWPEngine(net, rule, wp_range)
    return RateNodeEngine(net, rule, node_range)
