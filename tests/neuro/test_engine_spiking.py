"""The compiled LIF/ALIF cell (neuro.engine.spiking) against the models' own step and derivatives, and the
spiking engines' other forms of the rule state (the definitions, ``fast=False``; OTTT's mode "O"; e-prop's
random feedback; the three-factor rule's other traces and factors) against the torch path: parameters, optimizer, rule state and losses to 1e-10 in float64, and
the spikes (the network's and those the windowed buffers keep) equal. ``tests/neuro/test_engine.py`` holds the
default forms of every registered combination."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

import models
from neuro import rules, tasks
from neuro.engine import spiking as S
from neuro.train_loop import Loop
from neuro.training import TIMING_COLUMNS, prepare

from _helpers import assert_nested_close

RTOL, ATOL = 1e-10, 1e-13

CELLS = [("lif", {}), ("alif", {}), ("lif", {"dynamics": "euler", "reset": "zero", "refractory": 2}),
         ("lif", {"dynamics": "lava", "surrogate": "fast-sigmoid", "detach_reset": True}),
         ("alif", {"dynamics": "lava", "reset": "zero", "refractory": 1, "surrogate": "fast-sigmoid"})]


@pytest.mark.parametrize("name,options", CELLS)
def test_the_compiled_cell_equals_the_models_step_and_derivatives(name, options):
    g = torch.Generator().manual_seed(3)
    net = models.make(name, n_in=3, n_hidden=7, n_out=2, **options)
    p = net.init_params(seed=1, dtype=torch.float64)
    st = net.init_state(p, 4)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    fields = {"v": 1.8 * rand(4, 7) - 0.2, "i": 0.6 * rand(4, 7) - 0.3, "z": (rand(4, 7) > 0.5).double(),
              "r": torch.floor(3 * rand(4, 7)) if net.refractory else st.r}
    if name == "alif":
        fields["a"] = 0.3 * rand(4, 7)
    st = st._replace(**fields)
    x = rand(4, 3)
    I = net.current(p, st, x)
    d = net.neuron_derivatives(p, st, I)
    cell, A = S.cell(net, np.float64), S.net_arrays(st)
    Iw, vt, psi, act = (np.zeros((4, 7)) for _ in range(4))
    S.layer(p["W_in"].numpy(), p["W_rec"].numpy(), p["b"].numpy(), cell.cf, cell.ci, S.DENSE, x.numpy(), *A[:5], Iw, vt,
            psi, act)
    new, z = net.neuron(p, st, I)
    assert 0 < z.sum() < z.numel()
    np.testing.assert_allclose(Iw, I.numpy(), rtol=1e-13)
    for f in net.trace_fields + ("z", "r"):
        np.testing.assert_allclose(getattr(A, f), getattr(new, f).numpy(), rtol=1e-13, atol=1e-15, err_msg=f)
    J = np.array([[S.jacobian(cell.cf, cell.ci, vt[s, j], A.z[s, j], psi[s, j], act[s, j]) for j in range(7)]
                  for s in range(4)])  # [B, n, 10]
    K = len(net.trace_fields)
    want = [d.dz_dh[..., 0], d.dz_dh[..., 1], d.dz_dh[..., 2] if K == 3 else torch.zeros(4, 7), d.dz_dI, d.dz_db,
            d.dh_dh[..., 0, 0], d.dh_dh[..., 0, 1], d.dh_dh[..., 0, 2] if K == 3 else torch.zeros(4, 7),
            d.dh_dI[..., 0], d.dh_db[..., 0]]
    assert np.abs(J[..., 3]).max() > 0  # some unit is within the surrogate's reach
    for k, w in enumerate(want):
        np.testing.assert_allclose(J[..., k], w.numpy(), rtol=1e-13, atol=1e-15, err_msg=f"derivative {k}")


def test_the_compiled_current_of_a_sparse_network_reads_its_synapses_only():
    """``I = (W_in * mask) x + (W_rec * mask) z`` with nonzero weights off the masks, which must not be read."""
    g = torch.Generator().manual_seed(4)
    net = models.make("lif", n_in=5, n_hidden=8, n_out=1, connectivity={"W_rec": "random:0.3", "W_in": "fan-in:2"})
    p = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in net.init_params(seed=1).items()}
    st = net.init_state(p, 3)._replace(z=(torch.rand(3, 8, generator=g) > 0.4).double())
    x = torch.rand(3, 5, generator=g, dtype=torch.float64)
    cell, A = S.cell(net, np.float64), S.net_arrays(st)
    Iw, vt, psi, act = (np.zeros((3, 8)) for _ in range(4))
    args = (p["W_in"].numpy(), p["W_rec"].numpy(), p["b"].numpy(), cell.cf, cell.ci)
    S.layer(*args, S.wiring(net), x.numpy(), *A[:5], Iw, vt, psi, act)
    np.testing.assert_allclose(Iw, net.current(p, st, x).numpy(), rtol=1e-13)
    A = S.net_arrays(st)
    S.layer(*args, S.DENSE, x.numpy(), *A[:5], Iw, vt, psi, act)  # the broken version: every entry read
    assert not np.allclose(Iw, net.current(p, st, x).numpy())


def _close(a: Any, b: Any, what: str) -> None:
    assert_nested_close(a, b, what, RTOL, ATOL)


FORMS = [("eprop", {"fast": False}), ("eprop", {"feedback": "random"}), ("sltt", {"fast": False}),
         ("ottt", {"fast": False}), ("ottt", {"mode": "O"}), ("ottt", {"mode": "O", "fast": False}),
         ("three-factor", {"fast": False}), ("three-factor", {"post": "activity", "feedback": "readout"}),
         ("three-factor", {"pre_decay": (0.8, 0.5), "pre_impulse": (1.0, -0.5), "post_decay": 0.5,
                           "eligibility_decay": 0.7, "bias_pre_decay": 0.9, "fast": False})]


@pytest.mark.parametrize("model,rule,options", [(m, r, o) for m, (r, o) in itertools.product(("lif", "alif"), FORMS)],
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) if isinstance(v, dict) else str(v))
def test_the_other_forms_of_the_rule_state_equal_torch(model, rule, options):
    task = tasks.make("sine")
    net = models.make(model, n_in=1, n_hidden=6, n_out=1, **({"bias_mean": 1.0} if model == "lif" else {}))
    r = rules.make(rule, net, **options)
    h, state = {}, {}
    for e in ("torch", "compiled"):
        loop = Loop(prepare(net, r, task, 40, chunk=20, update_every=7, batch=2, dtype="float64", lr=0.05,
                            log_every=9, progress=False, engine=e))
        h[e] = loop.execute()
        state[e] = loop.state
    assert h["compiled"].engine == "compiled" and h["compiled"].updates == h["torch"].updates
    _close(h["torch"].params, h["compiled"].params, "params")
    _close([{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h["torch"].metrics],
           [{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h["compiled"].metrics], "metrics")
    st_t, st_c = state["torch"], state["compiled"]
    _close(st_t, st_c, "rule state")
    assert torch.equal(st_t.net.z, st_c.net.z)
