"""Trace patterning: the animal-learning prediction benchmark of Javed, Shah, Sutton & White (2023),
"Scalable real-time recurrent learning using sparse connections and selective learning", arXiv
2302.05326 (the environment follows their code, khurramjaved96/Columnar-Constructive-Networks,
``src/environments/animal_learning/tracepatterning.cpp`` driven by ``experiment_animal_learning.cpp``,
with ``ISI = (24, 36)``, ``ITI = (80, 120)``, 5 distractors, ``gamma = 0.9``).

Inputs (``n_in = 7 + distractors`` = 12, all 0/1)::

    x[0:6]    conditioned stimulus (CS): one of the 20 patterns with 3 of the 6 lines on, uniformly drawn,
              for one step at the start of each trial
    x[6]      unconditioned stimulus (US): one step, ISI steps after the CS, only if the pattern is valid
    x[7+i]    distractor i = 0..4: on each step (CS step included) with probability 1 / (10 (i + 1))

A trial is the CS step, ISI - 1 empty steps, the US step (empty if invalid) and ITI steps; so the next CS
comes ``ISI + ITI + 1`` steps after this one, with ``ISI ~ U{24..36}`` and ``ITI ~ U{80..120}`` drawn per
trial; a stream starts with a CS step. 10 of the 20 patterns are valid (half the trials in expectation):
with ``pattern_seed`` an integer (the default, 0) they are a fixed subset drawn from it, a setting of the
task shared by every sample seed, so every stream teaches the same rule; with ``pattern_seed=None`` each
stream draws its own subset from the sample seed before its first trial (one per batch column), as the
authors' code draws it from the run's seed (:meth:`TracePatterning.valid_patterns_for` gives it).

The authors' code and this module, point by point:

=========================  ==============================================  ==============================
point                      the authors' code                               here
=========================  ==============================================  ==============================
CS pattern                 3 distinct lines of 6, uniform over the 20      same (uniform over the 20)
valid set                  10 distinct patterns drawn from the run's seed  ``pattern_seed=None``: same;
                           (the stream's generator), so per seed           default: fixed by the integer
P(valid)                   10 / 20                                         10 / 20
ISI, ITI                   ``uniform_int_distribution`` [24, 36],          ``U{24..36}``, ``U{80..120}``,
                           [80, 120], inclusive, drawn at each CS          inclusive, drawn per trial
US                         input 6, on ISI steps after the CS, valid only  same
CS step                    CS lines, US off, distractors drawn             same
distractor k = 1..5        on w.p. ``1/(10k)`` every step, independently   same
trial length               ``ISI + ITI + 1`` steps, CS step to next CS     same
first step                 ``reset()``: a CS step                          a CS step
target                     ``gamma^(until US - 1)`` before the US of a     same (the exact return)
                           valid trial, 0 on and after it, 0 if invalid
gamma                      0.9                                             0.9 (``gamma``)
random numbers             one ``mt19937`` per run                         numpy ``default_rng(seed)``
=========================  ==============================================  ==============================

The default stays ``pattern_seed=0`` because the committed trace-patterning results were run with it;
every other point above agrees, so the streams differ from the authors' only in the random numbers and,
by default, in the valid set being the same for every seed.

Target (``n_out = 1``, mse, every step counts): the discounted return of the US cumulant as the paper's
code scores it (``get_target``): ``G_t = sum_{j >= 1} gamma^{j-1} US_{t+j}`` over the rest of the current
trial, i.e. ``gamma^{(t_US - t) - 1}`` on the steps ``t < t_US`` of a valid trial (1 on the step before the
US) and 0 elsewhere (on the US step, after it, and in invalid trials). It is what TD(lambda) with target
``US_{t+1} + gamma v(x_{t+1})`` learns, less the contribution of later trials (< gamma^{ITI}).

``target="cumulant"``: the target is instead the US cumulant itself (``y_t = x_t[6]``: 1 on US steps,
else 0), for TD learning (``neuro.rules.make("td-lambda", net)``, which reads the cumulant arriving with
step ``t`` from ``y_t``); the loss stays ``"mse"`` (then only a report of ``1/2 (v_t - c_t)^2``). To score
the return error while learning by TD, keep ``target="return"`` and build the rule with
``cumulant_input=6``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block, check_range

__all__ = ["TracePatterning"]

PATTERNS = np.array([[float(i in c) for i in range(6)] for c in itertools.combinations(range(6), 3)],
                    dtype=np.float32)  # the 20 CS patterns [20, 6]
_BLOCK = 2048  # steps per internal block


@dataclasses.dataclass(frozen=True)
class TracePatterning(AbstractTask):
    isi: tuple[int, int] = (24, 36)
    iti: tuple[int, int] = (80, 120)
    distractors: int = 5
    gamma: float = 0.9
    n_valid: int = 10
    pattern_seed: int | None = 0
    target: str = "return"

    name = "trace-patterning"
    loss = "mse"
    episodic = False

    def __post_init__(self) -> None:
        check_range("isi", self.isi, 1)
        check_range("iti", self.iti, 0)
        check_positive("distractors", self.distractors, allow_zero=True, integer=True)
        check_positive("gamma", self.gamma)
        if self.gamma > 1:
            raise ValueError(f"gamma={self.gamma!r} is invalid: must be in (0, 1]")
        check_positive("n_valid", self.n_valid, allow_zero=True, integer=True)
        if self.n_valid > len(PATTERNS):
            raise ValueError(f"n_valid={self.n_valid!r} is invalid: must be <= {len(PATTERNS)}")
        if self.pattern_seed is not None and (isinstance(self.pattern_seed, bool)
                                              or not isinstance(self.pattern_seed, (int, np.integer))
                                              or self.pattern_seed < 0):
            raise ValueError(f"pattern_seed={self.pattern_seed!r} is invalid: must be an integer >= 0, "
                             "or None (drawn from each stream's seed)")
        if self.target not in ("return", "cumulant"):
            raise ValueError(f"target={self.target!r} is invalid: valid choices are 'return', 'cumulant'")

    @property
    def n_in(self) -> int:
        return 7 + self.distractors

    @property
    def n_out(self) -> int:
        return 1

    @property
    def valid_patterns(self) -> np.ndarray:
        """Indices (into ``PATTERNS``) of the valid patterns, sorted [n_valid] (``pattern_seed`` an integer)."""
        if self.pattern_seed is None:
            raise ValueError("pattern_seed=None draws the valid patterns per stream: "
                             "use valid_patterns_for(seed, batch)")
        return self._draw_valid(np.random.default_rng(self.pattern_seed))

    def valid_patterns_for(self, seed: int = 0, batch: int = 1) -> np.ndarray:
        """Indices of the valid patterns of each stream of ``sample(..., batch, seed)``, sorted [batch, n_valid]."""
        if self.pattern_seed is not None:
            return np.tile(self.valid_patterns, (batch, 1))
        rng = np.random.default_rng(seed)
        return np.stack([self._draw_valid(rng) for _ in range(batch)])

    def _draw_valid(self, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(len(PATTERNS), size=self.n_valid, replace=False))

    def _trials(self, rng: np.random.Generator, valid: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One stream's trials: inputs x[0:7] [L, 7] and target [L]."""
        discount = self.gamma ** np.arange(self.isi[1] - 1, -1, -1, dtype=np.float64)
        while True:
            p = rng.integers(len(PATTERNS))
            isi = int(rng.integers(self.isi[0], self.isi[1] + 1))
            iti = int(rng.integers(self.iti[0], self.iti[1] + 1))
            x = np.zeros((isi + iti + 1, 7), dtype=np.float32)
            y = np.zeros(isi + iti + 1)
            x[0, :6] = PATTERNS[p]
            if valid[p]:
                x[isi, 6] = 1.0
                y[:isi] = discount[-isi:]                                   # gamma^(isi-1), ..., gamma^0
            if self.target == "cumulant":
                y = x[:, 6].astype(np.float64)
            yield x, y

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        valid = np.zeros((batch, len(PATTERNS)), dtype=bool)
        for b in range(batch):  # drawn from the stream's generator first, before any trial
            valid[b, self.valid_patterns if self.pattern_seed is not None else self._draw_valid(rng)] = True
        trials = [self._trials(rng, valid[b]) for b in range(batch)]
        pending: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(batch)]
        have = [0] * batch
        p_distract = 1.0 / (10.0 * np.arange(1, self.distractors + 1))
        while True:
            xs = np.empty((_BLOCK, batch, self.n_in), dtype=np.float32)
            ys = np.empty((_BLOCK, batch, 1), dtype=np.float32)
            for b in range(batch):
                while have[b] < _BLOCK:
                    trial = next(trials[b])
                    pending[b].append(trial)
                    have[b] += trial[0].shape[0]
                x = np.concatenate([t[0] for t in pending[b]])
                y = np.concatenate([t[1] for t in pending[b]])
                xs[:, b, :7], ys[:, b, 0] = x[:_BLOCK], y[:_BLOCK]
                pending[b], have[b] = [(x[_BLOCK:], y[_BLOCK:])], have[b] - _BLOCK
            xs[:, :, 7:] = rng.random((_BLOCK, batch, self.distractors)) < p_distract
            yield xs, ys, np.ones((_BLOCK, batch), dtype=bool)
