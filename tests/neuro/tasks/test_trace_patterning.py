"""Trace patterning against the authors' protocol: statistics of the stream, the exact return, and the
valid patterns drawn per stream (``pattern_seed=None``) or fixed by an integer ``pattern_seed``."""

import numpy as np
import pytest

from neuro import tasks
from neuro.tasks.trace_patterning import PATTERNS

STEPS, BATCH, SEED = 100_000, 2, 7


@pytest.fixture(scope="module", params=[0, None], ids=["fixed", "per-seed"])
def run(request):
    task = tasks.make("trace-patterning", pattern_seed=request.param)
    seq = task.sample(STEPS, batch=BATCH, seed=SEED)
    return task, seq.xs.numpy().astype(np.float64), seq.ys.numpy()[..., 0].astype(np.float64)


def _trials(task, xs):
    """Per column: (CS steps, their patterns' indices, valid flags, US steps) from the stream alone."""
    valid_sets = task.valid_patterns_for(SEED, BATCH)
    index = {tuple(p): i for i, p in enumerate(PATTERNS.astype(np.float64))}
    for b in range(BATCH):
        x = xs[:, b]
        cs = np.flatnonzero(x[:, :6].any(1))
        pattern = np.array([index[tuple(x[t, :6])] for t in cs])  # KeyError unless exactly 3 of 6 on
        yield cs, pattern, np.isin(pattern, valid_sets[b]), np.flatnonzero(x[:, 6])


def test_cs_us_isi_iti(run):
    task, xs, _ = run
    isis, itis, n_trials, n_valid = [], [], 0, 0
    for cs, pattern, valid, us in _trials(task, xs):
        assert cs[0] == 0  # a stream starts with a CS step
        for start, stop, ok in zip(cs[:-1], cs[1:], valid[:-1]):
            inside = us[(us > start) & (us < stop)]
            assert len(inside) == int(ok)  # a US if and only if the pattern is valid, one step
            assert 24 + 80 + 1 <= stop - start <= 36 + 120 + 1
            if ok:
                isis.append(inside[0] - start)
                itis.append(stop - inside[0] - 1)
        assert not np.isin(us, cs).any()  # the US is never on a CS step
        n_trials, n_valid = n_trials + len(cs) - 1, n_valid + valid[:-1].sum()
    assert min(isis) == 24 and max(isis) == 36 and min(itis) == 80 and max(itis) == 120
    assert set(isis) == set(range(24, 37)) and set(itis) == set(range(80, 121))
    assert abs(n_valid / n_trials - 0.5) < 5 * np.sqrt(0.25 / n_trials)


def test_exactly_three_cs_lines_on_cs_steps_only(run):
    task, xs, _ = run
    on = xs[:, :, :6].sum(-1)
    assert set(np.unique(on)) == {0.0, 3.0}
    for cs, pattern, _, _ in _trials(task, xs):
        counts = np.bincount(pattern, minlength=20)  # all 20 patterns, uniformly
        assert counts.min() > 0
        assert abs(counts / len(pattern) - 0.05).max() < 5 * np.sqrt(0.05 * 0.95 / len(pattern))


def test_distractor_rates_are_binomial(run):
    _, xs, _ = run
    n = xs.shape[0] * xs.shape[1]
    p = 1 / (10 * np.arange(1, 6))
    rates = xs[:, :, 7:].mean((0, 1))
    assert (np.abs(rates - p) < 5 * np.sqrt(p * (1 - p) / n)).all(), rates
    cs = xs[:, :, :6].any(-1)  # on CS steps too
    assert xs[cs][:, 7].mean() == pytest.approx(0.1, abs=5 * np.sqrt(0.09 / cs.sum()))


def test_target_is_the_exact_return(run):
    task, xs, ys = run
    for b, (cs, _, valid, us) in enumerate(_trials(task, xs)):
        want = np.zeros(STEPS)
        for start, stop in zip(cs, np.append(cs[1:], STEPS)):
            hit = us[(us > start) & (us < stop)]
            if len(hit):
                t = np.arange(start, hit[0])
                want[t] = task.gamma ** (hit[0] - t - 1)  # gamma^(steps to US - 1)
        # the last trial may be cut before its US: compare up to the last CS
        np.testing.assert_allclose(ys[: cs[-1], b], want[: cs[-1]], rtol=1e-6, atol=0)


def test_valid_sets_per_seed():
    task = tasks.make("trace-patterning", pattern_seed=None)
    a, b = task.valid_patterns_for(0, 2), task.valid_patterns_for(1, 2)
    assert a.shape == (2, 10) and not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # each stream of a batch its own set
    np.testing.assert_array_equal(a, task.valid_patterns_for(0, 2))
    seeds = {tuple(task.valid_patterns_for(s)[0]) for s in range(20)}
    assert len(seeds) > 15
    with pytest.raises(ValueError, match="pattern_seed=None draws the valid patterns per stream"):
        task.valid_patterns  # noqa: B018
    # the sets the stream uses are those: a US follows exactly the listed patterns
    x = task.sample(30_000, batch=2, seed=3).xs.numpy()
    for col, listed in zip(range(2), task.valid_patterns_for(3, 2)):
        cs = np.flatnonzero(x[:, col, :6].any(1))
        index = {tuple(p): i for i, p in enumerate(PATTERNS)}
        followed = {index[tuple(x[t, col, :6])] for t in cs[:-1] if x[t + 1: t + 37, col, 6].any()}
        assert followed == set(listed.tolist())
    fixed = tasks.make("trace-patterning")
    np.testing.assert_array_equal(fixed.valid_patterns_for(5, 3), np.tile(fixed.valid_patterns, (3, 1)))


@pytest.mark.parametrize("bad", [-1, 1.5, "seed", True])
def test_pattern_seed_is_checked(bad):
    with pytest.raises(ValueError, match=r"pattern_seed=.* is invalid: must be an integer >= 0, or None"):
        tasks.make("trace-patterning", pattern_seed=bad)
