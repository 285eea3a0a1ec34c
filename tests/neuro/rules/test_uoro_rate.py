"""UORO's fast path on the rate RNN (neuro/rules/_fast/uoro.py) against the definition (neuro/rules/uoro.py,
``fast=False``: torch.func jvp/vjp over flat vectors), which test_uoro.py checks against Algorithm 1 and
test_unbiased.py against BPTT.

* Oracle: in float64, with the same seed, the estimate summed up to every point where the fast path hands one
  over (window ends, ``flush`` at odd steps, ``finish``) equals the definition's sum of its per-step
  estimates up to that step, to 1e-10 relative: alpha 1 and < 1, batch 1 and 2, windows 1, 3 and 7, one
  and two rank-one pairs per sample, the mse and ce losses, masked steps. So are the rank-one pairs.
* ``window = 1`` hands over every step's estimate; otherwise only window ends, ``flush`` and ``finish`` do,
  and nothing is pending after them; ``flush`` with nothing pending gives nothing.
* The network outputs and losses are those of ``net.step`` and the loss function.
* No torch.func transform is called; the state does not grow with the number of steps.
* A saturated network (``tanh`` = +-1 exactly, every ``nu^T dF/dtheta`` = 0) stays finite and equal.
* A state is a snapshot: stepping it twice, or stepping a copy, leaves it as it was.
* Checkpoints: a state saved with ``neuro.io.save_checkpoint`` after any step (a window held, in flight,
  just closed, after a flush), loaded back and continued, gives the estimates and the final state of the
  uninterrupted run to the last bit; batch 1 (in flight) and 2, one and two pairs, float32 and float64.
* The path is chosen as documented: rate (exactly) and a known loss, ``fast=True``, the steps not overridden.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

import models
from neuro import io, losses, rules
from neuro.rules._fast import uoro as fast_uoro
from neuro.rules.uoro import UORO, UOROState

from _helpers import bits

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
FLUSH_AFTER = (1, 4, 5, 10)  # 0-based steps after which the fast run flushes (odd steps 2, 5, 6, 11)


def _case(alpha: float = 1.0, batch: int = 2, T: int = 13, n_hidden: int = 5, scale: float = 1.0, loss: str = "mse",
          dtype=F64, seed: int = 0):
    net = models.make("rate", n_in=3, n_hidden=n_hidden, n_out=2, alpha=alpha)
    params = net.init_params(seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(7 + seed)
    xs = scale * torch.randn(T, batch, 3, generator=g, dtype=F64)
    ys = torch.randn(T, batch, 2, generator=g, dtype=F64)
    if loss == "ce":
        ys = torch.softmax(ys, -1)
    mask = torch.rand(T, batch, generator=g) < 0.7
    mask[-1] = True
    return net, params, xs.to(dtype), ys.to(dtype), mask


def _flat(g: dict) -> torch.Tensor:
    return torch.cat([g[k].reshape(-1) for k in sorted(g)])


def _cumulative(rule, params, xs, ys, mask, flush_after=(), seed=0):
    """Run a sequence; ``{step: summed estimate so far}`` at every step where an estimate was handed over
    (``T`` for finish), the outputs, and the final state."""
    state = rule.init(params, xs.shape[1], seed)
    total = torch.zeros(sum(v.numel() for v in params.values()), dtype=xs.dtype)
    given, outs = {}, []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        outs.append(out)
        grads = [out.grad]
        if t in flush_after:
            state, g = rule.flush(params, state)
            grads.append(g)
        for g in grads:
            if g is not None:
                total = total + _flat(g)
                given[t] = total.clone()
    state, g = rule.finish(params, state)
    if g is not None:
        given[xs.shape[0]] = total + _flat(g)
    return given, outs, state


def _generic_prefix_sums(net, params, xs, ys, mask, loss="mse", samples=1, seed=0):
    rule = rules.make("uoro", net, fast=False, loss=loss, samples=samples)
    state = rule.init(params, xs.shape[1], seed)
    sums, total = [], 0
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        total = total + _flat(out.grad)
        sums.append(total)
    return sums, state


def _handed_over(T: int, window: int, flush_after, in_flight: bool) -> dict[int, int]:
    """``{step where an estimate is handed over: the last step it covers}`` (0-based; finish not included). A
    window restarts at each flush. With one pair on the CPU a window's sequential part runs during the next
    window (in flight), so a window end hands over the window before it (none at the first end after a
    flush); a flush hands over everything."""
    covered, start, prev_end = {}, 0, None
    for t in range(T):
        if t - start + 1 == window:
            if not in_flight:
                covered[t] = t
            elif prev_end is not None:
                covered[t] = prev_end
            prev_end, start = t, t + 1
        if t in flush_after:
            covered[t], start, prev_end = t, t + 1, None
    return covered


@pytest.mark.parametrize("alpha", [1.0, 0.4])
@pytest.mark.parametrize("batch,samples", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("window", [1, 3, 7])
def test_fast_path_equals_the_generic_path(alpha, batch, samples, window):
    net, params, xs, ys, mask = _case(alpha=alpha, batch=batch)
    fast = rules.make("uoro", net, window=window, samples=samples)
    assert isinstance(fast.fast_path, fast_uoro.RateUORO)
    given, outs, state = _cumulative(fast, params, xs, ys, mask, flush_after=FLUSH_AFTER)
    sums, generic = _generic_prefix_sums(net, params, xs, ys, mask, samples=samples)
    T = xs.shape[0]
    covered = _handed_over(T, window, FLUSH_AFTER, in_flight=batch * samples == 1 and window > 1)
    assert set(given) - {T} == set(covered), sorted(given)
    for t, g in given.items():
        ref = sums[covered.get(t, T - 1)]
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()),
                                   msg=lambda m: f"summed estimate up to step {t + 1}: {m}")
    assert T in given or max(given) == T - 1  # finish handed over the rest, if any
    st, tt = fast.pair(params, state)
    torch.testing.assert_close(st, generic.s_tilde, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tt, generic.theta_tilde, rtol=1e-10, atol=1e-12)
    # the network's outputs and losses
    h = net.init_state(params, batch)
    for t, out in enumerate(outs):
        h, y = net.step(params, h, xs[t])
        torch.testing.assert_close(out.y, y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.loss, losses.get("mse")(y, ys[t], mask[t]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha", [1.0, 0.4])
@pytest.mark.parametrize("window", [3, 4])
def test_windows_in_flight_equal_the_generic_path_step_by_step(alpha, window):
    """One pair: each window's sequential part runs during the next window's steps (fused with their recurrent
    products). Over several windows in a row and flushes mid-window, the sums handed over and the rank-one
    pair after every step equal the definition's. A state is a snapshot: a step leaves the arrays of the
    state it started from as they were, and stepping a pickled copy of that state gives the same numbers. The
    state has one structure (the shapes of its arrays) at every step, a window in flight or not."""
    import pickle

    net, params, xs, ys, mask = _case(alpha=alpha, batch=1, T=30, n_hidden=6)
    flush_after = (13, 20)
    rule = rules.make("uoro", net, window=window)
    generic = rules.make("uoro", net, fast=False)
    state, gstate = rule.init(params, 1, 0), generic.init(params, 1, 0)
    total = torch.zeros(sum(v.numel() for v in params.values()), dtype=F64)
    given, landed, ref, shapes = {}, 0, [0], set()
    for t in range(xs.shape[0]):
        copy = pickle.loads(pickle.dumps(state))  # its own generator too
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        again = rule.step(params, copy, xs[t], ys[t], mask[t])
        assert torch.equal(out.y, again.y) and torch.equal(out.state.theta_mat, again.state.theta_mat)
        assert (out.grad is None) == (again.grad is None)
        if out.grad is not None:
            assert torch.equal(_flat(out.grad), _flat(again.grad))
        if state.flight is not None:  # the arrays of the state the step started from are unchanged
            assert torch.equal(state.flight.s_tilde, copy.flight.s_tilde)
            assert torch.equal(state.flight.acc, copy.flight.acc)
        assert torch.equal(state.rows[:state.held], copy.rows[:copy.held])
        state = out.state
        gout = generic.step(params, gstate, xs[t], ys[t], mask[t])
        gstate = gout.state
        ref.append(ref[-1] + _flat(gout.grad))  # the generic sum up to step t
        grads = [out.grad]
        landed += out.grad is not None and t not in flush_after
        if t in flush_after:
            state, g = rule.flush(params, state)
            grads.append(g)
        for g in grads:
            if g is not None:
                total = total + _flat(g)
                given[t] = total.clone()
        st, tt = rule.pair(params, state)
        torch.testing.assert_close(st, gstate.s_tilde, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tt, gstate.theta_tilde, rtol=1e-10, atol=1e-12)
        shapes.add(tuple((b[0], b[1], b[2]) for b in bits(state) if len(b) == 4))  # (path, dtype, shape) of arrays
    assert len(shapes) == 1, "the state's structure changed"
    assert landed >= 3  # windows landed at window ends, their sequence run in flight
    covered = _handed_over(xs.shape[0], window, flush_after, in_flight=True)
    assert set(given) == set(covered)
    for t, g in given.items():
        torch.testing.assert_close(g, ref[covered[t] + 1], rtol=1e-10, atol=1e-10 * float(ref[-1].abs().max()))
    torch.testing.assert_close(total + _flat(rule.finish(params, state)[1]), ref[-1], rtol=1e-10,
                               atol=1e-10 * float(ref[-1].abs().max()))


@pytest.mark.parametrize("loss", ["ce", "value"])
def test_fast_path_equals_the_generic_path_for_other_losses(loss):
    net, params, xs, ys, mask = _case(batch=2, loss=loss)
    given, outs, _ = _cumulative(rules.make("uoro", net, loss=loss, window=4), params, xs, ys, mask, flush_after=(6,))
    sums, _ = _generic_prefix_sums(net, params, xs, ys, mask, loss=loss)
    for t, g in given.items():
        ref = sums[min(t, len(sums) - 1)]
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
    y = torch.stack([o.y for o in outs])
    torch.testing.assert_close(outs[3].loss, losses.get(loss)(y[3], ys[3], mask[3]), rtol=1e-12, atol=1e-14)


def test_window_one_hands_over_every_step_and_windows_hold_steps_back():
    net, params, xs, ys, mask = _case(batch=2)
    sums, _ = _generic_prefix_sums(net, params, xs, ys, mask)
    given, _, _ = _cumulative(rules.make("uoro", net, window=1), params, xs, ys, mask)
    assert sorted(given) == list(range(xs.shape[0]))
    rule = rules.make("uoro", net, window=5)
    state = rule.init(params, 2, 0)
    for t in range(7):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        assert (out.grad is not None) == (t == 4)
        assert state.held == (t + 1) % 5
    state, g = rule.flush(params, state)
    assert g is not None and state.held == 0
    assert rule.flush(params, state) == (state, None) and rule.finish(params, state) == (state, None)


def test_pair_leaves_the_state_and_its_generator_alone():
    net, params, xs, ys, mask = _case(batch=1)
    rule = rules.make("uoro", net, window=6)
    plain, _, _ = _cumulative(rule, params, xs, ys, mask)
    state = rule.init(params, 1, 0)
    total = 0
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        total = total + (_flat(out.grad) if out.grad is not None else 0)
        s1, t1 = rule.pair(params, state)
        s2, t2 = rule.pair(params, state)
        assert torch.equal(s1, s2) and torch.equal(t1, t2)
    total = total + _flat(rule.finish(params, state)[1])
    assert torch.equal(total, plain[xs.shape[0]])


def test_no_torch_func_and_bounded_state():
    net, params, xs, ys, mask = _case(batch=2, T=40)

    def forbid(*_a, **_k):
        raise AssertionError("the analytic path called a torch.func transform")

    rule = rules.make("uoro", net, window=6)
    with mock.patch.multiple(torch.func, jvp=forbid, vjp=forbid, vmap=forbid, jacrev=forbid, grad_and_value=forbid):
        state = rule.init(params, 2, 0)
        sizes = set()
        for t in range(xs.shape[0]):
            state = rule.step(params, state, xs[t], ys[t], mask[t]).state
            sizes.add(tuple(v.numel() for v in state if isinstance(v, torch.Tensor)))
            assert state.held < 6
        rule.finish(params, state)
    assert len(sizes) == 1, sizes


def test_a_saturated_network_stays_finite_and_equal():
    """Inputs so large that tanh(i) = +-1 exactly: every delta is 0, theta~ stays 0 (rho_0 = eps each step)."""
    net, params, xs, ys, mask = _case(batch=2, T=12, scale=1e3)
    assert bool((net.step(params, net.init_state(params, 2), xs[0])[0].h.abs() == 1).all())
    given, _, state = _cumulative(rules.make("uoro", net, window=12), params, xs, ys, mask)
    sums, _ = _generic_prefix_sums(net, params, xs, ys, mask)
    assert all(bool(torch.isfinite(g).all()) for g in given.values())
    torch.testing.assert_close(given[11], sums[11], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 2])
def test_float32_follows_the_generic_path(batch):
    """float32 (batch 1: the compiled kernels in float32, windows in flight) against the generic path."""
    net, params, xs, ys, mask = _case(batch=batch, T=60, n_hidden=12, dtype=torch.float32)
    given, _, _ = _cumulative(rules.make("uoro", net, window=8), params, xs, ys, mask, flush_after=(20,))
    sums, _ = _generic_prefix_sums(net, params, xs, ys, mask)
    g, ref = given[max(given)], sums[-1]
    assert float((g - ref).norm()) <= 1e-4 * float(ref.norm())


def test_the_path_is_chosen_as_documented():
    rate = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    p = rate.init_params()
    assert isinstance(rules.make("uoro", rate).fast_path, fast_uoro.RateUORO)
    assert isinstance(rules.make("uoro", rate).init(p), fast_uoro.RateUOROState)
    assert isinstance(rules.make("uoro", rate, loss="ce").init(p), fast_uoro.RateUOROState)
    assert rules.make("uoro", rate, fast=False).fast_path is None
    assert isinstance(rules.make("uoro", rate, fast=False).init(p), UOROState)
    lif = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    assert rules.make("uoro", lif).fast_path is None
    assert isinstance(rules.make("uoro", lif).init(lif.init_params()), UOROState)

    @dataclasses.dataclass(frozen=True)
    class Changed(UORO):
        name = "test-changed-uoro"

        def step(self, params, state, x, y, mask):
            return super().step(params, state, x, y, mask)

    assert Changed(net=rate).fast_path is None
    assert isinstance(Changed(net=rate).init(p), UOROState)


def test_a_state_stepped_twice_is_left_as_it_was():
    """Two different steps from one state (mid-window, no signs drawn): continuing from the first equals the run
    in which the second never happened."""
    net, params, xs, ys, mask = _case(batch=1, T=12)
    rule = rules.make("uoro", net, window=5)
    plain, _, _ = _cumulative(rule, params, xs, ys, mask)
    state = rule.init(params, 1, 0)
    total = torch.zeros(sum(v.numel() for v in params.values()), dtype=F64)
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        if t % 5 not in (3, 4):  # a second step from the same state writes the same row of the window
            rule.step(params, state, -xs[t], ys[t], mask[t])
        state = out.state
        total = total + (_flat(out.grad) if out.grad is not None else 0)
    total = total + _flat(rule.finish(params, state)[1])
    assert torch.equal(total, plain[xs.shape[0]])


def _run_from(rule, params, state, xs, ys, mask, start, flush_after=()):
    given = []
    for t in range(start, xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        given.append(out.grad)
        if t in flush_after:
            state, g = rule.flush(params, state)
            given.append(g)
    state, last = rule.finish(params, state)
    return given + [last], state


@pytest.mark.parametrize("batch,samples,window,dtype", [(1, 1, 4, F64), (1, 1, 4, torch.float32), (2, 1, 4, F64),
                                                        (1, 2, 3, F64), (1, 1, 1, F64)])
def test_a_checkpoint_resumes_exactly(batch, samples, window, dtype, tmp_path):
    """Saved after each step of a run (held steps only, a window in flight at every stage of its sequence, a
    window just closed, just after a flush), loaded back and continued: the same numbers as the run that never
    stopped, to the last bit."""
    net, params, xs, ys, mask = _case(alpha=0.6, batch=batch, T=19, dtype=dtype)
    rule = rules.make("uoro", net, window=window, samples=samples)
    flush_after = (10,)
    plain, plain_state = _run_from(rule, params, rule.init(params, batch, 5), xs, ys, mask, 0, flush_after)
    state, flights = rule.init(params, batch, 5), 0
    for t in range(xs.shape[0]):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
        if t in flush_after:
            state = rule.flush(params, state)[0]
        flights += state.flight is not None and state.flight.active
        io.save_checkpoint(tmp_path / "ckpt.pt", {"rule_state": state})
        loaded = io.load_checkpoint(tmp_path / "ckpt.pt")["rule_state"]
        assert loaded is not state and bits(loaded) == bits(state)
        resumed, resumed_state = _run_from(rule, params, loaded, xs, ys, mask, t + 1, flush_after)
        n_given = t + 1 + sum(u <= t for u in flush_after)  # the estimates given before the checkpoint
        assert bits(resumed) == bits(plain[n_given:]), f"the estimates after a checkpoint at step {t + 1} differ"
        assert bits(resumed_state) == bits(plain_state), f"the final state after a checkpoint at step {t + 1} differs"
    assert (flights > 0) == (batch * samples == 1 and window > 1)


def test_training_with_a_run_directory_resumes_to_the_uninterrupted_run(tmp_path):
    """``neuro.train`` with a run directory checkpoints the fast path's state; resumed, it ends where the run that
    never stopped ends (parameters equal to the last bit)."""
    import neuro
    from neuro import tasks

    net = models.make("rate", n_in=1, n_hidden=8, n_out=1)

    def train(steps, run_dir, resume=False):
        rule = rules.make("uoro", net, window=16)
        return neuro.train(net, rule, tasks.make("sine"), steps, run_dir=run_dir, resume=resume, update_every=20,
                           progress=False)

    train(60, tmp_path / "a")
    resumed = train(120, tmp_path / "a", resume=True)
    plain = train(120, tmp_path / "b")
    for k, v in plain.params.items():
        assert torch.equal(resumed.params[k], v), k
