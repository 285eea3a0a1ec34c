"""The sequential part of a window of UORO's rate fast path (:mod:`neuro.rules._fast.uoro`): for each step
``s`` of the window, in order, ``J s~_{s-1}``, the factor ``rho_0,s``, the new ``s~_s`` and the scalars that
say how ``theta~`` changed (``||theta~||^2``, its scale ``D``, the weight ``w_s`` of the step's rank-one term,
``k_s = r_s . J s~_{s-1}``). Two implementations of the same loop:

* :func:`seq_step` (numba, compiled once per dtype and cached on disk: :mod:`neuro._numba`): one step for one
  pair (batch 1, one sample) on the CPU, its ``W_rec s~`` formed in the same pass over ``W_rec`` as the
  network's ``W_rec h`` (:func:`products`), and :func:`add_shares`, which adds ``Theta``'s shares to the
  window's two matrix products and gives ``||Theta||^2`` in one pass;
* :func:`sequence` (torch): the whole loop for ``B K`` pairs at once, on any device.

numba is imported with this module, which only :mod:`neuro.rules._fast.uoro` imports.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import Tensor

from neuro._numba import numba
from neuro.rules._matvec import FASTMATH

__all__ = ["add_shares", "products", "seq_step", "sequence"]


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def add_shares(G, T_new, Theta, gam, cD):
    """``G += gam Theta``, ``T_new += cD Theta`` (flat arrays) in one pass; returns ``||T_new||^2`` (float64)."""
    sq = 0.0
    g = G.dtype.type(gam)
    d = G.dtype.type(cD)
    for k in range(G.shape[0]):
        t = Theta[k]
        G[k] += g * t
        v = T_new[k] + d * t
        T_new[k] = v
        sq += np.float64(v) * np.float64(v)
    return sq


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def products(W, h, s_prev, F_s, R_s, oma, out_Wh, out_s):
    """``out_Wh = W h``, ``out_s = J s~ = oma s~ + F_s * (W s~)`` from one pass over ``W``; returns ``(||J s~||^2,
    r_s . J s~)`` in float64. (The row loop is :func:`neuro.rules._matvec.mv2`'s, written here again on
    purpose: numba's on-disk cache does not notice a change in a compiled function of another module.)"""
    n, k = W.shape
    nJ2 = 0.0
    kd = 0.0
    for i in range(n):
        sa = h.dtype.type(0.0)
        sb = h.dtype.type(0.0)
        for j in range(k):
            w = W[i, j]
            sa += w * h[j]
            sb += w * s_prev[j]
        out_Wh[i] = sa
        js = F_s[i] * sb
        if oma != 0.0:
            js += oma * s_prev[i]
        out_s[i] = js
        jd = np.float64(js)
        nJ2 += jd * jd
        kd += np.float64(R_s[i]) * jd
    return nJ2, kd


@numba.njit(cache=True, nogil=True)
def seq_step(W, h, s_prev, FNR, S64, acc_in, acc_out, out_Wh, out_s, s):
    """Step ``s`` of a window's sequential part for one pair: ``J s~_{s-1}`` (and ``W h``, the network's product,
    from the same pass), the scalars in float64 (``acc_in`` -> ``acc_out``: ``||theta~||^2``, ``D``, 0, then
    ``w_r``, ``D_{r-1}``, ``k_r D_{r-1}`` for ``r = 1..L``), ``out_s = s~_s = rho_0 J s~_{s-1} + rho_1 nu_s``.

    ``FNR`` [3, L, n]: ``alpha f'_r``, ``rho_1,r nu_r``, ``r_r``; ``S64`` (float64): ``U_r`` [L], ``rho_1,r`` [L],
    ``||delta_r||`` [L], then ``1 - alpha, eps, c``, then ``H`` [L, L] row by row."""
    L = FNR.shape[1]
    oma, eps, c = S64[3 * L], S64[3 * L + 1], S64[3 * L + 2]
    H0 = 3 * L + 3 + s * L  # row s of H
    nJ2, kd = products(W, h, s_prev, FNR[0, s], FNR[2, s], oma, out_Wh, out_s)
    acc_out[:] = acc_in
    q, D = acc_in[0], acc_in[1]
    if q == 0.0 and c == 0.0:
        restart = True
        for r in range(s):
            if acc_in[3 + r] != 0.0:
                restart = False
        if restart:
            D = 1.0  # theta~_{s-1} = 0 exactly: restart its scale (D stays bounded)
    r0 = math.sqrt(math.sqrt(q) / (math.sqrt(nJ2) + eps)) + eps
    r1 = S64[L + s]
    nd = S64[2 * L + s]
    cross = c * S64[s]  # a_s^T theta~_{s-1} z_s / D_{s-1}
    for r in range(s):
        cross += acc_in[3 + r] * S64[H0 + r]
    qn = q / (r0 * r0) + 2.0 * D * cross / (r0 * r1) + (nd / r1) ** 2
    acc_out[0] = 0.0 if 0.0 > qn else qn  # max(qn, 0) that keeps NaN
    acc_out[3 + L + s] = D
    acc_out[3 + 2 * L + s] = kd * D  # k_s D_{s-1}
    D = D / r0
    acc_out[1] = D
    acc_out[3 + s] = 1.0 / (r1 * D) if nd > 0 else 0.0
    nu1 = FNR[1, s]
    for i in range(out_s.shape[0]):
        out_s[i] = nu1[i] + r0 * out_s[i]


def sequence(s_tilde: Tensor, WrT: Tensor, Fp: Tensor, NU1: Tensor, alpha: float, eps: float, q: list, c: list,
             U: list, H: list, rho1: list, nd: list):
    """The sequential part of a window for ``B K`` pairs at once: ``(s~_L, [J s~_{s-1}], D_L, w [BK][L], D_{s-1}
    [L][BK])`` from ``s~_0`` [BK, n], ``W_rec^T``, ``alpha f'_s`` and ``rho_1,s nu_s`` [L, BK, n], and per pair
    the lists ``q`` (``||theta~||^2``, updated in place), ``c``, ``U`` [L], ``H`` [L][L], ``rho1``, ``nd`` [L]."""
    L, BK = Fp.shape[0], Fp.shape[1]
    D, w, Dprev, JS = [1.0] * BK, [[0.0] * L for _ in range(BK)], [[0.0] * BK for _ in range(L)], []
    for s in range(L):
        Ws = s_tilde @ WrT
        Js = Fp[s] * Ws if alpha == 1.0 else torch.addcmul(s_tilde * (1.0 - alpha), Fp[s], Ws)
        JS.append(Js)
        nJ = torch.linalg.vector_norm(Js, dim=1).tolist()
        rho0 = []
        for p in range(BK):
            wp = w[p]
            if q[p] == 0.0 and c[p] == 0.0 and not any(wp[:s]):
                D[p] = 1.0
            r0 = math.sqrt(math.sqrt(q[p]) / (nJ[p] + eps)) + eps
            r1, Dp = rho1[p][s], D[p]
            cross = c[p] * U[p][s] + sum(map(operator.mul, wp[:s], H[p][s][:s]))
            q[p] = max(q[p] / (r0 * r0) + 2.0 * Dp * cross / (r0 * r1) + (nd[p][s] / r1) ** 2, 0.0)
            Dprev[s][p] = Dp
            D[p] = Dp / r0
            wp[s] = 1.0 / (r1 * D[p]) if nd[p][s] > 0 else 0.0
            rho0.append(r0)
        s_tilde = torch.addcmul(NU1[s], Js, torch.tensor(rho0, dtype=Js.dtype, device=Js.device)[:, None])
    return s_tilde, JS, D, w, Dprev
