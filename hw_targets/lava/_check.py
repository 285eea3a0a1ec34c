"""Which ``lif`` networks Lava's LIF process runs exactly, and the error naming the option when it cannot."""

from __future__ import annotations

from neuro.contract import AbstractNetwork

#: option -> the value Lava's LIF (lava-nc 0.10.0, ``lava/proc/lif/models.py``) needs, and why
LAVA_NEEDS = {
    "dynamics": ("lava", "Lava's LIF integrates u = u (1 - du) + a_in, v = v (1 - dv) + u + bias"),
    "reset": ("zero", "Lava's LIF sets v = 0 after a spike"),
    "v_reset": (0.0, "Lava's LIF sets v = 0 after a spike"),
    "refractory": (0, "Lava's LIF has no refractory period"),
    "v_leak": (0.0, "Lava's LIF has no leak potential"),
}


def check_lava_lif(net: AbstractNetwork) -> None:
    """Raise ``ValueError`` unless ``net`` is a ``lif`` network that Lava's LIF process runs exactly.

    The spike condition needs nothing: both spike when v > threshold strictly (``neuro.surrogate.spike``
    is ``H(v - v_th)`` with ``H(0) = 0``, Lava's ``v > vth``).
    """
    from models.lif import LIF

    if type(net) is not LIF:
        raise ValueError(f"model {getattr(net, 'name', type(net).__name__)!r} cannot be exported to Lava: "
                         "only 'lif' (Lava's LIF process) can")
    for option, (value, why) in LAVA_NEEDS.items():
        if getattr(net, option) != value:
            raise ValueError(f"{option}={getattr(net, option)!r} cannot be exported to Lava: {why}; "
                             f"build the network with {option}={value!r}")
