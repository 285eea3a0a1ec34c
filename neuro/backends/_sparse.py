"""The compiled time loop of :mod:`neuro.backends.compiled` for sparse networks and stacks of layers (numba,
compiled once per dtype, cached on disk: :mod:`neuro._numba`).

Synapses are stored by presynaptic unit (outgoing synapses only), the layout of Brian2's and NEST's event
delivery: a spike of unit ``k`` costs its fan-out, never ``N``. A connection table over ``n_pre`` presynaptic
units and ``G`` groups (several matrices read by the same presynaptic units, e.g. the input feeding layer 1 and,
with skip connections, every other layer) is five arrays:

* ``seg_start``, ``seg_cnt``, ``seg_lo`` [n_pre * G]: segment ``s = pre * G + g`` holds the ``seg_cnt[s]``
  synapses of unit ``pre`` in group ``g``, at ``val[seg_start[s]:seg_start[s] + seg_cnt[s]]``;
* ``seg_lo[s] >= 0``: the segment's targets are the contiguous units ``seg_lo[s], seg_lo[s] + 1, ...`` (a dense
  row: no index is read and the loop vectorises); ``-1``: they are ``idx[seg_start[s] + j]``;
* ``idx`` (int32, one per synapse; empty where every segment is contiguous) and ``val`` (the weights).

Each table is read one of these ways (``in_mode``, ``ff_mode``, ``rec_mode``, chosen per network): 0, contiguous
runs as vectorised slices (long rows); 1, plain indexed loops (segments of at most 16 synapses: building a slice
costs more than a short segment's additions); 3, skipped (no synapse); and for the input, 2, where every channel
has exactly one synapse (a one-to-one input: ``in_tgt``, ``in_w`` its target and weight, one branch-free
multiply-add per channel and step).

Units are numbered over the whole network (a stack's layers side by side, bottom first; ``edges`` [L + 1]: the
layers' first units and ``n``). Per step, for each sequence of the batch: the input's nonzero entries scatter
``x_c w`` through the input table; then, layer by layer, a branch-free loop integrates every unit with ``I =
(input + feed-forward) + recurrent`` and a second loop applies the refractory hold, threshold, reset and
adaptation; a unit that spikes is listed and scatters its feed-forward synapses at once (their targets are in the
next layer, integrated after this one: the stack's same-step feed-forward path). After all layers, the listed
spikes scatter their recurrent synapses into the next step's input (the one-step recurrent delay) and feed the
readout. ``spikes`` must be zero on entry (only the spikes are written).
"""

import numpy as np

from neuro._numba import numba

__all__ = ["run"]


@numba.njit(cache=True, nogil=True, inline="always")
def _scatter(acc, scale, pre, G, seg_start, seg_cnt, seg_lo, idx, val):
    """``acc[target] += scale w`` over the synapses of unit ``pre`` in every group (a spike: scale 1)."""
    for s in range(pre * G, pre * G + G):
        cnt = seg_cnt[s]
        if cnt == 0:
            continue
        p0 = seg_start[s]
        lo = seg_lo[s]
        if lo >= 0:  # a contiguous run: slices, so that the loop vectorises
            dst = acc[lo:lo + cnt]
            src = val[p0:p0 + cnt]
            for j in range(cnt):
                dst[j] += scale * src[j]
        else:
            ix = idx[p0:p0 + cnt]
            src = val[p0:p0 + cnt]
            for j in range(cnt):
                acc[ix[j]] += scale * src[j]


@numba.njit(cache=True, nogil=True, inline="always")
def _scatter_short(acc, scale, pre, G, seg_start, seg_cnt, seg_lo, idx, val):
    """:func:`_scatter` with plain indexed loops: no array views, whose reference counting costs more than a
    short segment's additions (an input of a few synapses: 2.5x faster per input spike, measured)."""
    for s in range(pre * G, pre * G + G):
        cnt = seg_cnt[s]
        p0 = seg_start[s]
        lo = seg_lo[s]
        if lo >= 0:
            for j in range(cnt):
                acc[lo + j] += scale * val[p0 + j]
        else:
            for j in range(cnt):
                acc[idx[p0 + j]] += scale * val[p0 + j]


@numba.njit(cache=True, nogil=True)
def run(xs, edges, in_mode, in_tgt, in_w, ff_mode, rec_mode, G_in, in_start, in_cnt, in_lo, in_idx, in_val, G_ff, ff_start, ff_cnt, ff_lo, ff_idx, ff_val,
        G_rec, rec_start, rec_cnt, rec_lo, rec_idx, rec_val, b, W_out, b_out, r0,
        dyn, reset, refractory, alpha, beta, kappa, dt_mem, dt_syn,
        v_leak, v_th, v_reset, adaptive, beta_a, rho, kappa_out, v0,
        rec_v, rec_i, rec_a, spikes, v_out, i_out, a_out, y_out):
    T, B, n_in = xs.shape
    n = b.shape[0]
    dtype = b.dtype
    n_out, n_read = W_out.shape
    simple = refractory <= 0 and not adaptive and reset == 0  # the common case: one comparison per unit
    for bi in range(B):
        v = np.empty(n, dtype)
        i = np.zeros(n, dtype)
        r = np.zeros(n, dtype)
        a = np.zeros(n, dtype)
        rec = np.zeros(n, dtype)  # recurrent input arriving at the next step
        inp = np.zeros(n, dtype)  # this step's input and feed-forward input
        y = np.zeros(n_out, dtype)
        zy = np.zeros(n_out, dtype)
        fired = np.empty(n, np.int64)
        for k in range(n):
            v[k] = v0
        for t in range(T):
            for k in range(n):
                inp[k] = 0.0
            if in_mode == 2:  # one synapse per input channel (one-to-one): its target and weight, no branch
                for c in range(n_in):
                    inp[in_tgt[c]] += xs[t, bi, c] * in_w[c]
            elif in_mode == 1:  # a few synapses per channel
                for c in range(n_in):
                    xc = xs[t, bi, c]
                    if xc != 0.0:
                        _scatter_short(inp, xc, c, G_in, in_start, in_cnt, in_lo, in_idx, in_val)
            else:
                for c in range(n_in):
                    xc = xs[t, bi, c]
                    if xc != 0.0:
                        _scatter(inp, xc, c, G_in, in_start, in_cnt, in_lo, in_idx, in_val)
            nf = 0
            for layer in range(edges.shape[0] - 1):
                k0, k1 = edges[layer], edges[layer + 1]
                m = k1 - k0
                # the layer's units as views indexed from 0 (indices known to be >= 0: the loops vectorise)
                vl, il, rl, al, bl = v[k0:k1], i[k0:k1], r[k0:k1], a[k0:k1], b[k0:k1]
                inl, recl = inp[k0:k1], rec[k0:k1]
                # sub-threshold update of the layer (v~ into v, i_t into i): branch-free loops
                if dyn == 0:  # exact
                    for k in range(m):
                        j = il[k] + (inl[k] + recl[k])
                        rest = v_leak + bl[k]
                        vl[k] = rest + (vl[k] - rest) * alpha + kappa * j
                        il[k] = beta * j
                        recl[k] = 0.0  # consumed: this step's events accumulate into it below
                elif dyn == 1:  # euler (norse order)
                    for k in range(m):
                        j = il[k] + (inl[k] + recl[k])
                        vl[k] = vl[k] + dt_mem * (v_leak + bl[k] - vl[k] + j)
                        il[k] = j * (1.0 - dt_syn)
                        recl[k] = 0.0
                else:  # lava
                    for k in range(m):
                        il[k] = il[k] * beta + (inl[k] + recl[k])
                        vl[k] = vl[k] * alpha + il[k] + bl[k]
                        recl[k] = 0.0
                # refractory hold, threshold, reset, adaptation; spikes feed the layer above at once
                f0 = nf
                if simple:  # subtractive reset, no refractory period, fixed threshold: one comparison per unit
                    for k in range(m):
                        if vl[k] > v_th:
                            vl[k] = vl[k] - v_th
                            fired[nf] = k0 + k
                            nf += 1
                else:
                    for k in range(m):
                        vt = vl[k]
                        held = refractory > 0 and rl[k] > 0
                        if held:
                            vt = v_reset
                        thr = v_th + beta_a * al[k] if adaptive else v_th
                        z = 1.0 if (vt > thr and not held) else 0.0
                        if reset == 0:
                            vt = vt - z * v_th
                        else:
                            vt = vt * (1.0 - z) + z * v_reset
                        if refractory > 0:
                            if z > 0:
                                rl[k] = refractory
                            else:
                                rl[k] = max(rl[k] - 1.0, 0.0)
                        if adaptive:
                            al[k] = rho * al[k] + z
                        vl[k] = vt
                        if z > 0:
                            fired[nf] = k0 + k
                            nf += 1
                # this layer's spikes: recorded, and the same step's feed-forward input of the layer above
                # (integrated after this one)
                for f in range(f0, nf):
                    spikes[t, bi, fired[f]] = 1.0
                if ff_mode == 0:
                    for f in range(f0, nf):
                        _scatter(inp, 1.0, fired[f], G_ff, ff_start, ff_cnt, ff_lo, ff_idx, ff_val)
                elif ff_mode == 1:
                    for f in range(f0, nf):
                        _scatter_short(inp, 1.0, fired[f], G_ff, ff_start, ff_cnt, ff_lo, ff_idx, ff_val)
            if rec_v:
                for k in range(n):
                    v_out[t, bi, k] = v[k]
            if rec_i:
                for k in range(n):
                    i_out[t, bi, k] = i[k]
            if rec_a:
                for k in range(n):
                    a_out[t, bi, k] = a[k]
            for o in range(n_out):
                zy[o] = 0.0
            if rec_mode == 0:
                for f in range(nf):
                    _scatter(rec, 1.0, fired[f], G_rec, rec_start, rec_cnt, rec_lo, rec_idx, rec_val)
            elif rec_mode == 1:
                for f in range(nf):
                    _scatter_short(rec, 1.0, fired[f], G_rec, rec_start, rec_cnt, rec_lo, rec_idx, rec_val)
            for f in range(nf):
                src = fired[f]
                q = src - r0
                if q >= 0 and q < n_read:
                    for o in range(n_out):
                        zy[o] += W_out[o, q]
            for o in range(n_out):
                y[o] = kappa_out * y[o] + zy[o] + b_out[o]
                y_out[t, bi, o] = y[o]
    return 0
