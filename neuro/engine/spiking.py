"""The LIF and ALIF neurons compiled (:mod:`models.lif`, :mod:`models.alif`), shared by every spiking engine: the
network step (current, sub-threshold update, refractory hold, spike, reset, adaptation), the surrogate
derivative, the leaky readout, and the element-wise derivatives of the step that the local rules read (the
closed form of the models' ``neuron_derivatives``).

A network is described to the kernels by two arrays (:func:`cell`): ``cf``, its coefficients in the
parameters' dtype (each computed in double precision as the model computes it, then cast, as torch casts a
Python number that multiplies a tensor), and ``ci``, its integer codes (dynamics, reset, surrogate, refractory
period, adaptation). One step of a unit, for each ``dynamics`` of the model (``j = i_{t-1} + I_t``)::

    exact:  v~ = rest + (v - rest) alpha + kappa j,   i_t = beta j,      rest = v_leak + b
    euler:  v~ = v + dt/tau_mem (v_leak + b - v + j),  i_t = j (1 - dt/tau_syn)
    lava:   i_t = beta i + I_t,   v~ = alpha v + i_t + b

    v~    = v_reset where r_{t-1} > 0;   A = [r_{t-1} = 0]
    theta = v_th (+ beta_a a_{t-1}, ALIF)
    z_t   = [v~ > theta] A
    psi   = scale / v_th * sigma'((v~ - theta) / (v_th width)) A          (triangle: max(0, 1 - |u|);
                                                                           fast-sigmoid: 1 / (1 + |u|)^2)
    v_t   = v~ - z_t v_th  (subtract)   or   v~ (1 - z_t) + z_t v_reset  (zero)
    r_t   = refractory if z_t else max(r_{t-1} - 1, 0)
    a_t   = rho a_{t-1} + z_t                                              (ALIF)

and the readout ``y_t = kappa_out y_{t-1} + W_out z_t + b_out``. The derivatives (:func:`jacobian`), with
``u = (vv, vi, vI, vb)`` the sub-threshold row of ``v`` (``net.subthreshold()``), ``w_a = beta_a`` and ``delta
= 0`` where the reset is detached::

    dz/dx = psi (u_x - w_x)
    dv/dx = A u_x - delta v_th dz/dx                        (reset="subtract")
          = (1 - z) A u_x + delta (v_reset - v~) dz/dx      (reset="zero")
    di/di = ii,  di/dI = iI                                  da/dx = dz/dx (+ rho on a)

A sparse network (``net.masks``) is described by its :class:`Wiring`: for ``W_in`` and ``W_rec``, the columns of
each row's synapses (a row's presynaptic sources), so that a kernel's work on a matrix is proportional to its
synapses. The current reads a matrix on its synapses only, as the model's ``current`` reads ``W * mask``; a rule's
per-synapse loops run over the same columns, and its estimate stays 0 off the mask.

All kernels are numba functions (``cache=True``) over arrays; a unit's step returns scalars, so a rule's loop
over the units keeps everything in registers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from models.alif import ALIF
from models.lif import LIF
from neuro._numba import numba
from neuro.engine import kernels as K
from neuro.engine.base import view

__all__ = ["DENSE", "Cell", "DYNAMICS", "NetArrays", "Wiring", "active", "cell", "columns", "filtered_readout_grad", "frozen", "jacobian", "layer", "leaky_readout", "net_arrays",
           "net_state", "network_step", "readout_grad", "signal", "sparse_dot", "spike_outer", "spikes_into", "unit", "wired_axpy", "wired_dot", "wired_scheduled_update", "wired_update_rest",
           "wiring", "wiring_of"]

EXACT, EULER, LAVA = 0, 1, 2
DYNAMICS = {"exact": EXACT, "euler": EULER, "lava": LAVA}
SUBTRACT, ZERO = 0, 1
TRIANGLE, FAST_SIGMOID = 0, 1
SURROGATES = {"triangle": TRIANGLE, "fast-sigmoid": FAST_SIGMOID}

# positions in ``cf``
(P0, P1, P2, V_LEAK, V_TH, V_RESET, BETA_A, RHO, S_SCALE, S_DEN, REFRACTORY, VV, VI, VII, VB, II, III, DVTH, DELTA,
 KAPPA_OUT, N_CF) = range(21)
# positions in ``ci``
DYN, RESET, SURR, REFRACT, ADAPT = range(5)


class Cell(NamedTuple):
    """A network's coefficients ``cf`` (its dtype) and codes ``ci`` (int64), as the kernels read them."""

    cf: np.ndarray
    ci: np.ndarray


def cell(net: LIF, dtype: np.dtype) -> Cell:
    """The kernels' description of ``net`` (LIF or ALIF, exact types) for arrays of ``dtype``."""
    if type(net) not in (LIF, ALIF):
        raise ValueError(f"model {type(net).__name__} is invalid for the compiled spiking cell: valid are LIF and ALIF")
    cf = np.zeros(N_CF, np.float64)
    if net.dynamics == "exact":
        cf[P0], cf[P1], cf[P2] = net.alpha, net.kappa, net.beta
    elif net.dynamics == "euler":
        cf[P0], cf[P1] = net.dt / net.tau_mem, 1.0 - net.dt / net.tau_syn
    else:
        cf[P0], cf[P1] = net.alpha, net.beta
    adapt = type(net) is ALIF
    cf[V_LEAK], cf[V_TH], cf[V_RESET] = net.v_leak, net.v_th, net.v_reset
    cf[BETA_A], cf[RHO] = (net.beta_a, net.rho) if adapt else (0.0, 0.0)
    cf[S_SCALE], cf[S_DEN] = net.surrogate_scale / net.v_th, net.v_th * net.surrogate_width
    cf[REFRACTORY] = float(net.refractory)
    c = net.subthreshold()
    cf[VV], cf[VI], cf[VII], cf[VB], cf[II], cf[III] = c.vv, c.vi, c.vI, c.vb, c.ii, c.iI
    delta = 0.0 if net.detach_reset else 1.0
    cf[DVTH], cf[DELTA] = delta * net.v_th, delta
    cf[KAPPA_OUT] = net.kappa_out
    ci = np.array([DYNAMICS[net.dynamics], SUBTRACT if net.reset == "subtract" else ZERO,
                   SURROGATES[net.surrogate], int(net.refractory > 0), int(adapt)], np.int64)
    return Cell(cf.astype(dtype), ci)


class Wiring(NamedTuple):
    """The synapses of ``W_in`` [n, n_in] and ``W_rec`` [n, n], each in compressed rows: row ``j``'s columns are
    ``idx[ptr[j]:ptr[j + 1]]``, ascending; ``W_rec``'s also in compressed columns (by presynaptic unit: column
    ``k``'s rows ``rec_cidx[rec_cptr[k]:rec_cptr[k + 1]]``), so that a spike costs its fan-out. An empty ``ptr``
    (size 0) is a dense matrix, which the kernels read with their dense loops."""

    in_ptr: np.ndarray
    in_idx: np.ndarray
    rec_ptr: np.ndarray
    rec_idx: np.ndarray
    rec_cptr: np.ndarray
    rec_cidx: np.ndarray

    @property
    def dense(self) -> bool:
        """Whether both matrices are dense."""
        return self.in_ptr.size == 0 and self.rec_ptr.size == 0


_NONE = np.zeros(0, np.int64)
#: the wiring of a dense network
DENSE = Wiring(_NONE, _NONE, _NONE, _NONE, _NONE, _NONE)


def columns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A boolean ``mask`` [rows, cols] in compressed rows ``(ptr [rows + 1], idx [nnz])``, int64."""
    rows, cols = np.nonzero(np.asarray(mask, bool))
    ptr = np.zeros(mask.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=ptr[1:])
    return ptr, cols.astype(np.int64)


def wiring(net: LIF) -> Wiring:
    """The :class:`Wiring` of a LIF or ALIF network: its masks of ``W_in`` and ``W_rec`` (``net.masks``), the
    matrices without one dense."""
    return wiring_of(net.masks.get("W_in"), net.masks.get("W_rec"))


def wiring_of(mask_in: torch.Tensor | None, mask_rec: torch.Tensor | None) -> Wiring:
    """The :class:`Wiring` of a layer whose ``W_in`` and ``W_rec`` have these masks (``None``: dense)."""
    in_ptr, in_idx = columns(mask_in.numpy()) if mask_in is not None else (_NONE, _NONE)
    rec_ptr, rec_idx = columns(mask_rec.numpy()) if mask_rec is not None else (_NONE, _NONE)
    rec_cptr, rec_cidx = columns(mask_rec.numpy().T) if mask_rec is not None else (_NONE, _NONE)
    return Wiring(in_ptr, in_idx, rec_ptr, rec_idx, rec_cptr, rec_cidx)


@numba.njit(cache=True, inline="always")
def wired_dot(w, x, ptr, idx, j):  # noqa: ANN001, ANN201
    """Row ``j`` of a matrix times ``x``: ``w . x`` (``w`` the row) where the matrix is dense (``ptr`` empty), else
    the sum over the row's synapses ``idx[ptr[j]:ptr[j + 1]]``."""
    if ptr.size == 0:
        return K.dot(w, x)
    acc = K.cast(0.0, w)
    for q in range(ptr[j], ptr[j + 1]):
        k = idx[q]
        acc += w[k] * x[k]
    return acc


@numba.njit(cache=True, inline="always")
def wired_axpy(g, e, x, ptr, idx, j):  # noqa: ANN001, ANN201
    """``g += e x`` on row ``j`` of a matrix's estimate (``g`` the row): every column where the matrix is dense
    (``ptr`` empty), else the row's synapses ``idx[ptr[j]:ptr[j + 1]]`` (the others stay as they are)."""
    if ptr.size == 0:
        for k in range(g.size):
            g[k] += e * x[k]
    else:
        for q in range(ptr[j], ptr[j + 1]):
            k = idx[q]
            g[k] += e * x[k]


@numba.njit(cache=True, inline="always")
def spikes_into(out, W, z, cptr, cidx):  # noqa: ANN001, ANN201
    """``out += W z`` for a sparse ``W`` [n, n_pre] in compressed columns (``cptr``, ``cidx``), by the nonzero
    entries of ``z`` [n_pre]: each costs its column's synapses."""
    for k in range(z.size):
        zk = z[k]
        if zk != 0.0:
            for q in range(cptr[k], cptr[k + 1]):
                j = cidx[q]
                out[j] += W[j, k] * zk


@numba.njit(cache=True, inline="always")
def spike_outer(G, e, z, cptr, cidx):  # noqa: ANN001, ANN201
    """``G += e z^T`` on the synapses of a sparse matrix in compressed columns (``cptr``, ``cidx``): ``e`` [n],
    ``z`` [n_pre], by the nonzero entries of ``z`` (each costs its column's synapses)."""
    for k in range(z.size):
        zk = z[k]
        if zk != 0.0:
            for q in range(cptr[k], cptr[k + 1]):
                j = cidx[q]
                G[j, k] += e[j] * zk


@numba.njit(cache=True)
def wired_update_rest(kind, ps, gs, ms, vs, steps, hyper, done, wrs):  # noqa: ANN001, ANN201
    """:func:`neuro.engine.kernels.apply_update_rest` of the parameters in the engines' order, layer ``l``'s
    ``W_in``, ``W_rec``, ``b`` at ``3 l .. 3 l + 2`` (one layer: ``W_in``, ``W_rec``, ``b``), then the readout's,
    with a sparse ``W_in`` or ``W_rec`` of layer ``l``'s :class:`Wiring` ``wrs[l]`` updated on its synapses alone
    (:func:`neuro.engine.kernels.update_synapses`): the work of an update proportional to the synapses."""
    for q in range(len(ps)):
        if q == done:
            continue
        l, part = q // 3, q % 3
        if l < len(wrs) and part < 2:
            ptr, idx = (wrs[l][0], wrs[l][1]) if part == 0 else (wrs[l][2], wrs[l][3])
            if ptr.size > 0:
                K.update_synapses(kind, ps[q], gs[q], ms[q], vs[q], steps[q], K.lr_of(hyper, q), hyper, ptr, idx)
                continue
        K.update_one(kind, ps[q], gs[q], ms[q], vs[q], steps[q], K.lr_of(hyper, q), hyper)


@numba.njit(cache=True)
def wired_scheduled_update(update, done, kind, ps, gs, ms, vs, steps, hyper, wr):  # noqa: ANN001, ANN201
    """:func:`neuro.engine.kernels.scheduled_update` by :func:`wired_update_rest`, one layer of wiring ``wr``."""
    if update:
        wired_update_rest(kind, ps, gs, ms, vs, steps, hyper, done, (wr,))
        return 1, False
    return 0, True


@numba.njit(cache=True)
def frozen(cf, ci):  # noqa: ANN001, ANN201
    """The cell ``(cf, ci)`` as two tuples of scalars, which :func:`unit` and :func:`jacobian` take in place of the
    arrays: a kernel's loop then keeps the coefficients in registers and its branches on the codes are
    loop-invariant (an array's elements are read again after every store the compiler cannot tell apart)."""
    return ((cf[0], cf[1], cf[2], cf[3], cf[4], cf[5], cf[6], cf[7], cf[8], cf[9], cf[10], cf[11], cf[12], cf[13],
             cf[14], cf[15], cf[16], cf[17], cf[18], cf[19]), (ci[0], ci[1], ci[2], ci[3], ci[4]))


@numba.njit(cache=True)
def unit(cf, ci, b, I, v, i, r, a):  # noqa: ANN001, ANN201
    """One unit's step (module docstring) from its state ``v, i, r, a`` (``a`` read only for ALIF), bias ``b`` and
    current ``I``: ``(v_t, i_t, z_t, r_t, a_t, v~, psi, A)``; ``cf, ci`` the cell's arrays or :func:`frozen`'s
    tuples."""
    dyn = ci[DYN]
    if dyn == EXACT:
        j = i + I
        rest = cf[V_LEAK] + b
        vt = rest + (v - rest) * cf[P0] + cf[P1] * j
        i_new = cf[P2] * j
    elif dyn == EULER:
        j = i + I
        vt = v + cf[P0] * (cf[V_LEAK] + b - v + j)
        i_new = j * cf[P1]
    else:
        i_new = i * cf[P1] + I
        vt = v * cf[P0] + i_new + b
    theta = cf[V_TH] + cf[BETA_A] * a if ci[ADAPT] else cf[V_TH]
    one = cf[DELTA] * 0 + 1  # 1 in the dtype
    act = one
    if ci[REFRACT] and r > 0:
        vt, act = cf[V_RESET], one * 0
    z = one if (vt > theta and act > 0) else one * 0
    u = (vt - theta) / cf[S_DEN]
    if ci[SURR] == TRIANGLE:
        sig = max(one - abs(u), one * 0)
    else:
        sig = one / ((one + abs(u)) * (one + abs(u)))
    psi = cf[S_SCALE] * sig * act
    if ci[RESET] == SUBTRACT:
        v_new = vt - z * cf[V_TH]
    else:
        v_new = vt * (one - z) + z * cf[V_RESET]
    r_new = r
    if ci[REFRACT]:
        r_new = cf[REFRACTORY] if z > 0 else max(r - one, one * 0)
    a_new = cf[RHO] * a + z if ci[ADAPT] else a
    return v_new, i_new, z, r_new, a_new, vt, psi, act


@numba.njit(cache=True)
def jacobian(cf, ci, vt, z, psi, act):  # noqa: ANN001, ANN201
    """The step's derivatives of a unit (module docstring) at ``(v~, z, psi, A)`` from :func:`unit`:
    ``(dz/dv, dz/di, dz/da, dz/dI, dz/db, dv/dv, dv/di, dv/da, dv/dI, dv/db)`` (``dz/da``, ``dv/da``: 0 without
    adaptation). ``di/di = cf[II]``, ``di/dI = cf[III]``, ``da/dx = dz/dx`` plus ``cf[RHO]`` on ``a``. ``cf, ci``:
    the cell's arrays or :func:`frozen`'s tuples."""
    zv, zi, za = psi * cf[VV], psi * cf[VI], -(psi * cf[BETA_A])
    zI, zb = psi * cf[VII], psi * cf[VB]
    uv, ui, uI, ub = cf[VV], cf[VI], cf[VII], cf[VB]
    if ci[REFRACT]:
        uv, ui, uI, ub = uv * act, ui * act, uI * act, ub * act
    if ci[RESET] == SUBTRACT:
        d = cf[DVTH]
        return zv, zi, za, zI, zb, uv - d * zv, ui - d * zi, -(d * za), uI - d * zI, ub - d * zb
    one = cf[DELTA] * 0 + 1
    keep, d = one - z, cf[DELTA] * (cf[V_RESET] - vt)
    return zv, zi, za, zI, zb, keep * uv + d * zv, keep * ui + d * zi, d * za, keep * uI + d * zI, keep * ub + d * zb


@numba.njit(cache=True)
def layer(W_in, W_rec, b, cf, ci, wr, x, v, i, z, r, a, I, vt, psi, act):  # noqa: ANN001, ANN201
    """One step of the network's units for a batch: ``I = W_in x + W_rec z_{t-1}`` [B, n] (on the synapses of the
    :class:`Wiring` ``wr``) and :func:`unit` per unit, the state ``v, i, z, r, a`` [B, n] changed in place (``a``:
    ALIF, else left alone), ``I``, ``v~``, ``psi`` and ``A`` [B, n] written."""
    nb, n = v.shape
    kf, ki = frozen(cf, ci)
    in_ptr, in_idx, rec_ptr, rec_idx, cptr, cidx = wr
    for s in range(nb):
        if rec_ptr.size == 0:
            for j in range(n):
                I[s, j] = wired_dot(W_in[j], x[s], in_ptr, in_idx, j) + K.dot(z[s], W_rec[j])
        else:  # the recurrent part by presynaptic events: each nonzero z_k adds W[:, k] z_k on its synapses
            for j in range(n):
                I[s, j] = wired_dot(W_in[j], x[s], in_ptr, in_idx, j)
            spikes_into(I[s], W_rec, z[s], cptr, cidx)
    for s in range(nb):
        for j in range(n):
            v[s, j], i[s, j], z[s, j], r[s, j], a[s, j], vt[s, j], psi[s, j], act[s, j] = unit(
                kf, ki, b[j], I[s, j], v[s, j], i[s, j], r[s, j], a[s, j])


@numba.njit(cache=True)
def leaky_readout(W_out, b_out, kappa, z, y, y_hat):  # noqa: ANN001, ANN201
    """``y_hat = kappa y + W_out z + b_out`` (``y`` [B, n_out], the readout's memory, set to ``y_hat`` too), the
    linear part by :func:`neuro.engine.kernels.readout`."""
    K.readout(W_out, b_out, z, y_hat)
    nb, n_out = y_hat.shape
    for s in range(nb):
        for k in range(n_out):
            y_hat[s, k] = kappa * y[s, k] + y_hat[s, k]
            y[s, k] = y_hat[s, k]


@numba.njit(cache=True)
def network_step(W_in, W_rec, b, W_out, b_out, cf, ci, wr, x, v, i, z, r, a, y, pre, I, vt, psi, act, y_hat):  # noqa: ANN001, ANN201
    """One step of the network and its readout for a batch: ``pre = [x_t, z_{t-1}]`` [B, n_in + n] (the
    presynaptic sources, written), :func:`layer` (on the :class:`Wiring` ``wr``) and :func:`leaky_readout`
    (``y_hat`` [B, n_out] written)."""
    nb, n_in = x.shape
    for s in range(nb):
        pre[s, :n_in] = x[s]
        pre[s, n_in:] = z[s]
    layer(W_in, W_rec, b, cf, ci, wr, x, v, i, z, r, a, I, vt, psi, act)
    leaky_readout(W_out, b_out, cf[KAPPA_OUT], z, y, y_hat)


@numba.njit(cache=True)
def signal(eps, F, L):  # noqa: ANN001, ANN201
    """``L = eps F`` [B, n]: the error ``eps = dE/dy`` [B, n_out] sent to the units through ``F`` [n_out, n]
    (``W_out``: ``dE/dz`` through this step's readout; a feedback matrix ``B^T``)."""
    nb, n_out = eps.shape
    for s in range(nb):
        for j in range(L.shape[1]):
            la = eps[s, 0] * 0
            for k in range(n_out):
                la += eps[s, k] * F[k, j]
            L[s, j] = la


@numba.njit(cache=True)
def readout_grad(eps, zb, bb, g_out, g_bout):  # noqa: ANN001, ANN201
    """The readout's gradient added: ``g_out += eps^T zb`` (summed over the batch), ``g_bout += bb sum_B eps``
    (``zb`` [B, n] the hidden output or its filtered trace, ``bb`` the number that ``b_out`` multiplies)."""
    nb, n_out = eps.shape
    for s in range(nb):
        for k in range(n_out):
            e = eps[s, k]
            row = g_out[k]
            for j in range(zb.shape[1]):
                row[j] += e * zb[s, j]
            g_bout[k] += e * bb


@numba.njit(cache=True)
def filtered_readout_grad(eps, z, kappa, zbar, bbar, g_out, g_bout):  # noqa: ANN001, ANN201
    """The leaky readout's step of a rule that filters the hidden output with the readout's decay ``kappa`` (in
    the arrays' dtype): ``zbar <- kappa zbar + z`` [B, n], ``bbar <- kappa bbar + 1`` (each element of ``bbar``,
    the filtered 1 that ``b_out`` multiplies), then :func:`readout_grad` with ``zbar`` and ``bbar[0]``."""
    one = kappa * 0 + 1
    for q in range(bbar.size):
        bbar[q] = kappa * bbar[q] + one
    nb, n = z.shape
    for s in range(nb):
        for j in range(n):
            zbar[s, j] = kappa * zbar[s, j] + z[s, j]
    readout_grad(eps, zbar, bbar[0], g_out, g_bout)


@numba.njit(cache=True)
def active(z, idx):  # noqa: ANN001, ANN201
    """The positions of the nonzero entries of ``z`` [n] (the spikes) written to ``idx`` [n]; their count."""
    c = 0
    for j in range(z.size):
        if z[j] != 0.0:
            idx[c] = j
            c += 1
    return c


@numba.njit(cache=True)
def sparse_dot(w, z, idx, c):  # noqa: ANN001, ANN201
    """``sum_j w_j z_j`` over the ``c`` positions ``idx`` where ``z`` is nonzero (:func:`active`)."""
    acc = K.cast(0.0, w)
    for q in range(c):
        j = idx[q]
        acc += w[j] * z[j]
    return acc


class NetArrays(NamedTuple):
    """A LIF/ALIF state's arrays, fresh copies (the engines write them in place): ``v, i, z, r, a`` [B, n]
    (``a`` zeros for LIF), ``y`` [B, n_out]."""

    v: np.ndarray
    i: np.ndarray
    z: np.ndarray
    r: np.ndarray
    a: np.ndarray
    y: np.ndarray


def net_arrays(state: NamedTuple) -> NetArrays:
    """Fresh contiguous copies of a LIF or ALIF state's tensors, as arrays (torch's tensors are left alone:
    a rule's older state may share them)."""
    a = state.a if hasattr(state, "a") else torch.zeros_like(state.v)
    return NetArrays(*(view(t.detach().clone(memory_format=torch.contiguous_format)) for t in
                       (state.v, state.i, state.z, state.r, a, state.y)))


def net_state(state: NamedTuple, arrays: NetArrays) -> NamedTuple:
    """``state`` (LIF's or ALIF's) with its tensors replaced by ``arrays``'."""
    new = {f: torch.from_numpy(getattr(arrays, f)) for f in ("v", "i", "z", "r", "y")}
    if hasattr(state, "a"):
        new["a"] = torch.from_numpy(arrays.a)
    return state._replace(**new)
