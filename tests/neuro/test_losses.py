"""Per-step losses (neuro.losses): values against hand computations, the mask, the batch mean, errors."""

from __future__ import annotations

import math

import pytest
import torch

from neuro import losses

DTYPES = [torch.float32, torch.float64]


def _data(dtype: torch.dtype, B: int = 4, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y_hat = torch.randn(B, n, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(B, n, generator=g, dtype=torch.float64).to(dtype)
    p = torch.rand(B, n, generator=g, dtype=torch.float64)
    probs = (p / p.sum(-1, keepdim=True)).to(dtype)
    return y_hat, y, probs


def test_registry_lists_both_losses():
    assert set(losses.LOSSES) == {"mse", "ce"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_is_half_the_summed_square_error_mean_over_batch(dtype):
    y_hat, y, _ = _data(dtype)
    mask = torch.ones(4, dtype=torch.bool)
    got = losses.get("mse")(y_hat, y, mask)
    # by hand, element by element in Python floats
    expected = 0.0
    for b in range(4):
        expected += 0.5 * sum((float(y_hat[b, k]) - float(y[b, k])) ** 2 for k in range(3))
    expected /= 4
    assert got.dim() == 0 and got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_is_minus_sum_target_log_softmax(dtype):
    y_hat, _, probs = _data(dtype)
    mask = torch.ones(4, dtype=torch.bool)
    got = losses.get("ce")(y_hat, probs, mask)
    expected = 0.0
    for b in range(4):
        logits = [float(v) for v in y_hat[b]]
        log_z = math.log(sum(math.exp(v) for v in logits))
        expected -= sum(float(probs[b, k]) * (logits[k] - log_z) for k in range(3))
    expected /= 4
    assert got.dim() == 0 and got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-13)


def test_ce_with_one_hot_target_is_the_negative_log_probability_of_the_class():
    y_hat = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    got = losses.get("ce")(y_hat, y, torch.ones(1, dtype=torch.bool))
    expected = -math.log(math.exp(0.5) / (math.exp(2.0) + math.exp(-1.0) + math.exp(0.5)))
    assert got.item() == pytest.approx(expected, rel=1e-14)


def test_ce_is_stable_for_large_logits_and_shift_invariant():
    y_hat = torch.tensor([[1000.0, 0.0], [-1000.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(2, dtype=torch.bool)
    got = losses.get("ce")(y_hat, y, mask)
    assert got.item() == pytest.approx(1000.0 / 2, rel=1e-12)  # (1000 + ~0) / 2
    shifted = losses.get("ce")(y_hat + 123.0, y, mask)
    assert shifted.item() == pytest.approx(got.item(), rel=1e-12)


@pytest.mark.parametrize("name", ["mse", "ce"])
def test_mask_zeroes_steps_and_the_mean_is_over_the_whole_batch(name):
    y_hat, y, probs = _data(torch.float64, B=4)
    target = y if name == "mse" else probs
    fn = losses.get(name)
    per = losses.per_sample(name)(y_hat, target)  # [B]
    assert per.shape == (4,) and (per > 0).all()
    mask = torch.tensor([True, False, True, False])
    got = fn(y_hat, target, mask)
    # masked samples add 0; the divisor is the batch size B = 4, not the 2 unmasked samples
    assert got.item() == pytest.approx((per[0] + per[2]).item() / 4, rel=1e-14)
    assert fn(y_hat, target, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    # a float 0/1 mask means the same as a bool mask
    assert fn(y_hat, target, mask.double()).item() == pytest.approx(got.item(), rel=1e-15)


@pytest.mark.parametrize("name", ["mse", "ce"])
def test_masked_samples_get_no_gradient(name):
    y_hat, y, probs = _data(torch.float64, B=3)
    target = y if name == "mse" else probs
    y_hat.requires_grad_(True)
    mask = torch.tensor([True, False, True])
    (g,) = torch.autograd.grad(losses.get(name)(y_hat, target, mask), y_hat)
    assert torch.equal(g[1], torch.zeros(3, dtype=torch.float64))
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0


def test_mse_gradient_is_the_error_over_batch():
    y_hat, y, _ = _data(torch.float64, B=4)
    y_hat.requires_grad_(True)
    (g,) = torch.autograd.grad(losses.get("mse")(y_hat, y, torch.ones(4, dtype=torch.bool)), y_hat)
    torch.testing.assert_close(g, (y_hat - y).detach() / 4, rtol=1e-14, atol=0)


def test_ce_gradient_is_softmax_minus_target_over_batch():
    y_hat, _, probs = _data(torch.float64, B=4)
    y_hat.requires_grad_(True)
    (g,) = torch.autograd.grad(losses.get("ce")(y_hat, probs, torch.ones(4, dtype=torch.bool)), y_hat)
    torch.testing.assert_close(g, (torch.softmax(y_hat.detach(), -1) - probs) / 4, rtol=1e-12, atol=1e-15)


def test_batch_mean_equals_mean_of_single_sample_losses():
    y_hat, y, _ = _data(torch.float64, B=5)
    fn = losses.get("mse")
    one = torch.ones(1, dtype=torch.bool)
    singles = [fn(y_hat[b:b + 1], y[b:b + 1], one).item() for b in range(5)]
    assert fn(y_hat, y, torch.ones(5, dtype=torch.bool)).item() == pytest.approx(sum(singles) / 5, rel=1e-14)


@pytest.mark.parametrize("getter", [losses.get, losses.per_sample])
def test_unknown_loss_name_lists_the_valid_ones(getter):
    with pytest.raises(ValueError) as e:
        getter("cross-entropy")
    msg = str(e.value)
    assert "'cross-entropy'" in msg
    for valid in losses.LOSSES:
        assert repr(valid) in msg


def test_get_returns_a_named_function():
    assert losses.get("mse").__name__ == "mse"
    assert losses.get("ce").__name__ == "ce"


@pytest.mark.parametrize("name", ["mse", "ce", "value"])
def test_written_out_gradient_equals_autograd(name):
    g = torch.Generator().manual_seed(3)
    y_hat = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(5, 3, generator=g, dtype=torch.float64), -1) if name == "ce" else torch.randn(
        5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    (auto,) = torch.autograd.grad(losses.get(name)(y_hat, y, mask), y_hat)
    written = losses.grad(name, y_hat.detach(), y, mask)
    assert torch.allclose(written, auto, rtol=1e-12, atol=1e-14)
    assert (written[~mask] == 0).all() and written[mask].abs().sum() > 0


def test_written_out_gradient_rejects_an_unknown_loss():
    with pytest.raises(ValueError, match="'nosuch'.*mse"):
        losses.grad("nosuch", torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, dtype=torch.bool))
