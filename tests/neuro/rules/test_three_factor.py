"""The generic three-factor rule: its definition against a direct loop, and its special cases RFLO (rate)
and e-prop (LIF with a detached reset), in float64."""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import rules

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, N, N_OUT, T, BATCH = 3, 5, 2, 14, 2


def _data(net, seed: int = 0, T: int = T):
    g = torch.Generator().manual_seed(20 + seed)
    if net.spiking:
        xs = 3.0 * (torch.rand(T, BATCH, net.n_in, generator=g) < 0.4).double()
    else:
        xs = torch.randn(T, BATCH, net.n_in, generator=g, dtype=torch.float64)
    ys = torch.randn(T, BATCH, net.n_out, generator=g, dtype=torch.float64)
    mask = torch.rand(T, BATCH, generator=g) < 0.8
    return xs, ys, mask


def _lif(**kw):
    return models.make("lif", n_in=N_IN, n_hidden=N, n_out=N_OUT, detach_reset=True, **kw)


def _lif_params(net, seed: int = 0):
    params = net.init_params(seed=seed, dtype=torch.float64)
    params["W_in"] = params["W_in"].abs() * 3.0  # excitatory input drive, so that the units fire
    params["b_out"] = torch.tensor([0.2, -0.1], dtype=torch.float64)
    return params


@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_three_factor_reproduces_rflo_on_the_rate_network(feedback):
    net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=0.2)
    params = net.init_params(seed=1, dtype=torch.float64)
    params["b"] = 0.1 * torch.randn(N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xs, ys, mask = _data(net)
    want = neuro.grad_estimate(net, params, "rflo", xs, ys, seed=4, mask=mask, feedback=feedback)
    got = neuro.grad_estimate(net, params, "three-factor", xs, ys, seed=4, mask=mask, feedback=feedback,
                              pre_decay=(0.0,), pre_impulse=(1.0,), eligibility_decay=1 - net.alpha)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-14, msg=k)
        assert want[k].abs().max() > 1e-6, k
    # without the eligibility decay it is another estimate: the setting matters
    other = neuro.grad_estimate(net, params, "three-factor", xs, ys, seed=4, mask=mask, feedback=feedback)
    assert not torch.allclose(other["W_rec"], want["W_rec"], rtol=1e-3)


def _eprop_direct(net, params, xs, ys, mask, B):
    """e-prop for the LIF network (exact dynamics, reset detached), written per synapse: the eligibility
    vector (eps_v, eps_i) = d(v, i)/dW_ij through the unit's own state, e = psi eps_v, filtered by the
    readout leak, times the learning signal B eps (Bellec et al. 2020, eqs. for LIF with a synaptic current)."""
    a, be, ka, ko, th = net.alpha, net.beta, net.kappa, net.kappa_out, net.v_th
    nb = xs.shape[1]
    g = {k: torch.zeros_like(v) for k, v in params.items()}
    spikes = 0.0
    for s in range(nb):
        v, i, z = (torch.zeros(N, dtype=torch.float64) for _ in range(3))
        yo = torch.zeros(N_OUT, dtype=torch.float64)
        ev = {"W_in": torch.zeros(N, N_IN, dtype=torch.float64), "W_rec": torch.zeros(N, N, dtype=torch.float64)}
        ei = {k: torch.zeros_like(m) for k, m in ev.items()}
        ebar = {k: torch.zeros_like(m) for k, m in ev.items()}
        zbar, cbar = torch.zeros(N, dtype=torch.float64), 0.0
        ev_b, ebar_b = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)  # b: v~ gets (1-alpha) b
        for t in range(xs.shape[0]):
            x = xs[t, s]
            pre = {"W_in": x, "W_rec": z}
            I = params["W_in"] @ x + params["W_rec"] @ z
            vt = params["b"] + (v - params["b"]) * a + ka * (i + I)
            i = be * (i + I)
            z = (vt > th).double()
            psi = net.surrogate_scale / th * (1 - ((vt - th) / (th * net.surrogate_width)).abs()).clamp(min=0)
            v = vt - z * th
            yo = ko * yo + params["W_out"] @ z + params["b_out"]
            spikes += z.sum().item()
            eps = mask[t, s] * (yo - ys[t, s]) / nb
            L = B @ eps
            for k in ev:
                ev[k], ei[k] = a * ev[k] + ka * (ei[k] + pre[k][None, :]), be * (ei[k] + pre[k][None, :])
                ebar[k] = ko * ebar[k] + psi[:, None] * ev[k]
                g[k] += L[:, None] * ebar[k]
            ev_b = a * ev_b + (1 - a)
            ebar_b = ko * ebar_b + psi * ev_b
            g["b"] += L * ebar_b
            zbar, cbar = ko * zbar + z, ko * cbar + 1.0
            g["W_out"] += torch.outer(eps, zbar)
            g["b_out"] += eps * cbar
    return g, spikes


def _eprop_settings(net):
    a, b = net.alpha, net.beta
    return {"pre_decay": (a, b), "pre_impulse": (a / (a - b), -b / (a - b)), "eligibility_decay": 0.0,
            "bias_pre_decay": a}


@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_three_factor_reproduces_eprop_on_lif(feedback):
    net = _lif()
    params = _lif_params(net)
    xs, ys, mask = _data(net, T=30)
    rule = rules.make("three-factor", net, feedback=feedback, **_eprop_settings(net))
    got = neuro.grad_estimate(net, params, rule, xs, ys, seed=2, mask=mask)
    B = rule.init(params, BATCH, seed=2).B if feedback == "random" else params["W_out"].T
    want, spikes = _eprop_direct(net, params, xs, ys, mask, B)
    assert spikes > 10  # the units fire, so the pseudo-derivatives and the traces are exercised
    for k in params:
        assert want[k].abs().max() > 1e-6, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
    assert rule.init(params, 1).ebar[0].shape == (1, N, N_IN)  # the readout's leak (kappa_out) filters e: ebar


@pytest.mark.parametrize("model", ["lif", "lif-lava", "lif-euler", "rate"])
def test_three_factor_equals_the_eprop_rule(model):
    """Against neuro.rules.eprop (written independently, from the neuron's own Jacobians), every parameter
    including b (through bias_pre_decay on LIF; b is in the current of the rate RNN, where e-prop is RFLO),
    for each LIF dynamics (the decays of the forward-Euler update are 1 - dt/tau)."""
    if model.startswith("lif"):
        dynamics = model[4:] or "exact"
        net = _lif(dynamics=dynamics)
        params, kw = _lif_params(net), _eprop_settings(net)
        if dynamics == "euler":
            a, b = 1 - net.dt / net.tau_mem, 1 - net.dt / net.tau_syn
            kw = {**kw, "pre_decay": (a, b), "pre_impulse": (a / (a - b), -b / (a - b)), "bias_pre_decay": a}
    else:
        net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=0.3)
        params, kw = net.init_params(seed=2, dtype=torch.float64), {"eligibility_decay": 0.7}
    params["b"] = 0.2 * torch.rand(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xs, ys, mask = _data(net, T=30)
    want = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, feedback="symmetric")
    got = neuro.grad_estimate(net, params, "three-factor", xs, ys, mask=mask, feedback="readout", **kw)
    for k in params:
        assert want[k].abs().max() > 1e-6, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
    if model == "lif":  # b enters the membrane: through the synapses' double-exponential traces it differs
        kw.pop("bias_pre_decay")
        other = neuro.grad_estimate(net, params, "three-factor", xs, ys, mask=mask, feedback="readout", **kw)
        assert not torch.allclose(other["b"], want["b"], rtol=1e-3)


def _generic_direct(net, params, xs, ys, mask, rule):
    """The module docstring's recursion, literally, for post="activity" and third="reward" on any model
    (the forward run from net.step, the traces per synapse in loops)."""
    nb = xs.shape[1]
    kappa = net.kappa_out if net.spiking else 0.0
    K = len(rule.pre_decay)
    g = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(nb):
        state = net.init_state(params, 1)
        z_prev = torch.zeros(N, dtype=torch.float64)
        n_pre = {"W_in": N_IN, "W_rec": N, "b": 1}
        tr = {k: [[0.0] * n_pre[k] for _ in range(K)] for k in n_pre}
        ypost = {k: [0.0] * N for k in n_pre}
        e = {k: [[0.0] * n_pre[k] for _ in range(N)] for k in n_pre}
        eb = {k: [[0.0] * n_pre[k] for _ in range(N)] for k in n_pre}
        zbar, cbar, base = [0.0] * N, 0.0, 0.0
        for t in range(xs.shape[0]):
            state, yh = net.step(params, state, xs[t, s][None])
            z = (state.z if net.spiking else state.h)[0]
            act = {"W_in": xs[t, s].tolist(), "W_rec": z_prev.tolist(), "b": [1.0]}
            l_s = float(mask[t, s]) * 0.5 * ((yh[0] - ys[t, s]) ** 2).sum().item()
            M = (l_s - base) / nb
            base = rule.reward_decay * base + (1 - rule.reward_decay) * l_s
            for k in n_pre:
                for j in range(n_pre[k]):
                    for q in range(K):
                        tr[k][q][j] = rule.pre_decay[q] * tr[k][q][j] + rule.pre_impulse[q] * act[k][j]
                for i in range(N):
                    ypost[k][i] = rule.post_decay * ypost[k][i] + rule.post_impulse * z[i].item()
                    for j in range(n_pre[k]):
                        pre = sum(tr[k][q][j] for q in range(K))
                        e[k][i][j] = rule.eligibility_decay * e[k][i][j] + ypost[k][i] * pre
                        eb[k][i][j] = kappa * eb[k][i][j] + e[k][i][j]
                        if k == "b":
                            g[k][i] += M * eb[k][i][j]
                        else:
                            g[k][i, j] += M * eb[k][i][j]
            eps = float(mask[t, s]) * (yh[0] - ys[t, s]) / nb
            zbar = [kappa * zbar[i] + z[i].item() for i in range(N)]
            cbar = kappa * cbar + 1.0
            g["W_out"] += torch.outer(eps, torch.tensor(zbar, dtype=torch.float64))
            g["b_out"] += eps * cbar
            z_prev = z
    return g


@pytest.mark.parametrize("model", ["rate", "lif"])
def test_three_factor_equals_its_definition_in_a_direct_loop(model):
    if model == "lif":
        net = models.make("lif", n_in=N_IN, n_hidden=N, n_out=N_OUT)
        params = _lif_params(net)
    else:
        net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=0.5)
        params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, mask = _data(net, T=10)
    rule = rules.make("three-factor", net, post="activity", third="reward", pre_decay=(0.8, 0.3),
                      pre_impulse=(1.0, -0.5), post_decay=0.6, post_impulse=2.0, eligibility_decay=0.7,
                      reward_decay=0.9)
    got = neuro.grad_estimate(net, params, rule, xs, ys, mask=mask)
    want = _generic_direct(net, params, xs, ys, mask, rule)
    for k in params:
        assert want[k].abs().max() > 1e-6, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


def test_alif_without_adaptation_is_lif():
    lif = _lif()
    alif = models.make("alif", n_in=N_IN, n_hidden=N, n_out=N_OUT, detach_reset=True, beta_a=0.0)
    params = _lif_params(lif)
    xs, ys, mask = _data(lif, T=20)
    kw = _eprop_settings(lif)
    a = neuro.grad_estimate(lif, params, "three-factor", xs, ys, mask=mask, **kw)
    b = neuro.grad_estimate(alif, params, "three-factor", xs, ys, mask=mask, **kw)
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14, msg=k)
    # with adaptation the thresholds rise and the postsynaptic factor changes
    adapt = models.make("alif", n_in=N_IN, n_hidden=N, n_out=N_OUT, detach_reset=True, beta_a=1.0)
    c = neuro.grad_estimate(adapt, params, "three-factor", xs, ys, mask=mask, **kw)
    assert not torch.allclose(c["W_rec"], a["W_rec"])


def _neuron_cases():
    yield "rate", {"alpha": 0.4}
    yield "rate", {"alpha": 1.0}
    for dynamics in ("exact", "euler", "lava"):
        yield "lif", {"dynamics": dynamics}
    yield "lif", {"reset": "zero", "refractory": 2, "surrogate": "fast-sigmoid", "v_leak": 0.1}
    yield "lif", {"refractory": 1, "detach_reset": True, "tau_syn": 20.0, "v_leak": -0.2}
    yield "alif", {"refractory": 1}


@pytest.mark.parametrize("model,kw", list(_neuron_cases()))
def test_the_fast_paths_neuron_step_equals_the_models(model, kw):
    """The fast paths' neuron step (neuro.rules._fast._local: in place on the rate RNN and LIF, the contract's
    neuron_derivatives otherwise) against the model's own neuron (state, z) and neuron_derivatives (dz/dI, and
    dz/db through the current too where bias_in_current), over a run where the units fire and are refractory."""
    from neuro.rules._fast import _local

    net = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, **kw)
    params = net.init_params(seed=4, dtype=torch.float64)
    params["b"] = 0.3 * torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if net.spiking:
        params["W_in"] = params["W_in"].abs() * 4.0
    g = torch.Generator().manual_seed(6)
    state = net.init_state(params, BATCH)
    spikes, derivative = 0.0, 0.0
    for t in range(25):
        x = (torch.rand(BATCH, N_IN, generator=g) < 0.5).double() * 3 if net.spiking else \
            torch.randn(BATCH, N_IN, generator=g, dtype=torch.float64)
        i = net.current(params, state, x)
        got = _local.step(net, params, state, i, bias=True)
        with torch.no_grad():
            s_want, z_want = net.neuron(params, state, i)
        d = net.neuron_derivatives(params, state, i)
        torch.testing.assert_close(got.z, z_want, rtol=0, atol=0)
        for a, b in zip(got.state, s_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.dz_dI, d.dz_dI, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.dz_db, d.dz_db + d.dz_dI if net.bias_in_current else d.dz_db,
                                   rtol=1e-12, atol=1e-14)
        assert _local.step(net, params, state, i).dz_db is None
        state = s_want
        spikes += float(z_want.sum()) if net.spiking else 0.0
        derivative += float(got.dz_dI.abs().sum())
    assert derivative > 0
    if net.spiking:
        assert spikes > 10  # the units fire: the surrogate, the reset and the refractory hold are exercised


def test_errors_name_the_value_and_what_is_valid():
    rate = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="pre_impulse.*lengths"):
        rules.make("three-factor", rate, pre_decay=(0.5, 0.2), pre_impulse=(1.0,))
    with pytest.raises(ValueError, match=r"pre_decay\[0\]=1.0.*\[0, 1\)"):
        rules.make("three-factor", rate, pre_decay=(1.0,))
    with pytest.raises(ValueError, match="post='spike'.*'derivative'"):
        rules.make("three-factor", rate, post="spike")
    with pytest.raises(ValueError, match="third='td'"):
        rules.make("three-factor", rate, third="td")
    with pytest.raises(ValueError, match="eligibility_decay"):
        rules.make("three-factor", rate, eligibility_decay=-0.1)
    lstm = models.make("lstm", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="does not support model 'lstm'"):
        rules.make("three-factor", lstm)


# -- the windowed sum (fast=True) against the per-step path (fast=False) ------------------------------------------
_SETTINGS = {
    "plain": {},  # no per-synapse traces on rate; on lif the readout leak kappa (ebar)
    "eligibility": {"eligibility_decay": 0.7},  # e and (lif) ebar: two carried components
    "traces": {"pre_decay": (0.8, 0.3), "pre_impulse": (1.0, -0.5), "post_decay": 0.6, "post_impulse": 2.0,
               "eligibility_decay": 0.5, "bias_pre_decay": 0.9, "feedback": "readout"},
    "reward": {"post": "activity", "third": "reward", "eligibility_decay": 0.4, "reward_decay": 0.8,
               "pre_decay": (0.6,)},
}


def _run_with_flushes(rule, params, xs, ys, mask, flush_after):
    state = rule.init(params, xs.shape[1], 2)
    total = rules.zeros_like_params(params)
    at, states = {}, {}
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        rules.add_into(total, out.grad)
        if t in flush_after:
            state, g = rule.flush(params, state)
            rules.add_into(total, g)
            at[t], states[t] = {k: v.clone() for k, v in total.items()}, state
    state, g = rule.finish(params, state)
    return rules.add_into(total, g), at, states


@pytest.mark.parametrize("window,batch", [(1, 2), (3, 2), (7, 2), (3, 1), (7, 1)])
@pytest.mark.parametrize("setting", list(_SETTINGS))
@pytest.mark.parametrize("model", ["rate", "lif", "alif"])
def test_windowed_sum_equals_the_per_step_path(model, setting, window, batch):
    """Batch 2 (and 1: another code path), flushes after odd steps: the running total after each flush, the carried
    traces and the whole sum equal the per-step recursion's (float64); the spiking nets fire."""
    if model == "rate":
        net = models.make("rate", n_in=N_IN, n_hidden=N, n_out=N_OUT, alpha=0.5)
        params = net.init_params(seed=3, dtype=torch.float64)
    else:
        net = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, detach_reset=True)
        params = _lif_params(net, seed=3)
    params["b"] = 0.2 * torch.rand(N, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    xs, ys, mask = _data(net, seed=4, T=24)
    xs, ys, mask = xs[:, :batch], ys[:, :batch], mask[:, :batch]
    if net.spiking:  # the units fire, so the pseudo-derivatives and the traces are exercised
        state, spikes = net.init_state(params, batch), 0.0
        for x in xs:
            state, _ = net.step(params, state, x)
            spikes += float(state.z.sum())
        assert spikes > 5 * batch
    kw = _SETTINGS[setting]
    flush_after = (0, 3, 4, 9)
    ref, ref_at, ref_states = _run_with_flushes(rules.make("three-factor", net, fast=False, **kw), params, xs, ys, mask,
                                                flush_after)
    got, got_at, got_states = _run_with_flushes(rules.make("three-factor", net, window=window, **kw), params, xs, ys,
                                                mask, flush_after)
    for t in flush_after:
        for k in params:
            torch.testing.assert_close(got_at[t][k], ref_at[t][k], rtol=1e-10, atol=1e-12, msg=f"step {t}, {k}")
        for f in ("e", "ebar", "x", "y"):
            for a, b in zip(getattr(got_states[t], f), getattr(ref_states[t], f)):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f)
    for k in params:
        assert ref[k].abs().max() > 1e-6, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12, msg=k)


def test_windowed_path_on_a_firing_lif_network():
    """The e-prop form on LIF with many spikes: windowed and per-step estimates agree, and the units fire."""
    net = _lif()
    params = _lif_params(net)
    xs, ys, mask = _data(net, T=40)
    state = net.init_state(params, BATCH)
    spikes = 0.0
    for x in xs:
        state, _ = net.step(params, state, x)
        spikes += float(state.z.sum())
    assert spikes > 20
    kw = _eprop_settings(net)
    ref = neuro.grad_estimate(net, params, "three-factor", xs, ys, mask=mask, fast=False, **kw)
    for window in (1, 3, 7, 64):
        got = neuro.grad_estimate(net, params, "three-factor", xs, ys, mask=mask, window=window, **kw)
        for k in params:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12, msg=f"window {window}, {k}")


def test_window_options_are_checked():
    rate = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="window=-1"):
        rules.make("three-factor", rate, window=-1)
    with pytest.raises(ValueError, match="fast=1"):
        rules.make("three-factor", rate, fast=1)


def test_training_with_the_windowed_sum_follows_the_per_step_path():
    """neuro.train on LIF (e-prop form) with updates every 7 steps (flush inside windows of 5, and at sequence
    ends): the same parameters as the per-step path, in float64."""
    task = neuro.tasks.make("add")
    net = models.make("lif", n_in=task.n_in, n_hidden=N, n_out=task.n_out, input_scale=6.0)
    kw = _eprop_settings(net)
    init = net.init_params(seed=3, dtype=torch.float64)
    got = [neuro.train(net, rules.make("three-factor", net, **kw, **opt), task, steps=120, seed=1, params=init,
                       lr=1e-2, update_every=7, dtype=torch.float64, progress=False).params
           for opt in ({"fast": False}, {"window": 5})]
    for k in got[0]:
        assert (got[0][k] - init[k]).abs().max() > 1e-4, k  # every parameter learned: W_rec only if units fire
        torch.testing.assert_close(got[1][k], got[0][k], rtol=1e-10, atol=1e-12, msg=k)
