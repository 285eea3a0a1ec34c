"""Influence balancing: the truncation-bias test of Tallec & Ollivier (2018), "Unbiased online recurrent
optimization" (UORO), ICLR, section 5 (also google-research ``persistent_es/influence_balancing.py``).

A linear system with one scalar parameter, on ``n = 23`` units::

    s_{t+1} = A s_t + theta u,     A = 1/2 I + 1/2 (superdiagonal),     u = (+1 x 10, -1 x 13),
    s_0 = 1 (all ones),  theta_0 = 1/2,  loss_t = 1/2 (s_t[0] - 1)^2

The first unit is read. Raising theta moves the units with a positive ``u`` up now, but through ``A`` the
negative ones, further down the chain, pull ``s[0]`` down later: a gradient truncated at K steps sees the
first effect and not the second, and diverges; RTRL and UORO (unbiased) converge.

The system itself is the network ``models.make(task.model, **task.model_options())`` builds (``models.influence.InfluenceBalancing``);
the task only supplies a constant input ``x_t = 1`` (``n_in = 1``, ignored by that network) and the
target ``y_t = 1`` (``n_out = 1``). Loss "mse" is ``1/2 sum (y_hat - y)^2`` = ``1/2 (s[0] - 1)^2``;
every step counts; no randomness (every seed gives the same stream).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block

__all__ = ["InfluenceBalancingTask"]

_BLOCK = 1024


@dataclasses.dataclass(frozen=True)
class InfluenceBalancingTask(AbstractTask):
    n_units: int = 23
    n_positive: int = 10
    theta0: float = 0.5

    name = "influence-balancing"
    loss = "mse"
    episodic = False

    def __post_init__(self) -> None:
        check_positive("n_units", self.n_units, integer=True)
        check_positive("n_positive", self.n_positive, allow_zero=True, integer=True)
        if self.n_positive > self.n_units:
            raise ValueError(f"n_positive={self.n_positive!r} is invalid: must be <= n_units={self.n_units}")
        if isinstance(self.theta0, bool) or not isinstance(self.theta0, (int, float)) or not math.isfinite(self.theta0):
            raise ValueError(f"theta0={self.theta0!r} is invalid: expected a finite number")

    @property
    def n_in(self) -> int:
        return 1

    @property
    def n_out(self) -> int:
        return 1

    #: the registry name of the system this task trains (``models.make(task.model, **task.model_options())``)
    model = "influence-balancing"

    def model_options(self) -> dict[str, Any]:
        """Options for ``models.make(self.model, ...)`` that build the system with this task's settings.

        The task names its model instead of importing it: ``neuro`` never depends on ``models``.
        """
        return dict(n_in=1, n_hidden=self.n_units, n_out=1, n_positive=self.n_positive, theta0=self.theta0)

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        ones = np.ones((_BLOCK, batch, 1), dtype=np.float32)
        mask = np.ones((_BLOCK, batch), dtype=bool)
        while True:
            yield ones, ones, mask
