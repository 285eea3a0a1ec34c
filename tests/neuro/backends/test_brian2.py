"""The Brian2 backend against the torch reference (float64), hand-computed spike times, the build cache,
Brian2's global device, the perturbation rules' forward function, and bad input."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import models
import neuro

brian2 = pytest.importorskip("brian2")
b2b = pytest.importorskip("neuro.backends.brian2")

F64 = torch.float64
T = 1000


def random_net(name: str, n: int, seed: int, B: int = 1, **kw):
    """A random network and input that fires at 5-50 Hz: 10 channels of 0/1.5 pulses at 100 Hz plus a small
    positive jitter, excitatory input weights, recurrent weights of both signs, a small random bias."""
    scale = {"lif": 1.8, "alif": 6.0}[name]
    net = models.make(name, n_in=10, n_hidden=n, n_out=3, rec_scale=1.0, input_scale=scale, **kw)
    p = net.init_params(seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 1000)
    p["W_in"] = p["W_in"].abs()
    p["b"] = 0.02 * torch.rand(n, generator=g, dtype=F64)
    p["b_out"] = torch.randn(3, generator=g, dtype=F64)
    xs = ((torch.rand(T, B, 10, generator=g, dtype=F64) < 0.1).to(F64) * 1.5
          + 0.2 * torch.rand(T, B, 10, generator=g, dtype=F64))
    return net, p, xs


def assert_same(ref: neuro.Trace, tr: neuro.Trace, rate_range=(5.0, 50.0)) -> None:
    hz = float(ref.spikes.mean()) * 1000.0
    assert rate_range[0] <= hz <= rate_range[1], f"the reference fires at {hz:.1f} Hz"
    assert torch.equal(tr.spikes, ref.spikes), f"{int((tr.spikes != ref.spikes).sum())} spikes differ"
    for name, a, b in (("v", tr.v, ref.v), ("i", tr.extra["i"], ref.extra["i"]), ("y", tr.y, ref.y)):
        assert a.dtype == F64 and a.shape == b.shape
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 1e-9, f"{name}: relative error {err:.2e}"
    if "a" in ref.extra:
        assert float((tr.extra["a"] - ref.extra["a"]).abs().max()) < 1e-9 * float(ref.extra["a"].abs().max())


# -- random networks: identical spike trains, voltages within 1e-9 ------------------------------------------
@pytest.mark.parametrize("name", ["lif", "alif"])
@pytest.mark.parametrize("seed,n", [(0, 50), (1, 120), (2, 200)])
def test_numpy_target_equals_torch(name, seed, n):
    net, p, xs = random_net(name, n, seed)
    assert_same(neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="numpy"))


@pytest.mark.parametrize("name,kw", [
    ("lif", dict(refractory=3, reset="zero", v_reset=-0.2, v_leak=0.05)),  # the hold, reset to v_reset, leak
    ("lif", dict(dynamics="euler")),  # Brian2's Euler method is norse's step
    ("alif", dict(tau_syn=20.0, refractory=2)),  # equal taus: Brian2's exact solver on a repeated eigenvalue
])
def test_numpy_target_equals_torch_for_each_option(name, kw):
    net, p, xs = random_net(name, 60, 3, B=2, **kw)
    ref = neuro.simulate(net, p, xs)
    assert_same(ref, neuro.simulate(net, p, xs, backend="brian2", target="numpy"), rate_range=(2.0, 60.0))
    if net.refractory:  # the hold really happened: no two spikes of one neuron closer than refractory + 1 steps
        s = ref.spikes[:, 0].T
        gaps = [torch.diff(torch.nonzero(row)[:, 0]) for row in s if row.sum() > 1]
        assert min(int(gp.min()) for gp in gaps) >= net.refractory + 1


@pytest.mark.parametrize("name,kw", [("lif", {}), ("alif", dict(tau_syn=20.0, refractory=2))])
@pytest.mark.slow
def test_cython_target_equals_torch(name, kw):
    for seed in (4, 5):  # the second run reuses the network built for the first, with new weights and inputs
        net, p, xs = random_net(name, 100, seed, B=2, **kw)
        assert_same(neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="cython"),
                    rate_range=(2.0, 60.0))


@pytest.mark.slow
def test_cpp_standalone_equals_torch_builds_once_and_leaves_no_device_behind(tmp_path):
    from brian2.devices.device import all_devices, get_device

    b2b.clear_cache()
    prev_target = brian2.prefs.codegen.target
    net, p, xs = random_net("alif", 80, 5, B=2, refractory=2)
    assert_same(neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="cpp_standalone"),
                rate_range=(2.0, 60.0))
    (sim,) = b2b._CACHE.values()
    directory = sim.dir
    assert os.path.isdir(directory) and not os.path.relpath(directory, tempfile_dir()).startswith("..")
    # new inputs and new weights, same structure: the same build runs again (no new project)
    _, p2, xs2 = random_net("alif", 80, 6, B=2, refractory=2)
    mtime = os.path.getmtime(os.path.join(directory, "main"))
    assert_same(neuro.simulate(net, p2, xs2), neuro.simulate(net, p2, xs2, backend="brian2", target="cpp_standalone"),
                rate_range=(2.0, 60.0))
    assert list(b2b._CACHE.values()) == [sim] and os.path.getmtime(os.path.join(directory, "main")) == mtime
    # Brian2's global state is back: the runtime device, the codegen target, and a numpy run works
    assert get_device() is all_devices["runtime"]
    assert brian2.prefs.codegen.target == prev_target
    small, ps, xss = random_net("lif", 50, 0)
    assert_same(neuro.simulate(small, ps, xss), neuro.simulate(small, ps, xss, backend="brian2", target="numpy"))
    b2b.clear_cache()
    assert not os.path.exists(directory)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


# -- the rate RNN: a discrete map in Brian2 ---------------------------------------------------------------------
def random_rate(n: int, seed: int, alpha: float, B: int = 1, T: int = 300):
    """A random rate RNN (g = 1.2, a random bias and readout bias) driven by Gaussian input."""
    net = models.make("rate", n_in=5, n_hidden=n, n_out=3, alpha=alpha, g=1.2)
    p = net.init_params(seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 2000)
    p["b"] = 0.1 * torch.randn(n, generator=g, dtype=F64)
    p["b_out"] = torch.randn(3, generator=g, dtype=F64)
    return net, p, torch.randn(T, B, 5, generator=g, dtype=F64)


def assert_same_rate(ref: neuro.Trace, tr: neuro.Trace) -> None:
    assert float(ref.h.std(0).mean()) > 0.1  # h moves (not stuck at a fixed point)
    assert float((ref.h.abs() > 0.999).float().mean()) < 0.2  # and is not saturated
    assert tr.spikes is None and tr.v is None and tr.extra == {}
    for name, a, b in (("h", tr.h, ref.h), ("y", tr.y, ref.y)):
        assert a.dtype == F64 and a.shape == b.shape
        err = float((a - b).abs().max())
        assert err < 1e-10, f"{name}: error {err:.2e}"


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("seed,n,B", [(0, 50, 1), (1, 120, 2), (2, 200, 1)])
def test_rate_numpy_target_equals_torch(alpha, seed, n, B):
    net, p, xs = random_rate(n, seed, alpha, B)
    assert_same_rate(neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="numpy"))


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.slow
def test_rate_cython_target_equals_torch(alpha):
    for seed in (3, 4):  # the second run reuses the network built for the first, with new weights and inputs
        net, p, xs = random_rate(100, seed, alpha, B=2)
        assert_same_rate(neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="cython"))


@pytest.mark.slow
def test_rate_cpp_standalone_equals_torch():
    for seed in (5, 6):
        net, p, xs = random_rate(60, seed, 0.3, B=2)
        assert_same_rate(neuro.simulate(net, p, xs),
                         neuro.simulate(net, p, xs, backend="brian2", target="cpp_standalone"))
    b2b.clear_cache()


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_rate_chain_by_hand(alpha):
    """Neuron 0 gets one input pulse at step 2, neuron 1 listens to neuron 0 only (weight 2), neuron 0 to
    neuron 1 (weight -1): h_t of each neuron uses h_{t-1} of the other, never h_t (the summed recurrent
    input is computed before the update overwrites h)."""
    net = models.make("rate", n_in=1, n_hidden=2, n_out=1, alpha=alpha)
    p = {"W_in": torch.tensor([[0.8], [0.0]], dtype=F64), "W_rec": torch.tensor([[0.0, -1.0], [2.0, 0.0]], dtype=F64),
         "b": torch.tensor([0.0, 0.1], dtype=F64), "W_out": torch.tensor([[1.0, -3.0]], dtype=F64),
         "b_out": torch.tensor([0.5], dtype=F64)}
    xs = torch.zeros(8, 1, 1, dtype=F64)
    xs[2] = 1.0
    import math

    h = [0.0, 0.0]
    hs = []
    for t in range(8):
        i0 = 0.8 * float(xs[t, 0, 0]) - h[1]
        i1 = 2.0 * h[0] + 0.1
        h = [(1 - alpha) * h[0] + alpha * math.tanh(i0), (1 - alpha) * h[1] + alpha * math.tanh(i1)]
        hs.append(h)
    h_hand = torch.tensor(hs, dtype=F64)
    y_hand = h_hand[:, 0] - 3.0 * h_hand[:, 1] + 0.5
    for tr in (neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="numpy")):
        torch.testing.assert_close(tr.h[:, 0], h_hand, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(tr.y[:, 0, 0], y_hand, rtol=1e-13, atol=1e-14)


def test_rate_trace_shapes_dtype_and_no_forward():
    net, p, xs = random_rate(20, 0, 0.5, B=3, T=40)
    p32 = {k: v.float() for k, v in p.items()}
    tr = neuro.simulate(net, p32, xs.float(), backend="brian2", record=False)  # h is recorded either way
    assert tr.h.shape == (40, 3, 20) and tr.y.shape == (40, 3, 3) and tr.y.dtype == tr.h.dtype == torch.float32
    ref = neuro.simulate(net, p, xs)
    assert float((tr.h.double() - ref.h).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="'rate' is not expressed by Brian2Forward.*backend='torch'"):
        b2b.Brian2Forward(net)


# -- a chain computed by hand: catches an off-by-one in the synaptic delay, the input timing or the reset -----
def chain(reset: str = "subtract", v_reset: float = 0.0):
    """Neuron 0 gets one input pulse at step 2; neuron 1 listens to neuron 0 only. Both weights make
    ``kappa w = 1.05`` (exact dynamics): one step of input puts v just above v_th = 1; a short synaptic
    time constant (beta = e^-2) lets the current die out before it makes a second spike."""
    net = models.make("lif", n_in=1, n_hidden=2, n_out=1, reset=reset, v_reset=v_reset, tau_syn=0.5)
    w = 1.05 / net.kappa
    p = {"W_in": torch.tensor([[w], [0.0]], dtype=F64), "W_rec": torch.tensor([[0.0, 0.0], [w, 0.0]], dtype=F64),
         "b": torch.zeros(2, dtype=F64), "W_out": torch.tensor([[1.0, 0.0]], dtype=F64),
         "b_out": torch.zeros(1, dtype=F64)}
    xs = torch.zeros(8, 1, 1, dtype=F64)
    xs[2] = 1.0
    return net, p, xs, w


@pytest.mark.parametrize("backend,target", [("torch", None), ("brian2", "numpy")])
@pytest.mark.parametrize("reset,v_reset", [("subtract", 0.0), ("zero", -0.5)])
def test_two_neuron_chain_spike_times_by_hand(backend, target, reset, v_reset):
    net, p, xs, w = chain(reset, v_reset)
    tr = neuro.simulate(net, p, xs, backend=backend, **({"target": target} if target else {}))
    s = tr.spikes[:, 0]
    # the input of step 2 counts in step 2; neuron 1 sees neuron 0's spike one step later
    assert torch.nonzero(s[:, 0])[:, 0].tolist() == [2]
    assert torch.nonzero(s[:, 1])[:, 0].tolist() == [3]
    a, b, k = net.alpha, net.beta, net.kappa
    after = 1.05 - 1.0 if reset == "subtract" else v_reset
    # neuron 0 by hand: v~_2 = kappa w, reset, then v_t = alpha v_{t-1} + kappa beta^(t-2) w
    v0 = [0.0, 0.0, after]
    for t in range(3, 8):
        v0.append(a * v0[-1] + k * b ** (t - 2) * w)
    torch.testing.assert_close(tr.v[:, 0, 0], torch.tensor(v0, dtype=F64), rtol=1e-12, atol=1e-12)
    assert max(v0[3:]) < net.v_th  # only one spike, and not by a hair
    # the readout is a leaky integrator of neuron 0: 1 at step 2, then kappa_out^(t-2)
    y = [0.0, 0.0] + [net.kappa_out ** (t - 2) for t in range(2, 8)]
    torch.testing.assert_close(tr.y[:, 0, 0], torch.tensor(y, dtype=F64), rtol=1e-12, atol=1e-12)


def test_refractory_hold_by_hand():
    """Strong constant input would fire every step; refractory=3 allows one spike every 4 steps, and during
    the 3 held steps v = v_reset exactly."""
    net = models.make("lif", n_in=1, n_hidden=1, n_out=1, refractory=3, v_reset=-0.25)
    p = {"W_in": torch.tensor([[5.0 / net.kappa]], dtype=F64), "W_rec": torch.zeros(1, 1, dtype=F64),
         "b": torch.zeros(1, dtype=F64), "W_out": torch.ones(1, 1, dtype=F64), "b_out": torch.zeros(1, dtype=F64)}
    xs = torch.ones(14, 1, 1, dtype=F64)
    for tr in (neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target="numpy")):
        assert torch.nonzero(tr.spikes[:, 0, 0])[:, 0].tolist() == [0, 4, 8, 12]
        held = [1, 2, 3, 5, 6, 7, 9, 10, 11]
        assert torch.equal(tr.v[held, 0, 0], torch.full((9,), -0.25, dtype=F64))


# -- forward-only training through Brian2 (the perturbation rules' forward protocol) ---------------------------
def small_forward_case(name: str):
    net = models.make(name, n_in=3, n_hidden=12, n_out=2, input_scale=6.0)
    p = net.init_params(seed=0, dtype=F64)
    p["W_in"] = p["W_in"].abs()
    g = torch.Generator().manual_seed(1)
    xs = torch.rand(15, 2, 3, generator=g, dtype=F64)
    ys = torch.randn(15, 2, 2, generator=g, dtype=F64)
    return net, p, xs, ys


@pytest.mark.parametrize("name,rule,kw", [("lif", "np", dict(sigma=1e-2, samples=2)), ("alif", "wp", dict(sigma=1e-2)),
                                          ("lif", "anp-time", {})])
def test_perturbation_estimates_through_brian2_equal_torch(name, rule, kw):
    net, p, xs, ys = small_forward_case(name)
    assert float(neuro.simulate(net, p, xs).spikes.mean()) > 0.02  # spikes happen
    g_torch = neuro.grad_estimate(net, p, rule, xs, ys, seed=3, **kw)
    g_b2 = neuro.grad_estimate(net, p, rule, xs, ys, seed=3, forward=b2b.Brian2Forward(net), **kw)
    for k in g_torch:
        scale = float(g_torch[k].abs().max())
        if k != "b" or rule == "wp":
            assert scale > 0, k
        assert float((g_b2[k] - g_torch[k]).abs().max()) <= 1e-9 * max(scale, 1e-300), k


@pytest.mark.slow
def test_training_through_brian2_learns_and_equals_torch_training():
    """Node perturbation, forward passes in Brian2: the parameters after training are those of training with
    torch forward passes, and the loss falls."""
    net = models.make("lif", n_in=2, n_hidden=10, n_out=1, input_scale=4.0, bias_mean=0.0, bias_std=0.0)
    p = net.init_params(seed=0, dtype=F64)
    p["W_in"] = p["W_in"].abs()
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(12, 1, 2, generator=g, dtype=F64) < 0.5).to(F64)
    ys = torch.full((12, 1, 1), 0.5, dtype=F64)  # a constant target: bias and weights must move y to 0.5

    def train(forward):
        rule = neuro.rules.make("np", net, sigma=1e-2, samples=4, forward=forward, window=1)  # a grad every step
        q = {k: v.clone() for k, v in p.items()}
        losses = []
        for epoch in range(5):
            state = rule.init(q, 1, seed=epoch)
            total = 0.0
            grads = {k: torch.zeros_like(v) for k, v in q.items()}
            for x, y in zip(xs, ys):
                out = rule.step(q, state, x, y, torch.ones(1, dtype=F64))
                state, total = out.state, total + float(out.loss)
                for k in grads:
                    grads[k] += out.grad[k]
            losses.append(total)
            q = {k: v - 0.002 * grads[k] for k, v in q.items()}
        return q, losses

    q_torch, l_torch = train(None)
    q_b2, l_b2 = train(b2b.Brian2Forward(net))
    assert l_b2 == pytest.approx(l_torch, rel=1e-9)
    for k in q_torch:
        torch.testing.assert_close(q_b2[k], q_torch[k], rtol=1e-9, atol=1e-12)
    assert l_b2[-1] < 0.6 * l_b2[0]


# -- the registry and bad input ------------------------------------------------------------------------------
def test_registered_and_trace_shapes_and_dtype():
    assert "brian2" in neuro.backends.available()
    net, p, xs = random_net("alif", 20, 0, B=3)
    p32 = {k: v.float() for k, v in p.items()}
    tr = neuro.simulate(net, p32, xs[:50].float(), backend="brian2")
    assert tr.spikes.shape == tr.v.shape == tr.extra["i"].shape == tr.extra["a"].shape == (50, 3, 20)
    assert tr.y.shape == (50, 3, 3) and tr.y.dtype == torch.float32 and tr.h is None
    only = neuro.simulate(net, p, xs[:50], backend="brian2", record=False)
    assert only.v is None and only.extra == {} and only.spikes.shape == (50, 3, 20)


@pytest.mark.parametrize("name,kw,match", [("lstm", {}, "'lstm' is not expressed.*backend='torch'"),
                                           ("lif", dict(dynamics="lava"), "dynamics='lava'.*backend='torch'")])
def test_models_brian2_cannot_express(name, kw, match):
    net = models.make(name, n_in=2, n_hidden=4, n_out=1, **kw)
    p = net.init_params(seed=0, dtype=F64)
    with pytest.raises(ValueError, match=match):
        neuro.simulate(net, p, torch.zeros(5, 1, 2, dtype=F64), backend="brian2")
    with pytest.raises(ValueError, match=match):
        b2b.Brian2Forward(net)


def test_bad_target_and_missing_compiler(monkeypatch):
    net, p, xs = random_net("lif", 5, 0)
    with pytest.raises(ValueError, match="target='gpu' is invalid.*'numpy', 'cython', 'cpp_standalone'"):
        neuro.simulate(net, p, xs[:5], backend="brian2", target="gpu")
    b2b._compiler_problem.cache_clear()
    monkeypatch.setattr("shutil.which", lambda name: None)
    try:
        with pytest.raises(RuntimeError, match="cpp_standalone.*not found on PATH.*target='numpy' works"):
            neuro.simulate(net, p, xs[:5], backend="brian2", target="cpp_standalone")
    finally:
        b2b._compiler_problem.cache_clear()


def test_brian2_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "brian2", None)  # import brian2 now raises ImportError
    net, p, xs = random_net("lif", 5, 0)
    with pytest.raises(ImportError, match="needs Brian2.*pip install.*backend='torch' works"):
        neuro.simulate(net, p, xs[:5], backend="brian2")


# -- the command line ----------------------------------------------------------------------------------------
def test_cli_simulate_writes_raster_and_trace_and_checks_against_torch(tmp_path, capsys):
    import numpy as np

    from neuro.cli import main

    run = tmp_path / "sim"
    assert main(["simulate", "--backend", "brian2", "--hidden", "30", "--steps", "300", "--check",
                 "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "spike trains identical" in out
    png = (run / "raster.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with np.load(run / "trace.npz") as z:
        assert z["spikes"].shape == z["v"].shape == (300, 30) and z["xs"].shape == (300, 20)
        assert 0 < z["spikes"].mean() < 0.2  # it fires, not at every step
    assert main(["simulate", "--backend", "brian2", "--model", "lstm", "--run-dir", str(tmp_path / "x")]) == 2
    assert "'lstm' is not expressed by backend='brian2'" in capsys.readouterr().err
    assert main(["simulate", "--target", "cython", "--run-dir", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_bench_brian2_quick(tmp_path):
    import json

    from neuro.bench import brian2 as bench

    assert bench.main(["--quick", "--train", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_brian2.json").read_text())
    (torch_row, numpy_row) = res["speed"]
    assert torch_row["backend"] == "torch" and numpy_row["target"] == "numpy" and numpy_row["identical"]
    assert numpy_row["first_s"] > 0 and numpy_row["run_s"] > 0 and numpy_row["network_run_s"] > 0
    t = res["train"]
    assert t["loss_brian2"] == pytest.approx(t["loss_torch"], rel=1e-9) and t["max_param_diff"] < 1e-9
    assert t["loss_brian2"][-1] < t["loss_brian2"][0]
    assert (tmp_path / "brian2_train.png").stat().st_size > 5000
    assert "spikes = torch" in (tmp_path / "bench_brian2.md").read_text()


def test_cli_check_compares_a_rate_network_by_its_activity(tmp_path, capsys):
    from neuro.cli import main

    assert main(["simulate", "--backend", "brian2", "--model", "rate", "--hidden", "10", "--steps", "50", "--check",
                 "--run-dir", str(tmp_path)]) == 0
    assert "h and y agree" in capsys.readouterr().out
    assert (tmp_path / "trace.npz").is_file()
