"""OTTT (neuro.rules.ottt): oracle tests in float64, of the definition (``fast=False``) and of the fast path.

The oracle is BPTT (torch.autograd) of the network OTTT_A is exact for, written here as a direct loop
from the LIF equations (not from the model's code): the spikes' temporal paths detached (recurrent input,
reset, ALIF adaptation, past spikes in the readout), the membrane and the synaptic current kept.
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from neuro import losses, rules
from neuro.gradients import grad_estimate
from neuro.surrogate import spike

from _helpers import assert_params_close as _close
from _helpers import load_state, save_state, tensors

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, N, N_OUT, T, B = 4, 10, 3, 30, 2


def _case(model: str = "lif", seed: int = 0, **kw):
    net = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, **{"input_scale": 8.0, **kw})
    params = net.init_params(seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(10 + seed)
    xs = 4.0 * (torch.rand(T, B, N_IN, generator=g) < 0.3).to(torch.float64)
    ys = torch.randn(T, B, N_OUT, generator=g, dtype=torch.float64)
    mask = torch.rand(T, B, generator=g) < 0.8
    return net, params, xs, ys, mask


def reference(net, params, xs, ys, mask, detach_all: bool = False):
    """BPTT of the modified network (see the module docstring), a loop from the equations of
    models/lif.py. ``detach_all``: every state detached between steps (the SLTT network) instead.
    Returns (grad, outputs [T, B, n_out], number of spikes)."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    dt, tm, ts = net.dt, net.tau_mem, net.tau_syn
    al, be, ko = math.exp(-dt / tm), math.exp(-dt / ts), math.exp(-dt / net.tau_out)
    ka = ts * (be - al) / (ts - tm)
    alif = net.name == "alif"
    v = torch.full((B, N), float(net.v_leak), dtype=torch.float64)
    i, z, a = (torch.zeros(B, N, dtype=torch.float64) for _ in range(3))
    y = yhat = torch.zeros(B, N_OUT, dtype=torch.float64)
    total, outs, fired = 0.0, [], 0
    for t in range(xs.shape[0]):
        if detach_all:
            v, i, y = v.detach(), i.detach(), y.detach()
        I = xs[t] @ p["W_in"].T + z.detach() @ p["W_rec"].T
        if net.dynamics == "exact":
            j = i + I
            vt = net.v_leak + p["b"] + (v - net.v_leak - p["b"]) * al + ka * j
            i = be * j
        elif net.dynamics == "euler":
            j = i + I
            vt = v + dt / tm * (net.v_leak + p["b"] - v + j)
            i = j * (1 - dt / ts)
        else:
            i = i * be + I
            vt = v * al + i + p["b"]
        thr = net.v_th + net.beta_a * a.detach() if alif else net.v_th
        z = spike(vt, thr, net.surrogate, net.surrogate_width, net.surrogate_scale, net.v_th)
        v = vt - z.detach() * net.v_th
        if alif:
            a = math.exp(-dt / net.tau_adapt) * a + z.detach()
        if detach_all:
            y = ko * y + z @ p["W_out"].T + p["b_out"]
        else:  # the readout's past enters with the spikes detached: W_out, b_out keep their whole gradient
            y = ko * yhat + z @ p["W_out"].T + p["b_out"]
            yhat = ko * yhat + z.detach() @ p["W_out"].T + p["b_out"]
        fired += int(z.detach().sum())
        outs.append(y.detach())
        total = total + losses.get("mse")(y, ys[t], mask[t])
    gs = torch.autograd.grad(total, list(p.values()))
    return dict(zip(p, gs)), torch.stack(outs), fired


FAST = [pytest.param(True, id="fast"), pytest.param(False, id="definition")]


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("model,opts", [("lif", {"dynamics": "exact"}), ("lif", {"dynamics": "euler"}),
                                        ("lif", {"dynamics": "lava"}), ("alif", {}),
                                        ("lif", {"surrogate": "fast-sigmoid", "tau_syn": 2.0})])
def test_ottt_a_equals_bptt_of_the_network_with_spike_paths_detached(model, opts, fast):
    net, params, xs, ys, mask = _case(model, **opts)
    ref, outs, fired = reference(net, params, xs, ys, mask)
    assert fired > 20, f"too few spikes ({fired}) for a meaningful test"
    torch.testing.assert_close(outs, neuro.simulate(net, params, xs).y)  # the loop is the model
    got = grad_estimate(net, params, "ottt", xs, ys, mask=mask, fast=fast)
    _close(got, ref)
    # the trace matters: the membrane-detached network (SLTT's) has another gradient
    sltt, _, _ = reference(net, params, xs, ys, mask, detach_all=True)
    assert float((got["W_in"] - sltt["W_in"]).norm()) > 1e-3 * float(sltt["W_in"].norm())


def test_mode_o_gives_the_per_step_terms_whose_sum_is_mode_a():
    net, params, xs, ys, mask = _case("alif", seed=1)
    ra, ro = rules.make("ottt", net, mode="A", fast=False), rules.make("ottt", net, mode="O", fast=False)
    sa, so = ra.init(params, B), ro.init(params, B)
    total = rules.zeros_like_params(params)
    for t in range(T):
        oa, oo = ra.step(params, sa, xs[t], ys[t], mask[t]), ro.step(params, so, xs[t], ys[t], mask[t])
        sa, so = oa.state, oo.state
        assert oa.grad is None and oo.grad is not None
        torch.testing.assert_close(oa.y, oo.y)
        rules.add_into(total, oo.grad)
    assert ro.finish(params, so)[1] is None
    sa, g = ra.finish(params, sa)
    _close(total, g)
    _close(grad_estimate(net, params, "ottt", xs, ys, mask=mask), g)
    assert all(float(v.abs().sum()) == 0 for v in sa.acc)  # the sum restarts with the next sequence


@pytest.mark.parametrize("fast", FAST)
def test_first_step_term_is_the_instantaneous_gradient(fast):
    """At step 1 the traces hold only this step's input: OTTT's term is the gradient of l_1 itself."""
    net, params, xs, ys, mask = _case("lif")
    mask[0] = True
    xs[0] = 4.0
    rule = rules.make("ottt", net, mode="O", fast=fast, window=1)
    out = rule.step(params, rule.init(params, B), xs[0], ys[0], mask[0])
    ref, _, _ = reference(net, params, xs[:1], ys[:1], mask[:1])
    _close(out.grad, ref)


def test_models_without_a_linear_filter_and_bad_options_are_rejected():
    rate = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="model 'rate'.*no linear filter.*lif, alif"):
        rules.make("ottt", rate)
    loihi = models.make("lif-loihi", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="model 'lif-loihi'.*local form"):
        rules.make("ottt", loihi)
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="mode='B'.*'A', 'O'"):
        rules.make("ottt", net, mode="B")
    with pytest.raises(ValueError, match="fast=1"):
        rules.make("ottt", net, fast=1)
    for w in (0, -1, 1.5):
        with pytest.raises(ValueError, match="window"):
            rules.make("ottt", net, window=w)


@pytest.mark.parametrize("fast", FAST)
def test_memory_is_constant_in_t(fast):
    """The state holds traces of fixed size: no tensor grows with the number of steps."""
    net, params, xs, ys, mask = _case("lif")
    rule = rules.make("ottt", net, fast=fast, window=7)
    state = rule.init(params, B)
    sizes = set()
    for t in range(T):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
        sizes.add(sum(x.numel() for x in tensors(state)))
    assert len(sizes) == 1


# -- the fast path (a window of outer products summed as one matrix product) against the definition ----------------
def _sums_at_flushes(rule, params, xs, ys, mask, flush_at, save_at=None):
    """Run one sequence, calling ``flush`` after the steps in ``flush_at`` (and saving the state through a
    checkpoint and loading it back after step ``save_at``): the running sum of every estimate handed over,
    recorded at each flush and after ``finish``, and the outputs."""
    state = rule.init(params, xs.shape[1])
    total = rules.zeros_like_params(params)
    sums, ys_hat = [], []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        rules.add_into(total, out.grad)
        ys_hat.append(out.y)
        if t in flush_at:
            state, g = rule.flush(params, state)
            rules.add_into(total, g)
            sums.append({k: v.clone() for k, v in total.items()})
        if t == save_at:
            state = load_state(save_state(state))
    state, g = rule.finish(params, state)
    rules.add_into(total, g)
    sums.append(total)
    return sums, torch.stack(ys_hat)


@pytest.mark.parametrize("model,opts", [("lif", {}), ("lif", {"dynamics": "euler", "refractory": 2}),
                                        ("lif", {"dynamics": "lava", "reset": "zero"}), ("alif", {})])
@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("mode", ["A", "O"])
def test_fast_path_equals_the_definition(model, opts, window, mode):
    """float64, batch 2, flushes at odd steps and a checkpoint mid-window: every sum handed over up to each
    flush (mode "O"; mode "A" hands over nothing before finish) and the final sum equal the definition's."""
    net, params, xs, ys, mask = _case(model, **opts)
    flush_at = {4, 9, 10, 17}
    ref_rule, rule = rules.make("ottt", net, mode=mode, fast=False), rules.make("ottt", net, mode=mode, window=window)
    assert ref_rule.fast_path is None and rule.fast_path is not None
    ref, y_ref = _sums_at_flushes(ref_rule, params, xs, ys, mask, flush_at, save_at=12)
    got, y_got = _sums_at_flushes(rule, params, xs, ys, mask, flush_at, save_at=12)
    assert int((neuro.simulate(net, params, xs).spikes > 0).sum()) > 20, "the network must spike"
    torch.testing.assert_close(y_got, y_ref, rtol=0, atol=0)
    for a, b in zip(got, ref):
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    if mode == "A":
        assert all(float(v.abs().sum()) == 0 for s in got[:-1] for v in s.values())  # nothing before finish
    else:
        assert float(got[0]["W_in"].abs().sum()) > 0

