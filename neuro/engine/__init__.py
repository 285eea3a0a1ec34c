"""The compiled online-training engine: a range of steps of :func:`neuro.train` (the network step, the rule's
traces and estimate, the loss and its error, the summed estimate and the optimizer's update at the loop's
schedule) in one numba call, with the per-step losses written into an array; Python runs once per range
(logging, checkpoints, progress). :class:`neuro.train_loop.Loop` calls it in place of its inner step loop.

``TrainConfig.engine`` chooses: ``"auto"`` (the compiled engine where the run's combination has one, else the
torch path), ``"compiled"`` (refuse a combination without one), ``"torch"`` (the reference path). The
combinations are :data:`REGISTRY`; each entry's builder returns an :class:`~neuro.engine.base.Engine` for a
concrete ``(net, rule)``, or ``None`` where it does not apply. ``tests/neuro/test_engine.py`` holds every
entry to the torch path. The entries marked ``sparse`` (the spiking rules on LIF and ALIF, e-prop, SLTT and OTTT on
stacks of them) also run networks with sparse matrices (:mod:`neuro.connectivity`), each read, traced and updated
on its synapses only (:class:`neuro.engine.spiking.Wiring`), so that their work is proportional to the synapses;
``tests/neuro/test_engine_sparse.py`` and ``test_engine_stack.py`` hold them to the torch path, which reads
``W * mask``. Importing this package does not import numba (the builders do).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import torch

from neuro.contract import AbstractNetwork
from neuro.rules.base import AbstractRule
from neuro.train_config import ENGINES

__all__ = ["ENGINES", "REGISTRY", "Combination", "select", "supported"]


@dataclasses.dataclass(frozen=True)
class Combination:
    """One supported ``(model, rule, optimizer, loss, device, dtype)`` family: the model and rule by name (their
    registered classes, not subclasses), the optimizers, losses, device types and dtypes it runs, its builder
    ``"module:function"`` (``build(net, rule) -> Engine | None``), and whether it runs sparse networks
    (``sparse``: a masked matrix read and learnt on its synapses only, the work proportional to them)."""

    model: str
    rule: str
    optimizers: tuple[str, ...]
    losses: tuple[str, ...]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    builder: str
    sparse: bool = False

    def describe(self) -> str:
        return (f"model {self.model!r} with rule {self.rule!r} (optimizer {' or '.join(self.optimizers)}, loss "
                f"{' or '.join(self.losses)}, device {' or '.join(self.devices)}, dtype {' or '.join(self.dtypes)})")

    def build(self, net: AbstractNetwork, rule: AbstractRule) -> Any:
        module, name = self.builder.split(":")
        fn: Callable[[AbstractNetwork, AbstractRule], Any] = getattr(importlib.import_module(module), name)
        engine = fn(net, rule)
        if engine is not None:
            engine.rebuild = self.build  # for a new rule of the run (a stage schedule's next stage)
        return engine


#: every combination the compiled engine runs
REGISTRY: tuple[Combination, ...] = (
    Combination(model="rate", rule="rflo", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                dtypes=("float32", "float64"), builder="neuro.engine.rflo:build"),
    Combination(model="rate", rule="bptt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                dtypes=("float32", "float64"), builder="neuro.engine.bptt:build"),
    Combination(model="rate", rule="tbptt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                dtypes=("float32", "float64"), builder="neuro.engine.bptt:build"),
    Combination(model="lstm", rule="bptt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.lstm_bptt:build"),
    Combination(model="lstm", rule="tbptt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.lstm_bptt:build"),
    Combination(model="lstm", rule="rtrl", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.lstm_rtrl:build"),
    Combination(model="lstm", rule="uoro", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.lstm_uoro:build"),
    Combination(model="columnar", rule="columnar", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                dtypes=("float32", "float64"), builder="neuro.engine.columnar:build"),
    Combination(model="constructive", rule="constructive", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.columnar:build"),
    Combination(model="columnar", rule="td-lambda", optimizers=("adam", "sgd", "rmsprop", "td-rmsprop"), losses=("value",), devices=("cpu",),
                dtypes=("float32", "float64"), builder="neuro.engine.td:build"),
    Combination(model="constructive", rule="td-lambda", optimizers=("adam", "sgd", "rmsprop", "td-rmsprop"), losses=("value",),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.td:build"),
    Combination(model="lstm", rule="td-lambda", optimizers=("adam", "sgd", "rmsprop", "td-rmsprop"), losses=("value",),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.td_tbptt:build"),
    Combination(model="lif", rule="eprop", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_eprop:build", sparse=True),
    Combination(model="alif", rule="eprop", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_eprop:build", sparse=True),
    *(Combination(model=m, rule=r, optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                  dtypes=("float32", "float64"), builder="neuro.engine.spiking_bptt:build", sparse=True)
      for m in ("lif", "alif") for r in ("bptt", "tbptt")),
    *(Combination(model=m, rule="anp-time", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                  devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_anp:build", sparse=True)
      for m in ("lif", "alif")),
    Combination(model="rate", rule="eprop", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.eprop_rate:build"),
    Combination(model="rate", rule="rtrl", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.rtrl:build"),
    Combination(model="rate", rule="uoro", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.uoro:build"),
    Combination(model="lif", rule="sltt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_sltt:build", sparse=True),
    Combination(model="alif", rule="sltt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_sltt:build", sparse=True),
    Combination(model="lif", rule="ottt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_ottt:build", sparse=True),
    Combination(model="alif", rule="ottt", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_ottt:build", sparse=True),
    Combination(model="lif", rule="three-factor", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_three_factor:build", sparse=True),
    Combination(model="alif", rule="three-factor", optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"),
                devices=("cpu",), dtypes=("float32", "float64"), builder="neuro.engine.spiking_three_factor:build", sparse=True),
    *(Combination(model="stack", rule=r, optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                  dtypes=("float32", "float64"), builder="neuro.engine.spiking_stack:build", sparse=True)
      for r in ("eprop", "sltt", "ottt")),
    *(Combination(model="rate", rule=r, optimizers=opts, losses=("mse", "ce"), devices=("cpu",),
                  dtypes=("float32", "float64"), builder="neuro.engine.rate_perturb:build")
      for r, opts in (("np", ("adam", "sgd", "rmsprop")), ("anp", ("adam", "sgd", "rmsprop")),
                      ("anp-time", ("adam", "sgd", "rmsprop")), ("wp", ("adam", "sgd", "rmsprop")))),
    *(Combination(model="lstm", rule=r, optimizers=("adam", "sgd", "rmsprop"), losses=("mse", "ce"), devices=("cpu",),
                  dtypes=("float32", "float64"), builder="neuro.engine.lstm_perturb:build")
      for r in ("np", "anp", "anp-time", "wp")),
)


def supported() -> str:
    """The supported combinations, in words (one phrase each, joined by ``"; "``)."""
    return "; ".join(c.describe() for c in REGISTRY)


def estimated_loss(rule: AbstractRule) -> str | None:
    """The loss whose gradient ``rule`` estimates (a :class:`Combination`'s ``losses``): the rule's own, or the
    inner rule's of a rule built over one (TD(lambda): ``"value"``)."""
    inner = getattr(rule, "inner", None)
    return inner.loss if isinstance(inner, AbstractRule) else rule.loss


#: the (model, rule) pairs whose engines hold a network's ``fixed_params`` as the torch path does (never stepped,
#: no optimizer state); the others step every parameter by the one optimizer
HOLDS_FIXED = tuple(("rate", r) for r in ("np", "anp", "anp-time", "wp", "bptt", "tbptt"))
#: the (model, rule, optimizer) triples whose engines learn a network's ``local_params`` by its own rule as the
#: training loop does (the rate RNN's decorrelation layer)
HOLDS_LOCAL = tuple(("rate", r, "sgd") for r in ("np", "anp", "anp-time", "wp"))


def _unheld(net: AbstractNetwork, rule: AbstractRule, optimizer: str) -> str | None:
    """Why no engine runs ``net``'s parameters outside the loss's reach with ``rule`` and ``optimizer`` (the
    end of a refusal), or None where they are held as the training loop holds them (or there are none)."""
    if net.masks and not any(c.sparse and (net.name, rule.name) == (c.model, c.rule) for c in REGISTRY):
        runs = ", ".join(sorted({f"{c.model} {c.rule}" for c in REGISTRY if c.sparse}))
        return (f"with sparse connectivity ({', '.join(net.masks)}): the compiled engines run sparse networks for "
                f"{runs}; the torch path keeps every estimate zero off the masks")
    if net.local_params and (net.name, rule.name, optimizer) not in HOLDS_LOCAL:
        held = ", ".join(f"{m} {r} ({o})" for m, r, o in HOLDS_LOCAL)
        return (f"with parameters learnt by the network's own rule ({', '.join(net.local_params)}): the compiled "
                f"engine holds them for {held}")
    if net.fixed_params and (net.name, rule.name) not in HOLDS_FIXED:
        held = ", ".join(f"{m} {r}" for m, r in HOLDS_FIXED)
        return f"with parameters held fixed ({', '.join(net.fixed_params)}): the compiled engine holds them for {held}"
    return None


def _find(net: AbstractNetwork, rule: AbstractRule, optimizer: str, dtype: torch.dtype, device: torch.device,
          schedule: str | None) -> Any:
    dtype_name = str(dtype).replace("torch.", "")
    if _unheld(net, rule, optimizer) is not None:
        return None
    for c in REGISTRY:
        if (net.name, rule.name) == (c.model, c.rule) and optimizer in c.optimizers and estimated_loss(rule) in c.losses \
                and device.type in c.devices and dtype_name in c.dtypes:
            engine = c.build(net, rule)
            if engine is not None:
                return engine
    return None


def select(net: AbstractNetwork, rule: AbstractRule, engine: str, optimizer: str, dtype: torch.dtype,
           device: torch.device, schedule: str | None = None) -> tuple[str, Any]:
    """The engine a run uses, ``("compiled", Engine)`` or ``("torch", None)``, for the setting ``engine``
    (:data:`ENGINES`); ``engine="compiled"`` on a combination without one raises a ``ValueError`` naming the
    supported ones."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is invalid: valid choices are {', '.join(map(repr, ENGINES))}")
    if engine == "torch":
        return "torch", None
    found = _find(net, rule, optimizer, dtype, device, schedule)
    if found is not None:
        return "compiled", found
    if engine == "compiled":
        run = (f"model {net.name!r} with rule {rule.name!r}, optimizer {optimizer}, loss {rule.loss}, device "
               f"{device.type}, dtype {str(dtype).replace('torch.', '')}" + ("" if schedule is None else ", a schedule"))
        why = _unheld(net, rule, optimizer)
        if why is not None:
            raise ValueError(f"engine='compiled' is invalid for {run} {why}; use engine='auto' or 'torch'")
        raise ValueError(f"engine='compiled' is invalid for {run}: the compiled engine runs {supported()}; "
                         "use engine='auto' or 'torch'")
    return "torch", None
