"""The compiled step of columnar RTRL's fast path (:mod:`neuro.rules._fast.columnar`; numba, compiled once
per dtype and cached on disk: :mod:`neuro._numba`): :func:`lstm_full` / :func:`rate_full` do one whole step of
the rule for every column and batch row in one call: the columns' forward step, the readout and the
traces (:func:`lstm_step`, :func:`rate_step`: passes over the columns), ``e_t`` and the loss
(:func:`output_error`), the estimate (:func:`estimate`: ``dl_t/dtheta_k = sum_b (e_t W_out)_{b,k}
M_{t,k}[h]``, ``dl_t/dW_out = e_t^T h_t``, ``dl_t/db_out = sum_b e_t``).

The equations are those of :func:`neuro.rules._fast.columnar.column_traces` term for term (the module
docstring there), with ``z_{t,k} = (x_t, h_{t-1,k}, 1)`` and the traces in the layout ``M[b, s, k, G * F + f]``
(``[B, S_c, n, G, F]`` with the last two axes flattened; ``s = 0``: ``h``, ``s = 1``: ``c``). The
pre-activations and gates are computed in float64 (float32 inputs too), the exponentials of all columns
at once by :func:`_vexp` (a loop the compiler vectorises; libm's ``exp`` / ``tanh`` one number a call
were half of the step), ``sigma(a) = 1 / (1 + e^{-a})`` and ``tanh`` from ``e^{-2|a|}``
(:func:`_tanh_from`); the traces' coefficients are cast to the traces' dtype before the inner loops
(``coef``), so a float32 pass stays in float32 there. Outputs are written, never read before: the
previous step's arrays are left as they were (the rule's state stays a snapshot)."""

import math

import numpy as np

from neuro._numba import numba

__all__ = ["estimate", "lstm_full", "lstm_step", "output_error", "rate_full", "rate_step"]


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 in two parts (Cody & Waite): k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.9082149292705877e-10
_MAGIC = 6755399441055744.0  # 1.5 * 2^52: v + _MAGIC holds round(v) in its low bits


@numba.njit(cache=True, nogil=True)
def _vexp(x, out, t, bits):
    """``out = exp(x)`` for float64 arrays [m], in loops the compiler vectorises (libm's ``exp`` is one call
    per number): ``exp(x) = 2^k exp(r)``, ``k = round(x / ln 2)``, ``|r| <= ln2 / 2``, ``exp(r)`` its Taylor
    polynomial to ``r^13`` (error < 1e-16), ``2^k`` built from ``k``'s bits. ``x`` is clamped to
    ``[-708, 708]`` (no overflow, no subnormal: ``exp(+-inf)`` gives ``e^{+-708}``); NaN stays NaN. ``t``
    [m] float64, ``bits`` [m] int64: scratch. A few ulp."""
    m = x.shape[0]
    for i in range(m):
        v = x[i]
        v = 708.0 if v > 708.0 else (-708.0 if v < -708.0 else v)
        t[i] = v * _LOG2E + _MAGIC
    tb = t.view(np.int64)
    magic = np.int64(0x4338000000000000)  # the bits of _MAGIC
    for i in range(m):
        bits[i] = (tb[i] - magic + 1023) << 52
    scale = bits.view(np.float64)
    for i in range(m):
        v = x[i]
        v = 708.0 if v > 708.0 else (-708.0 if v < -708.0 else v)
        k = t[i] - _MAGIC
        r = (v - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        out[i] = p * scale[i]
    return 0


@numba.njit(cache=True, nogil=True)
def _tanh_from(v, e):
    """``tanh(v)`` from ``e = exp(-2|v|)``: ``(1 - e) / (1 + e)``, signed; below ``|v| = 1/16`` (where
    ``1 - e`` would cancel) the odd series to ``v^13``. A few ulp."""
    x = abs(v)
    if x < 0.0625:
        x2 = x * x
        t = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (
            62.0 / 2835.0 + x2 * (-1382.0 / 155925.0 + x2 * (21844.0 / 6081075.0)))))))
    else:
        t = (1.0 - e) / (1.0 + e)
    return t if v >= 0 else -t


@numba.njit(cache=True, nogil=True)
def lstm_step(x, h_prev, c_prev, W_in, w_rec, b, W_out, b_out, M, h, c, y, M_out):
    """LSTM columns. ``x`` [B, n_in]; ``h_prev``, ``c_prev`` [B, n]; ``W_in`` [n, 4, n_in]; ``w_rec``, ``b``
    [n, 4]; ``W_out`` [n_out, n], ``b_out`` [n_out]; ``M`` [B, 2, n, 4 F] (read); ``h``, ``c`` [B, n], the
    readout ``y = h W_out^T + b_out`` [B, n_out] and ``M_out`` [B, 2, n, 4 F] (written)."""
    B, n_in = x.shape
    n, n_out = h_prev.shape[1], W_out.shape[0]
    F = n_in + 2
    acc = np.empty(n_out, np.float64)
    z = np.empty(F, M.dtype)
    coef = np.empty(8, M.dtype)  # f, alpha, o' tanh(c) w_rec[o], o (1 - tanh^2 c), o' tanh(c), kc[0..2]
    A = np.empty(4 * n, np.float64)  # pre-activations a_{t,k,G} at 4 k + G, then the gate values
    arg, ex, t, bits = np.empty(4 * n), np.empty(4 * n), np.empty(4 * n), np.empty(4 * n, np.int64)
    ct_, arg_c, ex_c, t_c, bits_c = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.int64)
    for bi in range(B):
        for j in range(n_in):
            z[j] = x[bi, j]
        z[n_in + 1] = 1.0
        for o in range(n_out):
            acc[o] = 0.0
        for k in range(n):  # pass 1: the pre-activations and the arguments of exp
            hp = h_prev[bi, k]
            a0 = a1 = a2 = a3 = 0.0  # four independent sums (a dependent chain of adds is slow)
            for j in range(n_in):
                xj = z[j]
                a0 += xj * W_in[k, 0, j]
                a1 += xj * W_in[k, 1, j]
                a2 += xj * W_in[k, 2, j]
                a3 += xj * W_in[k, 3, j]
            a0 = a0 + hp * w_rec[k, 0] + b[k, 0]
            a1 = a1 + hp * w_rec[k, 1] + b[k, 1]
            a2 = a2 + hp * w_rec[k, 2] + b[k, 2]
            a3 = a3 + hp * w_rec[k, 3] + b[k, 3]
            A[4 * k], A[4 * k + 1], A[4 * k + 2], A[4 * k + 3] = a0, a1, a2, a3
            arg[4 * k], arg[4 * k + 1], arg[4 * k + 2], arg[4 * k + 3] = -a0, -a1, -2.0 * abs(a2), -a3
        _vexp(arg, ex, t, bits)
        for k in range(n):  # pass 2: the gates (sigma(a) = 1 / (1 + e^{-a})) and c_t
            si = 1.0 / (1.0 + ex[4 * k])
            sf = 1.0 / (1.0 + ex[4 * k + 1])
            gg = _tanh_from(A[4 * k + 2], ex[4 * k + 2])
            so = 1.0 / (1.0 + ex[4 * k + 3])
            A[4 * k], A[4 * k + 1], A[4 * k + 2], A[4 * k + 3] = si, sf, gg, so
            ct = sf * c_prev[bi, k] + si * gg
            ct_[k] = ct
            arg_c[k] = -2.0 * abs(ct)
        _vexp(arg_c, ex_c, t_c, bits_c)
        for k in range(n):  # pass 3: h_t, the readout, the traces
            z[n_in] = h_prev[bi, k]
            si, sf, gg, so = A[4 * k], A[4 * k + 1], A[4 * k + 2], A[4 * k + 3]
            cp = c_prev[bi, k]
            ct = ct_[k]
            tc = _tanh_from(ct, ex_c[k])
            c[bi, k] = ct
            hk = so * tc
            h[bi, k] = hk
            for o in range(n_out):
                acc[o] += W_out[o, k] * hk
            kc0 = si * (1.0 - si) * gg  # i' g, f' c_{t-1}, i g' (kc[3] = 0)
            kc1 = sf * (1.0 - sf) * cp
            kc2 = si * (1.0 - gg * gg)
            do_tc = so * (1.0 - so) * tc
            coef[0] = sf
            coef[1] = kc0 * w_rec[k, 0] + kc1 * w_rec[k, 1] + kc2 * w_rec[k, 2]
            coef[2] = do_tc * w_rec[k, 3]
            coef[3] = so * (1.0 - tc * tc)
            coef[4] = do_tc
            coef[5] = kc0
            coef[6] = kc1
            coef[7] = kc2
            cf, alpha, ch, cc, dz = coef[0], coef[1], coef[2], coef[3], coef[4]
            Mh, Mc = M[bi, 0, k], M[bi, 1, k]
            oh, oc = M_out[bi, 0, k], M_out[bi, 1, k]
            for g in range(3):
                kg = coef[5 + g]
                base = g * F
                for fi in range(F):
                    q = base + fi
                    mh = Mh[q]
                    mc = Mc[q] * cf + mh * alpha + kg * z[fi]
                    oc[q] = mc
                    oh[q] = mh * ch + mc * cc
            base = 3 * F
            for fi in range(F):
                q = base + fi
                mh = Mh[q]
                mc = Mc[q] * cf + mh * alpha
                oc[q] = mc
                oh[q] = mh * ch + mc * cc + dz * z[fi]
        for o in range(n_out):
            y[bi, o] = acc[o] + b_out[o]
    return 0


@numba.njit(cache=True, nogil=True)
def rate_step(x, h_prev, W_in, w_rec, b, W_out, b_out, M, h, y, M_out):
    """Rate columns. ``x`` [B, n_in]; ``h_prev`` [B, n]; ``W_in`` [n, 1, n_in]; ``w_rec``, ``b`` [n, 1];
    ``W_out``, ``b_out`` as :func:`lstm_step`; ``M`` [B, 1, n, F] (read); ``h`` [B, n], ``y`` [B, n_out] and
    ``M_out`` [B, 1, n, F] (written)."""
    B, n_in = x.shape
    n, n_out = h_prev.shape[1], W_out.shape[0]
    F = n_in + 2
    acc = np.empty(n_out, np.float64)
    z = np.empty(F, M.dtype)
    coef = np.empty(2, M.dtype)
    A, arg, ex, t, bits = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.int64)
    for bi in range(B):
        for j in range(n_in):
            z[j] = x[bi, j]
        z[n_in + 1] = 1.0
        for o in range(n_out):
            acc[o] = 0.0
        for k in range(n):  # pass 1: the pre-activations and exp's arguments
            s = 0.0
            for j in range(n_in):
                s += z[j] * W_in[k, 0, j]
            s = s + h_prev[bi, k] * w_rec[k, 0] + b[k, 0]
            A[k] = s
            arg[k] = -2.0 * abs(s)
        _vexp(arg, ex, t, bits)
        for k in range(n):  # pass 2: h_t, the readout, the traces
            z[n_in] = h_prev[bi, k]
            ht = _tanh_from(A[k], ex[k])
            h[bi, k] = ht
            for o in range(n_out):
                acc[o] += W_out[o, k] * ht
            d = 1.0 - ht * ht
            coef[0] = d * w_rec[k, 0]
            coef[1] = d
            cw, cd = coef[0], coef[1]
            Mh, oh = M[bi, 0, k], M_out[bi, 0, k]
            for fi in range(F):
                oh[fi] = Mh[fi] * cw + cd * z[fi]
        for o in range(n_out):
            y[bi, o] = acc[o] + b_out[o]
    return 0


@numba.njit(cache=True, nogil=True)
def output_error(kind, y_hat, y, mask, e, loss):
    """``e = dl_t/dy_t`` [B, n_out] (written) and the loss ``l_t`` (``loss[0]``) of :mod:`neuro.losses`'s
    ``kind`` 0 ``mse``, 1 ``value``, 2 ``ce`` (masked, / B), as :func:`neuro.losses.grad`."""
    B, n_out = y_hat.shape
    total = 0.0
    for bi in range(B):
        w = (1.0 if mask[bi] else 0.0) / B
        if kind == 0:  # 1/2 |y_hat - y|^2
            s = 0.0
            for o in range(n_out):
                d = y_hat[bi, o] - y[bi, o]
                s += d * d
                e[bi, o] = d * w
            total += 0.5 * s * w
        elif kind == 1:  # sum_o y_hat
            s = 0.0
            for o in range(n_out):
                s += y_hat[bi, o]
                e[bi, o] = w
            total += s * w
        else:  # -sum_o y_o log softmax(y_hat)_o
            mx = y_hat[bi, 0]
            for o in range(1, n_out):
                mx = max(mx, y_hat[bi, o])
            z = 0.0
            ys = 0.0
            for o in range(n_out):
                z += math.exp(y_hat[bi, o] - mx)
                ys += y[bi, o]
            lz = math.log(z)
            s = 0.0
            for o in range(n_out):
                s -= y[bi, o] * (y_hat[bi, o] - mx - lz)
                e[bi, o] = (math.exp(y_hat[bi, o] - mx) / z * ys - y[bi, o]) * w
            total += s * w
    loss[0] = total
    return 0


@numba.njit(cache=True, nogil=True)
def estimate(e, W_out, h, M, gW, gw, gb, gWo, gbo):
    """The estimate from ``e`` = dl_t/dy_t [B, n_out], ``W_out`` [n_out, n], ``h`` [B, n] and ``M``
    [B, S_c, n, G F] (written): ``gW`` [n, G, n_in], ``gw``, ``gb`` [n, G] (``(e W_out)_k M_k[h]`` summed over
    the batch), ``gWo`` = e^T h [n_out, n], ``gbo`` = sum_b e [n_out]."""
    B, n_out = e.shape
    n = h.shape[1]
    G, n_in = gW.shape[1], gW.shape[2]
    F = n_in + 2
    coef = np.empty(1, M.dtype)
    for o in range(n_out):
        s = 0.0
        for bi in range(B):
            s += e[bi, o]
        gbo[o] = s
    for k in range(n):
        for o in range(n_out):
            s = 0.0
            for bi in range(B):
                s += e[bi, o] * h[bi, k]
            gWo[o, k] = s
        for bi in range(B):
            s = 0.0
            for o in range(n_out):
                s += e[bi, o] * W_out[o, k]
            coef[0] = s  # (dl_t/dh_t)_{b,k}
            eh = coef[0]
            m = M[bi, 0, k]
            for g in range(G):
                base = g * F
                if bi == 0:
                    for j in range(n_in):
                        gW[k, g, j] = eh * m[base + j]
                    gw[k, g] = eh * m[base + n_in]
                    gb[k, g] = eh * m[base + n_in + 1]
                else:
                    for j in range(n_in):
                        gW[k, g, j] += eh * m[base + j]
                    gw[k, g] += eh * m[base + n_in]
                    gb[k, g] += eh * m[base + n_in + 1]
    return 0


@numba.njit(cache=True, nogil=True)
def lstm_full(kind, x, h_prev, c_prev, W_in, w_rec, b, W_out, b_out, M, y, mask, h, c, y_hat, M_out, e, loss,
              gW, gw, gb, gWo, gbo):
    """:func:`lstm_step`, :func:`output_error` and :func:`estimate` in one call (``y`` [B, n_out] the
    target, ``mask`` [B] bool)."""
    lstm_step(x, h_prev, c_prev, W_in, w_rec, b, W_out, b_out, M, h, c, y_hat, M_out)
    output_error(kind, y_hat, y, mask, e, loss)
    estimate(e, W_out, h, M_out, gW, gw, gb, gWo, gbo)
    return 0


@numba.njit(cache=True, nogil=True)
def rate_full(kind, x, h_prev, W_in, w_rec, b, W_out, b_out, M, y, mask, h, y_hat, M_out, e, loss,
              gW, gw, gb, gWo, gbo):
    """:func:`rate_step`, :func:`output_error` and :func:`estimate` in one call (as :func:`lstm_full`)."""
    rate_step(x, h_prev, W_in, w_rec, b, W_out, b_out, M, h, y_hat, M_out)
    output_error(kind, y_hat, y, mask, e, loss)
    estimate(e, W_out, h, M_out, gW, gw, gb, gWo, gbo)
    return 0
