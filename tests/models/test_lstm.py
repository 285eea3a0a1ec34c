"""LSTM against torch.nn.LSTMCell (gate order i, f, g, o), float64, over a random sequence."""

from __future__ import annotations

import math
import re

import pytest
import torch

import models

F64 = torch.float64


def test_lstm_equals_torch_lstm_cell():
    n_in, n, n_out, T, B = 5, 9, 2, 60, 3
    net = models.make("lstm", n_in=n_in, n_hidden=n, n_out=n_out)
    params = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    params["b_out"] = torch.randn(n_out, generator=g, dtype=F64)
    cell = torch.nn.LSTMCell(n_in, n, dtype=F64)
    split = torch.randn(4 * n, generator=g, dtype=F64)
    with torch.no_grad():
        cell.weight_ih.copy_(params["W_in"])
        cell.weight_hh.copy_(params["W_rec"])
        cell.bias_ih.copy_(params["b"] - split)  # b_ih + b_hh = b
        cell.bias_hh.copy_(split)
    xs = torch.randn(T, B, n_in, generator=g, dtype=F64) * 2.0
    state = net.init_state(params, B)
    h_ref = c_ref = torch.zeros(B, n, dtype=F64)
    with torch.no_grad():
        for x in xs:
            state, y = net.step(params, state, x)
            h_ref, c_ref = cell(x, (h_ref, c_ref))
            torch.testing.assert_close(state.h, h_ref, rtol=0, atol=1e-14)
            torch.testing.assert_close(state.c, c_ref, rtol=0, atol=1e-14)
            torch.testing.assert_close(y, h_ref @ params["W_out"].T + params["b_out"], rtol=0, atol=1e-14)
    assert float(c_ref.abs().max()) > 0.5  # the cell state is doing work


def test_gate_order_is_i_f_g_o():
    """Open one gate block at a time and read its effect off c and h (c_{t-1} = 0.5, g = 1 otherwise)."""
    n = 3
    net = models.make("lstm", n_in=1, n_hidden=n, n_out=1)
    p = net.init_params(dtype=F64)
    state = net.init_state(p)._replace(c=torch.full((1, n), 0.5, dtype=F64))
    big, s, tg = 40.0, 0.5, math.tanh(1.0)  # sigma(big) = 1 to 1e-17, sigma(0) = 0.5

    def after(block):
        pre = torch.zeros(4, n, dtype=F64)
        pre[2] = 1.0
        pre[block] = big
        new, h = net.neuron(p, state, pre.reshape(1, 4 * n))
        return float(new.c[0, 0]), float(h[0, 0])

    expected = {  # block: (c, h)
        0: (s * 0.5 + 1 * tg, s * math.tanh(s * 0.5 + tg)),        # input gate
        1: (1 * 0.5 + s * tg, s * math.tanh(0.5 + s * tg)),        # forget gate
        2: (s * 0.5 + s * 1.0, s * math.tanh(s * 0.5 + s)),        # candidate g
        3: (s * 0.5 + s * tg, 1 * math.tanh(s * 0.5 + s * tg)),    # output gate
    }
    for block, (c, h) in expected.items():
        assert after(block) == pytest.approx((c, h), rel=1e-14), block


def test_initialisation_is_torchs_with_forget_bias():
    n, n_in = 50, 7
    net = models.make("lstm", n_in=n_in, n_hidden=n, n_out=1, forget_bias=1.0)
    p = net.init_params(seed=0, dtype=F64)
    k = 1 / math.sqrt(n)
    for key in ("W_in", "W_rec"):
        assert float(p[key].abs().max()) <= k and float(p[key].abs().max()) > 0.9 * k
    b = p["b"].reshape(4, n)
    assert float(b[[0, 2, 3]].abs().max()) <= k
    assert float((b[1] - 1.0).abs().max()) <= k and float(b[1].mean()) == pytest.approx(1.0, abs=3 * k / math.sqrt(n))


@pytest.mark.parametrize("fb", [float("inf"), "one", None])
def test_invalid_forget_bias_raises_naming_the_value(fb):
    with pytest.raises(ValueError, match=re.escape(f"forget_bias={fb!r}")):
        models.make("lstm", n_in=1, n_hidden=2, n_out=1, forget_bias=fb)
