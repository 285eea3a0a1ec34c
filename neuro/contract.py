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

*Facts for local rules.* Rules that do not differentiate the whole step (e-prop, RFLO, three-factor,
OTTT, SLTT, node perturbation) read a model through these facts, each implemented by the model next to
its dynamics; none of them is guessed from a model's name or found by probing it:

- ``local_form``: the current is ``W_in x + W_rec p (+ b)`` with ``p = presynaptic(state)`` and the
  readout is ``y_t = readout_decay y_{t-1} + W_out z_t + b_out`` (the form those rules are written for);
- ``presynaptic(state)``: the vector ``p`` that ``W_rec`` reads (``z_{t-1}`` or ``h_{t-1}``);
- ``bias_in_current``: ``b`` is a term of the current (rate, LSTM) or of the neuron (LIF, ALIF);
- ``readout_decay``: ``d y_t / d y_{t-1}`` of the readout (0 for a linear readout);
  ``with_output(state, y)`` sets a leaky readout's memory;
- ``trace_fields`` and ``neuron_derivatives(params, state, i)``: the element-wise derivatives of
  ``neuron`` (:class:`Derivatives`), spike, reset and adaptation included. The default takes them from
  ``neuron`` itself by one reverse pass; a model may give closed forms, held equal to the default by the
  contract tests. ``uniform_fields``: trace fields whose update is one linear filter, the same for every
  neuron (LIF's synaptic current), which a fast path may carry once instead of once per neuron;
- ``linear_filter()``: where the trace fields' update with the spikes held fixed is one linear filter of
  the current, the same for every neuron (LIF, ALIF: the sub-threshold dynamics), its coefficients
  (:class:`LinearFilter`); None otherwise. OTTT's presynaptic traces are this filter.

*Parameters outside the loss's reach.* ``fixed_params``: held at their initial value (never perturbed or
stepped); ``local_params`` and ``local_estimate(params, state)``: learnt by the network's own local rule at
their own rate (a decorrelation layer), never from the loss; ``held_params``: both. Both default to none; a
compiled engine runs such a network only where it holds them as the training loop does (:mod:`neuro.engine`),
else the torch path does.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

Params = dict[str, Tensor]

__all__ = ["AbstractNetwork", "Derivatives", "LinearFilter", "Params", "check_positive", "check_choice", "state_dtype"]


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


class Derivatives(NamedTuple):
    """The element-wise derivatives of one ``neuron`` step at ``(state, i)``, per sample and neuron.

    ``h`` are the state fields named by ``trace_fields`` (K of them), ``I`` the current, ``b`` the bias
    vector with the current held fixed (so where ``bias_in_current`` the bias reaches the neuron only
    through ``I``: ``d/db = d/dI``). The spike's derivative is the model's surrogate.
    """

    state: NamedTuple  # s_t, equal to neuron's
    z: Tensor  # [B, n] z_t
    dh_dh: Tensor  # [B, n, K, K] d h_t[f] / d h_{t-1}[g]  (row f, column g)
    dh_dI: Tensor  # [B, n, K]    d h_t / d I_t
    dh_db: Tensor  # [B, n, K]    d h_t / d b, I_t held fixed
    dz_dh: Tensor  # [B, n, K]    d z_t / d h_{t-1}
    dz_dI: Tensor  # [B, n]       d z_t / d I_t
    dz_db: Tensor  # [B, n]       d z_t / d b, I_t held fixed


class LinearFilter(NamedTuple):
    """``h_t = dh_dh h_{t-1} + dh_dI I_t + dh_db b + (spike and reset terms, constants)``, the same for every
    neuron: the trace fields' update with the spikes held fixed (:meth:`AbstractNetwork.linear_filter`)."""

    dh_dh: tuple[tuple[float, ...], ...]  # [K][K]
    dh_dI: tuple[float, ...]  # [K]
    dh_db: tuple[float, ...]  # [K]


@dataclasses.dataclass(frozen=True)
class AbstractNetwork(abc.ABC):
    """A recurrent network: ``n_in`` inputs, ``n_hidden`` units, ``n_out`` readouts.

    Subclasses are frozen dataclasses; every hyper-parameter is a field (it shows in ``repr``).
    """

    n_in: int
    n_hidden: int
    n_out: int
    #: which synapses of each weight matrix exist (:mod:`neuro.connectivity`): a number P (``W_rec`` at random
    #: with probability P), a rule, or a dict of matrix names to rules; dense by default
    connectivity: Any = ()

    #: registry name, set by each model
    name: ClassVar[str] = ""
    #: True for spiking models (``z`` is 0/1 with a surrogate derivative)
    spiking: ClassVar[bool] = False
    #: the state type (a NamedTuple class)
    State: ClassVar[type]
    #: the current is ``W_in x + W_rec presynaptic(state) (+ b)`` and the readout ``y_t = readout_decay
    #: y_{t-1} + W_out z_t + b_out`` (module docstring): the form the local and node-perturbation rules read
    local_form: ClassVar[bool] = False
    #: ``b`` is a term of the current (True) or of the neuron's own update (False)
    bias_in_current: ClassVar[bool] = False
    #: the per-neuron state fields whose previous value ``neuron`` reads differentiably (the ``h`` of
    #: :class:`Derivatives`)
    trace_fields: ClassVar[tuple[str, ...]] = ()
    #: the trace fields updated by one linear filter of the current, the same for every neuron
    uniform_fields: ClassVar[tuple[str, ...]] = ()
    #: the weight matrices a ``connectivity`` may make sparse (their ``current`` reads them through :meth:`weight`)
    maskable: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in ("n_in", "n_hidden", "n_out"):
            check_positive(f, getattr(self, f), integer=True)
        from neuro import connectivity

        object.__setattr__(self, "connectivity", connectivity.normalise(self.connectivity, self.sparse_default))
        for name, _ in self.connectivity:
            if name not in self.maskable:
                valid = f"valid are {', '.join(self.maskable)}" if self.maskable else "it has none that may be sparse"
                raise ValueError(f"connectivity names {name!r}, which is no sparse-capable weight matrix of model "
                                 f"{self.name!r}: {valid}")

    # -- connectivity (neuro.connectivity) --------------------------------------------------------
    @property
    def sparse_default(self) -> tuple[str, ...]:
        """The matrices a plain number ``connectivity=P`` makes sparse: the recurrent one."""
        return ("W_rec",)

    def input_current(self, params: Params, x: Tensor) -> Tensor:
        """The part of :meth:`current` that the input ``x`` drives, ``W_in x`` (models of ``local_form``; a
        :class:`models.stack.Stack` adds it for layers fed by the layer below within the step)."""
        return x @ self.weight(params, "W_in").mT

    @functools.cached_property
    def masks(self) -> dict[str, Tensor]:
        """The boolean mask of every sparse weight matrix, by name, in the parameter's shape (``{}``: dense). A
        matrix of ``k`` stacked blocks of ``n_hidden`` rows (LSTM gates) repeats one ``[n_hidden, n_pre]`` mask."""
        from neuro import connectivity

        shapes, out = self.param_shapes(), {}
        for name, rule in self.connectivity:
            rows, cols = shapes[name]
            blocks = rows // self.n_hidden if rows % self.n_hidden == 0 and rows > self.n_hidden else 1
            m = connectivity.mask(name, rule, rows // blocks, cols)
            out[name] = m.repeat(blocks, 1) if blocks > 1 else m
        return out

    def weight(self, params: Params, name: str) -> Tensor:
        """``params[name]`` as the current reads it: times its mask where the matrix is sparse."""
        w = params[name]
        m = self.masks.get(name)
        if m is None:
            return w
        return w * (m if m.device == w.device else m.to(w.device))

    def sparse_init(self, params: Params) -> Params:
        """Freshly drawn dense ``params`` made sparse: each masked matrix times its mask and scaled by
        ``sqrt(n_pre / mean fan-in)``, so that a unit's summed input keeps the variance the dense draw gives it."""
        out = dict(params)
        for k, m in self.masks.items():
            fan = float(m.sum()) / m.shape[0]
            out[k] = params[k] * m.to(params[k].dtype) * (math.sqrt(m.shape[1] / fan) if fan > 0 else 0.0)
        return out

    def mask_params(self, params: Params) -> Params:
        """``params`` (or an estimate of their shapes) with every entry off its mask set to 0 (a new dict; the
        dense matrices are the same tensors)."""
        if not self.masks:
            return params
        return {k: self.weight(params, k) if k in self.masks else v for k, v in params.items()}

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

    # -- facts for local rules (module docstring) ------------------------------------------------
    def presynaptic(self, state: NamedTuple) -> Tensor:
        """The vector [B, n_hidden] that ``W_rec`` multiplies in ``current`` (models of ``local_form``)."""
        raise NotImplementedError(f"model {self.name!r} does not give its presynaptic activity (local_form is False)")

    @property
    def readout_decay(self) -> float:
        """``d y_t / d y_{t-1}`` of the readout: 0 for a linear readout (models of ``local_form``)."""
        raise NotImplementedError(f"model {self.name!r} does not give its readout's decay (local_form is False)")

    @property
    def readout_fan_in(self) -> int:
        """The number of features the readout currently reads (``n_hidden``; a constructive network: its
        active columns). An optimizer may scale the readout's step by it (:mod:`neuro.optim`)."""
        return self.n_hidden

    @property
    def fixed_params(self) -> tuple[str, ...]:
        """Parameters held at their initial value: no rule perturbs them and no optimizer steps them (e.g. the
        biases of a network built without biases, kept at 0 so that every model has the same keys)."""
        return ()

    @property
    def local_params(self) -> dict[str, float]:
        """Parameters the network learns by its own local rule, by name with their learning rate: never from
        the loss (no rule's estimate is used for them), each stepped by plain SGD at its rate on the estimate
        :meth:`local_estimate` gives (:class:`neuro.rules.decorrelation.Decorrelated` adds it to every step)."""
        return {}

    def local_estimate(self, params: Params, state: NamedTuple) -> Params:
        """The estimate of each of :attr:`local_params` after a step that ended in ``state`` (the optimizer
        applies ``-rate`` times it)."""
        raise NotImplementedError(f"model {self.name!r} learns no parameter by a local rule of its own")

    @property
    def held_params(self) -> tuple[str, ...]:
        """The parameters the loss does not train: :attr:`fixed_params`, then :attr:`local_params`."""
        return (*self.fixed_params, *self.local_params)

    def with_output(self, state: NamedTuple, y: Tensor) -> NamedTuple:
        """``state`` with the readout's memory ``y_{t-1}`` set to ``y`` (unchanged for a linear readout)."""
        return state

    def linear_filter(self) -> LinearFilter | None:
        """The trace fields' update with the spikes held fixed, where it is one linear filter of the current
        the same for every neuron (module docstring); None otherwise (the default)."""
        return None

    def neuron_derivatives(self, params: Params, state: NamedTuple, i: Tensor) -> Derivatives:
        """The element-wise derivatives of ``neuron`` at ``(state, i)`` (:class:`Derivatives`), from
        ``neuron`` itself: as ``neuron`` couples no two units or samples, ``d(sum of output o)/d(input)`` is
        the diagonal ``d o_j / d input_j``, so the batch is repeated once per output (the K trace fields,
        then ``z``) and ONE reverse pass of the sum of copy c's output c gives them all. No graph outlives
        the call."""
        B, n = i.shape
        if n != self.n_hidden or not self.trace_fields:
            raise NotImplementedError(f"model {self.name!r} has no element-wise neuron with trace fields: "
                                      f"its current has {n} entries for {self.n_hidden} units")
        idx = [state._fields.index(f) for f in self.trace_fields]
        K, C = len(idx), len(idx) + 1
        has_b = "b" in params and tuple(params["b"].shape) == (n,)
        with torch.enable_grad():
            rep = [f.detach().repeat(C, *([1] * (f.dim() - 1))) for f in state]
            for k in idx:
                rep[k].requires_grad_(True)
            il = i.detach().repeat(C, 1).requires_grad_(True)
            q = {k: v.detach() for k, v in params.items()}
            if has_b:
                q["b"] = q["b"].expand(C * B, n).clone().requires_grad_(True)
            s_new, z = self.neuron(q, type(state)(*rep), il)
            outs = [s_new[k] for k in idx] + [z]
            picked = [o[c * B:(c + 1) * B].sum() for c, o in enumerate(outs) if o.requires_grad]
            ins = [rep[k] for k in idx] + [il] + ([q["b"]] if has_b else [])
            grads = torch.autograd.grad(torch.stack(picked).sum(), ins, allow_unused=True) if picked else [None] * len(ins)
        G = [i.new_zeros(C, B, n) if g is None else g.detach().view(C, B, n) for g in grads]
        if not has_b:
            G.append(i.new_zeros(C, B, n))
        dh = torch.stack(G[:K], -1).permute(1, 2, 0, 3)  # [B, n, C (out), K (in)]
        st = type(state)(*(f[:B].detach() for f in s_new))
        return Derivatives(state=st, z=z[:B].detach(), dh_dh=dh[:, :, :K], dh_dI=G[K][:K].permute(1, 2, 0),
                           dh_db=G[K + 1][:K].permute(1, 2, 0), dz_dh=dh[:, :, K], dz_dI=G[K][K], dz_db=G[K + 1][K])

    # -- helpers shared by every model -----------------------------------------------------------
    def n_params(self, params: Params) -> int:
        return sum(p.numel() for p in params.values())

    def check_params(self, params: Params) -> None:
        """Raise ``TypeError`` unless ``params`` is a dict of float tensors, ``ValueError`` if it lacks a key or
        has a wrong shape or mixed dtypes."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict[str, Tensor] from net.init_params, got {type(params).__name__}")
        for k, v in params.items():
            if not isinstance(v, Tensor):
                cls = type(v)
                kind = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
                article = "an" if kind[0] in "aeiou" else "a"
                raise TypeError(f"params[{k!r}] is invalid: got {article} {kind}, expected a torch.Tensor (as "
                                "net.init_params gives)")
            if v.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"params[{k!r}] is invalid: got dtype {v.dtype}, expected torch.float32 or torch.float64")
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
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed={seed!r} is invalid: must be an integer >= 0")
        g = torch.Generator()
        g.manual_seed(int(seed))
        return g
