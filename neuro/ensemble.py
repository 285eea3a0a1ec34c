"""An ensemble of independent copies of one network, run as one batched computation.

``Ensemble(base, members=S)`` is itself a network of the cell contract. Its parameters are the base
network's with a leading member axis (``W_rec`` [S, n, n], ...); its batch holds ``S`` groups of ``B``
sequences, member-major (rows ``m B .. (m + 1) B - 1`` are member ``m``'s), and member ``m``'s rows run
with member ``m``'s parameters. Every step computes, for all members at once (a batched matrix product
instead of ``S`` small ones), so nothing couples two members::

    state[m], y[m] = base.step(params[m], state[m], x[m])        for every member m, at once

in one of two ways (``mode``):

* ``"direct"``: the base network's own step on member-major tensors, without any transform: the state
  and input as ``[S, B, n]``, matrices as ``[S, n, m]``, vectors as ``[S, 1, n]`` (scalars ``[S, 1, 1]``).
  A network whose step is written broadcast-friendly (``x @ W.mT``, elementwise vector parameters)
  computes the same thing for ``[B, n]`` with ``[n, m]`` and for ``[S, B, n]`` with ``[S, n, m]``. It has
  the fewest operations, forward and backward.
* ``"vmap"``: the base step under ``torch.func.vmap`` over the members; works for any network of the
  contract, at the cost of the transform's per-operation overhead.

``mode="auto"`` (default) probes the base network once, at construction: ``current``, ``neuron``,
``readout`` and ``step`` on a few random steps (float64, members with distinct parameters, a member count
and batch that match none of the network's sizes), forward values and gradients with respect to the
parameters, direct against vmap. Direct is used where every one agrees to rounding, vmap otherwise
(``Ensemble.direct`` says which; ``mode="direct"`` refuses a network that fails). The probe runs at the
network's own size: milliseconds for small networks, about a second at ``n = 1024``.

In the direct mode, ``a @ b`` of two 3-d tensors in ``current`` and ``readout`` runs as ``torch.bmm(a, b)``
(the kernel ``matmul`` ends in, without its expand / reshape wrapping; see :class:`_BatchedMatmul`), the
parameters reshaped for one BPTT window are reused while the same tensors come back, and a state handed
out is mapped back to the ``[S, B, n]`` tensors behind it: at ``n = 64`` these per-step overheads cost
more than the arithmetic.

A loss averaged over the ``S B`` rows is ``1/S`` times the sum of the members' own losses (each averaged
over its ``B`` rows), so its gradient with respect to member ``m``'s parameters is ``1/S`` times the
gradient member ``m`` alone would get (:func:`neuro.comparison.vectorised` scales it back). Elementwise
optimizers (Adam, SGD) on the stacked parameters then do exactly what ``S`` separate optimizers do.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from neuro.contract import AbstractNetwork, Params, check_choice, check_positive

__all__ = ["MODES", "Ensemble", "stack_params", "unstack_params"]

#: how the members' steps are batched (module docstring)
MODES = ("auto", "direct", "vmap")


def stack_params(members: list[Params]) -> Params:
    """Member parameter dicts (same keys and shapes) -> one dict with a leading member axis."""
    keys = sorted(members[0])
    for i, p in enumerate(members):
        if sorted(p) != keys:
            raise ValueError(f"member {i} has parameters {sorted(p)}; member 0 has {keys}")
    return {k: torch.stack([p[k] for p in members]) for k in keys}


def unstack_params(params: Params) -> list[Params]:
    """The inverse of :func:`stack_params`."""
    S = next(iter(params.values())).shape[0]
    return [{k: v[m] for k, v in params.items()} for m in range(S)]


@dataclasses.dataclass(frozen=True)
class Ensemble(AbstractNetwork):
    """``members`` independent copies of ``base`` (module docstring). ``n_in``/``n_hidden``/``n_out`` are the
    base network's (set from it); ``mode`` chooses how the members are batched (module docstring), ``direct``
    is the outcome (True: direct, False: vmap)."""

    base: AbstractNetwork = None  # type: ignore[assignment]
    members: int = 2
    n_in: int = 0
    n_hidden: int = 0
    n_out: int = 0
    mode: str = "auto"
    direct: bool = False

    name = "ensemble"

    def __init__(self, base: AbstractNetwork, members: int = 2, mode: str = "auto") -> None:
        if not isinstance(base, AbstractNetwork):
            raise TypeError(f"base={base!r} is invalid: expected a network from models.make")
        if isinstance(base, Ensemble):
            raise ValueError("base is already an Ensemble: give the member network")
        check_positive("members", members, integer=True)
        check_choice("mode", mode, MODES)
        if base.held_params:
            raise ValueError(f"base={base!r} is invalid for an Ensemble: its parameters {', '.join(base.held_params)} "
                             "are held fixed or learnt by the network's own rule, which the stacked members would share; "
                             "run its seeds one by one")
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "mode", mode)
        for f in ("n_in", "n_hidden", "n_out"):
            object.__setattr__(self, f, getattr(base, f))
        self.__post_init__()
        object.__setattr__(self, "_handed", {})  # id -> (view handed out, the tensor it views): see _split
        object.__setattr__(self, "_kept", None)  # the direct mode's parameters of the last call: see _broadcastable
        direct = mode != "vmap" and _direct_agrees(base)
        if mode == "direct" and not direct:
            raise ValueError(f"mode='direct' is invalid for {base!r}: its step on member-major tensors does not "
                             "give what it gives under vmap (use mode='auto' or 'vmap')")
        object.__setattr__(self, "direct", direct)

    def __getstate__(self) -> dict:  # the caches hold tensors of the last call (and their graphs): not state
        return {k: v for k, v in self.__dict__.items() if k not in ("_handed", "_kept")}

    def __setstate__(self, state: dict) -> None:
        for k, v in {**state, "_handed": {}, "_kept": None}.items():
            object.__setattr__(self, k, v)

    @property
    def spiking(self) -> bool:  # type: ignore[override]
        return self.base.spiking

    @property
    def State(self) -> type:  # type: ignore[override]
        return self.base.State

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: (self.members, *s) for k, s in self.base.param_shapes().items()}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        """Member ``m`` gets ``base.init_params(seed + m)``."""
        return stack_params([self.base.init_params(seed + m, dtype, device) for m in range(self.members)])

    def _split(self, t: Tensor) -> Tensor:
        """``[S B, ...]`` -> ``[S, B, ...]``; a view this ensemble handed out is mapped back to the tensor it viewed
        (the same values, one operation and one backward node fewer per state field and step)."""
        seen = self._handed.get(id(t))
        if seen is not None and seen[0] is t:
            return seen[1]
        if t.shape[0] % self.members:
            raise ValueError(f"a batch of {t.shape[0]} rows cannot hold {self.members} members equally")
        return t.reshape(self.members, t.shape[0] // self.members, *t.shape[1:])

    def _merge(self, t: Tensor, handed: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
        m = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
        handed[id(m)] = (m, t)
        return m

    def _merge_state(self, st: NamedTuple, *more: Tensor) -> tuple:
        """Merge the fields of ``st`` and ``more``; remember them (only the latest call's) for :meth:`_split`."""
        handed: dict[int, tuple[Tensor, Tensor]] = {}
        out = type(st)(*(self._merge(f, handed) for f in st)), *(self._merge(t, handed) for t in more)
        object.__setattr__(self, "_handed", handed)
        return out

    def init_state(self, params: Params, batch: int = 1) -> NamedTuple:
        """The resting state of ``batch`` rows (``members`` groups of ``batch / members``)."""
        if batch % self.members:
            raise ValueError(f"batch={batch} is invalid for an ensemble of {self.members}: must be a multiple of it")
        member0 = {k: v[0] for k, v in params.items()}
        return self.base.init_state(member0, batch)

    def _broadcastable(self, params: Params) -> Params:
        """The parameters for the direct mode (:func:`_broadcastable`), kept while the same tensors come back
        (a BPTT window passes the same dict at every step) in the same autograd mode."""
        key = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        values = tuple(params.values())
        wants = tuple(v.requires_grad for v in values)
        kept = self._kept
        if (kept is not None and kept[0] is params and kept[1] == key and kept[3] == wants
                and len(values) == len(kept[2]) and all(map(operator.is_, values, kept[2]))):
            return kept[4]
        out = _broadcastable(params)
        object.__setattr__(self, "_kept", (params, key, values, wants, out))
        return out

    def _map(self, fn: Callable, params: Params, state: NamedTuple, arg: Tensor, products: bool = True):
        """``fn(params, state, arg)`` of the base network for every member; ``products``: ``fn`` applies parameter
        matrices (direct mode: run it under :class:`_BatchedMatmul`)."""
        s = type(state)(*(self._split(f) for f in state))
        if not self.direct:
            return vmap(fn)(params, s, self._split(arg))
        p, a = self._broadcastable(params), self._split(arg)
        if not products:
            return fn(p, s, a)
        with _BatchedMatmul():
            return fn(p, s, a)

    def current(self, params: Params, state: NamedTuple, x: Tensor) -> Tensor:
        i = self._map(self.base.current, params, state, x)
        return i.reshape(i.shape[0] * i.shape[1], *i.shape[2:])

    def neuron(self, params: Params, state: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor]:
        return self._merge_state(*self._map(self.base.neuron, params, state, i, products=False))

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        return self._merge_state(*self._map(self.base.readout, params, state, z))

    def step(self, params: Params, state: NamedTuple, x: Tensor) -> tuple[NamedTuple, Tensor]:
        if not (self.direct and type(self.base).step is AbstractNetwork.step):
            return self._merge_state(*self._map(self.base.step, params, state, x))
        # the contract's step in its three parts, the element-wise one without the matmul mode's per-call cost
        s = type(state)(*(self._split(f) for f in state))
        p, x = self._broadcastable(params), self._split(x)
        with _BatchedMatmul():
            i = self.base.current(p, s, x)
        s, z = self.base.neuron(p, s, i)
        with _BatchedMatmul():
            s, y = self.base.readout(p, s, z)
        return self._merge_state(s, y)

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return self.base.observe(state)


_MATMUL = frozenset({torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__})


class _BatchedMatmul(TorchFunctionMode):
    """Inside the direct mode's step: ``a @ b`` of two 3-d tensors with the same leading (member) size is
    ``torch.bmm(a, b)``, the very kernel ``matmul`` ends in, without the expand / reshape / view around it that
    cost more than the product itself at these sizes (and as many nodes again in the backward pass)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _MATMUL and not kwargs and len(args) == 2:
            a, b = args
            if (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() == 3 and b.dim() == 3
                    and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1]):
                return torch.bmm(a, b)
        return func(*args, **(kwargs or {}))


def _broadcastable(params: Params) -> Params:
    """Stacked parameters for the direct mode: vectors ``[S, n]`` -> ``[S, 1, n]``, scalars ``[S]`` -> ``[S, 1, 1]``
    (views), so that they broadcast against ``[S, B, n]``; matrices ``[S, n, m]`` as they are."""
    return {k: v if v.dim() >= 3 else v.reshape(v.shape[0], *(1,) * (3 - v.dim()), *v.shape[1:])
            for k, v in params.items()}


def _probe_sizes(base: AbstractNetwork) -> tuple[int, int]:
    """A member count and a batch per member that equal none of the network's sizes (nor each other), so that
    a wrong broadcast in the direct mode fails or differs instead of matching by coincidence."""
    taken = {base.n_in, base.n_hidden, base.n_out, *(d for s in base.param_shapes().values() for d in s)}
    S = next(k for k in range(3, 10**6) if k not in taken)
    B = next(k for k in range(2, 10**6) if k not in taken and k != S)
    return S, B


def _direct_agrees(base: AbstractNetwork, steps: int = 3) -> bool:
    """Whether the direct mode computes what vmap computes for ``base`` (module docstring): ``current``,
    ``neuron``, ``readout`` and ``step`` over ``steps`` random steps, values and parameter gradients, float64."""
    S, B = _probe_sizes(base)
    g = torch.Generator().manual_seed(0)
    dtype = torch.float64
    try:
        members = [base.init_params(m, dtype=dtype) for m in range(S)]
        params = {k: (v + (0.1 * v.abs().mean() + 0.01) * torch.randn(v.shape, generator=g, dtype=dtype))
                  .requires_grad_(True) for k, v in stack_params(members).items()}
        xs = 3.0 * torch.rand(steps, S * B, base.n_in, generator=g, dtype=dtype)
        ens = {d: Ensemble(base, S, mode="vmap") for d in (True, False)}
        object.__setattr__(ens[True], "direct", True)  # unchecked: this is the check
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a model's complaint about the shapes of the direct mode
            outs = {}
            for d, e in ens.items():
                state = e.init_state(params, S * B)
                seen: list[Tensor] = []
                for t in range(steps):
                    i = e.current(params, state, xs[t])
                    st, z = e.neuron(params, state, i)
                    st, y = e.readout(params, st, z)
                    state, y2 = e.step(params, state, xs[t])
                    seen += [i, z, y, y2, *st, *state]
                w = torch.Generator().manual_seed(1)  # the same cotangents for both modes
                total = sum((v * torch.randn(v.shape, generator=w, dtype=dtype)).sum() for v in seen)
                grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
                outs[d] = [v.detach() for v in seen] + [torch.zeros(()) if gr is None else gr for gr in grads]
        return all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-12)
                   for a, b in zip(outs[True], outs[False], strict=True))
    except Exception:  # noqa: BLE001 - any failure of the direct mode means: use vmap
        return False
