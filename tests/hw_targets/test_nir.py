"""NIR export and import of the recurrent ``lif`` network.

Oracles: export -> file -> import gives the same spikes, v and readout (float64); and norse 1.1's own NIR
reader (``norse.torch.from_nir``, an independent implementation of CubaLIF) runs the exported recurrent
graph to the same spikes and v as our ``euler`` and ``lava`` dynamics, and reads an ``exact`` export as
the ``euler`` discretisation of the same ODE.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import models
import neuro

nir = pytest.importorskip("nir")
from hw_targets import nir as hnir  # noqa: E402

F64 = torch.float64


def network(dynamics: str, seed: int = 0, bias: float = 0.01):
    net = models.make("lif", n_in=10, n_hidden=30, n_out=2, dynamics=dynamics, reset="zero", rec_scale=1.0,
                      tau_out=15.0, surrogate="fast-sigmoid", bias_mean=0.0, bias_std=0.0)  # b is set below
    p = net.init_params(seed=seed, dtype=F64)
    p["W_in"] = p["W_in"] * 40.0
    p["b"] = p["b"] + bias
    p["b_out"] = p["b_out"] + 0.3
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(300, 2, 10, generator=g, dtype=F64) < 0.05).to(F64)
    return net, p, xs


@pytest.mark.parametrize("dynamics", ["exact", "euler", "lava"])
def test_export_to_a_file_then_import_gives_the_same_outputs(dynamics, tmp_path):
    net, p, xs = network(dynamics)
    path = tmp_path / "net.nir"
    graph = hnir.export(net, p, path)
    assert ("lif", "fc_rec") in graph.edges and ("fc_rec", "lif") in graph.edges  # the recurrent loop
    net2, p2 = hnir.import_(path)
    assert net2 == net  # every field, the time constants included (restored exactly from the metadata)
    ref, got = neuro.simulate(net, p, xs), neuro.simulate(net2, p2, xs)
    assert 0.005 < float(ref.spikes.mean()) < 0.1
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=1e-12)


def dataclass_fields(net, skip=()):
    import dataclasses

    return {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.name not in skip}


def _find_v(state):
    """The membrane potential in norse's (nested tuple) CubaLIF state: the LIF part's ``v``."""
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    if isinstance(state, LIFBoxFeedForwardState):
        return state.v
    found = [v for s in state if isinstance(s, tuple) and (v := _find_v(s)) is not None]
    return found[0] if found else None


def run_norse(graph, xs, dt_ms):
    import norse.torch as norse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = norse.from_nir(graph, dt=dt_ms * 1e-3)
        state, spikes, vs = None, [], []
        for x in xs.float():
            z, state = module(x, state)
            spikes.append(z)
            vs.append(_find_v(state.state["lif"]))
    return torch.stack(spikes).to(F64), torch.stack(vs).to(F64)


@pytest.mark.parametrize("dynamics", ["euler", "lava"])
def test_norse_reads_the_export_and_runs_it_to_our_spikes(dynamics):
    pytest.importorskip("norse")
    net, p, xs = network(dynamics, seed=1, bias=0.0)  # norse's CubaLIF leaks its current toward v_leak: b = 0
    ref = neuro.simulate(net, p, xs)
    spikes, v = run_norse(hnir.export(net, p, readout=False), xs, net.dt)
    assert 0.005 < float(ref.spikes.mean()) < 0.1
    assert torch.equal(spikes, ref.spikes)
    torch.testing.assert_close(v, ref.v, rtol=0, atol=1e-5)  # norse runs in float32


def test_norse_reads_an_exact_export_as_the_euler_discretisation():
    pytest.importorskip("norse")
    net, p, xs = network("exact", seed=2, bias=0.0)
    spikes, _ = run_norse(hnir.export(net, p, readout=False), xs, net.dt)
    euler = neuro.simulate(models.make("lif", **{**dataclass_fields(net), "dynamics": "euler"}), p, xs)
    exact = neuro.simulate(net, p, xs)
    assert torch.equal(spikes, euler.spikes)
    assert not torch.equal(spikes, exact.spikes)  # the discretisations do differ


def test_a_graph_without_our_metadata_is_read_as_euler():
    n = 4
    W_in, W_rec = np.full((n, 2), 0.3), np.eye(n)[::-1] * 0.1
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([2])}),
        "a": nir.Linear(weight=W_in),
        "cell": nir.CubaLIF(tau_syn=np.full(n, 5e-3), tau_mem=np.full(n, 20e-3), r=np.full(n, 2.0), v_leak=np.zeros(n),
                            v_threshold=np.full(n, 1.0), w_in=np.full(n, 5.0)),
        "rec": nir.Linear(weight=W_rec),
        "out": nir.Output(output_type={"output": np.array([n])}),
    }, edges=[("in", "a"), ("a", "cell"), ("cell", "rec"), ("rec", "cell"), ("cell", "out")])
    net, p = hnir.import_(graph)
    assert (net.dynamics, net.dt, net.n_out) == ("euler", 1.0, n)
    assert (net.tau_syn, net.tau_mem) == (pytest.approx(5.0), pytest.approx(20.0))
    # w_in r dt / tau_syn = 5 * 2 / 5 = 2: folded into the weights
    torch.testing.assert_close(p["W_in"], torch.from_numpy(W_in) * 2.0)
    torch.testing.assert_close(p["W_rec"], torch.from_numpy(W_rec) * 2.0)


def test_what_nir_cannot_hold_is_refused():
    for kw, msg in (({"reset": "subtract"}, "reset='subtract' cannot be exported to NIR"),
                    ({"reset": "zero", "refractory": 2}, "refractory=2 cannot be exported to NIR")):
        net = models.make("lif", n_in=2, n_hidden=3, n_out=1, **kw)
        with pytest.raises(ValueError, match=msg):
            hnir.export(net, net.init_params())
    alif = models.make("alif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="model 'alif' cannot be exported to NIR"):
        hnir.export(alif, alif.init_params())
    net, p, _ = network("euler")
    graph = hnir.export(net, p)
    graph.nodes["lif"].tau_mem[0] *= 2
    with pytest.raises(ValueError, match="CubaLIF tau_mem varies across neurons"):
        hnir.import_(graph)
