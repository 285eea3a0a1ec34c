"""What every compiled engine gives :class:`neuro.train_loop.Loop`: :meth:`Engine.run`, a range of steps of one
sequence run in one call, and the arrays it reads (numpy views of the torch tensors, which share their memory).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import numpy as np
import torch

from neuro.contract import Params
from neuro.rules.base import AbstractRule
from neuro.tasks.base import Sequence

__all__ = ["Engine", "RangeResult", "SequenceArrays", "flat", "view"]


def view(t: torch.Tensor) -> np.ndarray:
    """The numpy array sharing ``t``'s memory (a CPU tensor; changed in place through it)."""
    return t.detach().numpy()


def flat(t: torch.Tensor) -> np.ndarray:
    """``t``'s elements as a one-dimensional array sharing its memory; a tensor that is not contiguous has its
    data made contiguous first (the same tensor object, so an optimizer's state keyed by it still applies)."""
    if not t.is_contiguous():
        t.data = t.data.contiguous()
    return view(t).reshape(-1)


class SequenceArrays(NamedTuple):
    """A sequence's inputs ``xs`` [T, B, n_in], targets ``ys`` [T, B, n_out] and ``mask`` [T, B] (1.0 where the
    step counts), in the parameters' dtype."""

    xs: np.ndarray
    ys: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, seq: Sequence, dtype: torch.dtype) -> SequenceArrays:
        def arr(t: torch.Tensor) -> np.ndarray:
            return view(t.to(dtype).contiguous())
        return cls(arr(seq.xs), arr(seq.ys), arr(seq.mask))


class RangeResult(NamedTuple):
    """What a range changed besides the tensors it updated in place: the rule state (the same tensors, or
    contiguous copies put in), the per-step losses [steps] (in order), the updates applied, and whether the
    accumulator holds estimates not yet applied."""

    state: NamedTuple
    losses: np.ndarray
    updates: int
    pending: bool


class Engine(abc.ABC):
    """Steps of online training of one rule on one network, compiled. Built by a builder of
    :data:`neuro.engine.REGISTRY` for a concrete ``(net, rule)``."""

    rule: AbstractRule

    @abc.abstractmethod
    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        """Steps ``t0 .. t1 - 1`` of ``seq`` (``n_seq`` steps long, ``0 <= t0 < t1 <= n_seq``) as the torch path
        runs them: each step's estimate added to ``acc``, and after step ``t`` with ``(t + 1) % every == 0`` or
        ``t == n_seq - 1`` the optimizer ``opt`` applies ``acc`` and ``acc`` is zeroed. ``params``, ``acc``, the
        optimizer's state and the rule state's tensors are changed in place."""
