"""The compiled time loop of :mod:`neuro.backends.compiled` (numba, compiled once per dtype, cached on
disk: :mod:`neuro._numba`). Arguments: the inputs ``xs`` [T, B, n_in], ``W_in_T`` [n_in, n] and ``W_rec_T``
[n, n] (row k: the outgoing weights of input k / neuron k: only the rows of nonzero inputs and of the
neurons that spiked are read), the model's constants, and the output arrays it fills."""

import numpy as np

from neuro._numba import numba

__all__ = ["run"]


@numba.njit(cache=True, nogil=True)
def run(xs, W_in_T, W_rec_T, b, W_out, b_out, dyn, reset, refractory, alpha, beta, kappa, dt_mem, dt_syn,
        v_leak, v_th, v_reset, adaptive, beta_a, rho, kappa_out, v0,
        rec_v, rec_i, rec_a, spikes, v_out, i_out, a_out, y_out):
    T, B, n_in = xs.shape
    n = W_rec_T.shape[0]
    dtype = W_rec_T.dtype
    n_out = W_out.shape[0]
    for bi in range(B):
        v = np.empty(n, dtype)
        i = np.zeros(n, dtype)
        r = np.zeros(n, dtype)
        a = np.zeros(n, dtype)
        rec = np.zeros(n, dtype)  # recurrent input arriving at the next step
        y = np.zeros(n_out, dtype)
        zy = np.zeros(n_out, dtype)
        fired = np.empty(n, np.int64)
        inp = np.zeros(n, dtype)  # W_in x_t, from the nonzero inputs only
        for k in range(n):
            v[k] = v0
        for t in range(T):
            nf = 0
            for k in range(n):
                inp[k] = 0.0
            for c in range(n_in):
                xc = xs[t, bi, c]
                if xc != 0.0:
                    row_in = W_in_T[c]
                    for k in range(n):
                        inp[k] += xc * row_in[k]
            for k in range(n):
                I = inp[k] + rec[k]
                rec[k] = 0.0  # consumed: this step's events accumulate into it below
                if dyn == 0:  # exact
                    j = i[k] + I
                    rest = v_leak + b[k]
                    vt = rest + (v[k] - rest) * alpha + kappa * j
                    i_new = beta * j
                elif dyn == 1:  # euler (norse order)
                    j = i[k] + I
                    vt = v[k] + dt_mem * (v_leak + b[k] - v[k] + j)
                    i_new = j * (1.0 - dt_syn)
                else:  # lava
                    i_new = i[k] * beta + I
                    vt = v[k] * alpha + i_new + b[k]
                held = refractory > 0 and r[k] > 0
                if held:
                    vt = v_reset
                thr = v_th + beta_a * a[k] if adaptive else v_th
                z = 1.0 if (vt > thr and not held) else 0.0
                if reset == 0:
                    vt = vt - z * v_th
                else:
                    vt = vt * (1.0 - z) + z * v_reset
                if refractory > 0:
                    if z > 0:
                        r[k] = refractory
                    else:
                        r[k] = max(r[k] - 1.0, 0.0)
                if adaptive:
                    a[k] = rho * a[k] + z
                v[k] = vt
                i[k] = i_new
                if z > 0:
                    fired[nf] = k
                    nf += 1
                spikes[t, bi, k] = z
                if rec_v:
                    v_out[t, bi, k] = vt
                if rec_i:
                    i_out[t, bi, k] = i_new
                if rec_a:
                    a_out[t, bi, k] = a[k]
            # events: the outgoing weights of this step's spikes, for the next step's input
            for o in range(n_out):
                zy[o] = 0.0
            for f in range(nf):
                src = fired[f]
                row = W_rec_T[src]
                for k in range(n):
                    rec[k] += row[k]
                for o in range(n_out):
                    zy[o] += W_out[o, src]
            for o in range(n_out):
                y[o] = kappa_out * y[o] + zy[o] + b_out[o]
                y_out[t, bi, o] = y[o]
    return 0

