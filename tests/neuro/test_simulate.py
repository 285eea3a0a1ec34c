"""``neuro.simulate`` with the torch backend: trace shapes, input checks, and equality with a manual loop."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import models
import neuro

F64 = torch.float64


def xs_for(net, T=25, B=2, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, net.n_in, generator=g, dtype=F64) * 3.0 + 2.0).to(dtype)


def params_for(net, seed):
    """float64 parameters; spiking nets get excitatory inputs so that they fire."""
    params = net.init_params(seed=seed, dtype=F64)
    if net.spiking:
        params["W_in"] = params["W_in"].abs()
    return params


NETS = {
    "lif": dict(n_in=3, n_hidden=6, n_out=2),
    "alif": dict(n_in=3, n_hidden=6, n_out=2),
    "rate": dict(n_in=3, n_hidden=6, n_out=2),
    "lstm": dict(n_in=3, n_hidden=6, n_out=2),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_trace_fields_and_shapes(name):
    net = models.make(name, **NETS[name])
    params = params_for(net, 0)
    tr = neuro.simulate(net, params, xs_for(net, T=25, B=2))
    assert tr.y.shape == (25, 2, 2)
    if net.spiking:
        assert tr.spikes.shape == tr.v.shape == (25, 2, 6) and tr.h is None
        assert set(torch.unique(tr.spikes).tolist()) == {0.0, 1.0}
        assert tr.extra["i"].shape == (25, 2, 6)
        if name == "alif":
            assert tr.extra["a"].shape == (25, 2, 6)
        torch.testing.assert_close(tr.rates(dt=net.dt), tr.spikes.mean(0) / net.dt)
    else:
        assert tr.h.shape == (25, 2, 6) and tr.spikes is None and tr.v is None
        if name == "lstm":
            assert tr.extra["c"].shape == (25, 2, 6)
        with pytest.raises(ValueError, match="no spikes"):
            tr.rates()


@pytest.mark.parametrize("name", sorted(NETS))
def test_simulate_equals_a_manual_loop_of_step(name):
    net = models.make(name, **NETS[name])
    params = params_for(net, 1)
    xs = xs_for(net, T=40, B=3)
    tr = neuro.simulate(net, params, xs)
    state = net.init_state(params, 3)
    for t, x in enumerate(xs):
        state, y = net.step(params, state, x)
        assert torch.equal(tr.y[t], y)
        for k, v in net.observe(state).items():
            recorded = {"spikes": tr.spikes, "v": tr.v, "h": tr.h}.get(k)
            assert torch.equal(recorded[t] if recorded is not None else tr.extra[k][t], v), k
    if net.spiking:
        assert float(tr.spikes.mean()) > 0.01


def _backends_for(name):
    """The built-in backends that run ``name`` here: torch always, compiled for lif/alif where numba is."""
    import importlib.util

    from neuro.backends import compiled

    have_numba = importlib.util.find_spec("numba") is not None
    return ["torch"] + (["compiled"] if have_numba and name in compiled.SUPPORTED else [])


def assert_empty_trace_like_a_full_one(name, backends):
    net = models.make(name, **NETS[name])
    params = params_for(net, 0)
    for backend in backends:
        some = neuro.simulate(net, params, xs_for(net, T=3, B=2), backend=backend)
        empty = neuro.simulate(net, params, xs_for(net, T=3, B=2)[:0], backend=backend)
        assert set(empty.extra) == set(some.extra), backend
        pairs = [(empty.y, some.y), *((empty.extra[k], some.extra[k]) for k in some.extra)]
        for field in ("spikes", "v", "h"):
            a, b = getattr(empty, field), getattr(some, field)
            assert (a is None) == (b is None), (backend, field)
            if b is not None:
                pairs.append((a, b))
        for a, b in pairs:
            assert a.shape == (0, *b.shape[1:]) and a.dtype == b.dtype, backend


@pytest.mark.parametrize("name", sorted(NETS))
def test_zero_steps_give_an_empty_trace_of_the_right_shapes_on_every_backend(name):
    """T = 0: every backend returns the fields it records for T > 0, each with no step ([0, B, ...])."""
    assert_empty_trace_like_a_full_one(name, _backends_for(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lif", "alif", "rate"])
def test_zero_steps_give_an_empty_trace_on_brian2(name):
    pytest.importorskip("brian2")
    assert_empty_trace_like_a_full_one(name, ["brian2"])


def test_two_dimensional_xs_is_one_sequence():
    net = models.make("lif", **NETS["lif"])
    params = params_for(net, 0)
    xs = xs_for(net, T=30, B=1)
    one = neuro.simulate(net, params, xs[:, 0])
    ref = neuro.simulate(net, params, xs)
    assert one.spikes.shape == (30, 1, 6)
    assert torch.equal(one.spikes, ref.spikes) and torch.equal(one.y, ref.y)
    assert one.spikes.sum() > 0


def test_input_dtype_follows_the_params_and_no_graph_is_built():
    net = models.make("rate", **NETS["rate"])
    params = {k: v.requires_grad_() for k, v in net.init_params(seed=0, dtype=F64).items()}
    tr = neuro.simulate(net, params, xs_for(net, dtype=torch.float32))
    assert tr.y.dtype == F64 and tr.h.dtype == F64
    assert not tr.y.requires_grad


def test_simulate_starts_from_rest_every_time():
    net = models.make("alif", **NETS["alif"])
    params = params_for(net, 0)
    xs = xs_for(net)
    a, b = neuro.simulate(net, params, xs), neuro.simulate(net, params, xs)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.extra["a"], b.extra["a"])


def test_wrong_inputs_are_rejected():
    net = models.make("lif", **NETS["lif"])
    params = net.init_params(seed=0)
    with pytest.raises(ValueError, match=re.escape("xs has shape (10, 2, 4): expected [T, B, n_in=3]")):
        neuro.simulate(net, params, torch.zeros(10, 2, 4))
    with pytest.raises(ValueError, match=re.escape("(10, 2, 1, 3)")):
        neuro.simulate(net, params, torch.zeros(10, 2, 1, 3))
    with pytest.raises(TypeError, match="ndarray"):
        neuro.simulate(net, params, np.zeros((10, 2, 3)))
    with pytest.raises(ValueError, match="W_rec"):
        neuro.simulate(net, {k: v for k, v in params.items() if k != "W_rec"}, torch.zeros(10, 2, 3))


def test_unknown_backend_lists_the_valid_ones():
    net = models.make("rate", **NETS["rate"])
    params = net.init_params(seed=0)
    with pytest.raises(ValueError, match=r"backend='nest' is invalid: valid choices are .*'torch'"):
        neuro.simulate(net, params, torch.zeros(5, 1, 3), backend="nest")
    assert "torch" in neuro.backends.available()


# -- neuro simulate (the command) warns when a spiking network stays silent -----------------------------------
def _simulate_cli(tmp_path, capsys, *args):
    from neuro.cli import main

    rc = main(["simulate", "--hidden", "8", "--inputs", "4", "--steps", "50", "--run-dir", str(tmp_path), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_simulate_warns_on_stderr_when_no_neuron_spikes(tmp_path, capsys):
    """No input and no bias: not one spike. One warning line on stderr; the exit status and outputs as usual."""
    rc, out, err = _simulate_cli(tmp_path, capsys, "--rate", "0", "--model-opt", "bias_mean=0", "--model-opt",
                                 "bias_std=0")
    assert rc == 0 and "0 spikes (0.0 Hz)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuro: warning: the network is silent"), err
    assert "50 steps of 8 neurons" in lines[0] and "--rate" in lines[0]
    assert np.load(tmp_path / "trace.npz")["spikes"].sum() == 0


@pytest.mark.parametrize("args", [("--model", "lif"), ("--model", "alif"), ("--model", "rate")])
def test_cli_simulate_says_nothing_when_the_network_fires_or_does_not_spike_at_all(tmp_path, capsys, args):
    """A firing lif/alif (the defaults; 500 steps, about 4 Hz) and a rate network (no spikes to count) print no
    warning."""
    rc, out, err = _simulate_cli(tmp_path, capsys, *args, "--steps", "500")
    assert rc == 0 and err == "", err
    if args[1] != "rate":
        assert np.load(tmp_path / "trace.npz")["spikes"].sum() > 0


@pytest.mark.parametrize("args,phrase", [(("--hidden", "10000000"), "--hidden 10000000 with --inputs 4 is invalid: "),
                                         (("--steps", "100000000"), "--steps 100000000 with --hidden 8 is invalid: ")])
def test_cli_simulate_refuses_sizes_that_cannot_fit_before_allocating(tmp_path, capsys, args, phrase):
    """One line naming the sizes and the memory they need (a torch allocation error was an internal error)."""
    rc, out, err = _simulate_cli(tmp_path, capsys, *args)
    assert rc == 2 and out == "" and err.startswith(f"neuro: error: {phrase}it needs ") and err.count("\n") == 1, err
    assert "of memory" in err and not tmp_path.joinpath("trace.npz").exists()
