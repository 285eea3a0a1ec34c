"""The RMSProp-normalised TD step (:mod:`neuro.optim`, ``optimizer="td-rmsprop"``).

* ORACLE: two steps of :class:`TDRMSprop` equal the formula computed by hand in numpy (``v`` from ``init``,
  ``eps`` outside the square root), with the readout at ``lr`` and at ``lr / readout_fan_in``.
* Its state checkpoints through ``state_dict``: a restored optimizer steps as the original.
* Bad options are refused in one line naming the key and what is valid.
* A staged run: the readout's step follows each stage's ``readout_fan_in``, its state carries on while the
  columns' starts afresh at ``init``.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

import models
from neuro import optim, rules, tasks
from neuro.train_config import TrainConfig
from neuro.train_loop import Hook, Loop
from neuro.training import prepare

F64 = torch.float64


def _net():
    return models.make("columnar", n_in=3, n_hidden=4, n_out=1)


def _by_hand(params, grads, lr, fan_in, o):
    """The update of the module docstring in numpy, one dict of grads per step."""
    p = {k: v.numpy().copy() for k, v in params.items()}
    v = {k: np.full_like(x, o["init"]) for k, x in p.items()}
    for g in grads:
        for k in p:
            lr_k = lr / fan_in if o["readout_scale"] == "fan-in" and k in optim.READOUT else lr
            v[k] = o["beta2"] * v[k] + (1 - o["beta2"]) * g[k].numpy() ** 2
            p[k] = p[k] - lr_k * g[k].numpy() / (np.sqrt(v[k]) + o["eps"])
    return p, v


@pytest.mark.parametrize("options", [{}, {"readout_scale": "fan-in"},
                                     {"readout_scale": "fan-in", "beta2": 0.9, "eps": 1e-3, "init": 0.5}])
def test_two_steps_equal_the_formula_by_hand(options):
    net, lr = _net(), 0.1
    params = net.init_params(0, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    grads = [{k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in params.items()} for _ in range(2)]
    o = optim.check_options("td-rmsprop", options)
    want_p, want_v = _by_hand(params, grads, lr, net.readout_fan_in, o)
    opt = optim.make(params, lr, net, options)
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
    for k, p in params.items():
        np.testing.assert_allclose(p.numpy(), want_p[k], rtol=1e-13, atol=0, err_msg=k)
        np.testing.assert_allclose(opt.state[p]["square_avg"].numpy(), want_v[k], rtol=1e-13, atol=0, err_msg=k)
        assert float(opt.state[p]["step"]) == 2
    assert [g["lr"] for g in opt.param_groups] == ([lr] if o["readout_scale"] == "none" else [lr, lr / 4])


def test_state_dict_round_trip():
    net = _net()
    params = net.init_params(0, dtype=F64)
    gen = torch.Generator().manual_seed(2)
    opt = optim.make(params, 0.1, net, {"readout_scale": "fan-in", "init": 0.3})
    twin = {k: v.clone() for k, v in params.items()}
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    for k, p in params.items():
        twin[k].copy_(p)
    restored = optim.make(twin, 0.1, net, {"readout_scale": "fan-in", "init": 0.3})
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    g = {k: torch.randn(p.shape, generator=gen, dtype=F64) for k, p in params.items()}
    for o, ps in ((opt, params), (restored, twin)):
        for k, p in ps.items():
            p.grad = g[k].clone()
        o.step()
    for k in params:
        assert torch.equal(params[k], twin[k]), k
        assert torch.equal(opt.state[params[k]]["square_avg"], restored.state[twin[k]]["square_avg"]), k
    assert [g["lr"] for g in restored.param_groups] == [0.1, 0.1 / 4]


@pytest.mark.parametrize("settings,match", [
    ({"optimizer": "adam", "optimizer_options": {"eps": 1e-8}}, "invalid with optimizer 'adam', which takes no options"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"beta": 0.9}},
     "key 'beta' is invalid for optimizer 'td-rmsprop': valid keys are beta2, eps, init, readout_scale"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"beta2": 1.0}}, r"beta2=1.0 is invalid .* \[0, 1\)"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"eps": 0}}, "eps=0 is invalid .* > 0"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"init": -1}}, "init=-1 is invalid .* >= 0"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"init": True}}, "init=True is invalid"),
    ({"optimizer": "td-rmsprop", "optimizer_options": {"readout_scale": "fanin"}},
     "readout_scale='fanin' is invalid .* valid are 'none', 'fan-in'"),
    ({"optimizer": "td-rmsprop", "optimizer_options": ["eps"]}, "expected a dict"),
])
def test_bad_options_are_refused_naming_them(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**settings)


def test_defaults_are_filled_in_and_a_network_without_a_readout_is_refused():
    assert TrainConfig(optimizer="td-rmsprop").optimizer_options == optim.OPTIONS["td-rmsprop"]
    assert TrainConfig().optimizer_options == {}
    with pytest.raises(ValueError, match="readout_scale='fan-in' is invalid for model 'columnar': it has no readout"):
        optim.make({"W_in": torch.zeros(2)}, 0.1, _net(), {"readout_scale": "fan-in"})


@dataclasses.dataclass
class _Record(Hook):
    """The stage, the readout's lr and the step counts of the readout's and a column's state at each sequence end;
    the first stage's column parameters when it is frozen."""

    rows: list = dataclasses.field(default_factory=list)
    frozen: dict = dataclasses.field(default_factory=dict)

    def sequence_end(self, loop: Loop) -> None:
        st = loop.opt.state
        if loop.rule.net.stage == 1 and not self.frozen:
            sl = loop.rule.net.stage_columns(0)
            self.frozen = {k: v[sl].clone() for k, v in loop.params.items() if k not in optim.READOUT}
        self.rows.append((loop.rule.net.stage, loop.opt.param_groups[-1]["lr"],
                          float(st[loop.params["W_out"]]["step"]) if loop.params["W_out"] in st else None,
                          float(st[loop.params["W_in"]]["step"]) if loop.params["W_in"] in st else None))


def test_a_staged_runs_readout_step_follows_the_stage(monkeypatch):
    """``schedule="4:2:20"``: the readout's lr is lr / readout_fan_in of each stage's network (here made to
    differ per stage), its step count carries on across the boundary, the columns' starts again (at ``init``),
    and the frozen stage's columns stay exactly as they were (their estimate 0: a step of 0 / (sqrt(v) + eps))."""
    from models.constructive import Constructive

    monkeypatch.setattr(Constructive, "readout_fan_in", property(lambda self: self.per_stage * (self.stage + 1)))
    task = tasks.make("trace-patterning", isi=(3, 5), iti=(4, 8))
    net = models.make("constructive", n_in=task.n_in, n_hidden=4, n_out=1, per_stage=2)
    rule = rules.make("td-lambda", net, rule="constructive", cumulant_input=6)
    run = prepare(net, rule, task, 40, dtype="float64", lr=0.1, progress=False, chunk=10, schedule="4:2:20",
                  optimizer="td-rmsprop", optimizer_options={"readout_scale": "fan-in"}, engine="torch")
    rec = _Record()
    run = dataclasses.replace(run, hooks=(*run.hooks, rec))
    h = Loop(run).execute()
    assert [r[:2] for r in rec.rows] == [(0, 0.05), (1, 0.025), (1, 0.025), (1, 0.025)]
    assert rec.rows[1][2] == 20 and rec.rows[1][3] is None  # the readout's count carries on, the columns' is new
    assert rec.rows[3][2:] == (40, 20)
    sl = h.rule.net.stage_columns(0)
    assert rec.frozen and all(torch.equal(h.params[k][sl], v) for k, v in rec.frozen.items())


def test_cli_records_the_options_and_resumes_with_them(tmp_path, capsys):
    from neuro.cli import main

    run = ["--run-dir", str(tmp_path / "r"), "--no-progress"]
    base = ["train", "--model", "columnar", "--task", "trace-patterning", "--rule", "td-lambda", "--rule-opt",
            "rule=columnar", "--rule-opt", "cumulant_input=6", "--hidden", "3", "--steps", "20", "--chunk", "10",
            "--optimizer", "td-rmsprop", "--optimizer-opt", "readout_scale=fan-in", "--optimizer-opt", "beta2=0.99"]
    assert main([*base, *run]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["optimizer_options"]
    assert saved == {"beta2": 0.99, "eps": 1e-8, "init": 1.0, "readout_scale": "fan-in"}
    assert main(["train", "--resume", "--steps", "30", *run]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert [g["alpha"] for g in ck["optimizer"]["param_groups"]] == [0.99, 0.99]
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "40", "--optimizer-opt", "init=0", *run]) == 2
    assert "--optimizer-opt init=0 contradicts the saved optimizer_options" in capsys.readouterr().err
    assert main(["train", "--model", "lif", "--optimizer-opt", "init=0", "--steps", "2", "--no-progress"]) == 2


def test_compare_passes_the_options_to_every_run():
    from neuro.comparison.harness import plan

    kw = dict(model="columnar", hidden=3, rule_options={"td-lambda": {"rule": "columnar", "cumulant_input": 6}})
    specs = plan("trace-patterning", ["td-lambda"], 2, 20, optimizer="td-rmsprop",
                 optimizer_options={"readout_scale": "fan-in"}, **kw)
    assert all(s.asdict()["optimizer_options"]["readout_scale"] == "fan-in" for s in specs)
    assert "optimizer_options" not in plan("trace-patterning", ["td-lambda"], 1, 20, **kw)[0].asdict()
    with pytest.raises(ValueError, match="optimizer_options key 'bogus' is invalid"):
        plan("trace-patterning", ["td-lambda"], 1, 20, optimizer="td-rmsprop", optimizer_options={"bogus": 1}, **kw)


def test_a_combination_without_a_compiled_td_rmsprop_runs_in_torch():
    from neuro.training import train

    task = tasks.make("sine")
    net = models.make("rate", n_in=1, n_hidden=3, n_out=1)
    rule = rules.make("rflo", net)
    h = train(net, rule, task, 20, chunk=10, optimizer="td-rmsprop", progress=False)
    assert h.engine == "torch"
    with pytest.raises(ValueError, match="engine='compiled' is invalid for model 'rate' with rule 'rflo', optimizer td-rmsprop"):
        train(net, rule, task, 20, chunk=10, optimizer="td-rmsprop", progress=False, engine="compiled")
