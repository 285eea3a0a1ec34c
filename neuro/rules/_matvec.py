"""``(W a, W b)``: one weight matrix times two vectors, reading the matrix once (numba, compiled once per dtype
and cached on disk: :mod:`neuro._numba`).

Several rules run two networks' recurrent products with the same ``W_rec`` at every step: the clean and
the noisy copy of the node-perturbation rules (:mod:`neuro.rules._fast.node`), the network and the
tangent ``J s~`` of UORO (:mod:`neuro.rules._fast.uoro`). At batch 1 and ``n = 1024`` a product is bound by
reading ``W`` (4 MB in float32, from the last-level cache), and BLAS's ``[2, n] @ W^T`` costs as much as
two ``[1, n] @ W^T`` on the 2-core machine here (105 against 53 us); this loop reads each row of ``W``
once for both vectors (about 49 us). The sums are reassociated (``reassoc``: vectorised) and may use
fused multiply-adds (``contract``), so they differ from BLAS's by rounding; NaN and infinity propagate
(no ``nnan`` / ``ninf``).

:func:`usable` says whether a product can take this path (CPU, float32 or float64, ``W`` contiguous,
vectors of its width); :func:`mv2` falls back to torch otherwise, so callers need not check. numba is
imported, and the loop compiled (or loaded from the cache), at the first product that takes the compiled
path: importing this module does not import numba."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["mv2", "usable"]

#: numba fastmath flags of the kernels: reassociated sums (vectorised) and fused multiply-adds; no
#: ``nnan`` / ``ninf``, so NaN and infinity propagate
FASTMATH = {"reassoc", "contract"}


def _mv2_loop(W, a, b, oa, ob):
    n, k = W.shape
    for i in range(n):
        sa = a.dtype.type(0.0)
        sb = a.dtype.type(0.0)
        for j in range(k):
            w = W[i, j]
            sa += w * a[j]
            sb += w * b[j]
        oa[i] = sa
        ob[i] = sb


@functools.cache
def _mv2():
    """The compiled loop (numba is imported here, at the first compiled product)."""
    from neuro._numba import numba

    return numba.njit(cache=True, nogil=True, fastmath=FASTMATH)(_mv2_loop)


def usable(W: Tensor, *vs: Tensor) -> bool:
    """Whether ``W`` [n, k] and the vectors (each ``k`` numbers, contiguous) can go through the compiled loop."""
    return (W.device.type == "cpu" and W.dtype in (torch.float32, torch.float64) and W.dim() == 2
            and W.is_contiguous() and all(v.device.type == "cpu" and v.dtype == W.dtype and v.numel() == W.shape[1]
                                          and v.is_contiguous() for v in vs))


def mv2(W: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(W a, W b)`` as vectors [n] for ``a``, ``b`` of ``k`` numbers each (any shape, e.g. ``[1, k]``); no
    autograd graph. The compiled loop where :func:`usable`, else two torch products."""
    if not usable(W, a, b):
        with torch.no_grad():
            return torch.mv(W, a.reshape(-1)), torch.mv(W, b.reshape(-1))
    oa = torch.empty(W.shape[0], dtype=W.dtype)
    ob = torch.empty(W.shape[0], dtype=W.dtype)
    _mv2()(W.detach().numpy(), a.detach().reshape(-1).numpy(), b.detach().reshape(-1).numpy(), oa.numpy(), ob.numpy())
    return oa, ob

