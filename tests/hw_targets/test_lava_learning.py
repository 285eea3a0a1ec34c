"""On-chip learning (hw_targets.lava.learning): the three-factor rule as Loihi3FLearningRule on Lava."""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from hw_targets.lava import _compat
from hw_targets.lava.learning import export_learning, literal, loihi_form, reference, third_factor_error, train_on_chip
from neuro.gradients import grad_estimate

pytestmark = pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")

KAPPA_EXACT = -1.0 / math.log(1.0 - 2.0 ** -4)  # tau_out whose 1 - kappa_out is 2^-4, exact on the chip


def _net(**kw):
    opts = dict(n_in=5, n_hidden=4, n_out=2, dynamics="lava", reset="zero", input_scale=3.0, tau_mem=20.0,
                tau_syn=5.0)
    opts.update(kw)
    return models.make("lif", **opts)


def _eprop(net, **kw):
    a, b = net.alpha, net.beta
    return neuro.rules.make("three-factor", net, pre_decay=(a, b), pre_impulse=(a / (a - b), -b / (a - b)),
                            feedback="readout", **kw)


def _inputs(T, n_in, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, n_in, generator=g) < p).double(), g


def test_literal_rounds_to_loihi_constants():
    assert literal(1.0) == (1, 0) and literal(0.0625) == (1, -4) and literal(1.5) == (3, -1)
    assert literal(0.01) == (1, -7)  # the smallest magnitude Loihi's products hold: 2^-7
    m, e = literal(1.0 - math.exp(-1.0 / 20.0))  # 0.04877 -> 3 * 2^-6 = 0.046875
    assert (m, e) == (3, -6)
    for c in (0.3, -0.7, 0.049, 2.5):  # the nearest of all m 2^e, |m| <= 8, -7 <= e <= 8
        m, e = literal(c)
        best = min(abs(mm * 2.0 ** ee - c) for mm in range(-8, 8) if mm for ee in range(-7, 9))
        assert abs(m * 2.0 ** e - c) == best
    form = loihi_form(_eprop(_net(tau_out=20.0)))
    wanted, m, e, used = form.rounding["1 - kappa (readout leak)"]
    assert used == 3 * 2.0 ** -6 and form.kappa == 1.0 - used and "1 - kappa" in form.report()


@pytest.mark.parametrize("case", ["eprop-error", "reward-activity"])
@pytest.mark.slow
def test_lava_run_equals_loihi_equations(case):
    """Oracle: Lava (floating_pt LearningDense + ThreeFactorLIF) = a torch loop of Loihi's float learning
    equations, with weights changing online (large eta) and rounded constants (tau_out=20)."""
    if case == "eprop-error":
        net = _net(tau_out=20.0)
        rule, eta = _eprop(net), 0.1
        xs, g = _inputs(40, 5, 0.3)
        M = torch.randn(40, 4, generator=g, dtype=torch.float64)
    else:
        net = _net(tau_out=20.0, input_scale=4.0)
        rule = neuro.rules.make("three-factor", net, pre_decay=(0.9,), pre_impulse=(1.0,), post="activity",
                                post_decay=0.8, eligibility_decay=0.5, third="reward")
        eta = 0.05
        xs, g = _inputs(40, 5, 0.4, seed=1)
        M = torch.randn(40, generator=g, dtype=torch.float64)  # one global value per step
    params = net.init_params(seed=1, dtype=torch.float64)
    tr, new = export_learning(net, params, rule, eta=eta).run(xs, M)
    spikes, ref = reference(net, params, loihi_form(rule), xs, M, eta)
    assert tr.spikes.sum() > 3
    assert torch.equal(tr.spikes[:, 0], spikes)
    for k in ("W_in", "W_rec"):
        assert (new[k] - params[k]).abs().max() > 1e-3  # it learned
        torch.testing.assert_close(new[k], ref[k], rtol=0, atol=1e-12)
        print(f"\n{case} {k}: |dW| max {float((new[k] - params[k]).abs().max()):.3g}, "
              f"Lava - Loihi equations max {float((new[k] - ref[k]).abs().max()):.2e}")
    for k in ("b", "W_out", "b_out"):
        assert torch.equal(new[k], params[k])


@pytest.mark.slow
def test_lava_weight_change_equals_three_factor_rule():
    """Oracle: at a tiny eta the chip's weight change / (-eta) is the torch three-factor (e-prop form) estimate
    of grad_estimate, with the third factor M = eps W_out from the forward pass (feedback='readout')."""
    net = _net(tau_out=KAPPA_EXACT)
    params = net.init_params(seed=1, dtype=torch.float64)
    xs, g = _inputs(40, 5, 0.5)
    ys = torch.randn(40, 1, 2, generator=g, dtype=torch.float64)
    rule = _eprop(net)
    assert loihi_form(rule).rounding["1 - kappa (readout leak)"][0] == pytest.approx(2.0 ** -4, rel=1e-14)
    want = grad_estimate(net, params, rule, xs[:, None], ys)
    tr = neuro.simulate(net, params, xs[:, None])
    assert tr.spikes.sum() >= 2
    M = third_factor_error(net, params, tr, ys)
    eta = 1e-9
    tr_chip, new = export_learning(net, params, rule, eta=eta).run(xs, M)
    assert torch.equal(tr_chip.spikes, tr.spikes)
    for k in ("W_in", "W_rec"):
        got = (params[k] - new[k]) / eta
        assert want[k].abs().max() > 1.0
        err = float((got - want[k]).abs().max() / want[k].abs().max())
        print(f"\n{k}: chip weight change / (-eta) vs three-factor grad_estimate, max relative error {err:.2e}")
        assert err < 1e-4, (k, err)


@pytest.mark.slow
def test_task_improves_under_the_chips_rule():
    """A student LIF net learns a teacher's output (same W_out, fixed input spikes): the loss after 3 trials
    of on-chip e-prop (W_in, W_rec learning in Lava) is well below the initial loss."""
    net = _net(n_in=6, n_hidden=8, n_out=1, input_scale=12.0, tau_out=KAPPA_EXACT)
    params = net.init_params(seed=1, dtype=torch.float64)
    teacher = net.init_params(seed=2, dtype=torch.float64)
    for k in ("W_out", "b_out", "b"):
        teacher[k] = params[k]
    xs, _ = _inputs(60, 6, 0.3)
    ys = neuro.simulate(net, teacher, xs[:, None]).y
    _, losses = train_on_chip(net, params, _eprop(net), xs, ys, trials=3, eta=1e-5)
    print(f"\non-chip three-factor (e-prop form), loss per trial: {[round(x, 3) for x in losses]}")
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_rstdp_lava_run_equals_loihi_equations():
    """Oracle: reward-modulated STDP (Lava's RewardModulatedSTDP form, global reward) in Lava = the torch loop
    of Loihi's float equations; 1/tau_e = 0.05 is rounded to 3*2^-6 on both."""
    from hw_targets.lava.rstdp import rstdp_form

    net = _net(input_scale=10.0)
    params = net.init_params(seed=1, dtype=torch.float64)
    xs, g = _inputs(50, 5, 0.4)
    R = torch.randn(50, generator=g, dtype=torch.float64)
    form = rstdp_form(net, a_plus=0.5, a_minus=0.6, tau_plus=8.0, tau_minus=12.0, tau_e=20.0)
    assert form.rounding["1/tau_e (eligibility decay per step)"][1:] == (3, -6, 3 * 2.0 ** -6)
    tr, new = export_learning(net, params, form, eta=0.1).run(xs, R)
    spikes, ref = reference(net, params, form, xs, R, 0.1)
    assert tr.spikes.sum() >= 5 and torch.equal(tr.spikes[:, 0], spikes)
    for k in ("W_in", "W_rec"):
        assert (new[k] - params[k]).abs().max() > 1e-3
        torch.testing.assert_close(new[k], ref[k], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="tau_e"):
        rstdp_form(net, tau_e=0.0)


@pytest.mark.slow
def test_rstdp_task_improves():
    """Reward-modulated STDP on the chip: reward +1 for each spike of a target neuron, -1 for each spike of the
    others (computed from a Lava forward pass of the current weights); after 3 trials the target's share of
    the spikes has grown from about 0.41 to above 0.9."""
    from hw_targets.lava.network import export
    from hw_targets.lava.rstdp import rstdp_form

    net = _net(n_in=8, n_hidden=4, n_out=1, input_scale=40.0, rec_scale=0.0)
    params = net.init_params(seed=1, dtype=torch.float64)
    xs, _ = _inputs(100, 8, 0.3)
    form = rstdp_form(net, a_plus=1.0, a_minus=1.0, tau_plus=5.0, tau_minus=5.0, tau_e=8.0)
    share = []
    for trial in range(4):
        z = export(net, params).run(xs[:, None]).spikes[:, 0]
        share.append(float(z[:, 1].sum() / z.sum()))
        if trial < 3:
            reward = 2 * z[:, 1] - z.sum(1)  # target neuron 1
            _, params = export_learning(net, params, form, eta=0.005).run(xs, reward)
    print(f"\non-chip R-STDP, the target's share of spikes per trial: {[round(x, 3) for x in share]}")
    assert share[0] < 0.5 and share[-1] > 0.9, share


@pytest.mark.parametrize("name,why", [("bptt", "GRAPH"), ("rtrl", "JACOBIAN"), ("uoro", "JVP"),
                                      ("np", "chip in the loop"), ("eprop", "only 'three-factor'")])
def test_rules_without_a_loihi_form_are_refused(name, why):
    net = _net()
    params = net.init_params(seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match=why):
        export_learning(net, params, name)


def test_bad_input_is_refused():
    net = _net()
    params = net.init_params(seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="decay > 0"):
        export_learning(net, params, neuro.rules.make("three-factor", net))  # pre_decay=(0,): no chip form
    with pytest.raises(ValueError, match="dynamics"):
        exact = models.make("lif", n_in=5, n_hidden=4, n_out=2)
        export_learning(exact, exact.init_params(seed=0), _eprop(exact))
    ln = export_learning(net, params, _eprop(net))
    with pytest.raises(ValueError, match="spike inputs"):
        ln.run(torch.full((10, 5), 0.5, dtype=torch.float64), torch.zeros(10))
    with pytest.raises(ValueError, match="batch"):
        ln.run(torch.zeros(10, 2, 5, dtype=torch.float64), torch.zeros(10))
    with pytest.raises(ValueError, match="third_factor"):
        ln.run(torch.zeros(10, 5, dtype=torch.float64), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="eta"):
        export_learning(net, params, _eprop(net), eta=-1.0)
