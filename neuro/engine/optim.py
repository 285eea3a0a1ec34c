"""``torch.optim``'s optimizers as arrays for :func:`neuro.engine.kernels.apply_update`: their state tensors
(Adam's ``exp_avg``, ``exp_avg_sq``, ``step``; RMSprop's ``square_avg``, ``step``; SGD has none) seen through numpy views, so that the compiled
update changes ``torch.optim``'s own state in place, and a checkpoint, a resume or a later torch step sees
what the torch path would have made. State missing before an optimizer's first step is created as torch creates
it (``Adam._init_group``, ``RMSprop._init_group``; :class:`neuro.optim.TDRMSprop`'s ``square_avg`` as its
``init``). :class:`~neuro.optim.TDRMSprop` runs RMSprop's kernel; its parameter groups (the readout's may step
at its own ``lr``) give one ``lr`` per parameter (:func:`neuro.engine.kernels.lr_of`). The arrays of an optimizer are made once and given again
while its settings, parameters and state tensors are the same (a loaded state dict or a new optimizer makes them
anew), so that a range of steps pays no conversion.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from neuro.engine import kernels as K
from neuro.engine.base import flat, view
from neuro.optim import TDRMSprop

__all__ = ["OptimizerArrays", "check"]

#: the settings the kernels compute, per optimizer (torch's defaults but lr)
_DEFAULTS = {torch.optim.SGD: {"momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False},
             torch.optim.Adam: {"weight_decay": 0, "amsgrad": False, "maximize": False, "capturable": False,
                                "differentiable": False, "fused": None, "decoupled_weight_decay": False},
             torch.optim.RMSprop: {"momentum": 0, "centered": False, "weight_decay": 0, "maximize": False,
                                   "capturable": False, "differentiable": False}}
_DEFAULTS[TDRMSprop] = _DEFAULTS[torch.optim.RMSprop]
#: the optimizers whose parameter groups may differ in ``lr`` (every other setting the same)
_GROUPED = (TDRMSprop,)


def check(opt: torch.optim.Optimizer) -> None:
    """``ValueError`` unless ``opt`` is a ``torch.optim.SGD``, ``Adam`` or ``RMSprop`` with one parameter group,
    or a :class:`~neuro.optim.TDRMSprop` whose groups differ in ``lr`` alone, with the settings the kernels
    compute (no momentum, weight decay, amsgrad, centering, ...)."""
    settings = _DEFAULTS.get(type(opt))
    if settings is None or (len(opt.param_groups) != 1 and not isinstance(opt, _GROUPED)):
        raise ValueError(f"optimizer {type(opt).__name__} is invalid for the compiled engine: valid are "
                         "torch.optim.SGD, torch.optim.Adam and torch.optim.RMSprop over one parameter group, and "
                         "neuro.optim.TDRMSprop")
    first = {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "lr")}
    for group in opt.param_groups:
        bad = {k: group.get(k) for k, v in settings.items() if group.get(k, v) != v}
        if bad or isinstance(group["lr"], torch.Tensor):
            raise ValueError(f"optimizer {type(opt).__name__} setting(s) {bad or {'lr': group['lr']}} are invalid for "
                             f"the compiled engine: valid are {settings} and a float lr")
        other = {k: v for k, v in group.items() if k not in ("params", "lr")}
        if other != first:
            raise ValueError(f"optimizer {type(opt).__name__} parameter groups {first} and {other} are invalid for the "
                             "compiled engine: its groups may differ in lr alone")


class OptimizerArrays(NamedTuple):
    """The arguments of :func:`~neuro.engine.kernels.apply_update` for one optimizer over parameters in a fixed
    order: ``kind``, the moments ``ms``, ``vs`` (flat views of Adam's ``exp_avg``, ``exp_avg_sq``; RMSprop's
    ``square_avg`` and empty arrays; empty arrays for SGD), the step counts ``steps`` (one-element views of
    ``state["step"]``) and ``hyper`` = ``[lr, beta1, beta2, eps]`` (RMSprop: ``[lr, alpha, 0, eps]``; a
    :class:`~neuro.optim.TDRMSprop` of several groups: then each parameter's ``lr``, in the order of ``params``,
    ``lr`` the first group's)."""

    kind: int
    ms: tuple[np.ndarray, ...]
    vs: tuple[np.ndarray, ...]
    steps: tuple[np.ndarray, ...]
    hyper: np.ndarray

    @classmethod
    def of(cls, opt: torch.optim.Optimizer, params: list[torch.Tensor], held: tuple[bool, ...] = ()) -> OptimizerArrays:
        """The arrays of ``opt`` over ``params`` (state made as torch makes it where there is none yet); the same
        ones as the previous call's where nothing they are made from changed. ``held[i]``: ``params[i]`` is
        never stepped (a network's ``fixed_params``, to which the torch path gives no gradient, so that
        ``torch.optim`` neither steps it nor makes state for it): its step count is an empty array, which
        :func:`~neuro.engine.kernels.apply_update` reads as "hold", and its moments are empty."""
        held = tuple(held) + (False,) * (len(params) - len(held))
        made = _MADE.get(opt)
        if made is not None and made[0] == _key(opt, params, held):
            return made[1]
        arrays = cls._arrays(opt, params, held)
        _MADE[opt] = (_key(opt, params, held), arrays)
        return arrays

    @classmethod
    def _arrays(cls, opt: torch.optim.Optimizer, params: list[torch.Tensor], held: tuple[bool, ...]) -> OptimizerArrays:
        stepped = [p for p, h in zip(params, held) if not h]
        return cls._stepped(opt, stepped)._held(params, held)

    def _held(self, params: list[torch.Tensor], held: tuple[bool, ...]) -> OptimizerArrays:
        """These arrays (over the parameters not held, in order) spread over ``params``: the held ones' moments
        and step counts empty."""
        if not any(held):
            return self
        at = np.cumsum([not h for h in held]) - 1  # each parameter's place among those not held

        def spread(arrays: tuple, empty: list[np.ndarray]) -> tuple:
            return tuple(e if h else arrays[i] for h, i, e in zip(held, at, empty))
        moments = [np.zeros(0, view(p).dtype) for p in params]
        hyper = self.hyper
        if hyper.size > 4:  # one lr per parameter (the held ones' never read)
            hyper = np.array([*hyper[:4], *(0.0 if h else hyper[4 + i] for h, i in zip(held, at))], dtype=np.float64)
        return OptimizerArrays(self.kind, spread(self.ms, moments), spread(self.vs, moments),
                               spread(self.steps, [np.zeros(0, self.steps[0].dtype)] * len(params)), hyper)

    @classmethod
    def _stepped(cls, opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> OptimizerArrays:
        check(opt)
        group = opt.param_groups[0]
        if isinstance(opt, torch.optim.SGD):
            none = tuple(np.zeros(0, view(p).dtype) for p in params)
            return cls(K.SGD, none, none, tuple(np.zeros(1) for _ in params),
                       np.array([group["lr"], 0.0, 0.0, 0.0]))
        if isinstance(opt, torch.optim.RMSprop):
            for p in params:
                state = opt.state[p]
                if len(state) == 0 and isinstance(opt, TDRMSprop):  # as TDRMSprop._init_group makes it
                    state.update(TDRMSprop.fresh_state(p, _group_of(opt, p)))
                elif len(state) == 0:  # as RMSprop._init_group makes it before its first step
                    state["step"] = torch.zeros((), dtype=_get_scalar_dtype())
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st = [opt.state[p] for p in params]
            none = tuple(np.zeros(0, view(p).dtype) for p in params)
            lrs = [_group_of(opt, p)["lr"] for p in params] if len(opt.param_groups) > 1 else []
            return cls(K.RMSPROP, tuple(flat(s["square_avg"]) for s in st), none,
                       tuple(view(s["step"]).reshape(1) for s in st),
                       np.array([group["lr"], group["alpha"], 0.0, group["eps"], *lrs], dtype=np.float64))
        for p in params:
            state = opt.state[p]
            if len(state) == 0:  # as Adam._init_group makes it before its first step
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st = [opt.state[p] for p in params]
        beta1, beta2 = group["betas"]
        return cls(K.ADAM, tuple(flat(s["exp_avg"]) for s in st),
                   tuple(flat(s["exp_avg_sq"]) for s in st),
                   tuple(view(s["step"]).reshape(1) for s in st),
                   np.array([group["lr"], beta1, beta2, group["eps"]], dtype=np.float64))


def _group_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    """The parameter group of ``opt`` that holds ``p``."""
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


#: optimizer -> (what its arrays were made from, the arrays) (:meth:`OptimizerArrays.of`)
_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(opt: torch.optim.Optimizer, params: list[torch.Tensor], held: tuple[bool, ...]) -> tuple:
    """What :meth:`OptimizerArrays.of` makes its arrays from: the parameter groups' settings, the parameters and
    the state tensors (the objects and their memory), and which parameters are held."""
    state = opt.state
    return (held, tuple(tuple(v for k, v in g.items() if k != "params") for g in opt.param_groups), id(state),
            tuple((id(p), p.data_ptr(), tuple(map(_identity, state[p].values())) if p in state else ()) for p in params))


def _identity(v: object) -> tuple:
    return id(v), v.data_ptr() if isinstance(v, torch.Tensor) else v
