"""The LSTM cell (:mod:`models.lstm`), compiled: its step and its derivatives, written once for every engine on
the LSTM (BPTT/TBPTT's backward pass, RTRL's influence matrix, UORO's tangents).

The cell, as the model's ``current``, ``neuron`` and ``readout`` state it (gates in the order i, f, g, o: the
rows ``a``, ``n + a``, ``2n + a``, ``3n + a`` of ``W_in``, ``W_rec``, ``b`` belong to unit ``a``)::

    u = W_in x_t + W_rec h_{t-1} + b                                          [4n]
    i = sigma(u_i)   f = sigma(u_f)   g = tanh(u_g)   o = sigma(u_o)
    c_t = f c_{t-1} + i g              h_t = o tanh(c_t)                     y_t = W_out h_t + b_out

Its element-wise derivatives (:func:`derivatives`; ``tc = tanh(c_t)``)::

    dc_t/du_i = g i (1 - i)    dc_t/du_f = c_{t-1} f (1 - f)    dc_t/du_g = i (1 - g^2)    dc_t/dc_{t-1} = f
    dh_t/du_o = tc o (1 - o)   dh_t/dc_t = o (1 - tc^2)

the cell's tangent (forward mode, :func:`tangent`) ``dc_t = dc_t/du . du + f dc_{t-1}``, ``dh_t = dh_t/du_o du_o
+ dh_t/dc_t dc_t``, and its cotangent (reverse mode, :func:`cotangent`): from ``dl/dh_t`` and ``dl/dc_t``
(what flows in from later steps), ``dl/du`` [4] and ``dl/dc_{t-1}``. The current's own derivatives are its
matrices: ``du/dh_{t-1} = W_rec``, ``du/dW_rec[r, j] = h_{t-1, j}`` (row ``r``), ``du/dW_in[r, j] = x_j``,
``du/db_r = 1``.

Per unit of one sample, :func:`gates` gives ``(i, f, g, o)`` from the input, ``h_{t-1}`` and the parameters, so
an engine that stores only ``h`` and ``c`` per step recomputes them exactly (the same arithmetic as
:func:`lstm_step`'s).
"""

from __future__ import annotations

import numpy as np

from models.lstm import LSTM
from neuro._numba import numba
from neuro.engine import kernels as K

__all__ = ["LSTM", "activate", "cotangent", "derivatives", "gates", "lstm_step", "sigmoid", "step_derivatives", "tangent"]


@numba.njit(cache=True)
def sigmoid(z, one):  # noqa: ANN001, ANN201
    """``1 / (1 + exp(-z))``, in the dtype of ``z`` and ``one`` (a 1 of that dtype, as :func:`neuro.engine.kernels.cast`
    gives it: a float literal would make a float32 computation float64)."""
    return one / (one + np.exp(-z))


@numba.njit(cache=True)
def activate(ui, uf, ug, uo, one):  # noqa: ANN001, ANN201
    """The gates ``(sigma(u_i), sigma(u_f), tanh(u_g), sigma(u_o))`` of one unit from its four pre-activations
    (``one``: :func:`sigmoid`)."""
    return sigmoid(ui, one), sigmoid(uf, one), np.tanh(ug), sigmoid(uo, one)


@numba.njit(cache=True)
def gates(W_in, W_rec, b, x, h, n, a, one):  # noqa: ANN001, ANN201
    """Unit ``a``'s gates ``(i, f, g, o)`` for one sample: ``x`` [n_in], ``h`` = ``h_{t-1}`` [n] (1-D), ``W_in``
    [4n, n_in], ``W_rec`` [4n, n], ``b`` [4n] (``one``: :func:`sigmoid`)."""
    return activate(K.dot(x, W_in[a]) + K.dot(h, W_rec[a]) + b[a],
                    K.dot(x, W_in[n + a]) + K.dot(h, W_rec[n + a]) + b[n + a],
                    K.dot(x, W_in[2 * n + a]) + K.dot(h, W_rec[2 * n + a]) + b[2 * n + a],
                    K.dot(x, W_in[3 * n + a]) + K.dot(h, W_rec[3 * n + a]) + b[3 * n + a], one)


@numba.njit(cache=True)
def lstm_step(W_in, W_rec, b, x, h, c, h_new, c_new):  # noqa: ANN001, ANN201
    """One step of the cell for a batch: ``x`` [B, n_in], ``h``, ``c`` [B, n] (read); ``h_new``, ``c_new`` [B, n]
    (written; not the arrays read)."""
    nb, n = h.shape
    one = K.cast(1.0, h)
    for s in range(nb):
        for a in range(n):
            i, f, g, o = gates(W_in, W_rec, b, x[s], h[s], n, a, one)
            cn = f * c[s, a] + i * g
            c_new[s, a] = cn
            h_new[s, a] = o * np.tanh(cn)


@numba.njit(cache=True)
def derivatives(i, f, g, o, c_prev, tc, one):  # noqa: ANN001, ANN201
    """One unit's ``(dc/du_i, dc/du_f, dc/du_g, dh/du_o, dh/dc)`` (module docstring) from its gates, ``c_{t-1}``
    and ``tc = tanh(c_t)``; ``dc_t/dc_{t-1}`` is ``f`` (``one``: :func:`sigmoid`)."""
    return g * (i * (one - i)), c_prev * (f * (one - f)), i * (one - g * g), tc * (o * (one - o)), o * (one - tc * tc)


@numba.njit(cache=True)
def step_derivatives(W_in, W_rec, b, x, h, c, h_new, c_new, D):  # noqa: ANN001, ANN201
    """:func:`lstm_step` with each unit's derivatives kept: ``D`` [B, n, 6] (written) holds :func:`derivatives`'
    five and ``f`` (``dc_t/dc_{t-1}``), as :func:`tangent` and :func:`cotangent` read them (``D[s, a, :5]``,
    ``D[s, a, 5]``)."""
    nb, n = h.shape
    one = K.cast(1.0, h)
    for s in range(nb):
        for a in range(n):
            i, f, g, o = gates(W_in, W_rec, b, x[s], h[s], n, a, one)
            cn = f * c[s, a] + i * g
            tc = np.tanh(cn)
            c_new[s, a], h_new[s, a] = cn, o * tc
            d = derivatives(i, f, g, o, c[s, a], tc, one)
            Ds = D[s, a]
            Ds[0], Ds[1], Ds[2], Ds[3], Ds[4], Ds[5] = d[0], d[1], d[2], d[3], d[4], f


@numba.njit(cache=True)
def tangent(d, f, du_i, du_f, du_g, du_o, dc_prev):  # noqa: ANN001, ANN201
    """The cell's forward-mode derivative for one unit: ``(dc_t, dh_t)`` from the pre-activations' tangents
    ``du_*`` and ``dc_{t-1}``; ``d`` from :func:`derivatives`."""
    dc = d[0] * du_i + d[1] * du_f + d[2] * du_g + f * dc_prev
    return dc, d[3] * du_o + d[4] * dc


@numba.njit(cache=True)
def cotangent(d, f, dh, dc):  # noqa: ANN001, ANN201
    """The cell's reverse-mode derivative for one unit: from ``dh = dl/dh_t`` and ``dc`` (``dl/dc_t`` flowing
    in from later steps), ``(dl/du_i, dl/du_f, dl/du_g, dl/du_o, dl/dc_{t-1})``; ``d`` from
    :func:`derivatives`."""
    dct = dc + dh * d[4]
    return dct * d[0], dct * d[1], dct * d[2], dh * d[3], dct * f
