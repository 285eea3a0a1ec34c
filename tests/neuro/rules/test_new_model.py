"""A model added later gets every local rule by implementing the cell contract.

Two models are defined here and nowhere else, each implementing only the contract (``current``, ``neuron``,
``readout`` and the facts of ``neuro/contract.py``), without closed-form derivatives, so the rules read
them through the contract's defaults: a leaky softsign rate neuron with a linear readout, and a spiking
neuron with one membrane field, a linear sub-threshold filter, reset by subtraction and a leaky readout.

Oracles, in float64: with ``W_rec = 0`` e-prop and RFLO are exact (the eligibility of a neuron-local
network is the whole gradient), so they equal BPTT on every parameter; with ``W_rec = 0``, no membrane
memory and a memoryless readout, OTTT and SLTT (which drop the temporal paths) equal BPTT too. Every other
LOCAL or LOSS rule runs on the models (estimates with the parameters' keys, finite) or refuses them with a
one-line error that names the model: the set of refusals is fixed below, each with its reason.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

from neuro import rules
from neuro.contract import AbstractNetwork, LinearFilter, Params, state_dtype
from neuro.gradients import grad_estimate
from neuro.rules import Needs
from neuro.surrogate import spike


class ToyRateState(NamedTuple):
    h: Tensor


@dataclasses.dataclass(frozen=True)
class ToyRate(AbstractNetwork):
    """``h_t = lam h_{t-1} + (1 - lam) softsign(W_in x + W_rec h_{t-1} + b)``, ``y_t = W_out h_t + b_out``."""

    lam: float = 0.7
    name = "toy-rate"
    State = ToyRateState
    local_form = True
    bias_in_current = True
    trace_fields = ("h",)

    def param_shapes(self):
        n = self.n_hidden
        return {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed=0, dtype=torch.float32, device=None) -> Params:
        g = self._generator(seed)
        return {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) * 0.5 for k, s in self.param_shapes().items()}

    def init_state(self, params, batch=1):
        dtype, device = state_dtype(params)
        return ToyRateState(torch.zeros(batch, self.n_hidden, dtype=dtype, device=device))

    def current(self, params, state, x):
        return x @ params["W_in"].T + state.h @ params["W_rec"].T + params["b"]

    def neuron(self, params, state, i):
        h = self.lam * state.h + (1 - self.lam) * i / (1 + i.abs())
        return ToyRateState(h), h

    def readout(self, params, state, z):
        return state, z @ params["W_out"].T + params["b_out"]

    def presynaptic(self, state):
        return state.h

    @property
    def readout_decay(self):
        return 0.0


class ToySpikeState(NamedTuple):
    v: Tensor
    z: Tensor
    y: Tensor


@dataclasses.dataclass(frozen=True)
class ToySpiking(AbstractNetwork):
    """``u_t = lam v_{t-1} + I_t + b``, ``z_t = H(u_t - 1)`` (triangle surrogate), ``v_t = u_t - z_t``,
    ``I_t = W_in x_t + W_rec z_{t-1}``, ``y_t = kappa y_{t-1} + W_out z_t + b_out``."""

    lam: float = 0.6
    kappa: float = 0.5
    name = "toy-spiking"
    spiking = True
    State = ToySpikeState
    local_form = True
    bias_in_current = False
    trace_fields = ("v",)

    param_shapes = ToyRate.param_shapes

    def init_params(self, seed=0, dtype=torch.float32, device=None) -> Params:
        p = ToyRate.init_params(self, seed, dtype, device)
        p["W_in"] = p["W_in"] * 3 + 0.5
        p["b"] = p["b"].abs()
        return p

    def init_state(self, params, batch=1):
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        return ToySpikeState(z, z.clone(), torch.zeros(batch, self.n_out, dtype=dtype, device=device))

    def current(self, params, state, x):
        return x @ params["W_in"].T + state.z @ params["W_rec"].T

    def neuron(self, params, state, i):
        u = self.lam * state.v + i + params["b"]
        z = spike(u, 1.0)
        return state._replace(v=u - z, z=z), z

    def readout(self, params, state, z):
        y = self.kappa * state.y + z @ params["W_out"].T + params["b_out"]
        return state._replace(y=y), y

    def presynaptic(self, state):
        return state.z

    @property
    def readout_decay(self):
        return self.kappa

    def with_output(self, state, y):
        return state._replace(y=y)

    def linear_filter(self):
        return LinearFilter(dh_dh=((self.lam,),), dh_dI=(1.0,), dh_db=(1.0,))


def _data(net, T=12, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(T, B, net.n_in, generator=g, dtype=torch.float64)
    return xs, torch.randn(T, B, net.n_out, generator=g, dtype=torch.float64)


def _params(net, recurrent=False):
    p = net.init_params(0, torch.float64)
    if not recurrent:
        p["W_rec"] = torch.zeros_like(p["W_rec"])
    return p


EXACT = [  # (model, rule, options, model options): equal to BPTT with W_rec = 0
    (ToyRate, "eprop", {}, {}), (ToyRate, "eprop", {"fast": False}, {}),
    (ToyRate, "rflo", {"feedback": "readout"}, {}), (ToyRate, "rflo", {"feedback": "readout", "fast": False}, {}),
    (ToySpiking, "eprop", {}, {}), (ToySpiking, "eprop", {"fast": False}, {}),
    (ToySpiking, "ottt", {"fast": False}, {"lam": 0.0, "kappa": 0.0}),
    (ToySpiking, "sltt", {"fast": False}, {"lam": 0.0, "kappa": 0.0}),
    (ToySpiking, "sltt", {}, {"lam": 0.0, "kappa": 0.0}),
]


@pytest.mark.parametrize("model,rule,opts,model_opts", EXACT,
                         ids=[f"{m.name}-{r}-{'-'.join(map(str, o.values()))}" for m, r, o, _ in EXACT])
def test_local_rules_on_a_new_model_equal_bptt_where_they_are_exact(model, rule, opts, model_opts):
    net = model(n_in=3, n_hidden=5, n_out=2, **model_opts)
    params = _params(net)
    xs, ys = _data(net)
    est = grad_estimate(net, params, rules.make(rule, net, **opts), xs, ys)
    true = grad_estimate(net, params, "bptt", xs, ys)
    assert any(float(v.abs().max()) > 1e-3 for v in true.values())
    if net.spiking:  # the oracle is not trivial: the network spikes
        state, n_spikes = net.init_state(params, 2), 0.0
        for x in xs:
            state, _ = net.step(params, state, x)
            n_spikes += float(state.z.sum())
        assert n_spikes > 5
    for k in true:
        torch.testing.assert_close(est[k], true[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.parametrize("model", [ToyRate, ToySpiking])
def test_with_recurrence_the_truncated_rules_differ_from_bptt(model):
    """The oracle above can fail: with W_rec != 0, e-prop drops the paths through other neurons."""
    net = model(n_in=3, n_hidden=5, n_out=2)
    params = _params(net, recurrent=True)
    xs, ys = _data(net)
    est = grad_estimate(net, params, "eprop", xs, ys)
    true = grad_estimate(net, params, "bptt", xs, ys)
    assert not torch.allclose(est["W_rec"], true["W_rec"], rtol=1e-6, atol=1e-9)


#: LOCAL and LOSS rules that refuse a model, and why (all others must run on it)
REFUSED = {
    ("toy-rate", "ottt"): "no linear sub-threshold filter",
    ("toy-rate", "sltt"): "no spikes (its estimate would be tbptt with k=1)",
    ("toy-rate", "sltt-k"): "no spikes",
    ("toy-spiking", "rflo"): "a leaky readout (RFLO's readout is linear)",
}


@pytest.mark.parametrize("model", [ToyRate, ToySpiking])
def test_every_local_and_loss_rule_runs_on_a_new_model_or_refuses_it_by_name(model):
    net = model(n_in=3, n_hidden=5, n_out=2)
    params = _params(net, recurrent=True)
    xs, ys = _data(net, T=6)
    refused = set()
    for name in rules.available():
        if rules.get(name).needs not in (Needs.LOCAL, Needs.LOSS):
            continue
        opts = {"T": 6} if name == "sltt-k" else {}
        try:
            rule = rules.make(name, net, **opts)
        except ValueError as e:
            assert net.name in str(e) and "\n" not in str(e), (name, str(e))
            refused.add((net.name, name))
            continue
        est = grad_estimate(net, params, rule, xs, ys)
        assert set(est) == set(params), name
        assert all(bool(torch.isfinite(v).all()) for v in est.values()), name
        assert any(float(v.abs().max()) > 0 for v in est.values()), name
    assert refused == {k for k in REFUSED if k[0] == net.name}
