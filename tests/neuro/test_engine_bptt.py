"""The compiled BPTT/TBPTT engine (neuro.engine.bptt) beyond the registry-wide oracle of test_engine.py: windows
longer than one block of the backward's matrix product (its ``dW_rec`` summed block by block), and the memory
it stores per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from neuro import rules, tasks
from neuro.engine import bptt
from neuro.training import train


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("rule,opts,blas", [("bptt", {}, True), ("tbptt", {"k": 8}, True), ("bptt", {}, False)])
def test_windows_of_several_blocks_equal_torch(monkeypatch, alpha, rule, opts, blas):
    """Blocks of 3 steps: windows of 20 (bptt) and 8 (tbptt) steps cut into full and partial blocks, ranges of
    9 steps ending inside windows, batch 2: the torch path's parameters and losses to 1e-10 in float64; and
    ``dW_rec`` summed step by step where the BLAS's threads cannot be set."""
    monkeypatch.setattr(bptt, "BLOCK", 3)
    if not blas:
        monkeypatch.setattr(bptt, "_blas", lambda: None)
    net = models.make("rate", n_in=1, n_hidden=5, n_out=1, alpha=alpha)
    r = rules.make(rule, net, **opts)
    h = {e: train(net, r, tasks.make("sine"), 40, chunk=20, update_every=3, dtype="float64", lr=0.05, batch=2,
                  progress=False, engine=e, log_every=9) for e in ("torch", "compiled")}
    assert h["compiled"].engine == "compiled" and h["compiled"].updates == h["torch"].updates >= 2
    for k, p in h["torch"].params.items():
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-10, atol=1e-13)
    losses = [[m["loss"] for m in h[e].metrics] for e in ("torch", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)


@pytest.mark.parametrize("alpha,per_step", [(1.0, 1), (0.5, 2)])
def test_stored_steps_hold_at_most_two_network_states(alpha, per_step):
    """The arrays that grow with the window hold ``n`` values per step and sample where ``alpha = 1`` (``h``),
    ``2 n`` otherwise (``h`` and ``dh/du``); the rest does not grow with it."""
    net = models.make("rate", n_in=3, n_hidden=7, n_out=2, alpha=alpha)
    engine = bptt.build(net, rules.make("bptt", net, loss="mse"))

    def values(steps: int) -> int:
        return sum(a.size for a in engine.buffers(steps, 2, np.dtype("float64")).values())

    assert (values(500) - values(100)) / 400 == per_step * 2 * 7
    assert engine.stored_bytes(500, 2, 8) - engine.stored_bytes(100, 2, 8) == 400 * per_step * 2 * 7 * 8
