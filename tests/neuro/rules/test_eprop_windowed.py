"""e-prop's windowed path (neuro.rules._fast.eprop) against the rule's definition (``fast=False``) in float64:
windows cut across the sequence, flushes inside and across windows, LIF's and ALIF's dynamics, resets, refractory
periods and surrogates, other losses, a branch from an older state, and a state of fixed structure.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import rules

from _helpers import assert_params_close as _close
from _helpers import tensors

pytestmark = pytest.mark.usefixtures("one_thread")

T, B = 20, 2
F64 = torch.float64


def _spiking_net(name: str, **kw):
    return models.make(name, n_in=4, n_hidden=6, n_out=2, tau_mem=5.0, tau_syn=2.0, tau_out=5.0,
                       input_scale=2.0, rec_scale=1.0, **kw)


def _data(net, seed: int = 3):
    """Inputs (0/4 spikes or gaussian) [T, B, n_in], targets [T, B, n_out], a mask [T, B] (the last step on)."""
    g = torch.Generator().manual_seed(seed)
    if net.spiking:
        xs = 4.0 * (torch.rand(T, B, net.n_in, generator=g) < 0.5).to(F64)
    else:
        xs = torch.randn(T, B, net.n_in, generator=g, dtype=F64)
    ys = torch.randn(T, B, net.n_out, generator=g, dtype=F64)
    mask = torch.rand(T, B, generator=g) < 0.8
    mask[-1] = True
    return xs, ys, mask


def _spikes(net, params, xs) -> float:
    return float(neuro.simulate(net, params, xs).spikes.sum())


def _ids(cases):
    return [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in cases]


WINDOWED = [("lif", {}), ("lif", {"refractory": 2}), ("lif", {"reset": "zero"}), ("lif", {"detach_reset": True}),
            ("lif", {"reset": "zero", "v_reset": -0.3, "v_leak": 0.2}), ("lif", {"refractory": 2, "dynamics": "euler"}),
            ("lif", {"dynamics": "lava", "surrogate": "fast-sigmoid"}), ("alif", {}),
            ("alif", {"refractory": 1, "reset": "zero", "beta_a": 1.5}),
            ("alif", {"dynamics": "euler", "detach_reset": True}),
            ("rate", {"alpha": 0.5}), ("rate", {})]


def _net(model: str, **kw):
    if model == "rate":
        return models.make("rate", n_in=3, n_hidden=5, n_out=2, **kw)
    return _spiking_net(model, **kw)


def _flushed(rule, params, xs, ys, mask, every: int | None):
    """The summed estimate with ``flush`` after steps every-1, 2 every-1, ... (None: never); which steps gave one."""
    state = rule.init(params, xs.shape[1], 0)
    total, given = rules.zeros_like_params(params), []
    for t, (x, y, m) in enumerate(zip(xs, ys, mask)):
        out = rule.step(params, state, x, y, m)
        state = out.state
        given.append(out.grad is not None)
        rules.add_into(total, out.grad)
        if every and t % every == every - 1:
            state, g = rule.flush(params, state)
            rules.add_into(total, g)
    state, g = rule.finish(params, state)
    return rules.add_into(total, g), given


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("model,kw", WINDOWED, ids=_ids(WINDOWED))
def test_windowed_path_equals_the_per_step_path(model, kw, window):
    """The windowed matrix products (neuro.rules._fast.eprop; LIF/ALIF's Jacobians built for the whole window,
    shared rows for their current) equal the per-step path, over LIF's and ALIF's dynamics, resets, refractory
    periods and surrogates, with a bias, with windows cut across the sequence, flushes at odd steps (every 5:
    inside windows of 7, across windows of 3) and a batch of 2 whose samples have their own traces."""
    net = _net(model, **kw)
    params = net.init_params(0, F64)
    g = torch.Generator().manual_seed(1)
    params["b"] = params["b"] + 0.2 * torch.randn(params["b"].shape, generator=g, dtype=F64)
    xs, ys, mask = _data(net)
    assert xs.shape[1] == 2
    if net.spiking:
        assert _spikes(net, params, xs) > 0
    ref = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, fast=False)
    fast = rules.make("eprop", net, window=window)
    assert fast.fast_path is not None and rules.make("eprop", net, fast=False).fast_path is None
    for every in (None, 5):
        g, given = _flushed(fast, params, xs, ys, mask, every)
        _close(g, ref)
        if every is None:  # estimates come at window ends only
            assert given == [(t + 1) % window == 0 for t in range(T)]
    assert float(ref["W_rec"].abs().max()) > 1e-6 and float(ref["W_in"].abs().max()) > 1e-6


def test_windowed_alif_without_the_adaptive_component():
    net = _spiking_net("alif", beta_a=2.0)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    assert _spikes(net, params, xs) > 0
    ref = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, fast=False, adaptive_eligibility=False)
    g, _ = _flushed(rules.make("eprop", net, window=7, adaptive_eligibility=False), params, xs, ys, mask, 3)
    _close(g, ref)


@pytest.mark.parametrize("loss", ["ce", "value"])
def test_windowed_path_with_other_losses(loss):
    """The written-out dE/dy of the other losses (``neuro.losses.grad``) on the windowed path."""
    name = loss
    net = _spiking_net("lif")
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    ys = torch.softmax(ys, -1)
    ref = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, fast=False, loss=name)
    _close(neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, window=4, loss=name), ref)


def test_a_step_from_an_older_state_does_not_disturb_it():
    """A second step from the same (older) state starts its own branch: the first branch's estimate is
    unchanged (a state is a snapshot, its steps are not overwritten)."""
    net = _spiking_net("lif")
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    rule = rules.make("eprop", net, window=8)
    state = rule.init(params, B)
    for t in range(3):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
    a = rule.step(params, state, xs[3], ys[3], mask[3]).state
    rule.step(params, state, xs[5], ys[5], mask[5])  # a branch from the same state
    _, ga = rule.flush(params, a)
    # the same four steps without the branch
    s2 = rule.init(params, B)
    for t in range(4):
        s2 = rule.step(params, s2, xs[t], ys[t], mask[t]).state
    _, gb = rule.flush(params, s2)
    _close(ga, gb, rtol=0, atol=0)


def test_a_window_holds_window_steps_of_fixed_shapes():
    net = _spiking_net("alif")
    params = net.init_params(0, F64)
    rule = rules.make("eprop", net, window=5)
    state = rule.init(params, B)
    shapes = [tuple(t.shape) for t in tensors(state.steps)]
    xs, ys, mask = _data(net)
    for t in range(T):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
        assert [tuple(t.shape) for t in tensors(state.steps)] == shapes and state.t == (t + 1) % 5
    assert len(state.steps) == 5 and state.eps.shape == (B, 6, 3, net.n_in + 6)  # [bar e; eps_v, eps_a]
    assert state.shared.shape == (B, 1, net.n_in + 6)  # eps_i: the same for every neuron
