"""TD(lambda) (``neuro.rules.td``): the estimate against an independent autograd computation of
``-delta_t sum_k (gamma lam)^k dv_{t-1-k}/dtheta``, learning a known return, and the training loop."""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import rules

pytestmark = pytest.mark.usefixtures("one_thread")

T, B = 12, 2


def _case(seed: int = 0):
    net = models.make("rate", n_in=3, n_hidden=5, n_out=2)
    params = net.init_params(seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    ys = (torch.rand(T, B, 2, generator=g, dtype=torch.float64) < 0.3).to(torch.float64)  # cumulants
    return net, params, xs, ys


def _values_and_grads(net, params, xs):
    """v_t [T, B] and dv_t[b]/dtheta (autograd through the whole sequence, one sample at a time)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state = net.init_state(leaves, B)
    vs = []
    for t in range(T):
        state, y = net.step(leaves, state, xs[t])
        vs.append(y.sum(-1))
    grads = [[dict(zip(leaves, torch.autograd.grad(vs[t][b], list(leaves.values()), retain_graph=True)))
              for b in range(B)] for t in range(T)]
    return torch.stack(vs).detach(), grads


def _run(rule, params, xs, ys, mask=None):
    state = rule.init(params, B)
    outs = []
    for t in range(T):
        m = torch.ones(B, dtype=torch.bool) if mask is None else mask[t]
        out = rule.step(params, state, xs[t], ys[t], m)
        state = out.state
        outs.append(out)
    return outs


@pytest.mark.parametrize("lam", [0.0, 0.8])
@pytest.mark.parametrize("inner,options", [("rtrl", {"fast": True}), ("rtrl", {"fast": False}), ("tbptt", {"k": T})])
def test_estimate_is_minus_delta_times_the_trace_of_value_gradients(lam, inner, options):
    gamma = 0.9
    net, params, xs, ys = _case()
    vs, grads = _values_and_grads(net, params, xs)
    # tbptt with a window as long as the sequence is the whole gradient of v_t
    rule = rules.make("td-lambda", net, gamma=gamma, lam=lam, rule=inner, rule_options=options)
    outs = _run(rule, params, xs, ys)
    for t in range(T):
        v_prev = vs[t - 1] if t > 0 else torch.zeros(B, dtype=torch.float64)
        delta = ys[t].sum(-1) + gamma * vs[t] - v_prev
        torch.testing.assert_close(outs[t].state.delta, delta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(outs[t].y.sum(-1), vs[t], rtol=1e-12, atol=1e-12)
        for k in params:
            expected = torch.zeros_like(params[k])
            for b in range(B):  # e_{t-1,b} = sum_j (gamma lam)^j dv_{t-1-j,b}/dtheta, explicit
                trace = sum(((gamma * lam) ** j) * grads[t - 1 - j][b][k] for j in range(t)) if t > 0 else 0.0
                expected = expected - delta[b] * trace / B
            torch.testing.assert_close(outs[t].grad[k], expected, rtol=1e-9, atol=1e-12, msg=lambda m: f"t={t} {k}: {m}")


def test_masked_samples_add_nothing_and_cumulant_input_reads_the_input():
    net, params, xs, ys = _case(1)
    mask = torch.ones(T, B, dtype=torch.bool)
    mask[:, 1] = False
    full = _run(rules.make("td-lambda", net, lam=0.5), params, xs, ys)
    half = _run(rules.make("td-lambda", net, lam=0.5), params, xs, ys, mask)
    one = rules.make("td-lambda", net, lam=0.5)
    state = one.init(params, 1)
    for t in range(T):
        o = one.step(params, state, xs[t, :1], ys[t, :1], torch.ones(1, dtype=torch.bool))
        state = o.state
        for k in params:  # sample 0 alone, divided by the batch of 2
            torch.testing.assert_close(half[t].grad[k], o.grad[k] / B)
    assert any(not torch.equal(full[t].grad[k], half[t].grad[k]) for t in range(T) for k in params)
    # the cumulant from input 0 equals the cumulant given as the target
    xs2 = xs.clone()
    xs2[..., 0] = ys.sum(-1)
    a = _run(rules.make("td-lambda", net, lam=0.5, cumulant_input=0), params, xs2, torch.zeros_like(ys))
    b = _run(rules.make("td-lambda", net, lam=0.5), params, xs2, ys)
    for t in range(T):
        for k in params:
            torch.testing.assert_close(a[t].grad[k], b[t].grad[k])


def test_learns_the_discounted_return_of_a_periodic_cumulant():
    """Period L, one-hot phase input, cumulant 1 on phase 0: v(p) = gamma^{d-1} / (1 - gamma^L), d the steps to it."""
    torch.manual_seed(0)
    L, gamma, steps = 5, 0.9, 3000
    net = models.make("rate", n_in=L, n_hidden=6, n_out=1)
    params = {k: v.requires_grad_(True) for k, v in net.init_params(seed=0, dtype=torch.float64).items()}
    rule = rules.make("td-lambda", net, gamma=gamma, lam=0.9)
    opt = torch.optim.Adam(list(params.values()), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t < steps // 2 else 0.1)
    d = torch.tensor([(L - p) % L or L for p in range(L)], dtype=torch.float64)
    true = gamma ** (d - 1) / (1 - gamma ** L)  # return after phase p
    eye = torch.eye(L, dtype=torch.float64)
    state = rule.init(params, 1)
    one = torch.ones(1, dtype=torch.bool)
    err = []
    for t in range(steps):
        p = t % L
        c = torch.tensor([[1.0 if p == 0 and t > 0 else 0.0]], dtype=torch.float64)
        out = rule.step(params, state, eye[p:p + 1], c, one)
        state = out.state
        err.append(float((out.y[0, 0] - true[p]) ** 2))
        opt.zero_grad()
        for k, v in params.items():
            v.grad = out.grad[k].clone()
        opt.step()
        sched.step()
    early, late = sum(err[:L * 10]) / (L * 10), sum(err[-L * 20:]) / (L * 20)
    assert late < 1e-4 and late < 1e-3 * early, (early, late)  # measured 1.6 -> 6e-8


@pytest.mark.parametrize("target,options", [("cumulant", {}), ("return", {"cumulant_input": 6})])
def test_trains_on_trace_patterning_with_a_columnar_net(target, options):
    task = neuro.tasks.make("trace-patterning", target=target)
    net = models.make("columnar", n_in=task.n_in, n_hidden=3, n_out=1)
    rule = rules.make("td-lambda", net, rule="columnar", **options)
    h = neuro.train(net, rule, task, steps=300, progress=False)
    assert h.steps == 300 and all(torch.isfinite(v).all() for v in h.params.values())


def test_trace_patterning_cumulant_target_is_the_us():
    seq = next(iter(neuro.tasks.make("trace-patterning", target="cumulant").stream(seed=0, batch=1, chunk=2000)))
    x, y = seq.xs, seq.ys
    assert torch.equal(y[..., 0].to(x.dtype), x[..., 6]) and x[..., 6].sum() > 0


def test_bad_options_are_refused():
    net = models.make("rate", n_in=3, n_hidden=4, n_out=1)
    for kw, match in [({"gamma": 1.5}, "gamma"), ({"lam": -0.1}, "lam"), ({"rule": "bptt"}, "graph"),
                      ({"rule": "td-lambda"}, "inner"), ({"rule": "nope"}, "nope"), ({"cumulant_input": 3}, "cumulant_input"),
                      ({"rule_options": {"not_an_option": 1}}, "not_an_option")]:
        with pytest.raises(ValueError, match=match):
            rules.make("td-lambda", net, **kw)
    with pytest.raises(ValueError, match="does not support"):
        rules.make("td-lambda", net, rule="columnar")
    with pytest.raises(ValueError, match="'cumulant'"):
        neuro.tasks.make("trace-patterning", target="value")


@pytest.mark.parametrize("model", ["rate", "lstm"])
def test_sliding_tbptt_is_the_gradient_of_v_t_through_the_last_k_steps(model):
    """The inner estimate of rule="tbptt": dv_t/dtheta with s_{t-k} held fixed, recomputed from scratch per t."""
    from neuro.rules.td import SlidingTBPTT

    k = 3
    net = models.make(model, n_in=3, n_hidden=4, n_out=2)
    params = net.init_params(seed=2, dtype=torch.float64)
    xs = torch.randn(T, B, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rule = SlidingTBPTT(net, loss="value", k=k)
    state = rule.init(params, B)
    one = torch.ones(B, dtype=torch.bool)
    differs = False
    for t in range(T):
        out = rule.step(params, state, xs[t], xs[t, :, :2], one)
        state = out.state
        with torch.no_grad():  # s_{t-k}: the first t-k+1 steps, no graph
            s = net.init_state(params, B)
            for j in range(t - k + 1):
                s, _ = net.step(params, s, xs[j])
        leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        full_leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        for j in range(max(t - k + 1, 0), t + 1):
            s, y = net.step(leaves, s, xs[j])
        want = torch.autograd.grad(y.sum() / B, list(leaves.values()))
        s = net.init_state(full_leaves, B)
        for j in range(t + 1):
            s, yf = net.step(full_leaves, s, xs[j])
        full = torch.autograd.grad(yf.sum() / B, list(full_leaves.values()))
        for (n, w), f in zip(zip(params, want), full):
            torch.testing.assert_close(out.grad[n], w, rtol=1e-10, atol=1e-12)
            differs |= t >= k and not torch.allclose(w, f, rtol=1e-6)
        assert not any(v.requires_grad for v in state.net) and len(state.window) == min(t + 1, k)
    assert differs, "the truncation should differ from the whole gradient (the test would be vacuous)"


def test_td_over_tbptt_trains_a_dense_lstm_on_trace_patterning():
    task = neuro.tasks.make("trace-patterning")
    net = models.make("lstm", n_in=task.n_in, n_hidden=2, n_out=1)
    rule = rules.make("td-lambda", net, rule="tbptt", rule_options={"k": 3}, cumulant_input=6)
    h = neuro.train(net, rule, task, steps=200, progress=False)
    assert h.steps == 200 and all(torch.isfinite(v).all() for v in h.params.values())
    with pytest.raises(ValueError, match="k"):
        rules.make("td-lambda", net, rule="tbptt", rule_options={"k": 0})


@pytest.mark.parametrize("inner,windowed,per_step", [("uoro", {}, {"fast": False}),
                                                      ("rflo", {"window": 5}, {"fast": False})])
def test_an_inner_rule_that_holds_a_window_back_is_flushed_every_step(inner, windowed, per_step):
    """uoro and rflo hand their estimates over at window ends: td-lambda flushes them each step, so the TD
    estimate equals the one over their per-step paths (the same random draws for uoro)."""
    net, params, xs, ys = _case()
    a = _run(rules.make("td-lambda", net, rule=inner, rule_options=windowed), params, xs, ys)
    b = _run(rules.make("td-lambda", net, rule=inner, rule_options=per_step), params, xs, ys)
    for t in range(T):
        for k in params:
            torch.testing.assert_close(a[t].grad[k], b[t].grad[k], rtol=1e-9, atol=1e-12)
    assert any(float(a[t].grad["W_rec"].abs().sum()) > 0 for t in range(T))
