"""RFLO (Murray 2019): its definition against a direct loop, and the truncated-RTRL identity."""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import rules

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


def _direct_loop(params, xs, ys, mask, B):
    """RFLO written literally with Python numbers: loops over t, samples, i, j (module docstring of rflo)."""
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
            dphi = [1.0 - math.tanh(u[i]) ** 2 for i in range(N)]
            for i in range(N):
                for j in range(N):
                    P_rec[i][j] = (1 - ALPHA) * P_rec[i][j] + ALPHA * dphi[i] * h[j]
                for j in range(N_IN):
                    P_in[i][j] = (1 - ALPHA) * P_in[i][j] + ALPHA * dphi[i] * x[j]
                P_b[i] = (1 - ALPHA) * P_b[i] + ALPHA * dphi[i]
            h = [(1 - ALPHA) * h[i] + ALPHA * math.tanh(u[i]) for i in range(N)]
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


def test_errors_name_the_value_and_the_alternatives():
    lif = models.make("lif", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="eprop"):
        rules.make("rflo", lif)
    rate = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="feedback='sym'.*'random'"):
        rules.make("rflo", rate, feedback="sym")
    with pytest.raises(ValueError, match="feedback_scale"):
        rules.make("rflo", rate, feedback_scale=0.0)
