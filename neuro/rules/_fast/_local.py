"""One ``neuron`` step with the derivatives that the eligibility rules' fast paths need (RFLO,
:mod:`neuro.rules._fast.rflo`; the three-factor rule, :mod:`neuro.rules._fast.three_factor`): the new state,
the output ``z``, ``dz/dI`` and the total ``dz/db`` (through the current too where ``net.bias_in_current``).

They equal the model's ``neuron_derivatives`` (``tests/neuro/rules/test_three_factor.py``), which the rules'
definitions read; for the two models whose step is written out here they are computed in place, a few
element-wise operations instead of every entry of :class:`neuro.contract.Derivatives`:

- the rate RNN (:class:`models.rate.RateRNN`, not a subclass): the state from ``net.neuron``, ``dz/dI = dz/db =
  alpha (1 - tanh(I)^2)``;
- LIF (:class:`models.lif.LIF`, not its subclasses): its update with the coefficients of the contract's
  ``net.linear_filter()`` (the sub-threshold update of ``(v, i)``; the leak potential enters ``v`` as ``b``
  does), then the refractory hold, the spike and the reset::

      v~  = vv v + vi i + vI I + vb (b + v_leak)       (held at v_reset while refractory, r_{t-1} > 0)
      i_t = ii i + iI I
      z_t = [v~ > v_th] A,   psi = surrogate'(v~) A,   A = [r_{t-1} = 0]
      dz/dI = psi vI,        dz/db = psi vb

  equal to the model's ``neuron`` up to rounding (the same terms, summed in another order).

Every other model: ``net.neuron_derivatives``. Nothing here builds a graph.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from models.lif import LIF
from models.rate import RateRNN
from neuro.contract import AbstractNetwork, Params
from neuro.surrogate import surrogate_derivative

__all__ = ["Local", "step"]


class Local(NamedTuple):
    state: NamedTuple  # s_t, as net.neuron's
    z: Tensor  # [B, n]
    dz_dI: Tensor  # [B, n]
    dz_db: Tensor | None  # [B, n] the total dz/db (with ``bias``), else None


@torch.no_grad()
def step(net: AbstractNetwork, p: Params, s: NamedTuple, I: Tensor, bias: bool = False) -> Local:
    """``net.neuron`` at ``(s, I)`` with ``dz/dI`` and, with ``bias``, the total ``dz/db`` (module docstring)."""
    if type(net) is RateRNN:  # not a subclass, which may change the neuron
        s_new, h = net.neuron(p, s, I)
        t = torch.tanh(I)
        dz_dI = 1.0 - t * t if net.alpha == 1.0 else (1.0 - t * t) * float(net.alpha)
        return Local(s_new, h, dz_dI, dz_dI if bias else None)
    if type(net) is LIF:  # not ALIF nor another subclass
        return _lif(net, p, s, I, bias)
    d = net.neuron_derivatives(p, s, I)
    dz_db = (d.dz_db + d.dz_dI if net.bias_in_current else d.dz_db) if bias else None
    return Local(d.state, d.z, d.dz_dI, dz_db)


@functools.lru_cache(maxsize=32)
def _coefficients(net: LIF) -> tuple[float, ...]:
    """``(vv, vi, vI, vb, ii, iI)`` of ``net.linear_filter()`` (module docstring), once per network."""
    f = net.linear_filter()
    (vv, vi), (_, ii) = f.dh_dh
    return vv, vi, f.dh_dI[0], f.dh_db[0], ii, f.dh_dI[1]


def _lif(net: LIF, p: Params, s: NamedTuple, I: Tensor, bias: bool) -> Local:
    vv, vi, vI, vb, ii, iI = _coefficients(net)
    vt = torch.add(s.v * vv, s.i, alpha=vi).add_(I, alpha=vI).add_(p["b"] + net.v_leak, alpha=vb)
    i_new = torch.add(s.i * ii, I, alpha=iI)
    active = None
    if net.refractory > 0:
        active = (s.r <= 0).to(vt.dtype)
        vt = torch.where(s.r > 0, torch.full_like(vt, net.v_reset), vt)
    z = (vt > net.v_th).to(vt.dtype)
    psi = surrogate_derivative(vt, net.v_th, net.surrogate, net.surrogate_width, net.surrogate_scale, net.v_th)
    r = s.r
    if active is not None:
        z, psi = z * active, psi * active
        r = torch.where(z > 0, torch.full_like(vt, float(net.refractory)), (s.r - 1.0).clamp(min=0.0))
    v = torch.sub(vt, z, alpha=net.v_th) if net.reset == "subtract" else vt * (1.0 - z) + z * net.v_reset
    dz_dI = psi * vI if vI != 1.0 else psi
    dz_db = (psi * vb if vb != 1.0 else psi) if bias else None
    return Local(s._replace(v=v, i=i_new, z=z, r=r), z, dz_dI, dz_db)
