"""LIF against oracles: closed-form trajectories (``exact``), norse 1.1 (``euler``), Lava's equations (``lava``).

Every test runs in float64 and compares with an independent computation: the analytic solution of
the ODE of ``models/lif.py``, its spike-response (kernel) form, norse's own ``lif_step`` and
``LIFRecurrentCell``, or a numpy transcription of Lava's floating-point LIF process model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import models

F64 = torch.float64


def run(net, params, xs, state=None):
    """Step ``net`` over ``xs`` [T, B, n_in]; every state field stacked to [T, B, ...]."""
    state = net.init_state(params, xs.shape[1]) if state is None else state
    out = []
    with torch.no_grad():
        for x in xs:
            state, _ = net.step(params, state, x)
            out.append(state)
    return type(state)(*(torch.stack(f) for f in zip(*out)))


def one_neuron(w: float = 0.0, b: float = 0.0, n_in: int = 1) -> dict[str, torch.Tensor]:
    """Parameters of a single neuron without recurrence: every input has weight ``w``, bias ``b``."""
    return {"W_in": torch.full((1, n_in), w, dtype=F64), "W_rec": torch.zeros(1, 1, dtype=F64),
            "b": torch.tensor([b], dtype=F64), "W_out": torch.ones(1, 1, dtype=F64),
            "b_out": torch.zeros(1, dtype=F64)}


def lif1(**kw):
    return models.make("lif", n_in=kw.pop("n_in", 1), n_hidden=1, n_out=1, **kw)


def psp(s: np.ndarray, tau_syn: float, tau_mem: float) -> np.ndarray:
    """Voltage at time ``s`` after a unit current jump at time 0 (tau_mem v' = -v + i, tau_syn i' = -i)."""
    if tau_syn == tau_mem:
        return s / tau_mem * np.exp(-s / tau_mem)
    return tau_syn / (tau_syn - tau_mem) * (np.exp(-s / tau_syn) - np.exp(-s / tau_mem))


def first_crossing(v0: float, rest: float, v_th: float, tau_mem: float, dt: float) -> int:
    """Steps until ``rest + (v0 - rest) exp(-k dt / tau_mem)`` first exceeds ``v_th`` (k >= 1)."""
    x = tau_mem / dt * math.log((rest - v0) / (rest - v_th))
    assert 0.02 < x - math.floor(x) < 0.98, "test parameters too close to a step boundary"
    return math.floor(x) + 1


# -- exact dynamics: sub-threshold closed forms ----------------------------------------------------------

@pytest.mark.parametrize("tau_syn,tau_mem", [(5.0, 20.0), (30.0, 10.0), (10.0, 10.0)])
@pytest.mark.parametrize("dt", [1.0, 0.25])
def test_exact_single_input_spike_is_the_analytic_psp(tau_syn, tau_mem, dt):
    w, v_leak, T = 0.7, -0.3, 400
    net = lif1(dt=dt, tau_syn=tau_syn, tau_mem=tau_mem, v_th=1e6, v_leak=v_leak)
    xs = torch.zeros(T, 1, 1, dtype=F64)
    xs[0] = 1.0  # the jump happens at the start of step 0; v_t is recorded at the end of step t
    tr = run(net, one_neuron(w), xs)
    s = (np.arange(T) + 1) * dt
    np.testing.assert_allclose(tr.v[:, 0, 0].numpy(), v_leak + w * psp(s, tau_syn, tau_mem), rtol=0, atol=1e-13)
    np.testing.assert_allclose(tr.i[:, 0, 0].numpy(), w * np.exp(-s / tau_syn), rtol=0, atol=1e-13)
    assert tr.z.sum() == 0
    # the PSP peaks where the analytic one does (a check on the curve's shape, not only its values)
    s_peak = tau_mem if tau_syn == tau_mem else tau_syn * tau_mem * math.log(tau_syn / tau_mem) / (tau_syn - tau_mem)
    assert abs((int(tr.v[:, 0, 0].argmax()) + 1) * dt - s_peak) <= dt


def test_exact_kappa_is_accurate_when_the_time_constants_nearly_coincide():
    from decimal import Decimal, getcontext
    getcontext().prec = 50
    for eps in (1e-3, 1e-6, 1e-8, 1e-10, 1e-13, 0.0):
        ts, tm, dt = 20.0 * (1 + eps), 20.0, 1.0
        Ts, Tm, Dt = Decimal(ts), Decimal(tm), Decimal(dt)
        ref = Dt / Tm * (-Dt / Tm).exp() if ts == tm else Ts * ((-Dt / Ts).exp() - (-Dt / Tm).exp()) / (Ts - Tm)
        assert lif1(tau_syn=ts, tau_mem=tm, dt=dt).kappa == pytest.approx(float(ref), rel=1e-14, abs=0)


@pytest.mark.parametrize("v0", [None, 2.5])
def test_exact_constant_bias_relaxes_exponentially(v0):
    b, v_leak, tau_mem, dt, T = 0.6, 0.2, 15.0, 0.5, 300
    net = lif1(dt=dt, tau_mem=tau_mem, v_th=1e6, v_leak=v_leak)
    params = one_neuron(b=b)
    state = net.init_state(params)
    if v0 is not None:
        state = state._replace(v=torch.full_like(state.v, v0))
    tr = run(net, params, torch.zeros(T, 1, 1, dtype=F64), state)
    start = v_leak if v0 is None else v0
    rest = v_leak + b
    s = (np.arange(T) + 1) * dt
    np.testing.assert_allclose(tr.v[:, 0, 0].numpy(), rest + (start - rest) * np.exp(-s / tau_mem), rtol=0, atol=1e-13)


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_gain_is_the_steady_state_voltage_per_unit_input(dynamics):
    """``init_params`` scales weights by ``gain()``: it must be the measured steady-state response."""
    net = lif1(dynamics=dynamics, v_th=1e6, tau_syn=4.0, tau_mem=8.0)
    I0 = 0.01
    tr = run(net, one_neuron(w=I0), torch.ones(2000, 1, 1, dtype=F64))
    assert float(tr.v[-1, 0, 0]) == pytest.approx(net.gain() * I0, rel=1e-10)


# -- exact dynamics: spiking ------------------------------------------------------------------------------

def test_exact_zero_reset_constant_drive_fires_at_the_analytic_interval():
    v_leak, v_reset, v_th, b, tau_mem, dt, T = 0.2, -0.1, 1.0, 1.5, 20.0, 1.0, 400
    net = lif1(dt=dt, tau_mem=tau_mem, v_th=v_th, v_leak=v_leak, v_reset=v_reset, reset="zero")
    tr = run(net, one_neuron(b=b), torch.zeros(T, 1, 1, dtype=F64))
    rest = v_leak + b
    k0 = first_crossing(v_leak, rest, v_th, tau_mem, dt)   # from rest at v_leak
    k = first_crossing(v_reset, rest, v_th, tau_mem, dt)   # from each reset
    expected = np.arange(k0 - 1, T, k)
    spikes = torch.nonzero(tr.z[:, 0, 0]).flatten().numpy()
    assert len(expected) >= 10
    np.testing.assert_array_equal(spikes, expected)
    assert torch.all(tr.v[spikes, 0, 0] == v_reset)  # reset="zero" puts v at v_reset exactly
    assert torch.all(tr.v[:, 0, 0] <= v_th)


def srm(W_in, b, xs, v_th, v_leak, dt, tau_syn, tau_mem):
    """The spike-response form of exact-LIF with reset by subtraction, single-layer (no recurrence).

    v_t = v_leak + b (1 - e^{-(t+1)dt/tau_mem}) + sum_{s<=t} (W_in x_s) psp((t-s+1) dt)
          - v_th sum_{s<t} z_s e^{-(t-s)dt/tau_mem};   z_t = [v_t > v_th], then v_t -= z_t v_th.
    """
    T, B, _ = xs.shape
    n = W_in.shape[0]
    drive = np.einsum("tbi,ni->tbn", xs, W_in)
    kern = psp((np.arange(T) + 1) * dt, tau_syn, tau_mem)
    z = np.zeros((T, B, n))
    v = np.zeros((T, B, n))
    for t in range(T):
        u = v_leak + b * (1.0 - math.exp(-(t + 1) * dt / tau_mem))
        u = u + np.einsum("sbn,s->bn", drive[: t + 1], kern[t::-1])
        if t:
            u = u - v_th * np.einsum("sbn,s->bn", z[:t], np.exp(-np.arange(t, 0, -1) * dt / tau_mem))
        z[t] = u > v_th
        v[t] = u - z[t] * v_th
    return z, v


def test_exact_subtract_reset_equals_the_spike_response_model():
    """With reset by subtraction, exact LIF is linear between thresholds: a sum of kernels."""
    rng = np.random.default_rng(0)
    n, n_in, B, T = 4, 6, 2, 400
    dt, tau_syn, tau_mem, v_th, v_leak = 0.5, 3.0, 12.0, 1.0, 0.1
    W_in = rng.normal(0.25, 0.1, (n, n_in))
    b = rng.uniform(0.0, 0.4, n)
    xs = (rng.random((T, B, n_in)) < 0.2).astype(float)
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=1, dt=dt, tau_syn=tau_syn, tau_mem=tau_mem,
                      v_th=v_th, v_leak=v_leak, reset="subtract")
    params = {"W_in": torch.tensor(W_in), "W_rec": torch.zeros(n, n, dtype=F64), "b": torch.tensor(b),
              "W_out": torch.zeros(1, n, dtype=F64), "b_out": torch.zeros(1, dtype=F64)}
    tr = run(net, params, torch.tensor(xs))
    z_ref, v_ref = srm(W_in, b, xs, v_th, v_leak, dt, tau_syn, tau_mem)
    assert 0.02 < z_ref.mean() < 0.3  # the neurons fire
    np.testing.assert_array_equal(tr.z.numpy(), z_ref)
    np.testing.assert_allclose(tr.v.numpy(), v_ref, rtol=0, atol=1e-11)


def test_exact_subtract_reset_with_recurrence_equals_the_spike_response_model():
    """Recurrent spikes z_{t-1} enter as a current jump at step t: the same kernels, delayed one step."""
    rng = np.random.default_rng(1)
    n, n_in, T = 8, 3, 300
    dt, tau_syn, tau_mem, v_th = 1.0, 5.0, 20.0, 1.0
    W_in = rng.normal(0.5, 0.1, (n, n_in))
    W_rec = rng.normal(0.0, 0.3, (n, n))
    xs = (rng.random((T, 1, n_in)) < 0.3).astype(float)
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=1, dt=dt, tau_syn=tau_syn, tau_mem=tau_mem, v_th=v_th)
    params = {"W_in": torch.tensor(W_in), "W_rec": torch.tensor(W_rec), "b": torch.zeros(n, dtype=F64),
              "W_out": torch.zeros(1, n, dtype=F64), "b_out": torch.zeros(1, dtype=F64)}
    tr = run(net, params, torch.tensor(xs))
    # oracle: the SRM sum with each neuron's recurrent input computed from the oracle's own earlier spikes
    kern = psp((np.arange(T) + 1) * dt, tau_syn, tau_mem)
    leak = np.exp(-np.arange(T) * dt / tau_mem)
    z = np.zeros((T, n))
    for t in range(T):
        jumps = xs[: t + 1, 0] @ W_in.T
        jumps[1:] += z[:t] @ W_rec.T
        u = kern[t::-1] @ jumps - v_th * (leak[t:0:-1] @ z[:t] if t else 0.0)
        z[t] = u > v_th
    assert 0.02 < z.mean() < 0.5
    np.testing.assert_array_equal(tr.z[:, 0].numpy(), z)
    no_rec = run(net, {**params, "W_rec": torch.zeros(n, n, dtype=F64)}, torch.tensor(xs))
    assert not torch.equal(no_rec.z, tr.z)  # the recurrence matters to the spike train


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("R", [1, 3, 7])
def test_refractory_period_holds_v_at_reset_and_blocks_spikes(reset, R):
    """A drive that would fire every step fires every R + 1 steps; v = v_reset while refractory."""
    v_reset = -0.2
    net = lif1(refractory=R, reset=reset, v_reset=v_reset, v_th=1.0)
    tr = run(net, one_neuron(b=100.0), torch.zeros(60, 1, 1, dtype=F64))
    spikes = torch.nonzero(tr.z[:, 0, 0]).flatten().tolist()
    assert spikes == list(range(0, 60, R + 1))
    held = [s + d for s in spikes for d in range(1, R + 1) if s + d < 60]
    assert torch.all(tr.v[held, 0, 0] == v_reset)
    assert torch.all(tr.r[spikes, 0, 0] == R)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_refractory_adds_exactly_R_steps_to_the_interval(reset):
    v_th, b, tau_mem, dt, R, T = 1.0, 1.4, 20.0, 1.0, 5, 400
    net = lif1(dt=dt, tau_mem=tau_mem, v_th=v_th, reset=reset, refractory=R)
    tr = run(net, one_neuron(b=b), torch.zeros(T, 1, 1, dtype=F64))
    k = first_crossing(0.0, b, v_th, tau_mem, dt)  # from rest, and from the hold at v_reset = 0 = v_leak
    spikes = torch.nonzero(tr.z[:, 0, 0]).flatten().numpy()
    np.testing.assert_array_equal(spikes, np.arange(k - 1, T, k + R))


def test_reset_formulas():
    """One step above threshold: subtract leaves v~ - v_th, zero leaves v_reset."""
    v_th, v_reset, b, tau_mem = 1.0, 0.3, 50.0, 20.0
    alpha = math.exp(-1.0 / tau_mem)
    v_tilde = b * (1 - alpha)  # one exact step from v = 0 with constant bias b
    assert v_tilde > v_th
    for reset, expected in (("subtract", v_tilde - v_th), ("zero", v_reset)):
        net = lif1(tau_mem=tau_mem, v_th=v_th, v_reset=v_reset, reset=reset)
        tr = run(net, one_neuron(b=b), torch.zeros(1, 1, 1, dtype=F64))
        assert float(tr.z[0, 0, 0]) == 1.0
        assert float(tr.v[0, 0, 0]) == pytest.approx(expected, rel=1e-14, abs=1e-14)


# -- euler dynamics: norse 1.1 as the oracle -------------------------------------------------------------

def random_network(rng, n_in, n, unit, in_mean, in_std, rec_std):
    W_in = unit * rng.normal(in_mean, in_std, (n, n_in))
    W_rec = unit * rng.normal(0.0, rec_std / math.sqrt(n), (n, n))
    return torch.tensor(W_in), torch.tensor(W_rec)


def norse_parameters(net, b):
    from norse.torch.functional.lif import LIFParameters

    ms = 1e-3  # our times are in ms, norse's in s
    return LIFParameters(
        tau_syn_inv=torch.tensor(1.0 / (net.tau_syn * ms), dtype=F64),
        tau_mem_inv=torch.tensor(1.0 / (net.tau_mem * ms), dtype=F64),
        v_leak=net.v_leak + b,  # norse has no bias: it is a shift of the leak potential
        v_th=torch.tensor(net.v_th, dtype=F64),
        v_reset=torch.tensor(net.v_reset, dtype=F64),
        method="super",
        alpha=torch.tensor(100.0, dtype=F64),
    )


@pytest.mark.parametrize("oracle,dt", [("lif_step", 1.0), ("lif_step", 0.5), ("LIFRecurrentCell", 1.0)])
def test_euler_equals_norse(oracle, dt):
    from norse.torch import LIFRecurrentCell
    from norse.torch.functional.lif import LIFState as NorseState
    from norse.torch.functional.lif import lif_step

    rng = np.random.default_rng(2)
    n_in, n, B, T = 20, 50, 2, 1000
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=3, dynamics="euler", reset="zero", dt=dt,
                      tau_syn=5.0, tau_mem=20.0, v_th=1.0, v_leak=0.1, v_reset=-0.2)
    params = net.init_params(seed=0, dtype=F64)
    params["W_in"], params["W_rec"] = random_network(rng, n_in, n, net.v_th / net.gain(), 2.0, 1.5, 3.0)
    params["b"] = torch.tensor(rng.normal(0.0, 0.1, n))
    xs = torch.tensor((rng.random((T, B, n_in)) < 0.05).astype(float))
    p = norse_parameters(net, params["b"])
    if oracle == "LIFRecurrentCell":
        cell = LIFRecurrentCell(n_in, n, p=p, input_weights=params["W_in"].clone(),
                                recurrent_weights=params["W_rec"].clone(), autapses=True, dt=dt * 1e-3)
        step = lambda x, s: cell(x, s)  # noqa: E731
    else:
        step = lambda x, s: lif_step(x, s, params["W_in"], params["W_rec"], p, dt=dt * 1e-3)  # noqa: E731
    zero = torch.zeros(B, n, dtype=F64)
    s = NorseState(z=zero, v=zero + net.v_leak, i=zero)  # norse's rest, as ours: v = v_leak
    zs, vs, is_ = [], [], []
    with torch.no_grad():
        for x in xs:
            _, s = step(x, s)
            zs.append(s.z)
            vs.append(s.v)
            is_.append(s.i)
    tr = run(net, params, xs)
    z_ref = torch.stack(zs)
    assert 0.02 < float(z_ref.mean()) < 0.3, f"rate {float(z_ref.mean())} per step"
    assert bool((z_ref.sum(0) > 0).float().mean() > 0.8)  # most neurons fire
    assert torch.equal(tr.z, z_ref)
    torch.testing.assert_close(tr.v, torch.stack(vs), rtol=0, atol=1e-10)
    torch.testing.assert_close(tr.i, torch.stack(is_), rtol=0, atol=1e-10)


def test_euler_surrogate_gradient_equals_norse():
    """BPTT through both: norse's SuperSpike 1/(1+|v-v_th|)^2 is our fast sigmoid with width 1/v_th,
    scale v_th; norse detaches the spike in the reset (our detach_reset=True)."""
    from norse.torch.functional.lif import LIFState as NorseState
    from norse.torch.functional.lif import lif_step

    rng = np.random.default_rng(4)
    n_in, n, B, T, v_th = 10, 20, 2, 200, 0.8
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=1, dynamics="euler", reset="zero", v_th=v_th,
                      surrogate="fast-sigmoid", surrogate_width=1 / v_th, surrogate_scale=v_th, detach_reset=True,
                      bias_mean=0.0, bias_std=0.0)  # b = 0: norse's parameters below have no bias
    W_in, W_rec = random_network(rng, n_in, n, net.v_th / net.gain(), 2.0, 1.5, 3.0)
    xs = torch.tensor((rng.random((T, B, n_in)) < 0.05).astype(float))
    cz, cv = torch.tensor(rng.normal(size=(T, B, n))), torch.tensor(rng.normal(size=(T, B, n)))

    def ours(W_in, W_rec):
        params = {**net.init_params(dtype=F64), "W_in": W_in, "W_rec": W_rec}
        state, loss = net.init_state(params, B), 0.0
        for t, x in enumerate(xs):
            state, _ = net.step(params, state, x)
            loss = loss + (cz[t] * state.z).sum() + (cv[t] * state.v).sum()
        return loss, state.z.new_tensor(0)

    def theirs(W_in, W_rec):
        p = norse_parameters(net, torch.zeros(n, dtype=F64))
        zero = torch.zeros(B, n, dtype=F64)
        s, loss, count = NorseState(z=zero, v=zero, i=zero), 0.0, 0.0
        for t, x in enumerate(xs):
            z, s = lif_step(x, s, W_in, W_rec, p, dt=net.dt * 1e-3)
            loss = loss + (cz[t] * z).sum() + (cv[t] * s.v).sum()
            count = count + z.detach().sum()
        return loss, count

    grads = []
    for f in (ours, theirs):
        a, b = W_in.clone().requires_grad_(), W_rec.clone().requires_grad_()
        loss, count = f(a, b)
        grads.append((loss.detach(), *torch.autograd.grad(loss, (a, b)), count))
    (l1, gi1, gr1, _), (l2, gi2, gr2, count) = grads
    assert float(count) / (T * B * n) > 0.02  # the network spiked
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(gi1, gi2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gr1, gr2, rtol=1e-9, atol=1e-9)
    assert float(gr1.abs().max()) > 1e-3


# -- lava dynamics: Lava's floating-point LIF process model ------------------------------------------------

def lava_lif(W_in, W_rec, bias, xs, du, dv, vth):
    """numpy transcription of lava.proc.lif.models.PyLifModelFloat (a Dense in front, recurrence via s)."""
    B, n = xs.shape[1], W_in.shape[0]
    u, v, s = np.zeros((B, n)), np.zeros((B, n)), np.zeros((B, n))
    ss, vv = [], []
    for x in xs:
        a_in = x @ W_in.T + s @ W_rec.T
        u = u * (1 - du) + a_in
        v = v * (1 - dv) + u + bias
        s = (v > vth).astype(float)
        v = np.where(s > 0, 0.0, v)
        ss.append(s)
        vv.append(v)
    return np.stack(ss), np.stack(vv)


def test_lava_equals_lava_equations():
    rng = np.random.default_rng(3)
    n_in, n, B, T = 20, 50, 2, 1000
    tau_syn, tau_mem, dt = 4.0, 10.0, 1.0
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=1, dynamics="lava", reset="zero",
                      tau_syn=tau_syn, tau_mem=tau_mem, dt=dt, v_th=1.0)
    params = net.init_params(seed=0, dtype=F64)
    params["W_in"], params["W_rec"] = random_network(rng, n_in, n, net.v_th / net.gain(), 1.5, 1.5, 3.0)
    params["b"] = torch.tensor(rng.normal(0.0, 0.002, n))
    xs = (rng.random((T, B, n_in)) < 0.05).astype(float)
    du, dv = 1 - math.exp(-dt / tau_syn), 1 - math.exp(-dt / tau_mem)
    s_ref, v_ref = lava_lif(params["W_in"].numpy(), params["W_rec"].numpy(), params["b"].numpy(), xs, du, dv, 1.0)
    tr = run(net, params, torch.tensor(xs))
    assert 0.02 < s_ref.mean() < 0.3
    np.testing.assert_array_equal(tr.z.numpy(), s_ref)
    np.testing.assert_allclose(tr.v.numpy(), v_ref, rtol=0, atol=1e-10)


def test_readout_is_the_e_prop_leaky_integrator_of_the_spikes():
    """y_t = kappa y_{t-1} + W_out z_t + b_out with kappa = exp(-dt / tau_out) (e-prop's readout)."""
    rng = np.random.default_rng(5)
    net = models.make("lif", n_in=4, n_hidden=10, n_out=3, tau_out=7.0, dt=0.5)
    params = net.init_params(seed=0, dtype=F64)
    params["W_in"] = params["W_in"].abs() * 5
    params["b_out"] = torch.tensor(rng.normal(size=3))
    xs = torch.tensor((rng.random((200, 2, 4)) < 0.3).astype(float))
    tr = run(net, params, xs)
    z = tr.z.numpy()
    assert z.mean() > 0.02
    kappa, y, ys = math.exp(-0.5 / 7.0), np.zeros((2, 3)), []
    for t in range(len(z)):
        y = kappa * y + z[t] @ params["W_out"].numpy().T + params["b_out"].numpy()
        ys.append(y)
    np.testing.assert_allclose(tr.y.numpy(), np.stack(ys), rtol=0, atol=1e-12)


# -- hyper-parameters ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,shown", [
    ({"tau_mem": -1}, "tau_mem=-1"), ({"tau_syn": 0.0}, "tau_syn=0.0"), ({"dt": float("nan")}, "dt=nan"),
    ({"v_th": 0}, "v_th=0"), ({"dynamics": "foo"}, "dynamics='foo'"), ({"reset": "x"}, "reset='x'"),
    ({"refractory": -1}, "refractory=-1"), ({"refractory": 1.5}, "refractory=1.5"),
    ({"surrogate": "relu"}, "surrogate='relu'"), ({"surrogate_width": -2.0}, "surrogate_width=-2.0"),
    ({"n_hidden": 0}, "n_hidden=0"), ({"dynamics": "euler", "dt": 10.0, "tau_syn": 5.0}, "dt=10.0"),
    ({"v_leak": float("nan")}, "v_leak=nan"), ({"v_reset": "low"}, "v_reset='low'"),
])
def test_invalid_hyper_parameters_raise_naming_the_value(kw, shown):
    base = {"n_in": 2, "n_hidden": 3, "n_out": 1}
    with pytest.raises(ValueError, match=__import__("re").escape(shown)):
        models.make("lif", **{**base, **kw})


def test_invalid_choices_list_the_valid_ones():
    with pytest.raises(ValueError, match="'exact'.*'euler'.*'lava'"):
        models.make("lif", n_in=1, n_hidden=1, n_out=1, dynamics="rk4")
    with pytest.raises(ValueError, match="'subtract'.*'zero'"):
        models.make("lif", n_in=1, n_hidden=1, n_out=1, reset="none")
