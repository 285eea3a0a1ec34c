"""The distant-brackets task of Ollivier, Tallec & Charpiat (2015, NoBackTrack, arXiv:1507.07680) and Tallec &
Ollivier (2017, UORO, arXiv:1702.05043), as the authors' generator writes it (code ctallec/uoro
``datasets/distant-brackets/generate.lua``, defaults ``save = 1``, ``min = max = 5``, ``alphabet = 10``).

Character-level next-symbol prediction on one endless stream of lines, each::

    [ s_1 .. s_S ] r_1 .. r_R [ s_1 .. s_S ] \\n

``S = save`` letters ``s_i`` and ``R`` filler letters ``r_j``, every letter uniform over an alphabet of
``alphabet`` letters (which excludes the brackets), ``R`` uniform over ``{gap_min, ..., gap_max}``: the
letters inside the second pair of brackets repeat those of the first, ``R + 2`` to ``R + S + 2`` steps
earlier. Symbols: the letters (channels ``0 .. alphabet - 1``), ``[``, ``]`` and the newline, one-hot;
``xs[t]`` is the symbol at ``t``, ``ys[t]`` the symbol at ``t + 1``; cross-entropy (nats), every step counts.
The stream starts at the beginning of a line.

Floors (:meth:`BracketsTask.floors`), exact, per step (expected loss per line over expected line length
``2 S + R + 5``): ``"floor"``, the ideal predictor's (uncertain only about the new letters, ``log alphabet``
each, and about where the filler ends, ``H(R)``); ``"markov"``, the best predictor given the current symbol
only (the letters are exchangeable, so it predicts a class, then a uniform letter). With the defaults:
1.1513 and 1.4088 nats.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Iterator

import numpy as np

from .base import AbstractTask, Block

__all__ = ["BracketsTask"]

_BLOCK = 1024  # steps per internal block


@dataclasses.dataclass(frozen=True)
class BracketsTask(AbstractTask):
    save: int = 1
    gap_min: int = 5
    gap_max: int = 5
    alphabet: int = 10

    name = "brackets"
    loss = "ce"
    episodic = False

    def __post_init__(self) -> None:
        for name, lowest in (("save", 1), ("gap_min", 0), ("gap_max", 0), ("alphabet", 2)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lowest:
                raise ValueError(f"{name}={v!r} is invalid: must be an integer >= {lowest}")
        if self.gap_max < self.gap_min:
            raise ValueError(f"gap_max={self.gap_max!r} is invalid: must be >= gap_min={self.gap_min!r}")

    @property
    def n_in(self) -> int:
        return self.alphabet + 3

    @property
    def n_out(self) -> int:
        return self.alphabet + 3

    @property
    def symbols(self) -> dict[str, int]:
        """The channels of the three delimiters (the letters are ``0 .. alphabet - 1``)."""
        return {"[": self.alphabet, "]": self.alphabet + 1, "\n": self.alphabet + 2}

    def floors(self) -> dict[str, float]:
        """Expected cross-entropy per step (nats) of the ideal predictor (``"floor"``) and of the best
        predictor that sees only the current symbol (``"markov"``)."""
        S, lo, hi, log_a = self.save, self.gap_min, self.gap_max, math.log(self.alphabet)
        gaps = range(lo, hi + 1)
        p_gap = 1.0 / len(gaps)
        mean_r = (lo + hi) / 2
        length = 2 * S + mean_r + 5
        h_r = math.log(len(gaps))
        ideal = (S + mean_r) * log_a + h_r
        # expected count per line of each (current class, next class) transition; "x" is a letter
        count: dict[tuple[str, str], float] = defaultdict(float)
        for r in gaps:
            line = ["["] + ["x"] * S + ["]"] + ["x"] * r + ["["] + ["x"] * S + ["]", "\n"]
            for cur, nxt in zip(line, line[1:] + ["["]):
                count[cur, nxt] += p_gap
        total: dict[str, float] = defaultdict(float)
        for (cur, _), c in count.items():
            total[cur] += c
        markov = sum(c * (-math.log(c / total[cur]) + (log_a if nxt == "x" else 0.0))
                     for (cur, nxt), c in count.items())
        return {"floor": ideal / length, "markov": markov / length}

    def _line(self, rng: np.random.Generator) -> list[int]:
        br = self.symbols
        stored = rng.integers(0, self.alphabet, size=self.save).tolist()
        filler = rng.integers(0, self.alphabet, size=int(rng.integers(self.gap_min, self.gap_max + 1))).tolist()
        return [br["["], *stored, br["]"], *filler, br["["], *stored, br["]"], br["\n"]]

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        eye = np.eye(self.n_in, dtype=np.float32)
        carry: list[list[int]] = [[] for _ in range(batch)]
        while True:
            cols = []
            for b in range(batch):
                s = carry[b]
                while len(s) < _BLOCK + 1:
                    s.extend(self._line(rng))
                cols.append(s[:_BLOCK + 1])
                carry[b] = s[_BLOCK:]
            sym = np.array(cols, dtype=np.int64).T                  # [BLOCK + 1, B]
            yield eye[sym[:-1]], eye[sym[1:]], np.ones((_BLOCK, batch), dtype=bool)
