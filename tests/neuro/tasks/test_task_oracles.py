"""Each task against what its paper defines: exact layouts and formulas, statistics of long samples,
the Add task's cross-entropy floors, and Mackey-Glass against an independent RK4 integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import models
import neuro
from neuro import tasks
from neuro.tasks.mackey_glass import integrate
from neuro.tasks.trace_patterning import PATTERNS


# -- copy ----------------------------------------------------------------------------------------------
def test_copy_layout_and_recall_targets():
    task = tasks.make("copy")  # length 100, symbols 10, delay 10
    assert (task.n_in, task.n_out, task.trial_steps) == (12, 10, 210)
    seq = task.sample(2 * 210, batch=64, seed=0)
    xs, ys, mask = seq.xs.numpy(), seq.ys.numpy(), seq.mask.numpy()
    assert (xs.sum(-1) == 1).all()  # every input step is one-hot
    for start in (0, 210):
        x, y, m = xs[start:start + 210], ys[start:start + 210], mask[start:start + 210]
        assert (x[:100, :, 10:] == 0).all()          # symbols
        assert (x[100:110, :, 10] == 1).all()        # blank during the delay
        assert (x[110:, :, 11] == 1).all()           # go marker during recall
        assert (m[:110] == 0).all() and (m[110:] == 1).all()
        np.testing.assert_array_equal(y[110:], x[:100, :, :10])  # recall the symbols in order
    counts = xs[:100, :, :10].sum((0, 1))
    assert np.allclose(counts / counts.sum(), 0.1, atol=0.01)  # symbols uniform (6400 draws)


def test_copy_delay_zero_and_symbols_setting():
    task = tasks.make("copy", length=5, symbols=3, delay=0)
    seq = task.sample(10, batch=2, seed=1)
    assert task.trial_steps == 10 and seq.xs.shape[-1] == 5
    assert torch.equal(seq.ys[5:], seq.xs[:5, :, :3])


# -- add -----------------------------------------------------------------------------------------------
def _ce(y: np.ndarray, q: np.ndarray) -> float:
    """Mean cross-entropy (nats) of predicting P(y = 1) = q, with 0 log 0 = 0."""
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(np.mean(-np.where(y == 1, np.log(q), np.log(1 - q))))


def test_add_floors_are_the_papers_numbers():
    f = tasks.make("add").floors()
    assert f["none"] == pytest.approx(0.662, abs=5e-4)
    assert f["t1"] == pytest.approx(0.519, abs=5e-4)
    assert f["both"] == pytest.approx(0.454, abs=5e-4)


def test_add_samples_reach_the_floors_with_the_optimal_predictors():
    task = tasks.make("add")
    seq = task.sample(100_000, batch=2, seed=0)
    x, y = seq.xs[..., 0].numpy(), seq.ys[..., 0].numpy()
    assert np.array_equal(seq.xs[..., 1].numpy(), 1 - x) and np.array_equal(seq.ys[..., 1].numpy(), 1 - y)
    x1, x2, y = x[4:-6], x[:-10], y[10:]  # x_{t-6}, x_{t-10}, y_t
    p = 0.5 + 0.5 * x1 - 0.25 * x2
    for a in (0, 1):  # P(y = 1 | x_{t-t1}, x_{t-t2}) is the formula
        for b in (0, 1):
            cell = (x1 == a) & (x2 == b)
            assert y[cell].mean() == pytest.approx(0.5 + 0.5 * a - 0.25 * b, abs=0.01)
    f = task.floors()
    assert _ce(y, np.full_like(y, 0.625)) == pytest.approx(f["none"], abs=0.004)
    assert _ce(y, np.where(x1 == 1, 0.875, 0.375)) == pytest.approx(f["t1"], abs=0.004)
    assert _ce(y, p) == pytest.approx(f["both"], abs=0.004)
    assert x.mean() == pytest.approx(0.5, abs=0.005)
    # and the same numbers through the library's own loss, with logits of the optimal predictor
    logits = torch.from_numpy(np.stack([p, 1 - p], -1)).double().clamp_min(1e-30).log().reshape(-1, 2)
    ce = neuro.losses.get("ce")(logits, seq.ys[10:].double().reshape(-1, 2), seq.mask[10:].reshape(-1))
    assert float(ce) == pytest.approx(f["both"], abs=0.004)


def test_add_deterministic_labels_are_the_probabilities():
    seq = tasks.make("add", t1=2, t2=3, deterministic=True).sample(500, seed=1)
    x, y = seq.xs[:, 0, 0].numpy(), seq.ys[:, 0, 0].numpy()
    np.testing.assert_allclose(y[3:], 0.5 + 0.5 * x[1:-2] - 0.25 * x[:-3])


# -- sine ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cue", ["pulse", "constant"])
def test_sine_target_and_cue(cue):
    task = tasks.make("sine", period=100, cue=cue)
    seq = task.sample(1234, seed=0)
    t = np.arange(1234)
    phi = 2 * np.pi * t / 100
    np.testing.assert_allclose(seq.ys[:, 0, 0].numpy(), np.sin(phi) + 0.5 * np.sin(2 * phi) + 0.25 * np.sin(4 * phi),
                               atol=1e-6)
    x = seq.xs[:, 0, 0].numpy()
    np.testing.assert_array_equal(x, (t % 100 == 0) if cue == "pulse" else np.ones_like(x))
    assert abs(seq.ys[:100].mean()) < 1e-6


# -- Mackey-Glass --------------------------------------------------------------------------------------
def _rk4_hermite(x0: float, T: int, h: float, beta=0.2, gamma=0.1, n=10.0, tau=17.0) -> np.ndarray:
    """An independent integrator: classical RK4 with the delayed values from cubic Hermite interpolation
    of the stored solution and its derivative; the values at t = 0, 1, ..., T."""
    D, N, F = round(tau / h), round(T / h), lambda u: beta * u / (1 + u ** n)
    x, d = np.empty(N + 1), np.empty(N + 1)

    def delayed(k: int, s: float) -> float:  # x((k + s) h - tau)
        j = k - D
        if j + 1 <= 0:
            return x0
        y0, d0 = (x0, 0.0) if j < 0 else (x[j], d[j])
        return ((2 * s**3 - 3 * s**2 + 1) * y0 + (s**3 - 2 * s**2 + s) * h * d0
                + (-2 * s**3 + 3 * s**2) * x[j + 1] + (s**3 - s**2) * h * d[j + 1])

    x[0], d[0] = x0, F(x0) - gamma * x0
    for k in range(N):
        a, m, b, xk = delayed(k, 0.0), delayed(k, 0.5), delayed(k, 1.0), x[k]
        k1 = F(a) - gamma * xk
        k2 = F(m) - gamma * (xk + h / 2 * k1)
        k3 = F(m) - gamma * (xk + h / 2 * k2)
        k4 = F(b) - gamma * (xk + h * k3)
        x[k + 1] = xk + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        d[k + 1] = F(delayed(k + 1, 0.0)) - gamma * x[k + 1]
    return x[:: round(1 / h)]


def _ours(x0: float, T: int, substeps: int) -> np.ndarray:
    blocks, out = integrate(np.array([x0]), substeps=substeps), []
    while sum(map(len, out)) < T:
        out.append(next(blocks))
    return np.concatenate(out)[:T, 0]


def test_mackey_glass_matches_rk4_and_converges_at_fourth_order():
    ref = _rk4_hermite(1.1, 300, h=0.02)[1:]
    errors = [np.abs(_ours(1.1, 300, s) - ref).max() for s in (5, 10)]
    assert errors[1] < 1e-6
    assert errors[0] / errors[1] > 10  # 4th order: 16 in the limit


def test_mackey_glass_series_statistics_and_targets():
    task = tasks.make("mackey-glass", normalise=False)
    seq = task.sample(3000, batch=2, seed=0)
    x, y = seq.xs[:, :, 0].numpy(), seq.ys[:, :, 0].numpy()
    np.testing.assert_array_equal(y[:-15], x[15:])  # the target is the input 15 steps later
    assert 0.2 < x.min() and x.max() < 1.45 and 0.8 < x.mean() < 1.0  # the tau = 17 attractor
    assert np.abs(np.diff(x, axis=0)).max() < 0.2  # smooth at dt = 1
    norm = tasks.make("mackey-glass").sample(3000, batch=2, seed=0)
    np.testing.assert_allclose(norm.xs.numpy(), np.tanh(seq.xs.numpy() - 1), atol=1e-6)


def test_mackey_glass_washout_drops_the_transient():
    short, long = tasks.make("mackey-glass", washout=0), tasks.make("mackey-glass", washout=100)
    np.testing.assert_array_equal(short.sample(400, seed=2).xs[100:], long.sample(300, seed=2).xs)


# -- trace patterning ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace():
    task = tasks.make("trace-patterning")
    return task, task.sample(120_000, batch=2, seed=0)


def _events(x: np.ndarray):
    cs = np.flatnonzero(x[:, :6].sum(1) > 0)
    us = np.flatnonzero(x[:, 6] > 0)
    return cs, us


def test_trace_patterning_trials(trace):
    task, seq = trace
    assert task.n_in == 12
    valid = {tuple(PATTERNS[i]) for i in task.valid_patterns}
    assert len(valid) == 10
    n_valid = n_trials = 0
    isis, itis, gaps = [], [], []
    for b in range(2):
        x = seq.xs[:, b].numpy()
        cs, us = _events(x)
        assert (x[cs, :6].sum(1) == 3).all()  # a 3-of-6 pattern, one step
        n_trials += len(cs) - 1
        for start, stop in zip(cs[:-1], cs[1:]):
            is_valid = tuple(x[start, :6]) in valid
            inside = us[(us > start) & (us < stop)]
            assert len(inside) == int(is_valid)  # a US if and only if the pattern is valid
            n_valid += is_valid
            gaps.append(stop - start)
            if is_valid:
                isis.append(inside[0] - start)
                itis.append(stop - inside[0] - 1)
    assert n_trials > 1500
    assert n_valid / n_trials == pytest.approx(0.5, abs=0.04)
    assert min(isis) == 24 and max(isis) == 36 and min(itis) == 80 and max(itis) == 120
    assert min(gaps) >= 24 + 80 + 1 and max(gaps) <= 36 + 120 + 1
    assert np.mean(isis) == pytest.approx(30, abs=0.5) and np.mean(itis) == pytest.approx(100, abs=1.5)


def test_trace_patterning_distractor_rates(trace):
    _, seq = trace
    rates = seq.xs[:, :, 7:].mean((0, 1)).numpy()
    np.testing.assert_allclose(rates, 1 / (10 * np.arange(1, 6)), rtol=0.05)


def test_trace_patterning_targets_are_the_discounted_return(trace):
    task, seq = trace
    for b in range(2):
        x, y = seq.xs[:, b].numpy(), seq.ys[:, b, 0].numpy().astype(np.float64)
        cs, _ = _events(x)
        G, target = 0.0, np.zeros(cs[-1])
        for t in range(cs[-1] - 1, -1, -1):  # G_t = US_{t+1} + gamma G_{t+1}, back to 0 at each CS
            G = 0.0 if x[t + 1, :6].any() else x[t + 1, 6] + task.gamma * G
            target[t] = G
        np.testing.assert_allclose(y[: cs[-1]], target, rtol=1e-5, atol=1e-7)
        assert y.max() == pytest.approx(1.0)  # the step before a US


def test_trace_patterning_valid_set_is_a_task_setting():
    a, b = tasks.make("trace-patterning"), tasks.make("trace-patterning", pattern_seed=1)
    assert not np.array_equal(a.valid_patterns, b.valid_patterns)
    assert np.array_equal(a.valid_patterns, tasks.make("trace-patterning").valid_patterns)


# -- influence balancing -------------------------------------------------------------------------------
def test_influence_balancing_task_and_its_network():
    task = tasks.make("influence-balancing")
    seq = task.sample(30, batch=2, seed=0)
    assert (seq.xs == 1).all() and (seq.ys == 1).all() and seq.mask.all()
    net = models.make(task.model, **task.model_options())
    assert (net.n_hidden, net.n_positive, net.theta0, net.n_in, net.n_out) == (23, 10, 0.5, 1, 1)
    params = net.init_params(dtype=torch.float64)
    state, loss = net.init_state(params, batch=2), neuro.losses.get(task.loss)
    for t in range(30):
        state, y = net.step(params, state, seq.xs[t].double())
        expected = 0.5 * ((state.s[:, 0] - 1) ** 2).mean()
        assert float(loss(y, seq.ys[t].double(), seq.mask[t])) == pytest.approx(float(expected), rel=1e-12)


# -- cue accumulation ----------------------------------------------------------------------------------
def test_cue_accumulation_layout_rates_and_labels():
    task = tasks.make("cue-accumulation")
    assert (task.n_in, task.n_out, task.trial_steps) == (40, 2, 2250)
    windows = task.cue_windows()
    assert windows[0] == (50, 150) and windows[-1] == (950, 1050)
    stream = task.stream(seed=0, batch=100)
    agree, labels, cue_rate, noise_rate, recall_rate = [], [], [], [], []
    for _ in range(3):
        seq = next(stream)
        x = seq.xs.numpy().reshape(2250, 100, 4, 10)
        left, right, recall, noise = (x[:, :, g] for g in range(4))
        assert (seq.mask[:2100] == 0).all() and (seq.mask[2100:] == 1).all()
        assert recall[:2100].sum() == 0 and left[1050:].sum() == 0 and right[1050:].sum() == 0
        sides = []
        for start, stop in windows:
            l, r = left[start:stop].sum((0, 2)), right[start:stop].sum((0, 2))
            assert ((l == 0) | (r == 0)).all() and (l + r > 0).all()  # one side per cue
            sides.append(r > 0)
            cue_rate.append((l + r) / ((stop - start) * 10))
        outside = np.ones(2250, bool)
        for start, stop in windows:
            outside[start:stop] = False
        assert left[outside].sum() == 0 and right[outside].sum() == 0
        n_right = np.sum(sides, axis=0)
        label = (n_right > 3).astype(int)
        np.testing.assert_array_equal(seq.ys[2100:].numpy(), np.broadcast_to(np.eye(2)[label], (150, 100, 2)))
        agree.append(np.where(label == 1, n_right, 7 - n_right) / 7)
        labels.append(label)
        noise_rate.append(noise.mean())
        recall_rate.append(recall[2100:].mean())
    # cues: 40 Hz; background 10 Hz; each cue on the trial's majority side w.p. 0.7
    assert np.mean(cue_rate) == pytest.approx(0.04, rel=0.05)
    assert np.mean(noise_rate) == pytest.approx(0.01, rel=0.05)
    assert np.mean(recall_rate) == pytest.approx(0.04, rel=0.05)
    k = np.arange(8)
    binom = np.array([math.comb(7, i) for i in k]) * 0.7 ** k * 0.3 ** (7 - k)
    expected = np.sum(binom * np.maximum(k, 7 - k) / 7)  # agreement with the observed majority
    assert np.mean(agree) == pytest.approx(expected, abs=0.02)
    assert np.mean(labels) == pytest.approx(0.5, abs=0.1)
