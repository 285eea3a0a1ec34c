"""Which networks Lava runs: a ``lif`` network whose options Lava's LIF process computes exactly, with finite
parameters; the errors name every option (or parameter) that stands in the way, in one line."""

from __future__ import annotations

import torch

from neuro.contract import AbstractNetwork, Params

#: option -> the value Lava's LIF (lava-nc 0.10.0, ``lava/proc/lif/models.py``) needs, and why
LAVA_NEEDS = {
    "dynamics": ("lava", "Lava's LIF integrates u = u (1 - du) + a_in, v = v (1 - dv) + u + bias"),
    "reset": ("zero", "Lava's LIF sets v = 0 after a spike"),
    "v_reset": (0.0, "Lava's LIF sets v = 0 after a spike"),
    "refractory": (0, "Lava's LIF has no refractory period"),
    "v_leak": (0.0, "Lava's LIF has no leak potential"),
}


def check_lava_lif(net: AbstractNetwork) -> None:
    """Raise ``ValueError`` unless ``net`` is a ``lif`` network that Lava's LIF process runs exactly; the
    message names every option Lava cannot run and the value each needs.

    The spike condition needs nothing: both spike when v > threshold strictly (``neuro.surrogate.spike``
    is ``H(v - v_th)`` with ``H(0) = 0``, Lava's ``v > vth``).
    """
    from models.lif import LIF

    if type(net) is not LIF:
        raise ValueError(f"model {getattr(net, 'name', type(net).__name__)!r} cannot be exported to Lava: "
                         "only 'lif' (Lava's LIF process) can")
    bad = [(option, value, why) for option, (value, why) in LAVA_NEEDS.items() if getattr(net, option) != value]
    if bad:
        what = "; ".join(f"{o}={getattr(net, o)!r} cannot be exported to Lava: {why}" for o, _, why in bad)
        raise ValueError(f"{what}; build the network with {', '.join(f'{o}={v!r}' for o, v, _ in bad)}")


def check_finite(params: Params, where: str) -> None:
    """Raise ``ValueError`` naming every parameter of ``params`` that holds NaN or an infinity."""
    bad = []
    for k, v in params.items():
        n = int((~torch.isfinite(v.detach())).sum()) if v.is_floating_point() else 0
        if n:
            bad.append(f"params[{k!r}] has {n} NaN or infinite value{'s' if n > 1 else ''} (of {v.numel()})")
    if bad:
        raise ValueError(f"{', '.join(bad)}: a network with them cannot be exported to {where}; export the "
                         "parameters of a run that did not diverge")
