"""The RMSProp-normalised TD step of Javed, Shah, Sutton & White (2023, "Scalable real-time recurrent learning
using columnar-constructive networks", JMLR 24) as a ``torch.optim`` optimizer: :class:`TDRMSprop`
(``TrainConfig(optimizer="td-rmsprop", optimizer_options={...})``).

Per parameter element, with ``g`` the rule's estimate (TD(lambda) gives ``g = -delta e``; the optimizer
descends it) and ``v`` its running mean square, which starts at ``init`` (1), not 0::

    v     <- beta2 v + (1 - beta2) g^2                 (beta2 = 0.9999)
    theta <- theta - lr_p g / (sqrt(v) + eps)          (eps = 1e-8, outside the square root)

``lr_p = lr`` for every parameter, except that with ``readout_scale="fan-in"`` the readout's parameters
(``W_out``, ``b_out``) step at ``lr / net.readout_fan_in``: the authors' output step, alpha over the number of
features the readout reads (the active columns of a constructive network). Their dense LSTM trained by T-BPTT
uses plain alpha (``readout_scale="none"``).

This is ``torch.optim.RMSprop`` (``alpha = beta2``, no momentum, not centered) with ``square_avg`` created as
``init`` in place of zeros, so its state checkpoints through ``state_dict`` as any torch optimizer's, and the
compiled engine (:mod:`neuro.engine.optim`) runs RMSprop's kernel on it. The readout, where its step differs,
is a second parameter group.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.optim.optimizer import _get_scalar_dtype

from neuro.contract import AbstractNetwork, Params

__all__ = ["OPTIONS", "READOUT", "READOUT_SCALES", "TDRMSprop", "check_options", "check_readout",
           "make"]

#: the readout's parameters (learnt at every stage of a constructive network)
READOUT = ("W_out", "b_out")
READOUT_SCALES = ("none", "fan-in")
#: the options of each optimizer that takes any, with their defaults
OPTIONS: dict[str, dict[str, Any]] = {"td-rmsprop": {"beta2": 0.9999, "eps": 1e-8, "init": 1.0, "readout_scale": "none"}}


class TDRMSprop(torch.optim.RMSprop):
    """``torch.optim.RMSprop(params, lr, alpha=beta2, eps=eps)`` whose ``square_avg`` starts at ``init`` (module
    docstring). ``params`` may be parameter groups (each may set its own ``lr``)."""

    def __init__(self, params: Iterable[Any], lr: float, beta2: float = 0.9999, eps: float = 1e-8,
                 init: float = 1.0) -> None:
        super().__init__(params, lr=lr, alpha=beta2, eps=eps)
        self.defaults["init"] = init
        for group in self.param_groups:
            group.setdefault("init", init)

    @staticmethod
    def fresh_state(p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The state of ``p`` (in ``group``) before its first step: RMSprop's, but ``square_avg = init``."""
        return {"step": torch.zeros((), dtype=_get_scalar_dtype()),
                "square_avg": torch.full_like(p, group["init"], memory_format=torch.preserve_format)}

    def _init_group(self, group: dict[str, Any], *lists: list) -> bool:
        for p in group["params"]:
            if p.grad is not None and len(self.state[p]) == 0:
                self.state[p].update(self.fresh_state(p, group))
        return super()._init_group(group, *lists)


def _number(optimizer: str, key: str, value: Any, valid: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not valid(value):
        raise ValueError(f"optimizer_options {key}={value!r} is invalid for optimizer {optimizer!r}: must be {what}")
    return float(value)


def check_options(optimizer: str, options: Any) -> dict[str, Any]:
    """``options`` of ``optimizer`` checked, with the defaults filled in (``{}`` for an optimizer without options);
    a one-line ``ValueError`` names a bad key or value and what is valid."""
    if not isinstance(options, dict):
        raise ValueError(f"optimizer_options={options!r} is invalid: expected a dict of options")
    valid = OPTIONS.get(optimizer)
    if valid is None:
        if options:
            takes = ", ".join(f"{o!r}" for o in OPTIONS)
            raise ValueError(f"optimizer_options={options!r} is invalid with optimizer {optimizer!r}, which takes no "
                             f"options: only {takes} does; drop them")
        return {}
    unknown = sorted(set(options) - set(valid), key=str)
    if unknown:
        raise ValueError(f"optimizer_options key {unknown[0]!r} is invalid for optimizer {optimizer!r}: valid keys are "
                         f"{', '.join(valid)}")
    out = {**valid, **options}
    out["beta2"] = _number(optimizer, "beta2", out["beta2"], lambda v: 0 <= v < 1, "a number in [0, 1)")
    out["eps"] = _number(optimizer, "eps", out["eps"], lambda v: v > 0, "a number > 0")
    out["init"] = _number(optimizer, "init", out["init"], lambda v: v >= 0, "a number >= 0")
    if out["readout_scale"] not in READOUT_SCALES:
        raise ValueError(f"optimizer_options readout_scale={out['readout_scale']!r} is invalid for optimizer "
                         f"{optimizer!r}: valid are {', '.join(map(repr, READOUT_SCALES))}")
    return out


def check_readout(net: AbstractNetwork, names: Iterable[str], options: dict[str, Any]) -> None:
    """``ValueError`` where ``readout_scale="fan-in"`` is asked of a network without the readout's parameters."""
    names = set(names)
    if options.get("readout_scale") == "fan-in" and not set(READOUT) <= names:
        raise ValueError(f"optimizer_options readout_scale='fan-in' is invalid for model {net.name!r}: it has no "
                         f"readout parameters {', '.join(READOUT)} (its parameters: {', '.join(sorted(names))}); "
                         "use readout_scale='none'")


def make(params: Params, lr: float, net: AbstractNetwork, options: dict[str, Any]) -> TDRMSprop:
    """A :class:`TDRMSprop` over ``params`` (in their order; with ``readout_scale="fan-in"`` the readout's in a
    second group stepping at ``lr / net.readout_fan_in``)."""
    o = check_options("td-rmsprop", options)
    check_readout(net, params, o)
    kw = dict(beta2=o["beta2"], eps=o["eps"], init=o["init"])
    if o["readout_scale"] == "none":
        return TDRMSprop(list(params.values()), lr=lr, **kw)
    columns = [p for k, p in params.items() if k not in READOUT]
    readout = [params[k] for k in READOUT]
    return TDRMSprop([{"params": columns}, {"params": readout, "lr": lr / net.readout_fan_in}], lr=lr, **kw)
