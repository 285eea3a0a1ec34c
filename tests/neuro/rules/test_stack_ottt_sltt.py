"""OTTT and SLTT on stacks of spiking layers (neuro.rules.ottt, neuro.rules.sltt): float64 oracle tests.

The oracles are BPTT (torch.autograd) of the two detached stacked networks, written here as direct loops from the
LIF/ALIF equations (exact dynamics, models/lif.py and models/alif.py), not from the models' or the rules' code:

- OTTT_A: the temporal paths through the *spikes* are detached (each layer's recurrent input, reset and ALIF
  adaptation; a layer's past inputs from the layer below and the readout's past inputs enter their membranes
  detached), the same-step feed-forward path ``z^(l-1)_t -> I^l_t -> z^l_t`` and each layer's membrane and
  synaptic current from step to step are kept;
- SLTT: every state (each layer's fields and spikes, the readout) detached between steps, the same-step
  feed-forward path kept.

The stacks are sparse (connectivity 0.5 on every recurrent and feed-forward matrix), two layers, both firing.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
from neuro import losses, rules
from neuro.gradients import grad_estimate
from neuro.surrogate import spike

from _helpers import assert_params_close as _close

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, SIZES, N_OUT, T, B = 4, (8, 6), 3, 30, 2


def _case(model: str = "lif", skip: bool = False, connectivity=0.5, sizes=SIZES, seed: int = 0):
    net = models.make("stack", layer=model, sizes=sizes, n_in=N_IN, n_out=N_OUT, connectivity=connectivity, skip=skip,
                      options=(("input_scale", 8.0),))
    params = net.init_params(seed=seed, dtype=torch.float64)
    for l, scale in zip(range(len(sizes)), (0.5, 1.5)):  # positive feed-forward weights: every layer fires
        params[f"{l}.W_in"] = scale * params[f"{l}.W_in"].abs()
    g = torch.Generator().manual_seed(30 + seed)
    xs = 4.0 * (torch.rand(T, B, N_IN, generator=g) < 0.3).to(torch.float64)
    ys = torch.randn(T, B, N_OUT, generator=g, dtype=torch.float64)
    mask = torch.rand(T, B, generator=g) < 0.8
    return net, params, xs, ys, mask


def reference(net, params, xs, ys, mask, network: str):
    """BPTT of the detached stacked network ``network`` ("ottt" or "sltt"; module docstring), a loop from the
    equations. Returns (grad, outputs [T, B, n_out], spikes per layer)."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    W = {k: (p[k] * net.masks[k] if k in net.masks else p[k]) for k in p}  # the connectivity is the network's
    cell = net.layers[0]
    assert cell.dynamics == "exact" and cell.reset == "subtract" and cell.refractory == 0
    dt, tm, ts = cell.dt, cell.tau_mem, cell.tau_syn
    al, be, ko = math.exp(-dt / tm), math.exp(-dt / ts), math.exp(-dt / cell.tau_out)
    ka = ts * (be - al) / (ts - tm)
    alif = cell.name == "alif"
    L = len(net.sizes)
    v = [torch.full((B, n), float(cell.v_leak), dtype=torch.float64) for n in net.sizes]
    i, z, a = ([torch.zeros(B, n, dtype=torch.float64) for n in net.sizes] for _ in range(3))
    y = yhat = torch.zeros(B, N_OUT, dtype=torch.float64)
    total, outs, fired = 0.0, [], [0] * L

    def integrate(v, i, I, b):  # the exact sub-threshold step: (v~, i_t)
        j = i + I
        return cell.v_leak + b + (v - cell.v_leak - b) * al + ka * j, be * j

    for t in range(xs.shape[0]):
        below, zs = None, []
        for l in range(L):
            if network == "sltt":
                v[l], i[l], z[l], a[l] = v[l].detach(), i[l].detach(), z[l].detach(), a[l].detach()
            u = xs[t] if l == 0 else (torch.cat([below, xs[t]], 1) if net.skip else below)
            rec = z[l].detach() @ W[f"{l}.W_rec"].T
            vt, i_new = integrate(v[l], i[l], u @ W[f"{l}.W_in"].T + rec, p[f"{l}.b"])
            thr = cell.v_th + cell.beta_a * a[l].detach() if alif else cell.v_th
            zl = spike(vt, thr, cell.surrogate, cell.surrogate_width, cell.surrogate_scale, cell.v_th)
            if network == "ottt":  # the membrane carries the input from below detached, and the reset
                vt, i_new = integrate(v[l], i[l], u.detach() @ W[f"{l}.W_in"].T + rec, p[f"{l}.b"])
                v[l] = vt - zl.detach() * cell.v_th
                a[l] = math.exp(-dt / cell.tau_adapt) * a[l] + zl.detach() if alif else a[l]
            else:
                v[l] = vt - zl * cell.v_th
                a[l] = math.exp(-dt / cell.tau_adapt) * a[l] + zl if alif else a[l]
            i[l], z[l], below = i_new, zl, zl
            zs.append(zl)
            fired[l] += int(zl.detach().sum())
        zr = torch.cat(zs, 1) if net.skip else zs[-1]
        if network == "ottt":  # the readout's past enters with the spikes detached
            y = ko * yhat + zr @ p["W_out"].T + p["b_out"]
            yhat = ko * yhat + zr.detach() @ p["W_out"].T + p["b_out"]
        else:
            y = ko * y.detach() + zr @ p["W_out"].T + p["b_out"]
        outs.append(y.detach())
        total = total + losses.get("mse")(y, ys[t], mask[t])
    gs = torch.autograd.grad(total, list(p.values()))
    return dict(zip(p, gs)), torch.stack(outs), fired


def _sum(rule, params, xs, ys, mask, seed=0):
    """The summed estimate of one sequence (every step's, then finish's) and the outputs."""
    state = rule.init(params, xs.shape[1], seed)
    total, outs = rules.zeros_like_params(params), []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        rules.add_into(total, out.grad)
        outs.append(out.y)
    state, g = rule.finish(params, state)
    rules.add_into(total, g)
    return total, torch.stack(outs)


def _off_mask_zero(net, g):
    assert net.masks, "the case must be sparse"
    for k, m in net.masks.items():
        assert float(g[k][~m].abs().max()) == 0.0, f"{k}: nonzero off the mask"


CASES = [pytest.param("lif", False, id="lif"), pytest.param("lif", True, id="lif-skip"),
         pytest.param("alif", False, id="alif")]


@pytest.mark.parametrize("model,skip", CASES)
def test_ottt_a_on_a_stack_equals_bptt_of_the_detached_stacked_network(model, skip):
    net, params, xs, ys, mask = _case(model, skip)
    ref, outs, fired = reference(net, params, xs, ys, mask, "ottt")
    assert min(fired) > 20, f"every layer must fire (spikes per layer: {fired})"
    rule = rules.make("ottt", net)
    assert rule.fast_path is None  # a stack runs the definition
    got, y_hat = _sum(rule, params, xs, ys, mask)
    torch.testing.assert_close(y_hat, outs)  # the loop is the network
    _close(got, ref)
    _off_mask_zero(net, got)
    # the spatial path matters: layer 0 reaches the loss through layer 1 only (without skip)
    if not skip:
        assert float(got["0.W_in"].norm()) > 1e-3 * float(got["1.W_in"].norm())
    # and the trace matters: SLTT's network has another gradient
    sltt, _, _ = reference(net, params, xs, ys, mask, "sltt")
    assert float((got["0.W_in"] - sltt["0.W_in"]).norm()) > 1e-3 * float(sltt["0.W_in"].norm())


@pytest.mark.parametrize("model,skip", CASES)
def test_sltt_on_a_stack_equals_bptt_of_the_fully_detached_stacked_network(model, skip):
    net, params, xs, ys, mask = _case(model, skip)
    ref, outs, fired = reference(net, params, xs, ys, mask, "sltt")
    assert min(fired) > 20, f"every layer must fire (spikes per layer: {fired})"
    got, y_hat = _sum(rules.make("sltt", net), params, xs, ys, mask)
    torch.testing.assert_close(y_hat, outs)
    _close(got, ref)
    _off_mask_zero(net, got)
    if not skip:
        assert float(got["0.W_in"].norm()) > 1e-3 * float(got["1.W_in"].norm())
    # the detached network is not the network: the true (BPTT) gradient differs
    true = grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    assert float((true["0.W_rec"] - ref["0.W_rec"]).norm()) > 1e-3 * float(true["0.W_rec"].norm())


def test_a_dense_stack_runs_the_definitions_too():
    """No fast path applies to a stack (they are written for one layer): a dense stack's estimates are the
    oracles' as well."""
    net, params, xs, ys, mask = _case("lif", connectivity=())
    assert not net.masks
    for name, network in (("ottt", "ottt"), ("sltt", "sltt")):
        rule = rules.make(name, net)
        assert rule.fast_path is None
        _close(_sum(rule, params, xs, ys, mask)[0], reference(net, params, xs, ys, mask, network)[0])


def test_ottt_mode_o_on_a_stack_sums_to_mode_a():
    net, params, xs, ys, mask = _case("alif", seed=1)
    a, _ = _sum(rules.make("ottt", net, mode="A"), params, xs, ys, mask)
    rule = rules.make("ottt", net, mode="O")
    state = rule.init(params, B)
    total = rules.zeros_like_params(params)
    for t in range(T):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        assert out.grad is not None
        _off_mask_zero(net, out.grad)
        state = out.state
        rules.add_into(total, out.grad)
    _close(total, a)


def test_sltt_k_on_a_stack():
    """SLTT-K's chosen steps' terms are the stacked SLTT's: with k = T it is SLTT; with k < T, the per-step terms
    of its chosen steps (SLTT run step by step, the rest discarded)."""
    net, params, xs, ys, mask = _case("lif", seed=2)
    sltt, _ = _sum(rules.make("sltt", net), params, xs, ys, mask)
    _close(_sum(rules.make("sltt-k", net, k=T, T=T), params, xs, ys, mask)[0], sltt)
    k, rule, ref = 4, rules.make("sltt-k", net, k=4, T=T, scale=True), rules.make("sltt", net)
    state, rstate = rule.init(params, B, 3), ref.init(params, B)
    chosen = state.chosen.nonzero().flatten().tolist()
    expect = rules.zeros_like_params(params)
    for t in range(T):
        rout = ref.step(params, rstate, xs[t], ys[t], mask[t])
        rstate = rout.state
        if t in chosen:
            rules.add_into(expect, {key: g * (T / k) for key, g in rout.grad.items()})
    got, _ = _sum(rule, params, xs, ys, mask, seed=3)
    assert len(chosen) == k
    _close(got, expect)
    _off_mask_zero(net, got)


@pytest.mark.parametrize("name,opts", [("ottt", {"mode": "O"}), ("sltt", {})])
def test_a_one_layer_stack_is_the_single_layer_rule(name, opts):
    """L = 1 is the same equations: a one-layer stack's estimates are the layer model's (same params)."""
    stack, params, xs, ys, mask = _case("alif", sizes=(9,), connectivity=())
    single = models.make("alif", n_in=N_IN, n_hidden=9, n_out=N_OUT, input_scale=8.0)
    sp = single.init_params(seed=0, dtype=torch.float64)
    sp["W_in"] = 0.5 * sp["W_in"].abs()  # as _case makes them
    rename = {f"0.{k}": k for k in ("W_in", "W_rec", "b")}
    torch.testing.assert_close({rename.get(k, k): v for k, v in params.items()}, sp)
    got, y1 = _sum(rules.make(name, stack, **opts), params, xs, ys, mask)
    ref, y2 = _sum(rules.make(name, single, fast=False, **opts), sp, xs, ys, mask)
    torch.testing.assert_close(y1, y2)
    _close({rename.get(k, k): v for k, v in got.items()}, ref)


def test_stacks_the_rules_do_not_read_are_refused():
    rate = models.make("rate", n_in=2, n_hidden=(3, 3), n_out=1)
    with pytest.raises(ValueError, match="model 'stack'.*no linear filter"):
        rules.make("ottt", rate)
    with pytest.raises(ValueError, match="model 'stack'.*spiking"):
        rules.make("sltt", rate)
    loihi = models.make("lif-loihi", n_in=2, n_hidden=(3, 3), n_out=1)
    for name in ("ottt", "sltt", "sltt-k"):
        with pytest.raises(ValueError, match="model 'stack'.*local form"):
            rules.make(name, loihi)
