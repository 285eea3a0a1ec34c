"""Helpers that several rules share: random generators and draws, feedback matrices, finiteness checks,
window sums. A rule module imports these (and another rule module only to subclass it)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_finite_grad", "check_rate", "feedback_matrix", "gaussian", "new_generator", "outer_sum", "random_signs",
           "row_norms"]


def new_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded ``seed`` (draws are made on the CPU so a seed gives the same numbers on
    every device)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer")
    return torch.Generator().manual_seed(seed)


def gaussian(gen: torch.Generator, shape: tuple[int, ...], sigma: float, like: Tensor) -> Tensor:
    """``N(0, sigma^2)`` entries [shape], standard normals drawn on the CPU in float32 from ``gen`` (a seed
    gives the same numbers in every dtype, to float32's rounding, and on every device; float32 draws cost a
    quarter of float64 ones), times ``sigma`` in the dtype and on the device of ``like``."""
    xi = torch.randn(shape, generator=gen, dtype=torch.float32)
    if like.dtype != torch.float32 or like.device.type != "cpu":
        xi = xi.to(dtype=like.dtype, device=like.device)
    return xi * sigma


def random_signs(gen: torch.Generator, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Independent +-1 entries [shape], drawn on the CPU from ``gen``, in the dtype and on the device of
    ``like``."""
    r = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
    return (2 * r - 1).to(dtype=like.dtype, device=like.device)


def feedback_matrix(n: int, n_out: int, seed: int, like: Tensor, scale: float = 1.0) -> Tensor:
    """A fixed random feedback matrix ``B`` [n, n_out] (Murray 2019; Lillicrap et al. 2016), entries
    N(0, scale^2 / n_out), drawn in float64 on the CPU from a generator seeded ``seed`` (so a seed gives the
    same ``B`` in any dtype)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n_out, generator=g, dtype=torch.float64) * (scale / math.sqrt(n_out))
    return B.to(dtype=like.dtype, device=like.device)


def outer_sum(E: Tensor, P: Tensor) -> Tensor:
    """``E^T P`` [n, m] for ``E`` [R, n], ``P`` [R, m]: the sum of the ``R`` rows' outer products ``e_r p_r^T``
    (a window's estimate), as one BLAS product."""
    return E.T @ P


def check_finite_grad(rule: str, step: int, grad: dict[str, Tensor]) -> None:
    """Raise ``FloatingPointError`` naming the rule, the step and the parameters whose estimate is not
    finite."""
    bad = [k for k, g in grad.items() if not bool(torch.isfinite(g).all())]
    if bad:
        raise FloatingPointError(f"{rule}: the estimate at step {step} (since init or reset) is not finite "
                                 f"for parameter(s) {', '.join(map(repr, bad))}")


def row_norms(v: Tensor) -> Tensor:
    """The Euclidean norm of each row of ``v`` [B, D]: [B, 1] (one per sample)."""
    return torch.linalg.vector_norm(v, dim=1, keepdim=True)


def check_rate(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a rate in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name}={value!r} is invalid: must be a number in (0, 1]")
