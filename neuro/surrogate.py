"""Spike functions with a surrogate derivative.

The forward value is the Heaviside step ``H(v - v_th)``; the derivative is that of a smooth
*primitive* ``P`` whose slope is the surrogate. It is written as ``H(x) + P(x) - P(x).detach()``:
the value is exactly ``H(x)`` and every autodiff mode (backward, ``torch.func.jvp``, ``jacrev``,
``vmap``) sees ``P'(x)``. No custom ``autograd.Function`` is involved.

With ``x = (v - v_th) / v_th`` (the distance to threshold relative to the threshold) and ``u = x / width``:

* ``"fast-sigmoid"`` (SuperSpike, Zenke & Ganguli 2018): ``dz/dv = scale / v_th / (1 + |u|)^2``
* ``"triangle"`` (e-prop pseudo-derivative, Bellec et al. 2020, ``gamma = scale``, ``width = 1``):
  ``dz/dv = scale / v_th * max(0, 1 - |u|)``
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = ["SURROGATES", "spike", "surrogate_derivative", "surrogate_primitive"]


def _fast_sigmoid_primitive(u: Tensor) -> Tensor:
    return u / (1.0 + u.abs())


def _fast_sigmoid_derivative(u: Tensor) -> Tensor:
    return 1.0 / (1.0 + u.abs()) ** 2


def _triangle_primitive(u: Tensor) -> Tensor:
    c = u.clamp(-1.0, 1.0)
    return c - c * c.abs() / 2.0


def _triangle_derivative(u: Tensor) -> Tensor:
    return (1.0 - u.abs()).clamp(min=0.0)


SURROGATES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "fast-sigmoid": (_fast_sigmoid_primitive, _fast_sigmoid_derivative),
    "triangle": (_triangle_primitive, _triangle_derivative),
}


def _check(kind: str) -> None:
    if kind not in SURROGATES:
        raise ValueError(f"surrogate={kind!r} is invalid: valid choices are {', '.join(map(repr, SURROGATES))}")


def surrogate_primitive(v: Tensor, v_th: float | Tensor, kind: str, width: float, scale: float,
                        v_scale: float | None = None) -> Tensor:
    """The smooth function whose derivative in ``v`` is the surrogate (units of ``z``).

    ``v_scale`` normalises the distance to threshold (default ``v_th``; ALIF passes its base
    threshold while ``v_th`` is the adaptive one).
    """
    _check(kind)
    prim, _ = SURROGATES[kind]
    s = v_th if v_scale is None else v_scale
    return scale * width * prim((v - v_th) / (s * width))


def surrogate_derivative(v: Tensor, v_th: float | Tensor, kind: str, width: float, scale: float,
                         v_scale: float | None = None) -> Tensor:
    """``dz/dv`` of the spike function: the pseudo-derivative ``psi`` of e-prop."""
    _check(kind)
    _, der = SURROGATES[kind]
    s = v_th if v_scale is None else v_scale
    return scale / s * der((v - v_th) / (s * width))


def spike(v: Tensor, v_th: float | Tensor, kind: str = "triangle", width: float = 1.0,
          scale: float = 0.3, v_scale: float | None = None) -> Tensor:
    """``H(v - v_th)`` with the surrogate derivative of ``kind`` (see the module docstring)."""
    p = surrogate_primitive(v, v_th, kind, width, scale, v_scale)
    return (v > v_th).to(v.dtype) + (p - p.detach())
