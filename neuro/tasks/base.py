"""The task contract: seeded streams of inputs, targets and a mask of the steps that count."""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Iterator

import torch
from torch import Tensor

__all__ = ["AbstractTask", "Sequence"]


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

    @abc.abstractmethod
    def sample(self, steps: int, batch: int = 1, seed: int = 0) -> Sequence:
        """``steps`` steps of ``batch`` independent streams, a pure function of ``seed``."""

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000) -> Iterator[Sequence]:
        """An endless stream of consecutive chunks of ``chunk`` steps (continuing across chunks)."""
        raise NotImplementedError
