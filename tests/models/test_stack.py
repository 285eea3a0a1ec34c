"""Stacks of recurrent layers (models.stack): the step against a layer-by-layer reference written here, the
one-layer case, the parameters, skip connections, sparse wiring per layer, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import models
from models.stack import Stack

F64 = torch.float64


def _inputs(T=40, B=3, n_in=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n_in, generator=g, dtype=F64) < 0.3).to(F64) * 3.0


def _reference_lif(net: Stack, p, xs):
    """The stack written out by hand: layer l's current is W^l_in u^l_t + W^l_rec z^l_{t-1} with the masks applied
    here, u^0 = x_t, u^l = z^{l-1}_t (this step's), the LIF neuron of one layer, the leaky readout of the last."""
    L, B = len(net.sizes), xs.shape[1]
    layers = [models.make("lif", n_in=1, n_hidden=n, n_out=net.n_out) for n in net.sizes]
    W = {k: v * net.masks[k] if k in net.masks else v for k, v in p.items()}
    st = [lay.init_state({"b": p[f"{l}.b"]}, B) for l, lay in enumerate(layers)]
    y = torch.zeros(B, net.n_out, dtype=F64)
    ys, zs = [], []
    kappa = math.exp(-layers[0].dt / layers[0].tau_out)
    for x in xs:
        u, z_all = x, []
        for l in range(L):
            u_l = torch.cat([u, x], 1) if (net.skip and l > 0) else u
            I = u_l @ W[f"{l}.W_in"].T + st[l].z @ W[f"{l}.W_rec"].T
            st[l], z = layers[l].neuron({"b": p[f"{l}.b"]}, st[l], I)
            z_all.append(z)
            u = z
        read = torch.cat(z_all, 1) if net.skip else z_all[-1]
        y = kappa * y + read @ p["W_out"].T + p["b_out"]
        ys.append(y)
        zs.append(torch.cat(z_all, 1))
    return torch.stack(ys), torch.stack(zs)


def _run(net, p, xs):
    s = net.init_state(p, xs.shape[1])
    ys, zs = [], []
    for x in xs:
        s, y = net.step(p, s, x)
        ys.append(y)
        zs.append(s.z)
    return torch.stack(ys), torch.stack(zs)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("connectivity", [None, 0.4])
def test_step_equals_the_layer_by_layer_reference(skip, connectivity):
    net = models.make("lif", n_in=3, n_hidden=(12, 10, 8), n_out=2, skip=skip, connectivity=connectivity,
                      feedforward_scale=8.0)
    p = net.init_params(1, F64)
    xs = _inputs(T=150)
    ys, zs = _run(net, p, xs)
    ry, rz = _reference_lif(net, p, xs)
    assert torch.equal(zs, rz)
    torch.testing.assert_close(ys, ry, rtol=0, atol=1e-12)
    for sl in net.slices:  # every layer fires, so the comparison covers the feed-forward path
        assert zs[:, :, sl].sum() > 0


@pytest.mark.parametrize("layer", ["rate", "lstm", "lif", "alif", "lif-loihi"])
def test_a_one_layer_stack_is_its_layer_model(layer):
    stack = Stack(n_in=3, n_out=2, layer=layer, sizes=(6,))
    single = models.make(layer, n_in=3, n_hidden=6, n_out=2)
    p1, p2 = stack.init_params(5, F64), single.init_params(5, F64)
    assert {k.removeprefix("0."): v for k, v in p1.items()}.keys() == p2.keys()
    assert all(torch.equal(p1[k if k in p1 else f"0.{k}"], v) for k, v in p2.items())
    xs = _inputs(T=30) * (3.0 if layer == "lif-loihi" else 1.0)
    s1, s2 = stack.init_state(p1, 3), single.init_state(p2, 3)
    for x in xs:
        s1, y1 = stack.step(p1, s1, x)
        s2, y2 = single.step(p2, s2, x)
        assert torch.equal(y1, y2)


def test_parameters_layers_and_state():
    net = models.make("alif", n_in=4, n_hidden=(6, 3), n_out=2, tau_mem=15.0)
    assert isinstance(net, Stack) and net.n_hidden == 9 and net.layer == "alif"
    assert all(lay.tau_mem == 15.0 for lay in net.layers)
    assert net.layers[1].n_in == 6
    assert net.param_shapes() == {"0.W_in": (6, 4), "0.W_rec": (6, 6), "0.b": (6,), "1.W_in": (3, 6),
                                  "1.W_rec": (3, 3), "1.b": (3,), "W_out": (2, 3), "b_out": (2,)}
    p = net.init_params(0, F64)
    assert not torch.equal(p["0.W_rec"][:3, :3], p["1.W_rec"])  # the layers are drawn independently
    s = net.init_state(p, 2)
    assert type(s).__name__ == "ALIFState" and s.v.shape == (2, 9) and s.y.shape == (2, 2)
    assert models.make("lif", n_in=4, n_hidden=(6, 3), n_out=2, skip=True).param_shapes()["1.W_in"] == (3, 10)
    scaled = models.make("alif", n_in=4, n_hidden=(6, 3), n_out=2, tau_mem=15.0, feedforward_scale=2.5).init_params(0, F64)
    assert torch.equal(scaled["1.W_in"], 2.5 * p["1.W_in"]) and torch.equal(scaled["0.W_in"], p["0.W_in"])
    assert models.make("lif", n_in=4, n_hidden=[7], n_out=2) == models.make("lif", n_in=4, n_hidden=7, n_out=2)


def test_connectivity_wires_every_layer_independently():
    net = models.make("lif", n_in=3, n_hidden=(200, 200), n_out=2, connectivity=0.1)
    assert set(net.masks) == {"0.W_rec", "1.W_in", "1.W_rec"}
    for m in net.masks.values():
        assert abs(float(m.float().mean()) - 0.1) < 0.01
    assert not torch.equal(net.masks["0.W_rec"], net.masks["1.W_rec"])
    p = net.init_params(0)
    for k, m in net.masks.items():
        assert (p[k][~m] == 0).all() and (p[k][m] != 0).all()
    # the summed input keeps the dense draw's scale: std of a row sum of the sparse matrix ~ the dense one's
    dense = models.make("lif", n_in=3, n_hidden=(200, 200), n_out=2).init_params(0)
    ratio = float(p["1.W_rec"].sum(1).std() / dense["1.W_rec"].sum(1).std())
    assert 0.8 < ratio < 1.25
    # a dict names matrices; the same network always has the same wiring
    net2 = models.make("lif", n_in=3, n_hidden=(20, 10), n_out=2, connectivity={"1.W_in": "fan-in:4"})
    assert (net2.masks["1.W_in"].sum(1) == 4).all()
    assert torch.equal(net2.masks["1.W_in"],
                       models.make("lif", n_in=3, n_hidden=(20, 10), n_out=2, connectivity={"1.W_in": "fan-in:4"}).masks["1.W_in"])


@pytest.mark.parametrize("kw,match", [
    (dict(layer="columnar", sizes=(3, 3)), "layer='columnar' is invalid"),
    (dict(sizes=(3, 0)), "sizes=0 is invalid"),
    (dict(sizes=(3, 2), n_hidden=4), "n_hidden=4 is invalid"),
    (dict(sizes=(3, 2), options={"tau": 3.0}), "has no option tau"),
    (dict(sizes=(3, 2), options={"n_in": 3}), r"options\['n_in'\] is invalid"),
    (dict(sizes=(3, 2), connectivity={"2.W_rec": 0.5}), "'2.W_rec', which is no sparse-capable"),
    (dict(sizes=(3, 2), layer="rate", options={"decorrelation": 0.1}), "held fixed or learnt by its own rule"),
])
def test_bad_stacks_are_refused_with_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        Stack(**{"n_in": 2, "n_out": 1, **kw})
    assert "\n" not in str(e.value)
