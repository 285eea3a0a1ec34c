"""ALIF against the e-prop paper's LSNN equations (Bellec et al. 2020, Methods), written out in numpy.

    A_t = v_th + beta a_{t-1}          (threshold)          z_t = H(v~_t - A_t)
    a_t = rho a_{t-1} + z_t,  rho = exp(-dt / tau_adapt)       reset by subtraction removes v_th
    psi_t = gamma / v_th max(0, 1 - |v~_t - A_t| / v_th)        (pseudo-derivative)
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch.func import jacrev

import models

F64 = torch.float64


def reference(W_in, W_rec, b, xs, *, dt, tau_syn, tau_mem, tau_adapt, v_th, beta_a, dynamics, reset,
              v_leak=0.0, v_reset=0.0):
    """numpy loop of the LSNN with the three sub-threshold dynamics of models/lif.py's docstring."""
    alpha, beta, rho = math.exp(-dt / tau_mem), math.exp(-dt / tau_syn), math.exp(-dt / tau_adapt)
    kappa = tau_syn * (beta - alpha) / (tau_syn - tau_mem)
    B, n = xs.shape[1], W_in.shape[0]
    v = np.full((B, n), 0.0 if dynamics == "lava" else v_leak)
    i, z, a = np.zeros((B, n)), np.zeros((B, n)), np.zeros((B, n))
    out = {"z": [], "v": [], "a": []}
    for x in xs:
        I = x @ W_in.T + z @ W_rec.T
        if dynamics == "exact":
            j = i + I
            v = v_leak + b + (v - v_leak - b) * alpha + kappa * j
            i = beta * j
        elif dynamics == "euler":
            j = i + I
            v = v + dt / tau_mem * (v_leak + b - v + j)
            i = j * (1 - dt / tau_syn)
        else:
            i = i * beta + I
            v = v * alpha + i + b
        A = v_th + beta_a * a
        z = (v > A).astype(float)
        v = v - z * v_th if reset == "subtract" else np.where(z > 0, v_reset, v)
        a = rho * a + z
        for k, val in (("z", z), ("v", v), ("a", a)):
            out[k].append(val)
    return {k: np.stack(val) for k, val in out.items()}


def run(net, params, xs):
    state = net.init_state(params, xs.shape[1])
    out = []
    with torch.no_grad():
        for x in xs:
            state, _ = net.step(params, state, x)
            out.append(state)
    return type(state)(*(torch.stack(f) for f in zip(*out)))


HP = {"exact": dict(dt=1.0, tau_syn=5.0, tau_mem=20.0), "euler": dict(dt=0.5, tau_syn=5.0, tau_mem=20.0),
      "lava": dict(dt=1.0, tau_syn=4.0, tau_mem=10.0)}


def setup(dynamics, reset, beta_a, seed=0, n_in=10, n=30, B=2, T=600):
    rng = np.random.default_rng(seed)
    kw = dict(HP[dynamics], tau_adapt=100.0, v_th=1.0, beta_a=beta_a, dynamics=dynamics, reset=reset,
              v_leak=0.05 if dynamics != "lava" else 0.0, v_reset=-0.1 if reset == "zero" else 0.0)
    net = models.make("alif", n_in=n_in, n_hidden=n, n_out=2, **kw)
    unit = net.v_th / net.gain()
    params = net.init_params(seed=seed, dtype=F64)
    params["W_in"] = torch.tensor(unit * rng.normal(2.0, 1.0, (n, n_in)))
    params["W_rec"] = torch.tensor(unit * rng.normal(0.0, 2.0 / math.sqrt(n), (n, n)))
    params["b"] = torch.tensor(unit * rng.normal(0.0, 0.1, n))
    xs = (rng.random((T, B, n_in)) < 0.1).astype(float)
    return net, kw, params, xs


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_alif_equals_the_lsnn_equations(dynamics, reset):
    net, kw, params, xs = setup(dynamics, reset, beta_a=0.5)
    p = {k: v.numpy() for k, v in params.items()}
    hp = {k: kw[k] for k in ("dt", "tau_syn", "tau_mem", "tau_adapt", "v_th", "beta_a", "dynamics", "reset",
                             "v_leak", "v_reset")}
    ref = reference(p["W_in"], p["W_rec"], p["b"], xs, **hp)
    tr = run(net, params, torch.tensor(xs))
    assert 0.01 < ref["z"].mean() < 0.3
    np.testing.assert_array_equal(tr.z.numpy(), ref["z"])
    np.testing.assert_allclose(tr.v.numpy(), ref["v"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(tr.a.numpy(), ref["a"], rtol=0, atol=1e-10)
    # the adaptation is doing something: without it the same network fires more
    no_adapt = reference(p["W_in"], p["W_rec"], p["b"], xs, **{**hp, "beta_a": 0.0})
    assert no_adapt["z"].sum() > 1.2 * ref["z"].sum()


@pytest.mark.parametrize("dynamics,reset,refractory", [("exact", "subtract", 0), ("exact", "zero", 3),
                                                       ("euler", "zero", 0), ("lava", "subtract", 2)])
def test_alif_without_adaptation_is_lif(dynamics, reset, refractory):
    net, kw, params, xs = setup(dynamics, reset, beta_a=0.0, T=300)
    kw = {k: v for k, v in kw.items() if k not in ("tau_adapt", "beta_a")}
    lif = models.make("lif", n_in=net.n_in, n_hidden=net.n_hidden, n_out=net.n_out, refractory=refractory, **kw)
    alif = models.make("alif", n_in=net.n_in, n_hidden=net.n_hidden, n_out=net.n_out, refractory=refractory,
                       beta_a=0.0, **kw)
    a, l = run(alif, params, torch.tensor(xs)), run(lif, params, torch.tensor(xs))
    assert l.z.mean() > 0.02
    for f in ("z", "v", "i", "r", "y"):
        assert torch.equal(getattr(a, f), getattr(l, f)), f


@pytest.mark.parametrize("surrogate", ["triangle", "fast-sigmoid"])
@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_pseudo_derivative_is_e_props_psi_at_the_adaptive_threshold(surrogate, dynamics):
    """d z_t / d I_t = psi(v~_t, A_t) d v~_t / d I_t, psi normalised by the base v_th (not by A_t)."""
    gen = torch.Generator().manual_seed(0)
    n, v_th, gamma, width = 40, 0.8, 0.3, 1.0
    net = models.make("alif", n_in=1, n_hidden=n, n_out=1, v_th=v_th, beta_a=1.5, dynamics=dynamics,
                      surrogate=surrogate, surrogate_scale=gamma, surrogate_width=width, **HP[dynamics])
    params = net.init_params(seed=0, dtype=F64)
    params["b"] = torch.rand(n, generator=gen, dtype=F64) * 0.1
    s0 = net.init_state(params, 1)
    state = s0._replace(v=torch.rand(1, n, generator=gen, dtype=F64) * 2.0,
                        i=torch.rand(1, n, generator=gen, dtype=F64) * 0.5,
                        a=torch.rand(1, n, generator=gen, dtype=F64))
    I = torch.randn(1, n, generator=gen, dtype=F64) * 0.3
    J = jacrev(lambda I: net.neuron(params, state, I)[1])(I)[0, :, 0, :]
    # v~ and dv~/dI of each dynamics, from the docstring's formulas
    v, i, b = state.v[0], state.i[0], params["b"]
    dt, tm, ts = net.dt, net.tau_mem, net.tau_syn
    alpha, beta = math.exp(-dt / tm), math.exp(-dt / ts)
    if dynamics == "exact":
        kappa = ts * (beta - alpha) / (ts - tm)
        v_tilde, dv_dI = b + (v - b) * alpha + kappa * (i + I[0]), kappa
    elif dynamics == "euler":
        v_tilde, dv_dI = v + dt / tm * (b - v + i + I[0]), dt / tm
    else:
        v_tilde, dv_dI = v * alpha + i * beta + I[0] + b, 1.0
    A = v_th + net.beta_a * state.a[0]
    x = (v_tilde - A).abs() / (v_th * width)
    psi = gamma / v_th * (torch.clamp(1 - x, min=0) if surrogate == "triangle" else 1 / (1 + x) ** 2)
    assert int((psi > 0).sum()) > n // 4 and int(((v_tilde - A).abs() > v_th).sum()) > 0  # both regimes
    torch.testing.assert_close(J, torch.diag(psi * dv_dI), rtol=1e-12, atol=1e-15)
    # and the forward value is the spike against the adaptive threshold
    _, z = net.neuron(params, state, I)
    assert torch.equal(z[0], (v_tilde > A).to(F64))


def test_rho_is_the_adaptation_decay():
    net = models.make("alif", n_in=1, n_hidden=1, n_out=1, dt=0.5, tau_adapt=300.0)
    assert net.rho == pytest.approx(math.exp(-0.5 / 300.0), rel=1e-15)
    assert "a" in net.observe(net.init_state(net.init_params(), 2))


@pytest.mark.parametrize("kw,shown", [({"tau_adapt": 0.0}, "tau_adapt=0.0"), ({"tau_adapt": -5}, "tau_adapt=-5"),
                                      ({"beta_a": -1.0}, "beta_a=-1.0"), ({"tau_mem": -1}, "tau_mem=-1"),
                                      ({"dynamics": "foo"}, "dynamics='foo'")])
def test_invalid_hyper_parameters_raise_naming_the_value(kw, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        models.make("alif", n_in=1, n_hidden=2, n_out=1, **kw)
