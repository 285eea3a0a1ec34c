"""The facts of the cell contract that local rules read (``neuro/contract.py``), each checked against an
independent computation on every model that declares ``local_form``:

- ``neuron_derivatives``: a model's closed form equals the contract's default (one reverse pass through
  ``neuron``), and the default equals the diagonal of the full Jacobian of ``neuron`` (``torch.func``);
- ``presynaptic`` is what ``W_rec`` multiplies, ``bias_in_current`` says where ``b`` enters, ``readout_decay``
  is ``dy_t/dy_{t-1}`` of the readout and ``with_output`` sets the readout's memory.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import jacrev

import models
from neuro.contract import AbstractNetwork

SPIKING = [dict(dynamics=d, reset=r, refractory=k, detach_reset=det)
           for d, r, k, det in itertools.product(("exact", "euler", "lava"), ("subtract", "zero"), (0, 2), (False, True))]
CASES = ([("rate", {}), ("rate", {"alpha": 0.3})] + [("lif", kw) for kw in SPIKING] + [("alif", kw) for kw in SPIKING])
LOCAL = [("rate", {}), ("lstm", {}), ("lif", {}), ("alif", {"refractory": 2})]


def _case(name: str, kw: dict, batch: int = 3, seed: int = 0):
    """A network, perturbed parameters, a random state (spikes near threshold) and a current, in float64."""
    net = models.make(name, n_in=3, n_hidden=5, n_out=2, **kw)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda like, s=1.0: s * torch.randn(like.shape, generator=g, dtype=torch.float64)  # noqa: E731
    p = {k: v + rnd(v, 0.1) for k, v in net.init_params(seed, torch.float64).items()}
    s = net.init_state(p, batch)
    s = type(s)(*(rnd(f, 1.5) for f in s))
    if "r" in s._fields:
        s = s._replace(r=torch.randint(0, 3, s.r.shape, generator=g).double())
    if "a" in s._fields:
        s = s._replace(a=s.a.abs())
    x = rnd(torch.empty(batch, net.n_in))
    return net, p, s, net.current(p, s, x)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, kw.values()))}" for n, kw in CASES])
def test_closed_form_derivatives_equal_the_default(name, kw):
    net, p, s, i = _case(name, kw)
    closed, default = net.neuron_derivatives(p, s, i), AbstractNetwork.neuron_derivatives(net, p, s, i)
    s_new, z = net.neuron(p, s, i)
    for f in s_new._fields:
        assert torch.equal(getattr(closed.state, f), getattr(s_new, f).detach()), f
        torch.testing.assert_close(getattr(default.state, f), getattr(s_new, f).detach(), rtol=0, atol=0)
    assert torch.equal(closed.z, z.detach())
    for k in closed._fields[2:]:
        assert getattr(closed, k).shape == getattr(default, k).shape, k
        torch.testing.assert_close(getattr(closed, k), getattr(default, k), rtol=0, atol=1e-12, msg=k)


@pytest.mark.parametrize("name,kw", [("rate", {"alpha": 0.3}), ("lif", {"reset": "zero", "refractory": 2}),
                                     ("alif", {})])
def test_default_derivatives_are_the_jacobian_diagonal(name, kw):
    """The default's batch-repeated reverse pass equals the diagonal of the full Jacobian of ``neuron``."""
    net, p, s, i = _case(name, kw, batch=2)
    d = AbstractNetwork.neuron_derivatives(net, p, s, i)
    idx = [s._fields.index(f) for f in net.trace_fields]

    def outputs(h, I, b):
        st = s._replace(**{f: h[k] for k, f in enumerate(net.trace_fields)})
        s2, z = net.neuron({**p, "b": b}, st, I)
        return torch.stack([s2[k] for k in idx] + [z])  # [K+1, B, n]

    h = torch.stack([s[k] for k in idx])
    b = p["b"].expand(2, -1).clone()
    Jh, JI, Jb = jacrev(outputs, argnums=(0, 1, 2))(h, i, b)  # [K+1, B, n, (K,) B, n]
    diag = lambda J: torch.diagonal(torch.diagonal(J, dim1=1, dim2=-2), dim1=1, dim2=-2)  # noqa: E731
    K = len(idx)
    dh = torch.stack([diag(Jh[:, :, :, g]) for g in range(K)], -1)  # [K+1, B, n, K]: [out, ., ., in]
    torch.testing.assert_close(d.dh_dh, dh[:K].permute(1, 2, 0, 3))
    torch.testing.assert_close(d.dz_dh, dh[K])
    torch.testing.assert_close(d.dh_dI, diag(JI)[:K].permute(1, 2, 0))
    torch.testing.assert_close(d.dz_dI, diag(JI)[K])
    torch.testing.assert_close(d.dz_db, diag(Jb)[K])
    torch.testing.assert_close(d.dh_db, diag(Jb)[:K].permute(1, 2, 0))


@pytest.mark.parametrize("name,kw", LOCAL, ids=[n for n, _ in LOCAL])
def test_presynaptic_and_bias_are_what_the_current_reads(name, kw):
    net, p, s, _ = _case(name, kw)
    assert net.local_form
    x = torch.randn(3, net.n_in, dtype=torch.float64)
    dW = torch.randn_like(p["W_rec"])
    moved = net.current({**p, "W_rec": p["W_rec"] + dW}, s, x) - net.current(p, s, x)
    torch.testing.assert_close(moved, net.presynaptic(s) @ dW.T)
    db = torch.randn_like(p["b"])
    moved = net.current({**p, "b": p["b"] + db}, s, x) - net.current(p, s, x)
    torch.testing.assert_close(moved, db.expand_as(moved) if net.bias_in_current else torch.zeros_like(moved))


@pytest.mark.parametrize("name,kw", LOCAL, ids=[n for n, _ in LOCAL])
def test_readout_decay_and_memory(name, kw):
    net, p, s, _ = _case(name, kw)
    z = (torch.rand(3, net.n_hidden, dtype=torch.float64) > 0.5).double()
    y0 = torch.randn(3, net.n_out, dtype=torch.float64)
    _, base = net.readout(p, net.with_output(s, torch.zeros_like(y0)), z)
    _, y = net.readout(p, net.with_output(s, y0), z)
    torch.testing.assert_close(y - base, net.readout_decay * y0)
    torch.testing.assert_close(base, z @ p["W_out"].T + p["b_out"])


@pytest.mark.parametrize("name,kw", [(n, kw) for n, kw in CASES if n != "rate"][::5])
def test_linear_filter_is_the_update_with_spikes_held(name, kw):
    """Where no unit spikes (and none is refractory), the trace fields' Jacobian is the linear filter, the same for
    every neuron; a model without one (rate) says None."""
    assert models.make("rate", n_in=1, n_hidden=1, n_out=1).linear_filter() is None
    net, p, s, i = _case(name, {**kw, "refractory": 0})
    s = s._replace(v=torch.full_like(s.v, -50.0))  # far below threshold: no spike, psi = 0
    d = net.neuron_derivatives(p, s, torch.zeros_like(i))
    f = net.linear_filter()
    assert d.z.sum() == 0
    torch.testing.assert_close(d.dh_dh, torch.tensor(f.dh_dh, dtype=d.dh_dh.dtype).expand_as(d.dh_dh))
    torch.testing.assert_close(d.dh_dI, torch.tensor(f.dh_dI, dtype=d.dh_dI.dtype).expand_as(d.dh_dI))
    torch.testing.assert_close(d.dh_db, torch.tensor(f.dh_db, dtype=d.dh_db.dtype).expand_as(d.dh_db))
