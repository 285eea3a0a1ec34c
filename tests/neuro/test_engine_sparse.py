"""The compiled engines on sparse networks (``neuro.engine``, :class:`neuro.engine.spiking.Wiring`) against the
torch path, which reads ``W * mask`` and keeps every estimate zero off the masks.

Oracle: for every combination marked ``sparse`` in ``neuro.engine.REGISTRY``, training a LIF or ALIF network with
a sparse ``W_rec`` (and, in some cases, a sparse ``W_in``) with ``engine="compiled"`` gives, in float64, the
parameters, the optimizer state, the per-step losses and the rule state of ``engine="torch"`` to 1e-10. A rule
state's per-synapse traces (e-prop's and the three-factor rule's) are compared on the synapses: off them the
engine does no work, and what the torch path carries there reaches nothing. The parameters off the masks are made
nonzero before training, so an engine that read them, or learnt them, fails. A deliberately broken wiring (a
dense one given to a sparse network) is shown to fail the oracle.
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
from neuro.training import TIMING_COLUMNS, prepare

from _helpers import assert_nested_close

RTOL, ATOL = 1e-10, 1e-13
N, N_IN, N_OUT = 9, 2, 2
#: the wirings each rule runs on: W_rec at random; W_in too (each unit a fixed fan-in of the inputs)
WIRINGS = {"rec": {"W_rec": "random:0.3"}, "rec+in": {"W_rec": "fan-in:3@1", "W_in": "fan-in:1"}}
MODELS = {"lif": {"bias_mean": 1.0}, "alif": {"bias_mean": 0.5, "dynamics": "euler", "refractory": 1}}
RULE_OPTIONS = {"anp-time": {"norm": "global", "samples": 2}, "tbptt": {"k": 4},
                # the three-factor rule with an eligibility trace of its own (its other per-synapse trace, e)
                "three-factor-e": {"eligibility_decay": 0.7, "pre_decay": (0.8, 0.5), "pre_impulse": (1.0, -0.5)}}
SPARSE = sorted({(c.model, c.rule) for c in E.REGISTRY if c.sparse and c.model != "stack"})  # stacks: test_engine_stack.py


def _cases() -> list[Any]:
    out = []
    for model, rule in [*SPARSE, ("lif", "three-factor-e")]:
        for w in WIRINGS:
            for batch in (1, 2):
                if w == "rec+in" and batch == 2:
                    continue  # a sparse W_in once per rule and model
                out.append(pytest.param(model, rule, w, batch, id=f"{model}-{rule}-{w}-b{batch}"))
    return out


def _close(a: Any, b: Any, what: str) -> None:
    assert_nested_close(a, b, what, RTOL, ATOL)


def _on_synapses(state: Any, net: Any) -> Any:
    """``state`` with every per-synapse trace (a tensor ``[..., n, ..., n_pre]`` whose dimension 1 is the units
    and whose last the presynaptic sources ``[x, z]``, or one of ``W_in``'s or ``W_rec``'s) zero off the masks."""
    masks = net.masks
    full = torch.cat([masks.get("W_in", torch.ones(N, N_IN, dtype=torch.bool)),
                      masks.get("W_rec", torch.ones(N, N, dtype=torch.bool))], 1)
    by_width = {N_IN + N: full, N_IN: full[:, :N_IN], N: full[:, N_IN:]}

    def cut(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            if t.dim() >= 3 and t.shape[1] == N and t.shape[-1] in by_width and t.shape[-1] != 1:
                m = by_width[t.shape[-1]]
                return t * m.reshape(1, N, *([1] * (t.dim() - 3)), t.shape[-1]).to(t.dtype)
            return t
        if isinstance(t, tuple) and hasattr(t, "_fields"):
            return type(t)(*(cut(x) for x in t))
        if isinstance(t, (tuple, list)):
            return type(t)(cut(x) for x in t)
        return t

    return cut(state)


def _run(model: str, rule: str, wiring: str, batch: int, engine: str) -> tuple[Any, Any, Any]:
    task = tasks.make("add")
    net = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, connectivity=WIRINGS[wiring], **MODELS[model])
    r = rules.make(rule.removesuffix("-e"), net, **RULE_OPTIONS.get(rule, {}))
    run = prepare(net, r, task, 60, chunk=20, update_every=7, batch=batch, dtype="float64", lr=0.05, log_every=9,
                  progress=False, engine=engine)
    g = torch.Generator().manual_seed(5)
    for k, m in net.masks.items():  # weights off the masks that the forward pass must not read nor learn
        run.params[k].data[~m] = torch.randn(int((~m).sum()), generator=g, dtype=torch.float64)
    loop = Loop(run)
    h = loop.execute()
    return net, h, loop


@pytest.mark.parametrize("model,rule,wiring,batch", _cases())
def test_sparse_networks_run_compiled_equal_to_torch(model, rule, wiring, batch):
    got = {e: _run(model, rule, wiring, batch, e) for e in ("torch", "compiled")}
    net, h_t, loop_t = got["torch"]
    _, h_c, loop_c = got["compiled"]
    assert h_t.engine == "torch" and h_c.engine == "compiled"
    assert h_c.updates == h_t.updates >= 3
    _close(h_t.params, h_c.params, "params")
    _close([{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h_t.metrics],
           [{k: v for k, v in m.items() if k not in TIMING_COLUMNS} for m in h_c.metrics], "metrics")
    _close(_on_synapses(loop_t.state, net), _on_synapses(loop_c.state, net), "rule state")
    _close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "optimizer")
    first = models.make(model, n_in=N_IN, n_hidden=N, n_out=N_OUT, connectivity=WIRINGS[wiring], **MODELS[model])
    p0 = first.init_params(seed=0, dtype=torch.float64)
    for k, m in net.masks.items():
        assert not torch.equal(h_c.params[k][m], first.sparse_init(p0)[k][m]), f"{k} did not learn on its synapses"


def test_the_wiring_lists_each_rows_synapses():
    net = models.make("lif", n_in=N_IN, n_hidden=N, n_out=N_OUT, connectivity=WIRINGS["rec+in"])
    wr = S.wiring(net)
    for (ptr, idx), name in (((wr.in_ptr, wr.in_idx), "W_in"), ((wr.rec_ptr, wr.rec_idx), "W_rec")):
        m = net.masks[name]
        rows = [idx[ptr[j]:ptr[j + 1]].tolist() for j in range(N)]
        assert rows == [torch.nonzero(m[j]).flatten().tolist() for j in range(N)]
    assert S.wiring(models.make("lif", n_in=N_IN, n_hidden=N, n_out=N_OUT)).dense
    assert not wr.dense


@pytest.mark.parametrize("rule", ["eprop", "sltt"])
def test_a_dense_wiring_on_a_sparse_network_fails_the_oracle(monkeypatch, rule):
    """The broken version: an engine that reads and learns every entry of a sparse network's matrices."""
    monkeypatch.setattr(S, "wiring", lambda net: S.DENSE)
    _, h_t, _ = _run("lif", rule, "rec", 1, "torch")
    _, h_c, _ = _run("lif", rule, "rec", 1, "compiled")
    assert h_c.engine == "compiled"
    with pytest.raises(AssertionError):
        _close(h_t.params, h_c.params, "params")


def test_combinations_without_a_sparse_engine_still_refuse_a_sparse_network():
    net = models.make("rate", n_in=1, n_hidden=N, n_out=N_OUT, connectivity=0.3)
    r = rules.make("rflo", net)
    with pytest.raises(ValueError, match=r"sparse connectivity \(W_rec\).*lif eprop"):
        E.select(net, r, "compiled", "adam", torch.float64, torch.device("cpu"))
    assert E.select(net, r, "auto", "adam", torch.float64, torch.device("cpu")) == ("torch", None)
