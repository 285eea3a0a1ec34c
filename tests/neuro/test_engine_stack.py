"""The compiled engine of stacks (``neuro.engine.spiking_stack``: e-prop, SLTT and OTTT on stacks of LIF or ALIF layers)
against the torch path, which runs the rules' multi-layer definitions.

Oracle: training a 2-layer stack (dense, or sparse in its recurrent and feed-forward matrices) with
``engine="compiled"`` gives, in float64, the parameters, the optimizer state, the per-step losses and the rule
state of ``engine="torch"`` to 1e-10, with every layer firing. e-prop's per-synapse traces are compared on the
synapses (off them the engine does no work, and what the torch path carries there reaches nothing); the weights
off the masks are made nonzero before training, so an engine that read or learnt them fails. A dense wiring
given to a sparse stack (the broken version) fails the oracle; a resume between chunks equals the uninterrupted
run bit for bit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import models
from neuro import engine as E
from neuro import rules, tasks
from neuro.engine import spiking as S
from neuro.train_loop import Loop
from neuro.training import TIMING_COLUMNS, prepare, train

from _helpers import assert_nested_close

RTOL, ATOL = 1e-10, 1e-13
SIZES = (7, 5)
MODELS = {"lif": {"bias_mean": 1.0}, "alif": {"bias_mean": 1.5, "dynamics": "euler", "refractory": 1}}
WIRINGS = {"dense": None, "sparse": 0.5, "fan-in": {"0.W_rec": "fan-in:3", "1.W_in": "fan-in:4@2", "1.W_rec": 0.4}}
RULES = {"sltt": {}, "eprop": {}, "eprop-random": {"feedback": "random"}, "ottt": {}, "ottt-O": {"mode": "O"}}


def _net(model: str, wiring: str) -> Any:
    task = tasks.make("add")
    return task, models.make(model, n_in=task.n_in, n_hidden=SIZES, n_out=task.n_out, connectivity=WIRINGS[wiring],
                             feedforward_scale=5.0, **MODELS[model])


def _run(model: str, rule: str, wiring: str, batch: int, engine: str, steps: int = 60) -> tuple[Any, Any, Any]:
    task, net = _net(model, wiring)
    r = rules.make(rule.split("-")[0], net, **RULES[rule])
    run = prepare(net, r, task, steps, chunk=20, update_every=7, batch=batch, dtype="float64", lr=0.05, log_every=9,
                  progress=False, engine=engine)
    g = torch.Generator().manual_seed(5)
    for k, m in net.masks.items():  # weights off the masks that must be neither read nor learnt
        run.params[k].data[~m] = torch.randn(int((~m).sum()), generator=g, dtype=torch.float64)
    loop = Loop(run)
    return net, loop.execute(), loop


def _close(a: Any, b: Any, what: str) -> None:
    assert_nested_close(a, b, what, RTOL, ATOL)


def _on_synapses(state: Any, net: Any) -> Any:
    """An e-prop state with each layer's per-synapse traces (``eps``, ``ebar``) zero off that layer's masks."""
    if not hasattr(state, "eps"):
        return state
    cut = {}
    for f in ("eps", "ebar"):
        out = []
        for l, t in enumerate(getattr(state, f)):
            n_l, n_u = SIZES[l], t.shape[-1] - SIZES[l]
            m = torch.cat([net.masks.get(f"{l}.W_in", torch.ones(n_l, n_u, dtype=torch.bool)),
                           net.masks.get(f"{l}.W_rec", torch.ones(n_l, n_l, dtype=torch.bool))], 1)
            out.append(t * m.reshape(1, n_l, *([1] * (t.dim() - 3)), -1).to(t.dtype))
        cut[f] = tuple(out)
    return state._replace(**cut)


def _fires(net: Any) -> list[float]:
    """Spikes per unit of each layer over 60 steps of random binary input, from the initial weights."""
    p = net.sparse_init(net.init_params(seed=0, dtype=torch.float64))
    st, g, total = net.init_state(p, 2), torch.Generator().manual_seed(0), torch.zeros(net.n_hidden, dtype=torch.float64)
    for _ in range(60):
        x = (torch.rand(2, net.n_in, generator=g) > 0.5).double()
        st, z = net.neuron(p, st, net.current(p, st, x))
        total += z.sum(0)
    return [float(total[sl].mean()) for sl in net.slices]


CASES = [pytest.param(m, r, w, b, id=f"{m}-{r}-{w}-b{b}") for m in MODELS for r in RULES for w in WIRINGS
         for b in (1, 2) if not (b == 2 and (w == "fan-in" or m == "alif")) and not (m == "alif" and w == "fan-in")]


@pytest.mark.parametrize("model,rule,wiring,batch", CASES)
def test_stacks_run_compiled_equal_to_torch(model, rule, wiring, batch):
    got = {e: _run(model, rule, wiring, batch, e) for e in ("torch", "compiled")}
    net, h_t, loop_t = got["torch"]
    _, h_c, loop_c = got["compiled"]
    assert min(_fires(net)) > 0.5, "a layer is silent"
    assert h_t.engine == "torch" and h_c.engine == "compiled" and h_c.updates == h_t.updates >= 3
    _close(h_t.params, h_c.params, "params")
    _close([{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h_t.metrics],
           [{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h_c.metrics], "metrics")
    _close(_on_synapses(loop_t.state, net), _on_synapses(loop_c.state, net), "rule state")
    _close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "optimizer")


@pytest.mark.parametrize("rule", ["sltt", "eprop"])
def test_a_dense_wiring_on_a_sparse_stack_fails_the_oracle(monkeypatch, rule):
    """The broken version: every entry of the stack's sparse matrices read and learnt."""
    from neuro.engine import spiking_stack

    _, h_t, _ = _run("lif", rule, "sparse", 1, "torch")
    monkeypatch.setattr(spiking_stack.S, "wiring_of", lambda a, b: S.DENSE)
    _, h_c, _ = _run("lif", rule, "sparse", 1, "compiled")
    assert h_c.engine == "compiled"
    with pytest.raises(AssertionError):
        _close(h_t.params, h_c.params, "params")


def test_a_resume_between_chunks_equals_the_uninterrupted_run(tmp_path):
    task, net = _net("lif", "sparse")
    r = rules.make("eprop", net)
    whole = train(net, r, task, 60, chunk=20, update_every=7, dtype="float64", progress=False,
                  run_dir=tmp_path / "whole")
    train(net, r, task, 40, chunk=20, update_every=7, dtype="float64", progress=False, run_dir=tmp_path / "cut")
    resumed = train(net, r, task, 60, chunk=20, update_every=7, dtype="float64", progress=False,
                    run_dir=tmp_path / "cut", resume=True)
    assert whole.engine == resumed.engine == "compiled"
    for k in whole.params:
        assert torch.equal(whole.params[k], resumed.params[k]), k


def test_stacks_the_engine_does_not_run_take_the_torch_path():
    task = tasks.make("add")
    skip = models.make("lif", n_in=task.n_in, n_hidden=SIZES, n_out=task.n_out, skip=True)
    rate = models.make("rate", n_in=task.n_in, n_hidden=SIZES, n_out=task.n_out)
    for net, rule in ((skip, rules.make("sltt", skip)), (rate, rules.make("eprop", rate)),
                      (skip, rules.make("eprop", skip, feedback="adaptive"))):
        assert E.select(net, rule, "auto", "adam", torch.float64, torch.device("cpu")) == ("torch", None)
