"""Every fast path equals its rule's definition (``neuro/rules/_fast``), in float64.

For every rule with a fast path (``neuro.rules._fast.PATHS``) and every model it runs on, the same run is
made twice, with ``fast=False`` (the definition in the rule's file) and with the fast path, on the same
parameters, inputs and seed: a first sequence with updates in the middle of a window (``flush``, then an
SGD step on the parameters with the estimate, so that the rest of the window runs on new parameters), its
``finish``, a ``reset`` and a second, shorter sequence. The outputs, the losses and every estimate handed
to the optimizer must agree to 1e-9 (relative to the estimate's scale). One test over every pair.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from neuro import rules
from neuro.rules import _fast

N_IN, N_HIDDEN, N_OUT = 3, 6, 2
#: short windows so that windows close inside the sequences, and flushes fall in the middle of one
OPTIONS = {"window": 4, "k": 3, "T": 12}
SEQUENCES = ((11, (3, 6)), (6, (2,)))  # (steps, steps after which an update is due)
LR = 0.05


def _cases() -> list[tuple[str, str]]:
    cases = []
    for rule in sorted(_fast.PATHS):
        cls = rules.get(rule)
        opts = {k: v for k, v in OPTIONS.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for model in models.available():
            try:
                net = models.make(model, n_in=N_IN, n_hidden=N_HIDDEN, n_out=N_OUT)
                built = rules.make(rule, net, **opts)
            except (TypeError, ValueError):
                continue
            if built.fast_path is not None:
                cases.append((rule, model))
    return cases


CASES = _cases()


def _run(rule, params, seed: int = 3):
    """Outputs, losses and the estimates handed to the optimizer over the two sequences (module docstring)."""
    params = {k: v.clone() for k, v in params.items()}
    g = torch.Generator().manual_seed(seed)
    net = rule.net
    state = rule.init(params, 2, seed=seed)
    outs, grads = [], []

    def apply(g_):
        if g_ is not None:
            grads.append(g_)
            for k in params:
                params[k] -= LR * g_[k]

    for s, (steps, updates) in enumerate(SEQUENCES):
        if s:
            state = rule.reset(params, state)
        acc = None
        for t in range(steps):
            x = torch.randn(2, net.n_in, generator=g, dtype=torch.float64)
            y = torch.randn(2, net.n_out, generator=g, dtype=torch.float64)
            out = rule.step(params, state, x, y, torch.ones(2, dtype=torch.float64))
            state = out.state
            outs.append((out.y, out.loss))
            acc = _add(acc, out.grad)
            if t + 1 in updates:
                state, gf = rule.flush(params, state)
                apply(_add(acc, gf))
                acc = None
        state, gf = rule.finish(params, state)
        apply(_add(acc, gf))
    return outs, grads


def _add(acc, g):
    if g is None:
        return acc
    return dict(g) if acc is None else {k: acc[k] + g[k] for k in acc}


@pytest.mark.parametrize("rule_name,model", CASES, ids=[f"{r}-{m}" for r, m in CASES])
def test_fast_path_equals_definition(rule_name, model):
    net = models.make(model, n_in=N_IN, n_hidden=N_HIDDEN, n_out=N_OUT)
    opts = {k: v for k, v in OPTIONS.items() if k in {f.name for f in dataclasses.fields(rules.get(rule_name))}}
    fast, definition = rules.make(rule_name, net, **opts), rules.make(rule_name, net, fast=False, **opts)
    assert fast.fast_path is not None and definition.fast_path is None
    params = net.init_params(1, torch.float64)
    outs_f, grads_f = _run(fast, params)
    outs_d, grads_d = _run(definition, params)
    for (yf, lf), (yd, ld) in zip(outs_f, outs_d):
        torch.testing.assert_close(yf, yd, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(lf, ld, rtol=1e-9, atol=1e-10)
    assert len(grads_f) == len(grads_d) > 0
    for gf, gd in zip(grads_f, grads_d):
        assert set(gf) == set(gd)
        for k in gd:
            scale = float(gd[k].abs().max()) + 1e-12
            torch.testing.assert_close(gf[k] / scale, gd[k] / scale, rtol=0, atol=1e-9, msg=k)


def test_every_fast_path_is_tested():
    assert {r for r, _ in CASES} == set(_fast.PATHS)
