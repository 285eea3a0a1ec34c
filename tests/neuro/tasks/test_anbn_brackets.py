"""The anbn and distant-brackets tasks: layout, the statistics of their random draws, and their floors
against a Monte-Carlo run of the ideal predictor and an empirical count of the current-symbol predictor."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from neuro import tasks
from neuro.tasks.anbn import NEWLINE, A, AnbnTask, B
from neuro.tasks.brackets import BracketsTask

COLUMNS, STEPS = 8, 25_000


def _symbols(task, steps=STEPS, batch=COLUMNS, seed=0) -> np.ndarray:
    """[T + 1, B] symbol indices (the inputs, then the last target)."""
    seq = task.sample(steps=steps, batch=batch, seed=seed)
    xs, ys = seq.xs.numpy(), seq.ys.numpy()
    assert np.all(xs.sum(-1) == 1) and np.all(ys.sum(-1) == 1)        # one-hot
    assert np.array_equal(xs[1:], ys[:-1])                             # the target is the next input
    assert bool(seq.mask.all())
    return np.concatenate([xs.argmax(-1), ys[-1:].argmax(-1)], axis=0)


def _runs(col: np.ndarray) -> list[tuple[int, int]]:
    """(symbol, length) of each run of equal symbols."""
    edges = np.flatnonzero(np.diff(col)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [col.size]])
    return [(int(col[s]), int(e - s)) for s, e in zip(starts, ends)]


def _mean_se(per_column: list[float]) -> tuple[float, float]:
    return float(np.mean(per_column)), float(np.std(per_column, ddof=1) / math.sqrt(len(per_column)))


def _markov_entropy(col: np.ndarray) -> float:
    """Empirical H(next symbol | current symbol), nats per step."""
    pairs = Counter(zip(col[:-1].tolist(), col[1:].tolist()))
    cur = Counter(col[:-1].tolist())
    return -sum(c * math.log(c / cur[a]) for (a, _), c in pairs.items()) / (col.size - 1)


def test_registered():
    assert isinstance(tasks.make("anbn"), AnbnTask) and isinstance(tasks.make("brackets"), BracketsTask)
    assert (tasks.make("anbn").n_in, tasks.make("brackets").n_in) == (3, 13)


@pytest.mark.parametrize("settings", [{}, {"n_min": 3, "n_max": 7}])
def test_anbn_layout_and_draws(settings):
    task = AnbnTask(**settings)
    sym = _symbols(task)
    ns = []
    for c in range(COLUMNS):
        runs = _runs(sym[:, c])[:-4]                                   # the last block may be cut
        assert runs[0][0] == A                                         # the stream starts with a block
        for i in range(0, len(runs) - 3, 4):
            (a, n), (nl1, one1), (b, m), (nl2, one2) = runs[i:i + 4]
            assert (a, nl1, b, nl2, one1, one2) == (A, NEWLINE, B, NEWLINE, 1, 1) and n == m
            ns.append(n)
    lo, hi = task.n_min, task.n_max
    assert min(ns) == lo and max(ns) == hi
    counts = np.bincount(ns, minlength=hi + 1)[lo:]
    expected = len(ns) / (hi - lo + 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < (hi - lo) + 6 * math.sqrt(2 * (hi - lo))            # uniform over {lo .. hi}


def _anbn_ideal_loss(col: np.ndarray, lo: int, hi: int) -> float:
    """Mean -log p of the next symbol under the ideal predictor, walking the stream."""
    total, a_run, in_b, after_b = 0.0, 0, False, True
    for t in range(col.size - 1):
        x, y = col[t], col[t + 1]
        if x == A:
            a_run += 1
            hazard = 1.0 / (hi - a_run + 1) if a_run >= lo else 0.0
            total -= math.log(hazard if y == NEWLINE else 1.0 - hazard)
        elif x == NEWLINE:
            in_b, after_b, a_run = not after_b and not in_b, in_b, 0   # certain: 'b' or 'a' next
        # inside the b run everything is certain
    return total / (col.size - 1)


@pytest.mark.parametrize("settings", [{}, {"n_min": 3, "n_max": 7}])
def test_anbn_floors(settings):
    task = AnbnTask(**settings)
    f = task.floors()
    lo, hi = task.n_min, task.n_max
    # the ideal predictor's loss per block is the entropy of n, over the mean block length
    assert f["floor"] == pytest.approx(math.log(hi - lo + 1) / (lo + hi + 2), rel=1e-12)
    sym = _symbols(task)
    m, se = _mean_se([_anbn_ideal_loss(sym[:, c], lo, hi) for c in range(COLUMNS)])
    assert abs(m - f["floor"]) < 4 * se + 1e-3, (m, se, f["floor"])
    m, se = _mean_se([_markov_entropy(sym[:, c]) for c in range(COLUMNS)])
    assert abs(m - f["markov"]) < 4 * se + 2e-3, (m, se, f["markov"])
    if not settings:
        assert (round(f["floor"], 4), round(f["markov"], 4)) == (0.099, 0.2552)


BRACKETS = [{}, {"save": 2, "gap_min": 0, "gap_max": 4, "alphabet": 4}]


def _lines(col: np.ndarray, task: BracketsTask) -> list[list[int]]:
    nl = task.symbols["\n"]
    cuts = np.flatnonzero(col == nl)
    return [col[s + 1:e + 1].tolist() for s, e in zip(np.concatenate([[-1], cuts[:-1]]), cuts)]


@pytest.mark.parametrize("settings", BRACKETS)
def test_brackets_layout_and_draws(settings):
    task = BracketsTask(**settings)
    S, lb, rb, nl = task.save, task.symbols["["], task.symbols["]"], task.symbols["\n"]
    sym = _symbols(task)
    gaps, letters = [], Counter()
    for c in range(COLUMNS):
        for line in _lines(sym[:, c], task):
            r = len(line) - 2 * S - 5
            assert line[0] == lb and line[S + 1] == rb and line[S + 2 + r] == lb and line[-2:] == [rb, nl]
            stored, filler, recalled = line[1:S + 1], line[S + 2:S + 2 + r], line[S + 3 + r:-2]
            assert stored == recalled
            assert all(0 <= s < task.alphabet for s in stored + filler)
            gaps.append(r)
            letters.update(stored + filler)
    assert min(gaps) == task.gap_min and max(gaps) == task.gap_max
    assert abs(np.mean(gaps) - (task.gap_min + task.gap_max) / 2) < 4 * (np.std(gaps) + 1e-9) / math.sqrt(len(gaps))
    assert sorted(letters) == list(range(task.alphabet))
    counts = np.array([letters[i] for i in range(task.alphabet)], dtype=float)
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < task.alphabet + 6 * math.sqrt(2 * task.alphabet)


def _brackets_ideal_loss(col: np.ndarray, task: BracketsTask) -> float:
    """Mean -log p of the next symbol under the ideal predictor, walking the stream line by line."""
    S, lo, hi, A_ = task.save, task.gap_min, task.gap_max, task.alphabet
    total = 0.0
    lines = _lines(col, task)
    for line in lines:
        r = len(line) - 2 * S - 5
        total += S * math.log(A_)                                      # the stored letters
        for j in range(r + 1):                                         # filler: j letters so far
            hazard = 1.0 / (hi - j + 1) if j >= lo else 0.0
            total -= math.log(hazard if j == r else (1 - hazard) / A_)
    return total / sum(len(line) for line in lines)


@pytest.mark.parametrize("settings", BRACKETS)
def test_brackets_floors(settings):
    task = BracketsTask(**settings)
    f = task.floors()
    sym = _symbols(task)
    m, se = _mean_se([_brackets_ideal_loss(sym[:, c], task) for c in range(COLUMNS)])
    assert abs(m - f["floor"]) < 4 * se + 1e-3, (m, se, f["floor"])
    m, se = _mean_se([_markov_entropy(sym[:, c]) for c in range(COLUMNS)])
    assert abs(m - f["markov"]) < 4 * se + 5e-3, (m, se, f["markov"])
    if not settings:
        assert (round(f["floor"], 4), round(f["markov"], 4)) == (round(0.5 * math.log(10), 4), 2.0162)


@pytest.mark.parametrize(("cls", "settings", "message"), [
    (AnbnTask, {"n_min": 0}, r"^n_min=0 is invalid: must be an integer >= 1$"),
    (AnbnTask, {"n_max": 2.5}, r"^n_max=2.5 is invalid: must be an integer >= 1$"),
    (AnbnTask, {"n_min": 5, "n_max": 4}, r"^n_max=4 is invalid: must be >= n_min=5$"),
    (BracketsTask, {"save": 0}, r"^save=0 is invalid: must be an integer >= 1$"),
    (BracketsTask, {"alphabet": 1}, r"^alphabet=1 is invalid: must be an integer >= 2$"),
    (BracketsTask, {"gap_min": -1}, r"^gap_min=-1 is invalid: must be an integer >= 0$"),
    (BracketsTask, {"gap_min": 3, "gap_max": 2}, r"^gap_max=2 is invalid: must be >= gap_min=3$"),
    (BracketsTask, {"save": True}, r"^save=True is invalid: must be an integer >= 1$"),
])
def test_invalid(cls, settings, message):
    with pytest.raises(ValueError, match=message):
        cls(**settings)
