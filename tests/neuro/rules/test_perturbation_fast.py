"""The node rules' fast path (``neuro.rules._fast.node``) against their definition (``neuro.rules.node``).

* The pair (the clean and noisy passes with their products shared) gives the numbers of two
  ``TorchForward`` calls, on every model it covers, and is used only where it applies.
* The fast path (the pair, a window of steps summed as one matrix product, flushes inside a window) gives
  the definition's (``fast=False``) outputs, losses and summed estimates in float64.
* The window holds copies of a step's inputs; its matrix product is the sum of the rows' outer products.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules._fast.node import Pair, pair_applies
from neuro.rules.node import TorchForward, node_noise, repeat

pytestmark = pytest.mark.usefixtures("one_thread")

T, B = 10, 2


@pytest.fixture(scope="module")
def rate():
    net = models.make("rate", n_in=3, n_hidden=6, n_out=2, g=0.8)
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(T, B, 2, generator=g, dtype=torch.float64)
    return net, params, xs, ys


def run_rule(rule, params, xs, ys, seed=0, mask=None):
    """The estimate summed over the sequence (parameters frozen, the pending window included)."""
    mask = torch.ones(xs.shape[:2], dtype=torch.bool) if mask is None else mask
    state = rule.init(params, xs.shape[1], seed)
    total = rules.zeros_like_params(params)
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(params, state, x, y, m)
        state = out.state
        rules.add_into(total, out.grad)
    return rules.add_into(total, rule.finish(params, state)[1])


@pytest.mark.parametrize("model", ["rate", "lstm", "lif", "alif"])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("batch,samples", [(1, 1), (1, 3), (2, 2)])
def test_the_pair_forward_equals_two_passes(model, keep, batch, samples):
    """float64: the fast path's pair (the clean and noisy passes with their products shared) gives the states,
    outputs, pre-activations and hidden outputs of two ``TorchForward`` calls, step after step; the spiking
    nets spike. Batch 1 with one sample goes through the compiled two-vector product."""
    net = models.make(model, n_in=3, n_hidden=40, n_out=2, **({"input_scale": 6.0} if model in ("lif", "alif") else {}))
    assert pair_applies(net)
    params = net.init_params(seed=0, dtype=torch.float64)
    fwd, pair, g, K = TorchForward(net), Pair(net, activity=True), torch.Generator().manual_seed(2), samples
    clean = net.init_state(params, batch)
    noisy = repeat(clean, K) if keep else None
    spikes = 0.0
    for t in range(12):
        x = 6.0 * (torch.rand(batch, 3, generator=g) < 0.4).to(torch.float64) if net.spiking else \
            torch.randn(batch, 3, generator=g, dtype=torch.float64)
        xi_h, xi_y = node_noise(g, batch * K, params["W_in"].shape[0], 2, 0.3, params["W_in"])
        with torch.no_grad():
            pc, pn = pair(params, clean, noisy, x, xi_h, xi_y, K)
        rc = fwd(params, clean, x)
        rn = fwd(params, noisy if keep else repeat(clean, K), repeat(x, K), xi_h, xi_y)
        for got, ref in ((pc, rc), (pn, rn)):
            for a, b in zip(list(got.state) + [got.y, got.h, got.a, got.z], list(ref.state) + [ref.y, ref.h, ref.a, ref.z]):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        clean, noisy = pc.state, (pn.state if keep else None)
        spikes += float(pn.z.sum()) if net.spiking else 0.0
    assert spikes > 0 or not net.spiking


def test_the_pair_forward_is_used_only_where_it_applies(rate):
    """A backend forward or a model whose current is its own goes through two forward calls; ``fast=False``
    runs the definition."""
    from models.lif import LIF

    net = rate[0]
    assert rules.make("np", net).fast_path.pair is not None
    assert rules.make("np", net, fast=False).fast_path is None
    assert rules.make("np", net, forward=TorchForward(net)).fast_path is None  # window 1: the definition
    assert rules.make("np", net, forward=TorchForward(net), window=4).fast_path.pair is None

    class Shifted(LIF):
        def current(self, params, state, x):
            return super().current(params, state, x) + 1.0

    assert not pair_applies(Shifted(n_in=3, n_hidden=4, n_out=2)) and pair_applies(LIF(n_in=3, n_hidden=4, n_out=2))
    assert pair_applies(models.make("alif", n_in=3, n_hidden=4, n_out=2))
    assert not pair_applies(models.make("lif-loihi", n_in=3, n_hidden=4, n_out=2))


# -- the fast path against the definition ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["np", "anp", "anp-time"])
@pytest.mark.parametrize("model,samples", [("rate", 1), ("rate", 3), ("lif", 1), ("lif", 2), ("lstm", 2)])
@pytest.mark.parametrize("window", [1, 3, 7])
def test_the_fast_path_equals_the_definition(name, model, samples, window):
    """float64, batch 2, flushes at odd steps: with the same noise, the sum handed over up to each flush and the
    final sum of the fast path (the pair, a window of ``window`` steps) equal the definition's (``fast=False``,
    an estimate every step); the outputs and losses are the same."""
    net = models.make(model, n_in=3, n_hidden=8, n_out=2, **({"input_scale": 4.0} if model == "lif" else {}))
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    steps = 2 * T
    if model == "lif":
        xs = 8.0 * (torch.rand(steps, B, 3, generator=g) < 0.3).to(torch.float64)
        assert neuro.simulate(net, params, xs).spikes.sum() >= 10, "the network must spike"
    else:
        xs = torch.randn(steps, B, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(steps, B, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(steps, B, generator=g) < 0.8
    flush_at = {4, 9, 10, 17}
    runs = {}
    for fast in (False, True):
        rule = rules.make(name, net, sigma=1e-2, samples=samples, window=window, fast=fast)
        assert (rule.fast_path is not None) == fast
        w = window if fast else 1
        state = rule.init(params, B, 5)
        total = rules.zeros_like_params(params)
        sums, outs, pending = [], [], 0
        for t in range(steps):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            outs.append((out.y, out.loss))
            pending += 1
            assert (out.grad is not None) == (pending == w)  # an estimate exactly when the window is full
            pending %= w
            rules.add_into(total, out.grad)
            if t in flush_at:
                state, gf = rule.flush(params, state)
                assert (gf is None) == (pending == 0)
                pending = 0
                rules.add_into(total, gf)
                sums.append({k: v.clone() for k, v in total.items()})
        rules.add_into(total, rule.finish(params, state)[1])
        sums.append(total)
        runs[fast] = sums, outs
    (ref, ref_outs), (got, got_outs) = runs[False], runs[True]
    for (ya, la), (yb, lb) in zip(got_outs, ref_outs):
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, ref):
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-13, msg=lambda m: f"{k}: {m}")
    assert float(got[0]["W_in"].abs().sum()) > 0


def test_window_is_validated_and_the_signals_are_the_documented_ones(rate):
    net, params, xs, ys = rate
    for w in (0, -1, 2.5):
        with pytest.raises(ValueError, match="window"):
            rules.make("np", net, window=w)
    assert rules.make("np", net).window_size == 64 and rules.make("anp-time", net, window=5).window_size == 5
    assert rules.make("np", net, forward=TorchForward(net)).window_size == 1  # a backend's forward: every step
    g = torch.Generator().manual_seed(0)
    dl, xi_h, xi_y = (torch.randn(4, *s, generator=g, dtype=torch.float64) for s in ((), (6,), (2,)))
    dh, da = xi_h + 0.1, xi_y - 0.2
    np_rule = rules.make("np", net, sigma=1e-2)
    e_h, e_y = np_rule.signal(dl, xi_h, xi_y, dh, da)
    torch.testing.assert_close(e_h, dl[:, None] / 1e-4 * xi_h)
    torch.testing.assert_close(e_y, dl[:, None] / 1e-4 * xi_y)
    N = net.n_in + net.n_hidden + net.n_out
    e_h, e_y = rules.make("anp", net).signal(dl, xi_h, xi_y, dh, da)
    torch.testing.assert_close(e_h, math.sqrt(N) * dl[:, None] * dh / (dh * dh).sum(1, keepdim=True))
    torch.testing.assert_close(e_y, math.sqrt(N) * dl[:, None] * da / (da * da).sum(1, keepdim=True))


def test_outer_sum_equals_the_sum_of_outer_products():
    """The window's matrix product against the sum of the rows' outer products in float64."""
    from neuro.rules._common import outer_sum

    g = torch.Generator().manual_seed(0)
    for rows, n, m in ((7, 300, 260), (1, 257, 256), (64, 40, 30)):
        E = torch.randn(rows, n, generator=g, dtype=torch.float64)
        P = torch.randn(rows, m, generator=g, dtype=torch.float64)
        ref = sum(torch.outer(E[r], P[r]) for r in range(rows))
        torch.testing.assert_close(outer_sum(E, P), ref, rtol=1e-12, atol=1e-12)
        got = outer_sum(E.float(), P.float())
        assert got.dtype == torch.float32 and got.shape == (n, m) and got.is_contiguous()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * rows ** 0.5)


def test_a_caller_may_reuse_its_input_buffers_inside_the_window(rate):
    """The window holds copies of the step's inputs: a caller that writes every step's x, y, mask into the same
    buffers gets the estimate of fresh tensors."""
    net, params, xs, ys = rate
    mask = torch.rand(T, B, generator=torch.Generator().manual_seed(1)) < 0.7
    rule = rules.make("anp-time", net, window=4)
    ref = run_rule(rule, params, xs, ys, seed=2, mask=mask)
    state = rule.init(params, B, 2)
    total = rules.zeros_like_params(params)
    x, y, m = xs[0].clone(), ys[0].clone(), mask[0].clone()
    for t in range(T):
        x.copy_(xs[t]), y.copy_(ys[t]), m.copy_(mask[t])
        out = rule.step(params, state, x, y, m)
        state = out.state
        rules.add_into(total, out.grad)
    rules.add_into(total, rule.finish(params, state)[1])
    for k in params:
        assert torch.equal(total[k], ref[k]), k


