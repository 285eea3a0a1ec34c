"""The compiled engine on the LSTM: its cell (neuro.engine.lstm) against the model's torch step and autograd, and
what the REGISTRY oracle (test_engine.py) leaves out for the LSTM engines: float32, TBPTT windows cut at chunk
ends with updates inside them, RTRL's influence matrix wider than one column block, UORO with several rank-one
pairs per sample and with an update at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from neuro import rules, tasks
from neuro.engine import lstm as L
from neuro.training import train


def test_the_cell_step_tangent_and_cotangent_equal_the_model_and_autograd():
    net = models.make("lstm", n_in=3, n_hidden=5, n_out=2)
    p = net.init_params(seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    h, c, dc_prev, dh, dc = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(5))
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    state = net.State(h=h, c=c)
    u = net.current(p, state, x)
    du = torch.randn(u.shape, generator=g, dtype=torch.float64)
    new, _ = net.neuron(p, state, u)
    h_new, c_new = np.empty((2, 5)), np.empty((2, 5))
    L.lstm_step(*(p[k].numpy() for k in ("W_in", "W_rec", "b")), x.numpy(), h.numpy(), c.numpy(), h_new, c_new)
    np.testing.assert_allclose(h_new, new.h.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(c_new, new.c.numpy(), rtol=1e-13, atol=1e-15)

    def cell(u: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, _ = net.neuron(p, net.State(h=h, c=c), u)
        return s.c, s.h
    _, (tan_c, tan_h) = torch.func.jvp(cell, (u, c), (du, dc_prev))
    _, pull = torch.func.vjp(cell, u, c)
    cot_u, cot_c = pull((dc, dh))
    n = 5
    for s in range(2):
        for a in range(n):
            i, f, gg, o = L.activate(*(u[s, q * n + a].item() for q in range(4)), 1.0)
            d = L.derivatives(i, f, gg, o, c[s, a].item(), np.tanh(c_new[s, a]), 1.0)
            assert L.tangent(d, f, *(du[s, q * n + a].item() for q in range(4)), dc_prev[s, a].item()) == \
                pytest.approx((tan_c[s, a].item(), tan_h[s, a].item()), rel=1e-12, abs=1e-14)
            assert L.cotangent(d, f, dh[s, a].item(), dc[s, a].item()) == pytest.approx(
                [cot_u[s, q * n + a].item() for q in range(4)] + [cot_c[s, a].item()], rel=1e-12, abs=1e-14)


def _both(rule: object, net: object, task: object, steps: int, **settings: object) -> dict[str, object]:
    return {e: train(net, rule, task, steps, progress=False, engine=e, **settings) for e in ("torch", "compiled")}


@pytest.mark.parametrize("name", ["bptt", "tbptt", "rtrl", "uoro"])
def test_float32_runs_compiled_close_to_torch(name):
    task = tasks.make("sine")
    net = models.make("lstm", n_in=1, n_hidden=8, n_out=1)
    h = _both(rules.make(name, net), net, task, 40, chunk=20, update_every=3, dtype="float32")
    assert h["compiled"].engine == "compiled"
    for k, p in h["torch"].params.items():
        assert h["compiled"].params[k].dtype == torch.float32
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-4, atol=1e-5)
    assert h["compiled"].metrics[-1]["loss"] == pytest.approx(h["torch"].metrics[-1]["loss"], rel=1e-4)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_tbptt_windows_cut_at_chunk_ends_and_updates_inside_them(opt):
    """k = 7 on chunks of 20 (each chunk's last window cut short by its end), updates every 3 steps, ranges of 9
    steps ending inside windows, batch 2: the torch path's numbers to 1e-10 in float64."""
    task = tasks.make("sine")
    net = models.make("lstm", n_in=1, n_hidden=6, n_out=1)
    h = _both(rules.make("tbptt", net, k=7), net, task, 60, chunk=20, update_every=3, log_every=9, batch=2,
              optimizer=opt, dtype="float64", lr=0.05)
    assert h["compiled"].engine == "compiled" and h["compiled"].updates == h["torch"].updates == 9
    for k, p in h["torch"].params.items():
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-10, atol=1e-13)
    for a, b in zip(h["torch"].metrics, h["compiled"].metrics):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-10, abs=1e-13)


def test_rtrl_with_an_influence_matrix_of_several_column_blocks_equals_torch():
    """n = 10: P = 491 columns, two blocks of :data:`neuro.engine.lstm_rtrl.BLOCK`; batch 2, Adam, the rule state
    (``M``, ``h``, ``c``) too."""
    from neuro.engine.lstm_rtrl import BLOCK

    task = tasks.make("sine")
    net = models.make("lstm", n_in=1, n_hidden=10, n_out=1)
    h = _both(rules.make("rtrl", net), net, task, 30, chunk=15, update_every=4, batch=2, dtype="float64", lr=0.05)
    assert h["compiled"].engine == "compiled" and 2 * BLOCK > 491 > BLOCK
    for k, p in h["torch"].params.items():
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-10, atol=1e-13)
    for a, b in zip(h["torch"].metrics, h["compiled"].metrics):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-10, abs=1e-13)


def test_uoro_with_two_pairs_a_sample_equals_torch():
    """``samples=2``: the pairs sample-major, their estimates averaged, the signs drawn as the torch path draws
    them; batch 2."""
    task = tasks.make("sine")
    net = models.make("lstm", n_in=1, n_hidden=5, n_out=1)
    h = _both(rules.make("uoro", net, samples=2), net, task, 30, chunk=15, update_every=4, batch=2, dtype="float64",
              lr=0.05)
    assert h["compiled"].engine == "compiled"
    for k, p in h["torch"].params.items():
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-10, atol=1e-13)
    for a, b in zip(h["torch"].metrics, h["compiled"].metrics):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_uoro_updating_at_every_step_equals_torch(opt):
    """``update_every=1``: with Adam, ``W_rec``'s rows are updated within the pass over ``Theta`` and, after an
    update, its estimate summed in a scratch row; held to the torch path."""
    task = tasks.make("sine")
    net = models.make("lstm", n_in=1, n_hidden=5, n_out=1)
    h = _both(rules.make("uoro", net), net, task, 30, chunk=15, update_every=1, batch=2, optimizer=opt,
              dtype="float64", lr=0.05)
    assert h["compiled"].engine == "compiled" and h["compiled"].updates == h["torch"].updates == 30
    for k, p in h["torch"].params.items():
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-10, atol=1e-13)
