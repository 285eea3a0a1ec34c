"""SnAp-1 / SnAp-2 (Menick et al. 2021): the oracles (float64).

* Where every entry of the influence matrix is reachable in two steps (rate and LIF with a dense W_rec)
  the pattern P_2 is full and SnAp-2 equals RTRL to 1e-10; SnAp-1 does not.
* SnAp-1 equals its definition, ``M~_t = (J_t M~_{t-1} + I_t) (.) P_1``, computed here with autograd
  Jacobians and a pattern written by hand (rate: W[i, .] reaches h_i; LIF: v_i, i_i, z_i and every y).
* With a chain W_rec (h_k fed by h_k and h_{k-1}) entries three steps away exist: P_2 is the band written
  by hand, SnAp-2 equals its masked definition and differs from RTRL.
* The sparse SnAp-1 of the rate RNN ([B, n, n + n_in + 1]) equals the dense masked one, and both SnAp
  rules align with BPTT (snap2 ~ 1, snap1 high).
* Which path runs (:mod:`neuro.rules._fast.snap`): on the rate RNN the sparse SnAp-1 by default, the dense
  closed-form one with ``sparse=False`` and for SnAp-2, the definition with ``fast=False`` and on LIF.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro.losses import get as get_loss
from neuro.rules._fast.snap import DenseRateSnAp, SparseRateSnAp1
from neuro.rules._onestep import FlatStep
from neuro.rules.snap import snap_pattern

from _helpers import rel_err as _rel

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HID, N_OUT = 3, 5, 2
F64 = torch.float64


def _case(name: str, T: int = 15, B: int = 2, seed: int = 0, chain: bool = False):
    gen = torch.Generator().manual_seed(seed)
    if name == "lif":
        net = models.make("lif", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, input_scale=8.0, rec_scale=1.0)
        params = net.init_params(seed=seed + 1, dtype=F64)
        params["W_in"] = params["W_in"].abs()
        xs = (torch.rand(T, B, N_IN, generator=gen, dtype=F64) < 0.5).to(F64)
    else:
        net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
        params = net.init_params(seed=seed + 1, dtype=F64)
        xs = torch.randn(T, B, N_IN, generator=gen, dtype=F64)
    params["b"] = 0.1 * torch.randn(N_HID, generator=gen, dtype=F64)
    params["b_out"] = 0.1 * torch.randn(N_OUT, generator=gen, dtype=F64)
    if chain:  # h_k fed by h_k and h_{k-1} only
        params["W_rec"] = params["W_rec"] * _chain_mask()
    ys = torch.randn(T, B, N_OUT, generator=gen, dtype=F64)
    mask = torch.rand(T, B, generator=gen) < 0.8
    if net.spiking:
        rate = neuro.simulate(net, params, xs).spikes.mean().item()
        assert 0.02 < rate < 0.6, f"spike fraction {rate:.3f}: the test needs a network that fires"
    return net, params, xs, ys, mask


def _chain_mask() -> torch.Tensor:
    return (torch.eye(N_HID, dtype=F64) + torch.diag(torch.ones(N_HID - 1, dtype=F64), -1))


def _flat(net, params) -> FlatStep:
    return FlatStep.build(net, params, "mse")


def _hand_pattern(net, params, n: int) -> torch.Tensor:
    """P_n [S, P] written from the models' equations (see the module docstring)."""
    fs = _flat(net, params)
    ps, ss = fs.param_slices(), fs.state_slices()
    P = torch.zeros(fs.n_state, fs.n_params, dtype=torch.bool)

    def col(key, idx):  # flat column of params[key][idx]
        shape = params[key].shape
        return ps[key].start + (idx[0] * shape[1] + idx[1] if len(shape) == 2 else idx[0])

    units = ("h",) if net.name == "rate" else ("v", "i", "z")
    for i in range(N_HID):
        for key, cols in (("W_rec", N_HID), ("W_in", N_IN), ("b", 0)):
            for j in range(max(cols, 1)):
                c = col(key, (i, j) if cols else (i,))
                for field in units:
                    if field == "i" and key == "b":
                        continue  # b enters v, not the synaptic current
                    P[ss[field].start + i, c] = True
                if net.name == "lif":
                    P[ss["y"], c] = True  # through z_i and the readout
    if net.name == "lif":
        for k in range(N_OUT):
            P[ss["y"].start + k, col("b_out", (k,))] = True
            for j in range(N_HID):
                P[ss["y"].start + k, col("W_out", (k, j))] = True
    if n == 2:  # rate with a chain W_rec: W[i, .] reaches h_i, then h_{i+1}
        assert net.name == "rate"
        P = P | torch.roll(P, 1, dims=0) & (torch.arange(fs.n_state) > 0)[:, None]
    return P


def _definition(net, params, xs, ys, mask, P: torch.Tensor) -> dict:
    """The summed SnAp estimate from its definition, with autograd Jacobians of one step:
    M~_t = (J_t M~_{t-1} + I_t) (.) P, estimate (dl_t/ds_{t-1}) M~_{t-1} + partial l_t / partial theta."""
    keys = sorted(params)
    theta = torch.cat([params[k].reshape(-1) for k in keys])
    sizes = [params[k].numel() for k in keys]
    state0 = net.init_state(params, xs.shape[1])
    fields = [f.shape[1:] for f in state0]

    def unflat_p(th):
        return {k: v.reshape(params[k].shape) for k, v in zip(keys, th.split(sizes))}

    def unflat_s(s):  # [B, S] -> state
        parts = s.split([f.numel() for f in fields], 1)
        return type(state0)(*[v.reshape(s.shape[0], *f) for v, f in zip(parts, fields)])

    def flat_s(st):
        return torch.cat([f.reshape(f.shape[0], -1) for f in st], 1)

    loss = get_loss("mse")
    s = flat_s(state0)
    B, S = s.shape
    M = torch.zeros(B, S, theta.numel(), dtype=F64)
    total = torch.zeros_like(theta)
    for t in range(xs.shape[0]):
        def l_of(th, s1):
            _, y_hat = net.step(unflat_p(th), unflat_s(s1), xs[t])
            return loss(y_hat, ys[t], mask[t])
        dl_dth, dl_ds = torch.autograd.functional.jacobian(l_of, (theta, s))
        total += torch.einsum("bs,bsp->p", dl_ds, M) + dl_dth
        news = []
        for b in range(B):
            def f(th, s1):
                return flat_s(net.step(unflat_p(th), unflat_s(s1[None]), xs[t, b:b + 1])[0])[0]
            I, J = torch.autograd.functional.jacobian(f, (theta, s[b]))
            M[b] = (J @ M[b] + I) * P
            news.append(f(theta, s[b]))
        s = torch.stack(news)
    return unflat_p(total)


# -- (1) SnAp-2 is RTRL when two steps reach everything ------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("rate", {}), ("rate", {"fast": False}), ("lif", {})])
def test_snap2_equals_rtrl_when_every_entry_is_reachable_in_two_steps(name, opts):
    net, params, xs, ys, mask = _case(name)
    fs = _flat(net, params)
    P2 = snap_pattern(fs, params, 2)
    # every state entry a parameter can reach at all (the rows of the readout-only W_out, b_out stay empty
    # for rate; r, which carries no gradient, stays empty for lif) is reached within two steps
    reach = snap_pattern(fs, params, 6)
    assert torch.equal(P2, reach) and P2.sum() > snap_pattern(fs, params, 1).sum()
    rtrl = neuro.grad_estimate(net, params, "rtrl", xs, ys, mask=mask, **opts)
    snap2 = neuro.grad_estimate(net, params, "snap2", xs, ys, mask=mask, **opts)
    assert _rel(snap2, rtrl) < 1e-10
    snap1 = neuro.grad_estimate(net, params, "snap1", xs, ys, mask=mask)
    assert _rel(snap1, rtrl) > 1e-3, "SnAp-1 should truncate the influence matrix here"


# -- (2) SnAp-1 is its definition ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("rate", {}), ("rate", {"sparse": False}), ("lif", {})])
def test_snap1_equals_its_definition(name, opts):
    net, params, xs, ys, mask = _case(name, T=10)
    P1 = _hand_pattern(net, params, 1)
    rule = neuro.rules.make("snap1", net, **opts)
    if isinstance(rule.fast_path, SparseRateSnAp1):  # no dense pattern is stored: the derived one must still be pattern(I)
        assert rule.init(params, 2).P is None
        derived = snap_pattern(rule._flat(params), params, 1)
    else:
        derived = rule.init(params, 2).P
    assert torch.equal(derived.bool(), P1), "the derived pattern is not pattern(I) by hand"
    ref = _definition(net, params, xs, ys, mask, P1.to(F64))
    got = neuro.grad_estimate(net, params, "snap1", xs, ys, mask=mask, **opts)
    assert _rel(got, ref) < 1e-10


# -- (3) SnAp-2 truncates entries three steps away ----------------------------------------------------------------
def test_snap2_differs_from_rtrl_beyond_two_steps():
    net, params, xs, ys, mask = _case("rate", T=10, chain=True)
    P2 = _hand_pattern(net, params, 2)
    assert torch.equal(snap_pattern(_flat(net, params), params, 2), P2), "P_2 is not the band of the chain"
    ref = _definition(net, params, xs, ys, mask, P2.to(F64))
    got = neuro.grad_estimate(net, params, "snap2", xs, ys, mask=mask)
    assert _rel(got, ref) < 1e-10
    rtrl = neuro.grad_estimate(net, params, "rtrl", xs, ys, mask=mask)
    assert _rel(got, rtrl) > 1e-3, "W_rec[i, .] reaches h_{i+2} in three steps: SnAp-2 must miss it"


# -- (4) sparse = dense, and alignment with BPTT -------------------------------------------------------------------
def test_sparse_snap1_equals_dense_and_aligns_with_bptt():
    net = models.make("rate", n_in=N_IN, n_hidden=8, n_out=N_OUT)
    params = net.init_params(seed=3, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(40, 2, N_IN, generator=gen, dtype=F64)
    ys = torch.randn(40, 2, N_OUT, generator=gen, dtype=F64)
    assert isinstance(neuro.rules.make("snap1", net).fast_path, SparseRateSnAp1)
    sparse = neuro.grad_estimate(net, params, "snap1", xs, ys)
    dense = neuro.grad_estimate(net, params, "snap1", xs, ys, sparse=False)
    assert _rel(sparse, dense) < 1e-12
    g = neuro.grad_estimate(net, params, "bptt", xs, ys)
    c1 = neuro.alignment(sparse, g)["overall"]
    c2 = neuro.alignment(neuro.grad_estimate(net, params, "snap2", xs, ys), g)["overall"]
    print(f"cosine with BPTT: snap1 {c1:.4f}, snap2 {c2:.4f}")
    assert c2 > 1 - 1e-10 and 0.7 < c1 < 1 - 1e-6 and c2 >= c1


def test_which_path_runs():
    rate = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    lif = models.make("lif", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    make = neuro.rules.make
    assert type(make("snap1", rate).fast_path) is SparseRateSnAp1
    assert type(make("snap1", rate, sparse=False).fast_path) is DenseRateSnAp
    assert type(make("snap2", rate).fast_path) is DenseRateSnAp
    for rule in (make("snap1", rate, fast=False), make("snap2", rate, fast=False), make("snap1", lif), make("snap2", lif)):
        assert rule.fast_path is None, rule
    params = rate.init_params(dtype=F64)
    assert make("snap1", rate).init(params, 2).M.shape == (2, N_HID, N_HID + N_IN + 1)
    assert make("snap1", rate, fast=False).init(params, 2).M.shape == (2, N_HID, sum(v.numel() for v in params.values()))
