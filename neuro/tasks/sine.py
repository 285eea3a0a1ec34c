"""Periodic pattern generation: the RFLO target of Murray (2019), "Local online learning in recurrent
networks with random feedback", eLife 8:e43299 (code murray-lab/rflo-learning, ``RFLO_Example.ipynb``)::

    y*_t = sin(phi_t) + 1/2 sin(2 phi_t) + 1/4 sin(4 phi_t),        phi_t = 2 pi t / period

with ``period = 100`` steps (the notebook: 50 units, tau 10, trials of one period from a fixed state).
Here the pattern runs on as one continuing stream. Input (``n_in = 1``), chosen by ``cue``:

* ``"pulse"`` (default): ``x_t = 1`` on the first step of each period (``t % period == 0``), else 0: a
  phase cue, so the network need not keep the phase on its own;
* ``"constant"``: ``x_t = 1`` always: the network must generate the rhythm autonomously.

``n_out = 1``, loss mse, every step counts. The task has no randomness: every seed gives the same stream.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block

__all__ = ["SineTask"]

CUES = ("pulse", "constant")


@dataclasses.dataclass(frozen=True)
class SineTask(AbstractTask):
    period: int = 100
    cue: str = "pulse"

    name = "sine"
    loss = "mse"
    episodic = False

    def __post_init__(self) -> None:
        check_positive("period", self.period, integer=True)
        if self.period < 2:
            raise ValueError(f"period={self.period!r} is invalid: must be >= 2")
        check_choice("cue", self.cue, CUES)

    @property
    def n_in(self) -> int:
        return 1

    @property
    def n_out(self) -> int:
        return 1

    def target(self, t: np.ndarray) -> np.ndarray:
        """``y*_t`` at (integer) steps ``t``."""
        phi = 2.0 * math.pi * (np.asarray(t) % self.period) / self.period
        return np.sin(phi) + 0.5 * np.sin(2 * phi) + 0.25 * np.sin(4 * phi)

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        t = np.arange(self.period)                                      # one period per block
        y = np.repeat(self.target(t)[:, None, None], batch, axis=1).astype(np.float32)
        x = np.ones((self.period, batch, 1), dtype=np.float32)
        if self.cue == "pulse":
            x[1:] = 0.0
        mask = np.ones((self.period, batch), dtype=bool)
        while True:
            yield x, y, mask
