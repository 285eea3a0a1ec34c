"""Per-step losses. Each maps ``(y_hat [B, n_out], y [B, n_out], mask [B]) -> scalar``: the masked
per-sample loss summed over outputs, averaged over the batch (not over the mask: masked steps add 0).

* ``"mse"``: ``1/2 sum_k (y_hat_k - y_k)^2``
* ``"ce"``: ``-sum_k y_k log softmax(y_hat)_k`` (``y`` one-hot or a probability vector), in nats
* ``"value"``: ``sum_k y_hat_k``, the prediction itself (``y`` is ignored): a rule's estimate of its
  gradient is the gradient of the prediction ``v_t``, as TD(lambda) needs (:mod:`neuro.rules.td`). Not a
  task loss, so not in ``LOSSES`` (the supervised losses).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = ["LOSSES", "LossFn", "get", "grad", "per_sample"]


def _mse(y_hat: Tensor, y: Tensor) -> Tensor:
    return 0.5 * ((y_hat - y) ** 2).sum(-1)


def _ce(y_hat: Tensor, y: Tensor) -> Tensor:
    return -(y * torch.log_softmax(y_hat, dim=-1)).sum(-1)


def _value(y_hat: Tensor, y: Tensor) -> Tensor:
    return y_hat.sum(-1)


_PER_SAMPLE = {"mse": _mse, "ce": _ce, "value": _value}
LOSSES = ("mse", "ce")  # the supervised (task) losses; every name in _PER_SAMPLE is accepted


def per_sample(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in _PER_SAMPLE:
        raise ValueError(f"loss={name!r} is invalid: valid choices are {', '.join(map(repr, _PER_SAMPLE))}")
    return _PER_SAMPLE[name]


def get(name: str) -> LossFn:
    """The per-step loss ``name`` (see the module docstring)."""
    f = per_sample(name)

    def loss(y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        return (f(y_hat, y) * mask.to(y_hat.dtype)).sum() / y_hat.shape[0]

    loss.__name__ = name
    return loss


def grad(name: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``d get(name)(y_hat, y, mask) / d y_hat`` [B, n_out], written out (no autograd: the rules that must not
    call it, or that cannot afford it every step, use this): ``mse`` ``y_hat - y``, ``ce``
    ``softmax(y_hat) sum_k y_k - y``, ``value`` ``1``, each times ``mask / B``. Equal to autograd's
    (tests/neuro/test_losses.py)."""
    per_sample(name)  # raises for an unknown name
    m = (mask.to(y_hat.dtype) / y_hat.shape[0])[:, None]
    if name == "mse":
        return (y_hat - y) * m
    if name == "ce":
        return (torch.softmax(y_hat, dim=-1) * y.sum(-1, keepdim=True) - y) * m
    return m.expand_as(y_hat).clone()  # "value"
