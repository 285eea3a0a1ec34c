"""neuro.ensemble: the direct mode (the network's own step on member-major tensors) equals the vmap mode
and, the oracle, each member's own network, in values and BPTT gradients (float64); a network that
cannot run direct is detected at construction and runs under vmap; the per-member loss record of the
vectorised seeds equals the separate runs' curves."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import models
from models.rate import RateRNN
from neuro.ensemble import Ensemble, unstack_params

F64 = torch.float64
S = 3  # members
SPIKING = dict(tau_mem=3.0, tau_syn=1.0, tau_out=2.0, input_scale=5.0, rec_scale=3.0, surrogate_scale=1.0)
MODELS = {"rate": {"alpha": 0.7}, "lif": SPIKING, "alif": {**SPIKING, "tau_adapt": 5.0, "beta_a": 0.5}, "lstm": {}}


def _net(name: str, **kw):
    return models.make(name, n_in=3, n_hidden=7, n_out=2, **{**MODELS.get(name, {}), **kw})


def _params(ens: Ensemble, seed: int = 0) -> dict[str, torch.Tensor]:
    """The members' own initial parameters with every entry moved a little (the biases are 0 at init), so that
    each vector parameter takes part and the members differ everywhere."""
    g = torch.Generator().manual_seed(100 + seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=F64) for k, v in ens.init_params(seed, F64).items()}


def _data(T: int, rows: int, n_in: int, n_out: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(T, rows, n_in, generator=g, dtype=F64) < 0.5).to(F64) * 2.0
    return xs, torch.randn(T, rows, n_out, generator=g, dtype=F64)


def _unroll(net, params, xs, ys, split: bool = False):
    """Run ``net`` over ``xs``; the outputs, every state field at every step, and the gradient of the summed
    loss (mean over the rows) with respect to ``params``. ``split``: current -> neuron -> readout, not step."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    state = net.init_state(params, xs.shape[1])
    outs, fields, total = [], [], 0.0
    for x, y in zip(xs, ys):
        if split:
            state, z = net.neuron(params, state, net.current(params, state, x))
            state, out = net.readout(params, state, z)
        else:
            state, out = net.step(params, state, x)
        outs.append(out)
        fields.append(torch.cat([f.reshape(f.shape[0], -1) for f in state], 1))
        total = total + 0.5 * ((out - y) ** 2).sum() / out.shape[0]
    grads = torch.autograd.grad(total, list(params.values()))
    return torch.stack(outs).detach(), torch.stack(fields).detach(), dict(zip(params, grads))


def _close(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_direct_mode_equals_vmap_and_each_members_own_network(name, B):
    net = _net(name)
    direct, vm = Ensemble(net, S), Ensemble(net, S, mode="vmap")
    assert direct.direct and direct.mode == "auto" and not vm.direct
    params = _params(direct)
    xs, ys = _data(T=12, rows=S * B, n_in=net.n_in, n_out=net.n_out)
    out_d, st_d, g_d = _unroll(direct, params, xs, ys)
    out_v, st_v, g_v = _unroll(vm, params, xs, ys)
    out_p, st_p, g_p = _unroll(direct, params, xs, ys, split=True)  # the three parts of the step, one by one
    for a, b in ((out_d, out_v), (st_d, st_v), (out_p, out_d), (st_p, st_d)):
        _close(a, b)
    for k in params:
        _close(g_d[k], g_v[k])
        _close(g_p[k], g_d[k])
    for m, pm in enumerate(unstack_params(params)):  # the oracle: member m alone on its own rows
        rows = slice(m * B, (m + 1) * B)
        out_m, st_m, g_m = _unroll(net, pm, xs[:, rows], ys[:, rows])
        _close(out_d[:, rows], out_m)
        _close(st_d[:, rows], st_m)
        for k in params:  # the ensemble's loss is the mean of the members': 1/S of each member's gradient
            _close(S * g_d[k][m], g_m[k])
        assert max(float(g_m[k].abs().max()) for k in params) > 1e-6
    if net.spiking:
        z = st_d[..., net.n_hidden * 2:net.n_hidden * 3]  # the fields are v, i, z, ...: the spikes
        assert torch.equal(z, (z > 0.5).to(F64)) and 0.02 < float(z.mean()) < 0.9, "the network should spike"


class _Coupled(RateRNN):
    """A rate network whose current is centred over its whole input (every row and unit): a legitimate network
    for a batch ``[B, n]``, but in the direct mode the mean would run over all the members' rows too."""

    def current(self, params, state, x):
        i = super().current(params, state, x)
        return i - i.mean()


class _TwoDimensional(RateRNN):
    """A rate network written with ``torch.mm``, which takes 2-d operands only."""

    def current(self, params, state, x):
        return torch.mm(x, params["W_in"].T) + torch.mm(state.h, params["W_rec"].T) + params["b"]


@pytest.mark.parametrize("cls", [_Coupled, _TwoDimensional])
def test_a_network_that_cannot_run_direct_falls_back_to_vmap(cls):
    net = cls(n_in=3, n_hidden=7, n_out=2)
    ens = Ensemble(net, S)
    assert not ens.direct
    params = _params(ens)
    xs, ys = _data(T=8, rows=2 * S, n_in=3, n_out=2)
    out, _, grads = _unroll(ens, params, xs, ys)
    for m, pm in enumerate(unstack_params(params)):
        out_m, _, g_m = _unroll(net, pm, xs[:, 2 * m:2 * m + 2], ys[:, 2 * m:2 * m + 2])
        _close(out[:, 2 * m:2 * m + 2], out_m)
        for k in params:
            _close(S * grads[k][m], g_m[k])
    with pytest.raises(ValueError, match="mode='direct' is invalid for .*use mode='auto' or 'vmap'"):
        Ensemble(net, S, mode="direct")
    if cls is _Coupled:  # forced, the direct mode couples the members: the probe had a reason to refuse it
        forced = Ensemble(net, S, mode="vmap")
        object.__setattr__(forced, "direct", True)
        assert float((_unroll(forced, params, xs, ys)[0] - out).abs().max()) > 1e-3


def test_direct_mode_sees_new_parameters_new_state_and_the_autograd_mode():
    """The direct mode keeps the reshaped parameters of the last call and maps the state it handed out back to
    the tensors behind it: neither may hide a change of parameters, of state or of grad mode."""
    net = _net("rate")
    ens, ref = Ensemble(net, S), Ensemble(net, S, mode="vmap")
    params = {k: v.requires_grad_(True) for k, v in _params(ens).items()}
    xs, _ = _data(T=3, rows=S, n_in=3, n_out=2)
    with torch.no_grad():
        state, _ = ens.step(params, ens.init_state(params, S), xs[0])
    state, y = ens.step(params, state, xs[1])  # the same parameter dict, now with grad: the graph must reach it
    g = torch.autograd.grad(y.sum(), [params["b"], params["W_rec"]])
    with torch.no_grad():
        s_ref, _ = ref.step(params, ref.init_state(params, S), xs[0])
    s_ref, y_ref = ref.step(params, s_ref, xs[1])
    _close(y, y_ref)
    for a, b in zip(g, torch.autograd.grad(y_ref.sum(), [params["b"], params["W_rec"]])):
        _close(a, b)
    with torch.no_grad():
        for v in params.values():  # an optimizer's in-place update
            v.mul_(1.5)
        changed = state._replace(h=state.h * 0.5)  # a field replaced by the caller: not the tensor handed out
        _, y2 = ens.step(params, changed, xs[2])
        _, y2_ref = ref.step(params, changed, xs[2])
        other = {k: v * -1.0 for k, v in params.items()}  # another dict
        _, y3 = ens.step(other, state, xs[2])
        _, y3_ref = ref.step(other, state, xs[2])
    _close(y2, y2_ref)
    _close(y3, y3_ref)
    twin = copy.deepcopy(ens)  # the caches (tensors with their graphs) stay behind
    assert twin == ens and twin._kept is None and not twin._handed
    assert pickle.loads(pickle.dumps(ens)) == ens


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match=r"mode='fast' is invalid: valid choices are 'auto', 'direct', 'vmap'"):
        Ensemble(_net("rate"), S, mode="fast")


def test_per_member_loss_record_equals_the_separate_runs_curves(monkeypatch):
    """The vectorised seeds keep each step's outputs and compute the members' losses in bulk: with a bulk of 7
    steps (not a divisor of the 20 between two log rows), every member's curve is its own run's."""
    from neuro.comparison import vectorised
    from neuro.comparison.harness import plan
    from neuro.comparison.worker import run_one

    monkeypatch.setattr(vectorised, "_SETTLE_EVERY", 7)
    specs = [s.asdict() for s in plan("sine", ["bptt"], seeds=2, steps=60, hidden=5, log_every=20, align_every=0,
                                      eval_steps=20, dtype="float64", lr=1e-2)]
    vec = vectorised.run_group(specs)
    for a, spec in zip(vec, specs):
        b = run_one(spec)
        assert [c["step"] for c in a["curve"]] == [20, 40, 60] == [c["step"] for c in b["curve"]]
        for x, y in zip(a["curve"], b["curve"]):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-10, abs=1e-13)
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-10, abs=1e-13)
