"""Seeded parameter initialisation shared by the models (drawn in float64 on the CPU, then cast,
so float32 and float64 parameters of one seed agree to rounding)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normal(g: torch.Generator, shape: tuple[int, ...], std: float) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64) * std


def uniform(g: torch.Generator, shape: tuple[int, ...], bound: float) -> Tensor:
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2.0 - 1.0) * bound


def finish(params: dict[str, Tensor], dtype: torch.dtype, device: torch.device | str | None) -> dict[str, Tensor]:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype} is invalid: valid choices are torch.float32, torch.float64")
    return {k: v.to(dtype=dtype, device=device).contiguous() for k, v in params.items()}


def decay(dt: float, tau: float) -> float:
    """``exp(-dt / tau)``; 0 when ``tau`` is 0."""
    return math.exp(-dt / tau) if tau > 0 else 0.0
