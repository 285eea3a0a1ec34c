"""NeuroBench's Mackey-Glass protocol: the series against an independent integrator, the task's windows, sMAPE
and the autoregressive evaluation against hand computations."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pytest
import torch

from neuro.contract import AbstractNetwork
from neuro.tasks.neurobench_mg import NeuroBenchMG
from neuro.yardsticks import mackey_glass as mg


def rk4_series(tau: int = 17, h: float = 0.1) -> np.ndarray:
    """The card's series by an independent method of steps: classical RK4 on a grid of step ``h`` (``tau / h``
    an integer, so the breakpoints t = 0, tau, 2 tau, ... of the constant past lie on it), the delayed value at
    the half steps by the cubic Hermite interpolant of the stored solution and its slopes (fourth order, so
    RK4 keeps its order), and the samples at ``t0 + k dt`` (t0 = tau, where jitcdde's
    ``step_on_discontinuities`` stops) by the same interpolant."""
    lyap, x0 = mg.PARAMETERS[tau]
    D = round(tau / h)
    t_end = tau + lyap * mg.LYAPUNOV_TIMES
    K = int(np.ceil(t_end / h)) + 2
    x, d = np.empty(K + D), np.zeros(K + D)      # index D is t = 0; before it the constant past (slope 0)
    x[:D + 1] = x0

    def f(xt: float, xd: float) -> float:
        return mg.BETA * xd / (1.0 + xd ** mg.N) - mg.GAMMA * xt

    for i in range(D, D + K - 1):
        j = i - D                                 # grid index of t - tau
        d0, d1 = d[j], (0.0 if j + 1 == D else d[j + 1])   # the past's slope is 0 up to t = 0 (left limit)
        xm = 0.5 * (x[j] + x[j + 1]) + h * (d0 - d1) / 8.0
        d[i] = k1 = f(x[i], x[j])
        k2 = f(x[i] + 0.5 * h * k1, xm)
        k3 = f(x[i] + 0.5 * h * k2, xm)
        k4 = f(x[i] + h * k3, x[j + 1])
        x[i + 1] = x[i] + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6.0
    d[-1] = f(x[-1], x[-1 - D])
    x, d = x[D:], d[D:]
    ts = np.linspace(tau, t_end, mg.POINTS) / h
    k = np.floor(ts + 1e-9).astype(int)
    s = np.clip(ts - k, 0.0, 1.0)
    return ((2 * s**3 - 3 * s**2 + 1) * x[k] + (s**3 - 2 * s**2 + s) * h * d[k]
            + (-2 * s**3 + 3 * s**2) * x[k + 1] + (s**3 - s**2) * h * d[k + 1])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return rk4_series()


@pytest.fixture
def cache(tmp_path, monkeypatch, reference):
    """A temporary NEURO_CACHE holding the RK4 series as the tau=17 file (no jitcdde run)."""
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path))
    path = mg.cache_path(17)
    path.parent.mkdir(parents=True)
    np.save(path, reference)
    return path


# -- the series -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_jitcdde_series_matches_an_independent_integration(tmp_path, monkeypatch, reference):
    """jitcdde (the card's recipe) against RK4: the two integrators differ by about 1e-10 at first, and the
    chaotic series multiplies any difference by about e per Lyapunov time (75 points), so they agree to 1e-6
    only for the first ~8 Lyapunov times and part ways after ~16; the later points are not comparable."""
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path))
    x = mg.series(17)
    assert mg.cache_path(17).exists() and np.array_equal(mg.series(17, regenerate=False), x)
    assert x.shape == (mg.POINTS,)
    err = np.abs(x - reference)
    assert err[:600].max() < 1e-6
    assert err[:75].max() < 1e-8
    assert 0.4 < x.min() and x.max() < 1.4   # the attractor's range


def test_cache_missing_or_bad_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tau=17"):
        mg.series(17, regenerate=False)
    path = mg.cache_path(17)
    path.parent.mkdir(parents=True)
    np.save(path, np.ones(100))
    with pytest.raises(ValueError, match=r"shape \(100,\)"):
        mg.series(17, regenerate=False)
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="unusable"):
        mg.series(17, regenerate=False)


def test_bad_cache_is_regenerated_and_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path))
    path = mg.cache_path(17)
    path.parent.mkdir(parents=True)
    np.save(path, np.ones(mg.POINTS - 1))
    fresh = np.linspace(0.5, 1.2, mg.POINTS)
    monkeypatch.setattr(mg, "generate", lambda tau: fresh)
    with caplog.at_level("WARNING"):
        assert np.array_equal(mg.series(17), fresh)
    assert "regenerating" in caplog.text
    assert np.array_equal(np.load(path), fresh)
    assert [p.name for p in path.parent.iterdir()] == ["mg_17.npy"]   # no temporary file left


@pytest.mark.parametrize("tau", [16, 31, 17.5, True, "17"])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau="):
        mg.cache_path(tau)


def test_run_starts_truncate_half_lyapunov_times():
    assert [mg.run_start(r) for r in (0, 1, 2, 3, 29)] == [0, 37, 75, 112, 1087]
    for bad in (-1, 30, 1.0):
        with pytest.raises(ValueError, match="offset="):
            mg.run_start(bad)


# -- the task -----------------------------------------------------------------------------------------

def test_task_windows_and_trial_by_hand(cache, reference):
    task = NeuroBenchMG(offset=1, window=3)
    x = reference[37:37 + 1501]
    assert np.array_equal(task.values(), x)
    xs, ys = task.windows()
    assert xs.shape == (1500, 3) and ys.shape == (1500,)
    assert np.array_equal(xs[0], [0.0, 0.0, x[0]]) and np.array_equal(xs[1], [0.0, x[0], x[1]])
    assert np.array_equal(xs[100], x[98:101]) and np.array_equal(xs[1499], x[1497:1500])
    assert np.array_equal(ys, x[1:])
    seq = task.sample(750, batch=2)
    assert (task.n_in, task.n_out, task.trial_steps, task.episodic) == (3, 1, 750, True)
    assert seq.xs.shape == (750, 2, 3) and seq.ys.shape == (750, 2, 1) and bool(seq.mask.all())
    assert torch.equal(seq.xs[:, 1], torch.from_numpy(xs[:750].astype(np.float32)))
    assert torch.equal(seq.ys[:, 0, 0], torch.from_numpy(ys[:750].astype(np.float32)))
    two = task.sample(1500)                       # trials back to back: the same sequence again
    assert torch.equal(two.xs[:750], two.xs[750:])


@pytest.mark.parametrize("settings", [{"tau": 16}, {"offset": 30}, {"offset": -1}, {"window": 0},
                                      {"window": 751}, {"window": 2.0}])
def test_task_bad_settings(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        NeuroBenchMG(**settings)


def test_trains_online_with_a_rule(cache):
    import models
    import neuro

    task = NeuroBenchMG(window=2)
    net = models.make("rate", n_in=2, n_hidden=8, n_out=1)
    h = neuro.train(net, neuro.rules.make("bptt", net), task, steps=1500, lr=1e-2, engine="torch", progress=False,
                    log_every=750)
    first, last = h.metrics[0]["loss"], h.metrics[-1]["loss"]
    assert np.isfinite(last) and last < first
    ev = mg.evaluate(net, h.params, task)
    assert ev["predictions"].shape == (750,) and np.isfinite(ev["smape"])


# -- sMAPE and the autoregressive evaluation ----------------------------------------------------------

def test_smape_by_hand():
    # terms: 0, |2-1|/(2+1) = 1/3, |0-(-1)|/1 = 1, 0/0 -> NaN -> 1 (counts 200), inf -> NaN -> 1
    p = np.array([1.0, 2.0, 0.0, 0.0, np.inf])
    y = np.array([1.0, 1.0, -1.0, 0.0, 1.0])
    assert mg.smape(p, y) == pytest.approx(200 * (0 + 1 / 3 + 1 + 1 + 1) / 5)
    assert mg.smape(np.full(3, np.nan), np.ones(3)) == 200.0
    with pytest.raises(ValueError, match="shape"):
        mg.smape(np.ones(3), np.ones(4))


class AffineState(NamedTuple):
    y: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Affine(AbstractNetwork):
    """``y_t = w . x_t + c``, no memory: a network whose autoregression has a closed form."""

    out_shape: tuple[int, ...] = (1, 1)
    name = "affine-test"
    State = AffineState

    def param_shapes(self):
        return {"w": (self.n_in,), "c": (1,)}

    def init_params(self, seed=0, dtype=torch.float32, device=None):
        return {"w": torch.zeros(self.n_in, dtype=dtype), "c": torch.zeros(1, dtype=dtype)}

    def init_state(self, params, batch=1):
        return AffineState(params["c"].new_zeros(batch, 1))

    def current(self, params, state, x):
        return x @ params["w"][:, None] + params["c"]

    def neuron(self, params, state, i):
        return state, i

    def readout(self, params, state, z):
        return AffineState(z), (z if self.out_shape == (1, 1) else z.new_zeros(self.out_shape))


def test_echo_network_predicts_the_last_true_value_forever(cache, reference):
    task = NeuroBenchMG(offset=2)
    net = Affine(1, 1, 1)
    ev = mg.evaluate(net, {"w": torch.ones(1), "c": torch.zeros(1)}, task)
    x = reference[75:75 + 1501]
    assert np.array_equal(ev["predictions"], np.full(750, x[750]))
    assert np.array_equal(ev["targets"], x[751:1501])
    assert np.array_equal(ev["train_predictions"], x[:750])
    assert ev["smape"] == pytest.approx(200 * np.mean(np.abs(x[750] - x[751:]) / (x[750] + x[751:])), rel=1e-12)


def test_affine_autoregression_in_closed_form(cache, reference):
    """``y = a x_t + c`` fed back: ``p_k = a^k (x_750 - s) + s`` with ``s = c / (1 - a)``, k = 1..750."""
    a, c = 0.9, 0.08
    ev = mg.evaluate(Affine(1, 1, 1), {"w": torch.tensor([a], dtype=torch.float64), "c": torch.tensor([c], dtype=torch.float64)}, NeuroBenchMG())
    s, k = c / (1 - a), np.arange(1, 751)
    np.testing.assert_allclose(ev["predictions"], a ** k * (reference[750] - s) + s, rtol=1e-12)


def test_windowed_autoregression_against_a_hand_loop(cache, reference):
    """A 3-value window: the true values up to x_750, then the window shifted by each prediction."""
    w, c = np.array([0.2, -0.3, 0.95]), 0.1
    ev = mg.evaluate(Affine(3, 1, 1), {"w": torch.tensor(w), "c": torch.tensor([c], dtype=torch.float64)}, NeuroBenchMG(window=3))
    x = reference[:1501]
    hist = list(x[748:751])
    preds = []
    for _ in range(750):
        p = float(np.dot(w, hist[-3:]) + c)
        preds.append(p)
        hist.append(p)
    np.testing.assert_allclose(ev["predictions"], preds, rtol=1e-12)
    np.testing.assert_allclose(ev["train_predictions"][5:], [np.dot(w, x[t - 2:t + 1]) + c for t in range(5, 750)],
                               rtol=1e-12)


def test_wrongly_shaped_prediction_or_network_raises(cache):
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        mg.evaluate(Affine(1, 1, 1, out_shape=(1, 2)), {"w": torch.ones(1), "c": torch.zeros(1)}, NeuroBenchMG())
    with pytest.raises(ValueError, match="window=1 needs n_in=1"):
        mg.evaluate(Affine(2, 1, 1), {"w": torch.ones(2), "c": torch.zeros(1)}, NeuroBenchMG())
