"""RTRL: the oracles (float64).

* The summed estimate over a sequence, parameters frozen, equals BPTT's gradient to 1e-8 relative: rate
  (alpha 1 and 0.5, fast and generic paths), lstm, lif (exact, euler, lava; networks that spike), alif,
  and the influence-balancing system with its task's settings; with mse and ce, a mask, batch > 1.
* Per step: the estimate of step t is the gradient of l_t alone through the whole past.
* Chunked windows: stepped across chunks with the state carried (as ``neuro.train`` does for continuing
  tasks), the summed estimate is BPTT over the whole sequence; tbptt with k = chunk is not.
* The closed-form rate path (:mod:`neuro.rules._fast.rtrl`) equals the definition (jacrev) and never
  materialises J_theta; it runs on the rate network only, and not with ``fast=False``.
* "Bad input": a network whose influence matrix exceeds ``max_bytes`` is refused in ``init`` with the figure.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules import Needs
from neuro.rules._fast.rtrl import RateRTRL
from neuro.rules._onestep import FlatStep
from neuro.rules.rtrl import RTRL

from _helpers import rel_err as _rel

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HID, N_OUT = 4, 10, 2
F64 = torch.float64
TOL = 1e-8


def _targets(T: int, B: int, loss: str, gen: torch.Generator) -> torch.Tensor:
    if loss == "mse":
        return torch.randn(T, B, N_OUT, generator=gen, dtype=F64)
    return torch.nn.functional.one_hot(torch.randint(0, N_OUT, (T, B), generator=gen), N_OUT).to(F64)


def _case(name: str, T: int = 30, B: int = 2, loss: str = "mse", seed: int = 0, **kw):
    """(net, params, xs, ys, mask); spiking networks get excitatory Bernoulli input that makes them fire."""
    gen = torch.Generator().manual_seed(seed)
    if name in ("lif", "alif"):
        net = models.make(name, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, input_scale=8.0, rec_scale=1.0, **kw)
        params = net.init_params(seed=seed + 1, dtype=F64)
        params["W_in"] = params["W_in"].abs()
        params["b"] = 0.05 * torch.randn(N_HID, generator=gen, dtype=F64)
        xs = (torch.rand(T, B, N_IN, generator=gen, dtype=F64) < 0.3).to(F64)
    else:
        net = models.make(name, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, **kw)
        params = net.init_params(seed=seed + 1, dtype=F64)
        params["b"] = 0.1 * torch.randn(params["b"].shape, generator=gen, dtype=F64)
        xs = torch.randn(T, B, N_IN, generator=gen, dtype=F64)
    params["b_out"] = 0.1 * torch.randn(N_OUT, generator=gen, dtype=F64)
    ys = _targets(T, B, loss, gen)
    mask = torch.rand(T, B, generator=gen) < 0.7
    if net.spiking:
        rate = neuro.simulate(net, params, xs).spikes.mean().item()
        assert 0.02 < rate < 0.5, f"spike fraction {rate:.3f}: the gradient test needs a network that fires"
    return net, params, xs, ys, mask


def _steps(rule, params, xs, ys, mask, state=None):
    """Step ``rule`` over a sequence: (per-step outputs, final state); finish is not called."""
    state = rule.init(params, xs.shape[1]) if state is None else state
    outs = []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        outs.append(out)
    return outs, state


# -- RTRL equals BPTT over a whole sequence ---------------------------------------------------------------
ORACLE = [
    ("rate", {}, "mse"), ("rate", {}, "ce"), ("rate", {"alpha": 0.5}, "mse"), ("rate", {"alpha": 0.5}, "ce"),
    ("lstm", {}, "mse"), ("lstm", {}, "ce"),
    ("lif", {"dynamics": "exact"}, "mse"), ("lif", {"dynamics": "euler"}, "mse"), ("lif", {"dynamics": "lava"}, "mse"),
    ("lif", {}, "ce"), ("lif", {"refractory": 2, "reset": "zero", "v_reset": 0.1}, "mse"),
    ("alif", {"dynamics": "exact"}, "mse"), ("alif", {"dynamics": "lava", "beta_a": 0.5}, "ce"),
]


@pytest.mark.parametrize("name,kw,loss", [pytest.param(*c, id=f"{c[0]}-{c[2]}-" + "-".join(f"{k}={v}" for k, v in c[1].items()))
                                          for c in ORACLE])
def test_rtrl_equals_bptt(name, kw, loss):
    net, params, xs, ys, mask = _case(name, loss=loss, **kw)
    assert not mask.all() and xs.shape[1] > 1
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss, mask=mask)
    paths = [{"fast": True}, {"fast": False}] if name == "rate" else [{}]
    for opts in paths:
        got = neuro.grad_estimate(net, params, "rtrl", xs, ys, loss=loss, mask=mask, **opts)
        err = _rel(got, ref)
        assert err < TOL, f"{name} {kw} {loss} {opts}: RTRL vs BPTT relative error {err:.2e}"


@pytest.mark.parametrize("B", [1, 3])
def test_rtrl_equals_bptt_for_other_batch_sizes(B):
    net, params, xs, ys, mask = _case("lstm", T=20, B=B, seed=B)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert _rel(neuro.grad_estimate(net, params, "rtrl", xs, ys, mask=mask), ref) < TOL


def test_rtrl_equals_bptt_on_influence_balancing():
    task = neuro.tasks.make("influence-balancing")
    net = models.make(task.model, **task.model_options())
    params = net.init_params(dtype=F64)
    seq = task.sample(steps=100, batch=1, seed=0)
    xs, ys = seq.xs.to(F64), seq.ys.to(F64)
    ref = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=task.loss, mask=seq.mask)
    got = neuro.grad_estimate(net, params, "rtrl", xs, ys, loss=task.loss, mask=seq.mask)
    assert _rel(got, ref) < TOL
    # the system's point: truncation gets even the sign wrong over 100 steps, RTRL does not
    trunc = neuro.grad_estimate(net, params, "tbptt", xs, ys, loss=task.loss, mask=seq.mask, k=10)
    assert ref["theta"].item() > 0 > trunc["theta"].item()


@pytest.mark.parametrize("name", ["rate", "lif"])
def test_each_step_estimate_is_the_gradient_of_that_steps_loss(name):
    T = 12
    net, params, xs, ys, mask = _case(name, T=T)
    outs, _ = _steps(rules.make("rtrl", net), params, xs, ys, mask)
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    fn = neuro.losses.get("mse")
    state = net.init_state(leaf, xs.shape[1])
    for t in range(T):
        state, y_hat = net.step(leaf, state, xs[t])
        l_t = fn(y_hat, ys[t], mask[t])
        expected = dict(zip(leaf, torch.autograd.grad(l_t, list(leaf.values()), retain_graph=True, allow_unused=True)))
        for k in params:
            e = expected[k] if expected[k] is not None else torch.zeros_like(params[k])
            torch.testing.assert_close(outs[t].grad[k], e, rtol=1e-10, atol=1e-12, msg=lambda m: f"step {t}, {k}: {m}")
        torch.testing.assert_close(outs[t].loss, l_t.detach())


# -- chunked windows: the state (and M) carried across chunks ---------------------------------------------
@pytest.mark.parametrize("name", ["rate", "lstm", "lif", "influence-balancing"])
def test_chunked_rtrl_equals_bptt_over_the_whole_sequence(name):
    T, chunk = 40, 10
    if name == "influence-balancing":
        task = neuro.tasks.make(name)
        net = models.make(task.model, **task.model_options())
        params = net.init_params(dtype=F64)
        seq = task.sample(steps=T, batch=1, seed=0)
        xs, ys, mask = seq.xs.to(F64), seq.ys.to(F64), seq.mask
    else:
        net, params, xs, ys, mask = _case(name, T=T)
    rule = rules.make("rtrl", net)
    state = rule.init(params, xs.shape[1])
    total = rules.zeros_like_params(params)
    for c in range(0, T, chunk):  # as neuro.train streams a continuing task: finish at each chunk end, no reset
        outs, state = _steps(rule, params, xs[c:c + chunk], ys[c:c + chunk], mask[c:c + chunk], state=state)
        for o in outs:
            rules.add_into(total, o.grad)
        state, last = rule.finish(params, state)
        assert last is None
    whole = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert _rel(total, whole) < TOL
    truncated = neuro.grad_estimate(net, params, "tbptt", xs, ys, mask=mask, k=chunk)
    assert _rel(truncated, whole) > 1e-3, "tbptt over the same chunks should be biased (the test would be vacuous)"


# -- the closed-form rate path ----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_fast_rate_path_equals_the_generic_path(alpha, loss):
    net, params, xs, ys, mask = _case("rate", T=15, B=3, loss=loss, alpha=alpha)
    fast, slow = rules.make("rtrl", net, loss=loss), rules.make("rtrl", net, loss=loss, fast=False)
    assert isinstance(fast.fast_path, RateRTRL) and slow.fast_path is None
    with mock.patch.object(FlatStep, "jacobians", side_effect=AssertionError("the fast path built J_theta")), \
            mock.patch.object(FlatStep, "loss_grads", side_effect=AssertionError("the fast path used jacrev")):
        a, sa = _steps(fast, params, xs, ys, mask)
    b, sb = _steps(slow, params, xs, ys, mask)
    assert sa.M.abs().max() > 0
    torch.testing.assert_close(sa.M, sb.M, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sa.net.h, sb.net.h, rtol=0, atol=0)
    for t, (oa, ob) in enumerate(zip(a, b)):
        torch.testing.assert_close(oa.y, ob.y, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(oa.loss, ob.loss, rtol=1e-14, atol=1e-15)
        for k in params:
            torch.testing.assert_close(oa.grad[k], ob.grad[k], rtol=1e-12, atol=1e-14, msg=lambda m: f"step {t}, {k}: {m}")


def test_fast_path_only_for_the_rate_network_and_in_float32():
    assert rules.make("rtrl", models.make("lstm", n_in=2, n_hidden=3, n_out=1)).fast_path is None
    assert rules.make("rtrl", models.make("lif", n_in=2, n_hidden=3, n_out=1)).fast_path is None
    net, params, xs, ys, mask = _case("rate", T=10, alpha=0.7)
    p32 = {k: v.float() for k, v in params.items()}
    a = neuro.grad_estimate(net, p32, "rtrl", xs.float(), ys.float(), mask=mask)
    b = neuro.grad_estimate(net, p32, "rtrl", xs.float(), ys.float(), mask=mask, fast=False)
    for k in params:
        assert a[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


# -- state, reset, declaration ----------------------------------------------------------------------------
def test_state_holds_the_influence_matrix_and_reset_clears_it():
    net, params, xs, ys, mask = _case("lstm", T=5, B=2)
    rule = rules.make("rtrl", net)
    assert rule.needs is Needs.JACOBIAN and isinstance(rule, RTRL)
    _, state = _steps(rule, params, xs, ys, mask)
    S, P = 2 * N_HID, sum(v.numel() for v in params.values())
    assert state.M.shape == (2, S, P) and state.M.abs().max() > 0
    fresh = rule.reset(params, state)
    assert torch.equal(fresh.M, torch.zeros_like(state.M))
    for a, b in zip(fresh.net, net.init_state(params, 2)):
        assert torch.equal(a, b)


# -- bad input: the memory guard --------------------------------------------------------------------------
def test_memory_guard_refuses_a_network_too_large_with_the_figure():
    net = models.make("rate", n_in=4, n_hidden=1024, n_out=2)
    params = net.init_params(dtype=torch.float32)
    P = sum(v.numel() for v in params.values())
    rule = rules.make("rtrl", net)
    need = 4 * 1024 * 2 * P  # M and one more [B, S, P], float32, batch 1
    assert rule.memory_bytes(params, 1) == need
    with pytest.raises(ValueError) as e:
        rule.init(params, 1)
    msg = str(e.value)
    assert f"{need / 2 ** 30:.1f} GiB" in msg and f"n_state=1024, n_params={P}" in msg and "batch 1" in msg
    assert "snap1" in msg and "uoro" in msg and "max_bytes" in msg
    xs = torch.zeros(3, 1, 4)  # before any step: grad_estimate refuses too
    with pytest.raises(ValueError, match="rtrl needs"):
        neuro.grad_estimate(net, params, "rtrl", xs, torch.zeros(3, 1, 2))


def test_memory_guard_counts_batch_and_the_limit_is_a_field():
    net, params, *_ = _case("lstm", T=2)
    rule = rules.make("rtrl", net, max_bytes=10 * 2 ** 20)
    S, P = 2 * N_HID, sum(v.numel() for v in params.values())
    assert rule.memory_bytes(params, 3) == 8 * 3 * S * (2 * P + S)  # generic path: J_s too
    rule.init(params, 3)
    with pytest.raises(ValueError, match=r"rtrl needs .*MiB.*batch 1000"):
        rule.init(params, 1000)


@pytest.mark.parametrize("opts,match", [({"max_bytes": 0}, "max_bytes=0"), ({"max_bytes": 1.5}, "max_bytes=1.5"),
                                        ({"fast": "yes"}, "fast='yes'")])
def test_rejects_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        rules.make("rtrl", models.make("rate", n_in=2, n_hidden=3, n_out=1), **opts)
