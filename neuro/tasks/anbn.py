"""The a^n b^n task of Tallec & Ollivier (2017), "Unbiased Online Recurrent Optimization", arXiv:1702.05043
(experiment "anbn(1,32)"; authors' code ctallec/uoro ``datasets/anbn/generate.lua``).

Character-level next-symbol prediction on one endless stream of blocks, each written as the authors'
generator writes it: ``n`` letters ``a``, a newline, ``n`` letters ``b``, a newline, with ``n`` drawn
uniformly from ``{n_min, ..., n_max}`` for every block::

    aaa\\nbbb\\na\\nb\\naaaaa\\nbbbbb\\n ...

Three symbols (``a``, ``b`` and the newline, channels 0, 1, 2), one-hot; ``xs[t]`` is the symbol at ``t``
and ``ys[t]`` the symbol at ``t + 1``; cross-entropy (nats), every step counts. The stream starts at the
beginning of a block.

Floors (:meth:`AnbnTask.floors`), exact, per step (renewal-reward: expected loss per block over expected
block length ``2 E[n] + 2``): ``"floor"``, the ideal predictor's, which is uncertain only about where a run of
``a`` ends (after the ``j``-th ``a`` it ends with probability ``P(n = j | n >= j)``), 0.0990 nats for
``(1, 32)``; ``"markov"``, the best predictor given the current symbol only (what a network without
memory can reach), 0.3195 nats.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from .base import AbstractTask, Block

__all__ = ["AnbnTask", "binary_entropy"]

_BLOCK = 1024  # steps per internal block

A, B, NEWLINE = 0, 1, 2


def binary_entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


@dataclasses.dataclass(frozen=True)
class AnbnTask(AbstractTask):
    n_min: int = 1
    n_max: int = 32

    name = "anbn"
    loss = "ce"
    episodic = False

    def __post_init__(self) -> None:
        for name in ("n_min", "n_max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid: must be an integer >= 1")
        if self.n_max < self.n_min:
            raise ValueError(f"n_max={self.n_max!r} is invalid: must be >= n_min={self.n_min!r}")

    @property
    def n_in(self) -> int:
        return 3

    @property
    def n_out(self) -> int:
        return 3

    def floors(self) -> dict[str, float]:
        """Expected cross-entropy per step (nats) of the ideal predictor (``"floor"``) and of the best
        predictor that sees only the current symbol (``"markov"``)."""
        lo, hi = self.n_min, self.n_max
        count = hi - lo + 1
        mean_n = (lo + hi) / 2
        length = 2 * mean_n + 2                                  # expected steps per block
        # ideal: after the j-th a (j >= n_min), the run ends w.p. P(n = j) / P(n >= j); reached w.p. P(n >= j)
        ideal = sum((hi - j + 1) / count * binary_entropy(1 / (hi - j + 1)) for j in range(lo, hi + 1))
        # current symbol only: an a (b) is followed by a newline once per run of E[n] letters; a newline by a or b
        markov = 2 * mean_n * binary_entropy(1 / mean_n) + 2 * math.log(2)
        return {"floor": ideal / length, "markov": markov / length}

    def _symbols(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """At least ``steps`` symbols: whole blocks."""
        out: list[np.ndarray] = []
        have = 0
        while have < steps:
            ns = rng.integers(self.n_min, self.n_max + 1, size=max(8, steps // (self.n_min + self.n_max + 2)))
            for n in ns:
                out.append(np.repeat(np.array([A, NEWLINE, B, NEWLINE], dtype=np.int64), [n, 1, n, 1]))
            have += int(2 * ns.sum() + 2 * ns.size)
        return np.concatenate(out)

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        eye = np.eye(3, dtype=np.float32)
        carry = [np.zeros(0, dtype=np.int64) for _ in range(batch)]
        while True:
            cols = []
            for b in range(batch):
                s = carry[b]
                if s.size < _BLOCK + 1:
                    s = np.concatenate([s, self._symbols(rng, _BLOCK + 1 - s.size)])
                cols.append(s[:_BLOCK + 1])
                carry[b] = s[_BLOCK:]
            sym = np.stack(cols, axis=1)                       # [BLOCK + 1, B]
            yield eye[sym[:-1]], eye[sym[1:]], np.ones((_BLOCK, batch), dtype=bool)
