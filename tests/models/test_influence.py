"""The influence-balancing network against its closed form: s_t = A^t s_0 + sum_{k<t} A^k theta u."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import neuro
from models.influence import InfluenceBalancing


def _closed_form(t: int, theta: float, n: int = 23, n_pos: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``s_t`` and ``d s_t / d theta`` by numpy matrix powers."""
    A = 0.5 * np.eye(n) + 0.5 * np.eye(n, k=1)
    u = np.r_[np.ones(n_pos), -np.ones(n - n_pos)]
    powers = [np.linalg.matrix_power(A, k) for k in range(t + 1)]
    ds = sum(powers[k] @ u for k in range(t))
    return powers[t] @ np.ones(n) + theta * ds, ds


def _run(net: InfluenceBalancing, params: dict, steps: int, batch: int = 2) -> torch.Tensor:
    state = net.init_state(params, batch=batch)
    x = torch.ones(batch, 1, dtype=params["theta"].dtype)
    for _ in range(steps):
        state, y = net.step(params, state, x)
    return state.s


@pytest.mark.parametrize("theta", [0.5, -0.3, 1.7])
@pytest.mark.parametrize("steps", [1, 2, 10, 60])
def test_state_matches_the_closed_form(theta, steps):
    net = InfluenceBalancing()
    params = {"theta": torch.tensor([theta], dtype=torch.float64)}
    s = _run(net, params, steps)
    expected, _ = _closed_form(steps, theta)
    np.testing.assert_allclose(s.numpy(), np.broadcast_to(expected, (2, 23)), rtol=1e-12, atol=1e-12)


def test_gradient_of_the_loss_matches_the_closed_form():
    net = InfluenceBalancing()
    theta = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    s = _run(net, {"theta": theta}, 25, batch=1)
    loss = 0.5 * (s[0, 0] - 1) ** 2
    (g,) = torch.autograd.grad(loss, theta)
    s_cf, ds_cf = _closed_form(25, 0.5)
    assert float(g) == pytest.approx((s_cf[0] - 1) * ds_cf[0], rel=1e-12)


def test_step_split_and_matrix():
    net = InfluenceBalancing(n_hidden=5, n_positive=2, theta0=0.25)
    params = net.init_params(dtype=torch.float64)
    state = net.State(s=torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    i = net.current(params, state, torch.zeros(3, 1, dtype=torch.float64))
    u = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(i, state.s @ net.A().T + 0.25 * u)
    new, z = net.neuron(params, state, i)
    assert torch.equal(new.s, i) and torch.equal(z, i)
    _, y = net.readout(params, new, z)
    assert torch.equal(y, i[:, :1])


def test_params_are_deterministic_and_checked():
    net = InfluenceBalancing()
    assert net.param_shapes() == {"theta": (1,)}
    p32, p64 = net.init_params(seed=0), net.init_params(seed=7, dtype=torch.float64)
    assert p32["theta"].dtype == torch.float32 and p64["theta"].dtype == torch.float64
    assert float(p32["theta"]) == float(p64["theta"]) == 0.5
    net.check_params(p32)
    state = net.init_state(p64, batch=4)
    assert state.s.shape == (4, 23) and state.s.dtype == torch.float64 and (state.s == 1).all()


@pytest.mark.parametrize("kw, message", [
        (dict(n_out=2), r"n_out=2 is invalid"),
    (dict(n_positive=24), r"n_positive=24 is invalid: must be <= n_hidden=23"),
    (dict(theta0=float("nan")), r"theta0=nan is invalid"),
])
def test_invalid_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        InfluenceBalancing(**kw)


def test_registered_and_built_by_the_task():
    models.register(InfluenceBalancing)  # idempotent; models/__init__.py may already do it
    assert "influence-balancing" in models.available()
    net = models.make("influence-balancing", n_in=1, n_hidden=23, n_out=1)
    assert net == InfluenceBalancing() == models.make("influence-balancing", **neuro.tasks.make("influence-balancing").model_options())
    small = models.make("influence-balancing", **neuro.tasks.make("influence-balancing", n_units=4, n_positive=1, theta0=0.1).model_options())
    assert (small.n_hidden, small.n_positive, small.theta0) == (4, 1, 0.1)
