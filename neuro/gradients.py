"""Whole-sequence helpers: the loss of one forward run, a rule's summed gradient estimate with the
parameters frozen, and the alignment (cosine similarity) of two gradients."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params
from neuro.rules import AbstractRule, add_into, make, zeros_like_params

__all__ = ["alignment", "grad_estimate", "sequence_loss"]


def _prepare(net: AbstractNetwork, params: Params, xs: Tensor, ys: Tensor, mask: Tensor | None):
    """``(xs, ys, mask)`` as [T, B, ...] in the parameters' dtype and device, once every argument is checked."""
    if not isinstance(net, AbstractNetwork):
        raise TypeError(f"net={net!r} is invalid: expected a network from models.make, not a {type(net).__name__}")
    net.check_params(params)
    p = next(iter(params.values()))
    for name, value in (("xs", xs), ("ys", ys), ("mask", mask)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ys.dim() != xs.dim():
        raise ValueError(f"xs has shape {tuple(xs.shape)} and ys {tuple(ys.shape)}: expected [T, B, n_in] and "
                         f"[T, B, n_out] (or [T, n_in] and [T, n_out] for one sequence)")
    if xs.dim() == 2:
        xs, ys = xs[:, None], ys[:, None]
        mask = None if mask is None else mask[:, None]
    if xs.dim() != 3 or xs.shape[-1] != net.n_in:
        raise ValueError(f"xs has shape {tuple(xs.shape)}: expected [T, B, n_in={net.n_in}]")
    if ys.shape[:2] != xs.shape[:2] or ys.shape[-1] != net.n_out:
        raise ValueError(f"ys has shape {tuple(ys.shape)}: expected [T={xs.shape[0]}, B={xs.shape[1]}, n_out={net.n_out}]")
    if xs.shape[0] == 0 or xs.shape[1] == 0:
        raise ValueError(f"xs has shape {tuple(xs.shape)}: expected at least one step and one sequence "
                         f"([T >= 1, B >= 1, n_in={net.n_in}])")
    if mask is None:
        mask = torch.ones(xs.shape[:2], dtype=torch.bool)
    if tuple(mask.shape) != tuple(xs.shape[:2]):
        raise ValueError(f"mask has shape {tuple(mask.shape)}: expected [T, B] = {tuple(xs.shape[:2])}")
    return xs.to(dtype=p.dtype, device=p.device), ys.to(dtype=p.dtype, device=p.device), mask.to(p.device)


def sequence_loss(net: AbstractNetwork, params: Params, xs: Tensor, ys: Tensor, loss: str = "mse",
                  mask: Tensor | None = None) -> Tensor:
    """``L = sum_t l_t`` of one forward run from rest (differentiable in ``params``).

    ``l_t`` is the per-step loss of :mod:`neuro.losses` (masked, summed over outputs, mean over batch).
    """
    xs, ys, mask = _prepare(net, params, xs, ys, mask)
    fn = losses.get(loss)
    state = net.init_state(params, xs.shape[1])
    total = xs.new_zeros(())
    for x, y, m in zip(xs, ys, mask):
        state, y_hat = net.step(params, state, x)
        total = total + fn(y_hat, y, m)
    return total


def grad_estimate(net: AbstractNetwork, params: Params, rule: str | AbstractRule, xs: Tensor, ys: Tensor,
                  seed: int = 0, loss: str = "mse", mask: Tensor | None = None, **rule_kw: Any) -> Params:
    """The rule's estimate of ``dL/dparams`` summed over one sequence, parameters frozen.

    For ``"bptt"`` this is the true gradient of :func:`sequence_loss`.
    """
    xs, ys, mask = _prepare(net, params, xs, ys, mask)
    if isinstance(rule, str):
        rule = make(rule, net, loss=loss, **rule_kw)
    elif rule.net != net:
        raise ValueError(f"the rule was built on {rule.net!r}, not on net={net!r}")
    elif rule_kw:
        raise ValueError(f"options {sorted(rule_kw)} given with a built rule: pass them to rules.make instead")
    elif rule.loss is None:
        import dataclasses
        rule = dataclasses.replace(rule, loss=loss)
    frozen = {k: v.detach() for k, v in params.items()}
    state = rule.init(frozen, xs.shape[1], seed)
    total = zeros_like_params(frozen)
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(frozen, state, x, y, m)
        state = out.state
        add_into(total, out.grad)
    state, g = rule.finish(frozen, state)
    return add_into(total, g)


def alignment(g: Params, g_true: Params) -> dict[str, float]:
    """Cosine similarity of ``g`` and ``g_true``, per parameter (by key) and ``"overall"`` (all flattened).

    A cosine with a zero-norm vector is ``nan``.
    """
    if set(g) != set(g_true):
        raise ValueError(f"gradients have different keys: {sorted(g)} vs {sorted(g_true)}")
    for k in sorted(g):
        if g[k].shape != g_true[k].shape:
            raise ValueError(f"gradients of {k!r} have different shapes: {tuple(g[k].shape)} vs {tuple(g_true[k].shape)}")

    def cos(a: Tensor, b: Tensor) -> float:
        a, b = a.detach().double().flatten(), b.detach().double().flatten()
        na, nb = a.norm().item(), b.norm().item()
        return (a @ b).item() / (na * nb) if na > 0 and nb > 0 else math.nan

    out = {k: cos(g[k], g_true[k]) for k in sorted(g)}
    keys = sorted(g)
    out["overall"] = cos(torch.cat([g[k].flatten() for k in keys]), torch.cat([g_true[k].flatten() for k in keys]))
    return out
