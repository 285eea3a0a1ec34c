"""What every compiled engine gives :class:`neuro.train_loop.Loop`: :meth:`Engine.run`, a range of steps of one
sequence run in one call, and the arrays it reads (numpy views of the torch tensors, which share their memory).
"""

from __future__ import annotations

import abc
import functools
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch

from neuro.contract import Params
from neuro.rules.base import AbstractRule
from neuro.tasks.base import Sequence

__all__ = ["Engine", "RangeResult", "SequenceArrays", "Views", "flat", "view"]


def view(t: torch.Tensor) -> np.ndarray:
    """The numpy array sharing ``t``'s memory (a CPU tensor; changed in place through it)."""
    return t.detach().numpy()


def flat(t: torch.Tensor) -> np.ndarray:
    """``t``'s elements as a one-dimensional array sharing its memory; a tensor that is not contiguous has its
    data made contiguous first (the same tensor object, so an optimizer's state keyed by it still applies)."""
    if not t.is_contiguous():
        t.data = t.data.contiguous()
    return view(t).reshape(-1)


class Views:
    """Arrays made from tensors (by default each one's :func:`flat` view), made once and given again while the
    tensors are the same objects with the same memory: an engine's per-range conversions paid once per run.
    ``make(tensors) -> tuple`` makes them (``None`` may stand for a tensor)."""

    def __init__(self, make: Callable[[tuple[torch.Tensor | None, ...]], tuple] | None = None) -> None:
        self.make = make or (lambda ts: tuple(flat(t) for t in ts))
        self.key: tuple = ()
        self.tensors: tuple = ()  # held, so that the ids in the key stay theirs
        self.arrays: tuple = ()

    def __call__(self, tensors: Iterable[torch.Tensor | None]) -> tuple:
        tensors = tuple(tensors)
        if _identity(tensors) != self.key or not self.tensors:
            self.arrays = self.make(tensors)
            self.tensors, self.key = tensors, _identity(tensors)  # after make: flat may have moved a tensor's data
        return self.arrays


def _identity(tensors: tuple[torch.Tensor | None, ...]) -> tuple:
    return tuple((id(t), 0 if t is None else t.data_ptr()) for t in tensors)


class SequenceArrays(NamedTuple):
    """A sequence's inputs ``xs`` [T, B, n_in], targets ``ys`` [T, B, n_out] and ``mask`` [T, B] (1.0 where the
    step counts), in the parameters' dtype."""

    xs: np.ndarray
    ys: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, seq: Sequence, dtype: torch.dtype) -> SequenceArrays:
        """The arrays of ``seq`` (CPU tensors): each tensor's own memory where it is contiguous and of ``dtype``
        already, else a converted copy (the values ``Tensor.to(dtype)`` gives: 0/1 for the mask)."""
        npd = _numpy_dtype(dtype)
        return cls(*(np.ascontiguousarray(view(t), dtype=npd) for t in (seq.xs, seq.ys, seq.mask)))


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


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
