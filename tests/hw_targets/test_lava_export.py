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
    with pytest.raises(ValueError, match=r"params\['b'\] of 'lif-loihi' must be integers \(13-bit bias mantissa\)"):
        hl.export(qnet, {**qp, "b": qp["b"] + 5000.0}, fixed_point=True)
    with pytest.raises(ValueError, match="vth: a 'lif-loihi' network is already quantized"):
        hl.export(qnet, qp, vth=100)
    with pytest.raises(ValueError, match="backend='lava-fixed' runs it"):
        neuro.simulate(qnet, qp, xs[:3, :, :2], backend="lava")
    with pytest.raises(ValueError, match="integer inputs"):
        hl.export(qnet, qp, fixed_point=True).run(xs[:5, :, :2] * 0.5)


def test_backends_are_registered():
    assert {"lava", "lava-fixed"} <= set(neuro.backends.available())


def test_every_option_lava_cannot_run_is_named_in_one_error():
    import hw_targets.lava as hl

    net = models.make("lif", n_in=2, n_hidden=3, n_out=1, refractory=2)  # dynamics='exact', reset='subtract'
    with pytest.raises(ValueError) as e:
        hl.export(net, net.init_params())
    msg = str(e.value)
    assert "\n" not in msg
    for bad in ("dynamics='exact'", "reset='subtract'", "refractory=2"):
        assert f"{bad} cannot be exported to Lava" in msg, msg
    assert msg.endswith("build the network with dynamics='lava', reset='zero', refractory=0")


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_parameters_are_refused_by_name(bad, fixed):
    import hw_targets.lava as hl

    net, p, _ = network(0, n_in=2, n=3)
    W_rec = p["W_rec"].clone()
    W_rec[0, 1] = bad
    b = p["b"].clone()
    b[:] = bad
    with pytest.raises(ValueError, match=r"^params\['W_rec'\] has 1 NaN or infinite value \(of 9\), params\['b'\] "
                                         r"has 3 NaN or infinite values \(of 3\): a network with them cannot be "
                                         r"exported to Lava"):
        hl.export(net, {**p, "W_rec": W_rec, "b": b}, fixed_point=fixed)
    qnet, qp = hl.quantize(net, p)
    with pytest.raises(ValueError, match=r"^params\['W_out'\] has 2 NaN"):
        hl.export(qnet, {**qp, "W_out": qp["W_out"].index_fill(1, torch.tensor([0]), bad)})


def test_a_lif_loihi_network_exports_as_it_is_with_the_integers_it_computes_with():
    """Trained ``lif-loihi`` parameters are not integers (the model rounds them as it runs): the export holds
    the integers the model computes with, and the torch model on them is the same network, step for step."""
    import hw_targets.lava as hl

    net, p, xs = network(5, n_in=6, n=10)
    qnet, qp = hl.quantize(net, p)
    g = torch.Generator().manual_seed(0)
    latent = {k: v + (torch.rand(v.shape, generator=g, dtype=F64) - 0.5) * (1.9 if k != "b" else 0.9)
              for k, v in qp.items()}  # what training leaves: near the integers, not on them
    latent["W_rec"][0, 0] = 300.7  # beyond 8 bits: the model clips it
    assert not torch.equal(latent["W_in"], torch.round(latent["W_in"]))
    for fixed in (False, True):  # a lif-loihi network is fixed point either way
        ln = hl.export(qnet, latent, fixed_point=fixed)
        assert ln.fixed_point and ln.net is qnet
        for k in ("W_in", "W_rec"):
            v = ln.params[k]
            assert torch.equal(v, torch.round(v)) and torch.all(v.remainder(2) == 0)
            assert -256 <= float(v.min()) and float(v.max()) <= 254
        assert torch.equal(ln.params["b"], torch.round(latent["b"]))
        assert torch.equal(ln.params["W_out"], latent["W_out"])
    xs = xs[:200, :, :6]
    ref, got = neuro.simulate(qnet, latent, xs), neuro.simulate(qnet, ln.params, xs)
    assert ref.spikes.sum() > 0
    for field in ("spikes", "v", "y"):
        assert torch.equal(getattr(got, field), getattr(ref, field)), field


def test_an_empty_input_gives_an_empty_trace_without_running_lava():
    import hw_targets.lava as hl

    net, p, xs = network(0, n_in=3, n=4)
    qnet, qp = hl.quantize(net, p)
    for ln, current in ((hl.export(net, p), "i"), (hl.export(qnet, qp), "u")):
        tr = ln.run(xs[:0, :, :3])
        assert tr.y.shape == (0, 2, 2) and tr.spikes.shape == tr.v.shape == tr.extra[current].shape == (0, 2, 4)


@needs_lava
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["lava", "lava-fixed"])
def test_an_empty_input_gives_the_fields_of_a_one_step_trace(backend):
    net, p, xs = network(0, n_in=3, n=4)
    one = neuro.simulate(net, p, xs[:1, :, :3], backend=backend)
    empty = neuro.simulate(net, p, xs[:0, :, :3], backend=backend)
    assert set(empty.extra) == set(one.extra)
    for a, b in [(empty.y, one.y), (empty.spikes, one.spikes), (empty.v, one.v),
                 *((empty.extra[k], one.extra[k]) for k in one.extra)]:
        assert a.shape == (0, *b.shape[1:]) and a.dtype == b.dtype
