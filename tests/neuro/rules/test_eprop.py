"""e-prop (neuro.rules.eprop) against its definition computed independently.

The oracle is RTRL over the flattened network state whose one-step Jacobian is cut to e-prop's
neuron-local part: the full Jacobian ``ds_t/ds_{t-1}`` (``torch.func.jacrev`` of ``net.step``) masked to
the entries that couple fields of the SAME neuron, with every entry of the recurrent output ``z_{t-1}``
(the input of ``W_rec``) removed, while the readout ``y`` keeps its own exact Jacobian (``dy_t/dy_{t-1}``
and ``dy_t/ds_{t-1}`` through ``z_t``). ``M_t = J_cut M_{t-1} + ds_t/dtheta``; the estimate of step t is
``(dl_t/ds_t) M_t`` (plus the direct readout term of a rate net). For the rate net, whose ``h`` is both
the state and the recurrent output, the cut is built from a step whose current reads a second, frozen
copy of the state (and, for the spiking nets, checked equal to the mask). A model defined here, known to
e-prop only through the cell contract, gets BPTT's gradient where nothing couples two neurons. The windowed
path against the definition: test_eprop_windowed.py.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch.func import jacrev, vmap

import models
import neuro
from neuro import losses, rules
from neuro.contract import AbstractNetwork
from neuro.rules._onestep import FlatStep

pytestmark = pytest.mark.usefixtures("one_thread")

T, B = 20, 2
F64 = torch.float64


def _spiking_net(name: str, **kw):
    return models.make(name, n_in=4, n_hidden=6, n_out=2, tau_mem=5.0, tau_syn=2.0, tau_out=5.0,
                       input_scale=2.0, rec_scale=1.0, **kw)


def _data(net, seed: int = 3, amp: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    if net.spiking:
        xs = amp * (torch.rand(T, B, net.n_in, generator=g) < 0.5).to(F64)
    else:
        xs = torch.randn(T, B, net.n_in, generator=g, dtype=F64)
    ys = torch.randn(T, B, net.n_out, generator=g, dtype=F64)
    mask = torch.rand(T, B, generator=g) < 0.8
    mask[-1] = True
    return xs, ys, mask


def _spikes(net, params, xs) -> float:
    return float(neuro.simulate(net, params, xs).spikes.sum())


def oracle(net, params, xs, ys, mask, cut: bool = True, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Summed estimate of RTRL with the Jacobian cut to e-prop's neuron-local part (module docstring).
    ``cut=False``: full RTRL (BPTT's gradient). ``drop``: state fields that receive no influence (eps = 0)."""
    fs = FlatStep.build(net, params, "mse")
    theta = fs.flat_params(params)
    fields = fs.state_type._fields
    sl = fs.state_slices()
    n = net.n_hidden
    S = fs.n_state
    # the flat index -> (field, neuron) map; the readout field has neuron -1
    field_of = [None] * S
    neuron_of = torch.full((S,), -1)
    for f in fields:
        idx = range(S)[sl[f]]
        for k, j in enumerate(idx):
            field_of[j] = f
            if f != "y":
                neuron_of[j] = k % n
    feeds_current = "z" if net.spiking else "h"

    def two_arg(th, s_neu, s_syn, x):  # the current reads a second copy of the state
        p = fs.unflat_params(th)
        i = net.current(p, fs.unflat_state(s_syn[None]), x[None])
        st, z = net.neuron(p, fs.unflat_state(s_neu[None]), i)
        st, _ = net.readout(p, st, z)
        return fs.flat_state(st)[0]

    if net.spiking:  # the mask on the full Jacobian
        col_ok = torch.tensor([f != feeds_current for f in field_of])
        same = (neuron_of[:, None] == neuron_of[None, :]) | (neuron_of[:, None] < 0)
        Mask = (same & col_ok[None, :]).to(F64)
    else:
        Mask = (neuron_of[:, None] == neuron_of[None, :]).to(F64)
    keep = torch.tensor([0.0 if f in drop else 1.0 for f in field_of], dtype=F64)

    def out(th, s):  # y_t from the state s_t
        p = fs.unflat_params(th)
        st = fs.unflat_state(s[None])
        if net.spiking:
            return st.y[0]
        return (st.h @ p["W_out"].T + p["b_out"])[0]

    s = fs.flat_state(net.init_state(params, B))
    M = torch.zeros(B, S, fs.n_params, dtype=F64)
    total = torch.zeros(fs.n_params, dtype=F64)
    per = losses.per_sample("mse")
    for x, y, m in zip(xs, ys, mask):
        s_new, J, I = fs.jacobians(theta, s, x)
        if cut:
            J2 = vmap(jacrev(two_arg, argnums=1), in_dims=(None, 0, 0, 0))(theta, s, s, x)
            if net.spiking:
                torch.testing.assert_close(J * Mask, J2 * Mask, rtol=0, atol=1e-12)  # the two cuts agree
            J = J2 * Mask
            J, I = keep[:, None] * J, keep[:, None] * I
        M = torch.bmm(J, M) + I
        for b in range(B):
            def lb(th, s1):
                return per(out(th, s1)[None], y[b][None])[0] * m[b].to(F64)
            g_th, g_s = torch.func.grad(lb, argnums=(0, 1))(theta, s_new[b])
            total += (g_s @ M[b] + g_th) / B
        s = s_new
    return fs.unflat_params(total)


def _close(g, ref, atol=1e-10):
    for k in ref:
        torch.testing.assert_close(g[k], ref[k], rtol=1e-9, atol=atol, msg=lambda m: f"{k}: {m}")


SPIKING = [("lif", {}), ("lif", {"detach_reset": True}), ("lif", {"refractory": 2}), ("lif", {"reset": "zero"}),
           ("alif", {}), ("alif", {"detach_reset": True})]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in SPIKING]


@pytest.mark.parametrize("model,kw", SPIKING, ids=IDS)
def test_eprop_equals_neuron_local_rtrl_in_float64(model, kw):
    net = _spiking_net(model, **kw)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    assert _spikes(net, params, xs) > 0, "the network must spike"
    g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    ref = oracle(net, params, xs, ys, mask)
    _close(g, ref)
    # the hidden-weight gradients are not zero (spikes, non-zero pseudo-derivative), and the cut matters
    assert float(g["W_rec"].abs().max()) > 1e-6 and float(g["W_in"].abs().max()) > 1e-6
    true = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    diff = float((g["W_in"] - true["W_in"]).norm() + (g["W_rec"] - true["W_rec"]).norm())
    assert diff > 1e-4 * float(true["W_in"].norm() + true["W_rec"].norm()), "e-prop equals BPTT here: test is vacuous"
    # the readout learns with its exact gradient
    _close({k: g[k] for k in ("W_out", "b_out")}, {k: true[k] for k in ("W_out", "b_out")})


def test_the_oracle_without_the_cut_is_bptt():
    """The oracle's machinery is right: without the cut it is RTRL, which equals BPTT."""
    net = _spiking_net("alif")
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    assert _spikes(net, params, xs) > 0
    _close(oracle(net, params, xs, ys, mask, cut=False), neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask))


def test_alif_without_the_adaptive_component():
    """``adaptive_eligibility=False``: the oracle with the threshold adaptation receiving no influence."""
    net = _spiking_net("alif", beta_a=2.0)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    assert _spikes(net, params, xs) > 0
    g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, adaptive_eligibility=False)
    _close(g, oracle(net, params, xs, ys, mask, drop=("a",)))
    full = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    assert float((full["W_in"] - g["W_in"]).abs().max()) > 1e-8, "the adaptive component changed nothing"


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_rate_net_equals_its_definition(alpha):
    net = models.make("rate", n_in=3, n_hidden=5, n_out=2, alpha=alpha)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    _close(g, oracle(net, params, xs, ys, mask))


def _run(rule, params, xs, ys, mask, B_override=None, seed=0):
    state = rule.init(params, xs.shape[1], seed)
    if B_override is not None:
        state = state._replace(B=B_override)
    total = rules.zeros_like_params(params)
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(params, state, x, y, m)
        state = out.state
        rules.add_into(total, out.grad)
    state, g = rule.finish(params, state)
    return rules.add_into(total, g), state


@pytest.mark.parametrize("model", ["lif", "alif"])
def test_random_feedback_with_the_readout_weights_is_symmetric(model):
    net = _spiking_net(model)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    sym, _ = _run(rules.make("eprop", net), params, xs, ys, mask)
    rnd, _ = _run(rules.make("eprop", net, feedback="random"), params, xs, ys, mask, B_override=params["W_out"].clone())
    _close(rnd, sym, atol=1e-12)
    other, _ = _run(rules.make("eprop", net, feedback="random"), params, xs, ys, mask)
    assert float((other["W_in"] - sym["W_in"]).abs().max()) > 1e-6


def test_random_feedback_is_drawn_from_the_seed_and_kept_on_reset():
    net = _spiking_net("lif")
    params = net.init_params(0, F64)
    rule = rules.make("eprop", net, feedback="random")
    s0, s0b, s1 = rule.init(params, B, 0), rule.init(params, B, 0), rule.init(params, B, 1)
    assert torch.equal(s0.B, s0b.B) and not torch.equal(s0.B, s1.B)
    assert s0.B.shape == params["W_out"].shape
    assert abs(float(s0.B.std()) * net.n_hidden ** 0.5 - 1.0) < 0.6
    assert torch.equal(rule.reset(params, s1).B, s1.B)


@pytest.mark.parametrize("fast", [False, True])
def test_adaptive_feedback_mirrors_the_readout(fast):
    """Adaptive e-prop: B follows W_out's update with weight decay, so with the same SGD step and decay on
    W_out, B - W_out shrinks by exactly (1 - lr decay) per update (Kolen-Pollack)."""
    net = _spiking_net("lif")
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    lr, decay = 0.05, 0.1
    rule = rules.make("eprop", net, feedback="adaptive", feedback_lr=lr, feedback_decay=decay, fast=fast, window=4)
    state = rule.init(params, B, 0)
    gap0 = state.B - params["W_out"]
    W = {k: v.clone() for k, v in params.items()}
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(W, state, x, y, m)
        state, g = out.state, out.grad
        if fast:  # the training loop flushes before every update
            assert g is None
            state, g = rule.flush(W, state)
        W["W_out"] = W["W_out"] - lr * (g["W_out"] + decay * W["W_out"])
    torch.testing.assert_close(state.B - W["W_out"], (1 - lr * decay) ** T * gap0, rtol=1e-10, atol=1e-12)
    assert float(gap0.abs().max()) > 0.1


def test_bad_input_names_the_bad_value_and_what_is_valid():
    with pytest.raises(ValueError, match=r"adaptive_eligibility=True.*'lif'.*threshold adaptation.*\('v', 'i'\)"):
        rules.make("eprop", _spiking_net("lif"), adaptive_eligibility=True)
    with pytest.raises(ValueError, match=r"adaptive_eligibility=False.*'rate'"):
        rules.make("eprop", models.make("rate", n_in=2, n_hidden=3, n_out=1), adaptive_eligibility=False)
    with pytest.raises(ValueError, match=r"'eprop'.*'lstm'.*element-wise trace fields"):
        rules.make("eprop", models.make("lstm", n_in=2, n_hidden=3, n_out=1))
    with pytest.raises(ValueError, match=r"'eprop'.*'columnar'.*local form"):
        rules.make("eprop", models.make("columnar", n_in=2, n_hidden=3, n_out=1))
    with pytest.raises(ValueError, match=r"feedback='mirror'.*'symmetric'"):
        rules.make("eprop", _spiking_net("lif"), feedback="mirror")
    with pytest.raises(ValueError, match="window"):
        rules.make("eprop", _spiking_net("lif"), window=0)
    with pytest.raises(ValueError, match=r"fast=None is invalid: expected True or False"):
        rules.make("eprop", _spiking_net("lif"), fast=None)


# -- a model defined here: e-prop reads it through the cell contract only ----------------------------------


class LeakyState(NamedTuple):
    h: torch.Tensor  # [B, n]
    y: torch.Tensor  # [B, n_out] the readout's memory


@dataclasses.dataclass(frozen=True)
class LeakySigmoid(AbstractNetwork):
    """``I_t = W_in x_t + W_rec h_{t-1}``, ``h_t = (1 - leak) h_{t-1} + leak sigmoid(I_t + b)`` (the bias in
    the neuron), ``y_t = decay y_{t-1} + W_out h_t + b_out``. No closed-form derivatives: the contract's
    default (a reverse pass through ``neuron``) gives them."""

    leak: float = 0.6
    decay: float = 0.0

    name = "leaky-sigmoid"
    State = LeakyState
    local_form = True
    bias_in_current = False
    trace_fields = ("h",)

    def param_shapes(self):
        n = self.n_hidden
        return {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed=0, dtype=torch.float32, device=None):
        g = torch.Generator().manual_seed(seed)
        return {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in self.param_shapes().items()}

    def init_state(self, params, batch=1):
        like = params["W_rec"]
        return LeakyState(h=like.new_zeros(batch, self.n_hidden), y=like.new_zeros(batch, self.n_out))

    def current(self, params, state, x):
        return x @ params["W_in"].mT + state.h @ params["W_rec"].mT

    def neuron(self, params, state, i):
        h = (1 - self.leak) * state.h + self.leak * torch.sigmoid(i + params["b"])
        return state._replace(h=h), h

    def readout(self, params, state, z):
        y = self.decay * state.y + z @ params["W_out"].mT + params["b_out"]
        return state._replace(y=y), y

    def presynaptic(self, state):
        return state.h

    @property
    def readout_decay(self):
        return self.decay

    def with_output(self, state, y):
        return state._replace(y=y)


@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_a_model_of_the_contract_without_recurrence_gets_bptts_gradient(decay):
    """On a model defined here (contract only, default derivatives), with ``W_rec = 0`` nothing couples two
    neurons, so e-prop's neuron-local traces are exact: both paths equal BPTT's gradient for every parameter
    (the readout's memory included). With ``W_rec != 0`` they do not (the test can tell)."""
    net = LeakySigmoid(n_in=3, n_hidden=5, n_out=2, decay=decay)
    params = net.init_params(0, F64)
    xs, ys, mask = _data(net)
    for recurrent in (False, True):
        p = dict(params, W_rec=0.5 * params["W_rec"] if recurrent else torch.zeros_like(params["W_rec"]))
        true = neuro.grad_estimate(net, p, "bptt", xs, ys, mask=mask)
        definition = neuro.grad_estimate(net, p, "eprop", xs, ys, mask=mask, fast=False)
        windowed = neuro.grad_estimate(net, p, "eprop", xs, ys, mask=mask, window=6)
        _close(windowed, definition, atol=1e-12)
        if recurrent:
            assert float((definition["W_in"] - true["W_in"]).abs().max()) > 1e-4
        else:
            _close(definition, true)
            assert all(float(true[k].abs().max()) > 1e-3 for k in true)
