"""Leaky tanh rate RNN against a numpy loop of its equation and, at alpha = 1, torch.nn.RNN."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import models

F64 = torch.float64


def run(net, params, xs):
    state = net.init_state(params, xs.shape[1])
    hs, ys = [], []
    with torch.no_grad():
        for x in xs:
            state, y = net.step(params, state, x)
            hs.append(state.h)
            ys.append(y)
    return torch.stack(hs), torch.stack(ys)


def random_params(net, seed):
    params = net.init_params(seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 100)
    params["b"] = torch.randn(net.n_hidden, generator=g, dtype=F64) * 0.3
    params["b_out"] = torch.randn(net.n_out, generator=g, dtype=F64)
    return params


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_rate_equals_a_numpy_loop(alpha):
    net = models.make("rate", n_in=4, n_hidden=16, n_out=3, alpha=alpha, g=1.3)
    params = random_params(net, 0)
    xs = torch.randn(80, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    p = {k: v.numpy() for k, v in params.items()}
    h = np.zeros((3, 16))
    h_ref, y_ref = [], []
    for x in xs.numpy():
        h = (1 - alpha) * h + alpha * np.tanh(x @ p["W_in"].T + h @ p["W_rec"].T + p["b"])
        h_ref.append(h)
        y_ref.append(h @ p["W_out"].T + p["b_out"])
    hs, ys = run(net, params, xs)
    np.testing.assert_allclose(hs.numpy(), np.stack(h_ref), rtol=0, atol=1e-13)
    np.testing.assert_allclose(ys.numpy(), np.stack(y_ref), rtol=0, atol=1e-13)
    assert float(hs.abs().mean()) > 0.1  # not a trivially quiet network


def test_alpha_one_equals_torch_rnn():
    n_in, n, T, B = 5, 12, 60, 3
    net = models.make("rate", n_in=n_in, n_hidden=n, n_out=2, alpha=1.0)
    params = random_params(net, 3)
    rnn = torch.nn.RNN(n_in, n, nonlinearity="tanh", dtype=F64)
    split = torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(params["W_in"])
        rnn.weight_hh_l0.copy_(params["W_rec"])
        rnn.bias_ih_l0.copy_(params["b"] - split)  # b_ih + b_hh = b
        rnn.bias_hh_l0.copy_(split)
    xs = torch.randn(T, B, n_in, dtype=F64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h_ref, _ = rnn(xs)
    hs, _ = run(net, params, xs)
    torch.testing.assert_close(hs, h_ref, rtol=0, atol=1e-13)


def test_initialisation_scales():
    """W_in ~ N(0, 1/n_in), W_rec ~ N(0, g^2/n), W_out ~ N(0, 1/n), biases 0 (the docstring)."""
    n_in, n, n_out, g = 300, 400, 200, 1.5
    p = models.make("rate", n_in=n_in, n_hidden=n, n_out=n_out, g=g).init_params(seed=0, dtype=F64)
    for k, std in (("W_in", 1 / math.sqrt(n_in)), ("W_rec", g / math.sqrt(n)), ("W_out", 1 / math.sqrt(n))):
        assert float(p[k].std()) == pytest.approx(std, rel=0.03), k
        assert abs(float(p[k].mean())) < 4 * std / math.sqrt(p[k].numel()), k
    assert not p["b"].any() and not p["b_out"].any()


@pytest.mark.parametrize("kw,shown", [({"alpha": 1.5}, "alpha=1.5"), ({"alpha": 0.0}, "alpha=0.0"),
                                      ({"alpha": -0.1}, "alpha=-0.1"), ({"g": -1.0}, "g=-1.0"),
                                      ({"alpha": "fast"}, "alpha='fast'")])
def test_invalid_hyper_parameters_raise_naming_the_value(kw, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        models.make("rate", n_in=1, n_hidden=2, n_out=1, **kw)
