"""The columns networks' online normalisation and initialisation options (Javed et al.'s code): the running
statistics against the recursion written out in numpy, the rules' exact RTRL estimate against autograd BPTT
of the normalised network (the statistics constants), and the options' checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from neuro import rules

F64 = torch.float64


def _running(mu, var, v, d, floor):
    mu = d * mu + (1 - d) * v
    return mu, np.maximum(d * var + (1 - d) * (v - mu) ** 2, floor)


def test_statistics_follow_the_recursion_written_out():
    """Rate columns, 3 steps by hand: each column's input from the statistics before the step, which then take
    the raw x; the readout's after taking h_t. d = 0.5 moves them fast; floor 0.3 is hit (constant inputs)."""
    d, floor = 0.5, 0.3
    net = models.make("columnar", n_in=2, n_hidden=3, n_out=1, cell="rate", normalise=d, variance_floor=floor)
    p = net.init_params(seed=4, dtype=F64)
    W, w, b = p["W_in"][:, 0].numpy(), p["w_rec"][:, 0].numpy(), p["b"][:, 0].numpy()
    Wo, bo = p["W_out"].numpy(), p["b_out"].numpy()
    xs = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5]])  # x_0 constant: its variance falls to the floor
    mu, var, mf, vf, h = np.zeros((3, 2)), np.ones((3, 2)), np.zeros(3), np.ones(3), np.zeros(3)
    state = net.init_state(p, 1)
    for x in xs:
        xhat = (x[None, :] - mu) / np.sqrt(var)  # [n, n_in]: each column's
        h = np.tanh((W * xhat).sum(1) + w * h + b)
        mu, var = _running(mu, var, x[None, :], d, floor)
        mf, vf = _running(mf, vf, h, d, floor)
        y = Wo @ ((h - mf) / np.sqrt(vf)) + bo
        state, y_t = net.step(p, state, torch.tensor(x[None]))
        for name, ref in (("h", h), ("mu_in", mu), ("var_in", var), ("mu_f", mf), ("var_f", vf)):
            np.testing.assert_allclose(getattr(state, name)[0].numpy(), ref, rtol=1e-14, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(y_t[0].numpy(), y, rtol=1e-13, atol=1e-15)
    assert np.all(var[:, 0] == floor) and np.all(var[:, 1] > floor)  # the floor acted, and only where it binds


def test_constructive_statistics_move_only_for_the_learning_stage():
    net = models.make("constructive", n_in=2, n_hidden=6, n_out=1, per_stage=2, stage=1, normalise=0.5)
    p = net.init_params(seed=0, dtype=F64)
    state = net.init_state(p, 2)
    for x in torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64):
        state, _ = net.step(p, state, x)
    moved = (state.mu_in != 0).any(-1).any(0)  # per column
    assert moved.tolist() == [False, False, True, True, False, False]
    assert (state.var_in[:, 2:4, 2:4] != 1).all() and (state.var_in[:, 2:4, 4:] == 1).all()  # reads (x, h_0, h_1)
    assert (state.var_f != 1).all()  # the readout's statistics: every column's (an inactive one's h = 0)


def _bptt(net, p, xs, ys):
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    state, total = net.init_state(p, xs.shape[1]), 0.0
    for x, y in zip(xs, ys):
        state, y_hat = net.step(leaves, state, x)
        total = total + 0.5 * ((y_hat - y) ** 2).sum() / xs.shape[1]
    return dict(zip(p, torch.autograd.grad(total, list(leaves.values()))))


@pytest.mark.parametrize("model,opts", [("columnar", {}), ("columnar", {"cell": "rate"}),
                                        ("constructive", {"per_stage": 2, "stage": 1}),
                                        ("constructive", {"per_stage": 2, "stage": 1, "cell": "rate"})])
@pytest.mark.parametrize("fast", [False, True])
def test_exact_rtrl_equals_bptt_with_normalisation(model, opts, fast):
    """Summed over a sequence with the parameters frozen, the rule's estimate is autograd BPTT's gradient of the
    normalised network (its statistics taken as constants), for the learning columns and the readout."""
    net = models.make(model, n_in=3, n_hidden=6, n_out=2, normalise=0.8, variance_floor=0.05, **opts)
    p = net.init_params(seed=1, dtype=F64)
    g = torch.Generator().manual_seed(0)
    T, B = 12, 2
    xs = torch.randn(T, B, 3, generator=g, dtype=F64) * 2 + 1
    ys = torch.randn(T, B, 2, generator=g, dtype=F64)
    ref = _bptt(net, p, xs, ys)
    rule = rules.make(model, net, fast=fast)
    state, acc = rule.init(p, B), {k: torch.zeros_like(v) for k, v in p.items()}
    for x, y in zip(xs, ys):
        out = rule.step(p, state, x, y, torch.ones(B, dtype=torch.bool))
        state = out.state
        for k in acc:
            acc[k] += out.grad[k]
    sl = net.stage_columns(net.stage) if model == "constructive" else slice(None)
    for k in ("W_in", "w_rec", "b", "W_out", "b_out") + (("W_ff",) if model == "constructive" else ()):
        got, want = (acc[k][sl], ref[k][sl]) if k not in ("W_out", "b_out") else (acc[k], ref[k])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13, msg=k)
    assert float(ref["W_in"][sl].abs().max()) > 1e-3


def test_normalise_none_has_no_statistics_and_is_the_plain_network():
    plain = models.make("columnar", n_in=3, n_hidden=4, n_out=1)
    assert plain.init_state(plain.init_params(), 1)._fields == ("h", "c")
    assert models.make("constructive", n_in=3, n_hidden=4, n_out=1, cell="rate").init_state(
        plain.init_params(), 1)._fields == ("h",)


@pytest.mark.parametrize("model", ["columnar", "constructive"])
def test_init_scale_and_readout_init(model):
    net = models.make(model, n_in=3, n_hidden=4, n_out=2, init_scale=0.01, readout_init="zeros", forget_bias=0.0)
    p = net.init_params(seed=0, dtype=F64)
    for k in ("W_in", "w_rec", "b") + (("W_ff",) if model == "constructive" else ()):
        assert 0 < float(p[k].abs().max()) <= 0.01, k
    assert not p["W_out"].any() and not p["b_out"].any()
    default = models.make(model, n_in=3, n_hidden=4, n_out=2).init_params(seed=0, dtype=F64)
    assert float(default["W_in"].abs().max()) > 0.5 and default["W_out"].any()


def test_lstm_readout_init_zeros():
    p = models.make("lstm", n_in=3, n_hidden=4, n_out=2, readout_init="zeros").init_params(seed=0)
    assert not p["W_out"].any()
    q = models.make("lstm", n_in=3, n_hidden=4, n_out=2).init_params(seed=0)
    assert torch.equal(p["W_in"], q["W_in"]) and q["W_out"].any()


def test_constructive_readout_fan_in_is_the_active_columns():
    net = models.make("constructive", n_in=3, n_hidden=6, n_out=1, per_stage=2, stage=1)
    assert net.readout_fan_in == 4 and net.next_stage().readout_fan_in == 6


@pytest.mark.parametrize("model", ["columnar", "constructive"])
@pytest.mark.parametrize("opts,match", [({"normalise": 1.0}, "normalise=1.0"), ({"normalise": 0}, "normalise=0"),
                                        ({"normalise": True}, "normalise=True"),
                                        ({"variance_floor": 0.0}, "variance_floor=0.0"),
                                        ({"init_scale": -0.1}, "init_scale=-0.1"),
                                        ({"readout_init": "ones"}, "readout_init='ones'")])
def test_bad_options_raise_naming_the_value(model, opts, match):
    with pytest.raises(ValueError, match=match):
        models.make(model, n_in=3, n_hidden=4, n_out=1, **opts)
