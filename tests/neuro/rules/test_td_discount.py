"""TD(lambda)'s state-dependent discount (``discount_input``: ``gamma_t = gamma x_t[discount_input]``): the
estimates of four steps with a new episode in the middle against the recursion written out by hand in numpy,
a flag of 1 everywhere equal to the constant discount, and the index checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from neuro import rules

pytestmark = pytest.mark.usefixtures("one_thread")

GAMMA, LAM = 0.9, 0.8
#: inputs of the four steps: (noise, cumulant, continuation flag); step 2 starts a new episode
XS = np.array([[0.5, 0.0, 1.0], [-1.0, 1.0, 1.0], [0.3, 1.0, 0.0], [0.8, 0.0, 1.0]])


def _net_and_params():
    net = models.make("rate", n_in=3, n_hidden=4, n_out=1)
    return net, net.init_params(seed=3, dtype=torch.float64)


def _values_and_grads(net, params):
    """v_t [4] and grad v_t [4, P] (autograd through the whole past, parameters flattened in the params' order)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state, vs = net.init_state(leaves, 1), []
    for x in torch.from_numpy(XS):
        state, y = net.step(leaves, state, x[None])
        vs.append(y.sum())
    grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, list(leaves.values()), retain_graph=True)])
             for v in vs]
    return np.array([float(v.detach()) for v in vs]), torch.stack(grads).numpy()


def _estimates(rule, params):
    """The rule's four estimates, flattened [4, P]."""
    state, out = rule.init(params, 1), []
    for x in torch.from_numpy(XS):
        o = rule.step(params, state, x[None], torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.bool))
        state = o.state
        out.append(torch.cat([o.grad[k].reshape(-1) for k in params]).numpy())
    return np.stack(out)


def test_a_new_episode_makes_the_terminal_update_with_the_whole_trace_and_starts_a_clean_one():
    net, params = _net_and_params()
    v, g = _values_and_grads(net, params)
    c = XS[:, 1]
    g0 = GAMMA  # gamma_t on the steps whose flag is 1 (steps 0, 1, 3); 0 on step 2
    want = np.stack([
        np.zeros_like(g[0]),                                              # e_{-1} = 0
        -(c[1] + g0 * v[1] - v[0]) * g[0],                                # e_0 = grad v_0
        -(c[2] + 0.0 * v[2] - v[1]) * (LAM * g0 * g[0] + g[1]),           # terminal: e_1, the whole trace
        -(c[3] + g0 * v[3] - v[2]) * g[2],                                # e_2 = grad v_2 alone (clean start)
    ])
    rule = rules.make("td-lambda", net, gamma=GAMMA, lam=LAM, rule="rtrl", cumulant_input=1, discount_input=2)
    np.testing.assert_allclose(_estimates(rule, params), want, rtol=1e-10, atol=1e-14)
    assert np.abs(want[3] - -(c[3] + g0 * v[3] - v[2]) * (LAM * g0 * (LAM * g0 * g[0] + g[1]) + g[2])).max() > 1e-3


def test_a_flag_of_one_everywhere_is_the_constant_discount():
    net, params = _net_and_params()
    ones = XS.copy()
    ones[:, 2] = 1.0
    got = {}
    for di in (None, 2):
        rule = rules.make("td-lambda", net, gamma=GAMMA, lam=LAM, rule="rtrl", cumulant_input=1, discount_input=di)
        state = rule.init(params, 1)
        for x in torch.from_numpy(ones):
            out = rule.step(params, state, x[None], torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.bool))
            state = out.state
        got[di] = (out.grad, state.e)
    for k in params:
        assert torch.equal(got[None][0][k], got[2][0][k]) and torch.equal(got[None][1][k], got[2][1][k]), k


@pytest.mark.parametrize("bad", [3, -1, True, 1.0, "2"])
def test_a_bad_discount_input_is_refused_naming_the_valid_range(bad):
    net, _ = _net_and_params()
    with pytest.raises(ValueError, match=r"^discount_input=.* is invalid: must be None or an input index in \[0, 3\)$"):
        rules.make("td-lambda", net, discount_input=bad)
