"""BPTT and truncated BPTT: the oracles.

* Spiking models (lif, alif; dynamics exact, euler, lava): BPTT equals the gradient of a plain loop
  written here from the equations in the models' docstrings (the spike as the straight-through
  ``H + P - P.detach()`` of the surrogate's primitive ``P``), in float64, to 1e-10, on networks that
  spike at a realistic rate. (Non-spiking models: finite differences, tests/neuro/test_gradients.py.)
* TBPTT: k >= T is BPTT; k = 1 and general k equal window gradients computed independently; an
  estimate every k steps and the partial window at ``finish``; the next window uses the live params.
* BPTT builds its graph on a copy of the params: changing them in place mid-sequence changes nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules import Needs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HID, N_OUT = 4, 10, 2
F64 = torch.float64


# -- the oracle: a spiking network written from the docstrings ----------------------------------------------
def _primitive(u: torch.Tensor, kind: str) -> torch.Tensor:
    """A function of ``u`` whose derivative is the surrogate's shape (max(0, 1-|u|) or 1/(1+|u|)^2)."""
    if kind == "triangle":
        a = u.abs().clamp(max=1.0)
        return torch.sign(u) * (1.0 - (1.0 - a) ** 2) / 2.0
    assert kind == "fast-sigmoid"
    return u / (1.0 + u.abs())


def _spike(v: torch.Tensor, threshold, net) -> torch.Tensor:
    """H(v - threshold) with dz/dv = scale / v_th * shape((v - threshold) / (v_th * width))."""
    u = (v - threshold) / (net.v_th * net.surrogate_width)
    p = net.surrogate_scale * net.surrogate_width * _primitive(u, net.surrogate)
    return (v > threshold).to(v.dtype) + (p - p.detach())  # (p - p) first: exactly 0, so z is exactly 0 or 1


def _oracle(net, params, xs, ys, mask, loss: str):
    """Summed loss and spikes of the LIF / ALIF network of models/lif.py and models/alif.py, by hand."""
    W_in, W_rec, b, W_out, b_out = (params[k] for k in ("W_in", "W_rec", "b", "W_out", "b_out"))
    Tn, Bn, _ = xs.shape
    alpha = math.exp(-net.dt / net.tau_mem)
    beta = math.exp(-net.dt / net.tau_syn)
    kappa = net.tau_syn * (beta - alpha) / (net.tau_syn - net.tau_mem)
    kappa_out = math.exp(-net.dt / net.tau_out)
    adaptive = net.name == "alif"
    rho = math.exp(-net.dt / net.tau_adapt) if adaptive else 0.0

    zeros = torch.zeros(Bn, N_HID, dtype=F64)
    v = zeros + (net.v_leak if net.dynamics != "lava" else 0.0)
    i, z, r, a = zeros, zeros, zeros, zeros
    y = torch.zeros(Bn, N_OUT, dtype=F64)
    total = torch.zeros((), dtype=F64)
    spikes = []
    for t in range(Tn):
        I = xs[t] @ W_in.T + z @ W_rec.T
        if net.dynamics == "exact":
            j = i + I
            v_tilde = net.v_leak + b + (v - net.v_leak - b) * alpha + kappa * j
            i = beta * j
        elif net.dynamics == "euler":
            j = i + I
            v_tilde = v + net.dt / net.tau_mem * (net.v_leak + b - v + j)
            i = j * (1.0 - net.dt / net.tau_syn)
        else:  # lava
            i = i * beta + I
            v_tilde = v * alpha + i + b
        refractory = r > 0
        v_tilde = torch.where(refractory, torch.full_like(v_tilde, net.v_reset), v_tilde)
        threshold = net.v_th + net.beta_a * a if adaptive else net.v_th
        z = _spike(v_tilde, threshold, net) * (~refractory).to(F64)
        zr = z.detach() if net.detach_reset else z
        if net.reset == "subtract":
            v = v_tilde - zr * net.v_th
        else:
            v = v_tilde * (1.0 - zr) + zr * net.v_reset
        r = torch.where(z.detach() > 0, torch.full_like(r, float(net.refractory)), (r - 1.0).clamp(min=0.0))
        if adaptive:
            a = rho * a + z
        y = kappa_out * y + z @ W_out.T + b_out
        if loss == "mse":
            per = 0.5 * ((y - ys[t]) ** 2).sum(-1)
        else:
            per = -(ys[t] * (y - torch.logsumexp(y, -1, keepdim=True))).sum(-1)
        total = total + (per * mask[t].to(F64)).sum() / Bn
        spikes.append(z.detach())
    return total, torch.stack(spikes)


def _spiking_case(name: str, T: int = 60, B: int = 2, seed: int = 0, loss: str = "mse", **kw):
    net = models.make(name, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, input_scale=8.0, rec_scale=1.0, **kw)
    params = net.init_params(seed=seed + 1, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    params["W_in"] = params["W_in"].abs()  # excitatory input, so the Bernoulli inputs drive spikes
    params["b"] = 0.05 * torch.randn(N_HID, generator=gen, dtype=F64)
    params["b_out"] = 0.1 * torch.randn(N_OUT, generator=gen, dtype=F64)
    xs = (torch.rand(T, B, N_IN, generator=gen, dtype=F64) < 0.3).to(F64)
    if loss == "mse":
        ys = torch.randn(T, B, N_OUT, generator=gen, dtype=F64)
    else:
        ys = torch.nn.functional.one_hot(torch.randint(0, N_OUT, (T, B), generator=gen), N_OUT).to(F64)
    mask = torch.rand(T, B, generator=gen) < 0.7
    return net, params, xs, ys, mask


SPIKING = [(m, {"dynamics": d}) for m in ("lif", "alif") for d in ("exact", "euler", "lava")] + [
    ("lif", {"reset": "zero", "v_reset": 0.1}),
    ("lif", {"refractory": 2}),
    ("lif", {"surrogate": "fast-sigmoid", "surrogate_width": 0.5, "surrogate_scale": 1.0}),
    ("lif", {"detach_reset": True}),
    ("lif", {"dynamics": "euler", "v_leak": -0.1, "tau_syn": 8.0}),
    ("alif", {"dynamics": "lava", "refractory": 1, "beta_a": 0.5}),
]


SPIKING_CASES = [pytest.param(m, kw, "mse", id=f"{m}-" + "-".join(f"{k}={v}" for k, v in kw.items())) for m, kw in SPIKING]
SPIKING_CASES += [pytest.param(m, {}, "ce", id=f"{m}-ce") for m in ("lif", "alif")]


@pytest.mark.parametrize("name,kw,loss", SPIKING_CASES)
def test_bptt_equals_a_hand_unrolled_spiking_network(name, kw, loss):
    net, params, xs, ys, mask = _spiking_case(name, loss=loss, **kw)

    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total, spikes = _oracle(net, leaf, xs, ys, mask, loss)
    expected = dict(zip(leaf, torch.autograd.grad(total, list(leaf.values()))))

    # the network spiked at a realistic rate, and the oracle is the same network as the model
    trace = neuro.simulate(net, params, xs)
    assert torch.equal(trace.spikes, spikes)
    rate = spikes.mean().item()
    assert 0.02 < rate < 0.5, f"spike fraction {rate:.3f}: choose inputs so that the network fires"
    assert (spikes.sum((0, 1)) > 0).sum() >= N_HID // 2, "fewer than half the units spiked"

    assert neuro.sequence_loss(net, params, xs, ys, loss=loss, mask=mask).item() == pytest.approx(total.item(), rel=1e-12)
    got = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss, mask=mask)
    for k in params:
        scale = expected[k].abs().max().item()
        assert scale > 0, f"oracle gradient of {k} is zero: the comparison would be vacuous"
        err = (got[k] - expected[k]).abs().max().item() / scale
        assert err < 1e-10, f"{name} {kw}: d/d{k} BPTT vs hand-unrolled autograd, relative error {err:.2e}"


def test_the_spiking_oracle_can_tell_a_wrong_surrogate():
    """Not vacuous: a surrogate of another width gives a different gradient, beyond the tolerance."""
    net, params, xs, ys, mask = _spiking_case("lif")
    wide = models.make("lif", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, input_scale=8.0, rec_scale=1.0, surrogate_width=1.5)
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total, _ = _oracle(wide, leaf, xs, ys, mask, "mse")
    expected = torch.autograd.grad(total, [leaf["W_rec"]])[0]
    got = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)["W_rec"]
    assert (got - expected).abs().max() > 1e-3 * expected.abs().max()


# -- BPTT as a rule -----------------------------------------------------------------------------------------
def _rate_case(T: int = 12, B: int = 2, seed: int = 0, name: str = "rate"):
    net = models.make(name, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=seed, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, N_IN, generator=gen, dtype=F64)
    ys = torch.randn(T, B, N_OUT, generator=gen, dtype=F64)
    mask = torch.rand(T, B, generator=gen) < 0.8
    return net, params, xs, ys, mask


def _run(rule, params, xs, ys, mask, state=None, hook=None):
    """Step ``rule`` through a sequence: (per-step estimates, finish estimate, outputs, final state)."""
    state = rule.init(params, xs.shape[1]) if state is None else state
    grads, outs = [], []
    for t in range(xs.shape[0]):
        if hook is not None:
            hook(t)
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        grads.append(out.grad)
        outs.append(out.y)
    state, last = rule.finish(params, state)
    return grads, last, outs, state


def test_bptt_declares_graph_and_gives_its_estimate_at_finish_only():
    net, params, xs, ys, mask = _rate_case()
    rule = rules.make("bptt", net)
    assert rule.needs is Needs.GRAPH and rules.make("tbptt", net).needs is Needs.GRAPH
    grads, last, _, state = _run(rule, params, xs, ys, mask)
    assert all(g is None for g in grads)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    for k in params:
        assert torch.equal(last[k], ref[k])
    # nothing pending after finish
    state, again = rule.finish(params, state)
    assert again is None


@pytest.mark.parametrize("how", ["in-place add_", "torch.optim.SGD"])
def test_bptt_is_unaffected_by_params_changed_in_place_mid_sequence(how):
    net, params, xs, ys, mask = _rate_case(T=12)
    rule = rules.make("bptt", net)
    _, ref, ref_out, _ = _run(rule, params, xs, ys, mask)

    live = {k: v.clone() for k, v in params.items()}
    if how == "torch.optim.SGD":
        for v in live.values():
            v.requires_grad_(True)
        opt = torch.optim.SGD(list(live.values()), lr=0.5)

        def hook(t):
            if t in (4, 8):
                for v in live.values():
                    v.grad = torch.ones_like(v)
                opt.step()
    else:
        def hook(t):
            if t in (4, 8):
                for v in live.values():
                    v.add_(0.3)

    _, got, out, state = _run(rule, live, xs, ys, mask, hook=hook)
    assert not torch.equal(live["W_rec"].detach(), params["W_rec"])  # the params did change
    for k in params:
        assert torch.equal(got[k], ref[k]), f"{k}: BPTT's estimate changed when the params changed mid-sequence"
    for a, b in zip(out, ref_out):
        assert torch.equal(a, b)

    # the next sequence (after reset) is built on the live params as they are now
    state = rule.reset(live, state)
    _, nxt, _, _ = _run(rule, live, xs, ys, mask, state=state)
    at_new = neuro.grad_estimate(net, {k: v.detach() for k, v in live.items()}, "bptt", xs, ys, mask=mask)
    for k in params:
        torch.testing.assert_close(nxt[k], at_new[k], rtol=1e-13, atol=1e-15)


# -- truncated BPTT -------------------------------------------------------------------------------------------
def _window_grads(net, params, xs, ys, mask, k: int, lr: float = 0.0):
    """Independent TBPTT: for each window of ``k`` steps, autograd of its summed loss from the detached
    state where the previous window ended; with ``lr`` > 0, an SGD step after every window."""
    fn = neuro.losses.get("mse")
    params = {n: v.clone() for n, v in params.items()}
    state = net.init_state(params, xs.shape[1])
    out = []
    for s in range(0, xs.shape[0], k):
        leaf = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        state = type(state)(*(u.detach() for u in state))
        total = 0.0
        for t in range(s, min(s + k, xs.shape[0])):
            state, y_hat = net.step(leaf, state, xs[t])
            total = total + fn(y_hat, ys[t], mask[t])
        g = dict(zip(leaf, torch.autograd.grad(total, list(leaf.values()), allow_unused=True)))
        g = {n: (v if v is not None else torch.zeros_like(params[n])) for n, v in g.items()}
        out.append(g)
        if lr:
            params = {n: params[n] - lr * g[n] for n in params}
    return out


CASES = ["rate", "lstm", "lif", "alif"]


def _case(name: str, T: int):
    if name in ("lif", "alif"):
        return _spiking_case(name, T=T)
    return _rate_case(T=T, name=name)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("k_extra", [0, 7])
def test_tbptt_with_k_at_least_T_is_bptt(name, k_extra):
    T = 15
    net, params, xs, ys, mask = _case(name, T)
    rule = rules.make("tbptt", net, k=T + k_extra)
    grads, last, _, _ = _run(rule, params, xs, ys, mask)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    if k_extra == 0:  # the one window closes at the last step; finish has nothing left
        assert all(g is None for g in grads[:-1]) and grads[-1] is not None and last is None
        last = grads[-1]
    else:
        assert all(g is None for g in grads) and last is not None
    for k in params:
        torch.testing.assert_close(last[k], ref[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("k", [1, 4])
def test_tbptt_equals_independent_window_gradients(name, k):
    T = 14  # 14 = 3 * 4 + 2: the last window is partial for k = 4
    net, params, xs, ys, mask = _case(name, T)
    if net.spiking:
        assert neuro.simulate(net, params, xs).spikes.mean() > 0.02
    rule = rules.make("tbptt", net, k=k)
    grads, last, _, _ = _run(rule, params, xs, ys, mask)
    expected = _window_grads(net, params, xs, ys, mask, k)

    # an estimate exactly every k steps, the partial window flushed by finish
    assert [g is not None for g in grads] == [(t + 1) % k == 0 for t in range(T)]
    got = [g for g in grads if g is not None] + ([last] if last is not None else [])
    assert (last is not None) == (T % k != 0)
    assert len(got) == len(expected) == math.ceil(T / k)
    for w, (a, b) in enumerate(zip(got, expected)):
        for n in params:
            torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-14, msg=lambda m: f"window {w}, {n}: {m}")
    if k == 1 and name in ("rate", "lstm"):  # k = 1 ignores the recurrence: biased on W_rec
        full = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
        total = sum(g["W_rec"] for g in got)
        assert not torch.allclose(total, full["W_rec"], rtol=1e-3)
    # grad_estimate sums the same windows
    summed = neuro.grad_estimate(net, params, "tbptt", xs, ys, mask=mask, k=k)
    for n in params:
        torch.testing.assert_close(summed[n], sum(g[n] for g in expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["rate", "lif"])
def test_tbptt_windows_use_the_live_params_when_an_optimizer_updates_every_k_steps(name):
    T, k, lr = 13, 4, 0.2
    net, params, xs, ys, mask = _case(name, T)
    rule = rules.make("tbptt", net, k=k)
    live = {n: v.clone() for n, v in params.items()}
    state = rule.init(live, xs.shape[1])
    got = []
    for t in range(T):
        out = rule.step(live, state, xs[t], ys[t], mask[t])
        state = out.state
        if out.grad is not None:
            got.append(out.grad)
            for n in live:
                live[n].sub_(lr * out.grad[n])
    state, last = rule.finish(live, state)
    got.append(last)
    expected = _window_grads(net, params, xs, ys, mask, k, lr=lr)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        for n in params:
            torch.testing.assert_close(a[n], b[n], rtol=1e-11, atol=1e-13)


def test_tbptt_finish_with_nothing_pending_returns_none():
    net, params, xs, ys, mask = _rate_case(T=9)
    grads, last, _, _ = _run(rules.make("tbptt", net, k=3), params, xs, ys, mask)
    assert [g is not None for g in grads] == [False, False, True] * 3 and last is None
    # finish before any step
    rule = rules.make("tbptt", net, k=3)
    assert rule.finish(params, rule.init(params, 2))[1] is None
    assert rules.make("bptt", net).finish(params, rule.init(params, 2))[1] is None


@pytest.mark.parametrize("k", [0, -2, 1.5, True, "3"])
def test_tbptt_rejects_a_bad_truncation(k):
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    with pytest.raises(ValueError, match=f"k={k!r}"):
        rules.make("tbptt", net, k=k)


def test_tbptt_repr_shows_its_hyper_parameters():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    r = repr(rules.make("tbptt", net, k=5, loss="ce"))
    assert "k=5" in r and "loss='ce'" in r
