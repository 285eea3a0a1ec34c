"""NIR export and import of stacks of ``lif`` layers and of sparse networks.

Oracles: export -> file -> import gives back an equal stack (every field, the masks, the parameters) and the
same spikes, v and readout (float64); norse 1.1's own NIR reader (``norse.torch.from_nir``, an independent
graph executor and CubaLIF) runs the exported 2-layer graph to our spikes; sparse matrices are written dense
with zeros and their masks come back from the metadata, or from the zeros when asked.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro

nir = pytest.importorskip("nir")
from hw_targets import nir as hnir  # noqa: E402

F64 = torch.float64
T = 120


def stack(dynamics: str, bias: float = 0.01, seed: int = 0, **kw):
    net = models.make("lif", n_in=6, n_hidden=(12, 8), n_out=2, connectivity=0.5, dynamics=dynamics, reset="zero",
                      tau_out=15.0, bias_mean=0.0, bias_std=0.0, **kw)
    p = net.init_params(seed=seed, dtype=F64)
    p["0.W_in"] = p["0.W_in"] * 80.0
    p["1.W_in"] = p["1.W_in"] * 30.0
    p["0.b"] = p["0.b"] + bias
    p["1.b"] = p["1.b"] + bias
    p["b_out"] = p["b_out"] + 0.3
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(T, 2, 6, generator=g, dtype=F64) < 0.1).to(F64)
    return net, p, xs


def assert_both_layers_fire(spikes: torch.Tensor, n0: int = 12) -> None:
    for what, s in (("layer 0", spikes[..., :n0]), ("layer 1", spikes[..., n0:])):
        assert 0.01 <= float(s.mean()) <= 0.5, f"{what} fires in {float(s.mean()):.1%} of its steps"


def assert_same_run(net, p, net2, p2, xs):
    ref, got = neuro.simulate(net, p, xs), neuro.simulate(net2, p2, xs)
    assert_both_layers_fire(ref.spikes)
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_a_sparse_stack_exports_to_a_file_and_imports_as_the_same_stack(dynamics, tmp_path):
    net, p, xs = stack(dynamics)
    graph = hnir.export(net, p, tmp_path / "stack.nir")
    assert {("input", "fc_in_0"), ("fc_in_0", "lif_0"), ("lif_0", "fc_rec_0"), ("fc_rec_0", "lif_0"),
            ("lif_0", "fc_in_1"), ("fc_in_1", "lif_1"), ("lif_1", "fc_rec_1"), ("fc_rec_1", "lif_1"),
            ("lif_1", "fc_out"), ("fc_out", "readout"), ("readout", "output")} == set(graph.edges)
    # sparse matrices are written dense, zeros off the mask
    torch.testing.assert_close(torch.from_numpy(graph.nodes["fc_rec_1"].weight), net.weight(p, "1.W_rec"),
                               rtol=0, atol=0)
    assert float((torch.from_numpy(graph.nodes["fc_in_1"].weight) == 0).double().mean()) > 0.3
    net2, p2 = hnir.import_(tmp_path / "stack.nir")
    assert net2 == net  # every field: sizes, options, the connectivity (hence the masks)
    assert set(p2) == set(p)
    for k in p:
        torch.testing.assert_close(p2[k], p[k], rtol=1e-14, atol=1e-15, msg=k)
    assert_same_run(net, p, net2, p2, xs)


def test_masks_from_the_zeros_only_when_asked():
    net, p, xs = stack("lava")
    graph = hnir.export(net, p)
    graph.metadata = {}  # a graph from elsewhere: no connectivity recorded
    dense, pd = hnir.import_(graph, dt=net.layers[0].dt)
    assert dense.sizes == (12, 8) and dense.masks == {}
    sparse, ps = hnir.import_(graph, dt=net.layers[0].dt, mask_from_zeros=True)
    assert set(sparse.masks) == {"0.W_rec", "1.W_in", "1.W_rec"}  # 0.W_in has no zero: dense
    for k, m in net.masks.items():
        assert torch.equal(sparse.masks[k], m), k
    assert_same_run(net, p, dense, pd, xs)
    assert_same_run(net, p, sparse, ps, xs)


@pytest.mark.slow  # importing norse takes ~10 s
def test_norse_runs_the_exported_stack_to_our_spikes():
    """norse's graph executor: lif_0 -> fc_in_1 -> lif_1 within a step, the recurrent edges one step late."""
    norse = pytest.importorskip("norse.torch")
    import warnings

    net, p, xs = stack("euler", bias=0.0)  # norse's CubaLIF leaks its current toward v_leak: b = 0
    ref = neuro.simulate(net, p, xs)
    assert_both_layers_fire(ref.spikes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(hnir.export(net, p, readout=False), dt=net.layers[0].dt * 1e-3)
        state, spikes = None, []
        for x in xs.float():
            z, state = module(x, state)
            spikes.append(z)
    assert torch.equal(torch.stack(spikes).to(F64), ref.spikes[..., 12:])  # the graph's output: the last layer


def test_a_one_layer_stack_comes_back_as_a_stack_and_a_sparse_layer_with_its_mask(tmp_path):
    one = models.Stack(n_in=3, n_out=1, layer="lif", sizes=(5,), options={"reset": "zero"}, connectivity=0.6)
    p = one.init_params(seed=1, dtype=F64)
    graph = hnir.export(one, p)
    assert "lif_0" in graph.nodes
    net2, p2 = hnir.import_(graph)
    assert isinstance(net2, models.Stack) and net2 == one and set(p2) == set(p) == {"0.W_in", "0.W_rec", "0.b",
                                                                                     "W_out", "b_out"}
    single = models.make("lif", n_in=3, n_hidden=5, n_out=1, connectivity={"W_in": "fan-in:2"}, reset="zero")
    p = single.init_params(seed=1, dtype=F64)
    p_off = {**p, "W_in": p["W_in"] + 1.0}  # nonzero off the mask: written as zeros
    net2, p2 = hnir.import_(hnir.export(single, p_off))
    assert net2 == single
    torch.testing.assert_close(p2["W_in"], single.weight(p_off, "W_in"), rtol=0, atol=0)


def test_what_a_nir_stack_cannot_hold_is_refused():
    skip = models.make("lif", n_in=2, n_hidden=(3, 3), n_out=1, skip=True, reset="zero")
    with pytest.raises(ValueError, match="skip=True cannot be exported to NIR"):
        hnir.export(skip, skip.init_params())
    alif = models.make("alif", n_in=2, n_hidden=(3, 3), n_out=1)
    with pytest.raises(ValueError, match="a stack of 'alif' layers cannot be exported to NIR"):
        hnir.export(alif, alif.init_params())
    sub = models.make("lif", n_in=2, n_hidden=(3, 3), n_out=1, reset="subtract")
    with pytest.raises(ValueError, match="reset='subtract' cannot be exported to NIR"):
        hnir.export(sub, sub.init_params())
    net, p, _ = stack("euler")
    graph = hnir.export(net, p)
    graph.nodes["lif_1"].tau_mem[:] *= 2
    with pytest.raises(ValueError, match=r"CubaLIF 'lif_1' has tau_mem=40, layer 0 20: a stack's layers share"):
        hnir.import_(graph)
