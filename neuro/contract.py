"""The cell contract: pure step functions over explicit parameters and state.

A network is a frozen dataclass of hyper-parameters. Its parameters are a plain
``dict[str, Tensor]`` and its state a ``NamedTuple`` of tensors, so ``torch.func``
(jvp, vjp, jacrev, vmap) applies to every step and any ``torch.optim`` optimizer
works on ``params.values()``.

One time step is split the way hardware splits it::

    i          = net.current(params, state, x)     # synaptic part: W_in x + W_rec z (+ b)
    state, z   = net.neuron(params, state, i)      # element-wise dynamics
    state, y   = net.readout(params, state, z)     # linear (rate) or leaky integrator (spiking)

``net.step`` chains the three. Shapes: ``x`` [B, n_in], ``i`` [B, n_current],
``z`` [B, n_hidden], ``y`` [B, n_out].
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]

__all__ = ["AbstractNetwork", "Params", "check_positive", "check_choice", "state_dtype"]


def check_positive(name: str, value: Any, *, allow_zero: bool = False, integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``value`` unless it is a positive (or non-negative) number."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}={value!r} is invalid: expected {kind}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is invalid: must be {bound}")


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: valid choices are {', '.join(map(repr, choices))}")


def state_dtype(params: Params) -> tuple[torch.dtype, torch.device]:
    p = next(iter(params.values()))
    return p.dtype, p.device


@dataclasses.dataclass(frozen=True)
class AbstractNetwork(abc.ABC):
    """A recurrent network: ``n_in`` inputs, ``n_hidden`` units, ``n_out`` readouts.

    Subclasses are frozen dataclasses; every hyper-parameter is a field (it shows in ``repr``).
    """

    n_in: int
    n_hidden: int
    n_out: int

    #: registry name, set by each model
    name: ClassVar[str] = ""
    #: True for spiking models (``z`` is 0/1 with a surrogate derivative)
    spiking: ClassVar[bool] = False
    #: the state type (a NamedTuple class)
    State: ClassVar[type]

    def __post_init__(self) -> None:
        for f in ("n_in", "n_hidden", "n_out"):
            check_positive(f, getattr(self, f), integer=True)

    # -- parameters and state ------------------------------------------------------------------
    @abc.abstractmethod
    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        """Fresh parameters, a ``dict[str, Tensor]`` drawn from ``torch.Generator`` seeded ``seed``."""

    @abc.abstractmethod
    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        """The resting state for a batch of ``batch`` sequences, dtype/device of ``params``."""

    # -- one time step ---------------------------------------------------------------------------
    @abc.abstractmethod
    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        """Synaptic input ``i`` [B, n_current] from the input ``x`` and the previous output in ``state``."""

    @abc.abstractmethod
    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        """Element-wise dynamics driven by ``i``: the new state and the hidden output ``z`` [B, n_hidden]."""

    @abc.abstractmethod
    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        """The network output ``y`` [B, n_out] from the hidden output ``z``."""

    def step(self, params: Params, state: NamedTuple, x: Tensor) -> tuple[NamedTuple, Tensor]:
        """One full step: ``current`` -> ``neuron`` -> ``readout``."""
        i = self.current(params, state, x)
        state, z = self.neuron(params, state, i)
        return self.readout(params, state, z)

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        """Variables a simulator records (``spikes``, ``v``, ``h``, ...), each [B, n_hidden]."""
        return {}

    # -- helpers shared by every model -----------------------------------------------------------
    def n_params(self, params: Params) -> int:
        return sum(p.numel() for p in params.values())

    def check_params(self, params: Params) -> None:
        """Raise ``ValueError`` if ``params`` lacks a key or has a wrong shape or mixed dtypes."""
        expected = self.param_shapes()
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        if missing or extra:
            raise ValueError(f"params for {self.name!r} have keys {sorted(params)}; expected {sorted(expected)}")
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"params mix dtypes {sorted(map(str, dtypes))}; use one of float32, float64")
        for k, shape in expected.items():
            if tuple(params[k].shape) != shape:
                raise ValueError(f"params[{k!r}] has shape {tuple(params[k].shape)}; expected {shape}")

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every parameter, by name."""

    def _generator(self, seed: int) -> torch.Generator:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} is invalid: expected an integer")
        g = torch.Generator()
        g.manual_seed(seed)
        return g
