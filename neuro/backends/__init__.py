"""Forward simulators behind one call: ``neuro.simulate(net, params, xs, backend=...) -> Trace``.

``torch`` (the reference, CPU or CUDA: the device of ``params``) is built in; other backends
(Brian2, Lava) register a ``"module:function"`` path and are imported only when used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice
from neuro.registry import Registry

__all__ = ["Trace", "available", "get", "register", "simulate"]


@dataclasses.dataclass
class Trace:
    """What a simulator recorded, every field [T, B, ...] (``None`` where the model has no such variable).

    ``spikes`` and ``v`` for spiking models, ``h`` for rate models, ``y`` the readout; ``extra`` holds
    any other recorded variable (e.g. ``i``, ``a``) by name.
    """

    y: Tensor
    spikes: Tensor | None = None
    v: Tensor | None = None
    h: Tensor | None = None
    extra: dict[str, Tensor] = dataclasses.field(default_factory=dict)

    def rates(self, dt: float = 1.0) -> Tensor:
        """Mean firing rate per unit [B, n] in spikes per unit of ``dt`` (per ms with the default dt=1)."""
        if self.spikes is None:
            raise ValueError("this trace has no spikes (a rate model)")
        return self.spikes.mean(0) / dt


_BACKENDS: Registry[Callable[..., Trace]] = Registry("backend")
available = _BACKENDS.available


def register(name: str, fn: str | Callable[..., Trace]) -> None:
    """Register backend ``name``: a callable ``fn(net, params, xs, **kw) -> Trace`` or its ``"module:attr"`` path."""
    _BACKENDS.register(fn, name)


def get(name: str) -> Callable[..., Trace]:
    """The simulator registered as ``name`` (its module imported now)."""
    check_choice("backend", name, available())
    return _BACKENDS.get(name)


def simulate(net: AbstractNetwork, params: Params, xs: Tensor, backend: str = "torch", **kw: Any) -> Trace:
    """Run ``net`` forward on ``xs`` [T, B, n_in] (or [T, n_in] for one sequence) from rest.

    ``T = 0`` gives an empty trace on every backend: the fields and shapes the backend records, with no step
    (found by running one step of zero input and keeping none of it)."""
    if not isinstance(net, AbstractNetwork):
        raise TypeError(f"net={net!r} is invalid: expected a network from models.make, not a {type(net).__name__}")
    if not isinstance(xs, Tensor):
        raise TypeError(f"xs must be a torch.Tensor [T, B, n_in], got {type(xs).__name__}")
    if xs.dim() == 2:
        xs = xs[:, None, :]
    if xs.dim() != 3 or xs.shape[-1] != net.n_in:
        raise ValueError(f"xs has shape {tuple(xs.shape)}: expected [T, B, n_in={net.n_in}]")
    net.check_params(params)
    fn = get(backend)
    if xs.shape[0] == 0:
        tr = fn(net, params, xs.new_zeros(1, *xs.shape[1:]), **kw)
        return Trace(y=tr.y[:0], **{k: None if v is None else v[:0] for k, v in
                                    (("spikes", tr.spikes), ("v", tr.v), ("h", tr.h))},
                     extra={k: v[:0] for k, v in tr.extra.items()})
    return fn(net, params, xs, **kw)


def _simulate_torch(net: AbstractNetwork, params: Params, xs: Tensor) -> Trace:
    """The reference: ``net.step`` in a Python loop, no autograd."""
    p = next(iter(params.values()))
    xs = xs.to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        state = net.init_state(params, xs.shape[1])
        ys, rec = [], {}
        for x in xs:
            state, y = net.step(params, state, x)
            ys.append(y)
            for k, v in net.observe(state).items():
                rec.setdefault(k, []).append(v)
    stacked = {k: torch.stack(v) for k, v in rec.items()}
    known = {k: stacked.pop(k, None) for k in ("spikes", "v", "h")}
    return Trace(y=torch.stack(ys), **known, extra=stacked)


register("torch", _simulate_torch)
register("compiled", "neuro.backends.compiled:simulate")
register("brian2", "neuro.backends.brian2:simulate")
register("lava", "hw_targets.lava.network:simulate_lava")
register("lava-fixed", "hw_targets.lava.network:simulate_lava_fixed")
