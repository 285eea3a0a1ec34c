"""Lava export of stacks and sparse networks, and Loihi's limits checked at export.

* a 2-layer sparse stack (connectivity 0.5, firing in both layers): Lava floating point against the torch
  ``lif`` stack (``dynamics="lava"``; identical spikes, v, current and readout to float64 rounding), and Lava
  fixed point against the torch ``lif-loihi`` stack (bit-identical), after each layer's latency (l steps) is
  removed;
* a sparse single-layer network runs its masked matrices (entries off the mask are ignored, as in torch);
* Loihi's limits (fan-in, synapse memory per core, cores per chip, weight bits): the synapse memory against a
  hand count of NengoLoihi's weight-memory format, and a network that fits only when its mask makes it sparse.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from hw_targets.lava import _compat
from hw_targets.lava.constraints import LOIHI, LoihiLimits, check_loihi, loihi_mapping

needs_lava = pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")
F64 = torch.float64
T = 30


def assert_both_layers_fire(spikes: torch.Tensor, n0: int) -> None:
    for what, s in (("layer 0", spikes[..., :n0]), ("layer 1", spikes[..., n0:])):
        rate = float(s.mean())
        assert 0.05 <= rate <= 0.7, f"{what} fires in {rate:.0%} of its steps, expected 5-70%"


def float_stack():
    net = models.make("lif", n_in=4, n_hidden=(6, 5), n_out=2, connectivity=0.5, dynamics="lava", reset="zero",
                      v_reset=0.0, bias_mean=0.0, bias_std=0.0)
    p = net.init_params(seed=0, dtype=F64)
    for l in (0, 1):
        p[f"{l}.W_in"] = p[f"{l}.W_in"].abs() * 10.0
        p[f"{l}.b"] = p[f"{l}.b"] + 0.1
    p["b_out"] = torch.tensor([0.1, -0.2], dtype=F64)
    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(T, 2, 4, generator=g, dtype=F64) < 0.3).to(F64)
    return net, p, xs


def loihi_stack(skip: bool = False):
    """A 2-layer sparse ``lif-loihi`` stack with integer weights that fire both layers (both shift directions)."""
    net = models.make("lif-loihi", n_in=4, n_hidden=(6, 5), n_out=2, connectivity=0.5, weight_exp_in=1,
                      weight_exp_rec=-1, skip=skip)
    p = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    for l, n_pre in ((0, 4), (1, 10 if skip else 6)):
        n = net.sizes[l]
        p[f"{l}.W_in"] = 2.0 * torch.randint(5, 50, (n, n_pre), generator=g).to(F64)
        p[f"{l}.W_rec"] = 2.0 * torch.randint(-128, 60, (n, n), generator=g).to(F64)
        p[f"{l}.b"] = torch.randint(0, 40, (n,), generator=g).to(F64)
    p = net.mask_params(p)
    xs = (torch.rand(T, 2, 4, generator=g, dtype=F64) < 0.3).to(F64)
    return net, p, xs


@needs_lava
@pytest.mark.slow
def test_float_lava_runs_a_sparse_stack_as_torch_after_each_layers_latency():
    import hw_targets.lava as hl

    net, p, xs = float_stack()
    ln = hl.export(net, p)
    assert ln.latency == (0, 1)
    ref = neuro.simulate(net, p, xs)
    got = ln.run(xs)
    assert_both_layers_fire(ref.spikes, 6)
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.extra["i"], ref.extra["i"], rtol=0, atol=1e-12)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=1e-12)
    # layer 1 reads layer 0's spikes of the same step: it fires within the step layer 0 does
    both = (ref.spikes[..., :6].sum(-1) > 0) & (ref.spikes[..., 6:].sum(-1) > 0)
    assert bool(both.any())


@needs_lava
@pytest.mark.slow
def test_fixed_point_lava_runs_a_sparse_lif_loihi_stack_bit_for_bit():
    import hw_targets.lava as hl

    net, p, xs = loihi_stack()
    ref = neuro.simulate(net, p, xs)
    got = neuro.simulate(net, p, xs, backend="lava-fixed")
    assert_both_layers_fire(ref.spikes, 6)
    for field in ("spikes", "v", "y"):
        assert torch.equal(getattr(got, field), getattr(ref, field)), field
    assert torch.equal(got.extra["u"], ref.extra["u"])
    ln = hl.export(net, p)
    assert ln.fixed_point and ln.mapping.cores_per_layer == (1, 1)


@needs_lava
@pytest.mark.slow
def test_skip_connections_reach_each_layer_at_its_latency():
    """skip=True: layer 1 reads [z^0_t, x_t]; x reaches it through a ring buffer one step late (its latency)."""
    net, p, xs = loihi_stack(skip=True)
    assert net.param_shapes()["1.W_in"] == (5, 10) and net.param_shapes()["W_out"] == (2, 11)
    ref = neuro.simulate(net, p, xs)
    got = neuro.simulate(net, p, xs, backend="lava-fixed")
    assert_both_layers_fire(ref.spikes, 6)
    for field in ("spikes", "v", "y"):
        assert torch.equal(getattr(got, field), getattr(ref, field)), field
    fnet = models.make("lif", n_in=4, n_hidden=(6, 5), n_out=2, connectivity=0.5, skip=True, dynamics="lava",
                       reset="zero", v_reset=0.0)
    fp = fnet.init_params(seed=3, dtype=F64)
    fp["0.W_in"] = fp["0.W_in"].abs() * 10.0
    fp["1.W_in"] = fp["1.W_in"].abs() * 10.0
    ref = neuro.simulate(fnet, fp, xs)
    got = neuro.simulate(fnet, fp, xs, backend="lava")
    assert_both_layers_fire(ref.spikes, 6)
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=1e-12)


@needs_lava
@pytest.mark.slow
def test_a_sparse_single_layer_runs_its_masked_matrices():
    """Entries off the mask (a trained matrix may hold them) are ignored in Lava as in torch."""
    import hw_targets.lava as hl

    net = models.make("lif", n_in=3, n_hidden=8, n_out=2, connectivity={"W_rec": 0.5, "W_in": "fan-in:2"},
                      dynamics="lava", reset="zero", v_reset=0.0)
    p = net.init_params(seed=2, dtype=F64)
    off = {k: 1.0 - net.masks[k].to(F64) for k in ("W_in", "W_rec")}
    p = {**p, "W_in": 0.2 + 0.8 * off["W_in"], "W_rec": p["W_rec"] + 0.5 * off["W_rec"]}  # nonzero off the masks
    g = torch.Generator().manual_seed(2)
    xs = (torch.rand(T, 1, 3, generator=g, dtype=F64) < 0.4).to(F64)
    ref = neuro.simulate(net, p, xs)
    assert 0.05 <= float(ref.spikes.mean()) <= 0.7
    dense = models.make("lif", n_in=3, n_hidden=8, n_out=2, dynamics="lava", reset="zero", v_reset=0.0)
    assert not torch.equal(neuro.simulate(dense, p, xs).spikes, ref.spikes)  # the entries off the masks matter
    got = hl.export(net, p).run(xs)
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)


def test_stacks_lava_cannot_run_are_refused_by_name():
    import hw_targets.lava as hl

    alif = models.make("alif", n_in=2, n_hidden=(3, 3), n_out=1)
    with pytest.raises(ValueError, match="a stack of 'alif' layers cannot be exported to Lava"):
        hl.export(alif, alif.init_params())
    euler = models.make("lif", n_in=2, n_hidden=(3, 3), n_out=1, dynamics="euler", reset="zero")
    with pytest.raises(ValueError, match="dynamics='euler' cannot be exported to Lava"):
        hl.export(euler, euler.init_params())


# -- Loihi's limits -------------------------------------------------------------------------------------------

def _axon_bits(n_syn: int, index_bits: int = 0) -> int:
    """NengoLoihi's weight memory of one axon's ``n_syn`` synapses, written out: blocks of 64, each
    ``n (8 + index) + 10`` bits rounded up to 64-bit words."""
    bits = 0
    for start in range(0, n_syn, 64):
        n = min(64, n_syn - start)
        raw = n * (8 + index_bits) + 10
        bits += ((raw + 63) // 64) * 64
    return bits


def test_fan_in_beyond_the_input_axons_of_a_core_is_refused_and_a_mask_makes_it_fit():
    wide = models.make("lif", n_in=4100, n_hidden=2, n_out=1)
    with pytest.raises(ValueError, match=r"^the network: neuron 0 has fan-in 4102 = 4100 \(W_in\) \+ 2 \(W_rec\), "
                                         r"beyond Loihi's 4096 input axons per core"):
        loihi_mapping(wide)
    sparse = models.make("lif", n_in=4100, n_hidden=2, n_out=1, connectivity={"W_in": "fan-in:100"})
    m = loihi_mapping(sparse)
    assert m.fan_in == (102,) and m.cores == 1


def test_synapse_memory_per_core_against_a_hand_count():
    dense = models.make("lif", n_in=10, n_hidden=1024, n_out=1)
    need = 1034 * _axon_bits(1024)  # 1034 sources, each 1024 synapses into the core: 9,529,344 bits
    assert need == 9529344
    with pytest.raises(ValueError, match=rf"^the network: synapses per core at 1024 neurons per core need {need} "
                                         r"bits of synapse memory, beyond Loihi's 1048576 bits per core"):
        loihi_mapping(dense, neurons_per_core=1024)
    # the most neurons per core that fit: 64 (1034 axons x 576 bits = 595,584); 128 needs 1,191,168
    assert 1034 * _axon_bits(64) <= 2 ** 20 < 1034 * _axon_bits(128)
    m = loihi_mapping(dense)
    assert m.neurons_per_core == (64,) and m.cores == 16 and m.synapse_bits == (1034 * _axon_bits(64),)
    with pytest.raises(ValueError, match=r"needs 16 cores .* beyond Loihi's 8 cores per chip"):
        loihi_mapping(dense, LoihiLimits(cores_per_chip=8))


def test_a_mask_makes_a_network_fit_one_core():
    """Dense, 1024 neurons do not fit one core; with fan-in 8 (recurrent) and 2 (input) they do, each sparse
    synapse costing 8 weight + 10 index bits."""
    sparse = models.make("lif", n_in=10, n_hidden=1024, n_out=1, connectivity={"W_rec": "fan-in:8", "W_in": "fan-in:2"})
    m = loihi_mapping(sparse, neurons_per_core=1024)
    masks = [sparse.masks["W_in"], sparse.masks["W_rec"]]
    hand = sum(_axon_bits(int(c), 10) for mask in masks for c in mask.sum(0) if c > 0)
    assert m.synapse_bits == (hand,) and hand <= 2 ** 20 and m.cores == 1 and m.fan_in == (10,)


def test_export_checks_the_limits_of_every_layer():
    import hw_targets.lava as hl

    net = models.make("lif", n_in=4100, n_hidden=(3, 2), n_out=1, dynamics="lava", reset="zero")
    p = net.init_params()
    with pytest.raises(ValueError, match=r"^layer 0: neuron 0 has fan-in 4103"):
        hl.export(net, p)
    assert hl.export(net, p, limits=None).mapping is None
    net = models.make("lif", n_in=2, n_hidden=(2, 40), n_out=1, dynamics="lava", reset="zero")
    small = LoihiLimits(synapse_bits_per_core=2000)  # layer 0: 4 axons x 64 bits fit; layer 1: 42 x 64 do not
    with pytest.raises(ValueError, match=r"^layer 1: synapses per core at 1 neurons per core need 2688 bits"):
        hl.export(net, net.init_params(), limits=small)


def test_weight_bits_of_a_fixed_point_network():
    net, p, _ = loihi_stack()
    assert check_loihi(net, p).cores == 2
    six = LoihiLimits(weight_bits=6)
    big = float(p["0.W_in"].abs().max())
    with pytest.raises(ValueError, match=r"^weight bits: params\['0.W_in'\] needs 7-bit mantissas .* beyond "
                                         r"Loihi's 6 bits \(Dense weights in \[-64, 62\]\)"):
        check_loihi(net, p, six)
    assert 64 <= big < 128  # mantissas up to 49: 7 bits
    assert check_loihi(net, {k: v.clamp(-64, 62) for k, v in p.items()}, six).cores == 2
    assert LOIHI.weight_bits == 8
