"""A default ``lif`` / ``alif`` network fires at a plausible rate on the inputs it will meet.

``models.make(name, n_in=task.n_in, n_hidden=64, n_out=task.n_out)`` with the default seed and dt = 1 ms,
driven by every task's own inputs and by Poisson spikes of 0.05 and 0.2 per step, fires at 1-50 Hz
(0.001-0.05 spikes per neuron per step): silent networks make every gradient comparison trivial.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro

from _helpers import make_task  # dataset tasks read tiny files in their published layouts

LOW, HIGH = 0.001, 0.05  # spikes per neuron per step at dt = 1 ms: 1-50 Hz
STEPS = 1000
SPIKING = ("lif", "alif")
F64 = torch.float64


def mean_rate(name: str, xs: torch.Tensor, n_out: int = 1, **options) -> float:
    net = models.make(name, n_in=xs.shape[-1], n_hidden=64, n_out=n_out, **options)
    assert net.dt == 1.0
    return float(neuro.simulate(net, net.init_params(), xs).spikes.mean())


def task_inputs(task_name: str) -> tuple[torch.Tensor, int]:
    task = make_task(task_name)
    return task.sample(steps=max(STEPS, task.trial_steps or 0), batch=2, seed=0).xs, task.n_out


def poisson(p: float, n_in: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(STEPS, 2, n_in, generator=g) < p).float()


@pytest.mark.parametrize("model", SPIKING)
@pytest.mark.parametrize("task_name", neuro.tasks.available())
def test_the_default_network_fires_on_every_tasks_inputs(model, task_name):
    xs, n_out = task_inputs(task_name)
    rate = mean_rate(model, xs, n_out)
    assert LOW <= rate <= HIGH, f"{model} on {task_name}: {rate:.4f} spikes per neuron per step"


@pytest.mark.parametrize("model", SPIKING)
@pytest.mark.parametrize("n_in", [2, 20, 100])
@pytest.mark.parametrize("p", [0.05, 0.2])
def test_the_default_network_fires_on_poisson_inputs(model, n_in, p):
    rate = mean_rate(model, poisson(p, n_in))
    assert LOW <= rate <= HIGH, f"{model}, {n_in} Poisson inputs at {p}: {rate:.4f} spikes per neuron per step"


@pytest.mark.parametrize("model", SPIKING)
def test_without_the_bias_sparse_inputs_leave_the_network_silent(model):
    """Why the resting offset exists: the weights alone (bias_mean = bias_std = 0, the earlier defaults)
    leave a network on cue-accumulation's sparse spikes and on sine's one pulse per period below 1 Hz."""
    for task_name in ("cue-accumulation", "sine"):
        xs, n_out = task_inputs(task_name)
        assert mean_rate(model, xs, n_out, bias_mean=0.0, bias_std=0.0) < LOW


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_the_bias_sets_the_resting_voltage_in_units_of_v_th(dynamics):
    """With no input and no spike (offsets well below threshold), v settles at v_leak + offset, the offsets
    N(bias_mean, bias_std^2) v_th, for every dynamics (Lava's adds b every step: b = offset (1 - alpha))."""
    kw = dict(n_in=3, n_hidden=1000, n_out=1, dynamics=dynamics, v_th=2.0, bias_mean=0.3, bias_std=0.05)
    net = models.make("lif", **kw)
    params = net.init_params(seed=3, dtype=F64)
    tr = neuro.simulate(net, params, torch.zeros(400, 1, 3, dtype=F64))
    assert float(tr.spikes.sum()) == 0.0
    v = tr.v[-1, 0] / net.v_th
    assert float(v.mean()) == pytest.approx(0.3, abs=3 * 0.05 / 1000 ** 0.5)
    assert float(v.std()) == pytest.approx(0.05, rel=0.1)
    torch.testing.assert_close(tr.v[-1], tr.v[-2], rtol=0, atol=1e-6)  # settled
    # drawn after the weights: a seed's weights do not depend on the bias settings
    flat = models.make("lif", **{**kw, "bias_mean": 0.0, "bias_std": 0.0}).init_params(seed=3, dtype=F64)
    assert torch.equal(flat["b"], torch.zeros(1000, dtype=F64))
    for k in ("W_in", "W_rec", "W_out"):
        assert torch.equal(flat[k], params[k])
