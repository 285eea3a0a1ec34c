"""SLTT and SLTT-K (neuro.rules.sltt): oracle tests in float64, of SLTT's definition (``fast=False``) and of its
fast path.

SLTT's oracles are BPTT (torch.autograd) of the fully-detached network (every state detached between
steps), written here as a direct loop from the LIF equations, not from the model's code, and autograd through
one step of the model from its detached state.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import losses, rules
from neuro.gradients import grad_estimate
from neuro.surrogate import spike

from _helpers import assert_params_close as _close
from _helpers import load_state, no_autograd, save_state, tensors

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, N, N_OUT, T, B = 4, 10, 3, 24, 2


def _case(model: str = "lif", seed: int = 0, **kw):
    net = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, **{"input_scale": 8.0, **kw})
    params = net.init_params(seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(20 + seed)
    xs = 4.0 * (torch.rand(T, B, N_IN, generator=g) < 0.3).to(torch.float64)
    ys = torch.randn(T, B, N_OUT, generator=g, dtype=torch.float64)
    mask = torch.rand(T, B, generator=g) < 0.8
    return net, params, xs, ys, mask


def fully_detached_bptt(net, params, xs, ys, mask):
    """BPTT of the network whose state (v, i, z, a, y) is detached from one step to the next.
    Returns (grad, per-step grads, outputs [T, B, n_out], number of spikes)."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    dt, tm, ts = net.dt, net.tau_mem, net.tau_syn
    al, be, ko = math.exp(-dt / tm), math.exp(-dt / ts), math.exp(-dt / net.tau_out)
    ka = ts * (be - al) / (ts - tm)
    v = torch.full((B, N), float(net.v_leak), dtype=torch.float64)
    i, z, a = (torch.zeros(B, N, dtype=torch.float64) for _ in range(3))
    y = torch.zeros(B, N_OUT, dtype=torch.float64)
    total, outs, fired, terms = 0.0, [], 0, []
    for t in range(xs.shape[0]):
        v, i, z, a, y = v.detach(), i.detach(), z.detach(), a.detach(), y.detach()
        I = xs[t] @ p["W_in"].T + z @ p["W_rec"].T
        if net.dynamics == "exact":
            j = i + I
            vt = net.v_leak + p["b"] + (v - net.v_leak - p["b"]) * al + ka * j
            i = be * j
        elif net.dynamics == "euler":
            j = i + I
            vt = v + dt / tm * (net.v_leak + p["b"] - v + j)
            i = j * (1 - dt / ts)
        else:
            i = i * be + I
            vt = v * al + i + p["b"]
        thr = net.v_th + net.beta_a * a if net.name == "alif" else net.v_th
        z = spike(vt, thr, net.surrogate, net.surrogate_width, net.surrogate_scale, net.v_th)
        v = vt - z * net.v_th
        if net.name == "alif":
            a = math.exp(-dt / net.tau_adapt) * a + z
        y = ko * y + z @ p["W_out"].T + p["b_out"]
        fired += int(z.detach().sum())
        outs.append(y.detach())
        l = losses.get("mse")(y, ys[t], mask[t])
        terms.append(dict(zip(p, torch.autograd.grad(l, list(p.values()), retain_graph=True))))
        total = total + l
    gs = torch.autograd.grad(total, list(p.values()))
    return dict(zip(p, gs)), terms, torch.stack(outs), fired


def _run(rule, params, xs, ys, mask, seed=0):
    """(per-step estimates (None where none), the state after finish, the summed estimate)."""
    state = rule.init(params, B, seed)
    grads = []
    total = rules.zeros_like_params(params)
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        grads.append(out.grad)
        rules.add_into(total, out.grad)
    state, g = rule.finish(params, state)
    rules.add_into(total, g)  # SLTT's pending window (None for SLTT-K)
    return grads, state, total


@pytest.mark.parametrize("model,opts", [("lif", {"dynamics": "exact"}), ("lif", {"dynamics": "euler"}),
                                        ("lif", {"dynamics": "lava"}), ("alif", {})])
def test_sltt_equals_bptt_of_the_fully_detached_network(model, opts):
    net, params, xs, ys, mask = _case(model, **opts)
    ref, terms, outs, fired = fully_detached_bptt(net, params, xs, ys, mask)
    assert fired > 20, f"too few spikes ({fired}) for a meaningful test"
    torch.testing.assert_close(outs, neuro.simulate(net, params, xs).y)  # the loop is the model
    _, _, total = _run(rules.make("sltt", net), params, xs, ys, mask)  # the fast path, windows of 64 steps
    _close(total, ref)
    grads, _, total = _run(rules.make("sltt", net, fast=False), params, xs, ys, mask)  # the definition
    _close(total, ref)
    for g, term in zip(grads, terms):  # and every step's term is that step's spatial gradient
        _close(g, term)
    # the detached network is not the network: the true (BPTT) gradient differs
    true = grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert float((true["W_rec"] - ref["W_rec"]).norm()) > 1e-3 * float(true["W_rec"].norm())


def test_sltt_k_with_k_equal_t_is_sltt():
    net, params, xs, ys, mask = _case("alif", seed=1)
    _, _, sltt = _run(rules.make("sltt", net), params, xs, ys, mask)
    for seed in (0, 1):
        _, _, got = _run(rules.make("sltt-k", net, k=T, T=T), params, xs, ys, mask, seed=seed)
        _close(got, sltt)


@pytest.mark.parametrize("scale", [False, True])
def test_sltt_k_sums_the_sltt_terms_of_k_seeded_steps(scale):
    net, params, xs, ys, mask = _case("lif", seed=2)
    _, terms, _, _ = fully_detached_bptt(net, params, xs, ys, mask)
    k = 5
    rule = rules.make("sltt-k", net, k=k, T=T, scale=scale)
    chosen_sets = []
    for seed in (0, 1):
        first = rule.init(params, B, seed).chosen
        grads, _, total = _run(rule, params, xs, ys, mask, seed=seed)
        steps = [t for t, g in enumerate(grads) if g is not None]
        assert len(steps) == k and steps == first.nonzero().flatten().tolist()
        factor = T / k if scale else 1.0
        expect = {key: factor * sum(terms[t][key] for t in steps) for key in params}
        _close(total, expect)
        _, _, again = _run(rule, params, xs, ys, mask, seed=seed)  # seeded: reproducible
        _close(again, total)
        chosen_sets.append(steps)
    assert chosen_sets[0] != chosen_sets[1]


def test_sltt_k_expectation_is_k_over_t_of_sltt():
    """Over seeds, each step is chosen with probability k/T: the mean estimate is (k/T) SLTT unscaled
    (the paper's code), SLTT with scale=True. 300 seeds: a relative error < 0.1 here, while a wrong
    factor (e.g. T/k unscaled, or k-1 steps) is off by > 0.2."""
    net, params, xs, ys, mask = _case("lif", seed=3)
    xs, ys, mask = xs[:10], ys[:10], mask[:10]
    _, terms, _, _ = fully_detached_bptt(net, params, xs, ys, mask)
    sltt = {key: sum(t[key] for t in terms) for key in params}
    k, n_seeds = 3, 300
    rule = rules.make("sltt-k", net, k=k, T=10)
    flat = torch.cat([v.flatten() for v in sltt.values()])
    # draw the steps by running the rule (only which steps it computes matters: their terms are known)
    mean = torch.zeros_like(flat)
    for seed in range(n_seeds):
        state = rule.init(params, B, seed)
        mean += torch.cat([v.flatten() for v in sum_terms(terms, state.chosen)])
    mean /= n_seeds
    err = float((mean - k / 10 * flat).norm() / (k / 10 * flat).norm())
    assert err < 0.1, err


def sum_terms(terms, chosen):
    steps = chosen.nonzero().flatten().tolist()
    return [sum(terms[t][key] for t in steps) for key in terms[0]]


def test_sltt_k_draws_new_steps_per_sequence_from_one_generator():
    net, params, xs, ys, mask = _case("lif")
    rule = rules.make("sltt-k", net, k=4, T=T)
    s0 = rule.init(params, B, 7)
    _, after, _ = _run(rule, params, xs, ys, mask, seed=7)
    assert after.t == 0 and not torch.equal(after.chosen, s0.chosen)  # finish: a new sequence, new steps
    fresh = rule.reset(params, s0)
    assert int(fresh.chosen.sum()) == 4 and not torch.equal(fresh.chosen, s0.chosen)
    twin = rule.reset(params, rule.init(params, B, 7))  # the same generator state: the same draw
    assert torch.equal(twin.chosen, fresh.chosen)


def test_errors():
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    rule = rules.make("sltt-k", net, k=1, T=2)
    params = net.init_params(dtype=torch.float64)
    state = rule.init(params, 1)
    x, y = torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    m = torch.ones(1, dtype=torch.bool)
    for _ in range(2):
        state = rule.step(params, state, x, y, m).state
    with pytest.raises(ValueError, match="T=2"):
        rule.step(params, state, x, y, m)
    with pytest.raises(ValueError, match="k=3"):
        rules.make("sltt-k", net, k=3, T=2)
    with pytest.raises(ValueError, match="k=0"):
        rules.make("sltt-k", net, k=0)
    rate = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    for name in ("sltt", "sltt-k"):
        with pytest.raises(ValueError, match="model 'rate'.*no spikes.*tbptt.*lif, alif"):
            rules.make(name, rate)
    loihi = models.make("lif-loihi", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="model 'lif-loihi'.*local form"):
        rules.make("sltt", loihi)
    with pytest.raises(ValueError, match="fast='yes'"):
        rules.make("sltt", net, fast="yes")


# -- the definition against autograd through one step ------------------------------------------------------------
def _autograd_term(net, loss, params, state, x, y, mask):
    """The oracle of one step: autograd of the step's loss through one step of the model from the detached
    ``state`` (the gradient of the fully-detached network at that step), and the next state."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    new, y_hat = net.step(p, type(state)(*(f.detach() for f in state)), x)
    l = losses.get(loss)(y_hat, y, mask)
    return dict(zip(p, torch.autograd.grad(l, list(p.values())))), type(new)(*(f.detach() for f in new)), y_hat


@pytest.mark.parametrize("model,opts", [("lif", {}), ("lif", {"dynamics": "euler", "refractory": 2}),
                                        ("lif", {"dynamics": "lava", "surrogate": "fast-sigmoid"}),
                                        ("lif", {"reset": "zero", "detach_reset": True}), ("alif", {})])
@pytest.mark.parametrize("loss", ["mse", "ce", "value"])
def test_every_term_of_the_definition_is_autograd_through_the_detached_step(model, opts, loss):
    """Each step's term of the definition (read through the contract: neuron_derivatives, presynaptic, the loss's
    written-out gradient, no autograd) equals autograd through one step of the model from the detached state,
    with some units refractory and some near threshold; the fast path's window sums them."""
    net, params, xs, ys, mask = _case(model, **opts)
    if loss == "ce":
        ys = torch.softmax(ys, -1)
    rule = rules.make("sltt", net, loss=loss, fast=False)
    state, ref_state = rule.init(params, B), net.init_state(params, B)
    nonzero = rec = 0
    for t in range(12):
        with no_autograd("SLTT's definition"):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
        ref, ref_state, y_ref = _autograd_term(net, loss, params, ref_state, xs[t], ys[t], mask[t])
        torch.testing.assert_close(out.y, y_ref.detach(), rtol=0, atol=0)
        _close(out.grad, ref, rtol=1e-12, atol=1e-15)
        for a, b in zip(out.state.net, ref_state):
            assert torch.equal(a, b)
        nonzero += int((ref["b"] != 0).sum())
        rec += int((ref["W_rec"] != 0).sum())
        state = out.state
    assert nonzero > 20 and rec > 0, "too few units with a nonzero term for a meaningful test"


# -- the fast path (a window of outer products summed as one matrix product) against the definition ----------------
@pytest.mark.parametrize("model,opts", [("lif", {}), ("lif", {"dynamics": "euler", "refractory": 2}),
                                        ("lif", {"dynamics": "lava", "reset": "zero"}), ("alif", {})])
@pytest.mark.parametrize("window", [1, 3, 7])
def test_fast_path_equals_the_definition(model, opts, window):
    """float64, batch 2, flushes at odd steps and a checkpoint mid-window: the sum handed over up to each flush,
    and the final sum, equal the definition's (which hands over every step's term); the fast path hands over
    a window's sum exactly when ``window`` steps are pending, and nothing in between."""
    net, params, xs, ys, mask = _case(model, **opts)
    assert int((neuro.simulate(net, params, xs).spikes > 0).sum()) > 20, "the network must spike"
    flush_at = {4, 9, 10, 17}
    sums = {}
    for fast in (False, True):
        rule = rules.make("sltt", net, fast=fast, window=window)
        assert (rule.fast_path is not None) == fast
        w = window if fast else 1
        state = rule.init(params, B)
        total = rules.zeros_like_params(params)
        got, outs, pending = [], [], 0
        for t in range(T):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            outs.append((out.y, out.loss))
            pending += 1
            assert (out.grad is not None) == (pending == w), (t, pending)  # exactly when the window is full
            pending %= w
            rules.add_into(total, out.grad)
            if t in flush_at:
                state, g = rule.flush(params, state)
                assert (g is None) == (pending == 0), (t, pending)
                pending = 0
                rules.add_into(total, g)
                got.append({k: v.clone() for k, v in total.items()})
            if t == 12:
                state = load_state(save_state(state))
        rules.add_into(total, rule.finish(params, state)[1])
        got.append(total)
        sums[fast] = (got, outs)
    (ref, ref_outs), (win, win_outs) = sums[False], sums[True]
    for (ya, la), (yb, lb) in zip(win_outs, ref_outs):
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        torch.testing.assert_close(la, lb)
    for a, b in zip(win, ref):
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    assert float(win[0]["W_in"].abs().sum()) > 0


def test_window_must_be_a_positive_integer():
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    for w in (0, -2, 2.5):
        with pytest.raises(ValueError, match="window"):
            rules.make("sltt", net, window=w)


@pytest.mark.parametrize("fast", [True, False])
def test_memory_is_constant_in_t(fast):
    """The state holds the network's state (and the fast path's window): no tensor grows with the steps."""
    net, params, xs, ys, mask = _case("lif")
    rule = rules.make("sltt", net, fast=fast, window=7)
    state = rule.init(params, B)
    sizes = set()
    for t in range(T):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
        sizes.add(sum(x.numel() for x in tensors(state)))
    assert len(sizes) == 1


def test_window_in_float32_at_n_256():
    """n = 256 in float32 (one BLAS product per window): the windowed sum equals the definition's to float32
    rounding."""
    net = models.make("lif", n_in=8, n_hidden=256, n_out=2, input_scale=8.0)
    params = net.init_params(seed=0)
    g = torch.Generator().manual_seed(1)
    xs = (torch.rand(12, 1, 8, generator=g) < 0.3).float()
    ys = torch.randn(12, 1, 2, generator=g)
    mask = torch.ones(12, 1, dtype=torch.bool)
    assert int((neuro.simulate(net, params, xs).spikes > 0).sum()) > 20, "the network must spike"
    ref = grad_estimate(net, params, "sltt", xs, ys, mask=mask, fast=False)
    got = grad_estimate(net, params, "sltt", xs, ys, mask=mask, window=5)
    for k in params:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5 * float(ref[k].abs().max()),
                                   msg=lambda m: f"{k}: {m}")
    assert float(ref["W_rec"].abs().sum()) > 0
