"""Copy task: read ``length`` random symbols, wait ``delay`` steps, then reproduce them in order.

The setting of the ANP-in-time paper (Fernandez et al. 2024, "Gradient-free training of recurrent neural
networks using random perturbations", code jesusgf96/NP_RNNs ``generate_copy_data``): length 100,
delay 10, trials of ``2 * length + delay`` = 210 steps. Two layouts of one trial, with ``L = length``,
``D = delay``, ``S = symbols``:

``layout="markers"`` (default)::

    steps [0, L)          input: symbol a_t in [0, S) one-hot on channels [0, S)   target: none (mask False)
    steps [L, L + D)      input: blank, channel S                                  target: none
    steps [L + D, 2L + D) input: go marker, channel S + 1                          target: a_{t - L - D} one-hot

so ``n_in = S + 2`` (every input step is one-hot), ``n_out = S``; the loss is cross-entropy on the recall
steps only (``ys`` is zero where ``mask`` is False).

``layout="np-rnns"`` (the authors' own, ``S`` one-hot classes: their ``amp = 10``)::

    steps [0, L)          input: symbol a_t in [1, S - 2] one-hot    target: class 0
    steps [L, L + D)      input: class 0                             target: class 0
    steps [L + D, 2L + D) input: marker, class S - 1                 target: a_{t - L - D} one-hot

so ``n_in = n_out = S``; every step counts and the loss is mse on the one-hot targets, as the authors train.
Their score is :func:`error_bits`, the output entries that are wrong once thresholded at 0.5.

``fixed=True`` makes every trial of a stream the same: the first trial drawn from the seed (one per batch
row), repeated; the authors train on one sequence drawn once and presented every epoch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block

__all__ = ["CopyTask", "LAYOUTS", "error_bits"]

LAYOUTS = ("markers", "np-rnns")


def error_bits(y_hat, y, threshold: float = 0.5) -> int:
    """The number of entries of ``y_hat`` (any shape; torch or numpy) that differ from the 0/1 target ``y``
    once thresholded (``< threshold`` -> 0, else 1), over all steps, streams and channels: the authors'
    ``count_nonzero(abs(y - where(pred < 0.5, 0, 1)))``."""
    y_hat, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (y_hat, y))
    return int(np.count_nonzero(y != np.where(y_hat < threshold, 0, 1)))


@dataclasses.dataclass(frozen=True)
class CopyTask(AbstractTask):
    length: int = 100
    symbols: int = 10
    delay: int = 10
    layout: str = "markers"
    fixed: bool = False

    name = "copy"
    episodic = True

    def __post_init__(self) -> None:
        check_positive("length", self.length, integer=True)
        check_positive("symbols", self.symbols, integer=True)
        check_choice("layout", self.layout, LAYOUTS)
        fewest = 2 if self.layout == "markers" else 3
        if self.symbols < fewest:
            raise ValueError(f"symbols={self.symbols!r} is invalid: must be >= {fewest}"
                             + ("" if fewest == 2 else f" with layout={self.layout!r}"))
        check_positive("delay", self.delay, allow_zero=True, integer=True)
        if not isinstance(self.fixed, bool):
            raise ValueError(f"fixed={self.fixed!r} is invalid: must be True or False")

    @property
    def loss(self) -> str:  # type: ignore[override]
        return "ce" if self.layout == "markers" else "mse"

    @property
    def n_in(self) -> int:
        return self.symbols + 2 if self.layout == "markers" else self.symbols

    @property
    def n_out(self) -> int:
        return self.symbols

    @property
    def trial_steps(self) -> int:
        return 2 * self.length + self.delay

    def _blocks(self, rng: np.random.Generator, batch: int):
        if not self.fixed:
            yield from super()._blocks(rng, batch)
            return
        trial = self._trial(rng, batch)
        while True:
            yield trial

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        if self.layout == "np-rnns":
            return self._np_rnns_trial(rng, batch)
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

    def _np_rnns_trial(self, rng: np.random.Generator, batch: int) -> Block:
        """The authors' ``generate_copy_data``: symbols, class-0 delay, class ``S - 1`` markers; the target
        class 0 until the recall, then the symbols."""
        L, D, S = self.length, self.delay, self.symbols
        a = rng.integers(1, S - 1, size=(L, batch))                  # their randint(1, amp - 1): 1 .. S - 2
        eye = np.eye(S, dtype=np.float32)
        xs = np.concatenate([eye[a], np.broadcast_to(eye[0], (D, batch, S)),
                             np.broadcast_to(eye[S - 1], (L, batch, S))], axis=0)
        ys = np.concatenate([np.broadcast_to(eye[0], (L + D, batch, S)), eye[a]], axis=0)
        return xs, ys, np.ones((self.trial_steps, batch), dtype=bool)
