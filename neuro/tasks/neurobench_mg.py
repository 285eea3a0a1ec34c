"""NeuroBench's Mackey-Glass task as an episodic training task (Yik et al., Nature Communications 2025;
NeuroBench/neurobench ``examples/mackey_glass``): one run of the protocol of :mod:`neuro.yardsticks.mackey_glass`.

Run ``offset`` (0..29) of the series of ``tau`` (17..30) is the 1501-point window starting ``offset * 0.5``
Lyapunov times in (:func:`~neuro.yardsticks.mackey_glass.run_start`). A trial is its 750 training steps: at
step ``t`` the input is the last ``window`` values ``x_{t-W+1}, ..., x_t`` (oldest first; zeros before the
window's start, as NeuroBench pads its look-back) and the target ``x_{t+1}`` (mse, every step counts, raw values).
Every trial is the same sequence and every stream of a batch the same: ``neuro.train(net, rule, task,
steps=k * 750)`` trains online by any rule over ``k`` passes (epochs), the state reset before each (episodic).
NeuroBench's LSTM example trains 200 full-batch epochs; here a rule's updates fall where its schedule puts them.

:meth:`NeuroBenchMG.windows` gives the teacher-forced inputs and targets of all 1500 steps (training and test)
that :func:`neuro.yardsticks.mackey_glass.evaluate` needs for the autoregressive test. The series is
regenerated with jitcdde and cached per machine on first use (about two minutes); it may differ from
NeuroBench's official files (see :mod:`neuro.yardsticks.mackey_glass`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block

__all__ = ["NeuroBenchMG"]


@dataclasses.dataclass(frozen=True)
class NeuroBenchMG(AbstractTask):
    tau: int = 17
    offset: int = 0
    window: int = 1

    name = "neurobench-mg"
    loss = "mse"
    episodic = True

    def __post_init__(self) -> None:
        from neuro.yardsticks import mackey_glass as mg

        mg.cache_path(self.tau)     # checks tau
        mg.run_start(self.offset)   # checks offset
        check_positive("window", self.window, integer=True)
        if self.window > mg.TRAIN:
            raise ValueError(f"window={self.window!r} is invalid: must be at most {mg.TRAIN} (the training points)")

    @property
    def n_in(self) -> int:
        return self.window

    @property
    def n_out(self) -> int:
        return 1

    @property
    def trial_steps(self) -> int:
        from neuro.yardsticks.mackey_glass import TRAIN

        return TRAIN

    @functools.cached_property
    def _points(self) -> np.ndarray:
        """The run's points, read from the cached series once per task (read-only)."""
        from neuro.yardsticks import mackey_glass as mg

        start = mg.run_start(self.offset)
        x = mg.series(self.tau)[start:start + mg.WINDOW]
        x.setflags(write=False)
        return x

    def values(self) -> np.ndarray:
        """The run's 1501 points ``x_0 .. x_1500`` (float64)."""
        return self._points.copy()

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Teacher-forced inputs ``xs`` [1500, window] (row ``t``: ``x_{t-W+1} .. x_t``, zeros before ``x_0``)
        and targets ``ys`` [1500] (``x_{t+1}``) of the whole run, float64: rows 0..749 are the training trial,
        750..1499 the test span (where :func:`~neuro.yardsticks.mackey_glass.evaluate` feeds predictions back
        from row 751 on)."""
        x = self.values()
        W = self.window
        padded = np.concatenate([np.zeros(W - 1), x[:-1]])
        xs = np.lib.stride_tricks.sliding_window_view(padded, W).copy()
        return xs, x[1:].copy()

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        xs, ys = self.windows()
        T = self.trial_steps
        x = np.repeat(xs[:T, None, :], batch, axis=1).astype(np.float32)
        y = np.repeat(ys[:T, None, None], batch, axis=1).astype(np.float32)
        return x, y, np.ones((T, batch), dtype=bool)
