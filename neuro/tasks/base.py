"""The task contract: seeded streams of inputs, targets and a mask of the steps that count.

Every task is one endless random process per seed. A task writes it once, as ``_blocks(rng, batch)``:
an endless iterator of numpy blocks ``(xs [L, B, n_in], ys [L, B, n_out], mask [L, B])`` whose lengths
``L`` are the task's own choice (never the caller's), so ``sample`` and ``stream`` are two cuttings of the
same realisation::

    task.sample(k * chunk, batch, seed) == concat(first k chunks of task.stream(seed, batch, chunk))

Episodic tasks write ``_trial(rng, batch)`` instead (one trial of ``trial_steps`` steps); their process is
the trials back to back, and ``stream`` yields one trial per chunk.

Only what is asked for is generated: ``stream(..., steps=N)`` ends after ``N`` steps in all (its last chunk cut
there), so a chunk longer than a run is never built whole. Sizes are checked before anything is generated:
counts must be integers (Python, numpy or torch) of the valid range, and a sequence whose memory
(:meth:`AbstractTask.sequence_bytes`) cannot be had is refused with the figure (:class:`neuro.errors.SizeError`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import operator
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import Tensor

from neuro.errors import check_fits

__all__ = ["AbstractTask", "Block", "Sequence", "as_count", "check_range"]

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


def as_count(name: str, value: object, allow_zero: bool = False) -> int:
    """``value`` as a Python ``int`` if it is an integer (``int``, a numpy integer or a one-element integer
    tensor; not a bool) that is ``> 0`` (``>= 0`` with ``allow_zero``); ``ValueError`` naming it otherwise."""
    n = None
    if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        try:
            n = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    if n is None:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer")
    if n < 0 or (n == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} is invalid: must be {'>= 0' if allow_zero else '> 0'}")
    return n


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
        if len(self._pending) == 1:  # one block holds them: only the steps taken are copied, the rest stays a view
            xs, ys, mask = self._pending[0]
            self._pending = [(xs[steps:], ys[steps:], mask[steps:])] if xs.shape[0] > steps else []
            self._have -= steps
            return Sequence(torch.from_numpy(np.array(xs[:steps], dtype=np.float32, order="C")),
                            torch.from_numpy(np.array(ys[:steps], dtype=np.float32, order="C")),
                            torch.from_numpy(np.array(mask[:steps], dtype=bool, order="C")))
        xs, ys, mask = (np.concatenate(parts, axis=0) for parts in zip(*self._pending))
        rest = (xs[steps:], ys[steps:], mask[steps:])
        self._pending = [rest] if rest[0].shape[0] else []
        self._have -= steps
        return Sequence(torch.from_numpy(np.ascontiguousarray(xs[:steps], dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(ys[:steps], dtype=np.float32)),
                        torch.from_numpy(np.ascontiguousarray(mask[:steps], dtype=bool)))


def _cut_after(stream):
    """``stream(self, seed, batch, chunk)`` with the ``steps`` keyword of :meth:`AbstractTask.stream`."""

    @functools.wraps(stream)
    def with_steps(self, seed: int = 0, batch: int = 1, chunk: int = 1000, steps: int | None = None):
        chunks = stream(self, seed, batch, chunk)
        if steps is None:
            return chunks
        left = as_count("steps", steps)

        def cut():
            nonlocal left
            for seq in chunks:
                if left <= 0:
                    return
                yield seq[:left] if seq.steps > left else seq
                left -= seq.steps

        return cut()

    return with_steps


@dataclasses.dataclass(frozen=True)
class AbstractTask(abc.ABC):
    """A task: a frozen dataclass of its settings.

    ``episodic`` tasks are made of independent trials of ``trial_steps`` steps (the network state is
    reset between them by the training loop); the others are one endless stream.
    """

    name: ClassVar[str] = ""
    loss: ClassVar[str] = "mse"  # "mse" or "ce" (see neuro.losses)
    episodic: ClassVar[bool] = False

    def __init_subclass__(cls, **kw) -> None:
        """A subclass whose own ``stream`` takes no ``steps`` gets it: its chunks are cut there."""
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("stream")
        if callable(own) and "steps" not in inspect.signature(own).parameters:
            cls.stream = _cut_after(own)  # type: ignore[method-assign]

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
        steps, batch, seed = self._check_call(steps=steps, batch=batch, seed=seed)
        self._check_memory("steps", steps, batch)
        return _Reader(self._process(seed, batch)).take(steps)

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000, steps: int | None = None) -> Iterator[Sequence]:
        """Consecutive chunks of ``chunk`` steps (continuing across chunks): endless, or ``steps`` steps in all
        (the last chunk cut there; nothing past it is generated).

        Episodic tasks ignore ``chunk``: each chunk is one trial of ``trial_steps`` steps.
        """
        if not self.episodic:
            chunk = as_count("chunk", chunk)
        size = self.trial_steps if self.episodic else chunk
        size, batch, seed = self._check_call(steps=size, batch=batch, seed=seed, what="chunk")  # now, not at next()
        if steps is not None:
            steps = as_count("steps", steps)
        longest = size if steps is None else min(size, steps)
        self._check_memory("chunk" if longest == size else "steps", longest, batch)
        return self._chunks(_Reader(self._process(seed, batch)), size, steps)

    @staticmethod
    def _chunks(reader: _Reader, size: int, steps: int | None) -> Iterator[Sequence]:
        left = steps
        while left is None or left > 0:
            n = size if left is None else min(size, left)
            yield reader.take(n)
            if left is not None:
                left -= n

    def sequence_bytes(self, steps: int, batch: int) -> int:
        """An upper estimate of the memory one sequence of ``steps`` x ``batch`` takes while it is generated
        and handed over: its values (inputs and targets) held as the blocks, their concatenation, the float32
        copy and a float64 copy in the run's dtype (28 bytes each), and its mask (3 bytes a step and stream)."""
        return steps * batch * (28 * (self.n_in + self.n_out) + 3)

    def _check_memory(self, name: str, steps: int, batch: int) -> None:
        """:func:`neuro.errors.check_fits` for a sequence of ``steps`` x ``batch``, naming the larger of the two."""
        what = f"batch={batch}" if batch > steps else f"{name}={steps}"
        check_fits(what, self.sequence_bytes(steps, batch),
                   f"a sequence of {steps} steps x {batch} streams x {self.n_in + self.n_out} values of task "
                   f"{self.name!r}; choose a smaller {'batch' if batch > steps else name}")

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

    def _check_call(self, steps: int, batch: int, seed: int, what: str = "steps") -> tuple[int, int, int]:
        """``(steps, batch, seed)`` as Python ints, once each is checked (``ValueError`` naming a bad one)."""
        steps, batch = as_count(what, steps), as_count("batch", batch)
        seed = as_count("seed", seed, allow_zero=True)
        if self.episodic and steps < self.trial_steps:
            raise ValueError(f"{what}={steps} is shorter than one trial ({self.trial_steps} steps of "
                             f"{self.name!r}): use {what} >= {self.trial_steps}")
        return steps, batch, seed
