"""A stack of recurrent layers: L layers of one model (rate, lstm, lif, alif, lif-loihi), layer ``l`` fed within
the step by layer ``l-1``'s output, recurrence within each layer, a readout from the last layer.

Per step, with ``z^0_t = x_t`` the input and layer ``l = 1..L`` a network of the layer model (its own ``W_in``,
``W_rec``, ``b`` and neuron; :mod:`models.lif`, :mod:`models.rate`, ...)::

    I^l_t = W^l_in u^l_t + W^l_rec p^l_{t-1} (+ b^l)       u^l_t = z^{l-1}_t   (skip: [z^{l-1}_t, x_t] for l > 1)
    h^l_t, z^l_t = neuron^l(h^l_{t-1}, I^l_t)
    y_t = readout(z^L_t)                                     (skip: readout([z^1_t, ..., z^L_t]))

as snnTorch, norse, SpikingJelly and Rockpool compose layers, and as OTTT and SLTT (Xiao et al. 2022, Meng et
al. 2023) write their deep networks: the feed-forward path has no delay, the recurrent one a step.
``skip=True`` adds Graves' (2013, "Generating sequences with recurrent neural networks", Sec. 2) skip
connections: the input reaches every layer and every layer reaches the readout.

*The cell contract.* The stack is one network of ``n_hidden = sum(sizes)`` units whose state is the layer
model's state with every per-unit field the layers' fields side by side (``v`` [B, n_hidden], ...; the
readout's ``y`` once), so simulate, train, compare, checkpoint and resume take it unchanged. One step splits
the contract's way: ``current`` is everything known before the step (layer 1's whole current; the recurrent
part, bias and skip input of the others), ``neuron`` runs the layers bottom-up, adding to each layer's current
its input from the layer below (:meth:`Stack.complete`) before that layer's neuron, ``readout`` is the layer
model's readout. The neuron therefore couples units (``local_form`` is False): rules written for one layer's
local form refuse a stack unless they are written for layers (they read :attr:`Stack.layers`,
:meth:`Stack.layer_params`, :meth:`Stack.layer_state` and :meth:`Stack.complete`).

*Parameters.* Layer ``l`` (from 0) keeps its model's keys prefixed ``"l."`` (``"0.W_in"``, ``"0.W_rec"``,
``"0.b"``, ``"1.W_in"``, ...); the readout is ``W_out`` [n_out, n_L] (skip: [n_out, n_hidden]) and ``b_out``.
Layer ``l``'s parameters are drawn by its model from seed ``seed + 1000003 l``, so a stack of one layer is
its layer model exactly; ``feedforward_scale`` multiplies the drawn feed-forward matrices ``W^l_in`` (l > 0).
``options`` are every layer's hyper-parameters and ``per_layer`` (one set of overrides per layer, or none)
gives a layer its own (e.g. each layer's weight exponents on Loihi, :func:`hw_targets.lava.quantize`).
The layer models scale their input weights for inputs of a few active channels; a spiking layer's input from
the layer below is sparse (a few percent of its units spike per step) and zero-mean weighted, so with the
default scale 1 the upper layers of a LIF stack fire several times less than the first (a (256, 256) LIF
stack on Poisson input: about 1.9% and 0.5% of units per step); a scale of 3 to 8 brings them closer.

*Connectivity.* ``connectivity=P`` makes every recurrent matrix and every feed-forward matrix between layers
sparse (``"l.W_rec"``, and ``"l.W_in"`` for l > 0) with connection probability ``P``; a dict names matrices
(:mod:`neuro.connectivity`). The masks are drawn per matrix name, so the layers are wired independently.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive, state_dtype

__all__ = ["Stack"]

#: layer models a stack is made of
LAYER_MODELS = ("rate", "lstm", "lif", "alif", "lif-loihi")
_READOUT = ("W_out", "b_out")


@dataclasses.dataclass(frozen=True)
class Stack(AbstractNetwork):
    """``len(sizes)`` layers of the model ``layer`` with hyper-parameters ``options`` (module docstring).
    ``n_hidden`` is ``sum(sizes)`` (0 sets it); without ``sizes``, ``n_hidden`` units make two layers of half
    each (the default stack, ``models.make("stack", n_in=.., n_hidden=8, n_out=..)``)."""

    n_in: int = 0
    n_hidden: int = 0
    n_out: int = 0
    layer: str = "lif"
    sizes: tuple[int, ...] = ()
    skip: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    feedforward_scale: float = 1.0
    per_layer: tuple[tuple[tuple[str, Any], ...], ...] = ()

    name = "stack"

    def __post_init__(self) -> None:
        import models

        if self.layer not in LAYER_MODELS:
            raise ValueError(f"layer={self.layer!r} is invalid: a stack is made of {', '.join(map(repr, LAYER_MODELS))}")
        sizes = tuple(self.sizes) if isinstance(self.sizes, (tuple, list)) else None
        if sizes == () and isinstance(self.n_hidden, int) and not isinstance(self.n_hidden, bool) and self.n_hidden >= 2:
            sizes = ((self.n_hidden + 1) // 2, self.n_hidden // 2)  # the default stack: two layers
        if not sizes:
            raise ValueError(f"sizes={self.sizes!r} is invalid: expected the units of each layer, e.g. (64, 64)")
        for k in sizes:
            check_positive("sizes", k, integer=True)
        object.__setattr__(self, "sizes", sizes)
        if self.n_hidden == 0:
            object.__setattr__(self, "n_hidden", sum(sizes))
        if self.n_hidden != sum(sizes):
            raise ValueError(f"n_hidden={self.n_hidden!r} is invalid for sizes={sizes}: it is their sum, "
                             f"{sum(sizes)} (or 0)")
        check_positive("feedforward_scale", self.feedforward_scale)
        if not isinstance(self.skip, bool):
            raise ValueError(f"skip={self.skip!r} is invalid: expected True or False")
        opts = dict(self.options) if not isinstance(self.options, dict) else dict(self.options)
        for k in ("n_in", "n_hidden", "n_out", "connectivity"):
            if k in opts:
                raise ValueError(f"options[{k!r}] is invalid: the stack sets each layer's {k}")
        object.__setattr__(self, "options", tuple(sorted(opts.items())))
        models._MODELS.check_options(self.layer, opts)
        per = tuple(self.per_layer) if isinstance(self.per_layer, (tuple, list)) else None
        if per is None or (per and len(per) != len(sizes)):
            raise ValueError(f"per_layer={self.per_layer!r} is invalid: expected one set of option overrides per layer "
                             f"({len(sizes)}), or none")
        per = tuple(tuple(sorted((dict(o) if not isinstance(o, dict) else o).items())) for o in per)
        for o in per:
            models._MODELS.check_options(self.layer, dict(o))
            if {"n_in", "n_hidden", "n_out", "connectivity"} & set(dict(o)):
                raise ValueError(f"per_layer={self.per_layer!r} is invalid: the stack sets each layer's sizes and wiring")
        object.__setattr__(self, "per_layer", per)
        super().__post_init__()
        for i, net in enumerate(self.layers):
            if net.held_params:
                raise ValueError(f"layer {i} ({net!r}) has parameters held fixed or learnt by its own rule "
                                 f"({', '.join(net.held_params)}); a stack takes layers whose every parameter "
                                 "the loss trains")

    # -- the layers ----------------------------------------------------------------------------------
    @functools.cached_property
    def layers(self) -> tuple[AbstractNetwork, ...]:
        """Layer ``l``'s network (dense: the stack applies the masks): ``n_in`` its input's width, ``n_hidden``
        its size; its readout is unused."""
        import models

        out = []
        for i, n in enumerate(self.sizes):
            n_in = self.n_in if i == 0 else self.sizes[i - 1] + (self.n_in if self.skip else 0)
            out.append(models.make(self.layer, n_in=n_in, n_hidden=n, n_out=self.n_out, **self.layer_options(i)))
        return tuple(out)

    @functools.cached_property
    def slices(self) -> tuple[slice, ...]:
        """Layer ``l``'s units in the stack's ``n_hidden``."""
        edges = [0]
        for n in self.sizes:
            edges.append(edges[-1] + n)
        return tuple(slice(a, b) for a, b in zip(edges[:-1], edges[1:]))

    @functools.cached_property
    def current_slices(self) -> tuple[slice, ...]:
        """Layer ``l``'s entries of the stack's current (an LSTM layer has four per unit)."""
        edges = [0]
        for net in self.layers:
            edges.append(edges[-1] + net.param_shapes()["W_rec"][0])
        return tuple(slice(a, b) for a, b in zip(edges[:-1], edges[1:]))

    @property
    def readout_units(self) -> slice:
        """The units the readout reads: the last layer's (skip: all)."""
        return slice(0, self.n_hidden) if self.skip else self.slices[-1]

    @functools.cached_property
    def _readout_net(self) -> AbstractNetwork:
        import models

        n = self.readout_units.stop - self.readout_units.start
        return models.make(self.layer, n_in=1, n_hidden=n, n_out=self.n_out, **self.layer_options(len(self.sizes) - 1))

    def layer_options(self, l: int) -> dict[str, Any]:
        """Layer ``l``'s hyper-parameters: ``options``, then its entry of ``per_layer`` (the readout takes the last
        layer's)."""
        return {**dict(self.options), **(dict(self.per_layer[l]) if self.per_layer else {})}

    def layer_params(self, params: Params, l: int) -> Params:
        """Layer ``l``'s parameters under its model's own keys, its sparse matrices masked (no readout)."""
        keys = [k for k in self.layers[l].param_shapes() if k not in _READOUT]
        return {k: self.weight(params, f"{l}.{k}") for k in keys}

    def layer_state(self, state: NamedTuple, l: int) -> NamedTuple:
        """Layer ``l``'s state: its units of every per-unit field (``y`` is the stack's readout)."""
        sl = self.slices[l]
        return type(state)(*(v if f == "y" else v[:, sl] for f, v in zip(state._fields, state)))

    def join_states(self, states: list[NamedTuple] | tuple[NamedTuple, ...], y: Tensor | None = None) -> NamedTuple:
        """The stack's state from its layers' states (``y``: the readout's memory, where the model has one)."""
        first = states[0]
        return type(first)(*((y if y is not None else v) if f == "y" else torch.cat([s[k] for s in states], 1)
                             for k, (f, v) in enumerate(zip(first._fields, first))))

    def layer_input(self, x: Tensor, below: Tensor | None, l: int) -> Tensor:
        """``u^l_t``, the vector layer ``l``'s ``W_in`` reads: ``x`` for l = 0, else the layer below's output
        (with ``x`` after it where ``skip``)."""
        if l == 0:
            return x
        return torch.cat([below, x], 1) if self.skip else below

    def complete(self, params: Params, i: Tensor, below: Tensor, l: int) -> Tensor:
        """Layer ``l``'s whole current ``I^l_t``: its entries of :meth:`current`'s ``i`` plus, for l > 0, the
        feed-forward input ``W^l_in z^{l-1}_t`` from the layer below's output ``below`` of this step."""
        own = i[:, self.current_slices[l]]
        if l == 0:
            return own
        u = below if not self.skip else torch.cat([below, below.new_zeros(below.shape[0], self.n_in)], 1)
        return own + self.layers[l].input_current(self.layer_params(params, l), u)

    # -- the cell contract -----------------------------------------------------------------------------
    @property
    def spiking(self) -> bool:  # type: ignore[override]
        return self.layers[0].spiking

    @property
    def State(self) -> type:  # type: ignore[override]
        return self.layers[0].State

    @property
    def maskable(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"{l}.{k}" for l, net in enumerate(self.layers) for k in net.maskable)

    @property
    def sparse_default(self) -> tuple[str, ...]:
        return tuple(f"{l}.{k}" for l in range(len(self.sizes)) for k in (("W_rec",) if l == 0 else ("W_in", "W_rec")))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {f"{l}.{k}": s for l, net in enumerate(self.layers) for k, s in net.param_shapes().items() if k not in _READOUT}
        n_read = self.readout_units.stop - self.readout_units.start
        return {**out, "W_out": (self.n_out, n_read), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        self._generator(seed)  # checks the seed
        p: Params = {}
        for l, net in enumerate(self.layers):
            for k, v in net.init_params(seed + 1000003 * l, torch.float64).items():
                if k not in _READOUT:
                    p[f"{l}.{k}"] = v * self.feedforward_scale if (l > 0 and k == "W_in") else v
        read = self._readout_net.init_params(seed + 1000003 * len(self.sizes), torch.float64) if self.skip else \
            self.layers[-1].init_params(seed + 1000003 * (len(self.sizes) - 1), torch.float64)
        p.update({k: read[k] for k in _READOUT})
        p = self.sparse_init(p)
        return {k: v.to(dtype=dtype, device=device).contiguous() for k, v in p.items()}

    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        dtype, device = state_dtype(params)
        states = [net.init_state({"_": torch.zeros((), dtype=dtype, device=device)}, batch) for net in self.layers]
        y = self._readout_net.init_state({"_": torch.zeros((), dtype=dtype, device=device)}, batch)
        return self.join_states(states, getattr(y, "y", None))

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        """Everything of the step's current known before the step: layer 1's whole current; for the others, the
        recurrent part and bias (and the skip input), their input from below being added by :meth:`neuron`."""
        parts = []
        for l, net in enumerate(self.layers):
            if l == 0:
                u = x
            else:
                u = x.new_zeros(x.shape[0], self.sizes[l - 1])
                u = torch.cat([u, x], 1) if self.skip else u
            parts.append(net.current(self.layer_params(params, l), self.layer_state(state, l), u))
        return torch.cat(parts, 1)

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        """The layers bottom-up: each completes its current with the output of the layer below (this step's)."""
        states, zs, below = [], [], None
        for l, net in enumerate(self.layers):
            s, z = net.neuron(self.layer_params(params, l), self.layer_state(state, l), self.complete(params, i, below, l))
            states.append(s)
            zs.append(z)
            below = z
        return self.join_states(states, getattr(state, "y", None)), torch.cat(zs, 1)

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        return self._readout_net.readout({k: params[k] for k in _READOUT}, state, z[:, self.readout_units])

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return self.layers[0].observe(state)

    @property
    def readout_decay(self) -> float:
        return self._readout_net.readout_decay

    def with_output(self, state: NamedTuple, y: Tensor) -> NamedTuple:
        return self._readout_net.with_output(state, y)

    @property
    def fixed_params(self) -> tuple[str, ...]:
        return ()
