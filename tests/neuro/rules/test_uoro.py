"""UORO (neuro/rules/uoro.py): oracle tests beyond the rule contract and the unbiasedness oracle
(tests/neuro/rules/test_unbiased.py).

* One step equals Algorithm 1 of Tallec & Ollivier (2018) computed by hand from full one-step Jacobians
  (the same random signs), on a rate RNN and a spiking LIF network.
* The rank-one pair is an unbiased estimate of RTRL's influence matrix: the mean of ``s~_t theta~_t^T`` over
  a batch of independent samples is within 3 standard errors (in Frobenius norm) of ``M_t``.
* O(n + p): no Jacobian is ever formed (the Jacobian functions are patched to raise), the state holds
  O(S + P) numbers per sample (and the fast path's window of held steps, O(S) numbers a step); the noise
  differs across the samples of a batch; reset keeps the generator.
* Long float32 runs stay finite with balanced factors; a non-finite estimate raises, naming the step.
* A checkpoint (``neuro.io``) of the state taken mid-sequence, restored and continued, gives the estimates
  and the state of the uninterrupted run to the last bit (the rate fast path's checkpoints: test_uoro_rate.py).

Each runs the definition (``fast=False``) and, on the rate RNN, the fast path too (its own oracle tests,
equality with the definition, are in test_uoro_rate.py); ``rule.pair`` reads the current pair.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

import models
from neuro import io, rules
from neuro.rules import _onestep
from neuro.rules._common import random_signs
from neuro.rules._onestep import flat_step

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64


def _case(model: str, n_hidden: int = 4, T: int = 8, batch: int = 3, dtype=F64, seed: int = 0):
    opts = dict(input_scale=8.0, tau_mem=5.0, tau_syn=2.0) if model == "lif" else {}
    net = models.make(model, n_in=2, n_hidden=n_hidden, n_out=2, **opts)
    params = net.init_params(seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(11)
    if net.spiking:
        xs = (torch.rand(T, batch, 2, generator=g) < 0.5).to(dtype)
    else:
        xs = torch.randn(T, batch, 2, generator=g, dtype=F64).to(dtype)
    ys = torch.randn(T, batch, 2, generator=g, dtype=F64).to(dtype)
    return net, params, xs, ys, torch.ones(T, batch, dtype=torch.bool)


def _run(rule, params, xs, ys, mask, steps: int, seed: int = 0, state=None):
    state = rule.init(params, xs.shape[1], seed) if state is None else state
    out = None
    for t in range(steps):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
    return state, out


@pytest.mark.parametrize("model,fast", [("rate", False), ("rate", True), ("lif", False)])
def test_one_step_is_algorithm_1(model, fast):
    """fast: the analytic rate path, one step handed over by ``flush`` (its pair read with ``pair``)."""
    net, params, xs, ys, mask = _case(model)
    rule = rules.make("uoro", net, fast=fast)
    state, _ = _run(rule, params, xs, ys, mask, 4)  # a non-trivial pair
    state, _ = rule.flush(params, state)
    st, tt = rule.pair(params, state)
    assert float(st.norm()) > 0 and float(tt.norm()) > 0
    gen = torch.Generator()
    gen.set_state(state.gen.get_state())  # the signs the rule is about to draw

    fs = flat_step(net, "mse", params)
    theta, s = fs.flat_params(params), fs.flat_state(state.net)
    x, y, m = xs[4], ys[4], mask[4]
    B, S = s.shape
    _, dl_ds, dl_dtheta, _, _ = fs.loss_grads(theta, s, x, y, m)
    _, Js, Jt = fs.jacobians(theta, s, x)  # [B, S, S], [B, S, P]: the full Jacobians, by reverse mode
    g = ((dl_ds * st).sum(1)[:, None] * tt + dl_dtheta).mean(0)
    nu = random_signs(gen, (B, S), s)
    Jst = torch.einsum("bij,bj->bi", Js, st)
    delta = torch.einsum("bi,bip->bp", nu, Jt)
    eps = rule.eps
    rho0 = torch.sqrt(tt.norm(dim=1) / (Jst.norm(dim=1) + eps)) + eps
    rho1 = torch.sqrt(delta.norm(dim=1) / (math.sqrt(S) + eps)) + eps
    s_next = rho0[:, None] * Jst + rho1[:, None] * nu
    t_next = tt / rho0[:, None] + delta / rho1[:, None]

    out = rule.step(params, state, x, y, m)
    new, grad = rule.flush(params, out.state)
    assert (grad is None) != (out.grad is None), "the step's estimate is handed over once, by step or by flush"
    grad = out.grad if grad is None else grad
    torch.testing.assert_close(torch.cat([grad[k].reshape(-1) for k in fs.keys]), g, rtol=1e-12, atol=1e-12)
    s_new, t_new = rule.pair(params, new)
    torch.testing.assert_close(s_new, s_next, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t_new, t_next, rtol=1e-12, atol=1e-12)
    # the factors are balanced: ||rho_0 J s~|| = ||theta~ / rho_0||, ||rho_1 nu|| = ||delta / rho_1|| (eps aside)
    torch.testing.assert_close((rho0[:, None] * Jst).norm(dim=1), (tt / rho0[:, None]).norm(dim=1), rtol=1e-5, atol=0)
    torch.testing.assert_close((rho1[:, None] * nu).norm(dim=1), (delta / rho1[:, None]).norm(dim=1), rtol=1e-5, atol=0)


def test_rank_one_pair_is_an_unbiased_influence_matrix():
    """E[s~_t theta~_t^T] = M_t = ds_t/dtheta (RTRL's recursion with full Jacobians), within 3 SE."""
    T, N = 6, 20000
    net, params, xs, ys, mask = _case("rate", n_hidden=3, T=T, batch=1)
    fs = flat_step(net, "mse", params)
    theta = fs.flat_params(params)
    M = torch.zeros(1, fs.n_state, fs.n_params, dtype=F64)
    s = fs.flat_state(net.init_state(params, 1))
    for t in range(T):
        s_new, J, I = fs.jacobians(theta, s, xs[t])
        M, s = torch.bmm(J, M) + I, s_new

    rule = rules.make("uoro", net)  # the analytic rate path
    state, _ = _run(rule, params, xs.expand(T, N, 2), ys.expand(T, N, 2), mask.expand(T, N), T, seed=3)
    st, tt = rule.pair(params, state)
    outer = st[:, :, None] * tt[:, None, :]  # [N, S, P]
    err = float((outer.mean(0) - M[0]).norm())
    se = math.sqrt(float(outer.var(0).sum()) / N)
    assert err <= 3 * se, f"||mean s~ theta~^T - M|| = {err:.4g} > 3 SE = {3 * se:.4g} (||M|| = {float(M.norm()):.3g})"
    assert se < 0.1 * float(M.norm()), "the test is too weak to see a bias"


@pytest.mark.parametrize("model,fast", [("rate", False), ("rate", True), ("lif", False)])
def test_no_jacobian_is_formed_and_the_state_is_linear_in_size(model, fast):
    net, params, xs, ys, mask = _case(model, n_hidden=16)

    def forbid(*_a, **_k):
        raise AssertionError("a Jacobian was formed")

    with mock.patch.object(_onestep.FlatStep, "jacobians", forbid), mock.patch.object(_onestep, "jacrev", forbid), \
            mock.patch.object(torch.func, "jacrev", forbid), mock.patch.object(torch.func, "jacfwd", forbid), \
            mock.patch.object(torch.autograd.functional, "jacobian", forbid):
        state, out = _run(rules.make("uoro", net, fast=fast), params, xs, ys, mask, 5)
    fs = flat_step(net, "mse", params)
    B, S, P = xs.shape[1], fs.n_state, fs.n_params
    rows = getattr(state, "rows", None)  # the fast path's window: ``window`` held steps of O(S) numbers each
    numel = sum(t.numel() for t in state if isinstance(t, torch.Tensor) and t is not rows)
    numel += sum(t.numel() for t in state.net)
    assert numel <= 2 * B * (S + P), f"the state holds {numel} numbers for B={B}, S={S}, P={P}"
    if rows is not None:
        window = rules.make("uoro", net).window
        assert rows.numel() <= window * B * (3 * S + 8), f"the window holds {rows.numel()} numbers"
    assert S * P > 10 * (S + P)  # a Jacobian would have been noticed


def test_noise_is_independent_across_the_batch():
    net, params, xs, ys, mask = _case("rate", batch=2)
    same = (xs[:, :1].expand(-1, 2, -1), ys[:, :1].expand(-1, 2, -1), mask)
    for fast in (False, True):
        rule = rules.make("uoro", net, fast=fast)
        state, _ = _run(rule, params, *same, 3)
        st = rule.pair(params, state)[0]
        assert not torch.allclose(st[0], st[1]), "two samples of a batch drew the same signs"


@pytest.mark.parametrize("fast", [False, True])
def test_reset_keeps_the_generator_and_clears_the_pair(fast):
    net, params, xs, ys, mask = _case("rate")
    rule = rules.make("uoro", net, fast=fast)
    state, _ = _run(rule, params, xs, ys, mask, 4, seed=7)
    state, _ = rule.finish(params, state)
    fresh = rule.reset(params, state)
    assert fresh.gen is state.gen and fresh.t == 0
    assert all(float(v.abs().sum()) == 0 for v in rule.pair(params, fresh))

    def total(state):
        state, out = _run(rule, params, xs, ys, mask, 3, state=state)
        return rules.add_into(rules.add_into(rules.zeros_like_params(params), out.grad), rule.finish(params, state)[1])

    after_reset, from_init = total(fresh), total(rule.init(params, xs.shape[1], 7))
    assert not torch.equal(after_reset["W_rec"], from_init["W_rec"]), "reset re-seeded the generator"


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.slow
def test_long_float32_run_stays_finite_and_balanced(fast):
    T = 2000
    net, params, xs, ys, mask = _case("rate", n_hidden=16, T=T, batch=2, dtype=torch.float32)
    rule = rules.make("uoro", net, fast=fast)
    state = rule.init(params, 2, 0)
    for t in range(T):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        for g in (out.grad or {}).values():
            assert torch.isfinite(g).all(), f"non-finite estimate at step {t + 1}"
    state, g = rule.finish(params, state)
    assert g is None or all(torch.isfinite(v).all() for v in g.values())
    st, tt = rule.pair(params, state)
    ratio = st.norm(dim=1) / tt.norm(dim=1)
    assert bool(((ratio > 1e-3) & (ratio < 1e3)).all()), f"unbalanced factors: ||s~|| / ||theta~|| = {ratio.tolist()}"


@pytest.mark.parametrize("fast", [False, True])
def test_a_non_finite_estimate_names_the_step(fast):
    """The fast path finds it when the window is folded (here at finish), before any update could use it."""
    net, params, xs, ys, mask = _case("rate")
    xs = xs.clone()
    xs[2, 0, 0] = float("nan")
    rule = rules.make("uoro", net, fast=fast)
    with pytest.raises(FloatingPointError, match=r"uoro: the estimate at step 3 .*'W_in'"):
        state, _ = _run(rule, params, xs, ys, mask, 5)
        rule.finish(params, state)


def test_options_are_checked():
    net = models.make("rate", n_in=1, n_hidden=2, n_out=1)
    for bad in (0, -1e-7, float("nan"), "1e-7"):
        with pytest.raises(ValueError, match="eps="):
            rules.make("uoro", net, eps=bad)
    with pytest.raises(ValueError, match="batch=0"):
        rules.make("uoro", net).init(net.init_params(), 0)
    for bad in (0, 2.5, "8"):
        with pytest.raises(ValueError, match="window="):
            rules.make("uoro", net, window=bad)
    with pytest.raises(ValueError, match="fast="):
        rules.make("uoro", net, fast="yes")



def test_samples_average_independent_pairs_and_reduce_the_variance():
    """``samples=K``: still unbiased, variance about K times smaller; K=1 is the plain rule."""
    import models
    import neuro

    torch.set_num_threads(1)
    net = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    p = net.init_params(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(8, 1, 2, generator=g, dtype=torch.float64), torch.randn(8, 1, 1, generator=g, dtype=torch.float64)
    true = torch.cat([v.flatten() for v in neuro.grad_estimate(net, p, "bptt", xs, ys).values()])

    def draws(K, n):
        return torch.stack([torch.cat([v.flatten() for v in
                            neuro.grad_estimate(net, p, "uoro", xs, ys, seed=s, samples=K).values()]) for s in range(n)])

    one, four = draws(1, 300), draws(4, 300)
    var1, var4 = one.var(0).sum(), four.var(0).sum()
    assert 2.5 < (var1 / var4).item() < 6.0, (var1, var4)
    se = (var4 / len(four)).sqrt()
    assert (four.mean(0) - true).norm() < 3 * se
    with pytest.raises(ValueError, match="samples=0 is invalid"):
        neuro.rules.make("uoro", net, samples=0)


def _equal(a, b, path="state") -> None:
    """``a`` and ``b`` (states, estimates) are equal to the last bit: the same structure, tensors with the same
    dtype, shape and bits, generators in the same state."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, torch.Generator):
        assert torch.equal(a.get_state(), b.get_state()), f"{path}: the generators differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _equal(u, v, f"{path}.{getattr(a, '_fields', range(len(a)))[i]}")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def resume_equals_uninterrupted(rule, params, xs, ys, mask, at: int, path) -> None:
    """Run ``xs`` through ``rule`` once without a break and once saved to ``path`` after step ``at`` with
    :func:`neuro.io.save_checkpoint`, loaded back and continued: every estimate and the final state (after
    ``finish``) are equal to the last bit."""
    def run(state, start):
        given = []
        for t in range(start, xs.shape[0]):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            given.append(out.grad)
        state, last = rule.finish(params, state)
        return given + [last], state

    state = rule.init(params, xs.shape[1], 3)
    first = []
    for t in range(at):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        first.append(out.grad)
    io.save_checkpoint(path, {"rule_state": state})
    plain, plain_state = run(state, at)
    restored = io.load_checkpoint(path)["rule_state"]
    assert restored is not state
    resumed, resumed_state = run(restored, at)
    _equal(resumed, plain, "estimates")
    _equal(resumed_state, plain_state)


@pytest.mark.parametrize("model", ["rate", "lif"])
def test_a_checkpoint_resumes_the_definition_exactly(model, tmp_path):
    net, params, xs, ys, mask = _case(model, T=8)
    resume_equals_uninterrupted(rules.make("uoro", net, fast=False, samples=2), params, xs, ys, mask, 3,
                                tmp_path / "ckpt.pt")
