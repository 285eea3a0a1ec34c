"""The floor of neuro.engine.floor: the rate RNN's step, readout, loss and an SGD update of every parameter,
compiled, held to the same steps in torch (float64); and its measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from neuro import tasks
from neuro.engine import floor


@pytest.mark.parametrize("optimizer", floor.OPTIMIZERS)
def test_floor_range_equals_the_torch_steps(optimizer):
    task = tasks.make("sine")
    net = models.make("rate", n_in=task.n_in, n_hidden=5, n_out=task.n_out, alpha=0.5)
    params = net.init_params(0, dtype=torch.float64)
    order = ("W_in", "W_rec", "b", "W_out", "b_out")
    ps = tuple(params[k].clone().numpy().reshape(-1) for k in order)
    gs = tuple(np.linspace(-1, 1, p.size) for p in ps)
    seq = next(task.stream(seed=0, batch=2, chunk=6))
    xs, ys, mask = (t.to(torch.float64).contiguous().numpy() for t in (seq.xs, seq.ys, seq.mask))
    h, losses = np.zeros((2, 5)), np.empty(6)
    ms, vs = tuple(np.zeros_like(a) for a in ps), tuple(np.zeros_like(a) for a in ps)
    counts = tuple(np.zeros(1) for _ in ps)
    floor.floor_range(ps, gs, ms, vs, counts, optimizer == "adam", 0.1, 0.5, 1, 5, 1, h, xs, ys, mask, losses)
    p = {k: v.clone() for k, v in params.items()}
    leaves = [p[k] for k in order]
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(leaves, lr=0.1)
    state = net.init_state(p, batch=2)
    for t in range(6):
        state, hid = net.neuron(p, state, net.current(p, state, seq.xs[t].double()))
        e = hid @ p["W_out"].mT + p["b_out"] - seq.ys[t].double()
        assert losses[t] == pytest.approx(float((0.5 * (e * e).sum(1) * seq.mask[t]).sum() / 2), rel=1e-12)
        for leaf, g in zip(leaves, gs):
            leaf.grad = torch.from_numpy(g).reshape(leaf.shape)
        opt.step()
    np.testing.assert_allclose(h, state.h.numpy(), rtol=1e-12)
    for k, a in zip(order, ps):
        np.testing.assert_allclose(a, p[k].reshape(-1).numpy(), rtol=1e-12)


def test_measure_gives_steps_per_second():
    assert floor.measure(4, steps=200, chunk=50) > 0
    assert floor.measure(4, steps=200, chunk=50, optimizer="adam") > 0
    with pytest.raises(ValueError, match="optimizer='lbfgs' is invalid: expected one of sgd, adam"):
        floor.measure(4, optimizer="lbfgs")
