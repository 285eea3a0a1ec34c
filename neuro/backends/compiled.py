"""``backend="compiled"``: an event-driven, compiled time loop for the spiking models (numba).

The torch backend runs ``net.step`` in a Python loop: at small N each step is bound by per-operation
overhead (tens of microseconds for a handful of tiny tensor ops), at large N by the dense recurrent
matrix-vector product, which reads all of ``W_rec`` every step although only the neurons that spiked
contribute. This backend removes both, the way Brian2 and Lava do:

* the whole time loop is one compiled function (numba, ``nopython``; compiled once per dtype and cached
  on disk), so a step costs what its arithmetic costs;
* recurrent input is event-driven: when neuron ``k`` spikes at step ``t``, its outgoing weights (row
  ``k`` of ``W_rec^T``, contiguous) are added to the input of step ``t + 1``; a step costs
  ``O(N + spikes x N)`` instead of ``O(N^2)``;
* input is event-driven too: only the rows of ``W_in^T`` of the inputs that are nonzero at a step are
  read (spike inputs are mostly zero; a dense input costs what a matrix-vector product costs).

The dynamics are those of :mod:`models.lif` and :mod:`models.alif`, term for term in the same order
(every ``dynamics``, ``reset``, ``refractory``, the adaptive threshold, the leaky readout), so in float64
the voltages agree with the torch backend to rounding (the recurrent sums are added in another order)
and the spikes are identical; the tests check this on random networks. Forward only: no surrogate
gradients (train with the torch model; simulate with either).

Supported: ``lif`` and ``alif`` networks (read from their own fields), float32 and float64, CPU tensors,
any batch (the batch is a loop inside the compiled function). Anything else raises a ``ValueError``
naming the backend that can run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params

__all__ = ["RECORDABLE", "SUPPORTED", "simulate"]

SUPPORTED = ("lif", "alif")
RECORDABLE = ("spikes", "v", "i", "a", "y")
_DYNAMICS = {"exact": 0, "euler": 1, "lava": 2}
_RESETS = {"subtract": 0, "zero": 1}


def _kernel():
    """The compiled time loop (:mod:`neuro.backends._lif_kernel`; numba is imported only there)."""
    try:
        from ._lif_kernel import run
    except ImportError as e:
        if "numba" not in str(e):
            raise
        raise ImportError("backend='compiled' needs numba (pip install numba); backend='torch' runs every "
                          "model without it") from None
    return run


def _check(net: AbstractNetwork, params: Params, record: tuple[str, ...]) -> None:
    if net.name not in SUPPORTED:
        raise ValueError(f"backend='compiled' cannot run model {net.name!r}: it runs {', '.join(SUPPORTED)} "
                         f"(event-driven spiking networks); backend='torch' runs every model")
    p = next(iter(params.values()))
    if p.device.type != "cpu":
        raise ValueError(f"backend='compiled' runs on the CPU; params are on {p.device} (use backend='torch')")
    if p.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"backend='compiled' needs float32 or float64 params, got {p.dtype}")
    bad = [r for r in record if r not in RECORDABLE]
    if bad or (net.name == "lif" and "a" in record):
        bad = bad or ["a"]
        raise ValueError(f"record={record!r} is invalid for {net.name!r}: choose from "
                         f"{', '.join(r for r in RECORDABLE if r != 'a' or net.name == 'alif')}")


def simulate(net: AbstractNetwork, params: Params, xs: Tensor,
             record: tuple[str, ...] = ("spikes", "v", "y")) -> Any:
    """Run ``net`` (``lif`` or ``alif``) on ``xs`` [T, B, n_in] from rest; a :class:`neuro.backends.Trace`
    with ``spikes`` and ``y`` always, ``v``/``i``/``a`` when in ``record``."""
    from neuro.backends import Trace

    record = tuple(record)
    _check(net, params, record)
    p = {k: v.detach() for k, v in params.items()}
    dtype = p["W_rec"].dtype
    xs = xs.to(dtype=dtype)
    T, B, _ = xs.shape
    n, n_out = net.n_hidden, net.n_out
    x_np = np.ascontiguousarray(xs.numpy())
    np_dtype = x_np.dtype
    W_in_T = np.ascontiguousarray(p["W_in"].T.numpy())
    W_rec_T = np.ascontiguousarray(p["W_rec"].T.numpy())
    b, W_out, b_out = (np.ascontiguousarray(p[k].numpy()) for k in ("b", "W_out", "b_out"))
    spikes = np.zeros((T, B, n), np_dtype)
    y = np.zeros((T, B, n_out), np_dtype)
    empty = np.zeros((0, 0, 0), np_dtype)
    out = {r: (np.zeros((T, B, n), np_dtype) if r in record else empty) for r in ("v", "i", "a")}
    adaptive = net.name == "alif"
    d = net.dt
    _kernel()(x_np, W_in_T, W_rec_T, b, W_out, b_out, _DYNAMICS[net.dynamics], _RESETS[net.reset], float(net.refractory),
              net.alpha, net.beta, net.kappa, d / net.tau_mem, d / net.tau_syn, float(net.v_leak), float(net.v_th),
              float(net.v_reset), adaptive, float(net.beta_a) if adaptive else 0.0,
              net.rho if adaptive else 0.0, net.kappa_out, 0.0 if net.dynamics == "lava" else float(net.v_leak),
              "v" in record, "i" in record, "a" in record, spikes, out["v"], out["i"], out["a"], y)
    as_t = torch.from_numpy
    extra = {k: as_t(out[k]) for k in ("i", "a") if k in record}
    return Trace(y=as_t(y), spikes=as_t(spikes), v=as_t(out["v"]) if "v" in record else None, extra=extra)
