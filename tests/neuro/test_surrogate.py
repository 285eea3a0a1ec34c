"""Spike functions: the forward value is the Heaviside step, every autodiff mode sees the surrogate.

Oracles: ``torch.autograd.gradcheck`` (finite differences) on the primitive, central differences of the
primitive against ``surrogate_derivative``, and the closed forms of the module docstring written out
in numpy (SuperSpike's fast sigmoid, e-prop's triangle pseudo-derivative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

from neuro.surrogate import SURROGATES, spike, surrogate_derivative, surrogate_primitive

F64 = torch.float64
KINDS = sorted(SURROGATES)
# (v_th, width, scale, v_scale): plain threshold; narrow/wide surrogates; ALIF (adaptive threshold, base v_scale)
SETTINGS = [(1.0, 1.0, 0.3, None), (0.7, 0.5, 1.0, None), (2.0, 1.7, 0.1, None), ("adaptive", 1.0, 0.3, 0.6)]


def threshold(v_th, n, gen):
    if v_th == "adaptive":  # A_t = v_th + beta a_{t-1}: one threshold per neuron, normalised by v_scale
        return 0.6 + torch.rand(n, generator=gen, dtype=F64)
    return v_th


def voltages(n, gen, v_th, width, v_scale):
    """Voltages spread over the surrogate's support and beyond, kept away from its kinks."""
    s = (v_th if v_scale is None else v_scale)
    th = v_th if isinstance(v_th, torch.Tensor) else torch.tensor(v_th, dtype=F64)
    u = torch.rand(n, generator=gen, dtype=F64) * 5.0 - 2.5
    kinks = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    u = torch.where((u[:, None] - kinks).abs().min(1).values < 1e-3, u + 3e-3, u)
    return th + u * s * width


def closed_form(kind, v, v_th, width, scale, v_scale):
    """The docstring's dz/dv, in numpy."""
    v, th = np.asarray(v), np.asarray(v_th)
    s = th if v_scale is None else v_scale
    u = (v - th) / (s * width)
    if kind == "fast-sigmoid":
        return scale / s / (1.0 + np.abs(u)) ** 2
    return scale / s * np.maximum(0.0, 1.0 - np.abs(u))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_primitive_passes_gradcheck(kind, setting):
    v_th, width, scale, v_scale = setting
    gen = torch.Generator().manual_seed(0)
    th = threshold(v_th, 40, gen)
    v = voltages(40, gen, th, width, v_scale).requires_grad_()
    inputs = (v,)
    if isinstance(th, torch.Tensor):  # the adaptive threshold is differentiable too (ALIF's a)
        th = th.clone().requires_grad_()
        inputs = (v, th)
        fn = lambda v, th: surrogate_primitive(v, th, kind, width, scale, v_scale)  # noqa: E731
    else:
        fn = lambda v: surrogate_primitive(v, th, kind, width, scale, v_scale)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_derivative_is_the_slope_of_the_primitive_and_the_documented_formula(kind, setting):
    v_th, width, scale, v_scale = setting
    gen = torch.Generator().manual_seed(1)
    th = threshold(v_th, 200, gen)
    v = voltages(200, gen, th, width, v_scale)
    h = 1e-6
    slope = (surrogate_primitive(v + h, th, kind, width, scale, v_scale)
             - surrogate_primitive(v - h, th, kind, width, scale, v_scale)) / (2 * h)
    d = surrogate_derivative(v, th, kind, width, scale, v_scale)
    torch.testing.assert_close(d, slope, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d.numpy(), closed_form(kind, v.numpy(), th, width, scale, v_scale), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_autograd_of_spike_is_the_surrogate_derivative(kind, setting):
    v_th, width, scale, v_scale = setting
    gen = torch.Generator().manual_seed(2)
    th = threshold(v_th, 500, gen)
    v = voltages(500, gen, th, width, v_scale).requires_grad_()
    (g,) = torch.autograd.grad(spike(v, th, kind, width, scale, v_scale).sum(), v)
    d = surrogate_derivative(v.detach(), th, kind, width, scale, v_scale)
    peak = scale / (th if v_scale is None else v_scale)
    # the same number up to the rounding of the chain rule's product (a few ulps of the peak)
    torch.testing.assert_close(g, d, rtol=1e-14, atol=1e-15 * float(np.max(peak)))
    assert torch.all((g == 0) == (d == 0))  # identical support
    if isinstance(th, torch.Tensor):  # d z / d A = - d z / d v for the adaptive threshold
        A = th.clone().requires_grad_()
        (gA,) = torch.autograd.grad(spike(v.detach(), A, kind, width, scale, v_scale).sum(), A)
        torch.testing.assert_close(gA, -d, rtol=1e-14, atol=1e-15 * float(np.max(peak)))


def test_surrogate_shape_peak_and_support():
    v_th, scale, width = 0.8, 0.3, 0.5
    at = torch.tensor([v_th], dtype=F64)
    for kind in KINDS:  # the peak, at threshold, is scale / v_th
        assert float(surrogate_derivative(at, v_th, kind, width, scale)) == pytest.approx(scale / v_th, rel=1e-15)
    # triangle: zero beyond width * v_th from threshold, e-prop's gamma max(0, 1 - |v - v_th| / v_th) / v_th
    edge = v_th * width
    v = torch.tensor([v_th - edge * 1.01, v_th - edge * 0.5, v_th + edge * 0.5, v_th + edge * 1.01], dtype=F64)
    d = surrogate_derivative(v, v_th, "triangle", width, scale)
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=F64) * scale / v_th)
    # fast sigmoid: a quarter of the peak one width * v_th away, never zero
    d = surrogate_derivative(torch.tensor([v_th + edge, 100.0], dtype=F64), v_th, "fast-sigmoid", width, scale)
    assert float(d[0]) == pytest.approx(scale / v_th / 4, rel=1e-14) and float(d[1]) > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_value_is_exactly_heaviside(kind, dtype):
    v_th = 0.9
    v = torch.cat([torch.linspace(-3, 3, 1001, dtype=dtype), torch.tensor([v_th, 1e6, -1e6], dtype=dtype)])
    v = v.requires_grad_()
    z = spike(v, v_th, kind)
    assert z.dtype == dtype
    assert torch.equal(z.detach(), (v.detach() > v_th).to(dtype))  # exactly 0 or 1; H(0) = 0
    assert set(z.detach().unique().tolist()) == {0.0, 1.0}
    assert float(z.detach()[-3]) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_spike_under_torch_func(kind):
    gen = torch.Generator().manual_seed(3)
    v_th, width, scale = 1.0, 1.0, 0.3
    v = voltages(30, gen, v_th, width, None)
    t = torch.randn(30, generator=gen, dtype=F64)
    d = surrogate_derivative(v, v_th, kind, width, scale)
    f = lambda v: spike(v, v_th, kind, width, scale)  # noqa: E731

    out, tangent = jvp(f, (v,), (t,))
    assert torch.equal(out, (v > v_th).to(F64))
    torch.testing.assert_close(tangent, d * t, rtol=1e-14, atol=1e-16)

    J = jacrev(f)(v)
    torch.testing.assert_close(J, torch.diag(d), rtol=1e-14, atol=1e-16)

    V = voltages(4 * 30, gen, v_th, width, None).reshape(4, 30)
    assert torch.equal(vmap(f)(V), f(V))
    G = vmap(grad(lambda v: f(v).sum()))(V)
    torch.testing.assert_close(G, surrogate_derivative(V, v_th, kind, width, scale), rtol=1e-14, atol=1e-16)

    # vmap over per-sample adaptive thresholds (ALIF), normalised by the base threshold
    A = 1.0 + torch.rand(4, 30, generator=gen, dtype=F64)
    G = vmap(grad(lambda v, a: spike(v, a, kind, width, scale, 1.0).sum()))(V, A)
    torch.testing.assert_close(G, surrogate_derivative(V, A, kind, width, scale, 1.0), rtol=1e-14, atol=1e-16)


def test_unknown_surrogate_lists_the_valid_ones():
    v = torch.zeros(3)
    for fn in (spike, surrogate_derivative):
        args = (v, 1.0, "relu") if fn is spike else (v, 1.0, "relu", 1.0, 0.3)
        with pytest.raises(ValueError, match="surrogate='relu'.*'fast-sigmoid'.*'triangle'"):
            fn(*args)
