"""Columnar RTRL: the oracles (float64).

* The summed estimate over a sequence, parameters frozen, equals BPTT's gradient and RTRL's (the full
  influence matrix) to 1e-10 relative, for LSTM and rate columns, mse and ce, batch 2, a mask; also
  across chunked windows with the state carried.
* Its traces hold B * S_c * (p - readout) numbers (O(p)), not RTRL's B * S * P.
* The fast paths (:mod:`neuro.rules._fast.columnar`, the default: the compiled step, and the written-out
  Jacobians in torch with ``kernel=False``) give the same estimate and traces as the definition
  (``fast=False``, ``torch.func``) at every step, to 1e-10 relative (batch 1 and 2, a mask), with flushes
  at odd steps.
* The compiled step (``kernel=True``, numba) gives the estimate, loss, output and state of the written-out
  torch path (``kernel=False``) at every step over 21 steps: float64 to 1e-12 relative, float32 to 1e-5,
  LSTM and rate columns, batch 1 and 2, a mask, mse / ce / value, flushes at odd steps; the previous
  state is left as it was (a snapshot); a loss it does not write out (a float mask) falls back to torch.
* Which path runs: the compiled step by default, the torch one with ``kernel=False``, the definition with
  ``fast=False``; the definition's traces are [B, n, S_c, q].
* It refuses a network that is not columnar, naming the model, and a non-bool ``fast`` / ``kernel``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

import models
import neuro
from neuro import rules
from neuro.losses import grad as output_error
from neuro.rules import Needs
from neuro.rules._fast.columnar import ColumnarKernel, ColumnarTraces

from _helpers import rel_err as _rel

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HID, N_OUT = 3, 5, 2
F64 = torch.float64
TOL = 1e-10


def _case(cell: str, T: int = 25, B: int = 2, loss: str = "mse", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = models.make("columnar", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, cell=cell)
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
@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_columnar_equals_bptt_and_rtrl(cell, loss):
    net, params, xs, ys, mask = _case(cell, loss=loss)
    assert not mask.all() and xs.shape[1] == 2
    got = neuro.grad_estimate(net, params, "columnar", xs, ys, loss=loss, mask=mask)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss, mask=mask)
    full = neuro.grad_estimate(net, params, "rtrl", xs, ys, loss=loss, mask=mask)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in params.items()}
    assert _rel(got, ref) < TOL
    assert _rel(got, full) < TOL


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_chunked_columnar_equals_bptt_over_the_whole_sequence(cell):
    T, chunk = 30, 10
    net, params, xs, ys, mask = _case(cell, T=T)
    rule = rules.make("columnar", net)
    state = rule.init(params, xs.shape[1])
    total = rules.zeros_like_params(params)
    for c in range(0, T, chunk):  # as neuro.train streams a continuing task: finish at each chunk end, no reset
        for t in range(c, c + chunk):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            rules.add_into(total, out.grad)
        state, last = rule.finish(params, state)
        assert last is None
    whole = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert _rel(total, whole) < TOL
    truncated = neuro.grad_estimate(net, params, "tbptt", xs, ys, mask=mask, k=chunk)
    assert _rel(truncated, whole) > 1e-3, "tbptt over the same chunks should be biased (the test would be vacuous)"


@pytest.mark.parametrize("cell,s_c", [("lstm", 2), ("rate", 1)])
def test_traces_are_o_of_p_not_s_times_p(cell, s_c):
    B = 2
    sizes = []
    for n in (4, 8, 16):
        net = models.make("columnar", n_in=N_IN, n_hidden=n, n_out=N_OUT, cell=cell)
        params = net.init_params(dtype=F64)
        p = net.n_params(params)
        p_cols = p - params["W_out"].numel() - params["b_out"].numel()
        state = rules.make("columnar", net).init(params, B)
        numel = state.M.numel() + sum(t.numel() for t in state.net)  # every tensor of the rule state
        assert state.M.shape == (B, s_c, n, net.n_gates, N_IN + 2)  # fast path's layout
        assert state.M.numel() == B * s_c * p_cols  # the block diagonal of ds/dtheta only
        S = sum(t.numel() for t in state.net) // B
        assert numel < B * S * p / 2  # far below RTRL's [B, S, P] influence matrix
        sizes.append((p, numel))
    # doubling the columns doubles p and the state (up to the readout), linear not quadratic
    (p1, m1), (p2, m2), (p3, m3) = sizes
    assert m3 / m1 == pytest.approx(4.0, rel=0.01) and p3 / p1 == pytest.approx(4.0, rel=0.2)


def test_state_is_carried_and_reset_clears_it():
    net, params, xs, ys, mask = _case("lstm", T=3)
    rule = rules.make("columnar", net)
    state = rule.init(params, 2)
    for t in range(3):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
    assert state.M.abs().max() > 0 and not state.M.requires_grad
    fresh = rule.reset(params, state)
    assert fresh.M.abs().max() == 0 and fresh.net.h.abs().max() == 0


def test_declaration_and_refusal_of_other_models():
    assert rules.get("columnar").needs is Needs.JACOBIAN
    assert rules.get("columnar").supports == ("columnar",)
    for name in ("rate", "lstm"):
        net = models.make(name, n_in=2, n_hidden=3, n_out=1)
        with pytest.raises(ValueError, match=re.escape(
                f"rule 'columnar' does not support model {name!r}: it supports columnar")):
            rules.make("columnar", net)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("loss", ["mse", "ce", "value"])
@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_fast_path_equals_the_torch_func_path_at_every_step(cell, loss, B, kernel):
    net, params, xs, ys, mask = _case(cell, T=15, B=B, loss="ce" if loss == "ce" else "mse")
    fast = rules.make("columnar", net, loss=loss, kernel=kernel)
    slow = rules.make("columnar", net, loss=loss, fast=False)
    assert slow.fast_path is None and isinstance(fast.fast_path, ColumnarTraces)
    sf, ss = fast.init(params, B), slow.init(params, B)
    for t in range(xs.shape[0]):
        of, os_ = fast.step(params, sf, xs[t], ys[t], mask[t]), slow.step(params, ss, xs[t], ys[t], mask[t])
        sf, ss = of.state, os_.state
        if t % 3 == 1:  # flush at odd steps: nothing is held back, nothing changes
            sf, g = fast.flush(params, sf)
            assert g is None
        for k in params:
            torch.testing.assert_close(of.grad[k], os_.grad[k], rtol=1e-10, atol=1e-12)
    assert float(of.grad["W_in"].abs().max()) > 0
    G = net.n_gates
    perm = sf.M.permute(0, 2, 1, 3, 4)  # [B, n, S_c, G, F]
    packed = torch.cat([perm[..., :N_IN].reshape(*perm.shape[:3], -1), perm[..., N_IN], perm[..., N_IN + 1]], -1)
    torch.testing.assert_close(packed, ss.M, rtol=1e-10, atol=1e-12)
    assert G == (4 if cell == "lstm" else 1)


def _max_rel(got: Tensor, ref: Tensor, scale: float | None = None) -> float:
    """Max-abs difference / ``scale`` (the max-abs of the reference by default; 0 where both are zero)."""
    diff, scale = float((got - ref).abs().max()), float(ref.abs().max()) if scale is None else scale
    return diff / scale if scale > 0 else diff


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("loss", ["mse", "ce", "value"])
@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_kernel_equals_the_torch_fast_path_at_every_step(cell, loss, B, dtype, tol):
    pytest.importorskip("numba")
    net, params, xs, ys, mask = _case(cell, T=21, B=B, loss="ce" if loss == "ce" else "mse")
    params, xs, ys = {k: v.to(dtype) for k, v in params.items()}, xs.to(dtype), ys.to(dtype)
    assert not mask.all()
    kern, torch_ = rules.make("columnar", net, loss=loss), rules.make("columnar", net, loss=loss, kernel=False)
    assert isinstance(kern.fast_path, ColumnarKernel) and type(torch_.fast_path) is ColumnarTraces
    sk, st = kern.init(params, B), torch_.init(params, B)
    largest = 0.0
    for t in range(xs.shape[0]):
        assert kern.fast_path.applies(params, sk, xs[t])  # the compiled path runs, not the fallback
        before = [u.clone() for u in (sk.M, *sk.net)]
        ok, ot = kern.step(params, sk, xs[t], ys[t], mask[t]), torch_.step(params, st, xs[t], ys[t], mask[t])
        assert all(torch.equal(u, v) for u, v in zip(before, (sk.M, *sk.net)))  # the old state is a snapshot
        sk, st = ok.state, ot.state
        if t % 2 == 1:  # flush at odd steps: nothing is held back
            sk, g = kern.flush(params, sk)
            assert g is None
        # b_out = sum_b e_b cancels across the batch (ce): measured against the terms' scale sum_b |e_b|
        e_scale = float(output_error(loss, ot.y, ys[t], mask[t]).abs().sum(0).max())
        for k in params:
            assert ok.grad[k].dtype == dtype and ok.grad[k].shape == params[k].shape
            assert _max_rel(ok.grad[k], ot.grad[k], e_scale if k == "b_out" else None) < tol, (t, k)
        assert _max_rel(ok.y, ot.y) < tol
        # the loss relative to its terms' scale (value's sum of outputs cancels: float32 rounds differently)
        assert abs(float(ok.loss - ot.loss)) < tol * (abs(float(ot.loss)) + float(ot.y.abs().sum()))
        assert ok.loss.shape == ot.loss.shape == () and not ok.y.requires_grad
        assert _max_rel(sk.M, st.M) < tol
        for u, v in zip(sk.net, st.net):
            assert _max_rel(u, v) < tol
        largest = max(largest, float(ok.grad["W_in"].abs().max()))
    assert largest > 0 and float(sk.M.abs().max()) > 0  # not a comparison of zeros


def test_kernel_falls_back_to_torch_for_a_float_mask_and_mixed_dtypes():
    pytest.importorskip("numba")
    net, params, xs, ys, mask = _case("lstm", T=6, B=2)
    kern, torch_ = rules.make("columnar", net), rules.make("columnar", net, kernel=False)
    sk, st = kern.init(params, 2), torch_.init(params, 2)
    for t in range(xs.shape[0]):
        m = 0.5 + 0.5 * mask[t].to(F64)  # a weighted mask: the loss is written by torch, the rest compiled
        ok, ot = kern.step(params, sk, xs[t], ys[t], m), torch_.step(params, st, xs[t], ys[t], m)
        sk, st = ok.state, ot.state
        assert max(_max_rel(ok.grad[k], ot.grad[k]) for k in params) < 1e-12
        assert _max_rel(ok.loss, ot.loss) < 1e-12 and float(ok.loss) > 0
    assert not kern.fast_path.applies(params, sk, xs[0].float())  # mixed dtypes: the torch fast path


@pytest.mark.parametrize("field", ["fast", "kernel"])
def test_fast_and_kernel_must_be_bools(field):
    net = models.make("columnar", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match=f"{field}='yes' is invalid: expected True or False"):
        rules.make("columnar", net, **{field: "yes"})


def test_which_path_runs():
    net, params, xs, ys, mask = _case("rate", T=2, B=1)
    slow = rules.make("columnar", net, fast=False)
    assert slow.fast_path is None and slow.init(params, 1).M.shape == (1, N_HID, 1, N_IN + 2)
    assert type(rules.make("columnar", net, kernel=False).fast_path) is ColumnarTraces
    pytest.importorskip("numba")
    assert type(rules.make("columnar", net).fast_path) is ColumnarKernel
