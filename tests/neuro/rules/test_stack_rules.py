"""Rules on stacks of recurrent layers (models.stack): RFLO and the three-factor rule per layer against hand
computations of the single-layer equations applied to each layer (float64, 2-layer sparse stacks); the rules that
differentiate the step (bptt, tbptt, rtrl, snap1, snap2, uoro, nobacktrack, nobacktrack-kalman) run on sparse
lif and rate stacks with estimates zero off the masks, RTRL equals BPTT, SnAp's pattern is the reachability
through the existing synapses and the layers' feed-forward matrices, SnAp with the whole reachable pattern is
RTRL; the rules without a multi-layer form refuse a stack with a message saying why."""

from __future__ import annotations

import math

import pytest
import torch

import models
from models.stack import Stack
from neuro import rules
from neuro.rules._onestep import flat_step
from neuro.rules.snap import SnAp2, snap_pattern

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, SIZES, N_OUT, T, BATCH = 3, (5, 4), 2, 12, 2
STEP_RULES = ("bptt", "tbptt", "rtrl", "snap1", "snap2", "uoro", "nobacktrack", "nobacktrack-kalman")


def _data(T=T, scale=1.0, seed=3):
    g = torch.Generator().manual_seed(seed)
    xs = scale * torch.randn(T, BATCH, N_IN, generator=g, dtype=torch.float64)
    ys = torch.randn(T, BATCH, N_OUT, generator=g, dtype=torch.float64)
    mask = torch.rand(T, BATCH, generator=g) < 0.8
    return xs, ys, mask


def _run(rule, params, xs, ys, mask, seed=0):
    """Per-step estimates (finish's added to the last) and outputs of ``rule`` over the sequence."""
    state = rule.init(params, BATCH, seed)
    grads, outs = [], []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        grads.append(out.grad)
        outs.append(out.y)
    state, g = rule.finish(params, state)
    grads.append(g)
    return grads, outs


def _total(params, grads):
    tot = {k: torch.zeros_like(v) for k, v in params.items()}
    for g in grads:
        if g is not None:
            for k in tot:
                tot[k] += g[k]
    return tot


def _masked(net, params):
    """The parameters as the layers read them: each sparse matrix times its mask."""
    return {k: v * net.masks[k] if k in net.masks else v for k, v in params.items()}


def _feedback(n, seed, scale=1.0):
    """The documented random feedback of one layer: N(0, scale^2/n_out) entries from a float64 generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_OUT, generator=g, dtype=torch.float64) * (scale / math.sqrt(N_OUT))


def _assert_zero_off_masks(net, g):
    assert net.masks, "the network is meant to be sparse"
    for k, m in net.masks.items():
        assert bool((g[k][~m] == 0).all()), k


# -- RFLO ------------------------------------------------------------------------------------------------------
ALPHA = 0.4


def _rate_stack(connectivity=0.5, sizes=SIZES, skip=False):
    net = models.make("rate", n_in=N_IN, n_hidden=sizes, n_out=N_OUT, connectivity=connectivity, alpha=ALPHA,
                      skip=skip)
    params = net.init_params(0, torch.float64)
    g = torch.Generator().manual_seed(5)
    for l in range(len(sizes)):
        params[f"{l}.b"] = 0.2 * torch.randn(sizes[l], generator=g, dtype=torch.float64)
    return net, params


def _rflo_by_hand(net, params, xs, ys, mask, seed):
    """Murray's single-layer RFLO equations applied to each layer of a rate stack, the layer's presynaptic
    vectors recorded from a forward run written out here (u^0 = x_t, u^1 = h^0_t of the same step; with skip
    connections u^1 = [h^0_t, x_t] and the readout reads [h^0_t, h^1_t])."""
    p = _masked(net, params)
    L = len(net.sizes)
    Bs = [_feedback(n, seed + 1000003 * l) for l, n in enumerate(net.sizes)]
    h = [torch.zeros(BATCH, n, dtype=torch.float64) for n in net.sizes]
    P = [{"W_rec": torch.zeros(BATCH, n, n, dtype=torch.float64),
          "W_in": torch.zeros(BATCH, n, p[f"{l}.W_in"].shape[1], dtype=torch.float64),
          "b": torch.zeros(BATCH, n, dtype=torch.float64)} for l, n in enumerate(net.sizes)]
    grads = []
    for t in range(xs.shape[0]):
        u, g, h_new = xs[t], {}, []
        for l in range(L):
            I = u @ p[f"{l}.W_in"].T + h[l] @ p[f"{l}.W_rec"].T + p[f"{l}.b"]
            hl = (1 - ALPHA) * h[l] + ALPHA * torch.tanh(I)
            D = ALPHA * (1 - torch.tanh(I) ** 2)
            P[l]["W_rec"] = (1 - ALPHA) * P[l]["W_rec"] + D[:, :, None] * h[l][:, None, :]
            P[l]["W_in"] = (1 - ALPHA) * P[l]["W_in"] + D[:, :, None] * u[:, None, :]
            P[l]["b"] = (1 - ALPHA) * P[l]["b"] + D
            h_new.append(hl)
            u = torch.cat([hl, xs[t]], 1) if net.skip else hl
        h = h_new
        read = torch.cat(h, 1) if net.skip else h[-1]
        y = read @ p["W_out"].T + p["b_out"]
        eps = (y - ys[t]) * mask[t, :, None].double() / BATCH  # d(mse)/dy, the batch mean
        for l in range(L):
            Ll = eps @ Bs[l].T
            g[f"{l}.W_rec"] = torch.einsum("sa,sab->ab", Ll, P[l]["W_rec"])
            g[f"{l}.W_in"] = torch.einsum("sa,sab->ab", Ll, P[l]["W_in"])
            g[f"{l}.b"] = (Ll * P[l]["b"]).sum(0)
        g["W_out"], g["b_out"] = eps.T @ read, eps.sum(0)
        grads.append((g, y))
    return grads


@pytest.mark.parametrize("skip", [False, True])
def test_rflo_stack_equals_the_single_layer_equations_per_layer(skip):
    net, params = _rate_stack(skip=skip)
    xs, ys, mask = _data(scale=1.5)
    rule = rules.make("rflo", net)
    got, outs = _run(rule, params, xs, ys, mask, seed=4)
    want = _rflo_by_hand(net, params, xs, ys, mask, seed=4)
    for t, (g_want, y_want) in enumerate(want):
        torch.testing.assert_close(outs[t], y_want, rtol=1e-12, atol=1e-12)
        for k, v in g_want.items():
            v = v * net.masks[k] if k in net.masks else v
            torch.testing.assert_close(got[t][k], v, rtol=1e-10, atol=1e-12, msg=f"step {t} {k}")
        _assert_zero_off_masks(net, got[t])
    assert all(bool(got[-2][k].abs().sum() > 0) for k in params)  # every layer learns


def test_rflo_random_feedback_differs_per_layer_and_survives_reset():
    net, params = _rate_stack(sizes=(4, 4))
    rule = rules.make("rflo", net)
    s = rule.init(params, BATCH, seed=2)
    assert not torch.equal(s.B[:4], s.B[4:])
    torch.testing.assert_close(s.B[:4], _feedback(4, 2))
    assert torch.equal(rule.reset(params, s).B, s.B)


def test_rflo_one_layer_stack_is_the_single_layer_rule():
    single = models.make("rate", n_in=N_IN, n_hidden=4, n_out=N_OUT, alpha=ALPHA)
    stack = Stack(n_in=N_IN, n_out=N_OUT, layer="rate", sizes=(4,), options=(("alpha", ALPHA),))
    p1, p2 = single.init_params(1, torch.float64), stack.init_params(1, torch.float64)
    xs, ys, mask = _data()
    g_stack = _total(p2, _run(rules.make("rflo", stack), p2, xs, ys, mask, seed=6)[0])
    for fast in (False, True):
        g1 = _total(p1, _run(rules.make("rflo", single, fast=fast), p1, xs, ys, mask, seed=6)[0])
        for k, v in g1.items():
            torch.testing.assert_close(g_stack[k if k in g_stack else f"0.{k}"], v, rtol=1e-10, atol=1e-12)


def test_rflo_readout_feedback_on_stacks():
    net, _ = _rate_stack()
    with pytest.raises(ValueError, match="feedback='readout' is invalid on a stack without skip"):
        rules.make("rflo", net, feedback="readout")
    net, params = _rate_stack(skip=True)
    xs, ys, mask = _data(T=4)
    grads, _ = _run(rules.make("rflo", net, feedback="readout"), params, xs, ys, mask)
    assert all(bool(torch.isfinite(v).all()) for v in grads[-2].values())
    with pytest.raises(ValueError, match="rflo.*one state field per unit"):
        rules.make("rflo", models.make("lif", n_in=N_IN, n_hidden=SIZES, n_out=N_OUT))


# -- three-factor ----------------------------------------------------------------------------------------------
TF = dict(pre_decay=(0.9, 0.5), pre_impulse=(1.0, -0.5), post_decay=0.3, eligibility_decay=0.5, bias_pre_decay=0.8)


def _lif_stack(connectivity=0.5, sizes=SIZES, model="lif", **kw):
    kw = {"tau_mem": 4.0, "tau_syn": 2.0, "input_scale": 3.0, **kw}  # fast dynamics: spikes within a few steps
    net = models.make(model, n_in=N_IN, n_hidden=sizes, n_out=N_OUT, connectivity=connectivity, **kw)
    params = net.init_params(0, torch.float64)
    params["1.W_in"] = 4.0 * params["1.W_in"].abs()  # the layer below's spikes drive the layer above to fire
    return net, params


def _post_factors(layer, lp, ls, I):
    """``dz/dI`` and ``dz/db`` of one layer's element-wise neuron at (state, current), per sample and unit, by
    autograd of ``neuron`` itself."""
    I = I.detach().requires_grad_(True)
    b = lp["b"].detach().expand(I.shape[0], -1).clone().requires_grad_(True)
    _, z = layer.neuron({**lp, "b": b}, ls, I)
    dI, db = torch.autograd.grad(z.sum(), (I, b), allow_unused=True)
    return dI, (torch.zeros_like(b) if db is None else db)


def _three_factor_by_hand(net, params, xs, ys, mask, seed, o=TF):
    """The single-layer three-factor equations (module docstring) applied to each layer, its presynaptic vectors
    and current recorded from a forward run of the layer networks written out here, with the masked weights."""
    p = _masked(net, params)
    L, kappa = len(net.sizes), net.readout_decay
    Bs = [_feedback(n, seed + 1000003 * l) for l, n in enumerate(net.sizes)]
    lps = [{k: p[f"{l}.{k}"] for k in ("W_in", "W_rec", "b")} for l in range(L)]
    states = [layer.init_state(params, BATCH) for layer in net.layers]
    tr = {}  # per (l, group): x_k, y, e, ebar
    for l, layer in enumerate(net.layers):
        for g, m in (("W_in", layer.n_in), ("W_rec", layer.n_hidden), ("b", 1)):
            K = 1 if g == "b" else len(o["pre_decay"])
            tr[l, g] = [torch.zeros(K, BATCH, m, dtype=torch.float64), torch.zeros(BATCH, layer.n_hidden, dtype=torch.float64),
                        torch.zeros(BATCH, layer.n_hidden, m, dtype=torch.float64),
                        torch.zeros(BATCH, layer.n_hidden, m, dtype=torch.float64)]
    y_out = torch.zeros(BATCH, N_OUT, dtype=torch.float64)
    zbar, cbar = torch.zeros(BATCH, net.sizes[-1], dtype=torch.float64), torch.zeros(BATCH, 1, dtype=torch.float64)
    out = []
    for t in range(xs.shape[0]):
        u, rec = xs[t], []
        for l, layer in enumerate(net.layers):
            pre_rec = states[l].z  # LIF: W_rec reads z_{t-1}
            I = u @ lps[l]["W_in"].T + pre_rec @ lps[l]["W_rec"].T  # b enters the LIF neuron
            dI, db = _post_factors(layer, lps[l], states[l], I)
            states[l], z = layer.neuron(lps[l], states[l], I)
            rec.append(({"W_in": u, "W_rec": pre_rec, "b": torch.ones(BATCH, 1, dtype=torch.float64)},
                        {"W_in": dI, "W_rec": dI, "b": db}))
            u = z
        y_out = kappa * y_out + u @ p["W_out"].T + p["b_out"]
        eps = (y_out - ys[t]) * mask[t, :, None].double() / BATCH
        g = {}
        for l in range(L):
            M = eps @ Bs[l].T
            for grp in ("W_in", "W_rec", "b"):
                x_k, y_i, e, ebar = tr[l, grp]
                dec, imp = ((o["bias_pre_decay"],), (1.0,)) if grp == "b" else (o["pre_decay"], o["pre_impulse"])
                x_k = torch.stack([dec[k] * x_k[k] + imp[k] * rec[l][0][grp] for k in range(len(dec))])
                y_i = o["post_decay"] * y_i + rec[l][1][grp]
                e = o["eligibility_decay"] * e + y_i[:, :, None] * x_k.sum(0)[:, None, :]
                ebar = kappa * ebar + e
                tr[l, grp] = [x_k, y_i, e, ebar]
                est = torch.einsum("bi,bij->ij", M, ebar)
                g[f"{l}.{grp}"] = est[:, 0] if grp == "b" else est
        zbar, cbar = kappa * zbar + u, kappa * cbar + 1.0
        g["W_out"], g["b_out"] = eps.T @ zbar, (eps * cbar).sum(0)
        out.append((g, y_out))
    return out


@pytest.mark.parametrize("model", ["lif", "alif"])
def test_three_factor_stack_equals_the_single_layer_equations_per_layer(model):
    net, params = _lif_stack(model=model)
    xs, ys, mask = _data(scale=3.0)
    got, outs = _run(rules.make("three-factor", net, **TF), params, xs, ys, mask, seed=7)
    want = _three_factor_by_hand(net, params, xs, ys, mask, seed=7)
    fired = [False, False]
    for t, (g_want, y_want) in enumerate(want):
        torch.testing.assert_close(outs[t], y_want, rtol=1e-12, atol=1e-12)
        for k, v in g_want.items():
            v = v * net.masks[k] if k in net.masks else v
            torch.testing.assert_close(got[t][k], v, rtol=1e-10, atol=1e-12, msg=f"step {t} {k}")
        _assert_zero_off_masks(net, got[t])
        fired = [f or bool(got[t][f"{l}.W_in"].abs().sum() > 0) for l, f in enumerate(fired)]
    assert all(fired), "both layers should learn (surrogate derivatives nonzero)"


def test_three_factor_one_layer_stack_is_the_single_layer_rule():
    single = models.make("lif", n_in=N_IN, n_hidden=4, n_out=N_OUT)
    stack = Stack(n_in=N_IN, n_out=N_OUT, layer="lif", sizes=(4,))
    p1, p2 = single.init_params(1, torch.float64), stack.init_params(1, torch.float64)
    xs, ys, mask = _data(scale=3.0)
    rule = rules.make("three-factor", stack, **TF)
    assert rule.fast_path is None  # a stack runs the equations
    g_stack = _total(p2, _run(rule, p2, xs, ys, mask, seed=6)[0])
    for fast in (False, True):
        g1 = _total(p1, _run(rules.make("three-factor", single, fast=fast, **TF), p1, xs, ys, mask, seed=6)[0])
        for k, v in g1.items():
            torch.testing.assert_close(g_stack[k if k in g_stack else f"0.{k}"], v, rtol=1e-10, atol=1e-12)


def test_three_factor_options_on_stacks():
    net, params = _lif_stack(skip=True)
    xs, ys, mask = _data(T=4, scale=3.0)
    for kw in (dict(feedback="readout"), dict(third="reward"), dict(post="activity")):
        grads, _ = _run(rules.make("three-factor", net, **kw), params, xs, ys, mask)
        assert all(bool(torch.isfinite(v).all()) for v in grads[-2].values())
        _assert_zero_off_masks(net, grads[-2])
    with pytest.raises(ValueError, match="feedback='readout' is invalid on a stack without skip"):
        rules.make("three-factor", _lif_stack()[0], feedback="readout")
    rate, p = _rate_stack()  # rate layers too
    grads, _ = _run(rules.make("three-factor", rate, pre_decay=(0.0,), eligibility_decay=1 - ALPHA), p, xs, ys, mask)
    assert all(bool(torch.isfinite(v).all()) for v in grads[-2].values())


# -- the rules that differentiate the step ---------------------------------------------------------------------
def _stack(model):
    return _rate_stack() if model == "rate" else _lif_stack()


@pytest.mark.parametrize("model", ["lif", "rate"])
@pytest.mark.parametrize("name", STEP_RULES)
def test_step_rules_run_on_sparse_stacks(name, model):
    net, params = _stack(model)
    xs, ys, mask = _data(T=4, scale=3.0)
    tot = _total(params, _run(rules.make(name, net), params, xs, ys, mask)[0])
    assert set(tot) == set(params)
    assert all(bool(torch.isfinite(v).all()) for v in tot.values())
    _assert_zero_off_masks(net, tot)
    assert any(bool(tot[k].abs().sum() > 0) for k in ("0.W_in", "0.W_rec")), "the first layer should learn"


@pytest.mark.parametrize("model", ["lif", "rate"])
def test_rtrl_equals_bptt_on_sparse_stacks(model):
    net, params = _stack(model)
    xs, ys, mask = _data(T=8, scale=3.0)
    g_bptt = _total(params, _run(rules.make("bptt", net), params, xs, ys, mask)[0])
    g_rtrl = _total(params, _run(rules.make("rtrl", net), params, xs, ys, mask)[0])
    g_tbptt = _total(params, _run(rules.make("tbptt", net, k=8), params, xs, ys, mask)[0])
    for k in params:
        torch.testing.assert_close(g_rtrl[k], g_bptt[k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_tbptt[k], g_bptt[k], rtol=1e-9, atol=1e-12)


def _reach_by_hand(net, params, n):
    """SnAp-n's pattern on a rate stack (state: h of every unit), from the masks alone: a parameter of unit i
    reaches h_i in the step and, within the same step, every unit above that reads i through an existing
    feed-forward synapse; h_j(t-1) reaches h_i(t) through an existing recurrent synapse or the leak (i = j), then
    up the same way. P_1 = F D, P_{k+1} = P_k OR F R P_k (F: the same-step closure, R: recurrence)."""
    fs = flat_step(net, "mse", params)
    N, off = net.n_hidden, [s.start for s in net.slices]
    m = {k: net.masks[k] if k in net.masks else torch.ones(params[k].shape, dtype=torch.bool) for k in params}
    F, R = torch.eye(N, dtype=torch.bool), torch.zeros(N, N, dtype=torch.bool)
    for l in range(len(net.sizes)):
        sl = net.slices[l]
        R[sl, sl] = m[f"{l}.W_rec"] | torch.eye(sl.stop - sl.start, dtype=torch.bool)
    for _ in range(len(net.sizes)):  # the closure through the feed-forward matrices, layer after layer
        up = torch.zeros(N, N, dtype=torch.bool)
        for l in range(1, len(net.sizes)):
            up[net.slices[l], net.slices[l - 1]] = m[f"{l}.W_in"][:, :net.sizes[l - 1]]
        F = F | ((up.double() @ F.double()) > 0)
    D = torch.zeros(N, fs.n_params, dtype=torch.bool)
    for k, sl in fs.param_slices().items():
        if k in ("W_out", "b_out"):
            continue  # the rate readout has no state
        w = m[k].reshape(params[k].shape[0], -1)  # unit i's row of the matrix (b: one entry per unit)
        rows, cols = w.shape
        first = off[int(k.split(".")[0])]
        for i in range(rows):
            D[first + i, sl.start + i * cols:sl.start + (i + 1) * cols] = w[i]
    P = (F.double() @ D.double()) > 0
    for _ in range(n - 1):
        P = P | ((F.double() @ R.double() @ P.double()) > 0)
    return P


@pytest.mark.parametrize("n", [1, 2])
def test_snap_pattern_is_the_reachability_through_the_existing_synapses(n):
    net, params = _rate_stack(connectivity=0.4, sizes=(5, 5))
    fs = flat_step(net, "mse", params)
    want = _reach_by_hand(net, params, n)
    got = snap_pattern(fs, params, n)
    assert torch.equal(got, want)
    dense = _rate_stack(connectivity=(), sizes=(5, 5))[0]
    assert int(want.sum()) < int(_reach_by_hand(dense, params, n).sum())  # sparsity prunes the pattern


def test_snap_pattern_of_a_lif_stack_covers_each_step_and_skips_missing_synapses():
    net, params = _lif_stack()
    fs = flat_step(net, "mse", params)
    P1 = snap_pattern(fs, params, 1)
    xs, _, _ = _data(T=10, scale=3.0)
    s = net.init_state(params, BATCH)
    theta = fs.flat_params(params)
    for t in range(xs.shape[0]):
        _, _, I = fs.jacobians(theta, fs.flat_state(s), xs[t])
        assert not bool(((I != 0).any(0) & ~P1).any()), f"step {t}: an influence outside P_1"
        s, _ = net.step(params, s, xs[t])
    for k, m in net.masks.items():
        assert not bool(P1[:, fs.param_slices()[k]][:, ~m.reshape(-1)].any()), k


def test_snap2_with_the_whole_reachable_pattern_is_rtrl():
    xs, ys, mask = _data(T=8, scale=2.0)
    net, params = _rate_stack(connectivity=(), sizes=(4, 3))  # dense: SnAp-2 reaches every entry RTRL has
    g2 = _total(params, _run(rules.make("snap2", net), params, xs, ys, mask)[0])
    g_rtrl = _total(params, _run(rules.make("rtrl", net), params, xs, ys, mask)[0])
    for k in params:
        torch.testing.assert_close(g2[k], g_rtrl[k], rtol=1e-9, atol=1e-12)

    class SnAp8(SnAp2):  # sparse: the pattern of 8 steps is the whole reachable set
        n = 8

    net, params = _rate_stack(connectivity=0.5, sizes=(4, 3))
    g8 = _total(params, _run(SnAp8(net), params, xs, ys, mask)[0])
    g_rtrl = _total(params, _run(rules.make("rtrl", net), params, xs, ys, mask)[0])
    g1 = _total(params, _run(rules.make("snap1", net), params, xs, ys, mask)[0])
    for k in params:
        torch.testing.assert_close(g8[k], g_rtrl[k], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g1["0.W_rec"], g_rtrl["0.W_rec"])  # SnAp-1 truncates


# -- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, why", [("kf-rtrl", "one weight matrix"), ("columnar", "independent columns"),
                                       ("constructive", "one stage")])
def test_rules_without_a_multi_layer_form_refuse_a_stack(name, why):
    for model in ("rate", "lif"):
        net, _ = _stack(model)
        with pytest.raises(ValueError, match=f"rule '{name}' does not support model 'stack': .*{why}.*on a stack run "
                                             "bptt, tbptt, rtrl"):
            rules.make(name, net)
        assert rules.refusal(name, net) is not None


def test_td_lambda_runs_on_a_stack_through_its_inner_rule():
    net, params = _rate_stack()
    xs, ys, mask = _data(T=5)
    grads, _ = _run(rules.make("td-lambda", net, rule="rtrl"), params, xs, ys, mask)
    tot = _total(params, grads)
    assert all(bool(torch.isfinite(v).all()) for v in tot.values())
    _assert_zero_off_masks(net, tot)
    with pytest.raises(ValueError, match="rule 'columnar' does not support model 'stack'"):
        rules.make("td-lambda", net, rule="columnar")
