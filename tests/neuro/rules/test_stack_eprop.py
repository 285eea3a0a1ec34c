"""e-prop on stacks of layers (neuro.rules.eprop, multi-layer form) against two independent references.

*RTRL cut to neuron-local blocks* (:func:`cut_rtrl`, any readout decay ``kappa``). Every layer's neuron is
stepped on its own by autograd (``torch.autograd.functional.jacobian``) with everything it receives from other neurons held
fixed: its recurrent input ``p^l_{t-1}`` (a frozen copy of the state feeds the current) and, in layers above
the first, the layer below's ``z^{l-1}_t`` of the same step. The influence of every parameter on each neuron's
own state follows ``M_t = D_t M_{t-1} + dh_t/dtheta|pre fixed`` (``D_t`` the Jacobian of a layer's state on its
own previous state, which is neuron-local by construction: checked), its output
``e_t = dz_t/dh_{t-1} M_{t-1} + dz_t/dtheta|pre fixed`` is filtered by the readout's decay,
``bar e_t = kappa bar e_{t-1} + e_t``, and contracted with the instantaneous ``dE_t/dz^l_t``: the gradient of
this step's loss, with the readout's memory ``y_{t-1}`` and every neuron's previous state fixed, through this
step's readout and the same-step feed-forward path through the layers above (autograd again). The readout's
own parameters get their exact gradient (BPTT's).

*BPTT of the cut network* (:func:`cut_bptt`, ``kappa = 0``). Autograd through time of a copy of the stack in
which every cross-neuron input is detached for the state a neuron carries to the next step (its recurrent
input, and the layer below's output), while the output ``z^l_t`` that the readout and the layers above read
within the step is computed from the attached input. Each neuron's own history and every same-step path stay,
so with a memoryless readout this is the same estimate; with a leaky readout it is not (the readout's memory
carries ``z_t``'s same-step dependence on lower layers to later losses, which e-prop's filtered trace does not
follow for layers below the readout: the module docstring).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import models
import neuro
from models.stack import Stack
from neuro import losses, rules
from neuro.rules import eprop as eprop_module
from neuro.rules._common import feedback_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
T, B = 30, 2
READOUT = ("W_out", "b_out")
SPIKING = dict(tau_mem=5.0, tau_syn=2.0, tau_out=5.0, input_scale=2.0, rec_scale=1.0)


def _stack(layer: str, sizes=(5, 4), skip=False, connectivity=0.5, **kw):
    opts = {**SPIKING, **kw} if layer != "rate" else kw
    return models.make(layer, n_in=3, n_hidden=sizes, n_out=2, connectivity=connectivity, skip=skip, **opts)


def _params(net):
    """Float64 parameters whose feed-forward weights are positive, so that every layer is driven (zeros off the
    masks stay zeros)."""
    p = net.init_params(0, F64)
    if net.spiking:
        for l in range(len(net.sizes)):
            p[f"{l}.W_in"] = p[f"{l}.W_in"].abs() * (0.5 if l == 0 else 2.0)
    return p


def _data(net, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    if net.spiking:
        xs = 4.0 * (torch.rand(T, B, net.n_in, generator=g) < 0.5).to(F64)
    else:
        xs = torch.randn(T, B, net.n_in, generator=g, dtype=F64)
    ys = torch.randn(T, B, net.n_out, generator=g, dtype=F64)
    mask = torch.rand(T, B, generator=g) < 0.8
    mask[-1] = True
    return xs, ys, mask


def _close(g, ref, keys=None, atol=1e-10):
    for k in keys or ref:
        torch.testing.assert_close(g[k], ref[k], rtol=1e-9, atol=atol, msg=lambda m: f"{k}: {m}")


def _hidden(net):
    return [k for k in net.param_shapes() if k not in READOUT]


def cut_rtrl(net, params, xs, ys, mask):
    """The summed estimate of RTRL with the Jacobian cut to neuron-local blocks (module docstring), for the
    hidden parameters of a stack."""
    keys = _hidden(net)
    shapes = [params[k].shape for k in keys]
    theta = torch.cat([params[k].reshape(-1) for k in keys])
    n_par, L, kappa = theta.numel(), len(net.sizes), net.readout_decay
    fields = [f for f in net.State._fields if f != "y"]
    per = losses.per_sample("mse")

    def unflat(th):
        out, k0 = dict(params), 0
        for k, s in zip(keys, shapes):
            out[k] = th[k0:k0 + s.numel()].view(s)
            k0 += s.numel()
        return out

    def as_state(flat, l):  # one sample's per-unit fields of layer l [F n_l] -> the layer's state [1, n_l]
        n = net.sizes[l]
        parts = {f: flat[k * n:(k + 1) * n][None] for k, f in enumerate(fields)}
        if "y" in net.State._fields:
            parts["y"] = flat.new_zeros(1, net.n_out)
        return net.State(**parts)

    def flat_of(s):
        return torch.cat([getattr(s, f)[0] for f in fields])

    def layer_step(th, l, own, syn, u):
        """Layer l's neuron step from its own state ``own``, the current read from the frozen copy ``syn`` and
        the fixed input ``u``: (own state after the step, z)."""
        lp, layer = net.layer_params(unflat(th), l), net.layers[l]
        s, z = layer.neuron(lp, as_state(own, l), layer.current(lp, as_state(syn, l), u))
        return flat_of(s), z[0]

    state = net.init_state(params, B)
    M = [[torch.zeros(len(fields) * n, n_par, dtype=F64) for n in net.sizes] for _ in range(B)]
    Ebar = [[torch.zeros(n, n_par, dtype=F64) for n in net.sizes] for _ in range(B)]
    total = torch.zeros(n_par, dtype=F64)
    for x, y, m in zip(xs, ys, mask):
        for b in range(B):
            xb = x[b][None]
            prev = [flat_of(type(state)(*(f[b:b + 1] for f in net.layer_state(state, l)))) for l in range(L)]
            zs, below = [], None
            for l in range(L):
                u = net.layer_input(xb, below, l)
                (dh_dth, dh_dh), (dz_dth, dz_dh) = jacobian(
                    lambda th, own, l=l, u=u: layer_step(th, l, own, prev[l], u), (theta, prev[l]), vectorize=True)
                n = net.sizes[l]
                unit = torch.arange(len(fields) * n) % n
                assert float(dh_dh[unit[:, None] != unit[None, :]].abs().max()) == 0.0  # neuron-local
                e = dz_dh @ M[b][l] + dz_dth
                M[b][l] = dh_dh @ M[b][l] + dh_dth
                Ebar[b][l] = kappa * Ebar[b][l] + e
                zs.append(layer_step(theta, l, prev[l], prev[l], u)[1][None])
                below = zs[-1]
            y_prev = type(state)(*(f[b:b + 1] for f in state))

            def loss_from(zl, l):  # this step's loss from layer l's z_t, through the layers above and the readout
                z, th = list(zs), theta
                z[l] = zl
                for k in range(l + 1, L):
                    z[k] = layer_step(th, k, prev[k], prev[k], net.layer_input(xb, z[k - 1], k))[1][None]
                _, y_hat = net.readout(params, y_prev, torch.cat(z, 1))
                return per(y_hat, y[b][None])[0] * m[b].to(F64) / B

            for l in range(L):
                zl = zs[l].detach().requires_grad_(True)
                total += torch.autograd.grad(loss_from(zl, l), zl)[0][0] @ Ebar[b][l]
        state, _ = net.step(params, state, x)
    return {k: v for k, v in unflat(total).items() if k in keys}


def cut_bptt(net, params, xs, ys, mask):
    """Autograd through time of the cut network (module docstring): the gradient of the summed loss."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss_fn = losses.get("mse")
    state, total = net.init_state(params, B), 0.0
    for x, y, m in zip(xs, ys, mask):
        states, zs, below, below_kept = [], [], None, None
        for l, layer in enumerate(net.layers):
            lp, ls = net.layer_params(p, l), net.layer_state(state, l)
            syn = ls._replace(**{f: getattr(ls, f).detach() for f in ls._fields})  # p_{t-1} detached
            carried, _ = layer.neuron(lp, ls, layer.current(lp, syn, net.layer_input(x, below, l)))
            _, z = layer.neuron(lp, ls, layer.current(lp, syn, net.layer_input(x, below_kept, l)))
            states.append(carried)
            zs.append(z)
            below, below_kept = z.detach(), z
        state, y_hat = net.readout(p, net.join_states(states, getattr(state, "y", None)), torch.cat(zs, 1))
        total = total + loss_fn(y_hat, y, m)
    grads = torch.autograd.grad(total, [p[k] for k in _hidden(net)], allow_unused=True)
    return {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(_hidden(net), grads)}


CASES = [("lif", {}), ("alif", {}), ("alif", {"skip": True}), ("rate", {"alpha": 0.5})]
IDS = ["lif", "alif", "alif-skip", "rate"]


@pytest.mark.parametrize("layer,kw", CASES, ids=IDS)
def test_symmetric_eprop_on_a_sparse_stack_is_neuron_local_rtrl(layer, kw):
    net = _stack(layer, **kw)
    params = _params(net)
    xs, ys, mask = _data(net)
    if net.spiking:
        spikes = neuro.simulate(net, params, xs).spikes.sum((0, 1))
        assert all(float(spikes[sl].sum()) > 5 for sl in net.slices), "every layer must fire"
    rule = rules.make("eprop", net)
    assert rule.fast_path is None
    g = neuro.grad_estimate(net, params, rule, xs, ys, mask=mask)
    ref = cut_rtrl(net, params, xs, ys, mask)
    _close(g, ref)
    true = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    _close(g, true, keys=READOUT)  # the readout learns with its exact gradient
    for k in ref:  # not vacuous: every hidden parameter learns, and the cut matters
        assert float(g[k].abs().max()) > 1e-6, k
    diff = sum(float((g[k] - true[k]).norm()) for k in ref)
    assert diff > 1e-4 * sum(float(true[k].norm()) for k in ref), "e-prop equals BPTT here: the test is vacuous"


@pytest.mark.parametrize("layer", ["lif", "rate"])
def test_with_a_memoryless_readout_it_is_bptt_of_the_cut_network(layer):
    net = _stack(layer, **({"tau_out": 1e-3} if layer == "lif" else {}))
    assert net.readout_decay == 0.0
    params = _params(net)
    xs, ys, mask = _data(net)
    g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    ref = cut_bptt(net, params, xs, ys, mask)
    _close(g, ref)
    assert all(float(ref[k].abs().max()) > 1e-6 for k in ref)


def test_with_a_leaky_readout_only_the_readout_layer_is_bptt_of_the_cut_network():
    """The approximation the module docstring states: with the readout's memory (``kappa > 0``), the layer
    the readout reads still gets BPTT's gradient of the cut network, the layer below does not (but is close)."""
    net = _stack("lif")
    assert net.readout_decay > 0.5
    params = _params(net)
    xs, ys, mask = _data(net)
    g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    ref = cut_bptt(net, params, xs, ys, mask)
    _close(g, ref, keys=["1.W_in", "1.W_rec", "1.b"])
    rel = float((g["0.W_in"] - ref["0.W_in"]).norm() / ref["0.W_in"].norm())
    assert 1e-6 < rel < 0.5, rel


def test_masked_entries_are_exactly_zero():
    net = _stack("alif", skip=True, connectivity=0.3)
    params = _params(net)
    xs, ys, mask = _data(net)
    for feedback in ("symmetric", "random", "adaptive"):
        g = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask, feedback=feedback)
        for k, m in net.masks.items():
            assert bool((g[k][~m] == 0).all()), (feedback, k)
            assert float(g[k][m].abs().max()) > 0, (feedback, k)


def test_a_learning_signal_without_the_path_through_the_layers_above_fails_the_oracle(monkeypatch):
    """The oracle can fail: e-prop whose symmetric learning signal stops at the readout (lower layers of a
    stack with skip connections then learn only from their own readout columns) is told apart."""
    net = _stack("lif", skip=True)
    params = _params(net)
    xs, ys, mask = _data(net)
    ref = cut_rtrl(net, params, xs, ys, mask)
    good = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    _close(good, ref)

    def readout_only(self, p, Bm, dE_dy, layers):
        return [dE_dy @ p["W_out"][:, cols] for cols in self.readout_columns]

    monkeypatch.setattr(eprop_module.EProp, "learning_signals", readout_only)
    broken = neuro.grad_estimate(net, params, "eprop", xs, ys, mask=mask)
    with pytest.raises(AssertionError):
        _close(broken, ref, keys=["0.W_in"])


@pytest.mark.parametrize("feedback", ["symmetric", "random", "adaptive"])
def test_a_stack_of_one_layer_is_its_layer_model(feedback):
    """One layer: the same numbers as the layer model's e-prop (its definition and its windowed path)."""
    stack = Stack(n_in=3, n_out=2, layer="alif", sizes=(6,), options=tuple(SPIKING.items()))
    single = models.make("alif", n_in=3, n_hidden=6, n_out=2, **SPIKING)
    params = _params(stack)
    flat = {k.removeprefix("0."): v for k, v in params.items()}
    xs, ys, mask = _data(single)
    g = neuro.grad_estimate(stack, params, "eprop", xs, ys, mask=mask, feedback=feedback)
    for fast in (False, True):
        ref = neuro.grad_estimate(single, flat, "eprop", xs, ys, mask=mask, feedback=feedback, fast=fast)
        _close({k.removeprefix("0."): v for k, v in g.items()}, ref, atol=1e-12)


def test_random_feedback_is_drawn_per_layer():
    net = _stack("lif", sizes=(4, 4))
    params = _params(net)
    rule = rules.make("eprop", net, feedback="random")
    s0, s1 = rule.init(params, B, 0), rule.init(params, B, 1)
    assert s0.B.shape == (net.n_out, net.n_hidden)
    b0, b1 = s0.B[:, net.slices[0]], s0.B[:, net.slices[1]]
    assert not torch.allclose(b0, b1), "the layers share their feedback"
    torch.testing.assert_close(b0, feedback_matrix(net.n_out, 4, 0, params["W_out"]), rtol=0, atol=0)
    torch.testing.assert_close(b1, feedback_matrix(net.n_out, 4, 1000003, params["W_out"]), rtol=0, atol=0)
    assert not torch.equal(s0.B, s1.B)
    assert torch.equal(rule.reset(params, s1).B, s1.B)
    # the learning signal of each layer is its own block's: the estimate changes with layer 0's block alone
    xs, ys, mask = _data(net)
    state = s0
    out = rule.step(params, state, xs[0], ys[0], mask[0])
    other = rule.step(params, state._replace(B=torch.cat([-b0, b1], 1)), xs[0], ys[0], mask[0])
    torch.testing.assert_close(other.grad["1.W_in"], out.grad["1.W_in"], rtol=0, atol=0)


def test_random_feedback_with_the_readout_weights_is_symmetric_on_the_readout_layer():
    """With every layer read by the readout (skip) and B = W_out, random feedback's learning signal is the
    readout's part of the symmetric one: the top layer's estimate is the same."""
    net = _stack("lif", skip=True)
    params = _params(net)
    xs, ys, mask = _data(net)
    sym = rules.make("eprop", net)
    rnd = rules.make("eprop", net, feedback="random")
    s_sym, s_rnd = sym.init(params, B), rnd.init(params, B)._replace(B=params["W_out"].clone())
    for x, y, m in zip(xs, ys, mask):
        a, b = sym.step(params, s_sym, x, y, m), rnd.step(params, s_rnd, x, y, m)
        s_sym, s_rnd = a.state, b.state
        _close(b.grad, a.grad, keys=["1.W_in", "1.W_rec", "1.b", "W_out", "b_out"], atol=1e-14)


def test_adaptive_feedback_adapts_the_readout_layers_columns_only():
    """Adaptive e-prop on a stack without skip connections: the last layer's B follows W_out's update with
    weight decay (Kolen-Pollack: B - W_out shrinks by (1 - lr decay) per update), the lower layer's stays."""
    net = _stack("lif")
    params = _params(net)
    xs, ys, mask = _data(net)
    lr, decay = 0.05, 0.1
    rule = rules.make("eprop", net, feedback="adaptive", feedback_lr=lr, feedback_decay=decay)
    state = rule.init(params, B, 0)
    B0 = state.B.clone()
    top = net.readout_units
    gap0 = state.B[:, top] - params["W_out"]
    W = {k: v.clone() for k, v in params.items()}
    for x, y, m in zip(xs, ys, mask):
        out = rule.step(W, state, x, y, m)
        state = out.state
        W["W_out"] = W["W_out"] - lr * (out.grad["W_out"] + decay * W["W_out"])
    torch.testing.assert_close(state.B[:, top] - W["W_out"], (1 - lr * decay) ** T * gap0, rtol=1e-10, atol=1e-12)
    assert torch.equal(state.B[:, net.slices[0]], B0[:, net.slices[0]])


def test_a_stack_of_layers_without_trace_fields_is_refused():
    with pytest.raises(ValueError, match=r"'eprop'.*'stack'.*element-wise trace fields"):
        rules.make("eprop", models.make("lstm", n_in=2, n_hidden=(3, 2), n_out=1))
    with pytest.raises(ValueError, match=r"adaptive_eligibility=False.*'stack'"):
        rules.make("eprop", _stack("lif"), adaptive_eligibility=False)
