"""The columnar network: each LSTM column is torch.nn.LSTMCell with hidden_size 1 (float64), the rate
column is its equation, and the columns are independent (a column's state ignores the others')."""

from __future__ import annotations

import re

import pytest
import torch

import models

F64 = torch.float64


def test_each_lstm_column_equals_a_torch_lstm_cell_of_one_unit():
    n_in, n, n_out, T, B = 3, 5, 2, 50, 2
    net = models.make("columnar", n_in=n_in, n_hidden=n, n_out=n_out, cell="lstm")
    params = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    params["b_out"] = torch.randn(n_out, generator=g, dtype=F64)
    cells = []
    for k in range(n):  # torch's gate order i, f, g, o is the column's: weight_ih [4, n_in], weight_hh [4, 1]
        cell = torch.nn.LSTMCell(n_in, 1, dtype=F64)
        split = torch.randn(4, generator=g, dtype=F64)
        with torch.no_grad():
            cell.weight_ih.copy_(params["W_in"][k])
            cell.weight_hh.copy_(params["w_rec"][k][:, None])
            cell.bias_ih.copy_(params["b"][k] - split)
            cell.bias_hh.copy_(split)
        cells.append(cell)
    xs = torch.randn(T, B, n_in, generator=g, dtype=F64) * 2.0
    state = net.init_state(params, B)
    ref = [(torch.zeros(B, 1, dtype=F64), torch.zeros(B, 1, dtype=F64)) for _ in range(n)]
    with torch.no_grad():
        for x in xs:
            state, y = net.step(params, state, x)
            ref = [cell(x, hc) for cell, hc in zip(cells, ref)]
            h_ref, c_ref = torch.cat([r[0] for r in ref], 1), torch.cat([r[1] for r in ref], 1)
            torch.testing.assert_close(state.h, h_ref, rtol=0, atol=1e-14)
            torch.testing.assert_close(state.c, c_ref, rtol=0, atol=1e-14)
            torch.testing.assert_close(y, h_ref @ params["W_out"].T + params["b_out"], rtol=0, atol=1e-14)
    assert float(c_ref.abs().max()) > 0.5  # the cell state is doing work


def test_rate_column_is_its_equation():
    net = models.make("columnar", n_in=3, n_hidden=4, n_out=2, cell="rate")
    p = net.init_params(seed=2, dtype=F64)
    g = torch.Generator().manual_seed(3)
    h0, x = torch.randn(2, 4, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    state, y = net.step(p, net.State(h=h0), x)
    h = torch.tanh(x @ p["W_in"][:, 0].T + h0 * p["w_rec"][:, 0] + p["b"][:, 0])
    torch.testing.assert_close(state.h, h, rtol=0, atol=1e-15)
    torch.testing.assert_close(y, h @ p["W_out"].T + p["b_out"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_columns_are_independent(cell):
    """d h_t,k / d h_{t-1,j} = 0 for j != k: the one-step state Jacobian is diagonal in the columns."""
    net = models.make("columnar", n_in=2, n_hidden=4, n_out=1, cell=cell)
    p = net.init_params(seed=0, dtype=F64)
    h0 = torch.randn(1, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = torch.ones(1, 2, dtype=F64)
    base = net.init_state(p, 1)._replace(h=h0)
    J = torch.func.jacrev(lambda h: net.step(p, base._replace(h=h), x)[0].h)(h0)[0, :, 0]  # [4, 4]
    assert torch.count_nonzero(J - torch.diag(torch.diagonal(J))) == 0
    assert torch.diagonal(J).abs().min() > 0


def test_shapes_state_and_init():
    net = models.make("columnar", n_in=3, n_hidden=5, n_out=2)
    assert net.cell == "lstm" and net.State._fields == ("h", "c")
    assert net.param_shapes() == {"W_in": (5, 4, 3), "w_rec": (5, 4), "b": (5, 4), "W_out": (2, 5), "b_out": (2,)}
    p = net.init_params(seed=0, dtype=F64)
    assert p["W_in"].abs().max() <= 1 and p["W_in"].abs().max() > 0.5  # U(-1, 1): torch.nn.LSTM, hidden_size 1
    assert (p["b"][:, 1] >= 0).all()  # forget bias 1 added
    rate = models.make("columnar", n_in=3, n_hidden=5, n_out=2, cell="rate")
    assert rate.State._fields == ("h",) and rate.param_shapes()["W_in"] == (5, 1, 3)
    assert type(rate.init_state(rate.init_params())) is rate.State


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=re.escape("cell='gru' is invalid: valid choices are 'lstm', 'rate'")):
        models.make("columnar", n_in=1, n_hidden=2, n_out=1, cell="gru")
    with pytest.raises(ValueError, match="forget_bias=nan"):
        models.make("columnar", n_in=1, n_hidden=2, n_out=1, forget_bias=float("nan"))
