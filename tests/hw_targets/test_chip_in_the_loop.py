"""Chip in the loop (hw_targets.lava.chip_in_the_loop): np, anp, anp-time with their forward passes in Lava."""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from hw_targets.lava import _compat
from hw_targets.lava.chip_in_the_loop import sequence_estimate, train_in_the_loop
from neuro.gradients import grad_estimate
from neuro.tasks.base import Sequence

pytestmark = pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")


def _net(**kw):
    opts = dict(n_in=3, n_hidden=5, n_out=2, dynamics="lava", reset="zero", input_scale=20.0)
    opts.update(kw)
    return models.make("lif", **opts)


@pytest.mark.parametrize("name", ["np", "anp-time", "anp"])
@pytest.mark.slow
def test_lava_estimate_equals_torch_rule(name):
    """Oracle: on the same noise (same seed), the estimate formed from one Lava run equals the torch rule's
    grad_estimate (float64), every parameter; the clean loss equals neuro.gradients' sequence loss."""
    net = _net()
    params = net.init_params(seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(30, 2, 3, generator=g) < 0.5).double()
    ys = torch.randn(30, 2, 2, generator=g, dtype=torch.float64)
    rule = neuro.rules.make(name, net, sigma=0.1, samples=2)
    got, loss = sequence_estimate(rule, params, xs, ys, seed=3)
    want = grad_estimate(net, params, rule, xs, ys, seed=3)
    tr = neuro.simulate(net, params, xs)
    assert 0.01 < float(tr.spikes.mean()) < 0.2  # 10-200 Hz at dt = 1 ms
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-10)
    print(f"\n{name}: max |Lava estimate - torch rule| {max(float((got[k] - want[k]).abs().max()) for k in want):.2e}")
    for k in ("W_in", "W_rec", "W_out", "b_out"):
        assert want[k].abs().max() > 1e-3, k
    l_torch = float(0.5 * ((tr.y - ys) ** 2).sum() / 2)
    assert loss == pytest.approx(l_torch, rel=1e-12)
    other, _ = sequence_estimate(rule, params, xs, ys, seed=4)
    assert not torch.allclose(other["W_in"], got["W_in"])  # the seed draws the noise


@pytest.mark.parametrize("name,lr", [("np", 1e-4), ("anp", 1e-4)])
@pytest.mark.slow
def test_tiny_task_loss_decreases(name, lr):
    """A student LIF net (6 neurons) learns a teacher's output on fixed input spikes: 4 updates, each from
    one Lava run of the clean and 8 noisy copies, bring the loss well down."""
    net = _net(n_hidden=6, n_out=1)
    params = net.init_params(seed=1, dtype=torch.float64)
    teacher = net.init_params(seed=2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(50, 2, 3, generator=g) < 0.5).double()
    seq = Sequence(xs, neuro.simulate(net, teacher, xs).y, torch.ones(50, 2, dtype=torch.bool))
    rule = neuro.rules.make(name, net, sigma=0.05, samples=8)
    _, losses = train_in_the_loop(rule, params, seq, updates=4, lr=lr, seed=0)
    print(f"\n{name} with Lava forward passes, loss per update: {[round(x, 1) for x in losses]}")
    assert losses[-1] < 0.6 * losses[0], losses


def test_refused():
    net = _net()
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys = torch.zeros(5, 1, 3, dtype=torch.float64), torch.zeros(5, 1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="chip in the loop"):
        sequence_estimate(neuro.rules.make("eprop", net), params, xs, ys)
    exact = models.make("lif", n_in=3, n_hidden=5, n_out=2)
    with pytest.raises(ValueError, match="dynamics"):
        sequence_estimate(neuro.rules.make("np", exact), exact.init_params(seed=0, dtype=torch.float64), xs, ys)
