"""Mackey-Glass in the perturbation paper's setting (jesusgf96/NP_RNNs ``mackey_glass_sequence`` and
``generate_mackey_glass_data``): the Euler generator against a transcription of the authors' loop, negative
horizons, one fixed centred series per stream."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from neuro import tasks
from neuro.tasks.mackey_glass import euler

D = 170  # tau * substeps


def _authors(u: np.ndarray, sample_len: int) -> np.ndarray:
    """Their ``mackey_glass_sequence`` for one sample, fed the uniform draws ``u`` [170] of its history
    (before the tanh squashing, which they apply next)."""
    history_len, delta_t, timeseries = 170, 10, 1.2
    history = collections.deque(1.2 * np.ones(history_len) + 0.2 * (u - 0.5))
    inp = np.zeros((sample_len, 1))
    for timestep in range(sample_len):
        for _ in range(delta_t):
            xtau = history.popleft()
            history.append(timeseries)
            timeseries = history[-1] + (0.2 * xtau / (1.0 + xtau ** 10) - 0.1 * history[-1]) / delta_t
        inp[timestep] = timeseries
    return inp[:, 0]


def _generate(task, batch: int, seed: int) -> np.ndarray:
    """The authors' ``generate_mackey_glass_data`` for one stream per row, from the rows' history draws:
    squashed, washout cut, each row minus its own mean (theirs: one mean over all rows)."""
    u = np.random.default_rng(seed).random((batch, D))
    n = task.washout + task.length + abs(task.horizon)
    X = np.tanh(np.stack([_authors(u[b], n) for b in range(batch)], axis=1) - 1)[task.washout:]
    return X - X.mean(axis=0) if task.center else X


def test_euler_is_the_authors_loop():
    u = np.random.default_rng(0).random((2, D))
    blocks = euler(1.2 + 0.2 * (u - 0.5), block=100)
    ours = np.concatenate([next(blocks) for _ in range(30)])                   # 3000 steps, a chaotic range
    ref = np.stack([_authors(u[b], 3000) for b in range(2)], axis=1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_the_authors_setting_end_to_end():
    task = tasks.make("mackey-glass", integrator="euler", length=1000, horizon=-15, washout=100, center=True)
    assert task.episodic and task.trial_steps == 1000 and task.loss == "mse"
    X = _generate(task, batch=2, seed=3)                                       # 1015 values per row
    seq = task.sample(1000, batch=2, seed=3)
    np.testing.assert_array_equal(seq.xs[:, :, 0].numpy(), X[15:].astype(np.float32))   # their X = X[15:]
    np.testing.assert_array_equal(seq.ys[:, :, 0].numpy(), X[:-15].astype(np.float32))  # their Y = X[:-15]
    assert seq.mask.all()


@pytest.mark.parametrize("horizon", [-15, 15, 0])
def test_horizon_pairs_inputs_and_targets(horizon):
    for length in (None, 400):
        x = tasks.make("mackey-glass", integrator="euler", horizon=horizon, length=length, washout=100)
        s = x.sample(400, batch=2, seed=1)
        k = abs(horizon)
        later, earlier = (s.ys, s.xs) if horizon >= 0 else (s.xs, s.ys)
        assert torch.equal(later[:400 - k], earlier[k:])                       # later[t] = series(t + |h|)
        assert not torch.equal(s.xs, s.ys) or horizon == 0
    # the same series whatever the horizon: the first input of +15 is the first target of -15
    ahead, behind = (tasks.make("mackey-glass", integrator="euler", horizon=h).sample(50, seed=2) for h in (15, -15))
    assert torch.equal(ahead.xs, behind.ys) and torch.equal(ahead.ys, behind.xs)


def test_a_fixed_centred_series_every_trial():
    task = tasks.make("mackey-glass", integrator="euler", length=300, horizon=-15, washout=100, center=True)
    stream = task.stream(seed=0, batch=3)
    trials = [next(stream) for _ in range(3)]
    assert all(torch.equal(t.xs, trials[0].xs) and torch.equal(t.ys, trials[0].ys) for t in trials)
    series = torch.cat([trials[0].ys, trials[0].xs[-15:]])[:, :, 0].double()    # the 315 values of each row
    assert series.mean(0).abs().max() < 1e-6 and series.std(0).min() > 0.05
    uncentred = tasks.make("mackey-glass", integrator="euler", length=300, horizon=-15, washout=100)
    raw = uncentred.sample(300, batch=3, seed=0)
    np.testing.assert_allclose(trials[0].xs.numpy(), (raw.xs - torch.cat([raw.ys, raw.xs[-15:]]).mean(0)).numpy(),
                               atol=1e-6)
    other = task.sample(300, batch=3, seed=1)                                   # a test series: another draw
    assert not torch.allclose(other.xs, trials[0].xs, atol=1e-2)


def test_exponential_integrator_episodic():
    task = tasks.make("mackey-glass", length=200)
    s = task.sample(400, batch=2, seed=0)
    assert torch.equal(s.xs[:200], s.xs[200:])
    assert torch.equal(s.xs[:200], tasks.make("mackey-glass").sample(200, batch=2, seed=0).xs)


@pytest.mark.parametrize("settings, message", [
    ({"integrator": "rk4"}, r"^integrator='rk4' is invalid: valid choices are 'exponential', 'euler'$"),
    ({"length": 0}, r"^length=0 is invalid: must be a positive integer or None$"),
    ({"length": 10.0}, r"^length=10.0 is invalid: must be a positive integer or None$"),
    ({"horizon": 1.5}, r"^horizon=1.5 is invalid: expected an integer$"),
    ({"center": True}, r"^center=True is invalid with length=None"),
])
def test_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        tasks.make("mackey-glass", **settings)
