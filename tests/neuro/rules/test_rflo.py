"""RFLO (Murray 2019): its definition against a direct loop, on the rate RNN and on a model that only implements
the cell contract, and the truncated-RTRL identity."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import models
import neuro
from models.rate import RateRNN, RateState
from neuro import rules
from neuro.contract import AbstractNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, N, N_OUT, T, BATCH, ALPHA = 2, 4, 2, 9, 2, 0.3


def _setup(seed: int = 0):
    net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=ALPHA)
    params = net.init_params(seed=seed, dtype=torch.float64)
    params["b"] = 0.1 * torch.randn(N, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    g = torch.Generator().manual_seed(10 + seed)
    xs = torch.randn(T, BATCH, N_IN, generator=g, dtype=torch.float64)
    ys = torch.randn(T, BATCH, N_OUT, generator=g, dtype=torch.float64)
    mask = torch.rand(T, BATCH, generator=g) < 0.7
    return net, params, xs, ys, mask


def _tanh_prime(u: float) -> float:
    return 1.0 - math.tanh(u) ** 2


def _direct_loop(params, xs, ys, mask, B, phi=math.tanh, phi_prime=_tanh_prime):
    """RFLO written literally with Python numbers: loops over t, samples, i, j (module docstring of rflo), for the
    leaky rate network with the nonlinearity ``phi``."""
    W_in, W_rec, b = params["W_in"].tolist(), params["W_rec"].tolist(), params["b"].tolist()
    W_out, b_out = params["W_out"].tolist(), params["b_out"].tolist()
    Bm = B.tolist()
    nb = xs.shape[1]
    g = {"W_in": [[0.0] * N_IN for _ in range(N)], "W_rec": [[0.0] * N for _ in range(N)], "b": [0.0] * N,
         "W_out": [[0.0] * N for _ in range(N_OUT)], "b_out": [0.0] * N_OUT}
    for s in range(nb):
        h = [0.0] * N
        P_rec = [[0.0] * N for _ in range(N)]
        P_in = [[0.0] * N_IN for _ in range(N)]
        P_b = [0.0] * N
        for t in range(xs.shape[0]):
            x = xs[t, s].tolist()
            u = [sum(W_in[i][j] * x[j] for j in range(N_IN)) + sum(W_rec[i][j] * h[j] for j in range(N)) + b[i]
                 for i in range(N)]
            dphi = [phi_prime(u[i]) for i in range(N)]
            for i in range(N):
                for j in range(N):
                    P_rec[i][j] = (1 - ALPHA) * P_rec[i][j] + ALPHA * dphi[i] * h[j]
                for j in range(N_IN):
                    P_in[i][j] = (1 - ALPHA) * P_in[i][j] + ALPHA * dphi[i] * x[j]
                P_b[i] = (1 - ALPHA) * P_b[i] + ALPHA * dphi[i]
            h = [(1 - ALPHA) * h[i] + ALPHA * phi(u[i]) for i in range(N)]
            yh = [sum(W_out[k][i] * h[i] for i in range(N)) + b_out[k] for k in range(N_OUT)]
            m = float(mask[t, s])
            eps = [m * (yh[k] - float(ys[t, s, k])) / nb for k in range(N_OUT)]
            for i in range(N):
                L = sum(Bm[i][k] * eps[k] for k in range(N_OUT))
                for j in range(N):
                    g["W_rec"][i][j] += L * P_rec[i][j]
                for j in range(N_IN):
                    g["W_in"][i][j] += L * P_in[i][j]
                g["b"][i] += L * P_b[i]
            for k in range(N_OUT):
                for i in range(N):
                    g["W_out"][k][i] += eps[k] * h[i]
                g["b_out"][k] += eps[k]
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in g.items()}


@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_rflo_equals_its_definition_in_a_direct_loop(feedback):
    net, params, xs, ys, mask = _setup()
    rule = rules.make("rflo", net, feedback=feedback)
    got = neuro.grad_estimate(net, params, rule, xs, ys, seed=3, mask=mask)
    B = rule.init(params, BATCH, seed=3).B if feedback == "random" else params["W_out"].T
    assert B.shape == (N, N_OUT)
    want = _direct_loop(params, xs, ys, mask, B)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
        assert want[k].abs().max() > 1e-6, k  # every parameter gets a signal


@dataclasses.dataclass(frozen=True)
class SoftsignRNN(RateRNN):
    """A leaky rate network with ``phi(u) = u / (1 + |u|)``, known to the rules only through the cell contract: its
    ``neuron_derivatives`` is the contract's default (one reverse pass through ``neuron``), and no fast path knows
    it."""

    name = "softsign"

    def neuron(self, params, state, i):
        h = (1.0 - self.alpha) * state.h + self.alpha * (i / (1.0 + i.abs()))
        return RateState(h=h), h

    neuron_derivatives = AbstractNetwork.neuron_derivatives


@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_a_model_of_the_contract_gets_rflo(feedback):
    """A one-field model that no fast path knows runs RFLO's definition, read through the contract: the same numbers
    as the direct loop with its nonlinearity."""
    net = SoftsignRNN(n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=ALPHA)
    _, params, xs, ys, mask = _setup()
    rule = rules.make("rflo", net, feedback=feedback)
    assert rule.fast_path is None
    got = neuro.grad_estimate(net, params, rule, xs, ys, seed=3, mask=mask)
    B = rule.init(params, BATCH, seed=3).B if feedback == "random" else params["W_out"].T
    want = _direct_loop(params, xs, ys, mask, B, phi=lambda u: u / (1 + abs(u)),
                        phi_prime=lambda u: 1 / (1 + abs(u)) ** 2)
    tanh = _direct_loop(params, xs, ys, mask, B)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
        assert not torch.allclose(want[k], tanh[k]), k  # the nonlinearity is really the model's


def _truncated_rtrl(net, params, xs, ys, mask):
    """RTRL with the recurrent Jacobian cut to its leak: M_t = (1 - alpha) M_{t-1} + dh_t/dtheta|_{h_{t-1}},
    the immediate Jacobian and the readout taken with torch.func.jacrev of net.step (independent of rflo.py)."""
    keys = sorted(params)
    nb = xs.shape[1]
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(nb):
        state = net.init_state(params, 1)
        M = {k: torch.zeros((N,) + tuple(v.shape), dtype=torch.float64) for k, v in params.items()}
        for t in range(xs.shape[0]):
            x = xs[t, s][None]

            def h_of(p, h_prev):
                return net.step(p, type(state)(h_prev), x)[0].h[0]

            J_theta = torch.func.jacrev(h_of, argnums=0)(params, state.h)  # dh_t/dtheta [N, *shape]
            J_h = torch.func.jacrev(h_of, argnums=1)(params, state.h)[:, 0]  # [N, N]
            leak = torch.diagonal(J_h)  # the diagonal: (1 - alpha) + alpha phi' W_rec_ii
            cut = (1 - ALPHA) * torch.eye(N, dtype=torch.float64)
            assert not torch.allclose(J_h, cut)  # the coupling that truncation drops is really there
            assert not torch.allclose(leak, cut.diagonal())
            M = {k: (1 - ALPHA) * M[k] + J_theta[k] for k in keys}
            state, y_hat = net.step(params, state, x)

            def loss_of(p, h):
                yh = h @ p["W_out"].T + p["b_out"]
                return neuro.losses.get("mse")(yh, ys[t, s][None], mask[t, s][None]) / nb

            dl_dp, dl_dh = torch.func.grad(loss_of, argnums=(0, 1))(params, state.h)
            for k in keys:
                total[k] += torch.tensordot(dl_dh[0], M[k], dims=1) + dl_dp[k]
    return total


def test_rflo_with_readout_feedback_is_truncated_rtrl():
    net, params, xs, ys, mask = _setup(seed=1)
    got = neuro.grad_estimate(net, params, "rflo", xs, ys, mask=mask, feedback="readout")
    want = _truncated_rtrl(net, params, xs, ys, mask)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
    # ... and truncation is an approximation: it is not the true gradient
    true = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert not torch.allclose(got["W_rec"], true["W_rec"], rtol=1e-3)
    torch.testing.assert_close(got["W_out"], true["W_out"])  # the readout's gradient is exact


def test_estimate_is_the_batch_mean_and_feedback_is_kept_across_reset():
    net, params, xs, ys, mask = _setup(seed=2)
    rule = rules.make("rflo", net)
    both = neuro.grad_estimate(net, params, rule, xs, ys, seed=5, mask=mask)
    each = [neuro.grad_estimate(net, params, rule, xs[:, s:s + 1], ys[:, s:s + 1], seed=5, mask=mask[:, s:s + 1])
            for s in range(BATCH)]
    for k in params:
        torch.testing.assert_close(both[k], (each[0][k] + each[1][k]) / 2, rtol=1e-12, atol=1e-14)
    state = rule.init(params, BATCH, seed=5)
    for t in range(3):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
    fresh = rule.reset(params, state)
    assert torch.equal(fresh.B, state.B) and fresh.P_rec.abs().sum() == 0
    assert not torch.equal(rule.init(params, BATCH, seed=6).B, state.B)


def test_random_feedback_has_murrays_scale():
    net = models.make("rate", n_in=1, n_hidden=400, n_out=4)
    params = net.init_params(dtype=torch.float64)
    B = rules.make("rflo", net).init(params, 1, seed=0).B
    assert abs(B.mean().item()) < 0.05 and abs(B.var().item() - 1 / 4) < 0.02  # N(0, 1/n_out)
    B2 = rules.make("rflo", net, feedback_scale=2.0).init(params, 1, seed=0).B
    torch.testing.assert_close(B2, 2 * B)


@dataclasses.dataclass(frozen=True)
class LeakyReadoutRNN(RateRNN):
    """The rate network with a readout that the contract says is leaky (RFLO's readout is linear)."""

    @property
    def readout_decay(self) -> float:
        return 0.5


def test_errors_name_the_value_and_the_alternatives():
    lif = models.make("lif", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match=r"model 'lif'.*\('v', 'i'\).*'eprop'"):
        rules.make("rflo", lif)
    with pytest.raises(ValueError, match="model 'lstm'.*one state field per unit"):
        rules.make("rflo", models.make("lstm", n_in=2, n_hidden=4, n_out=1))
    with pytest.raises(ValueError, match="model 'columnar'.*local form"):
        rules.make("rflo", models.make("columnar", n_in=2, n_hidden=4, n_out=1))
    with pytest.raises(ValueError, match="readout_decay 0.*0.5"):
        rules.make("rflo", LeakyReadoutRNN(n_in=2, n_hidden=4, n_out=1))
    rate = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="feedback='sym'.*'random'"):
        rules.make("rflo", rate, feedback="sym")
    with pytest.raises(ValueError, match="feedback_scale"):
        rules.make("rflo", rate, feedback_scale=0.0)


# -- the windowed sum (fast=True) against the per-step path (fast=False) ------------------------------------------
def _cumulative(rule, params, xs, ys, mask, flush_after=(), seed=3):
    """Run ``rule`` over the sequence, calling ``flush`` after the steps in ``flush_after``: the running total of the
    estimates after every step (and flush) and the state after each flush."""
    state = rule.init(params, xs.shape[1], seed)
    total = rules.zeros_like_params(params)
    totals, flushed = [], {}
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        rules.add_into(total, out.grad)
        if t in flush_after:
            state, g = rule.flush(params, state)
            rules.add_into(total, g)
            flushed[t] = state
        totals.append({k: v.clone() for k, v in total.items()})
    state, g = rule.finish(params, state)
    rules.add_into(total, g)
    return totals, total, flushed


@pytest.mark.parametrize("alpha", [0.3, 1.0])
@pytest.mark.parametrize("window,batch", [(1, 2), (3, 2), (7, 2), (3, 1), (7, 1)])
def test_windowed_sum_equals_the_per_step_path(alpha, window, batch):
    """Batch 2 (and 1: another code path), flushes after odd steps: after each flush the running total is the
    per-step path's (nothing is lost or delayed), the carried eligibility is the per-step one, and the whole sums
    are equal."""
    net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=alpha)
    _, params, xs, ys, mask = _setup(seed=3)
    xs, ys, mask = torch.cat([xs, xs[:4]]), torch.cat([ys, ys[:4]]), torch.cat([mask, mask[:4]])  # T = 13
    xs, ys, mask = xs[:, :batch], ys[:, :batch], mask[:, :batch]
    ref_rule = rules.make("rflo", net, fast=False)
    fast_rule = rules.make("rflo", net, window=window)
    flush_after = (1, 4, 5, 9)
    ref, ref_total, ref_states = _cumulative(ref_rule, params, xs, ys, mask, flush_after)
    got, got_total, got_states = _cumulative(fast_rule, params, xs, ys, mask, flush_after)
    for t in flush_after:
        for k in params:
            torch.testing.assert_close(got[t][k], ref[t][k], rtol=1e-10, atol=1e-12, msg=f"step {t}, {k}")
        if alpha < 1:  # the carry is the eligibility of the per-step path
            for f in ("P_rec", "P_in", "P_b"):
                torch.testing.assert_close(getattr(got_states[t], f), getattr(ref_states[t], f), rtol=1e-10, atol=1e-12)
        else:
            assert got_states[t].P_rec.numel() == 0  # alpha = 1: nothing outlives a step
    for k in params:
        torch.testing.assert_close(got_total[k], ref_total[k], rtol=1e-10, atol=1e-12, msg=k)
        assert ref_total[k].abs().max() > 1e-6, k
    # the estimate of a window comes at its last step, and not before
    state = fast_rule.init(params, batch, 3)
    given = []
    for t in range(window + 1):
        out = fast_rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        given.append(out.grad is not None)
    assert given == [(t + 1) % window == 0 for t in range(window + 1)]


@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_windowed_rflo_equals_its_definition_in_a_direct_loop(feedback):
    net, params, xs, ys, mask = _setup()
    rule = rules.make("rflo", net, feedback=feedback, window=4)
    got = neuro.grad_estimate(net, params, rule, xs, ys, seed=3, mask=mask)
    ref = neuro.grad_estimate(net, params, rules.make("rflo", net, feedback=feedback, fast=False), xs, ys, seed=3,
                              mask=mask)
    B = rule.init(params, BATCH, seed=3).B if feedback == "random" else params["W_out"].T
    want = _direct_loop(params, xs, ys, mask, B)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
        torch.testing.assert_close(ref[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


def test_window_options_are_checked():
    rate = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="window=0"):
        rules.make("rflo", rate, window=0)
    with pytest.raises(ValueError, match="fast='yes'"):
        rules.make("rflo", rate, fast="yes")


def test_fast_path_on_rate_and_lif_calls_no_autograd():
    """The per-step overhead of the windowed path: on the rate RNN and LIF the derivatives are computed in place, with
    neither a reverse pass nor the model's neuron_derivatives (which the definitions read)."""
    from unittest import mock

    def forbid(*_a, **_k):
        raise AssertionError("called")

    _, params, xs, ys, mask = _setup()
    net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=ALPHA)
    lif = models.make("lif", n_in=N_IN, n_hidden=N, n_out=N_OUT)
    lif_params = lif.init_params(dtype=torch.float64)
    softsign = SoftsignRNN(n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=ALPHA)
    with mock.patch.object(torch.autograd, "grad", forbid), mock.patch.object(torch.Tensor, "backward", forbid), \
            mock.patch.object(RateRNN, "neuron_derivatives", forbid), \
            mock.patch.object(models.lif.LIF, "neuron_derivatives", forbid):
        neuro.grad_estimate(net, params, rules.make("rflo", net, window=4), xs, ys, mask=mask)
        neuro.grad_estimate(lif, lif_params, rules.make("three-factor", lif, window=4), xs.abs(), ys, mask=mask)
        with pytest.raises(AssertionError, match="called"):  # the definition reads neuron_derivatives
            neuro.grad_estimate(net, params, rules.make("rflo", net, fast=False), xs, ys, mask=mask)
        with pytest.raises(AssertionError, match="called"):  # the contract's default is a reverse pass
            neuro.grad_estimate(softsign, params, rules.make("rflo", softsign), xs, ys, mask=mask)


def test_training_with_the_windowed_sum_follows_the_per_step_path():
    """neuro.train with updates every 7 steps (flush inside windows of 5, and at sequence ends): the same
    parameters as the per-step path, in float64."""
    task = neuro.tasks.make("add")
    net = models.make("rate", n_in=task.n_in, n_hidden=N, n_out=task.n_out, alpha=0.5)
    init = net.init_params(seed=3, dtype=torch.float64)
    got = [neuro.train(net, rules.make("rflo", net, **kw), task, steps=120, seed=1, params=init, lr=1e-2,
                       update_every=7, dtype=torch.float64, progress=False).params
           for kw in ({"fast": False}, {"window": 5})]
    for k in got[0]:
        assert (got[0][k] - init[k]).abs().max() > 1e-4, k  # every parameter learned
        torch.testing.assert_close(got[1][k], got[0][k], rtol=1e-10, atol=1e-12, msg=k)
