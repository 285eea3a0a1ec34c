"""Chip in the loop: the perturbation rules (``np``, ``anp``, ``anp-time``) train a ``lif`` network whose
forward passes run in Lava (floating point), one Lava run per sequence.

The rules (:mod:`neuro.rules.node_perturbation`, :mod:`neuro.rules.anp`, :mod:`neuro.rules.anp_time`;
Garcia Fernandez, Keemink & van Gerven 2024, arXiv:2405.08967; Dalm et al. 2023, arXiv:2310.00965) need
only forward passes and losses (``needs = LOSS``). Their documented forward protocol
(:mod:`neuro.rules.node`) is one step at a time, and a Lava run costs about a second, so here the
protocol is run at the *sequence* level:

1. the noise the rule would draw is drawn first, in the rule's own order (per step: ``xi_h`` [M, n] and
   ``xi_y`` [M, n_out] by ``node_noise``, M = batch x samples, from ``new_generator(seed)``, as ``rule.init``
   seeds it);
2. one Lava run holds the B clean sequences and the M noisy copies as independent networks; the hidden
   noise enters each noisy copy's input current through an extra input channel per neuron (``W_in' =
   [W_in | I]``, ``x' = [x_t, xi_h,t]``, so the LIF's current is ``W_in x_t + W_rec z~_{t-1} + xi_h,t``:
   the noisy copies keep their own state, as ``np`` and ``anp-time`` define them);
3. the spikes come back; the host forms the pre-activations ``h = current(z_{t-1}) (+ xi_h)``, the leaky
   readout with the output noise (``y~_t = kappa y~_{t-1} + W_out z~_t + b_out + xi_y,t``), the per-step
   losses, and the rule's own node signal (``rule.signal``) and outer products (``node_estimate``),
   summed over the sequence.

On the same noise this equals ``neuro.gradients.grad_estimate(net, params, rule, xs, ys, seed=seed)``
computed with torch (the tests check it in float64). ``anp`` restarts its noisy copies from the clean state
at every step: that one-step noisy pass is computed on the host from the clean state that Lava recorded
(v, i, z, y), the clean pass on Lava (a Lava run per step would cost T runs).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from hw_targets.lava._check import check_lava_lif
from neuro.contract import AbstractNetwork, Params

__all__ = ["lava_rows", "sequence_estimate", "train_in_the_loop"]

RULES = ("np", "anp", "anp-time")


def _rows_per_run(rows: int, n: int) -> int:
    """LIF neurons per Lava run: all rows in one run up to 2048 neurons (block-diagonal weights grow as its
    square), else several runs."""
    return min(max(512, rows * n), 2048)


def lava_rows(net: AbstractNetwork, params: Params, xs: Tensor, xi_h: Tensor | None = None):
    """One Lava floating-point run of the rows of ``xs`` [T, R, n_in] with ``xi_h`` [T, R, n] (or None) added to
    each row's input current at each step: the Trace (spikes, v, i, readout without output noise)."""
    from hw_targets.lava.network import LavaNetwork

    if xi_h is None:
        return LavaNetwork(net, params, max_neurons=_rows_per_run(xs.shape[1], net.n_hidden)).run(xs)
    n = net.n_hidden
    big = dataclasses.replace(net, n_in=net.n_in + n)
    p = dict(params)
    p["W_in"] = torch.cat([params["W_in"], torch.eye(n, dtype=params["W_in"].dtype)], dim=1)
    x = torch.cat([xs.to(p["W_in"].dtype), xi_h.to(p["W_in"].dtype)], dim=-1)
    return LavaNetwork(big, p, max_neurons=_rows_per_run(xs.shape[1], n)).run(x)


def _check(rule) -> None:
    if getattr(rule, "name", None) not in RULES:
        raise ValueError(f"rule {getattr(rule, 'name', rule)!r} cannot run with the chip in the loop: valid rules are "
                         f"{', '.join(RULES)} (forward passes and losses only)")
    check_lava_lif(rule.net)


@torch.no_grad()
def sequence_estimate(rule, params: Params, xs: Tensor, ys: Tensor, mask: Tensor | None = None,
                      seed: int = 0) -> tuple[Params, float]:
    """The rule's estimate of ``dL/dparams`` summed over the sequence ``xs`` [T, B, n_in], ``ys`` [T, B, n_out]
    (params frozen, as ``grad_estimate``), with the forward passes on Lava; and the clean loss (summed over
    time, mean over the batch)."""
    from neuro.rules._common import new_generator
    from neuro.rules.node import TorchForward, node_estimate, node_noise, per_sample_loss, repeat

    _check(rule)
    net, K = rule.net, rule.samples
    params = {k: v.detach() for k, v in params.items()}
    like = params["W_in"]
    xs, ys = xs.to(like.dtype), ys.to(like.dtype)
    T, B = xs.shape[:2]
    mask = torch.ones(T, B, dtype=torch.bool) if mask is None else mask.bool()
    M, n = B * K, net.n_hidden
    gen = new_generator(seed)
    xi_h, xi_y = [], []
    for _ in range(T):
        h, y = node_noise(gen, M, n, net.n_out, rule.sigma, like)
        xi_h.append(h)
        xi_y.append(y)
    xi_h, xi_y = torch.stack(xi_h), torch.stack(xi_y)
    keep = rule.keep_noisy_state
    if keep:  # clean rows then noisy rows, one run
        rows_x = torch.cat([xs, repeat(xs.transpose(0, 1), K).transpose(0, 1)], dim=1)
        rows_xi = torch.cat([torch.zeros(T, B, n, dtype=like.dtype), xi_h], dim=1)
        tr = lava_rows(net, params, rows_x, rows_xi)
    else:
        tr = lava_rows(net, params, xs)
    loss_fn = rule.loss or "mse"
    fwd = TorchForward(net)
    clean_s = net.init_state(params, B)
    noisy_s = repeat(clean_s, K)
    z_prev = torch.zeros(B, n, dtype=like.dtype)
    zn_prev = torch.zeros(M, n, dtype=like.dtype)
    grad = {k: torch.zeros_like(v) for k, v in params.items()}
    total = 0.0
    prev_state = None  # the clean state before step t (anp)
    for t in range(T):
        z = tr.spikes[t, :B].to(like.dtype)
        h = net.current(params, clean_s._replace(z=z_prev), xs[t])
        s1, y = net.readout(params, clean_s, z)
        a = z @ params["W_out"].T + params["b_out"]
        clean_s = s1._replace(z=z, v=tr.v[t, :B].to(like.dtype), i=tr.extra["i"][t, :B].to(like.dtype))
        if keep:
            zn = tr.spikes[t, B:].to(like.dtype)
            hn = net.current(params, noisy_s._replace(z=zn_prev), repeat(xs[t], K)) + xi_h[t]
            sn, yn = net.readout(params, noisy_s, zn)
            yn = yn + xi_y[t]
            an = zn @ params["W_out"].T + params["b_out"] + xi_y[t]
            noisy_s = sn._replace(y=yn)
            zn_prev = zn
        else:  # anp: one noisy step from the clean state before this step, on the host
            start = repeat(prev_state if t else net.init_state(params, B), K)
            p = fwd(params, start, repeat(xs[t], K), xi_h[t], xi_y[t])
            hn, yn, an = p.h, p.y, p.a
        prev_state = clean_s
        l = per_sample_loss(loss_fn, y, ys[t], mask[t])
        ln = per_sample_loss(loss_fn, yn, repeat(ys[t], K), repeat(mask[t], K))
        e_h, e_y = rule.signal(ln - repeat(l, K), xi_h[t], xi_y[t], hn - repeat(h, K), an - repeat(a, K))
        g = node_estimate(net, params, e_h, e_y, repeat(xs[t], K), repeat(z_prev, K), repeat(z, K))
        for k in grad:
            grad[k] += g[k]
        total += float(l.sum() / B)
        z_prev = z
    return grad, total


def train_in_the_loop(rule, params: Params, data, updates: int, lr: float, seed: int = 0,
                      steps: int | None = None, batch: int = 1) -> tuple[Params, list[float]]:
    """``updates`` steps of plain gradient descent ``params -= lr * estimate``, each estimate from one Lava
    run (:func:`sequence_estimate`, noise seed ``seed + k``). ``data``: a ``Sequence`` (the same every update)
    or a task (``data.sample(steps, batch, seed=seed + k)``). Returns the parameters and the clean loss of
    every update's run, then of the final parameters (one more Lava run)."""
    from neuro.contract import check_positive

    check_positive("updates", updates, integer=True)
    check_positive("lr", lr)
    losses = []
    params = {k: v.detach().clone() for k, v in params.items()}
    for k in range(updates + 1):
        seq = data if hasattr(data, "xs") else data.sample(steps, batch, seed=seed + k)
        if k == updates:
            _, loss = sequence_estimate(rule, params, seq.xs, seq.ys, seq.mask, seed=seed + k)
            losses.append(loss)
            break
        g, loss = sequence_estimate(rule, params, seq.xs, seq.ys, seq.mask, seed=seed + k)
        losses.append(loss)
        params = {name: v - lr * g[name].to(v.dtype) for name, v in params.items()}
    return params, losses
