"""The online normalisation of the columns networks in the compiled engines (:mod:`neuro.engine.columnar`,
:mod:`neuro.engine.td`): the models' statistics (:mod:`models.columnar`, ``normalise``) step by step as numba
kernels, and the network state's arrays the kernels work on.

Column ``k`` reads its inputs ``v = (x_t, h_t[:lo])`` normalised by its own statistics from before the step
(:func:`column_inputs`); then the learning columns' statistics take the raw values (:func:`learn_inputs`)::

    mu <- d mu + (1 - d) v        var <- max(d var + (1 - d) (v - mu)^2, floor)        (mu updated)

and the readout's feature statistics take every column's ``h_t`` the same way before the readout reads
``hhat_t = (h_t - mu_f) / sqrt(var_f)`` (:func:`readout_features`). Arithmetic in float64, as the models'
in a float64 run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from models.columnar import Columnar
from models.constructive import Constructive
from neuro._numba import numba
from neuro.engine.base import view

__all__ = ["column_inputs", "learn_inputs", "normalisation", "own_net_state", "readout_features", "running",
           "sample_net_state"]


@numba.njit(cache=True)
def running(mu, var, v, d, floor):  # noqa: ANN001, ANN201
    """One step of a running statistic on the raw value ``v`` (float64): ``mu <- d mu + (1 - d) v``, then ``var
    <- max(d var + (1 - d) (v - mu)^2, floor)``; returns the new ``(mu, var)``."""
    m = d * mu + (1.0 - d) * v
    dv = v - m
    w = d * var + (1.0 - d) * (dv * dv)
    return m, (w if w > floor else floor)


@numba.njit(cache=True)
def column_inputs(norm, x, hn, mu, var, k, nv, xk):  # noqa: ANN001, ANN201
    """Column ``k``'s inputs ``(x, hn[:nv - n_in])`` as it reads them, into ``xk[:nv]`` (float64): normalised by
    its statistics ``mu[k]``, ``var[k]`` (from before the step) where ``norm``, else as they are."""
    n_in = x.shape[0]
    for j in range(nv):
        v = float(x[j]) if j < n_in else float(hn[j - n_in])
        xk[j] = (v - float(mu[k, j])) / math.sqrt(float(var[k, j])) if norm else v
    return 0


@numba.njit(cache=True)
def learn_inputs(x, hn, mu, var, lo, hi, d, floor):  # noqa: ANN001, ANN201
    """The learning columns' input statistics take the step's raw inputs ``(x, hn[:lo])`` (the models'
    ``learn_inputs``): ``mu <- d mu + (1 - d) v``, ``var <- max(d var + (1 - d) (v - mu)^2, floor)``."""
    n_in = x.shape[0]
    for k in range(lo, hi):
        for j in range(n_in + lo):
            v = float(x[j]) if j < n_in else float(hn[j - n_in])
            mu[k, j], var[k, j] = running(float(mu[k, j]), float(var[k, j]), v, d, floor)
    return 0


@numba.njit(cache=True)
def readout_features(norm, hn, mu_f, var_f, d, floor, hf):  # noqa: ANN001, ANN201
    """One sample's readout features ``hf`` [n] from ``hn`` [n] (the models' ``readout``): where ``norm``, the
    statistics ``mu_f``, ``var_f`` take ``hn`` (updated in place) and ``hf = (hn - mu_f) / sqrt(var_f)``;
    else ``hf = hn``."""
    for k in range(hn.shape[0]):
        v = float(hn[k])
        if norm:
            mu_f[k], var_f[k] = running(float(mu_f[k]), float(var_f[k]), v, d, floor)
            hf[k] = (v - float(mu_f[k])) / math.sqrt(float(var_f[k]))
        else:
            hf[k] = hn[k]
    return 0


def own_net_state(net: Columnar | Constructive, states: list[NamedTuple]) -> tuple[NamedTuple, tuple]:
    """A network state holding copies of the network states ``states``' fields side by side (each sample's
    rows in turn), and the kernels' arrays over it: ``h``, ``c`` (zeros for the rate cell), ``mu_in``,
    ``var_in``, ``mu_f``, ``var_f`` (empty without normalisation)."""
    own = type(states[0])(*(torch.cat([st[i] for st in states]).clone(memory_format=torch.contiguous_format)
                            for i in range(len(states[0]))))
    h = own.h
    c = own.c if net.cell == "lstm" else torch.zeros_like(h)
    if net.normalise is None:
        stats = (h.new_zeros(*h.shape, 0),) * 2 + (h.new_zeros(h.shape[0], 0),) * 2
    else:
        stats = (own.mu_in, own.var_in, own.mu_f, own.var_f)
    return own, tuple(view(a) for a in (h, c, *stats))


def sample_net_state(own: NamedTuple, b: int) -> NamedTuple:
    """Sample ``b``'s network state: views of ``own``'s fields (batch 1)."""
    return type(own)(*(f[b:b + 1] for f in own))


def normalisation(net: Columnar | Constructive) -> tuple[bool, float, float]:
    """The kernels' ``norm, decay, floor``: the network's online normalisation (``decay`` 0 without)."""
    d = net.normalise
    return d is not None, 0.0 if d is None else float(d), float(net.variance_floor)
