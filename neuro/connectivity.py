"""Sparse connectivity: which synapses of a weight matrix exist.

A network's ``connectivity`` (a field of every network of the cell contract, :mod:`neuro.contract`) names, per
weight matrix, a rule that draws its mask; the mask is part of the network's definition (its wiring), so the
same network always has the same synapses, whatever seed its weights are drawn from::

    LIF(n_in=2, n_hidden=64, n_out=1, connectivity=0.1)                     # W_rec: each synapse with p = 0.1
    LIF(..., connectivity={"W_rec": "fan-in:8", "W_in": "one-to-one"})     # per matrix

Rules, by the string each is written as (``@seed`` picks another draw, default 0):

- ``"random:P"`` (or the number ``P``): each synapse exists independently with probability ``P`` (Erdos-Renyi,
  Brian2's ``connect(p=P)``);
- ``"fan-in:K"``: every postsynaptic unit receives exactly ``K`` synapses from distinct presynaptic units drawn
  uniformly (Loihi's and NEST's ``fixed_indegree``);
- ``"one-to-one"``: unit ``j`` receives only from unit ``j`` (Brian2's ``connect(j='i')``; square matrices);
- ``"dense"``: every synapse;
- a tuple of ``(post, pre)`` index pairs: exactly those synapses (a given mask; :func:`given` turns a boolean
  matrix into one).

A plain number applies to the recurrent matrix ``W_rec`` (and, in a stack, to the feed-forward matrices
between layers, :mod:`models.stack`); a dict or a tuple of ``(name, rule)`` pairs names the matrices. A
network's parameters keep their dense shapes with zeros off the mask: its ``current`` reads ``W * mask``, every
rule's estimate is zero off the mask (:class:`neuro.rules.base.AbstractRule`), and a checkpoint stores only
the synapses that exist (:func:`pack`, :func:`unpack`).

A matrix whose rows are ``k`` stacked blocks of ``n`` units (an LSTM's four gates) uses one ``[n, n_pre]``
mask for every block: a synapse exists for all gates of a unit or for none.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["KINDS", "compact", "density", "expand", "given", "mask", "normalise", "pack", "unpack"]

KINDS = ("random", "fan-in", "one-to-one", "dense")
_FORMS = "'random:P', 'fan-in:K', 'one-to-one', 'dense' (each optionally followed by '@seed'), a number P in (0, 1] or a tuple of (post, pre) index pairs"


def _parse(name: str, rule: Any) -> tuple[str, float, int]:
    """``(kind, value, seed)`` of one rule given as a string or a number; a ``ValueError`` names it otherwise."""
    if isinstance(rule, bool):
        raise ValueError(f"connectivity[{name!r}]={rule!r} is invalid: expected {_FORMS}")
    if isinstance(rule, (int, float)):
        rule = f"random:{rule!r}"
    if not isinstance(rule, str):
        raise ValueError(f"connectivity[{name!r}]={rule!r} is invalid: expected {_FORMS}")
    body, _, seed_text = rule.partition("@")
    kind, _, value_text = body.partition(":")
    try:
        seed = int(seed_text) if seed_text else 0
        if seed < 0:
            raise ValueError
        if kind == "random":
            value = float(value_text)
            if not (0.0 < value <= 1.0) or not math.isfinite(value):
                raise ValueError
        elif kind == "fan-in":
            value = int(value_text)
            if value < 1:
                raise ValueError
        elif kind in ("one-to-one", "dense") and not value_text:
            value = 0
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"connectivity[{name!r}]={rule!r} is invalid: expected {_FORMS}") from None
    return kind, float(value), seed


def normalise(connectivity: Any, default: tuple[str, ...] = ("W_rec",)) -> tuple[tuple[str, Any], ...]:
    """The canonical form of a ``connectivity`` setting: a sorted tuple of ``(matrix name, rule)`` pairs, each rule
    a string or a tuple of ``(post, pre)`` pairs (what a network's field holds and its config.json records).
    ``None``, ``1`` and ``()`` are dense (``()``); a number or a single rule applies to the matrices ``default``."""
    if connectivity is None or connectivity == () or (isinstance(connectivity, (int, float))
                                                      and not isinstance(connectivity, bool) and connectivity == 1):
        return ()
    if isinstance(connectivity, (int, float, str)) and not isinstance(connectivity, bool):
        connectivity = {name: connectivity for name in default}
    if isinstance(connectivity, Mapping):
        items = list(connectivity.items())
    elif isinstance(connectivity, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2
                                                          and isinstance(p[0], str) for p in connectivity):
        items = [tuple(p) for p in connectivity]
    else:
        raise ValueError(f"connectivity={connectivity!r} is invalid: expected a number P in (0, 1], a rule "
                         f"({_FORMS}), or a dict of weight-matrix names to rules")
    out = {}
    for name, rule in items:
        if not isinstance(name, str):
            raise ValueError(f"connectivity key {name!r} is invalid: expected a weight matrix's name (e.g. 'W_rec')")
        if isinstance(rule, (tuple, list)):
            pairs = tuple(sorted({(int(a), int(b)) for a, b in _pairs(name, rule)}))
            out[name] = pairs
        else:
            kind, value, seed = _parse(name, rule)
            if kind == "dense":
                continue
            text = f"{kind}:{value:g}" if kind == "random" else f"{kind}:{int(value)}" if kind == "fan-in" else kind
            out[name] = text + (f"@{seed}" if seed else "")
    return tuple(sorted(out.items()))


def _pairs(name: str, rule: Any) -> list[tuple[int, int]]:
    bad = ValueError(f"connectivity[{name!r}] is invalid: a given mask is a tuple of (post, pre) pairs of "
                     "integers >= 0 (connectivity.given turns a boolean matrix into one)")
    out = []
    for pair in rule:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise bad
        a, b = pair
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (a, b)):
            raise bad
        out.append((a, b))
    return out


def given(matrix: Tensor) -> tuple[tuple[int, int], ...]:
    """The ``(post, pre)`` pairs of a boolean (or 0/1) matrix ``[n_post, n_pre]``: a given mask's rule."""
    m = torch.as_tensor(matrix)
    if m.dim() != 2:
        raise ValueError(f"a given mask must be a matrix [n_post, n_pre], got shape {tuple(m.shape)}")
    return tuple((int(a), int(b)) for a, b in torch.nonzero(m != 0).tolist())


def mask(name: str, rule: Any, n_post: int, n_pre: int) -> Tensor:
    """The boolean mask ``[n_post, n_pre]`` that ``rule`` (one entry of :func:`normalise`) draws for the matrix
    ``name``. Random draws use a generator seeded from the rule's seed and the matrix's name, so two matrices of
    one network get different wirings and the same network always the same one."""
    if isinstance(rule, tuple):
        m = torch.zeros(n_post, n_pre, dtype=torch.bool)
        for a, b in rule:
            if a >= n_post or b >= n_pre:
                raise ValueError(f"connectivity[{name!r}] is invalid: the pair ({a}, {b}) is outside the matrix "
                                 f"[{n_post}, {n_pre}]")
            m[a, b] = True
        return m
    kind, value, seed = _parse(name, rule)
    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{name}@{seed}".encode()))
    if kind == "random":
        return torch.rand(n_post, n_pre, generator=g, dtype=torch.float64) < value
    if kind == "fan-in":
        k = int(value)
        if k > n_pre:
            raise ValueError(f"connectivity[{name!r}]={rule!r} is invalid: fan-in {k} exceeds the {n_pre} "
                             "presynaptic units")
        idx = torch.rand(n_post, n_pre, generator=g, dtype=torch.float64).argsort(dim=1)[:, :k]
        return torch.zeros(n_post, n_pre, dtype=torch.bool).scatter_(1, idx, True)
    if kind == "one-to-one":
        if n_post != n_pre:
            raise ValueError(f"connectivity[{name!r}]='one-to-one' is invalid: the matrix is [{n_post}, {n_pre}], "
                             "one-to-one needs as many presynaptic as postsynaptic units")
        return torch.eye(n_post, dtype=torch.bool)
    return torch.ones(n_post, n_pre, dtype=torch.bool)


def density(m: Tensor) -> float:
    """The fraction of synapses that exist."""
    return float(m.sum()) / max(m.numel(), 1)


def pack(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` with every masked matrix stored as the vector of its existing synapses (row-major order of the
    mask): what a checkpoint writes. :func:`unpack` inverts it given the same masks."""
    return {k: (v[masks[k]] if k in masks else v) for k, v in params.items()}


def unpack(stored: Mapping[str, Tensor], masks: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]
           ) -> dict[str, Tensor]:
    """The dense parameters from :func:`pack`'s form (zeros off the mask); a ``ValueError`` when a stored vector
    does not have one value per synapse of its mask."""
    out = {}
    for k, v in stored.items():
        if k in masks and tuple(v.shape) != tuple(shapes[k]):
            m = masks[k]
            if v.dim() != 1 or v.numel() != int(m.sum()):
                raise ValueError(f"stored {k!r} has shape {tuple(v.shape)}; expected the {int(m.sum())} synapses of "
                                 f"its mask (or the dense shape {tuple(shapes[k])})")
            full = v.new_zeros(shapes[k])
            full[m] = v
            v = full
        out[k] = v
    return out


_COMPACT = "__sparse__"


def compact(tensors: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """``tensors`` (parameters, or anything of their shapes) for a checkpoint: each masked one as a
    self-describing record of its existing entries, its mask as a bitmap (one bit per synapse) and its shape, which
    :func:`expand` turns back into the dense tensor without knowing the network. At connectivity ``p`` a float32
    matrix takes ``4 p + 1/8`` bytes per entry instead of 4."""
    out: dict[str, Any] = {}
    for k, v in tensors.items():
        m = masks.get(k)
        if m is None or not isinstance(v, Tensor) or tuple(v.shape) != tuple(m.shape):
            out[k] = v
            continue
        m = m.to(v.device)
        bits = torch.from_numpy(__import__("numpy").packbits(m.reshape(-1).cpu().numpy()))
        out[k] = {_COMPACT: True, "shape": tuple(m.shape), "bits": bits, "values": v[m].clone()}
    return out


def expand(obj: Any) -> Any:
    """``obj`` with every record :func:`compact` wrote turned back into its dense tensor (zeros off the mask),
    searched through dicts, lists and tuples."""
    if isinstance(obj, dict):
        if obj.get(_COMPACT) is True:
            import numpy as np

            shape, values = tuple(obj["shape"]), obj["values"]
            n = math.prod(shape)
            m = torch.from_numpy(np.unpackbits(obj["bits"].cpu().numpy(), count=n).astype(bool)).reshape(shape)
            if int(m.sum()) != values.numel():
                raise ValueError(f"a compact tensor of shape {shape} has {values.numel()} values for a mask of "
                                 f"{int(m.sum())} synapses: the checkpoint is damaged")
            full = values.new_zeros(shape)
            full[m.to(values.device)] = values
            return full
        return {k: expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(expand(v) for v in obj)
    return obj
