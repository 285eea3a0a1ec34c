"""``hw_targets.lava.quantize``: the integer settings, their error bounds, the overflow errors and saturation.

No Lava run here (the Lava processes are compared with the integer model in test_lava_export.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro
from hw_targets.lava.quantization import dequantize, quantize

F64 = torch.float64


def network(seed=0, n_in=20, n=40, **kw):
    net = models.make("lif", n_in=n_in, n_hidden=n, n_out=2, dynamics="lava", reset="zero", rec_scale=1.0,
                      bias_mean=0.0, bias_std=0.0, **kw)  # b is set below
    p = net.init_params(seed=seed, dtype=F64)
    p["W_in"] = p["W_in"] * 40.0
    p["b"] = p["b"] + 0.8 * (1.0 - net.alpha)
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(500, 4, n_in, generator=g, dtype=F64) < 0.02).to(F64)
    return net, p, xs


def test_settings_follow_lavas_formulas_and_errors_are_within_half_a_step():
    net, p, _ = network(tau_syn=7.0, tau_mem=15.0, v_th=1.5)
    qnet, qp, report = quantize(net, p, vth=2000, report=True)
    s = 64 * 2000 / 1.5
    assert qnet.scale == pytest.approx(s) and qnet.vth == 2000
    assert qnet.du == 4095 - round(4096 * math.exp(-1 / 7)) and qnet.dv == 4096 - round(4096 * math.exp(-1 / 15))
    back = dequantize(qnet, qp)
    for k, e in (("W_in", qnet.weight_exp_in), ("W_rec", qnet.weight_exp_rec)):
        step = 2 * 2.0 ** e * 64 / s  # even Dense weights: a step of 2 mantissa units
        assert float((back[k] - p[k]).abs().max()) <= step / 2 * (1 + 1e-12)
        m = qp[k] / 2
        assert torch.equal(m, torch.round(m)) and -128 <= float(m.min()) and float(m.max()) <= 127
        # the exponent is the smallest that holds the matrix: one lower would overflow 8 bits
        assert float(torch.round(p[k] * s / 64 / 2.0 ** (e - 1) / 2).abs().max()) > 127
    assert float((back["b"] - p["b"]).abs().max()) <= 0.5 * 2 ** qnet.bias_exp / s * (1 + 1e-12)
    assert report.errors["W_in"][0] == pytest.approx(float((back["W_in"] - p["W_in"]).abs().max()))
    assert report.settings["vth"] == 2000 and "W_rec" in str(report)
    assert qp["W_in"].dtype == F64 and torch.equal(qp["W_out"], p["W_out"])


def test_the_integer_network_behaves_like_the_float_one():
    """Statistical oracle: the quantized network's spikes agree with the float network's on > 97% of
    (step, unit) entries and the mean rates agree within 5%; a wrong scale (e.g. the activation or threshold
    shift forgotten) makes the integer network silent or saturated."""
    net, p, xs = network(1)
    ref = neuro.simulate(net, p, xs)
    qnet, qp = quantize(net, p)
    got = neuro.simulate(qnet, qp, xs)
    assert 0.005 < float(ref.spikes.mean()) < 0.05
    assert float((got.spikes == ref.spikes).to(F64).mean()) > 0.97
    assert float(got.spikes.mean()) == pytest.approx(float(ref.spikes.mean()), rel=0.05)
    # v in the float network's units: close wherever the spike histories have not diverged
    assert float((got.v / qnet.scale - ref.v).abs().median()) < 0.01


def test_weights_beyond_8_bits_name_the_value_and_what_would_fit():
    net, p, _ = network(2)
    qnet, _ = quantize(net, p)
    e = qnet.weight_exp_in
    with pytest.raises(ValueError, match=rf"W_in: max \|w\| = .* beyond 8 bits .*use weight_exp >= {e}") as info:
        quantize(net, p, weight_exp_in=e - 1)
    scale = float(str(info.value).split("scale <= ")[1].split(",")[0])
    quantize(net, p, scale=scale, weight_exp_in=e - 1)  # the suggested scale fits
    qnet2, qp2, report = quantize(net, p, weight_exp_in=e - 1, saturate=True, report=True)
    assert any(s.startswith("W_in") for s in report.saturated)
    assert float(qp2["W_in"].max()) == 254.0 or float(qp2["W_in"].min()) == -256.0


def test_vth_beyond_17_bits_names_the_scale_range():
    net, p, _ = network(3)
    with pytest.raises(ValueError, match=r"vth = v_th \* scale / 64 = 262144 .* beyond 17 bits .*use a scale in"):
        quantize(net, p, scale=64 * 262144.0)
    with pytest.raises(ValueError, match=r"vth=131072 is invalid"):
        quantize(net, p, vth=2 ** 17)
    qnet, _, report = quantize(net, p, scale=64 * 262144.0, saturate=True, report=True)
    assert qnet.vth == 2 ** 17 - 1 and "vth" in report.saturated[0]


def test_decays_beyond_12_bits_and_bad_models_are_refused():
    net, p, _ = network(0, tau_syn=1e5)
    with pytest.raises(ValueError, match=r"du=-1 \(from tau_syn=100000.0.* beyond 12 bits"):
        quantize(net, p)
    assert quantize(net, p, saturate=True)[0].du == 0
    exact = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="dynamics='exact' cannot be exported to Lava"):
        quantize(exact, exact.init_params())


def test_float32_params_give_float32_integer_params():
    net, p, xs = network(4)
    p32 = {k: v.float() for k, v in p.items()}
    qnet, qp = quantize(net, p32)
    assert {v.dtype for v in qp.values()} == {torch.float32}
    a = neuro.simulate(qnet, qp, xs.float())
    b = neuro.simulate(qnet, {k: v.double() for k, v in qp.items()}, xs)
    assert torch.equal(a.spikes.double(), b.spikes) and torch.equal(a.v.double(), b.v)
