"""The Brian2 backend on sparse networks and stacks of spiking layers against the torch reference (float64):
only the synapses of the masks exist in Brian2, a stack's feed-forward path has no delay (a spike chain
through two layers by hand), and random sparse stacks give the same spike trains as torch."""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import connectivity

brian2 = pytest.importorskip("brian2")
b2b = pytest.importorskip("neuro.backends.brian2")

F64 = torch.float64
T = 300


def random_stack(layer: str, sizes, seed: int = 0, B: int = 1, ff_gain: float = 6.0, **kw):
    """A random stack (or, with one size given as an int, a single-layer network) driven like the single-layer
    tests' networks (10 channels of 0/1.5 pulses at 100 Hz plus a small positive jitter): excitatory input and
    feed-forward weights (the feed-forward ones ``ff_gain`` times their draw, so that the upper layers fire on
    the sparse spikes below), recurrent weights of both signs, a small random bias."""
    scale = {"lif": 1.8, "alif": 6.0}[layer]
    net = models.make(layer, n_in=10, n_hidden=sizes, n_out=3, rec_scale=1.0, input_scale=scale, **kw)
    p = net.init_params(seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 1000)
    prefixes = [f"{l}." for l in range(len(net.sizes))] if net.name == "stack" else [""]
    for l, pre in enumerate(prefixes):
        p[pre + "W_in"] = p[pre + "W_in"].abs() * (1.0 if l == 0 else ff_gain)
        p[pre + "b"] = 0.02 * torch.rand(p[pre + "b"].shape[0], generator=g, dtype=F64)
    p["b_out"] = torch.randn(3, generator=g, dtype=F64)
    xs = ((torch.rand(T, B, 10, generator=g, dtype=F64) < 0.1).to(F64) * 1.5
          + 0.2 * torch.rand(T, B, 10, generator=g, dtype=F64))
    return net, p, xs


def assert_same(net, ref: neuro.Trace, tr: neuro.Trace, rate_range=(3.0, 120.0)) -> None:
    """Every layer fires within ``rate_range`` Hz; identical spikes; v, i, y (and a) within 1e-9 relative."""
    for sl in getattr(net, "slices", (slice(None),)):
        hz = float(ref.spikes[..., sl].mean()) * 1000.0
        assert rate_range[0] <= hz <= rate_range[1], f"units {sl} of the reference fire at {hz:.1f} Hz"
    assert torch.equal(tr.spikes, ref.spikes), f"{int((tr.spikes != ref.spikes).sum())} spikes differ"
    pairs = [("v", tr.v, ref.v), ("i", tr.extra["i"], ref.extra["i"]), ("y", tr.y, ref.y)]
    if "a" in ref.extra:
        pairs.append(("a", tr.extra["a"], ref.extra["a"]))
    for name, a, b in pairs:
        assert a.dtype == F64 and a.shape == b.shape, name
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 1e-9, f"{name}: relative error {err:.2e}"


def synapse_counts(net, B: int) -> dict[str, int]:
    """The synapses of each Synapses object of the network Brian2 built for ``net`` with batch ``B``."""
    (sim,) = [s for (name, rep, rows, *_), s in b2b._CACHE.items() if rep == repr(net) and rows == B][:1]
    return {name: len(obj) for name, obj in sim.o["by_name"].items() if isinstance(obj, brian2.Synapses)}


# -- a chain by hand: the feed-forward path has no delay, the recurrent one a step ------------------------------
@pytest.mark.parametrize("backend", ["torch", "brian2"])
def test_spike_chain_through_two_layers_by_hand(backend):
    """Layer 0's one neuron gets an input pulse at step 2; layer 1's neuron 0 listens to it (feed-forward),
    layer 1's neuron 1 to layer 1's neuron 0 (recurrent). Every weight makes ``kappa w = 1.05`` (one step of
    input puts v just above v_th = 1; tau_syn = 0.5 lets the current die before a second spike): the spike
    goes up the stack within step 2 and along the recurrence at step 3."""
    net = models.make("lif", n_in=1, n_hidden=(1, 2), n_out=1, tau_syn=0.5)
    w = 1.05 / net.layers[0].kappa
    p = {"0.W_in": torch.tensor([[w]], dtype=F64), "0.W_rec": torch.zeros(1, 1, dtype=F64),
         "0.b": torch.zeros(1, dtype=F64), "1.W_in": torch.tensor([[w], [0.0]], dtype=F64),
         "1.W_rec": torch.tensor([[0.0, 0.0], [w, 0.0]], dtype=F64), "1.b": torch.zeros(2, dtype=F64),
         "W_out": torch.tensor([[1.0, 0.0]], dtype=F64), "b_out": torch.zeros(1, dtype=F64)}
    xs = torch.zeros(8, 1, 1, dtype=F64)
    xs[2] = 1.0
    tr = neuro.simulate(net, p, xs, backend=backend)
    s = tr.spikes[:, 0]
    assert [torch.nonzero(s[:, k])[:, 0].tolist() for k in range(3)] == [[2], [2], [3]]
    # the readout reads layer 1: its neuron 0 spikes at step 2, then kappa_out^(t-2)
    y = [0.0, 0.0] + [net.readout_decay ** (t - 2) for t in range(2, 8)]
    torch.testing.assert_close(tr.y[:, 0, 0], torch.tensor(y, dtype=F64), rtol=1e-12, atol=1e-12)


# -- random sparse networks and stacks: identical spike trains ---------------------------------------------------
def test_sparse_single_layer_lif_creates_only_the_masks_synapses():
    net, p, xs = random_stack("lif", 60, seed=1, B=2, connectivity=0.5)
    m = net.masks["W_rec"]
    assert 0.3 < float(m.double().mean()) < 0.7
    # weights off the mask are not synapses: neither backend reads them
    p["W_rec"] = p["W_rec"] + 0.3 * (~m).to(F64) * torch.randn(60, 60, generator=torch.Generator().manual_seed(0),
                                                               dtype=F64)
    assert_same(net, neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2"))
    assert synapse_counts(net, 2) == {"neuro_recurrent": 2 * int(m.sum())}


def test_sparse_two_layer_lif_stack_equals_torch():
    net, p, xs = random_stack("lif", (40, 30), seed=0, B=1, connectivity=0.5)
    assert set(net.masks) == {"0.W_rec", "1.W_in", "1.W_rec"}
    assert_same(net, neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2"))
    assert synapse_counts(net, 1) == {"neuro_recurrent_0": int(net.masks["0.W_rec"].sum()),
                                      "neuro_feedforward_1": int(net.masks["1.W_in"].sum()),
                                      "neuro_recurrent_1": int(net.masks["1.W_rec"].sum())}


def test_sparse_stack_with_a_batch_and_skip_connections_equals_torch():
    """Three sequences at once (block-diagonal copies), and Graves' skip connections: x reaches layer 1 (an
    input jump of its own, with a sparse mask over its x columns too) and the readout reads both layers."""
    net, p, xs = random_stack("lif", (40, 30), seed=2, B=3, ff_gain=3.0, skip=True,
                              connectivity={"0.W_rec": 0.5, "1.W_in": "fan-in:12", "1.W_rec": 0.3})
    assert_same(net, neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2"))


def test_alif_stack_equals_torch():
    net, p, xs = random_stack("alif", (30, 20), seed=0, B=2, refractory=2)
    assert_same(net, neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2"))


def test_one_layer_stack_is_its_layer_model():
    """A stack of one layer runs in Brian2 as its layer model does (same wiring, same parameters)."""
    single, q, xs = random_stack("lif", 40, seed=3, connectivity=0.5)
    wiring = {"0.W_rec": connectivity.given(single.masks["W_rec"])}
    opts = dict(rec_scale=1.0, input_scale=1.8)
    stack = models.make("stack", n_in=10, n_hidden=40, n_out=3, layer="lif", sizes=(40,), options=opts,
                        connectivity=wiring)
    p = {("0." + k if k in ("W_in", "W_rec", "b") else k): v for k, v in q.items()}
    tr = neuro.simulate(stack, p, xs, backend="brian2")
    assert_same(single, neuro.simulate(single, q, xs), tr)


def test_perturbation_estimate_through_brian2_on_a_sparse_network_equals_torch():
    """Brian2Forward on a sparse LIF network (weights off the mask set, and ignored by both): node
    perturbation's estimate equals the one with torch forward passes, and is zero off the mask."""
    net = models.make("lif", n_in=3, n_hidden=12, n_out=2, input_scale=6.0, connectivity=0.5)
    p = net.init_params(seed=0, dtype=F64)
    p["W_in"] = p["W_in"].abs()
    g = torch.Generator().manual_seed(1)
    p["W_rec"] = p["W_rec"] + 0.5 * (~net.masks["W_rec"]).to(F64) * torch.randn(12, 12, generator=g, dtype=F64)
    xs = torch.rand(15, 2, 3, generator=g, dtype=F64)
    ys = torch.randn(15, 2, 2, generator=g, dtype=F64)
    assert float(neuro.simulate(net, p, xs).spikes.mean()) > 0.02
    g_torch = neuro.grad_estimate(net, p, "np", xs, ys, seed=3, sigma=1e-2, samples=2)
    g_b2 = neuro.grad_estimate(net, p, "np", xs, ys, seed=3, sigma=1e-2, samples=2,
                               forward=b2b.Brian2Forward(net))
    assert float(g_torch["W_rec"].abs().max()) > 0
    assert not g_b2["W_rec"][~net.masks["W_rec"]].any()
    for k in g_torch:
        assert float((g_b2[k] - g_torch[k]).abs().max()) <= 1e-9 * max(float(g_torch[k].abs().max()), 1e-300), k


# -- what the backend refuses ---------------------------------------------------------------------------------
def test_stacks_brian2_cannot_express():
    net = models.make("rate", n_in=2, n_hidden=(4, 4), n_out=1)
    p = net.init_params(seed=0, dtype=F64)
    with pytest.raises(ValueError, match="stack of 'rate' layers is not expressed by backend='brian2'.*'lif', 'alif'"):
        neuro.simulate(net, p, torch.zeros(5, 1, 2, dtype=F64), backend="brian2")
    lava = models.make("lif", n_in=2, n_hidden=(4, 4), n_out=1, dynamics="lava")
    with pytest.raises(ValueError, match="dynamics='lava'.*backend='torch'"):
        neuro.simulate(lava, lava.init_params(seed=0, dtype=F64), torch.zeros(5, 1, 2, dtype=F64), backend="brian2")
    with pytest.raises(ValueError, match="'stack' is not expressed by Brian2Forward.*backend='torch'"):
        b2b.Brian2Forward(models.make("lif", n_in=2, n_hidden=(4, 4), n_out=1))


@pytest.mark.slow
def test_sparse_stack_cpp_standalone_equals_torch():
    """The compiled target builds the same schedule: a sparse ALIF stack with a batch of two, run twice on one
    build (new weights the second time). (Cython builds the same objects in the same order; compiling the stack's
    many objects takes minutes, so it is left to the single-layer cython tests.)"""
    for target in ("cpp_standalone",):
        for seed in (4, 5):
            net, p, xs = random_stack("alif", (30, 20), seed=seed, B=2, refractory=2, connectivity=0.5)
            assert_same(net, neuro.simulate(net, p, xs), neuro.simulate(net, p, xs, backend="brian2", target=target))
    b2b.clear_cache()
