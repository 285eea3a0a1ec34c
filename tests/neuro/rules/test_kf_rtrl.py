"""KF-RTRL (Mujika et al. 2018) on the rate RNN, in float64.

* With the signs fixed, every step's estimate equals the paper's recursion written here on its own:
  J_t and F_t = dh_t/dW from autograd of the model's step (F_t is checked to be a_t^T (x) D_t), the
  factors u, A updated as in Algorithm 1, the full influence estimate u (x) A built explicitly; for
  alpha = 1 and 0.5, a batch of two different sequences, a mask, and both ways of reading the gradient.
* Unbiasedness, exactly: each step's cross terms carry c2 (times c1), so the mean over c2 alone, with
  c1 = +1, is already exact at every step; the mean over all 2^T sequences of c2, uniformly weighted, is
  then the expectation itself. A batch of the 2^T sign sequences (the estimate is the batch mean)
  equals BPTT to 1e-10, for alpha = 1 and 0.5 and both ways of reading the gradient.
* Unbiasedness, by Monte Carlo (seeds 0..N-1, grad_estimate): the error of the mean against BPTT is
  within 3 standard errors at N = 2000 (the standard error sqrt(tr Cov / N) from the samples) and no
  coordinate is off by more than 4.5 of its own standard errors; the RMS errors of the means of
  disjoint blocks of N = 25 and 4N = 100 seeds (80 and 20 blocks) have a ratio near 2 (1.75..2.36 over
  8 disjoint pools of 2000 seeds; 2.01 for seeds 0..1999). The readout's gradient is exact in every sample.
* The single-sample cosine with BPTT (recurrent layer), measured with 8000 seeds on this net:
  exact_immediate=True 0.87 (alpha 1) / 0.74 (alpha 0.5); the paper's reading (False) 0.68 / 0.57.
  (UORO's is about 0.25, REFERENCES.md.)
* A state saved mid-sequence with ``neuro.io.save_checkpoint``, loaded back and continued, gives the
  estimates and the state of the uninterrupted run to the last bit.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torch.autograd.functional import jacobian

import models
import neuro
from neuro import losses, rules
from neuro.rules.kf_rtrl import KFRTRL

from _helpers import assert_resumes_exactly

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64
N_IN, N_HID, N_OUT, T = 3, 4, 2, 10
REC = ("W_in", "W_rec", "b")


def _setup(alpha: float = 1.0, batch: int = 1, seed: int = 1):
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, alpha=alpha)
    params = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, batch, N_IN, generator=g, dtype=F64)
    ys = torch.randn(T, batch, N_OUT, generator=g, dtype=F64)
    return net, params, xs, ys


def _fixed_signs(signs: torch.Tensor):
    """Replace the rule's draw by ``signs`` [T, B, 2] (step ``state.t``)."""
    def draw(self, state, batch, like):
        c = signs[state.t].to(like)
        return c[:, 0], c[:, 1]
    return mock.patch.object(KFRTRL, "_signs", draw)


def _flat(g: dict, keys=REC) -> torch.Tensor:
    return torch.cat([g[k].flatten() for k in keys])


# -- the oracle: Algorithm 1 with autograd Jacobians and the full influence estimate ------------------------------
def _oracle(net, params, xs, ys, mask, signs, exact_immediate: bool) -> list[dict]:
    n_in, n = net.n_in, net.n_hidden
    m = n_in + n + 1
    W0 = torch.cat([params["W_in"], params["W_rec"], params["b"][:, None]], dim=1)  # W acting on [x; h; 1]
    loss = losses.per_sample("mse")

    def with_W(W, **kw):
        return dict(params, W_in=W[:, :n_in], W_rec=W[:, n_in:n_in + n], b=W[:, -1], **kw)

    def h_next(h, W, x):
        state, _ = net.step(with_W(W), net.State(h=h[None]), x[None])
        return state.h[0]

    def l_step(W, W_out, b_out, h, x, y):  # l_t through the step from h_{t-1}
        _, y_hat = net.step(with_W(W, W_out=W_out, b_out=b_out), net.State(h=h[None]), x[None])
        return loss(y_hat, y[None])[0]

    def l_readout(h_t, y):  # l_t as a function of h_t
        _, y_hat = net.readout(params, net.State(h=h_t[None]), h_t[None])
        return loss(y_hat, y[None])[0]

    Tn, Bn = xs.shape[:2]
    out = [{k: torch.zeros_like(v) for k, v in params.items()} for _ in range(Tn)]
    for b in range(Bn):
        h, u, A = torch.zeros(n, dtype=F64), torch.zeros(m, dtype=F64), torch.zeros(n, n, dtype=F64)
        for t in range(Tn):
            x, y = xs[t, b], ys[t, b]
            a = torch.cat([x, h, torch.ones(1, dtype=F64)])
            J, F = jacobian(lambda hh, W: h_next(hh, W, x), (h, W0))  # [n, n], [n, n, m]
            D = F[:, :, -1]  # the bias column: a_t[-1] = 1
            torch.testing.assert_close(F, torch.einsum("rj,k->rjk", D, a), rtol=0, atol=1e-14)  # F_t = a_t^T (x) D_t
            JA = J @ A
            p1 = math.sqrt(JA.norm() / u.norm()) if u.norm() > 0 and JA.norm() > 0 else 1.0
            p2 = math.sqrt(D.norm() / a.norm()) if D.norm() > 0 else 1.0
            c1, c2 = (float(c) for c in signs[t, b])
            u_new = p1 * c1 * u + p2 * c2 * a
            A_new = (c1 / p1) * JA + (c2 / p2) * D
            gW, gWo, gbo, gh = torch.func.grad(l_step, argnums=(0, 1, 2, 3))(W0, params["W_out"], params["b_out"], h, x, y)
            if exact_immediate:  # dl_t/dh_{t-1} G'_{t-1} + partial l_t / partial W
                gW = gW + torch.einsum("r,rjk->jk", gh, torch.einsum("rj,k->rjk", A, u))
            else:  # dl_t/dh_t G'_t
                h_t = h_next(h, W0, x)
                gW = torch.einsum("r,rjk->jk", torch.func.grad(l_readout)(h_t, y), torch.einsum("rj,k->rjk", A_new, u_new))
            w = float(mask[t, b]) / Bn
            for k, v in (("W_in", gW[:, :n_in]), ("W_rec", gW[:, n_in:n_in + n]), ("b", gW[:, -1]),
                         ("W_out", gWo), ("b_out", gbo)):
                out[t][k] += w * v
            h, u, A = h_next(h, W0, x), u_new, A_new
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("exact_immediate", [True, False])
def test_each_step_is_the_papers_recursion_with_the_signs_fixed(alpha, exact_immediate):
    net, params, xs, ys = _setup(alpha, batch=2)
    g = torch.Generator().manual_seed(7)
    signs = torch.randint(0, 2, (T, 2, 2), generator=g).to(F64) * 2 - 1
    mask = torch.rand(T, 2, generator=g) < 0.7
    expected = _oracle(net, params, xs, ys, mask, signs, exact_immediate)
    rule = rules.make("kf-rtrl", net, exact_immediate=exact_immediate)
    state = rule.init(params, 2, seed=0)
    trace = neuro.simulate(net, params, xs)
    with _fixed_signs(signs):
        for t in range(T):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            torch.testing.assert_close(out.y, trace.y[t], rtol=0, atol=1e-14)
            for k in params:
                torch.testing.assert_close(out.grad[k], expected[t][k], rtol=1e-10, atol=1e-12,
                                           msg=lambda s: f"step {t + 1}, {k}: {s}")
    # the noise matters: another sign sequence gives another estimate
    flipped = _oracle(net, params, xs, ys, mask, -signs * torch.tensor([1.0, -1.0], dtype=F64), exact_immediate)
    assert max(float((flipped[t]["W_rec"] - expected[t]["W_rec"]).abs().max()) for t in range(T)) > 1e-3


# -- unbiasedness, exactly: every sign sequence at once ------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("exact_immediate", [True, False])
def test_the_mean_over_every_sign_sequence_is_the_bptt_gradient(alpha, exact_immediate):
    net, params, xs, ys = _setup(alpha)
    n_seq = 2 ** T
    c2 = ((torch.arange(n_seq)[None, :] >> torch.arange(T)[:, None]) & 1).to(F64) * 2 - 1  # [T, 2^T]: every sequence
    signs = torch.stack([torch.ones_like(c2), c2], dim=-1)  # c1 = +1: the mean over c2 alone is exact
    bptt = neuro.grad_estimate(net, params, "bptt", xs, ys)
    rule = rules.make("kf-rtrl", net, loss="mse", exact_immediate=exact_immediate)
    with _fixed_signs(signs):
        mean = neuro.grad_estimate(net, params, rule, xs.expand(-1, n_seq, -1), ys.expand(-1, n_seq, -1))
        one = neuro.grad_estimate(net, params, rule, xs, ys)  # the first sequence alone (all signs +1)
    for k in params:
        torch.testing.assert_close(mean[k], bptt[k], rtol=1e-10, atol=1e-12, msg=lambda s: f"{k}: {s}")
    assert float((_flat(one) - _flat(bptt)).norm()) > 0.05 * float(_flat(bptt).norm()), "one sample is exact: no noise?"


# -- unbiasedness, by Monte Carlo over seeds ------------------------------------------------------------------------
def _samples(net, params, xs, ys, n: int, **kw) -> tuple[torch.Tensor, dict]:
    """The recurrent layer's estimates [n, P] of seeds 0..n-1, and the exact gradient (BPTT)."""
    bptt = neuro.grad_estimate(net, params, "bptt", xs, ys)
    rule = rules.make("kf-rtrl", net, loss="mse", **kw)
    rows = []
    for s in range(n):
        g = neuro.grad_estimate(net, params, rule, xs, ys, seed=s)
        for k in ("W_out", "b_out"):  # the readout gets its exact gradient in every sample
            torch.testing.assert_close(g[k], bptt[k], rtol=1e-10, atol=1e-12)
        rows.append(_flat(g))
    return torch.stack(rows), bptt


def _cosines(G: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (G @ g) / (G.norm(dim=1) * g.norm())


@pytest.mark.slow
def test_the_mean_over_seeds_converges_to_bptt_like_one_over_sqrt_n(capsys):
    net, params, xs, ys = _setup()
    N = 2000
    G, bptt = _samples(net, params, xs, ys, N)
    g = _flat(bptt)
    var = G.var(dim=0)  # per coordinate, over the samples
    assert bool((var > 0).all()), "a coordinate of the recurrent layer has no noise"

    err = float((G.mean(0) - g).norm())
    se = math.sqrt(float(var.sum()) / N)  # E ||mean - g||^2 = tr Cov / N for an unbiased estimator
    z = (G.mean(0) - g) / (var / N).sqrt()
    assert err < 3 * se, f"||mean - bptt|| = {err:.3g} is {err / se:.2f} standard errors (se {se:.3g}) at N = {N}"
    assert float(z.abs().max()) < 4.5, f"a coordinate is {float(z.abs().max()):.2f} standard errors off"

    def rms(size):  # RMS error of the means of disjoint blocks of ``size`` seeds
        blocks = G.reshape(-1, size, G.shape[1]).mean(1)
        return float(((blocks - g) ** 2).sum(1).mean().sqrt())

    ratio = rms(25) / rms(100)  # N and 4N: 80 and 20 blocks
    assert 1.5 < ratio < 2.7, f"error ratio between N = 25 and 4N = 100 is {ratio:.2f}, expected about 2"

    cos = _cosines(G, g)
    assert float(cos.mean()) > 0.7, f"single-sample cosine {float(cos.mean()):.3f} (measured 0.87)"
    with capsys.disabled():
        print(f"\nkf-rtrl, rate n={N_HID}, T={T}: |mean - bptt| = {err / se:.2f} se at N={N} (rel se "
              f"{se / float(g.norm()):.4f}), max |z| {float(z.abs().max()):.2f}, RMS ratio N=25/100 {ratio:.2f}, "
              f"single-sample cosine {float(cos.mean()):.3f} (median {float(cos.median()):.3f})")


@pytest.mark.slow
def test_alpha_below_one_is_unbiased_and_the_exact_immediate_term_lowers_the_variance(capsys):
    net, params, xs, ys = _setup(alpha=0.5)
    N = 500
    G, bptt = _samples(net, params, xs, ys, N)
    Gp, _ = _samples(net, params, xs, ys, N // 2, exact_immediate=False)
    g = _flat(bptt)
    for S in (G, Gp):
        err, se = float((S.mean(0) - g).norm()), math.sqrt(float(S.var(0).sum()) / S.shape[0])
        assert err < 3 * se, f"alpha=0.5: ||mean - bptt|| is {err / se:.2f} standard errors at N = {S.shape[0]}"
    tr, trp = float(G.var(0).sum()), float(Gp.var(0).sum())
    assert tr < trp, f"tr Cov with the exact immediate term {tr:.3g} is not below the paper's reading {trp:.3g}"
    with capsys.disabled():
        print(f"\nkf-rtrl alpha=0.5: tr Cov exact_immediate {tr:.3g} vs paper's {trp:.3g}; single-sample cosine "
              f"{float(_cosines(G, g).mean()):.3f} vs {float(_cosines(Gp, g).mean()):.3f}")


# -- the rule's state, batch and errors ---------------------------------------------------------------------------
def test_each_sample_has_its_own_noise_and_reset_keeps_the_generator():
    net, params, xs, ys = _setup(batch=1)
    rule = rules.make("kf-rtrl", net)
    state = rule.init(params, 2, seed=3)
    for t in range(4):
        state = rule.step(params, state, xs[t].expand(2, -1), ys[t].expand(2, -1), torch.ones(2, dtype=torch.bool)).state
    assert not torch.allclose(state.u[0], state.u[1]) or not torch.allclose(state.A[0], state.A[1])
    gen = state.gen
    fresh = rule.reset(params, state)
    assert fresh.gen is gen and fresh.t == 0
    assert not fresh.u.any() and not fresh.A.any() and not fresh.net.h.any()


@pytest.mark.parametrize("model", ["lstm", "lif", "alif"])
def test_a_model_other_than_the_rate_rnn_is_refused(model):
    net = models.make(model, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    with pytest.raises(ValueError, match=r"h_t = f\(W \[x_t; h_\{t-1\}; 1\]\)") as e:
        rules.make("kf-rtrl", net)
    assert f"{model!r}" in str(e.value) and "'rate'" in str(e.value)


def test_bad_options_and_a_non_finite_estimate_are_reported():
    net, params, xs, ys = _setup()
    with pytest.raises(ValueError, match="exact_immediate=1"):
        rules.make("kf-rtrl", net, exact_immediate=1)
    xs = xs.clone()
    xs[2, 0, 1] = math.inf
    with pytest.raises(FloatingPointError, match=r"'W_in'.*step 3"):
        neuro.grad_estimate(net, params, "kf-rtrl", xs, ys)


@pytest.mark.parametrize("exact_immediate", [True, False])
def test_a_checkpoint_resumes_exactly(exact_immediate, tmp_path):
    net, params, xs, ys = _setup(alpha=0.5, batch=2)
    mask = torch.ones(T, 2, dtype=torch.bool)
    assert_resumes_exactly(rules.make("kf-rtrl", net, exact_immediate=exact_immediate), params, xs, ys, mask, 4,
                    tmp_path / "ckpt.pt")
