"""The floor of online training on the rate RNN: what any rule's compiled step costs at least.

Per step, :func:`floor_range`: the network's step (:func:`neuro.engine.kernels.rate_step`), the readout, the
loss and its error, and one update of every parameter with a fixed array ``g`` -- SGD (``p <- p + (-lr) g``)
or Adam (:func:`neuro.engine.kernels.adam`, torch's arithmetic) -- and no rule's traces or estimate. An online rule that updates at every step does all of this and
more, so :func:`measure` (steps/s of these steps, compiled, run in ranges of a sequence's length like the
loop's) is an upper bound on its end-to-end speed; ``neuro bench train --floor`` reports it next to the rules.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from neuro._numba import numba
from neuro.engine import kernels as K

__all__ = ["OPTIMIZERS", "floor_range", "measure"]

#: the updates :func:`measure` can pay per step
OPTIMIZERS = ("sgd", "adam")


@numba.njit(cache=True)
def floor_range(ps, gs, ms, vs, steps, adam, lr, alpha, n_in, n, n_out, h, xs, ys, mask, losses):  # noqa: ANN001, ANN201
    """Steps ``0 .. len(losses) - 1`` of ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B]: the network
    step from ``h`` [B, n] (changed in place), the readout, the loss (``losses``, MSE), and SGD on every
    parameter of ``ps`` (flat, ``W_in, W_rec, b, W_out, b_out``) with the arrays ``gs``: Adam (moments ``ms``,
    ``vs``, counts ``steps``, torch's default betas and eps) where ``adam``, else SGD."""
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    nb = h.shape[0]
    h_new, D = np.empty_like(h), np.empty_like(h)
    y_hat, eps = np.empty((nb, n_out), h.dtype), np.empty((nb, n_out), h.dtype)
    for t in range(losses.size):
        K.rate_step(W_in, W_rec, b, alpha, xs[t], h, h_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t] = K.loss_and_error(K.MSE, y_hat, ys[t], mask[t], eps)
        if adam:
            K.adam(ps, gs, ms, vs, steps, lr, 0.9, 0.999, 1e-8)
        else:
            K.sgd(ps, gs, lr)
        h[:, :] = h_new


def measure(n: int, steps: int = 20000, chunk: int = 100, seed: int = 0, optimizer: str = "sgd") -> float:
    """Steps/s of :func:`floor_range` on a rate RNN of ``n`` units (float32, batch 1, the ``sine`` task's
    inputs), ``steps`` steps in ranges of ``chunk`` with ``optimizer`` (one of :data:`OPTIMIZERS`), after one
    warm-up range."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is invalid: expected one of {', '.join(OPTIMIZERS)}")
    import models
    from neuro import tasks

    task = tasks.make("sine")
    net = models.make("rate", n_in=task.n_in, n_hidden=n, n_out=task.n_out)
    params = net.init_params(seed)
    ps = tuple(params[k].detach().to(torch.float32).contiguous().numpy().reshape(-1)
               for k in ("W_in", "W_rec", "b", "W_out", "b_out"))
    gs = tuple(np.full_like(p, 1e-6) for p in ps)
    ms, vs = tuple(np.zeros_like(p) for p in ps), tuple(np.zeros_like(p) for p in ps)
    counts = tuple(np.zeros(1, np.float64) for _ in ps)
    adam = optimizer == "adam"
    seq = next(task.stream(seed=seed, batch=1, chunk=chunk, steps=steps))
    xs, ys = (t.to(torch.float32).contiguous().numpy() for t in (seq.xs, seq.ys))
    mask = seq.mask.to(torch.float32).contiguous().numpy()
    h = np.zeros((1, n), np.float32)
    losses = np.empty(chunk, np.float32)
    floor_range(ps, gs, ms, vs, counts, adam, 1e-3, float(net.alpha), net.n_in, n, net.n_out, h, xs, ys, mask, losses)
    t0 = time.perf_counter()
    for _ in range(max(1, steps // chunk)):
        floor_range(ps, gs, ms, vs, counts, adam, 1e-3, float(net.alpha), net.n_in, n, net.n_out, h, xs, ys, mask, losses)
    return max(1, steps // chunk) * chunk / (time.perf_counter() - t0)
