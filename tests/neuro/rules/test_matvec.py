"""The compiled two-vector product (:mod:`neuro.rules._matvec`) against torch's, and its fallback."""

from __future__ import annotations

import math

import pytest
import torch

from neuro.rules import _matvec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n,k", [(1, 1), (7, 5), (257, 131), (64, 1024)])
def test_mv2_equals_two_matrix_vector_products(n, k):
    g = torch.Generator().manual_seed(n + k)
    W = torch.randn(n, k, generator=g, dtype=torch.float64)
    a, b = torch.randn(k, generator=g, dtype=torch.float64), torch.randn(1, k, generator=g, dtype=torch.float64)
    assert _matvec.usable(W, a, b)
    wa, wb = _matvec.mv2(W, a, b)
    assert wa.shape == wb.shape == (n,) and wa.dtype == torch.float64
    torch.testing.assert_close(wa, W @ a, rtol=1e-12, atol=1e-12 * math.sqrt(k))
    torch.testing.assert_close(wb, W @ b[0], rtol=1e-12, atol=1e-12 * math.sqrt(k))
    wa32, wb32 = _matvec.mv2(W.float(), a.float(), b.float())
    assert wa32.dtype == torch.float32
    torch.testing.assert_close(wa32.double(), W @ a, rtol=1e-5, atol=1e-5 * math.sqrt(k))
    torch.testing.assert_close(wb32.double(), W @ b[0], rtol=1e-5, atol=1e-5 * math.sqrt(k))


def test_mv2_falls_back_to_torch_and_propagates_nan():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    Wt = W.t().contiguous().t()  # the same numbers, not contiguous
    assert not _matvec.usable(Wt, a, b) and not _matvec.usable(W, a.float(), b)
    assert not _matvec.usable(W.to(torch.bfloat16), a.to(torch.bfloat16), b.to(torch.bfloat16))
    assert not _matvec.usable(W, torch.randn(5, dtype=torch.float64), b)
    for wa, wb in (_matvec.mv2(Wt, a, b), _matvec.mv2(W.requires_grad_(), a, b)):
        assert not wa.requires_grad
        torch.testing.assert_close(wa, W.detach() @ a)
        torch.testing.assert_close(wb, W.detach() @ b)
    b[2] = float("nan")
    a[1] = float("inf")
    wa, wb = _matvec.mv2(W.detach(), a, b)
    assert torch.isnan(wb).all() and not torch.isfinite(wa).any()
