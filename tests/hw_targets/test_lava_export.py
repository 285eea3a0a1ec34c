"""Export to Lava: the Lava processes against the torch models, step for step.

* floating point: Lava's ``PyLifModelFloat`` + ``PyDenseModelFloat`` against ``models.lif`` with
  ``dynamics="lava"`` (identical spikes, v and the current to float64 rounding, the host readout equal);
* fixed point: Lava's bit-accurate ``PyLifModelBitAcc`` + ``PyDenseModelBitAcc`` against ``lif-loihi``
  (bit-identical u, v, spikes and readout), the network quantized by ``hw_targets.lava.quantize``.

Random recurrent networks, several seeds, T = 500, Poisson inputs; each asserts a firing rate of 5-50 Hz.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from hw_targets.lava import _compat

needs_lava = pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")
F64 = torch.float64
T = 500


def network(seed: int, n_in: int = 20, n: int = 40, **kw):
    """A random recurrent ``lif`` in Lava's form, driven to fire at ~10-40 Hz by a bias and Poisson inputs."""
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=2, dynamics="lava", reset="zero", v_reset=0.0,
                      rec_scale=1.0, bias_mean=0.0, bias_std=0.0, **kw)  # its own bias below
    p = net.init_params(seed=seed, dtype=F64)
    p["W_in"] = p["W_in"] * 40.0
    p["b"] = p["b"] + 0.8 * (1.0 - net.alpha)  # rests at 0.8 thresholds
    p["b_out"] = torch.tensor([0.1, -0.2], dtype=F64)
    g = torch.Generator().manual_seed(1000 + seed)
    xs = (torch.rand(T, 2, n_in, generator=g, dtype=F64) < 0.02).to(F64)
    return net, p, xs


def assert_fires(spikes: torch.Tensor) -> None:
    hz = float(spikes.mean()) * 1000.0  # dt = 1 ms
    assert 5.0 <= hz <= 50.0, f"mean rate {hz:.1f} Hz, expected 5-50 Hz"


@needs_lava
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floating_point_lava_runs_the_torch_lif_exactly(seed):
    net, p, xs = network(seed)
    ref = neuro.simulate(net, p, xs)
    got = neuro.simulate(net, p, xs, backend="lava")
    assert_fires(ref.spikes)
    assert torch.equal(got.spikes, ref.spikes)
    torch.testing.assert_close(got.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.extra["i"], ref.extra["i"], rtol=0, atol=1e-12)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=1e-12)
    # no step lost on the input path: the first step's current is W_in x_0 (Dense's delay is compensated)
    torch.testing.assert_close(got.extra["i"][0], xs[0] @ p["W_in"].T, rtol=0, atol=1e-15)


@needs_lava
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_point_lava_is_the_integer_model_bit_for_bit(seed):
    import hw_targets.lava as hl

    net, p, xs = network(seed)
    qnet, qp = hl.quantize(net, p)
    assert qnet.weight_exp_rec < 0 < qnet.weight_exp_in  # both shift directions are exercised
    ref = neuro.simulate(qnet, qp, xs)
    got = neuro.simulate(net, p, xs, backend="lava-fixed")  # quantizes the same way, then runs Lava
    assert_fires(ref.spikes)
    assert torch.equal(got.spikes, ref.spikes)
    assert torch.equal(got.v, ref.v)
    assert torch.equal(got.extra["u"], ref.extra["u"])
    assert torch.equal(got.y, ref.y)


@needs_lava
@pytest.mark.slow
def test_batch_split_over_several_runs_gives_the_same_trace():
    """Copies of the network in one run (block-diagonal weights) and one run per sequence agree."""
    import hw_targets.lava as hl

    net, p, xs = network(3, n_in=5, n=8)
    xs = xs[:60, :, :5]
    qnet, qp = hl.quantize(net, p)
    ref = neuro.simulate(qnet, qp, xs)
    assert ref.spikes.sum() > 0
    one_run = hl.export(qnet, qp, fixed_point=True).run(xs)
    split = hl.LavaNetwork(qnet, qp, fixed_point=True, max_neurons=8).run(xs)  # two runs of one copy
    for tr in (one_run, split):
        assert torch.equal(tr.spikes, ref.spikes) and torch.equal(tr.v, ref.v) and torch.equal(tr.y, ref.y)


@pytest.mark.parametrize("option,value,needed", [("dynamics", "exact", "'lava'"), ("dynamics", "euler", "'lava'"),
                                                 ("reset", "subtract", "'zero'"), ("v_reset", -0.5, "0.0"),
                                                 ("refractory", 2, "0")])
def test_options_lava_cannot_run_are_refused_by_name(option, value, needed):
    import hw_targets.lava as hl

    kw = {"dynamics": "lava", "reset": "zero", option: value}
    net = models.make("lif", n_in=2, n_hidden=3, n_out=1, **kw)
    p = net.init_params(seed=0)
    for fixed in (False, True):
        with pytest.raises(ValueError, match=rf"{option}={value!r} cannot be exported to Lava: .*{option}={needed}"):
            hl.export(net, p, fixed_point=fixed)
    with pytest.raises(ValueError, match=rf"{option}={value!r}"):
        hl.quantize(net, p)


def test_other_bad_exports_are_refused():
    import hw_targets.lava as hl

    alif = models.make("alif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="model 'alif' cannot be exported to Lava: only 'lif'"):
        hl.export(alif, alif.init_params())
    net, p, xs = network(0, n_in=2, n=3)
    with pytest.raises(ValueError, match="need fixed_point=True"):
        hl.export(net, p, vth=100)
    qnet, qp = hl.quantize(net, p)
    with pytest.raises(ValueError, match="export it with fixed_point=True"):
        hl.export(qnet, qp)
    with pytest.raises(ValueError, match=r"params\['W_rec'\] .* must be even integers"):
        hl.export(qnet, {**qp, "W_rec": qp["W_rec"] + 1.0}, fixed_point=True)
    with pytest.raises(ValueError, match="integer inputs"):
        hl.export(qnet, qp, fixed_point=True).run(xs[:5, :, :2] * 0.5)


def test_backends_are_registered():
    assert {"lava", "lava-fixed"} <= set(neuro.backends.available())
