"""Copy task: read ``length`` random symbols, wait ``delay`` steps, then reproduce them in order.

The setting of the ANP-in-time paper (Fernandez et al. 2024, "Gradient-free training of recurrent neural
networks using random perturbations", code jesusgf96/NP_RNNs ``generate_copy_data``): length 100,
delay 10, trials of ``2 * length + delay`` = 210 steps.

One trial, with ``L = length``, ``D = delay``, ``S = symbols``::

    steps [0, L)          input: symbol a_t one-hot on channels [0, S)        target: none (mask False)
    steps [L, L + D)      input: blank, channel S                             target: none
    steps [L + D, 2L + D) input: go marker, channel S + 1                     target: a_{t - L - D} one-hot

so ``n_in = S + 2`` (every input step is one-hot), ``n_out = S``; the loss is cross-entropy on the recall
steps only (``ys`` is zero where ``mask`` is False). The paper's ``amp = 10`` one-hot classes are 8
symbols, a blank and a marker: ``symbols=8`` reproduces its inputs (channel order aside).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block

__all__ = ["CopyTask"]


@dataclasses.dataclass(frozen=True)
class CopyTask(AbstractTask):
    length: int = 100
    symbols: int = 10
    delay: int = 10

    name = "copy"
    loss = "ce"
    episodic = True

    def __post_init__(self) -> None:
        check_positive("length", self.length, integer=True)
        check_positive("symbols", self.symbols, integer=True)
        if self.symbols < 2:
            raise ValueError(f"symbols={self.symbols!r} is invalid: must be >= 2")
        check_positive("delay", self.delay, allow_zero=True, integer=True)

    @property
    def n_in(self) -> int:
        return self.symbols + 2

    @property
    def n_out(self) -> int:
        return self.symbols

    @property
    def trial_steps(self) -> int:
        return 2 * self.length + self.delay

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        L, D, S = self.length, self.delay, self.symbols
        a = rng.integers(0, S, size=(L, batch))                      # the symbols [L, B]
        eye = np.eye(S + 2, dtype=np.float32)
        xs = np.concatenate([eye[a], np.broadcast_to(eye[S], (D, batch, S + 2)),
                             np.broadcast_to(eye[S + 1], (L, batch, S + 2))], axis=0)
        ys = np.zeros((self.trial_steps, batch, S), dtype=np.float32)
        ys[L + D:] = np.eye(S, dtype=np.float32)[a]
        mask = np.zeros((self.trial_steps, batch), dtype=bool)
        mask[L + D:] = True
        return xs, ys, mask
