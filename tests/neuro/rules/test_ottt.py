"""OTTT (neuro.rules.ottt): oracle tests in float64.

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


@pytest.mark.parametrize("model,opts", [("lif", {"dynamics": "exact"}), ("lif", {"dynamics": "euler"}),
                                        ("lif", {"dynamics": "lava"}), ("alif", {}),
                                        ("lif", {"surrogate": "fast-sigmoid", "tau_syn": 2.0})])
def test_ottt_a_equals_bptt_of_the_network_with_spike_paths_detached(model, opts):
    net, params, xs, ys, mask = _case(model, **opts)
    ref, outs, fired = reference(net, params, xs, ys, mask)
    assert fired > 20, f"too few spikes ({fired}) for a meaningful test"
    torch.testing.assert_close(outs, neuro.simulate(net, params, xs).y)  # the loop is the model
    got = grad_estimate(net, params, "ottt", xs, ys, mask=mask)
    _close(got, ref)
    # the trace matters: the membrane-detached network (SLTT's) has another gradient
    sltt, _, _ = reference(net, params, xs, ys, mask, detach_all=True)
    assert float((got["W_in"] - sltt["W_in"]).norm()) > 1e-3 * float(sltt["W_in"].norm())


def test_mode_o_gives_the_per_step_terms_whose_sum_is_mode_a():
    net, params, xs, ys, mask = _case("alif", seed=1)
    ra, ro = rules.make("ottt", net, mode="A"), rules.make("ottt", net, mode="O", window=1)
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
    assert all(float(v.abs().sum()) == 0 for v in sa.acc.values())  # the sum restarts with the next sequence


def test_first_step_term_is_the_instantaneous_gradient():
    """At step 1 the traces hold only this step's input: OTTT's term is the gradient of l_1 itself."""
    net, params, xs, ys, mask = _case("lif")
    mask[0] = True
    xs[0] = 4.0
    rule = rules.make("ottt", net, mode="O", window=1)
    out = rule.step(params, rule.init(params, B), xs[0], ys[0], mask[0])
    ref, _, _ = reference(net, params, xs[:1], ys[:1], mask[:1])
    _close(out.grad, ref)


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_subthreshold_coefficients_are_the_model_update(dynamics):
    """``LIF.subthreshold()`` (used by OTTT's traces) is the Jacobian of the model's sub-threshold update."""
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1, dynamics=dynamics, tau_syn=3.0)
    params = net.init_params(dtype=torch.float64)
    state = net.init_state(params, 1)
    c = net.subthreshold()
    f = lambda v, i, I, b: net._integrate({**params, "b": b}, state._replace(v=v, i=i), I)  # noqa: E731
    args = (torch.rand(1, 3, dtype=torch.float64), torch.rand(1, 3, dtype=torch.float64),
            torch.rand(1, 3, dtype=torch.float64), torch.rand(3, dtype=torch.float64))
    for k, (name_v, name_i) in enumerate([("vv", "iv"), ("vi", "ii"), ("vI", "iI"), ("vb", "ib")]):
        tangent = [torch.zeros_like(x) for x in args]
        tangent[k] = torch.ones_like(args[k])
        _, (dv, di) = torch.func.jvp(f, args, tuple(tangent))
        torch.testing.assert_close(dv, torch.full_like(dv, getattr(c, name_v)))
        expect_i = getattr(c, name_i) if hasattr(c, name_i) else 0.0  # v and b do not enter i
        torch.testing.assert_close(di, torch.full_like(di, expect_i))


def test_rate_net_and_bad_mode_are_rejected():
    rate = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="OTTT on a rate net with no spikes.*lif, alif"):
        rules.make("ottt", rate)
    with pytest.raises(ValueError, match="'rate'"):
        rules.make("ottt", rate)
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="mode='B'.*'A', 'O'"):
        rules.make("ottt", net, mode="B")


def test_memory_is_constant_in_t():
    """The state holds traces of fixed size: no tensor grows with the number of steps."""
    net, params, xs, ys, mask = _case("lif")
    rule = rules.make("ottt", net)
    state = rule.init(params, B)
    sizes = []
    for t in range(T):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
        sizes.append(sum(x.numel() for x in state if isinstance(x, torch.Tensor)))
    assert len(set(sizes)) == 1


# -- the window (outer products summed as one matrix product) and the written-out local errors -------------------
def _sums_at_flushes(rule, params, xs, ys, mask, flush_at):
    """Run one sequence, calling ``flush`` after the steps in ``flush_at``: the running sum of every estimate
    handed over, recorded at each flush and after ``finish``, and the outputs."""
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
    state, g = rule.finish(params, state)
    rules.add_into(total, g)
    sums.append(total)
    return sums, torch.stack(ys_hat)


@pytest.mark.parametrize("model,opts", [("lif", {}), ("lif", {"dynamics": "euler", "refractory": 2}),
                                        ("lif", {"dynamics": "lava", "reset": "zero"}), ("alif", {})])
@pytest.mark.parametrize("window", [3, 7])
@pytest.mark.parametrize("mode", ["A", "O"])
def test_window_equals_the_per_step_path(model, opts, window, mode):
    """float64, batch 2, flushes at odd steps: every sum handed over up to each flush (mode "O"; mode "A"
    hands over nothing before finish) and the final sum equal the per-step path's (autograd, window=1)."""
    net, params, xs, ys, mask = _case(model, **opts)
    flush_at = {4, 9, 10, 17}
    ref_rule, rule = rules.make("ottt", net, mode=mode, window=1), rules.make("ottt", net, mode=mode, window=window)
    ref, y_ref = _sums_at_flushes(ref_rule, params, xs, ys, mask, flush_at)
    got, y_got = _sums_at_flushes(rule, params, xs, ys, mask, flush_at)
    assert int((neuro.simulate(net, params, xs).spikes > 0).sum()) > 20, "the network must spike"
    torch.testing.assert_close(y_got, y_ref, rtol=0, atol=0)
    for a, b in zip(got, ref):
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    if mode == "A":
        assert all(float(v.abs().sum()) == 0 for s in got[:-1] for v in s.values())  # nothing before finish
    else:
        assert float(got[0]["W_in"].abs().sum()) > 0


@pytest.mark.parametrize("model,opts", [("lif", {}), ("lif", {"dynamics": "euler", "refractory": 2}),
                                        ("lif", {"dynamics": "lava", "surrogate": "fast-sigmoid"}), ("alif", {})])
@pytest.mark.parametrize("loss", ["mse", "ce", "value"])
def test_written_out_local_errors_equal_autograd(model, opts, loss):
    """``local_errors`` (no autograd): g_v = dl/dv~ and g_y = dl/dy equal autograd through the step (d l / d I
    = vI g_v), with some units refractory and some near threshold."""
    from neuro.rules.sltt import local_errors

    net, params, xs, ys, mask = _case(model, **opts)
    if loss == "ce":
        ys = torch.softmax(ys, -1)
    state = net.init_state(params, B)
    checked = 0
    for t in range(12):
        I = net.current(params, state, xs[t])
        new, z, y_hat, l, g_v, g_y = local_errors(net, loss, params, state, I, ys[t], mask[t])
        Ig = I.clone().requires_grad_(True)
        s2, z2 = net.neuron(params, state, Ig)
        s2, y2 = net.readout(params, s2, z2)
        l2 = losses.get(loss)(y2, ys[t], mask[t])
        gI, gy = torch.autograd.grad(l2, [Ig, y2])
        torch.testing.assert_close(y_hat, y2.detach(), rtol=0, atol=0)
        torch.testing.assert_close(l, l2.detach())
        torch.testing.assert_close(g_y, gy, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(g_v * net.subthreshold().vI, gI, rtol=1e-12, atol=1e-15)
        for a, b in zip(new, s2):
            assert torch.equal(a, b.detach())
        checked += int((gI != 0).sum())
        state = new
    assert checked > 20, "too few non-zero local errors for a meaningful test"


def test_window_must_be_a_positive_integer():
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    for w in (0, -1, 1.5):
        with pytest.raises(ValueError, match="window"):
            rules.make("ottt", net, window=w)
