"""The rule contract: online gradient estimators (optax's split: a rule estimates, an optimizer applies).

A rule is a frozen dataclass built on a network; its hyper-parameters are fields. It keeps its own
state (the network's state, traces, influence matrices, noise generators) in a NamedTuple whose
first field is ``net`` (the network state)::

    state = rule.init(params, batch, seed)
    out = rule.step(params, state, x, y, mask)   # -> StepOutput(state, y_hat, loss, grad | None)
    state, grad = rule.finish(params, state)      # end of a sequence: any pending estimate
    state = rule.reset(params, state)             # a new, independent sequence starts (episodic tasks)

``grad`` has the keys, shapes and dtypes of ``params``: the estimate of d(loss_t)/d(params) for the
step (or the window that ends at this step), to be *summed* by the caller; an optimizer descends it.
Each rule declares what it needs from the network (``needs``), held to it by the contract test over every
rule. Training runs the network in torch, which gives every rule what it needs; only LOSS rules (the
perturbation rules) take another simulator, through their ``forward=`` option.

*One definition, fast paths apart.* A rule's file is its paper's per-step equations, the definition.
Where a faster computation of the same numbers exists for some networks (a window of steps summed as one
matrix product, a compiled kernel), it lives in :mod:`neuro.rules._fast`; a rule class decorated with
:func:`accelerated` runs it automatically where it applies (``rule.fast_path`` is not None) unless built
with ``fast=False``. Every fast path is held to its definition by one float64 equivalence test
(``tests/neuro/rules/test_fast_paths.py``).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params

__all__ = ["AbstractRule", "FastPath", "Needs", "StepOutput", "accelerated", "add_into", "zeros_like_params"]


class Needs(enum.IntEnum):
    """What a rule needs from the network, from least to most."""

    LOSS = 0  # forward passes and a scalar loss or reward
    LOCAL = 1  # element-wise derivatives, presynaptic traces, an error broadcast
    JVP = 2  # Jacobian-vector products of one step
    JACOBIAN = 3  # full one-step Jacobians
    GRAPH = 4  # the whole unrolled graph


class StepOutput(NamedTuple):
    state: Any
    y: Tensor  # [B, n_out] the network output of this step (detached)
    loss: Tensor  # scalar: the per-step loss (detached)
    grad: Params | None  # the estimate for this step, or None


def zeros_like_params(params: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in params.items()}


def add_into(acc: Params, g: Params | None) -> Params:
    if g is not None:
        for k, v in g.items():
            acc[k] += v
    return acc


@dataclasses.dataclass(frozen=True)
class AbstractRule(abc.ABC):
    """Base of every learning rule. ``loss=None`` takes the task's loss (``neuro.train``) or ``"mse"``."""

    net: AbstractNetwork
    loss: str | None = None

    name: ClassVar[str] = ""
    needs: ClassVar[Needs]
    #: the model names the rule supports (``None``: every model of the cell contract)
    supports: ClassVar[tuple[str, ...] | None] = None
    #: True when the estimate uses random numbers (the seed of ``init`` decides them)
    stochastic: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        """Every rule's ``step``, ``flush`` and ``finish`` hand over estimates that are zero off the network's
        connectivity masks (:mod:`neuro.connectivity`): a synapse that does not exist is never learnt. A dense
        network's estimates pass unchanged."""
        super().__init_subclass__(**kw)
        for name in ("step", "flush", "finish"):
            method = cls.__dict__.get(name)
            if method is None or getattr(method, "masked", False):
                continue

            def masked(self, *args, _method=method, **kwargs):
                out = _method(self, *args, **kwargs)
                if not self.net.masks:
                    return out
                if isinstance(out, StepOutput):
                    return out if out.grad is None else out._replace(grad=self.net.mask_params(out.grad))
                state, grad = out
                return state, (None if grad is None else self.net.mask_params(grad))

            functools.update_wrapper(masked, method)
            masked.masked = True
            setattr(cls, name, masked)

    def __post_init__(self) -> None:
        if not isinstance(self.net, AbstractNetwork):
            raise TypeError(f"net={self.net!r} is invalid: expected a network from models.make")
        if self.loss is not None:
            losses.per_sample(self.loss)
        if self.supports is not None and self.net.name not in self.supports:
            raise self._refuse(f"it supports {', '.join(self.supports)}")
        if "fast" in self.__dataclass_fields__ and not isinstance(self.fast, bool):
            raise ValueError(f"fast={self.fast!r} is invalid: expected True or False")

    def _refuse(self, why: str) -> ValueError:
        """The one-line error of a rule that does not support its network, saying ``why``."""
        return ValueError(f"rule {self.name!r} does not support model {self.net.name!r}: {why}")

    def _require_local_form(self) -> None:
        """Refuse a network whose current and readout are not of the form local rules read (``local_form``)."""
        if not self.net.local_form:
            raise self._refuse("it needs a network of local form: current W_in x + W_rec p (+ b), readout "
                               "y_t = kappa y_(t-1) + W_out z_t + b_out (local_form)")

    @property
    def loss_fn(self) -> losses.LossFn:
        return losses.get(self.loss or "mse")

    @abc.abstractmethod
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NamedTuple:
        """The rule's state at the start of a run (``net`` field first)."""

    @abc.abstractmethod
    def step(self, params: Params, state: NamedTuple, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        """Advance one step on input ``x`` [B, n_in], target ``y`` [B, n_out], ``mask`` [B]."""

    def finish(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        """End of a sequence: return any estimate still pending (truncated windows, BPTT)."""
        return state, None

    def flush(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        """The parameters are about to change (an update inside a sequence): return the part of the estimate
        of the steps so far that a rule holds back to compute in bulk (a window of outer products summed as
        one matrix product), so that an update sees every step before it. The sequence goes on: unlike
        :meth:`finish`, nothing that belongs to the sequence as a whole (BPTT's backward pass, a truncation
        window) is cut. Summed over a sequence, estimates with and without flushes are equal."""
        return state, None

    def check_run(self, params: Params, batch: int, sequence: int, where: str = "") -> None:
        """Refuse, before a run starts, what this rule cannot run: ``params`` (read for their shapes and dtype
        only; they may be ``meta`` tensors), ``batch`` streams, sequences of up to ``sequence`` steps (``where``
        says what sets that length, e.g. ``"chunk=100"``). A ``ValueError`` (:class:`neuro.errors.SizeError` for
        memory) names the setting and what to set. The default refuses nothing."""
        return None

    def run_bytes(self, params: Params, batch: int, sequence: int) -> int | None:
        """Bytes this rule holds during a run beyond the parameters and the network state (its state, working
        buffers, graphs), for the same arguments as :meth:`check_run`; ``None`` (the default): the size of the
        state ``init`` builds, measured on shape-only tensors (:mod:`neuro.preflight`)."""
        return None

    def reset(self, params: Params, state: NamedTuple) -> NamedTuple:
        """A new independent sequence starts: the network state returns to rest, traces are cleared."""
        batch = state.net[0].shape[0]
        fresh = self.init(params, batch)
        return fresh._replace(**{k: v for k, v in state._asdict().items() if k in self._kept_on_reset})

    #: fields of the state that survive ``reset`` (e.g. random generators, feedback matrices)
    _kept_on_reset: ClassVar[tuple[str, ...]] = ()

    def _forward(self, params: Params, net_state: NamedTuple, x: Tensor, y: Tensor,
                 mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor]:
        """One network step and its loss: (state, y_hat, loss_t)."""
        net_state, y_hat = self.net.step(params, net_state, x)
        return net_state, y_hat, self.loss_fn(y_hat, y, mask)


class FastPath:
    """A faster computation of one rule's numbers on one network (:mod:`neuro.rules._fast`): the rule's
    ``init`` / ``step`` / ``flush`` / ``finish``, built on the rule (``self.rule``). ``flush`` and ``finish``
    default to returning nothing pending."""

    def __init__(self, rule: AbstractRule) -> None:
        self.rule = rule

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NamedTuple:
        raise NotImplementedError

    def step(self, params: Params, state: NamedTuple, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        raise NotImplementedError

    def flush(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        return state, None

    def finish(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        return state, None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule!r})"


_ROUTED = ("init", "step", "flush", "finish")


def accelerated(cls: type[AbstractRule]) -> type[AbstractRule]:
    """Class decorator: ``init``, ``step``, ``flush`` and ``finish`` run the rule's fast path
    (:func:`neuro.rules._fast.select`) where one applies to the rule's network and options, and the
    definition written in the class otherwise, or when the rule is built with ``fast=False``. The rule's
    ``fast_path`` property says which runs."""
    if not any(f.name == "fast" for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__} is @accelerated but has no field 'fast'")
    for name in _ROUTED:
        definition = getattr(cls, name)
        definition = getattr(definition, "definition", definition)  # a subclass of an @accelerated rule

        def routed(self, *args, _definition=definition, _name=name, **kw):
            fast = self.fast_path
            if fast is None:
                return _definition(self, *args, **kw)
            return getattr(fast, _name)(*args, **kw)

        functools.update_wrapper(routed, definition)
        routed.definition = definition  # the rule's own equations, for tests and readers
        setattr(cls, name, routed)

    def fast_path(self) -> FastPath | None:
        """The fast path running this rule (:mod:`neuro.rules._fast`), or None: the definition runs."""
        cached = self.__dict__.get("_fast_path", False)
        if cached is False:
            from neuro.rules import _fast

            cached = _fast.select(self) if self.fast else None
            self.__dict__["_fast_path"] = cached
        return cached

    cls.fast_path = property(fast_path)
    return cls
