"""The constructive / CCN network: stages are feed-forward within the step (a column reads the earlier
stages' current h, nothing later), columns are otherwise independent, inactive stages are zero, and
``per_stage=n_hidden`` is the columnar network with the same parameters."""

from __future__ import annotations

import re

import pytest
import torch

import models

F64 = torch.float64


def _net(cell, n=6, per_stage=2, stage=2):
    net = models.make("constructive", n_in=3, n_hidden=n, n_out=2, per_stage=per_stage, stage=stage, cell=cell)
    return net, net.init_params(seed=0, dtype=F64)


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_stages_are_feed_forward_within_the_step(cell):
    """d h_t,k / d h_{t-1,j}: nonzero for j = k and for j of an earlier stage (through h_t,j, within the
    step), zero for another column of the same stage and for every later stage."""
    net, p = _net(cell)  # stages {0,1}, {2,3}, {4,5}; stage 2 learning: all active
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(1, 6, generator=g, dtype=F64)
    x = torch.randn(1, 3, generator=g, dtype=F64)
    base = net.init_state(p, 1)._replace(h=h0)
    J = torch.func.jacrev(lambda h: net.step(p, base._replace(h=h), x)[0].h)(h0)[0, :, 0]  # [6, 6]
    stage = torch.arange(6) // 2
    for k in range(6):
        for j in range(6):
            if j == k or stage[j] < stage[k]:
                assert J[k, j].abs() > 1e-8, (k, j)
            else:
                assert J[k, j] == 0, (k, j)


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_current_outputs_of_earlier_stages_are_inputs(cell):
    """Stage-by-stage reference: column k's pre-activation uses h_t (not h_{t-1}) of earlier stages."""
    net, p = _net(cell, stage=2)
    g = torch.Generator().manual_seed(1)
    state = net.init_state(p, 2)._replace(h=torch.randn(2, 6, generator=g, dtype=F64))
    x = torch.randn(2, 3, generator=g, dtype=F64)
    new, _ = net.step(p, state, x)
    W_ff = p["W_ff"] * net.ff_mask()[:, None, :]
    a = torch.einsum("bj,kgj->bkg", x, p["W_in"]) + torch.einsum("bj,kgj->bkg", new.h, W_ff) \
        + state.h[:, :, None] * p["w_rec"] + p["b"]
    h, _ = net.cell_update(a, getattr(state, "c", None))
    torch.testing.assert_close(new.h, h, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_later_stages_are_inactive(cell):
    net, p = _net(cell, stage=1)
    g = torch.Generator().manual_seed(2)
    state = net.init_state(p, 2)
    for _ in range(5):
        state, y = net.step(p, state, torch.randn(2, 3, generator=g, dtype=F64))
    assert (state.h[:, 4:] == 0).all() and state.h[:, :4].abs().min() > 0
    if cell == "lstm":
        assert (state.c[:, 4:] == 0).all()
    torch.testing.assert_close(y, state.h @ p["W_out"].T + p["b_out"], rtol=0, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "rate"])
def test_one_stage_is_the_columnar_network(cell):
    net, p = _net(cell, per_stage=6, stage=0)
    col = models.make("columnar", n_in=3, n_hidden=6, n_out=2, cell=cell)
    assert (p["W_ff"] == 0).all() and net.n_stages == 1
    pc = {k: v for k, v in p.items() if k != "W_ff"}
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(30, 2, 3, generator=g, dtype=F64)
    s1, s2 = net.init_state(p, 2), col.init_state(pc, 2)
    for x in xs:
        s1, y1 = net.step(p, s1, x)
        s2, y2 = col.step(pc, s2, x)
        torch.testing.assert_close(y1, y2, rtol=0, atol=1e-14)
        torch.testing.assert_close(tuple(s1), tuple(s2), rtol=0, atol=1e-14)


def test_shapes_stages_and_next_stage():
    net = models.make("constructive", n_in=3, n_hidden=7, n_out=2, per_stage=3)
    assert net.stage == 0 and net.n_stages == 3 and net.stage_columns(2) == slice(6, 7)
    assert net.param_shapes()["W_ff"] == (7, 4, 7)
    mask = net.ff_mask()
    assert mask[3, :3].all() and not mask[3, 3:].any() and mask[6, :6].all() and not mask[:3].any()
    p = net.init_params(seed=0, dtype=F64)
    assert ((p["W_ff"] != 0) == mask[:, None, :].bool()).all()
    n1 = net.next_stage()
    assert n1.stage == 1 and n1.per_stage == 3 and n1.n_active == 6
    n1.check_params(p)  # the same parameters apply at every stage
    with pytest.raises(ValueError, match="no next stage"):
        n1.next_stage().next_stage()


def test_bad_options_are_named():
    mk = lambda **kw: models.make("constructive", n_in=1, n_hidden=4, n_out=1, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=re.escape("per_stage=5 is invalid: must be <= n_hidden=4")):
        mk(per_stage=5)
    with pytest.raises(ValueError, match="per_stage=0 is invalid"):
        mk(per_stage=0)
    with pytest.raises(ValueError, match=re.escape("stage=2 is invalid")):
        mk(per_stage=2, stage=2)
    with pytest.raises(ValueError, match="stage=-1 is invalid"):
        mk(stage=-1)
    with pytest.raises(ValueError, match="cell='gru' is invalid"):
        mk(cell="gru")
