"""Stage schedules (``neuro.train(..., schedule=...)``, :mod:`neuro.staged`).

* ORACLE: a scheduled run equals a hand-written loop over the stages (a new rule and a new Adam per stage
  with the readout's Adam state carried, the network state carried, one continuing task stream), float64,
  for ``constructive`` and for ``td-lambda`` over it; a loop that restarts the network state at the
  boundary, the stream, or the readout's Adam state gives other parameters (so the comparison can fail).
* Frozen stages stay exactly frozen (Adam), later stages stay untouched until their turn, the masked
  feed-forward entries stay zero; the last stage's network is returned.
* A run interrupted (inside the second stage) and resumed ends with the same parameters.
* Bad input is refused before anything runs, naming the value; ``neuro train --schedule`` and
  ``neuro.compare(..., schedule=...)`` take it.
"""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import rules, tasks
from neuro.training import derive_seed

F64 = torch.float64
N, CHUNK, LR = 200, 100, 3e-3  # steps per stage, sequence length, Adam's step size
TASK = tasks.make("trace-patterning")


def _net(hidden=4, per_stage=2):
    return models.make("constructive", n_in=TASK.n_in, n_hidden=hidden, n_out=1, per_stage=per_stage)


def _rule(net, which):
    if which == "td":
        return rules.make("td-lambda", net, rule="constructive", cumulant_input=6, loss="mse")
    return rules.make("constructive", net, loss="mse")


def _hand_loop(net, which, n_stages, seed=0, reset_state=False, restart_stream=False, reset_readout=False):
    """The oracle: stage by stage, written out without neuro.staged / neuro.train."""
    params = net.init_params(seed, dtype=F64)
    state = opt = None
    stream = TASK.stream(seed=derive_seed(seed, "task"), batch=1, chunk=CHUNK)
    for j in range(n_stages):
        net_j = models.make("constructive", n_in=net.n_in, n_hidden=net.n_hidden, n_out=1, per_stage=net.per_stage,
                            stage=j)
        rule = _rule(net_j, which)
        fresh = rule.init(params, 1)
        if state is not None and not reset_state:  # carry the network state (and TD's per-sample copies)
            fresh = fresh._replace(net=state.net)
            if which == "td":
                fresh = fresh._replace(inner=tuple(f._replace(net=o.net) for f, o in zip(fresh.inner, state.inner)))
        state = fresh
        old, opt = opt if j else None, torch.optim.Adam(list(params.values()), lr=LR)
        if old is not None and not reset_readout:  # the readout's Adam state carries on
            for k in ("W_out", "b_out"):
                opt.state[params[k]] = old.state[params[k]]
        if restart_stream:
            stream = TASK.stream(seed=derive_seed(seed, "task"), batch=1, chunk=CHUNK)
        for _ in range(N // CHUNK):
            seq = next(stream).to(dtype=F64)
            for t in range(seq.steps):
                out = rule.step(params, state, seq.xs[t], seq.ys[t], seq.mask[t])
                state = out.state
                for k, p in params.items():
                    p.grad = out.grad[k].clone()
                opt.step()
                for p in params.values():
                    p.grad = None
            state, g = rule.finish(params, state)
            assert g is None
    return params


def _train(net, which, steps=2 * N, **kw):
    return neuro.train(net, _rule(net, which), TASK, steps=steps, seed=0, lr=LR, dtype="float64", chunk=CHUNK,
                       progress=False, schedule=f"{net.n_hidden}:{net.per_stage}:{N}", **kw)


def _rel(a, b):
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in b)


@pytest.mark.parametrize("which", ["constructive", "td"])
def test_scheduled_run_equals_a_hand_written_loop_over_the_stages(which):
    net = _net()
    history = _train(net, which)
    ref = _hand_loop(net, which, 2)
    assert _rel(history.params, ref) < 1e-10
    assert history.rule.net.stage == 1 and history.steps == 2 * N
    # the comparison can fail: restarting the network state, or the stream, at the boundary changes the result
    assert _rel(_hand_loop(net, which, 2, reset_state=True), ref) > 1e-6
    assert _rel(_hand_loop(net, which, 2, restart_stream=True), ref) > 1e-6
    assert _rel(_hand_loop(net, which, 2, reset_readout=True), ref) > 1e-6


def test_frozen_stages_stay_frozen_and_later_ones_wait():
    net = _net(hidden=6, per_stage=2)
    kept = {}

    def probe(step, params):
        kept[step] = params
        return {}

    history = _train(net, "constructive", steps=3 * N, log_every=N, probe=probe)
    p0, p1, p2 = kept[N], kept[2 * N], kept[3 * N]
    init = net.init_params(0, dtype=F64)
    cols = [net.stage_columns(j) for j in range(3)]
    for k in ("W_in", "W_ff", "w_rec", "b"):
        assert not torch.equal(p0[k][cols[0]], init[k][cols[0]]) or k == "W_ff"  # stage 0 learnt (W_ff: none)
        assert torch.equal(p1[k][cols[0]], p0[k][cols[0]]) and torch.equal(p2[k][cols[0]], p0[k][cols[0]])
        assert torch.equal(p0[k][cols[1]], init[k][cols[1]]) and torch.equal(p0[k][cols[2]], init[k][cols[2]])
        assert not torch.equal(p1[k][cols[1]], init[k][cols[1]])  # stage 1 learnt in its turn ...
        assert torch.equal(p2[k][cols[1]], p1[k][cols[1]])  # ... and was frozen after it
        assert torch.equal(p1[k][cols[2]], init[k][cols[2]]) and not torch.equal(p2[k][cols[2]], init[k][cols[2]])
    off = (1 - net.ff_mask(F64))[:, None, :].expand_as(p2["W_ff"]).bool()
    assert p2["W_ff"][off].abs().max() == 0
    assert not torch.equal(p2["W_out"], p1["W_out"])  # the readout learns at every stage
    assert history.rule.net.stage == 2


def test_interrupted_inside_a_stage_and_resumed_equals_uninterrupted(tmp_path):
    net = _net()
    whole = _train(net, "td", steps=3 * N)
    _train(net, "td", steps=N + CHUNK, run_dir=tmp_path / "r", checkpoint_every=CHUNK)
    resumed = _train(net, "td", steps=3 * N, run_dir=tmp_path / "r", checkpoint_every=CHUNK, resume=True)
    assert resumed.rule.net.stage == 1
    for k in whole.params:
        torch.testing.assert_close(resumed.params[k], whole.params[k], rtol=0, atol=0)


def test_bad_schedules_are_refused_naming_the_problem():
    net = _net()
    rule = _rule(net, "constructive")
    cases = [
        (dict(schedule="4:1:200"), "per_stage=2"),
        (dict(schedule="8:2:200"), "n_hidden=4"),
        (dict(schedule="4:2:150"), "not a multiple of chunk=100"),
        (dict(schedule="4:2:400"), "the last of its 2 stages starts at step 400"),
        (dict(schedule="4:2"), "expected three integers"),
        (dict(schedule="4:3:200"), "not a multiple of per-stage=3"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            neuro.train(net, rule, TASK, steps=400, progress=False, **kw)
    with pytest.raises(ValueError, match="starts at stage 0"):
        neuro.train(net.next_stage(), _rule(net.next_stage(), "constructive"), TASK, steps=400, progress=False,
                    schedule="4:2:200")
    col = models.make("columnar", n_in=TASK.n_in, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="needs a constructive network, but model 'columnar' has no stages"):
        neuro.train(col, rules.make("columnar", col), TASK, steps=400, progress=False, schedule="4:4:200")
    for other in (rules.make("rtrl", net), rules.make("td-lambda", net, rule="rtrl")):
        with pytest.raises(ValueError, match="would train the frozen stages"):
            neuro.train(net, other, TASK, steps=400, progress=False, schedule="4:2:200")


def test_cli_and_compare_take_a_schedule(tmp_path, capsys):
    from neuro.cli import main
    from neuro.comparison import plan

    rc = main(["train", "--model", "constructive", "--task", "trace-patterning", "--rule", "constructive",
               "--hidden", "4", "--model-opt", "per_stage=2", "--schedule", "4:2:100", "--steps", "200",
               "--no-progress", "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["schedule"] == "4:2:100"
    assert main(["train", "--model", "constructive", "--task", "trace-patterning", "--rule", "constructive",
                 "--hidden", "4", "--schedule", "4:2:100", "--steps", "200", "--no-progress"]) != 0
    assert "per_stage=1" in capsys.readouterr().err
    specs = plan("trace-patterning", ["constructive"], seeds=1, steps=200, model="constructive", hidden=4,
                 model_options={"per_stage": 2}, schedule={"constructive": "4:2:100"})
    assert specs[0].schedule == "4:2:100" and specs[0].asdict()["schedule"] == "4:2:100"
    assert "schedule" not in plan("trace-patterning", ["constructive"], seeds=1, steps=200, model="constructive",
                                  hidden=4)[0].asdict()
    with pytest.raises(ValueError, match="rule 'constructive': .*per_stage=2"):
        plan("trace-patterning", ["constructive"], seeds=1, steps=200, model="constructive", hidden=4,
             model_options={"per_stage": 2}, schedule="4:1:100")
