"""What a training run gives back: its :class:`History`, or :class:`TrainingDiverged` when its loss or
parameters stop being finite (both re-exported by :mod:`neuro.training` and :mod:`neuro.train_loop`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from neuro.contract import Params, check_positive
from neuro.rules.base import AbstractRule

__all__ = ["History", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss (or the parameters) became NaN or infinite; ``checkpoint`` is the last good one (or None)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None = None,
                 checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step


@dataclasses.dataclass
class History:
    """What :func:`neuro.train` returns.

    ``metrics``: one row per ``log_every`` steps (and one at the end): ``step`` (steps done),
    ``loss`` (mean per-step loss over the interval; masked steps count as 0, as in
    :mod:`neuro.losses`), ``loss_counted`` (the interval's loss per step that counts: summed loss over
    the summed fraction of the batch whose mask is on; ``None`` if none did), ``updates`` (optimizer
    steps so far), ``sequences`` (trials or chunks finished), ``steps_per_s`` (over the interval) and
    ``elapsed_s`` (training time so far, excluding time between an interruption and its resume).
    ``engine``: the one that ran the steps (``"compiled"`` or ``"torch"``, :mod:`neuro.engine`).
    """

    params: Params
    metrics: list[dict[str, Any]]
    run_dir: Path | None
    rule: AbstractRule
    steps: int = 0
    updates: int = 0
    elapsed_s: float = 0.0
    engine: str = "torch"

    def mean_loss(self, last: int) -> float:
        """Mean per-step loss over (at least) the last ``last`` steps, from whole metric rows."""
        check_positive("last", last, integer=True)
        total, n = 0.0, 0
        for i in range(len(self.metrics) - 1, -1, -1):
            row = self.metrics[i]
            start = self.metrics[i - 1]["step"] if i > 0 else 0
            total += row["loss"] * (row["step"] - start)
            n += row["step"] - start
            if n >= last:
                break
        return total / n if n else math.nan
