"""The Add task of Marschall, Cho & Savin (2020), "A unified framework of online learning algorithms for
training recurrent neural networks", JMLR 21(135) (code omarschall/vanilla-rtrl ``gen_data/Add_Task.py``).

Inputs are coin flips and the label is a coin whose bias depends on two past inputs::

    x_t ~ Bernoulli(1/2),        y_t ~ Bernoulli(p_t),      p_t = 1/2 + 1/2 x_{t - t1} - 1/4 x_{t - t2}

with ``t1 = 6``, ``t2 = 10``. As in the paper's code both are one-hot with a redundant complement:
``xs = [x, 1 - x]`` (``n_in = 2``), ``ys = [y, 1 - y]`` (``n_out = 2``); ``deterministic=True`` gives the
probability vector ``[p, 1 - p]`` instead of a sampled label. Loss: cross-entropy (nats), every step
counts. The stream is stationary from its first step: the ``max(t1, t2)`` inputs before it are drawn
but not shown (the paper's code wraps around instead).

Cross-entropy floors (``floors()``): a predictor that remembers nothing, 0.662 nats; one that remembers
``x_{t-t1}``, 0.519; one that remembers both, 0.454.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block

__all__ = ["AddTask"]

_BLOCK = 1024  # steps per internal block


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


@dataclasses.dataclass(frozen=True)
class AddTask(AbstractTask):
    t1: int = 6
    t2: int = 10
    deterministic: bool = False

    name = "add"
    loss = "ce"
    episodic = False

    def __post_init__(self) -> None:
        check_positive("t1", self.t1, integer=True)
        check_positive("t2", self.t2, integer=True)
        if self.t1 == self.t2:
            raise ValueError(f"t2={self.t2!r} is invalid: must differ from t1={self.t1!r}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic={self.deterministic!r} is invalid: must be True or False")

    @property
    def n_in(self) -> int:
        return 2

    @property
    def n_out(self) -> int:
        return 2

    @staticmethod
    def probability(x1: np.ndarray | float, x2: np.ndarray | float) -> np.ndarray | float:
        """``p_t = P(y_t = 1)`` given ``x1 = x_{t - t1}`` and ``x2 = x_{t - t2}``."""
        return 0.5 + 0.5 * x1 - 0.25 * x2

    def floors(self) -> dict[str, float]:
        """Expected cross-entropy (nats) of the best predictor that knows nothing (``"none"``),
        ``x_{t-t1}`` (``"t1"``), or ``x_{t-t1}`` and ``x_{t-t2}`` (``"both"``): ``E[H(E[p | known])]``."""
        p = {(a, b): self.probability(a, b) for a, b in itertools.product((0, 1), repeat=2)}  # each w.p. 1/4
        none = _entropy(sum(p.values()) / 4)
        t1 = sum(_entropy((p[a, 0] + p[a, 1]) / 2) for a in (0, 1)) / 2
        both = sum(_entropy(q) for q in p.values()) / 4
        return {"none": none, "t1": t1, "both": both}

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        lag = max(self.t1, self.t2)
        past = (rng.random((lag, batch)) < 0.5).astype(np.float32)        # x_{-lag}, ..., x_{-1}
        while True:
            x = (rng.random((_BLOCK, batch)) < 0.5).astype(np.float32)
            full = np.concatenate([past, x], axis=0)                       # x_{-lag}, ..., x_{BLOCK-1}
            p = self.probability(full[lag - self.t1:lag - self.t1 + _BLOCK],
                                 full[lag - self.t2:lag - self.t2 + _BLOCK])
            u = rng.random((_BLOCK, batch))
            y = p if self.deterministic else (u < p).astype(np.float32)
            past = full[-lag:]
            xs = np.stack([x, 1.0 - x], axis=-1)
            ys = np.stack([y, 1.0 - y], axis=-1).astype(np.float32)
            yield xs, ys, np.ones((_BLOCK, batch), dtype=bool)
