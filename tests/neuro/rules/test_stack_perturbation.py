"""Oracle tests of the perturbation rules (np, anp, anp-time, wp) on stacks of layers (``models.stack.Stack``),
float64, two sparse layers (connectivity 0.5):

* with the noise given (the rule's draw, reproduced from its seed), the NP / ANP / ANP-in-time estimate of every
  step equals an independent hand computation: clean and noisy forward passes written layer by layer here (the
  noise added to each layer's whole current ``W^l_in u^l_t + W^l_rec p^l_{t-1} (+ b^l)``, masked weights, the
  layer model's own neuron) and the papers' formula with each layer's presynaptic vector ``[u^l_t, p^l_{t-1}]``
  (rate, LIF and LSTM layers, with and without skip connections); the forward's ``h`` is every layer's whole
  current; a stack of layers without local form is refused in one line;
* the mean of NP's estimate over many noise draws is aligned with the 1-step truncated gradient (autograd
  here, the state detached between steps) and with BPTT's gradient, every layer's weights; noise in layer 0
  only (a broken forward) fails it for the upper layer; ANP's mean points along the gradient too;
* entries off the connectivity masks are exactly 0; a 1-layer stack gives its layer model's numbers exactly;
  the fast paths are never selected for a stack;
* WP: perturbing entries off the masks leaves the forward pass unchanged, and its estimate summed over a
  sequence is the masked forward difference ``(L(theta + xi) - L(theta)) mask * xi / sigma^2``.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import rules
from neuro.rules._common import new_generator
from neuro.rules.node import TorchForward, node_noise

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES, N_IN, N_OUT = (4, 3), 3, 2


def stack(layer, skip=False, **kw):
    return models.make(layer, n_in=N_IN, n_hidden=SIZES, n_out=N_OUT, connectivity=0.5, skip=skip, **kw)


def data(T, B, seed, scale):
    g = torch.Generator().manual_seed(seed)
    xs = scale * torch.rand(T, B, N_IN, generator=g, dtype=torch.float64)
    ys = torch.randn(T, B, N_OUT, generator=g, dtype=torch.float64)
    return xs, ys


def mse(y_hat, y):
    return 0.5 * ((y_hat - y) ** 2).sum(-1)


def flat(g, keys):
    return torch.cat([g[k].reshape(-1) for k in keys])


def cos(a, b, keys):
    a, b = flat(a, keys), flat(b, keys)
    return float(a @ b / (a.norm() * b.norm()))


# -- an independent forward pass, layer by layer --------------------------------------------------------------
def layer_params(net, params, l):
    """Layer l's parameters under its model's keys, each sparse matrix times its mask (written here)."""
    pre = f"{l}."
    return {k[len(pre):]: v * net.masks[k] if k in net.masks else v for k, v in params.items() if k.startswith(pre)}


def hand_init(net, params, B):
    return [m.init_state(layer_params(net, params, l), B) for l, m in enumerate(net.layers)], \
        torch.zeros(B, N_OUT, dtype=torch.float64)


def hand_step(net, params, states, y_prev, x, xi=None, xi_y=None):
    """One step: every layer's whole current I^l = W^l_in u^l + W^l_rec p^l (+ b^l) (+ xi^l), its neuron; the
    readout y = decay y_prev + W_out z^L + b_out (+ xi_y). Returns states, y, a, [I^l], [u^l], [p^l], [z^l]."""
    new, Is, us, ps, zs, below = [], [], [], [], [], None
    for l, m in enumerate(net.layers):
        lp = layer_params(net, params, l)
        u = x if l == 0 else (torch.cat([below, x], 1) if net.skip else below)
        p = m.presynaptic(states[l])
        I = u @ lp["W_in"].T + p @ lp["W_rec"].T + (lp["b"] if m.bias_in_current else 0.0)
        if xi is not None:
            I = I + xi[l]
        s, z = m.neuron(lp, states[l], I)
        new.append(s), Is.append(I), us.append(u), ps.append(p), zs.append(z)
        below = z
    read = torch.cat(zs, 1) if net.skip else zs[-1]
    a = read @ params["W_out"].T + params["b_out"] + (0.0 if xi_y is None else xi_y)
    y = net.readout_decay * y_prev + a
    return new, y, a, Is, us, ps, zs, read


def rep(v, K):
    return v.repeat_interleave(K, 0)


def hand_estimates(name, net, params, xs, ys, sigma, K, seed, norm="layer"):
    """Every step's estimate by the papers' formulas on the hand forward passes, with the rule's noise."""
    B = xs.shape[1]
    M = B * K
    widths = [m.param_shapes()["W_rec"][0] for m in net.layers]  # current entries per layer (LSTM: 4 n)
    gen = new_generator(seed)
    clean, y_c = hand_init(net, params, B)
    noisy, y_n = hand_init(net, params, M)
    N = N_IN + sum(SIZES) + N_OUT
    out = []
    for x, y in zip(xs, ys):
        xi_h, xi_y = node_noise(gen, M, sum(widths), N_OUT, sigma, xs)
        xi = list(torch.split(xi_h, widths, 1))
        if name == "anp":  # the noisy copies restart from the clean state
            noisy, y_n = [type(s)(*(rep(v, K) for v in s)) for s in clean], rep(y_c, K)
        c_next, yc, ac, Ic, us, ps, zs, read = hand_step(net, params, clean, y_c, x)
        n_next, yn, an, In, *_ = hand_step(net, params, noisy, y_n, rep(x, K), xi, xi_y)
        dl = mse(yn, rep(y, K)) - rep(mse(yc, y), K)
        if name == "np":
            e = [(dl / sigma ** 2)[:, None] * v for v in xi]
            e_y = (dl / sigma ** 2)[:, None] * xi_y
        else:
            dh = [a - rep(b, K) for a, b in zip(In, Ic)]
            da = an - rep(ac, K)
            sq = [(d ** 2).sum(1) for d in dh]
            sq_y = (da ** 2).sum(1)
            if norm == "global":
                sq_y = sum(sq) + sq_y
                sq = [sq_y] * len(dh)
            e = [(math.sqrt(N) * dl / q)[:, None] * d for q, d in zip(sq, dh)]
            e_y = (math.sqrt(N) * dl / sq_y)[:, None] * da
        g = {}
        for l, m in enumerate(net.layers):
            g[f"{l}.W_in"] = e[l].T @ rep(us[l], K) / M
            g[f"{l}.W_rec"] = e[l].T @ rep(ps[l], K) / M
            g[f"{l}.b"] = e[l].mean(0) if m.bias_in_current else torch.zeros(widths[l], dtype=torch.float64)
        g["W_out"], g["b_out"] = e_y.T @ rep(read, K) / M, e_y.mean(0)
        out.append({k: g[k] * net.masks[k] if k in net.masks else g[k] for k in params})
        clean, y_c = c_next, yc
        noisy, y_n = n_next, (yn if net.readout_decay else y_n)
        out[-1]["_z"] = torch.cat(zs, 1)
    return out


#: fast LIF neurons, and weights three times the default, so that both layers spike within the few steps
LIF_KW = {"tau_mem": 2.0, "tau_syn": 1.0, "v_th": 0.5}


def active(layer, skip=False, seed=3):
    """A two-layer sparse stack whose layers are both active on :func:`data` (scale 3): (net, params)."""
    net = stack(layer, skip, **(LIF_KW if layer == "lif" else {}))
    params = net.init_params(seed=seed, dtype=torch.float64)
    if layer == "lif":
        params = {k: 3.0 * v if "W_" in k and k != "W_out" else v for k, v in params.items()}
    return net, params


CASES = [("rate", False, 0.1), ("rate", True, 0.1), ("lif", False, 0.3), ("lif", True, 0.3), ("lstm", False, 0.1)]


@pytest.mark.parametrize("layer,skip,sigma", CASES)
@pytest.mark.parametrize("name,norm", [("np", "layer"), ("anp", "layer"), ("anp", "global"), ("anp-time", "layer")])
def test_the_estimate_is_the_hand_computation_from_two_forward_passes(layer, skip, sigma, name, norm):
    net, params = active(layer, skip)
    xs, ys = data(8, 2, 3, 3.0)
    K, seed = 3, 7
    kw = {} if name == "np" else {"norm": norm}
    rule = rules.make(name, net, sigma=sigma, samples=K, **kw)
    assert rule.fast_path is None
    want = hand_estimates(name, net, params, xs, ys, sigma, K, seed, norm)
    state = rule.init(params, xs.shape[1], seed)
    spikes = torch.zeros(sum(SIZES), dtype=torch.float64)
    size = {k: 0.0 for k in params}
    for t, (x, y) in enumerate(zip(xs, ys)):
        out = rule.step(params, state, x, y, torch.ones(2, dtype=torch.bool))
        state = out.state
        spikes += want[t].pop("_z").abs().sum(0)
        assert set(out.grad) == set(params)
        size = {k: size[k] + float(out.grad[k].abs().sum()) for k in params}
        for k in params:
            torch.testing.assert_close(out.grad[k], want[t][k], rtol=1e-9, atol=1e-12, msg=f"step {t} {k}")
            if k in net.masks:
                assert torch.all(out.grad[k][~net.masks[k]] == 0), k
    # not vacuous: both layers are active and every matrix gets a non-zero estimate on its mask
    assert all(spikes[sl].sum() > 0 for sl in net.slices)
    assert all(size[k] > 0 for k in params if "W_" in k), size


@pytest.mark.parametrize("layer,skip", [("rate", True), ("lif", False)])
def test_noise_on_the_stacks_current_is_noise_on_every_layers_whole_current(layer, skip):
    """TorchForward with xi_h on the stack's current = the hand forward with xi^l on each layer's whole
    current; its ``h`` is every layer's whole current, its ``a`` the readout's pre-activation."""
    net, params = active(layer, skip)
    xs, _ = data(6, 2, 3, 3.0)
    g = torch.Generator().manual_seed(0)
    fwd, state = TorchForward(net), net.init_state(params, 2)
    states, y_prev = hand_init(net, params, 2)
    for x in xs:
        xi_h = 0.3 * torch.randn(2, sum(SIZES), generator=g, dtype=torch.float64)
        xi_y = 0.3 * torch.randn(2, N_OUT, generator=g, dtype=torch.float64)
        p = fwd(params, state, x, xi_h, xi_y)
        states, y_prev, a, Is, *_, zs, _ = hand_step(net, params, states, y_prev, x, list(xi_h.split(SIZES, 1)), xi_y)
        torch.testing.assert_close(p.h, torch.cat(Is, 1))
        torch.testing.assert_close(p.z, torch.cat(zs, 1))
        torch.testing.assert_close(p.a, a)
        torch.testing.assert_close(p.y, y_prev)
        state = p.state


# -- in expectation: the gradient -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """A tiny rate stack (2 inputs, layers of 4 and 3, 2 outputs, sparse 0.5) on 3 steps with a small loss,
    with the 1-step truncated gradient and BPTT's (cosine 0.96 between them)."""
    net = models.make("rate", n_in=2, n_hidden=(4, 3), n_out=2, connectivity=0.5)
    params = net.init_params(seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(3, 1, 2, generator=g, dtype=torch.float64)
    ys = 0.3 * torch.randn(3, 1, 2, generator=g, dtype=torch.float64)
    return net, params, xs, ys, truncated_gradient(net, params, xs, ys), neuro.grad_estimate(net, params, "bptt", xs, ys)


def truncated_gradient(net, params, xs, ys):
    """sum_t dL_t/dtheta with the state held fixed between steps (1-step truncated BPTT), by autograd."""
    q = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state, total = net.init_state(params, xs.shape[1]), 0.0
    for x, y in zip(xs, ys):
        state = type(state)(*(v.detach() for v in state))
        state, y_hat = net.step(q, state, x)
        total = total + mse(y_hat, y).mean()
    g = torch.autograd.grad(total, list(q.values()))
    return {k: v.detach() for k, v in zip(q, g)}


#: each layer's parameters, then the readout's
KEYS = [("0.W_in", "0.W_rec", "0.b"), ("1.W_in", "1.W_rec", "1.b"), ("W_out", "b_out")]


def ratio(g, g_ref, keys):
    """The projection of ``g`` on ``g_ref`` in units of ``g_ref`` (1: the gradient's own scale)."""
    a, b = flat(g, keys), flat(g_ref, keys)
    return float(a @ b / (b @ b))


def test_np_mean_is_aligned_with_the_gradient_in_every_layer(tiny):
    """The expectation of NP's estimate is the 1-step truncated gradient (its own scale, 1/sigma^2), every
    layer's weights; it is aligned with BPTT's gradient. 3000 noise draws."""
    net, params, xs, ys, g_k1, g_true = tiny
    g = neuro.grad_estimate(net, params, "np", xs, ys, seed=3, samples=3000, sigma=1e-3)
    every = list(params)
    assert cos(g, g_k1, every) > 0.98
    assert cos(g, g_true, every) > 0.9
    for keys in KEYS:
        assert cos(g, g_k1, keys) > 0.95, keys
        assert 0.8 < ratio(g, g_k1, keys) < 1.25, keys
    for k, m in net.masks.items():
        assert torch.all(g[k][~m] == 0) and torch.all(g_k1[k][~m] == 0), k


def test_noise_in_layer_0_only_fails_the_alignment(tiny):
    """A broken forward that drops the noise of layer 1: the rule's estimate for layer 1 is then its noise
    times a loss difference it did not cause, of mean 0 (the check above fails); layer 0's is still right."""
    net, params, xs, ys, g_k1, _ = tiny
    base, upper = TorchForward(net), net.current_slices[1]

    def layer0_only(params, state, x, xi_h=None, xi_y=None):
        if xi_h is not None:
            xi_h = xi_h.clone()
            xi_h[:, upper] = 0.0
        return base(params, state, x, xi_h, xi_y)

    g = neuro.grad_estimate(net, params, "np", xs, ys, seed=3, samples=3000, sigma=1e-3, forward=layer0_only)
    assert abs(ratio(g, g_k1, KEYS[1])) < 0.2
    assert 0.8 < ratio(g, g_k1, KEYS[0]) < 1.25


@pytest.mark.parametrize("name", ["anp", "anp-time"])
def test_anp_mean_points_along_the_gradient(tiny, name):
    """ANP's mean points along the gradient in every layer (its scale is sqrt(N)/n_l, not the gradient's)."""
    net, params, xs, ys, g_k1, g_true = tiny
    g = neuro.grad_estimate(net, params, name, xs, ys, seed=3, samples=3000, sigma=1e-3)
    assert cos(g, g_true, list(params)) > 0.8
    for keys in KEYS:
        assert cos(g, g_k1, keys) > 0.9, keys


# -- the single network is the case L = 1; the fast paths are not used ------------------------------------------
@pytest.mark.parametrize("layer", ["rate", "lif"])
@pytest.mark.parametrize("name", ["np", "anp", "anp-time"])
def test_a_one_layer_stack_gives_its_layer_models_numbers(layer, name):
    one = models.make("stack", layer=layer, sizes=(5,), n_in=N_IN, n_out=N_OUT)
    net = models.make(layer, n_in=N_IN, n_hidden=5, n_out=N_OUT)
    p_one, p = one.init_params(seed=0, dtype=torch.float64), net.init_params(seed=0, dtype=torch.float64)
    assert all(torch.equal(p_one[k if k in p_one else f"0.{k}"], v) for k, v in p.items())
    xs, ys = data(6, 2, 5, 3.0 if layer == "lif" else 1.0)
    assert rules.make(name, one).fast_path is None
    a = neuro.grad_estimate(one, p_one, name, xs, ys, seed=1, samples=2, sigma=0.2)
    b = neuro.grad_estimate(net, p, name, xs, ys, seed=1, samples=2, sigma=0.2, fast=False)
    for k in p:
        assert torch.equal(a[k if k in a else f"0.{k}"], b[k]), k


@pytest.mark.parametrize("name", ["np", "anp", "anp-time"])
def test_a_stack_of_layers_without_local_form_is_refused_in_one_line(name):
    with pytest.raises(ValueError, match=r"^rule '[a-z-]+' does not support model 'stack': its layers \('lif-loihi'\) "
                                         r"are not of local form: .*\(local_form\)$"):
        rules.make(name, models.make("lif-loihi", n_in=N_IN, n_hidden=SIZES, n_out=N_OUT))


@pytest.mark.parametrize("name", ["np", "anp", "anp-time"])
def test_the_fast_paths_are_never_selected_for_a_stack(name):
    dense = models.make("rate", n_in=N_IN, n_hidden=SIZES, n_out=N_OUT)
    assert rules.make(name, dense).fast_path is None
    assert rules.make(name, stack("lif")).fast_path is None
    assert rules.make(name, models.make("rate", n_in=N_IN, n_hidden=4, n_out=N_OUT)).fast_path is not None
    params = dense.init_params(seed=0, dtype=torch.float64)
    xs, ys = data(4, 2, 0, 1.0)
    a = neuro.grad_estimate(dense, params, name, xs, ys, seed=1, sigma=0.1)
    b = neuro.grad_estimate(dense, params, name, xs, ys, seed=1, sigma=0.1, fast=False)
    assert all(torch.equal(a[k], b[k]) for k in params)


# -- weight perturbation --------------------------------------------------------------------------------------------
def test_wp_perturbations_off_the_mask_do_not_change_the_forward_pass():
    net = stack("lif")
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    off = {k: v + 10.0 * torch.randn(v.shape, generator=g, dtype=v.dtype) * ~net.masks[k] if k in net.masks else v
           for k, v in params.items()}
    assert any(not torch.equal(off[k], params[k]) for k in net.masks)
    xs, _ = data(5, 2, 0, 3.0)
    s1, s2 = net.init_state(params, 2), net.init_state(params, 2)
    for x in xs:
        s1, y1 = net.step(params, s1, x)
        s2, y2 = net.step(off, s2, x)
        assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(s1, s2))


@pytest.mark.parametrize("layer,scale", [("rate", 1.0), ("lif", 3.0)])
def test_wp_estimate_is_the_masked_forward_difference(layer, scale):
    net = stack(layer)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys = data(6, 2, 4, scale)
    sigma = 1e-2
    rule = rules.make("wp", net, sigma=sigma)
    state = rule.init(params, 2, 5)
    xi = dict(zip(params, state.xi[0]))
    total = rules.zeros_like_params(params)
    for x, y in zip(xs, ys):
        out = rule.step(params, state, x, y, torch.ones(2, dtype=torch.bool))
        state = out.state
        rules.add_into(total, out.grad)

    def seq_loss(q):
        s, tot = net.init_state(q, 2), 0.0
        for x, y in zip(xs, ys):
            s, y_hat = net.step(q, s, x)
            tot = tot + mse(y_hat, y).mean()
        return tot

    c = (seq_loss({k: v + xi[k] for k, v in params.items()}) - seq_loss(params)) / sigma ** 2
    for k in params:
        want = c * xi[k] * (net.masks[k] if k in net.masks else 1.0)
        torch.testing.assert_close(total[k], want, rtol=1e-9, atol=1e-12, msg=k)
        if k in net.masks:
            assert torch.all(total[k][~net.masks[k]] == 0), k
    assert float(c) != 0.0
