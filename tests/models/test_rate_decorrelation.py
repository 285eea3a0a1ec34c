"""The rate network's options of the perturbation paper's network: the decorrelation layer (its update by the
formula and its effect), biases held at zero, Xavier initialisation; and that the training loop applies them."""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
import neuro.rules
import neuro.tasks
from neuro import engine as engines
from neuro.ensemble import Ensemble


def _net(**kw):
    return models.make("rate", n_in=2, n_hidden=3, n_out=1, **kw)


def test_local_estimate_by_hand_on_three_units():
    net = _net(decorrelation=1e-2)
    D = torch.tensor([[1.0, 0.2, 0.0], [0.1, 0.9, -0.3], [0.0, 0.4, 1.1]], dtype=torch.float64)
    xh = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.5, -0.5]], dtype=torch.float64)  # B = 2 rows of xhat
    params = {**net.init_params(0, torch.float64), "D": D}
    # offdiag(xhat^T xhat / B), written entry by entry: c_ij = (sum_b xh[b, i] xh[b, j]) / 2 for i != j
    c = [[0.0 if i == j else (xh[0, i] * xh[0, j] + xh[1, i] * xh[1, j]).item() / 2 for j in range(3)]
         for i in range(3)]
    want = torch.tensor(c, dtype=torch.float64) @ D
    got = net.local_estimate(params, net.State(h=xh))["D"]
    assert torch.allclose(got, want, atol=1e-15)
    assert net.local_params == {"D": 1e-2}


def test_decorrelation_whitens_the_off_diagonal_of_a_linear_layer():
    """Iterating D <- D - eta offdiag(xhat xhat^T / B) D on correlated inputs (xhat = D x, a linear layer) drives
    the off-diagonal second moments of xhat to zero."""
    g = torch.Generator().manual_seed(0)
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1, decorrelation=0.05)
    mix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.5, 0.3, 0.8, 0.0], [-0.4, 0.2, 0.1, 0.9]],
                       dtype=torch.float64)
    params = {**net.init_params(0, torch.float64)}
    D = params["D"]

    def offdiag(D, x):
        c = (x @ D.mT).mT @ (x @ D.mT) / x.shape[0]
        return (c - torch.diag(torch.diagonal(c))).abs().max().item()

    probe = torch.randn(20000, 4, generator=g, dtype=torch.float64) @ mix.mT
    before = offdiag(D, probe)
    for _ in range(3000):
        x = torch.randn(64, 4, generator=g, dtype=torch.float64) @ mix.mT
        D = D - 0.05 * net.local_estimate({**params, "D": D}, net.State(h=x @ D.mT))["D"]
    after = offdiag(D, probe)
    assert before > 0.3 and after < 0.03 * before


def test_the_forward_pass_reads_xhat():
    net = _net(decorrelation=1e-3, bias=False)
    p = net.init_params(1, torch.float64)
    p["D"] = p["D"] + 0.1 * torch.ones(3, 3, dtype=torch.float64)
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    s0 = net.init_state(p)._replace(h=torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64))
    s1, y = net.step(p, s0, x)
    xhat = torch.tanh(x @ p["W_in"].T + s0.h @ p["W_rec"].T) @ p["D"].T
    assert torch.allclose(s1.h, xhat) and torch.allclose(y, xhat @ p["W_out"].T)
    with pytest.raises(ValueError, match="couples its units"):
        net.neuron_derivatives(p, s0, x @ p["W_in"].T)


def test_xavier_init_and_bias_free_params():
    net = models.make("rate", n_in=10, n_hidden=400, n_out=10, init="xavier", bias=False)
    p = net.init_params(0, torch.float64)
    for k, (fi, fo) in {"W_in": (10, 400), "W_rec": (400, 400), "W_out": (400, 10)}.items():
        assert p[k].std().item() == pytest.approx(math.sqrt(2.0 / (fi + fo)), rel=0.05)
    assert net.fixed_params == ("b", "b_out") and not p["b"].any() and not p["b_out"].any()
    assert _net().fixed_params == () and _net().local_params == {}


@pytest.mark.parametrize("bad, match", [(dict(init="he"), "init="), (dict(bias=1), "bias="),
                                        (dict(decorrelation=-1.0), "decorrelation="),
                                        (dict(decorrelation=1e-3, alpha=0.5), "alpha")])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        _net(**bad)


@pytest.mark.parametrize("rule, opts", [("np", {}), ("anp", {}), ("anp-time", {}), ("wp", {"resample": "step"}),
                                        ("bptt", {}), ("tbptt", {"k": 1})])
def test_training_steps_D_by_its_own_rule_and_never_the_fixed_biases(rule, opts):
    """One update of a run: the biases stay exactly 0, D moves by -eta times its own estimate at the step
    (plain SGD, whatever the optimizer; the rule's estimate of D, where it computes one, is not used) and the
    weights by the optimizer."""
    task = neuro.tasks.make("mackey-glass")
    net = models.make("rate", n_in=1, n_hidden=5, n_out=1, decorrelation=0.5, bias=False, init="xavier")
    p0 = net.init_params(3, torch.float64)
    p0["D"] = p0["D"] + 0.05 * torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = neuro.rules.make(rule, net, loss="mse", **opts)
    h = neuro.train(net, r, task, 1, params=p0, dtype="float64", lr=0.1, optimizer="adam", progress=False,
                    log_every=1)
    seq = task.sample(steps=1, batch=1, seed=neuro.train_config.TrainConfig(seed=0).seed_for("task"))
    s1, _ = net.step(p0, net.init_state(p0), seq.xs[0].double())
    want_D = p0["D"] - 0.5 * net.local_estimate(p0, s1)["D"]
    assert torch.allclose(h.params["D"], want_D, atol=1e-14)
    assert not h.params["b"].any() and not h.params["b_out"].any()
    assert not torch.equal(h.params["W_out"], p0["W_out"])


def test_wp_perturbs_only_what_the_loss_trains():
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1, decorrelation=1e-3, bias=False)
    r = neuro.rules.make("wp", net, resample="step")
    p = net.init_params(0, torch.float64)
    xi = r.init(p).xi[0]
    by = dict(zip(p, xi))
    assert not by["D"].any() and not by["b"].any() and not by["b_out"].any()
    assert by["W_rec"].abs().sum() > 0


def test_compiled_engines_and_ensembles_leave_a_decorrelated_network_alone_where_they_cannot_run_it():
    net = _net(decorrelation=1e-3)
    rule = neuro.rules.make("bptt", net, loss="mse")
    assert engines.select(net, rule, "auto", "adam", torch.float32, torch.device("cpu"))[0] == "torch"
    plain = _net()
    assert engines.select(plain, neuro.rules.make("np", plain, loss="mse"), "auto", "sgd", torch.float32,
                          torch.device("cpu"))[0] == "compiled"
    with pytest.raises(ValueError, match="run its seeds one by one"):
        Ensemble(_net(decorrelation=1e-3), 2)


def test_the_layer_steps_every_step_without_extra_optimizer_steps():
    """With T-BPTT (k = 3, an estimate every third step) and an update every step, D moves every step but the
    optimizer steps only when the rule gives an estimate: as many updates as without the layer."""
    task = neuro.tasks.make("mackey-glass")
    counts = {}
    for dec in (0.0, 0.1):
        net = models.make("rate", n_in=1, n_hidden=4, n_out=1, decorrelation=dec)
        h = neuro.train(net, neuro.rules.make("tbptt", net, k=3), task, 9, lr=0.01, progress=False, log_every=9)
        counts[dec] = h.updates
        if dec:
            assert not torch.equal(h.params["D"], net.init_params(0)["D"])
    assert counts[0.0] == counts[0.1] == 3


def test_compiled_refusal_names_the_held_parameters():
    net = _net(decorrelation=1e-3)
    with pytest.raises(ValueError, match=r"learnt by the network's own rule \(D\).*rate np \(sgd\)"):
        engines.select(net, neuro.rules.make("np", net, loss="mse"), "compiled", "adam", torch.float32,
                       torch.device("cpu"))
    net = _net(bias=False)
    with pytest.raises(ValueError, match=r"held fixed \(b, b_out\)"):
        engines.select(net, neuro.rules.make("rflo", net, loss="mse"), "compiled", "adam", torch.float32,
                       torch.device("cpu"))
