"""The perturbation rules on the LSTM, compiled: a range of steps of online training in one numba call.

The rules are node perturbation ``np`` (:mod:`neuro.rules.node_perturbation`: Williams 1992; Fiete & Seung 2006;
Garcia Fernandez, Keemink & van Gerven 2024, arXiv:2405.08967), activity-based node perturbation ``anp``
(:mod:`neuro.rules.anp`: Dalm, van Gerven & Ahmad 2023, arXiv:2310.00965) and in time ``anp-time``
(:mod:`neuro.rules.anp_time`: Garcia Fernandez et al. 2024), and weight perturbation ``wp``
(:mod:`neuro.rules.wp`: Jabri & Flower 1992, Cauwenberghs 1993); the network :class:`models.lstm.LSTM` (not a
subclass), its cell :func:`neuro.engine.lstm.lstm_step` (gates i, f, g, o: the current has ``4 n`` rows).

*Node rules* (:func:`lstm_node_range`; the step of :mod:`neuro.rules.node`). A clean network and ``K`` noisy
copies per sequence (rows ``m = s K + k``) run on the same input; the noise ``xi_h`` [4n] is on the noisy
currents (all four gates' pre-activations), ``xi_y`` on the noisy outputs::

    I_t  = W_in x_t + W_rec h_{t-1} + b               I~_t = W_in x_t + W_rec h~_{t-1} + b + xi_h
    (c_t, h_t) = cell(I_t, c_{t-1})                   (c~_t, h~_t) = cell(I~_t, c~_{t-1})
    a_t  = W_out h_t + b_out                          a~_t = W_out h~_t + b_out + xi_y
    dL_t = L(a~_t) - L(a_t)                           (per row; the clean loss of the row's sequence)
    np:   e_h = dL_t / sigma^2 xi_h,                  e_y = dL_t / sigma^2 xi_y
    anp:  e_h = sqrt(N) dL_t dh / ||dh||^2,           e_y = sqrt(N) dL_t da / ||da||^2
          dh = I~_t - I_t = xi_h + W_rec (h~_{t-1} - h_{t-1}),   da = a~_t - a_t,   N = n_in + n + n_out
    dW_in += e_h x_t^T / M,   dW_rec += e_h h_{t-1}^T / M,   db += e_h / M,   dW_out += e_y h_t^T / M,   db_out += e_y / M

(``cell``: ``c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)``, ``h_t = sigma(o) tanh(c_t)``; ``M = B K``). The noisy
copies keep their own ``(h~, c~)`` (np, anp-time) or start every step from the clean ones (anp: ``dh =
xi_h``). A noisy row's cell step is :func:`~neuro.engine.lstm.lstm_step` with the bias ``b + xi_h``.

*Weight perturbation* (:func:`lstm_wp_range`): the clean network with ``theta``, ``K`` perturbed copies with
``theta + xi_k`` (each its own ``(h, c)``), ``g_t = sum_k (L~_{k,t} - L_t) / (sigma^2 K) xi_k``; ``xi`` redrawn
every step after the first (``resample="step"``) or held from the sequence's start.

The signals and the estimate, the losses, the window slots of the windowed form of the node rules' state, the
update at the loop's schedule, the perturbed copies' parameters and the range's setup (the noise drawn per range
from the rule's generator in the torch path's order, both forms of the rule state) are those every model's
perturbation engine shares (:mod:`neuro.engine.perturb`); this module has the LSTM's passes.
"""

from __future__ import annotations

import numpy as np

from models.lstm import LSTM
from neuro._numba import numba
from neuro.engine import kernels as K
from neuro.engine import perturb as P
from neuro.engine.base import Engine
from neuro.engine.lstm import lstm_step
from neuro.rules.wp import WeightPerturbation

__all__ = ["build", "lstm_node_range", "lstm_wp_range"]


@numba.njit(cache=True)
def lstm_node_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, signal, keep, sigma2, root_n, tiny, h, c,  # noqa: ANN001, ANN201
                    hn, cn, xi, xs, ys, mask, t0, t1, n_seq, every, last, rec_l, rec_yn, rec_p, rec_z, rec_i, rec_in,
                    rec_a, losses):
    """Steps ``t0 .. t1 - 1`` of a node rule (module docstring) on the LSTM, a sequence of ``n_seq`` steps.

    As :func:`neuro.engine.rate_perturb.node_range`, with the clean state ``h``, ``c`` [B, n] and the noisy ``hn``,
    ``cn`` [M, n] (scratch unless ``keep``), the noise ``xi`` [t1 - t0, M, 4n + n_out] and the currents' slots
    ``rec_i``, ``rec_in`` [W, ., 4n]. Returns the updates applied and whether the accumulator holds estimates."""
    nb, n = h.shape
    M = hn.shape[0]
    kk = M // nb
    n_in, n_out, n4 = xs.shape[2], ys.shape[2], 4 * n
    W_in, W_rec, b = ps[0].reshape((n4, n_in)), ps[1].reshape((n4, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g = (acc[0].reshape((n4, n_in)), acc[1].reshape((n4, n)), acc[2], acc[3].reshape((n_out, n)), acc[4])
    h_new, c_new = np.empty_like(h), np.empty_like(c)
    hn_new, cn_new = np.empty_like(hn), np.empty_like(cn)
    yc, yn = np.empty((nb, n_out), h.dtype), np.empty((M, n_out), h.dtype)
    Lc, Ln = np.empty(nb, h.dtype), np.empty(M, h.dtype)
    eps = np.empty((1, n_out), h.dtype)
    bn, dh, Eh, diff = np.empty(n4, h.dtype), np.empty(n4, h.dtype), np.empty(n4, h.dtype), np.empty(n, h.dtype)
    da, Ey = np.empty(n_out, h.dtype), np.empty(n_out, h.dtype)
    s2, rn, tn, fm = K.cast(sigma2, h), K.cast(root_n, h), K.cast(tiny, h), K.cast(M, h)
    updates, full = 0, False
    for t in range(t0, t1):
        x, y, mk, noise = xs[t], ys[t], mask[t], xi[t - t0]
        lstm_step(W_in, W_rec, b, x, h, c, h_new, c_new)  # the clean pass
        K.readout(W_out, b_out, h_new, yc)
        losses[t - t0] = P.clean_losses(loss_kind, yc, y, mk, Lc, eps)
        for m in range(M):  # the noisy passes (one row each): the current's noise in the bias
            s = m // kk
            for a in range(n4):
                bn[a] = b[a] + noise[m, a]
            if keep:
                lstm_step(W_in, W_rec, bn, x[s:s + 1], hn[m:m + 1], cn[m:m + 1], hn_new[m:m + 1], cn_new[m:m + 1])
            else:
                lstm_step(W_in, W_rec, bn, x[s:s + 1], h[s:s + 1], c[s:s + 1], hn_new[m:m + 1], cn_new[m:m + 1])
            Ln[m] = P.noisy_loss(loss_kind, W_out, b_out, hn_new[m:m + 1], noise[m, n4:], y[s:s + 1], mk[s:s + 1],
                                 yn[m:m + 1], eps)
        P.node_estimate(signal, keep, W_rec, noise, Lc, Ln, h, hn, yc, yn, x, h_new, s2, rn, tn, fm, *g, dh, diff,
                        da, Eh, Ey)
        P.record(last, t, signal, keep, W_in, W_rec, b, noise, x, h, hn, h_new, Lc, yc, yn, rec_l, rec_yn, rec_p,
                 rec_z, rec_i, rec_in, rec_a)
        h[:, :] = h_new
        c[:, :] = c_new
        if keep:
            hn[:, :] = hn_new
            cn[:, :] = cn_new
        full = not P.at_schedule(ps, acc, ms, vs, steps, opt_kind, hyper, t, n_seq, every)
        updates += 0 if full else 1
    return updates, full


@numba.njit(cache=True)
def lstm_wp_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, denom, h, c, hk, ck, xi, offs, redraw, tr0,  # noqa: ANN001, ANN201
                  xs, ys, mask, t0, t1, n_seq, every, losses):
    """Steps ``t0 .. t1 - 1`` of weight perturbation (module docstring) on the LSTM, a sequence of ``n_seq``
    steps: as :func:`neuro.engine.rate_perturb.wp_range`, with the clean state ``h``, ``c`` [B, n] and the perturbed
    copies' ``hk``, ``ck`` [K, B, n]. Returns the updates applied, whether the accumulator holds estimates, and
    the row of ``xi`` last used."""
    nb, n = h.shape
    nk, Pn = xi.shape[1], xi.shape[2]
    n_in, n_out, n4 = xs.shape[2], ys.shape[2], 4 * h.shape[1]
    pert = np.empty((nk, Pn), h.dtype)
    g = np.empty(Pn, h.dtype)
    h_new, c_new = np.empty_like(h), np.empty_like(c)
    hk_new, ck_new = np.empty_like(hk), np.empty_like(ck)
    y_hat, eps = np.empty((nb, n_out), h.dtype), np.empty((nb, n_out), h.dtype)
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
        lstm_step(ps[0].reshape((n4, n_in)), ps[1].reshape((n4, n)), ps[2], x, h, c, h_new, c_new)
        K.readout(ps[3].reshape((n_out, n)), ps[4], h_new, y_hat)
        l = K.loss_and_error(loss_kind, y_hat, y, mk, eps)
        losses[t - t0] = l
        for k in range(nk):
            q = pert[k]
            lstm_step(q[offs[0]:offs[1]].reshape((n4, n_in)), q[offs[1]:offs[2]].reshape((n4, n)), q[offs[2]:offs[3]],
                      x, hk[k], ck[k], hk_new[k], ck_new[k])
            K.readout(q[offs[3]:offs[4]].reshape((n_out, n)), q[offs[4]:offs[5]], hk_new[k], y_hat)
            P.wp_add(g, (K.loss_and_error(loss_kind, y_hat, y, mk, eps) - l) / den, xi[r, k], k == 0)
        update = K.update_due(t, n_seq, every)
        h[:, :] = h_new
        c[:, :] = c_new
        hk[:, :, :] = hk_new
        ck[:, :, :] = ck_new
        P.wp_apply(update, clean, ps, acc, g, offs, ms, vs, steps, opt_kind, hyper)
        if update:
            updates += 1
            full, stale, clean = False, True, True
        else:
            full, clean = True, False
    return updates, full, r


def build(net: object, rule: object) -> Engine | None:
    """The engine for ``rule`` on ``net``: ``np``, ``anp``, ``anp-time`` or ``wp`` on the LSTM where
    :func:`neuro.engine.perturb.applies` holds; ``None`` otherwise."""
    if not P.applies(net, LSTM, rule):
        return None
    if type(rule) is WeightPerturbation:
        return P.WPEngine(net, rule, lstm_wp_range)
    return P.NodeEngine(net, rule, lstm_node_range)
