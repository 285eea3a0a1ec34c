"""backend="compiled" (event-driven numba loop) against the torch reference: identical spikes, voltages to
rounding, for every dynamics, reset, refractory setting and the adaptive threshold, on firing networks."""

from __future__ import annotations

import pytest
import torch

import models
import neuro

pytest.importorskip("numba")

CASES = [
    ("lif", {}),
    ("lif", dict(dynamics="euler", reset="zero", refractory=2)),
    ("lif", dict(dynamics="lava")),
    ("lif", dict(v_leak=0.3, v_reset=-0.2, reset="zero", refractory=1)),
    ("alif", dict(refractory=1)),
    ("alif", dict(dynamics="lava", beta_a=0.5)),
]


def _case(name: str, kw: dict, seed: int, dtype=torch.float64, n: int = 80, T: int = 600, B: int = 2):
    net = models.make(name, n_in=20, n_hidden=n, n_out=3, input_scale=15.0, rec_scale=2.0, **kw)
    params = net.init_params(seed, dtype=dtype)
    params["b"] = 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    g = torch.Generator().manual_seed(100 + seed)
    xs = (torch.rand(T, B, 20, generator=g) < 0.1).to(dtype) * (1 + torch.rand(T, B, 20, generator=g).to(dtype))
    return net, params, xs


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
                                                 for n, kw in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_equals_torch_in_float64(name, kw, seed):
    net, params, xs = _case(name, kw, seed)
    ref = neuro.simulate(net, params, xs)
    rec = ("spikes", "v", "i", "a", "y") if name == "alif" else ("spikes", "v", "i", "y")
    out = neuro.simulate(net, params, xs, backend="compiled", record=rec)
    rate = float(ref.spikes.mean())
    assert 0.005 < rate < 0.3, f"the network must fire: {rate}"
    assert torch.equal(out.spikes, ref.spikes)
    torch.testing.assert_close(out.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.extra["i"], ref.extra["i"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.y, ref.y, rtol=0, atol=1e-12)
    if name == "alif":
        torch.testing.assert_close(out.extra["a"], ref.extra["a"], rtol=0, atol=1e-12)


def test_float32_spikes_match_and_recording_is_optional():
    net, params, xs = _case("lif", {}, 3, dtype=torch.float32)
    ref = neuro.simulate(net, params, xs)
    out = neuro.simulate(net, params, xs, backend="compiled", record=("spikes", "y"))
    assert out.spikes.dtype == torch.float32 and out.v is None
    assert (out.spikes != ref.spikes).float().mean() < 1e-3  # float32 sums in another order may flip a rare spike
    torch.testing.assert_close(out.y, ref.y, rtol=1e-4, atol=1e-4)


def test_a_one_step_synaptic_delay_and_reset_by_hand():
    """Neuron 0 is driven over threshold by its input at step 2 only; neuron 1 listens to neuron 0 alone:
    it must fire at step 3 (one step later), never at step 2, and neuron 0 resets by subtraction."""
    net = models.make("lif", n_in=1, n_hidden=2, n_out=1, tau_syn=1e-3, dynamics="exact")
    p = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in net.init_params(dtype=torch.float64).items()}
    k = net.kappa
    p["W_in"][0, 0] = 1.5 / k  # v jumps by 1.5: one spike, v -> 0.5 after the reset
    p["W_rec"][1, 0] = 1.2 / k
    xs = torch.zeros(6, 1, 1, dtype=torch.float64)
    xs[2, 0, 0] = 1.0
    out = neuro.simulate(net, p, xs, backend="compiled", record=("spikes", "v", "y"))
    assert out.spikes[:, 0, 0].tolist() == [0, 0, 1, 0, 0, 0]
    assert out.spikes[:, 0, 1].tolist() == [0, 0, 0, 1, 0, 0]
    assert out.v[2, 0, 0].item() == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(out.spikes, neuro.simulate(net, p, xs).spikes)


def test_models_it_cannot_run_are_refused_naming_the_alternative():
    net = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="cannot run model 'rate'.*backend='torch'"):
        neuro.simulate(net, net.init_params(), torch.zeros(3, 1, 2), backend="compiled")
    lif = models.make("lif", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="record=.*invalid for 'lif'"):
        neuro.simulate(lif, lif.init_params(), torch.zeros(3, 1, 2), backend="compiled", record=("spikes", "a"))
