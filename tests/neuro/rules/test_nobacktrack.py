"""NoBackTrack and its Kalman-like variant (neuro/rules/nobacktrack.py, nobacktrack_kalman.py): oracle tests
beyond the rule contract and the unbiasedness oracle (tests/neuro/rules/test_unbiased.py).

* One step of ``nobacktrack`` equals the rank-one-trick equations computed by hand from full Jacobians
  (the same random draws).
* The row-norm probes are unbiased: the mean of ``(J_theta z)_i^2`` is ``||partial f_i/partial theta||^2``
  (in the ``P_theta`` metric too).
* Per-unit factors: a state unit that does not depend on the parameters (LIF's refractory counter) gets no
  noise in ``v``, where UORO puts some.
* Kalman-like variant: its direction is ``g~ / (J_theta + damping)`` with ``g~`` the unbiased estimate;
  the Fisher samples have the Fisher covariance; the filter's diagonals start at the exact Fisher
  diagonals; a masked step leaves the filter alone; the direction is equivariant under a diagonal
  reparametrisation of the parameters, where the plain estimate is not.
* Both: a state saved mid-sequence with ``neuro.io.save_checkpoint``, loaded back and continued, gives the
  estimates and the state of the uninterrupted run to the last bit.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.func import jacrev, vmap

import models
from models.rate import RateRNN
from neuro import rules
from neuro.rules._common import random_signs
from neuro.rules._onestep import flat_step
from neuro.rules.nobacktrack import propagate
from neuro.rules.nobacktrack_kalman import fisher_sample

from _helpers import assert_resumes_exactly

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

F64 = torch.float64


def _case(model: str = "rate", n_hidden: int = 4, T: int = 8, batch: int = 3, net=None, **opts):
    if net is None:
        if model == "lif":
            opts = dict(input_scale=8.0, tau_mem=5.0, tau_syn=2.0) | opts
        net = models.make(model, n_in=2, n_hidden=n_hidden, n_out=2, **opts)
    params = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(11)
    if net.spiking:
        xs = (torch.rand(T, batch, 2, generator=g) < 0.5).to(F64)
    else:
        xs = torch.randn(T, batch, 2, generator=g, dtype=F64)
    ys = torch.randn(T, batch, 2, generator=g, dtype=F64)
    return net, params, xs, ys, torch.ones(T, batch, dtype=torch.bool)


def _run(rule, params, xs, ys, mask, steps: int, seed: int = 0, state=None):
    state = rule.init(params, xs.shape[1], seed) if state is None else state
    outs = []
    for t in range(steps):
        outs.append(rule.step(params, state, xs[t], ys[t], mask[t]))
        state = outs[-1].state
    return state, outs


def _flat(g, keys):
    return torch.cat([g[k].reshape(-1) for k in keys])


# -- nobacktrack ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["rate", "lif"])
def test_one_step_is_the_rank_one_trick(model):
    net, params, xs, ys, mask = _case(model)
    rule = rules.make("nobacktrack", net)
    state, _ = _run(rule, params, xs, ys, mask, 4)
    gen = torch.Generator()
    gen.set_state(state.gen.get_state())

    fs = flat_step(net, "mse", params)
    theta, s = fs.flat_params(params), fs.flat_state(state.net)
    x, y, m = xs[4], ys[4], mask[4]
    B, S = s.shape
    _, dl_ds, dl_dtheta, _, _ = fs.loss_grads(theta, s, x, y, m)
    _, J, Jt = fs.jacobians(theta, s, x)  # full Jacobians [B, S, S], [B, S, P]
    v, w = state.v, state.w
    g = ((dl_ds * v).sum(1)[:, None] * w + dl_dtheta).mean(0)
    z = random_signs(gen, (B, fs.n_params), s)  # the row-norm probes, then the signs
    nu = random_signs(gen, (B, S), s)
    gamma_t = max(1 / 5, rule.gamma)
    q = state.q + gamma_t * (torch.einsum("bip,bp->bi", Jt, z) ** 2 - state.q)
    Jv = torch.einsum("bij,bj->bi", J, v)
    eps = rule.eps
    rho0 = torch.sqrt(w.norm(dim=1, keepdim=True) / (Jv.norm(dim=1, keepdim=True) + eps)) + eps
    rho = torch.sqrt(q.sqrt() / (1 + eps)) + eps
    v_next = rho0 * Jv + rho * nu
    w_next = w / rho0 + torch.einsum("bi,bip->bp", nu / rho, Jt)

    out = rule.step(params, state, x, y, m)
    torch.testing.assert_close(_flat(out.grad, fs.keys), g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.state.q, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.state.v, v_next, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.state.w, w_next, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("metric", [False, True])
def test_row_norm_probes_are_unbiased(metric):
    N = 40000
    net, params, xs, ys, _ = _case("rate", batch=1)
    fs = flat_step(net, "mse", params)
    theta = fs.flat_params(params)
    s = fs.flat_state(net.init_state(params, 1)) + 0.3  # some state
    _, _, Jt = fs.jacobians(theta, s, xs[0])
    P_theta = torch.rand(1, fs.n_params, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.1
    P_theta = P_theta if metric else None
    exact = (Jt[0] ** 2 * (1 if P_theta is None else P_theta)).sum(1)  # sum_k P_k (partial f_i/partial theta_k)^2
    zeros_s, zeros_p = torch.zeros(N, fs.n_state, dtype=F64), torch.zeros(N, fs.n_params, dtype=F64)
    _, _, q = propagate(fs, theta, s.expand(N, -1), xs[0].expand(N, -1), zeros_s, zeros_p, zeros_s,
                        torch.Generator().manual_seed(2), 1.0, 1e-7,
                        P_theta=None if P_theta is None else P_theta.expand(N, -1))
    se = q.std(0) / math.sqrt(N)
    assert bool(((q.mean(0) - exact).abs() <= 4 * se + 1e-12).all()), f"{q.mean(0)} vs {exact} (SE {se})"


def test_a_unit_without_parameter_dependence_gets_no_noise():
    """LIF's refractory counter ``r`` does not depend on theta: NoBackTrack's rho_i = eps there, UORO's rho_1 is not."""
    net, params, xs, ys, mask = _case("lif")
    fs = flat_step(net, "mse", params)
    r = fs.state_slices()["r"]
    nbt, _ = _run(rules.make("nobacktrack", net), params, xs, ys, mask, 6)
    uoro, _ = _run(rules.make("uoro", net), params, xs, ys, mask, 6)
    assert float(nbt.v[:, r].abs().max()) < 1e-6 * float(nbt.v.abs().max())
    # UORO's rho_1 nu reaches every unit: in each sample the counter's entries carry a fair share of s~
    assert bool((uoro.s_tilde[:, r].norm(dim=1) > 1e-2 * uoro.s_tilde.norm(dim=1)).all())


def test_options_are_checked():
    net = models.make("rate", n_in=1, n_hidden=2, n_out=1)
    for name in ("nobacktrack", "nobacktrack-kalman"):
        for bad in (0, 1.5, float("nan")):
            with pytest.raises(ValueError, match="gamma="):
                rules.make(name, net, gamma=bad)
        with pytest.raises(ValueError, match="eps="):
            rules.make(name, net, eps=-1.0)
    with pytest.raises(ValueError, match="damping="):
        rules.make("nobacktrack-kalman", net, damping=0.0)
    with pytest.raises(ValueError, match="floor="):
        rules.make("nobacktrack-kalman", net, floor=-0.1)
    with pytest.raises(ValueError, match="precondition="):
        rules.make("nobacktrack-kalman", net, precondition=1)


# -- nobacktrack-kalman -----------------------------------------------------------------------------------------
def test_direction_is_the_estimate_preconditioned_by_the_filter():
    net, params, xs, ys, mask = _case("rate", batch=1)
    rule = rules.make("nobacktrack-kalman", net)
    kal, kal_outs = _run(rule, params, xs, ys, mask, 6, seed=4)
    plain, plain_outs = _run(rules.make("nobacktrack-kalman", net, precondition=False), params, xs, ys, mask, 6, seed=4)
    fs = flat_step(net, "mse", params)
    assert torch.equal(kal.J_theta, plain.J_theta) and torch.equal(kal.v, plain.v)  # the same noise and filter
    d, g = _flat(kal_outs[-1].grad, fs.keys), _flat(plain_outs[-1].grad, fs.keys)
    torch.testing.assert_close(d, g / (kal.J_theta[0] + rule.damping), rtol=1e-12, atol=1e-15)
    assert not torch.allclose(d, g)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_fisher_samples_have_the_fisher_covariance(loss):
    N = 200000
    y_hat = torch.tensor([[0.3, -1.0, 0.5]], dtype=F64).expand(N, -1)
    u = fisher_sample(loss, y_hat, torch.Generator().manual_seed(0))
    if loss == "mse":
        F = torch.eye(3, dtype=F64)
    else:
        p = torch.softmax(y_hat[0], -1)
        F = torch.diag(p) - torch.outer(p, p)
    cov = u.T @ u / N
    torch.testing.assert_close(cov, F, atol=0.01, rtol=0)


def test_the_filter_starts_at_the_exact_fisher_diagonals():
    """At the first step G_0 = 0, so J_h and J_theta are the running means of exactly sampled diagonals of
    (dy/ds)^T (dy/ds) and (dy/dtheta)^T (dy/dtheta) (mse: F_y = I)."""
    N = 40000
    net, params, xs, ys, mask = _case("rate", batch=1)
    fs = flat_step(net, "mse", params)
    theta = fs.flat_params(params)
    s = fs.flat_state(net.init_state(params, 1))
    Jy_theta, Jy_s = vmap(jacrev(lambda th, s1, x1: fs.step1(th, s1, x1)[1], argnums=(0, 1)), in_dims=(None, 0, 0))(
        theta, s, xs[0])
    state, _ = _run(rules.make("nobacktrack-kalman", net), params, xs[:1].expand(1, N, 2), ys[:1].expand(1, N, 2),
                    mask[:1].expand(1, N), 1)
    for J, exact in ((state.J_h, (Jy_s[0] ** 2).sum(0)), (state.J_theta, (Jy_theta[0] ** 2).sum(0))):
        se = J.std(0) / math.sqrt(N)
        assert bool(((J.mean(0) - exact).abs() <= 4 * se + 1e-12).all()), f"{J.mean(0)} vs {exact}"


def test_a_masked_step_leaves_the_filter_alone():
    net, params, xs, ys, mask = _case("rate", batch=2)
    rule = rules.make("nobacktrack-kalman", net)
    state, _ = _run(rule, params, xs, ys, mask, 3)
    out = rule.step(params, state, xs[3], ys[3], torch.tensor([False, True]))
    assert torch.equal(out.state.J_theta[0], state.J_theta[0]) and torch.equal(out.state.J_h[0], state.J_h[0])
    assert not torch.equal(out.state.J_theta[1], state.J_theta[1])
    assert out.state.n.tolist() == [3.0, 4.0]


@dataclasses.dataclass(frozen=True)
class _ScaledRate(RateRNN):
    """The rate RNN reparametrised: its parameter k is theta_k / c_k (the network uses c_k times it)."""

    scales: tuple[tuple[str, float], ...] = ()

    def _effective(self, params):
        c = dict(self.scales)
        return {k: v * c[k] for k, v in params.items()}

    def current(self, params, state, x):
        return super().current(self._effective(params), state, x)

    def readout(self, params, state, z):
        return super().readout(self._effective(params), state, z)


def test_the_kalman_direction_is_equivariant_under_a_diagonal_reparametrisation():
    """theta' = theta / c: the gradient becomes c g, the Fisher c^2 J; the filter's direction must become
    d / c (a step in the same network), given equivalent priors. The plain estimate becomes c g instead."""
    scales = {"W_in": 10.0, "W_rec": 0.1, "b": 3.0, "W_out": 0.5, "b_out": 20.0}
    net, params, xs, ys, mask = _case("rate")
    net2 = _ScaledRate(n_in=2, n_hidden=4, n_out=2, scales=tuple(sorted(scales.items())))
    params2 = {k: v / scales[k] for k, v in params.items()}
    fs = flat_step(net, "mse", params)
    c = torch.cat([torch.full((params[k].numel(),), scales[k], dtype=F64) for k in fs.keys])

    def run(net_, params_, c_, **kw):
        rule = rules.make("nobacktrack-kalman", net_, damping=1e-12, **kw)
        state = rule.init(params_, xs.shape[1], 0)
        prior = torch.rand(state.J_theta.shape, generator=torch.Generator().manual_seed(3), dtype=F64) + 0.5
        state = state._replace(J_theta=prior * c_ ** 2, J_h=torch.ones_like(state.J_h), n=torch.ones_like(state.n))
        _, outs = _run(rule, params_, xs, ys, mask, xs.shape[0], state=state)
        return torch.stack([_flat(o.grad, fs.keys) for o in outs])

    d, d2 = run(net, params, torch.ones_like(c)), run(net2, params2, c)
    assert float(d.abs().max()) > 0
    torch.testing.assert_close(d2, d / c, rtol=1e-7, atol=1e-12)
    g, g2 = run(net, params, torch.ones_like(c), precondition=False), run(net2, params2, c, precondition=False)
    torch.testing.assert_close(g2, g * c, rtol=1e-7, atol=1e-12)  # the gradient is covariant, not a step


def test_cross_entropy_runs():
    net, params, xs, _, mask = _case("rate", batch=2)
    ys = torch.nn.functional.one_hot(torch.randint(0, 2, xs.shape[:2], generator=torch.Generator().manual_seed(0)), 2)
    state, outs = _run(rules.make("nobacktrack-kalman", net, loss="ce"), params, xs, ys.to(F64), mask, 8)
    assert all(torch.isfinite(v).all() for o in outs for v in o.grad.values())
    assert bool((state.J_theta > 0).any())


@pytest.mark.parametrize("name", ["nobacktrack", "nobacktrack-kalman"])
@pytest.mark.parametrize("model", ["rate", "lif"])
def test_a_checkpoint_resumes_exactly(name, model, tmp_path):
    net, params, xs, ys, mask = _case(model, T=7, batch=2)
    mask[2, 0] = False
    assert_resumes_exactly(rules.make(name, net), params, xs, ys, mask, 3, tmp_path / "ckpt.pt")
