"""One step of the LIF / ALIF neuron written out without autograd, with the surrogate derivative of its spike,
for the rules that take the neuron's derivatives in closed form (e-prop's and RFLO's windowed paths, OTTT and
SLTT's local errors). ``models/lif.py``'s ``neuron`` is ``_integrate`` (linear: the coefficients of
``subthreshold``) then ``_fire`` (refractory hold, spike, reset); ALIF adds ``a_t = rho a_{t-1} + z_t`` and the
threshold ``A_t = v_th + beta_a a_{t-1}``. With ``v~`` the potential after integration, held at ``v_reset``
while refractory (``r_{t-1} > 0``)::

    z_t   = [v~ > A_t] [r_{t-1} = 0]
    psi_t = surrogate'(v~; A_t) [r_{t-1} = 0]              (the pseudo-derivative dz_t / dv~)
    v_t   = v~ - v_th z_t  (reset "subtract"),   v~ (1 - z_t) + v_reset z_t  (reset "zero")

The state equals the model's own ``neuron`` exactly (tests of the rules that use it compare them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params
from neuro.surrogate import surrogate_derivative

__all__ = ["Fired", "closed_form", "fire"]


class Fired(NamedTuple):
    state: NamedTuple  # s_t, equal to net.neuron's
    z: Tensor  # [B, n] spikes
    v_held: Tensor  # [B, n] v~, held at v_reset while refractory
    threshold: Tensor | float  # A_t
    psi: Tensor  # [B, n] surrogate derivative, 0 while refractory
    active: Tensor | None  # [B, n] [r_{t-1} = 0] as 0/1 (None without a refractory period)


def closed_form(net: AbstractNetwork) -> bool:
    """``net`` is LIF or ALIF with the model's ``_integrate``, ``_fire`` and ``subthreshold``."""
    return net.name in ("lif", "alif") and all(hasattr(net, a) for a in ("_integrate", "_fire", "subthreshold"))


def fire(net: AbstractNetwork, p: Params, s: NamedTuple, i: Tensor) -> Fired:
    """The neuron step from state ``s`` driven by the synaptic input ``i`` [B, n] (module docstring)."""
    with torch.no_grad():
        vt, i_new = net._integrate(p, s, i)
        alif = "a" in s._fields
        thr = net.v_th + net.beta_a * s.a if alif else net.v_th
        active = None
        if net.refractory > 0:
            active = (s.r <= 0).to(vt.dtype)
            vt = torch.where(s.r > 0, torch.full_like(vt, net.v_reset), vt)
        z = (vt > thr).to(vt.dtype)
        psi = surrogate_derivative(vt, thr, net.surrogate, net.surrogate_width, net.surrogate_scale, net.v_th)
        r = s.r
        if active is not None:
            z, psi = z * active, psi * active
            r = torch.where(z > 0, torch.full_like(vt, float(net.refractory)), (s.r - 1.0).clamp(min=0.0))
        v = torch.sub(vt, z, alpha=net.v_th) if net.reset == "subtract" else vt * (1.0 - z) + z * net.v_reset
        s_new = s._replace(v=v, i=i_new, z=z, r=r, **({"a": net.rho * s.a + z} if alif else {}))
    return Fired(s_new, z, vt, thr, psi, active)
