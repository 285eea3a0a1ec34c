"""``lif-loihi`` (Loihi's integer LIF) against a numpy int64 transcription of Lava's bit-accurate models.

The oracle below is written from lava-nc 0.10.0's ``PyLifModelBitAcc`` (``lava/proc/lif/models.py``) and
``PyDenseModelBitAcc`` (``lava/proc/dense/models.py``) in plain integer numpy: ``np.sign(x) * (|x| >> 12)``
decays, ``<< 6`` activations, the 24-bit wrap of u and clip of v, ``v > vth << 6``, the Dense weights'
clip to [-256, 255] and dropped LSB, and the weight exponent as a shift. The Lava processes themselves are
compared with the torch model in tests/hw_targets/test_lava_export.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
import neuro

M = 2 ** 23


def oracle(qnet, p, xs):
    """Lava's integer arithmetic in int64 numpy: spikes, v, u [T, B, n]."""
    W_in, W_rec = (np.clip(np.rint(p[k].numpy()).astype(np.int64), -256, 255) >> 1 << 1 for k in ("W_in", "W_rec"))
    b = np.rint(p["b"].numpy()).astype(np.int64) << qnet.bias_exp
    x = np.trunc(xs.numpy()).astype(np.int64)

    def shift(a, e):
        return a << e if e > 0 else a >> -e

    def trunc12(a):
        return np.sign(a) * (np.abs(a) >> 12)

    T, B = x.shape[:2]
    n = qnet.n_hidden
    u, v, z = (np.zeros((B, n), np.int64) for _ in range(3))
    out = {k: np.zeros((T, B, n), np.int64) for k in ("spikes", "v", "u")}
    for t in range(T):
        a = shift(x[t] @ W_in.T, qnet.weight_exp_in) + shift(z @ W_rec.T, qnet.weight_exp_rec)
        d = trunc12(u * (4096 - (qnet.du + 1))) + (a << 6)
        w = np.where(d > M, d - 2 * M, d)
        u = np.where(w <= -M, d + 2 * M, w)
        v = np.clip(trunc12(v * (4096 - qnet.dv)) + u + b, -(M - 1), M - 1)
        z = (v > qnet.vth << 6).astype(np.int64)
        v = np.where(z > 0, 0, v)
        out["spikes"][t], out["v"][t], out["u"][t] = z, v, u
    return out


def random_case(seed, dtype=torch.float64, **kw):
    g = torch.Generator().manual_seed(seed)
    qnet = models.make("lif-loihi", n_in=6, n_hidden=12, n_out=2, **kw)
    p = qnet.init_params(seed=seed, dtype=dtype)
    # bias mantissas holding v between 0.8 and 1.3 thresholds at rest (so that inputs make it fire)
    rest = (0.8 + 0.5 * torch.rand(12, generator=g, dtype=torch.float64)) * qnet.threshold * max(1 - qnet.alpha, 1 / 64)
    p["b"] = torch.round(rest / 2 ** qnet.bias_exp).clamp(-4096, 4095).to(dtype)
    xs = (torch.rand(300, 3, 6, generator=g) < 0.1).to(dtype) * torch.randint(1, 3, (300, 3, 6), generator=g).to(dtype)
    return qnet, p, xs


@pytest.mark.parametrize("kw", [{}, {"weight_exp_in": 3, "weight_exp_rec": -2, "bias_exp": 2, "du": 100, "dv": 4000,
                                     "vth": 200},
                                {"vth": 40, "du": 4095, "dv": 0, "weight_exp_rec": 1}])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_lavas_integer_arithmetic_bit_for_bit(kw, dtype):
    qnet, p, xs = random_case(3, dtype, **kw)
    tr = neuro.simulate(qnet, p, xs)
    ref = oracle(qnet, {k: v.double() for k, v in p.items()}, xs.double())
    for k in ("spikes", "v", "u"):
        got = tr.spikes if k == "spikes" else (tr.v if k == "v" else tr.extra["u"])
        assert np.array_equal(got.double().numpy(), ref[k].astype(np.float64)), k
    rate = ref["spikes"].mean()
    assert 0.01 < rate < 0.5, f"the network should fire (rate {rate:.3f} per step)"


def _one_layer(W_in, **kw):
    n = len(W_in)
    qnet = models.make("lif-loihi", n_in=1, n_hidden=n, n_out=1, **kw)
    z = torch.zeros
    p = {"W_in": torch.tensor(W_in, dtype=torch.float64)[:, None], "W_rec": z(n, n, dtype=torch.float64),
         "b": z(n, dtype=torch.float64), "W_out": z(1, n, dtype=torch.float64), "b_out": z(1, dtype=torch.float64)}
    return qnet, p


def test_wrap_of_u_and_clip_of_v():
    """Huge activations: u wraps at 24 bits as in Lava (u > 2^23 -> u - 2^24; u <= -2^23 -> u + 2^24),
    v clips at +-(2^23 - 1)."""
    qnet, p = _one_layer([254.0, -256.0], vth=2 ** 17 - 1, du=4095, dv=0, weight_exp_in=7)
    xs = torch.full((3, 1, 1), 5.0, dtype=torch.float64)
    tr = neuro.simulate(qnet, p, xs)
    a0, a1 = 254 * 5 * 2 ** 7 * 64, -256 * 5 * 2 ** 7 * 64  # du = 4095 wipes u: u = a << 6 every step
    assert a0 > M and a1 <= -M
    assert tr.extra["u"][:, 0].tolist() == [[a0 - 2 * M, a1 + 2 * M]] * 3
    # dv = 0: v integrates u; neuron 0 clips at -(2^23 - 1); neuron 1 clips at 2^23 - 1 > vth << 6 and spikes
    assert tr.v[:, 0, 0].tolist() == [a0 - 2 * M, -(M - 1), -(M - 1)]
    assert tr.spikes[:, 0, 1].tolist() == [0.0, 1.0, 0.0] and tr.v[:, 0, 1].tolist() == [a1 + 2 * M, 0.0, a1 + 2 * M]
    ref = oracle(qnet, p, xs)
    assert np.array_equal(tr.v.numpy(), ref["v"].astype(float))
    assert np.array_equal(tr.extra["u"].numpy(), ref["u"].astype(float))


def test_an_exact_threshold_does_not_spike():
    """Lava spikes on v > vth << 6 strictly: v == vth << 6 stays (H(0) = 0, as neuro.surrogate.spike)."""
    qnet, p = _one_layer([0.0], vth=1, du=4095, dv=4095)
    p["b"].fill_(64.0)  # v = trunc(v / 4096) + 64 = 64 = vth << 6 every step
    tr = neuro.simulate(qnet, p, torch.zeros(3, 1, 1, dtype=torch.float64))
    assert tr.v[:, 0, 0].tolist() == [64.0] * 3 and tr.spikes.sum() == 0
    p["b"].fill_(65.0)
    assert neuro.simulate(qnet, p, torch.zeros(1, 1, 1, dtype=torch.float64)).spikes[0, 0, 0] == 1


def test_gradients_pass_straight_through():
    qnet, p, xs = random_case(1)
    p = {k: v.requires_grad_(True) for k, v in p.items()}
    state = qnet.init_state(p, xs.shape[1])
    loss = 0.0
    for x in xs[:50]:
        state, y = qnet.step(p, state, x)
        loss = loss + (y ** 2).sum()
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in p.values())
    assert float(p["W_in"].grad.abs().sum()) > 0 and float(p["b"].grad.abs().sum()) > 0


def test_bad_settings_are_named():
    for kw, shown in (({"du": 4096}, "du=4096"), ({"vth": 2 ** 17}, "vth=131072"), ({"bias_exp": 8}, "bias_exp=8"),
                      ({"weight_exp_in": 1.5}, "weight_exp_in=1.5"), ({"vth": 0}, "vth=0")):
        with pytest.raises(ValueError, match=shown):
            models.make("lif-loihi", n_in=1, n_hidden=1, n_out=1, **kw)
