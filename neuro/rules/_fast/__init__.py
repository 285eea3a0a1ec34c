"""Fast paths: faster computations of a rule's numbers, kept apart from the rule's definition.

A rule file (``neuro/rules/<rule>.py``) is the paper's per-step equations. A fast path computes the same
estimate another way where the network allows it: a window of steps summed as one matrix product, closed
forms of a model's derivatives (read through the cell contract), a compiled kernel. :func:`select` picks the
one that applies to a rule (the rule class is decorated with :func:`neuro.rules.base.accelerated`); the
equivalence test ``tests/neuro/rules/test_fast_paths.py`` holds each to its definition in float64, with
updates in the middle of a window.

Each entry of :data:`PATHS` names a module and a function ``build(rule) -> FastPath | None``: the fast path
on ``rule``'s network and options, or None where it does not apply. numba is imported inside the modules
that use it, so ``import neuro`` does not import it.
"""

from __future__ import annotations

import importlib

from neuro.rules.base import AbstractRule, FastPath

__all__ = ["PATHS", "select"]

#: rule name -> "module:function" building its fast path
PATHS: dict[str, str] = {
    "columnar": "neuro.rules._fast.columnar:build",
    "constructive": "neuro.rules._fast.constructive:build",
    "np": "neuro.rules._fast.node:build",
    "anp": "neuro.rules._fast.node:build",
    "anp-time": "neuro.rules._fast.node:build",
    "rtrl": "neuro.rules._fast.rtrl:build",
    "snap1": "neuro.rules._fast.snap:build",
    "snap2": "neuro.rules._fast.snap:build",
    "eprop": "neuro.rules._fast.eprop:build",
    "uoro": "neuro.rules._fast.uoro:build",
    "ottt": "neuro.rules._fast.ottt:build",
    "sltt": "neuro.rules._fast.sltt:build",
    "rflo": "neuro.rules._fast.rflo:build",
    "three-factor": "neuro.rules._fast.three_factor:build",
}


def select(rule: AbstractRule) -> FastPath | None:
    """The fast path that applies to ``rule`` (its network and options), or None. A sparse network
    (``net.masks``) and a stack of layers (:class:`models.stack.Stack`) run the definition: the fast paths are
    written for one dense layer."""
    entry = PATHS.get(rule.name)
    if entry is None or rule.net.masks or rule.net.name == "stack":
        return None
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)(rule)
