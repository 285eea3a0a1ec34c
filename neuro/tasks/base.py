"""The task contract: seeded streams of inputs, targets and a mask of the steps that count.

Every task is one endless random process per seed. A task writes it once, as ``_blocks(rng, batch)``:
an endless iterator of numpy blocks ``(xs [L, B, n_in], ys [L, B, n_out], mask [L, B])`` whose lengths
``L`` are the task's own choice (never the caller's), so ``sample`` and ``stream`` are two cuttings of the
same realisation::

    task.sample(k * chunk, batch, seed) == concat(first k chunks of task.stream(seed, batch, chunk))

Episodic tasks write ``_trial(rng, batch)`` instead (one trial of ``trial_steps`` steps); their process is
the trials back to back, and ``stream`` yields one trial per chunk.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import Tensor

from neuro.contract import check_positive

__all__ = ["AbstractTask", "Block", "Sequence", "check_range"]

#: one block of a task's process: xs [L, B, n_in], ys [L, B, n_out], mask [L, B] (numpy)
Block = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Sequence:
    """``xs`` [T, B, n_in], ``ys`` [T, B, n_out] (float32), ``mask`` [T, B] (bool: the steps that count)."""

    xs: Tensor
    ys: Tensor
    mask: Tensor

    @property
    def steps(self) -> int:
        return self.xs.shape[0]

    @property
    def batch(self) -> int:
        return self.xs.shape[1]

    def to(self, dtype: torch.dtype | None = None, device=None) -> "Sequence":
        return Sequence(self.xs.to(dtype=dtype, device=device), self.ys.to(dtype=dtype, device=device),
                        self.mask.to(device=device))

    def __getitem__(self, s: slice) -> "Sequence":
        return Sequence(self.xs[s], self.ys[s], self.mask[s])


def check_range(name: str, value: object, lowest: int) -> None:
    """Raise ``ValueError`` unless ``value`` is a pair of integers ``(lo, hi)`` with ``lowest <= lo <= hi``."""
    ok = (isinstance(value, tuple) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not lowest <= value[0] <= value[1]:  # type: ignore[index]
        raise ValueError(f"{name}={value!r} is invalid: must be a pair of integers (lo, hi) "
                         f"with {lowest} <= lo <= hi")


class _Reader:
    """Cuts an iterator of blocks into pieces of any length, keeping the remainder."""

    def __init__(self, blocks: Iterator[Block]) -> None:
        self._blocks = blocks
        self._pending: list[Block] = []
        self._have = 0

    def take(self, steps: int) -> Sequence:
        while self._have < steps:
            block = next(self._blocks)
            self._pending.append(block)
            self._have += block[0].shape[0]
        xs, ys, mask = (np.concatenate(parts, axis=0) for parts in zip(*self._pending))
        rest = (xs[steps:], ys[steps:], mask[steps:])
        self._pending = [rest] if rest[0].shape[0] else []
        self._have -= steps
        return Sequence(torch.from_numpy(np.ascontiguousarray(xs[:steps], dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(ys[:steps], dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(mask[:steps], dtype=bool)))


@dataclasses.dataclass(frozen=True)
class AbstractTask(abc.ABC):
    """A task: a frozen dataclass of its settings.

    ``episodic`` tasks are made of independent trials of ``trial_steps`` steps (the network state is
    reset between them by the training loop); the others are one endless stream.
    """

    name: ClassVar[str] = ""
    loss: ClassVar[str] = "mse"  # "mse" or "ce" (see neuro.losses)
    episodic: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def n_in(self) -> int: ...

    @property
    @abc.abstractmethod
    def n_out(self) -> int: ...

    @property
    def trial_steps(self) -> int | None:
        """Steps in one trial of an episodic task (``None`` for a continuing task)."""
        return None

    def sample(self, steps: int, batch: int = 1, seed: int = 0) -> Sequence:
        """``steps`` steps of ``batch`` independent streams, a pure function of ``seed``.

        For an episodic task ``steps`` must cover one trial; longer samples hold trials back to back
        (the last one cut at ``steps``), the same trials ``stream(seed, batch)`` yields one by one.
        """
        self._check_call(steps=steps, batch=batch, seed=seed)
        return _Reader(self._process(seed, batch)).take(steps)

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000) -> Iterator[Sequence]:
        """An endless stream of consecutive chunks of ``chunk`` steps (continuing across chunks).

        Episodic tasks ignore ``chunk``: each chunk is one trial of ``trial_steps`` steps.
        """
        size = self.trial_steps if self.episodic else chunk
        self._check_call(steps=size, batch=batch, seed=seed, what="chunk")  # now, not at the first next()
        return self._chunks(_Reader(self._process(seed, batch)), size)

    @staticmethod
    def _chunks(reader: _Reader, size: int) -> Iterator[Sequence]:
        while True:
            yield reader.take(size)

    # -- what a task writes ------------------------------------------------------------------------
    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        """The task's process as endless blocks; episodic tasks get trials from ``_trial``."""
        if not self.episodic:
            raise NotImplementedError(f"{type(self).__name__} must define _blocks or override sample and stream")
        while True:
            yield self._trial(rng, batch)

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        """One trial of ``trial_steps`` steps (episodic tasks)."""
        raise NotImplementedError(f"{type(self).__name__} must define _trial or override sample and stream")

    # -- shared checks -----------------------------------------------------------------------------
    def _process(self, seed: int, batch: int) -> Iterator[Block]:
        return self._blocks(np.random.default_rng(seed), batch)

    def _check_call(self, steps: int, batch: int, seed: int, what: str = "steps") -> None:
        check_positive(what, steps, integer=True)
        check_positive("batch", batch, integer=True)
        check_positive("seed", seed, allow_zero=True, integer=True)
        if self.episodic and steps < self.trial_steps:
            raise ValueError(f"{what}={steps} is shorter than one trial ({self.trial_steps} steps of "
                             f"{self.name!r}): use {what} >= {self.trial_steps}")
