"""Constructive RTRL: the oracles (float64).

* The summed estimate over a sequence, parameters frozen, equals BPTT's gradient restricted to the
  learning stage's parameters and the readout, and is exactly zero elsewhere, to 1e-10 relative, for LSTM
  and rate cells, the constructive (1 per stage), CCN and columnar layouts, the first and a later stage,
  mse and ce, batch 2, a mask.
* Its traces hold B * S_c * (parameters of the learning stage) numbers.
* The fast path (:mod:`neuro.rules._fast.constructive`, written-out Jacobians, the default) gives the same
  estimate as the definition (``fast=False``, ``torch.func``) at every step, to 1e-12 relative, and does
  not call ``torch.func``.
* ``schedule`` parses "total:per-stage:steps-per-stage" and names what is wrong in a bad spec.
* It refuses a network that is not constructive.
"""

from __future__ import annotations

import re

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules import Needs
from neuro.rules._fast.constructive import ConstructiveTraces
from neuro.rules.constructive import schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HID, N_OUT = 3, 6, 2
F64 = torch.float64
TOL = 1e-10
READOUT = ("W_out", "b_out")


def _case(cell, per_stage, stage, T=20, B=2, loss="mse", seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = models.make("constructive", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, per_stage=per_stage,
                      stage=stage, cell=cell)
    params = net.init_params(seed=seed + 1, dtype=F64)
    params["b_out"] = 0.1 * torch.randn(N_OUT, generator=gen, dtype=F64)
    xs = torch.randn(T, B, N_IN, generator=gen, dtype=F64)
    if loss == "mse":
        ys = torch.randn(T, B, N_OUT, generator=gen, dtype=F64)
    else:
        ys = torch.nn.functional.one_hot(torch.randint(0, N_OUT, (T, B), generator=gen), N_OUT).to(F64)
    mask = torch.rand(T, B, generator=gen) < 0.7
    return net, params, xs, ys, mask


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("per_stage,stage", [(1, 0), (1, 3), (2, 2), (3, 1), (6, 0)])
@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_constructive_equals_bptt_on_the_learning_stage(cell, per_stage, stage, loss):
    net, params, xs, ys, mask = _case(cell, per_stage, stage, loss=loss)
    assert not mask.all() and xs.shape[1] == 2
    got = neuro.grad_estimate(net, params, "constructive", xs, ys, loss=loss, mask=mask)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss, mask=mask)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in params.items()}
    sl = net.stage_columns(stage)
    for k in params:
        if k in READOUT:
            scale = ref[k].abs().max()
            assert scale > 0
            assert (got[k] - ref[k]).abs().max() / scale < TOL, k
            continue
        learn = torch.zeros_like(ref[k], dtype=torch.bool)
        learn[sl] = True
        if k == "W_ff" and sl.start == 0:  # stage 0 reads no earlier column: W_ff is masked out
            assert (ref[k][learn] == 0).all()
        else:
            scale = ref[k][learn].abs().max()
            assert scale > 0, f"BPTT's gradient of {k} is zero: the comparison would be vacuous"
            assert (got[k] - ref[k])[learn].abs().max() / scale < TOL, k
        assert (got[k][~learn] == 0).all(), f"{k}: frozen or inactive stages must get a zero estimate"
        if sl.start > 0 and k != "W_ff":  # frozen stages (stage 0 has no W_ff): BPTT's full gradient is nonzero there, the estimate drops it
            assert ref[k][:sl.start].abs().max() > 0


def test_chunked_estimate_equals_bptt_over_the_whole_sequence():
    T, chunk = 24, 8
    net, params, xs, ys, mask = _case("lstm", 2, 1, T=T)
    rule = rules.make("constructive", net)
    state = rule.init(params, xs.shape[1])
    total = rules.zeros_like_params(params)
    for c in range(0, T, chunk):
        for t in range(c, c + chunk):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            rules.add_into(total, out.grad)
        state, last = rule.finish(params, state)
        assert last is None
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    sl = net.stage_columns(1)
    for k in ("W_in", "W_ff", "w_rec", "b"):
        torch.testing.assert_close(total[k][sl], ref[k][sl], rtol=1e-10, atol=1e-12)
    for k in READOUT:
        torch.testing.assert_close(total[k], ref[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell,s_c", [("lstm", 2), ("rate", 1)])
def test_traces_hold_the_learning_stage_only(cell, s_c):
    net, params, *_ = _case(cell, 2, 2)
    rule = rules.make("constructive", net)
    state = rule.init(params, 2)
    G = net.n_gates
    q = G * (N_IN + 4 + 2)  # W_in, W_ff over the 4 columns of stages 0-1, w_rec, b
    assert state.M.shape == (2, s_c, 2, G, q // G) and rule.memory_numel(params, 2) == state.M.numel()
    slow = rules.make("constructive", net, fast=False).init(params, 2)
    assert slow.M.shape == (2, 2, s_c, q)


def test_reset_clears_the_traces():
    net, params, xs, ys, mask = _case("lstm", 1, 2, T=3)
    rule = rules.make("constructive", net)
    state = rule.init(params, 2)
    for t in range(3):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
    assert state.M.abs().max() > 0 and not state.M.requires_grad
    fresh = rule.reset(params, state)
    assert fresh.M.abs().max() == 0 and fresh.net.h.abs().max() == 0


def test_schedule_parses_and_names_bad_specs():
    assert schedule("20:4:10000") == (20, 4, 10000)
    assert schedule("10:1:5") == (10, 1, 5) and schedule("7:7:1") == (7, 7, 1)
    for spec, msg in [("20:4", "expected three integers"), ("20:4:10:1", "expected three integers"),
                      ("20:x:10", "per-stage='x' must be a positive integer"),
                      ("0:1:10", "total='0' must be a positive integer"),
                      ("20:4:-5", "steps-per-stage='-5' must be a positive integer"),
                      ("20:3:10", "total=20 is not a multiple of per-stage=3"), (20, "expected a string")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            schedule(spec)


def test_declaration_and_refusal_of_other_models():
    assert rules.get("constructive").needs is Needs.JACOBIAN
    assert rules.get("constructive").supports == ("constructive",)
    for name in ("rate", "lstm", "columnar"):
        net = models.make(name, n_in=2, n_hidden=3, n_out=1)
        with pytest.raises(ValueError, match=re.escape(
                f"rule 'constructive' does not support model {name!r}: it supports constructive")):
            rules.make("constructive", net)


@pytest.mark.parametrize("loss", ["mse", "ce", "value"])
@pytest.mark.parametrize("per_stage,stage", [(1, 3), (2, 0), (2, 2), (6, 0)])
@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_fast_path_equals_the_torch_func_path_at_every_step(cell, per_stage, stage, loss, monkeypatch):
    net, params, xs, ys, mask = _case(cell, per_stage, stage, T=12, loss="ce" if loss == "ce" else "mse")
    fast, slow = rules.make("constructive", net, loss=loss), rules.make("constructive", net, loss=loss, fast=False)
    assert isinstance(fast.fast_path, ConstructiveTraces) and slow.fast_path is None
    sf, ss = fast.init(params, 2), slow.init(params, 2)
    for t in range(xs.shape[0]):
        of, os_ = fast.step(params, sf, xs[t], ys[t], mask[t]), slow.step(params, ss, xs[t], ys[t], mask[t])
        sf, ss = of.state, os_.state
        torch.testing.assert_close(of.y, os_.y, rtol=1e-12, atol=1e-14)
        for k in params:
            torch.testing.assert_close(of.grad[k], os_.grad[k], rtol=1e-10, atol=1e-12)
    assert max(float(g.abs().max()) for g in of.grad.values()) > 0
    # the traces themselves: the same numbers in another layout ([B, S_c, m, G, F] vs [B, m, S_c, q])
    F = sf.M.shape[-1]
    lo = net.stage_columns(stage).start
    perm = sf.M.permute(0, 2, 1, 3, 4)  # [B, m, S_c, G, F]
    packed = torch.cat([perm[..., :N_IN].reshape(*perm.shape[:3], -1), perm[..., N_IN:N_IN + lo].reshape(*perm.shape[:3], -1),
                        perm[..., F - 2], perm[..., F - 1]], -1)
    torch.testing.assert_close(packed, ss.M, rtol=1e-10, atol=1e-12)
    # no torch.func on the fast path
    import neuro.rules.constructive as mod

    monkeypatch.setattr(mod, "jacrev", None)
    monkeypatch.setattr(torch.func, "grad", None)
    fast.step(params, sf, xs[0], ys[0], mask[0])
    with pytest.raises(TypeError):  # the patch bites: the reference path calls it
        slow.step(params, ss, xs[0], ys[0], mask[0])
