"""Oracle tests of the perturbation rules (wp, np, anp, anp-time): forward passes only.

* WP: summed over a sequence with frozen parameters the estimate is exactly the forward difference
  ``(L(theta + xi) - L(theta)) xi / sigma^2`` (xi read from the rule's state), and it tends to the central
  difference as sigma -> 0 (the error shrinks linearly in sigma); its mean over perturbations aligns with BPTT.
* NP: the mean over many noise samples equals the gradient of 1-step truncated BPTT (its expectation, to
  first order in sigma) and aligns with BPTT's gradient (cosine > 0.9); for LIF, the readout's estimate
  equals tbptt-1's readout gradient in the mean (noise on the output of a spiking net that spikes).
* ANP / ANP in time: the mean points along the true gradient (cosine > 0.9 with BPTT); for ANP the hidden
  layer's mean is exactly ``sqrt(N)/n_hidden`` times tbptt-1's hidden gradient (dh = xi, isotropic).
* The alignment grows with the number of samples; a backend's forward function is used when given; bad
  input raises clear errors. The contract test runs every rule with autograd patched to raise.
* A model is taken or refused by its contract facts, not its name; a rule's state survives a checkpoint
  in the middle of a window. (The fast path against the definition: ``test_perturbation_fast.py``.)
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules.node import Pass, TorchForward

pytestmark = pytest.mark.usefixtures("one_thread")

T, B = 10, 2


def flat(g, keys=None):
    return torch.cat([g[k].reshape(-1) for k in (keys or list(g))])


def cos(a, b, keys=None):
    a, b = flat(a, keys), flat(b, keys)
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def rate():
    net = models.make("rate", n_in=3, n_hidden=6, n_out=2, g=0.8)
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(T, B, 2, generator=g, dtype=torch.float64)
    return net, params, xs, ys


def perturbed(params, xi):
    """``params + xi`` for one of wp's perturbations (a tuple in ``params``' order)."""
    return {k: v + e for (k, v), e in zip(params.items(), xi)}


def run_rule(rule, params, xs, ys, seed=0, mask=None):
    """The estimate summed over the sequence (parameters frozen, the pending window included) and the final
    state."""
    mask = torch.ones(xs.shape[:2], dtype=torch.bool) if mask is None else mask
    state = rule.init(params, xs.shape[1], seed)
    total = rules.zeros_like_params(params)
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(params, state, x, y, m)
        state = out.state
        rules.add_into(total, out.grad)
    state, g = rule.finish(params, state)
    rules.add_into(total, g)
    return total, state


# -- weight perturbation ----------------------------------------------------------------------------------------
def test_wp_is_the_forward_difference_and_tends_to_the_central_difference(rate):
    net, params, xs, ys = rate
    errors = []
    for sigma in (1e-2, 1e-3, 1e-4):
        g, state = run_rule(rules.make("wp", net, sigma=sigma), params, xs, ys, seed=3)
        xi = dict(zip(params, state.xi[0]))
        plus = neuro.sequence_loss(net, perturbed(params, state.xi[0]), xs, ys)
        minus = neuro.sequence_loss(net, perturbed(params, [-e for e in state.xi[0]]), xs, ys)
        clean = neuro.sequence_loss(net, params, xs, ys)
        forward = {k: float(plus - clean) / sigma ** 2 * xi[k] for k in params}
        central = {k: float(plus - minus) / (2 * sigma ** 2) * xi[k] for k in params}
        for k in params:  # the bookkeeping: exactly the forward difference along the drawn xi
            torch.testing.assert_close(g[k], forward[k], rtol=1e-8, atol=1e-12)
        errors.append(float((flat(g) - flat(central)).norm() / flat(central).norm()))
    # forward minus central = (L(theta + xi) + L(theta - xi) - 2 L(theta)) / 2 = O(sigma^2) against O(sigma)
    assert errors[2] < 0.02, errors
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5, f"not O(sigma): {errors}"


def test_wp_mean_over_perturbations_aligns_with_bptt(rate):
    net, params, xs, ys = rate
    g_true = neuro.grad_estimate(net, params, "bptt", xs, ys)
    g = neuro.grad_estimate(net, params, "wp", xs, ys, seed=1, samples=2000, sigma=1e-4)
    assert cos(g, g_true) > 0.95
    ratio = float(flat(g) @ flat(g_true) / flat(g_true).norm() ** 2)
    assert 0.85 < ratio < 1.15, ratio  # the 1/sigma^2 normalisation: the gradient's scale


def test_wp_resample_step_draws_a_new_perturbation_each_step(rate):
    net, params, xs, ys = rate
    rec = list(params).index("W_rec")  # wp's perturbation: a tuple in params' order
    rule = rules.make("wp", net, resample="step")
    state = rule.init(params, B, 0)
    xis = []
    for x, y in zip(xs[:3], ys[:3]):
        state = rule.step(params, state, x, y, torch.ones(B, dtype=torch.bool)).state
        xis.append(state.xi[0][rec])
    assert not torch.equal(xis[0], xis[1]) and not torch.equal(xis[1], xis[2])
    held = rules.make("wp", net)
    s0 = held.init(params, B, 0)
    s1 = held.step(params, s0, xs[0], ys[0], torch.ones(B, dtype=torch.bool)).state
    assert torch.equal(s0.xi[0][rec], s1.xi[0][rec])
    s2 = held.reset(params, s1)  # a new sequence: a new perturbation from the kept generator
    assert not torch.equal(s2.xi[0][rec], s1.xi[0][rec]) and s2.gen is s1.gen


# -- node perturbation and ANP ----------------------------------------------------------------------------------
def test_np_mean_is_the_one_step_truncated_gradient_and_aligns_with_bptt(rate):
    net, params, xs, ys = rate
    g_true = neuro.grad_estimate(net, params, "bptt", xs, ys)
    g_k1 = neuro.grad_estimate(net, params, "tbptt", xs, ys, k=1)
    g = neuro.grad_estimate(net, params, "np", xs, ys, seed=1, samples=4000, sigma=1e-4)
    assert cos(g, g_k1) > 0.99
    ratio = float(flat(g) @ flat(g_k1) / flat(g_k1).norm() ** 2)
    assert 0.93 < ratio < 1.07, ratio  # 1/sigma^2: the gradient's own scale
    assert cos(g, g_true) > 0.9


@pytest.mark.parametrize("name", ["anp", "anp-time"])
@pytest.mark.parametrize("norm", ["layer", "global"])
def test_anp_mean_points_along_the_true_gradient(rate, name, norm):
    net, params, xs, ys = rate
    g_true = neuro.grad_estimate(net, params, "bptt", xs, ys)
    g = neuro.grad_estimate(net, params, name, xs, ys, seed=1, samples=2000, sigma=1e-4, norm=norm)
    assert cos(g, g_true) > 0.9
    for keys in (["W_in", "W_rec", "b"], ["W_out", "b_out"]):  # and each layer on its own
        assert cos(g, g_true, keys) > 0.9, keys


def test_anp_hidden_layer_mean_is_sqrtN_over_n_times_the_gradient(rate):
    """Without time, dh_hidden = xi (isotropic): E[sqrt(N) dl xi / ||xi||^2] = sqrt(N)/n dL/dh, exactly."""
    net, params, xs, ys = rate
    g_k1 = neuro.grad_estimate(net, params, "tbptt", xs, ys, k=1)
    g = neuro.grad_estimate(net, params, "anp", xs, ys, seed=2, samples=8000, sigma=1e-4)
    keys = ["W_in", "W_rec", "b"]
    expected = math.sqrt(net.n_in + net.n_hidden + net.n_out) / net.n_hidden
    ratio = float(flat(g, keys) @ flat(g_k1, keys) / flat(g_k1, keys).norm() ** 2)
    assert abs(ratio / expected - 1) < 0.05, (ratio, expected)
    assert cos(g, g_k1, keys) > 0.99


@pytest.mark.parametrize("name", ["np", "anp", "anp-time", "wp"])
def test_alignment_grows_with_the_number_of_samples(rate, name):
    net, params, xs, ys = rate
    g_true = neuro.grad_estimate(net, params, "bptt", xs, ys)
    mean_cos = {}
    for K in (1, 100):
        mean_cos[K] = sum(cos(neuro.grad_estimate(net, params, name, xs, ys, seed=s, samples=K, sigma=1e-4), g_true)
                          for s in range(4)) / 4
    assert mean_cos[100] > mean_cos[1] + 0.2, mean_cos


def test_anp_time_dh_carries_earlier_noise_and_anp_does_not(rate):
    """ANP's noisy copies restart from the clean state: their hidden dh is this step's noise alone. ANP in time
    keeps the noisy state: from the second step on, dh = xi + the propagated earlier noise."""
    net, params, xs, ys = rate
    for name, keeps in (("anp", False), ("anp-time", True)):
        seen = []
        torch_fwd = TorchForward(net)

        def recording(params, state, x, xi_h, xi_y):
            p = torch_fwd(params, state, x, xi_h, xi_y)
            seen.append((xi_h, p.h))
            return p

        rule = rules.make(name, net, sigma=1e-3, samples=3, forward=recording)
        state = rule.init(params, B, 0)
        for x, y in zip(xs[:4], ys[:4]):
            state = rule.step(params, state, x, y, torch.ones(B, dtype=torch.bool)).state
        assert (state.noisy is not None) == keeps
        for t in range(4):
            (_, h), (xi, h_noisy) = seen[2 * t], seen[2 * t + 1]
            gap = float((h_noisy - h.repeat_interleave(3, 0) - xi).abs().max())
            if keeps and t > 0:
                assert gap > 1e-5, (name, t, gap)  # sigma 1e-3: the propagated part is of that order
            else:
                assert gap < 1e-12, (name, t, gap)


def test_np_on_lif_readout_matches_tbptt1_and_the_net_spikes():
    net = models.make("lif", n_in=3, n_hidden=8, n_out=2, input_scale=4.0)
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    xs = 8.0 * (torch.rand(2 * T, B, 3, generator=g) < 0.3).to(torch.float64)
    ys = torch.randn(2 * T, B, 2, generator=g, dtype=torch.float64)
    spikes = neuro.simulate(net, params, xs).spikes
    assert spikes.sum() >= 10, "the network must spike for this test to mean anything"
    g_k1 = neuro.grad_estimate(net, params, "tbptt", xs, ys, k=1)
    est = neuro.grad_estimate(net, params, "np", xs, ys, seed=1, samples=4000, sigma=1e-4)
    assert cos(est, g_k1, ["W_out", "b_out"]) > 0.99
    assert float(flat(est, ["W_in", "W_rec"]).norm()) > 0  # the noise on the input currents reaches the loss
    assert float(est["b"].abs().sum()) == 0  # the membrane bias is not in the perturbed current


# -- the forward protocol, bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["np", "anp", "anp-time", "wp"])
def test_a_backend_forward_function_is_used(rate, name):
    net, params, xs, ys = rate
    calls = []
    torch_fwd = TorchForward(net)

    def backend(params, state, x, xi_h, xi_y):
        calls.append(x.shape[0])
        return torch_fwd(params, state, x, xi_h, xi_y)

    a, _ = run_rule(rules.make(name, net, samples=3, forward=backend), params, xs, ys, seed=4)
    assert len(calls) == T * (2 if name != "wp" else 4)
    kw = {} if name == "wp" else {"window": 1}  # a backend's forward: an estimate every step by default
    b, _ = run_rule(rules.make(name, net, samples=3, **kw), params, xs, ys, seed=4)
    assert float(flat(b).norm()) > 0
    for k in params:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("name", ["np", "anp", "anp-time", "wp"])
def test_bad_input_is_rejected(rate, name):
    net, params, xs, ys = rate
    for sigma in (0, -1e-3, 0.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            rules.make(name, net, sigma=sigma)
    for samples in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="samples"):
            rules.make(name, net, samples=samples)
    with pytest.raises(ValueError, match="forward"):
        rules.make(name, net, forward="torch")

    def wrong(params, state, x, xi_h, xi_y):  # an output with an extra axis: not one scalar per sample
        p = TorchForward(net)(params, state, x, xi_h, xi_y)
        return Pass(p.state, p.y[..., None].expand(-1, -1, 2), p.h, p.a, p.z)

    rule = rules.make(name, net, forward=wrong)
    with pytest.raises(ValueError, match="one scalar per sample"):
        rule.step(params, rule.init(params, B, 0), xs[0], ys[0], torch.ones(B, dtype=torch.bool))


def test_bad_options_of_anp_and_wp(rate):
    net = rate[0]
    with pytest.raises(ValueError, match="norm='frobenius'.*'layer'.*'global'"):
        rules.make("anp-time", net, norm="frobenius")
    with pytest.raises(ValueError, match="resample='epoch'.*'sequence'.*'step'"):
        rules.make("wp", net, resample="epoch")
    with pytest.raises(ValueError, match="does not support model 'columnar'"):
        rules.make("np", models.make("columnar", n_in=3, n_hidden=4, n_out=2))


@pytest.mark.parametrize("name", ["np", "anp", "anp-time", "wp"])
@pytest.mark.parametrize("model", ["rate", "lif"])
def test_the_clean_copy_is_the_network_itself(name, model):
    """The output and loss a rule reports are those of the unperturbed network (the noise stays in the copies)."""
    net = models.make(model, n_in=3, n_hidden=8, n_out=2, **({"input_scale": 4.0} if model == "lif" else {}))
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    xs = 8.0 * (torch.rand(2 * T, B, 3, generator=g) < 0.3).to(torch.float64)
    ys = torch.randn(2 * T, B, 2, generator=g, dtype=torch.float64)
    trace = neuro.simulate(net, params, xs)
    rule = rules.make(name, net, sigma=1e-2, samples=2)
    state = rule.init(params, B, 0)
    fn = neuro.losses.get("mse")
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], torch.ones(B, dtype=torch.bool))
        state = out.state
        assert torch.equal(out.y, trace.y[t])
        torch.testing.assert_close(out.loss, fn(trace.y[t], ys[t], torch.ones(B, dtype=torch.bool)))


# -- the model is read through its contract facts -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["np", "anp", "anp-time"])
def test_a_model_is_taken_or_refused_by_its_contract_facts(rate, name):
    """A model of local form under another name runs (and gives the same estimate as the one it renames); the
    same model declaring ``local_form = False`` is refused in one line that names it and what the rule needs."""
    from models.rate import RateRNN

    net, params, xs, ys = rate

    @dataclasses.dataclass(frozen=True)
    class Renamed(RateRNN):
        name = "renamed-rate"

    @dataclasses.dataclass(frozen=True)
    class Opaque(RateRNN):
        name = "opaque-rate"
        local_form = False

    twin = Renamed(n_in=3, n_hidden=6, n_out=2, g=0.8)
    for fast in (True, False):
        a, _ = run_rule(rules.make(name, net, fast=fast), params, xs, ys, seed=1)
        b, _ = run_rule(rules.make(name, twin, fast=fast), params, xs, ys, seed=1)
        for k in params:
            assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match=r"^rule '[a-z-]+' does not support model 'opaque-rate': .*local_form\)$"):
        rules.make(name, Opaque(n_in=3, n_hidden=6, n_out=2))


# -- checkpoints --------------------------------------------------------------------------------------------------
def _plain(obj) -> bool:
    """Whether ``obj`` holds only tensors, numbers, generators, None and (named) tuples of these."""
    if isinstance(obj, tuple):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, torch.Generator, int, float, bool))


@pytest.mark.parametrize("name,kw", [("np", {}), ("np", {"fast": False}), ("anp", {"window": 4}),
                                     ("anp-time", {"window": 4}), ("anp-time", {"fast": False}), ("wp", {}),
                                     ("wp", {"resample": "step"})])
@pytest.mark.parametrize("model", ["rate", "lif"])
def test_a_checkpoint_in_the_middle_of_a_sequence_continues_to_the_same_numbers(tmp_path, name, kw, model):
    """The rule's state is saved with ``neuro.io.save_checkpoint`` after 6 steps (inside a window of 4, or of 64)
    and loaded: the loaded state and the original one continue to the same outputs and estimates."""
    from neuro import io

    net = models.make(model, n_in=3, n_hidden=8, n_out=2, **({"input_scale": 4.0} if model == "lif" else {}))
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(2 * T, B, 3, generator=g, dtype=torch.float64).abs() * (4.0 if model == "lif" else 1.0)
    ys = torch.randn(2 * T, B, 2, generator=g, dtype=torch.float64)
    ones = torch.ones(B, dtype=torch.bool)
    rule = rules.make(name, net, sigma=1e-2, samples=2, **kw)
    state = rule.init(params, B, 3)
    for t in range(6):
        state = rule.step(params, state, xs[t], ys[t], ones).state
    assert _plain(state)
    io.save_checkpoint(tmp_path / "rule.pt", state)
    loaded = io.load_checkpoint(tmp_path / "rule.pt")
    assert type(loaded) is type(state)

    def rest(s):
        outs, total = [], rules.zeros_like_params(params)
        for t in range(6, 2 * T):
            out = rule.step(params, s, xs[t], ys[t], ones)
            s = out.state
            outs.append(out.y)
            rules.add_into(total, out.grad)
        rules.add_into(total, rule.finish(params, s)[1])
        return outs, total

    (ya, ga), (yb, gb) = rest(state), rest(loaded)
    assert all(torch.equal(a, b) for a, b in zip(ya, yb))
    assert float(flat(ga).abs().sum()) > 0
    for k in params:
        assert torch.equal(ga[k], gb[k]), k
