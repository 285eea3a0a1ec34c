"""The compiled engine (neuro.engine) against the torch path.

Oracle: for every combination of ``neuro.engine.REGISTRY`` (and its model variants), training with
``engine="compiled"`` gives, in float64, the parameters, the optimizer state, the rule state and the per-step
losses and metrics of ``engine="torch"`` to 1e-10 relative: on a continuing task whose updates fall inside
chunks, mid-chunk and at chunk ends (``update_every=7``, ``chunk=20``), and on an episodic one (a masked trial
cut at the run's end), batch 1 and 2. So that the cases stay few as combinations grow, every optimizer of a
combination runs on the continuing task with batch 1, and Adam (or its first optimizer) alone with batch 2 and
on the episodic task. A resume between chunks equals the uninterrupted run
bit for bit. The selection (refusal, fallback, the engine recorded) and the divergence check are tested too.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Iterator

import pytest
import torch

import models
from neuro import io, rules, tasks
from neuro.cli import main
from neuro.engine import REGISTRY
from neuro.tasks.base import AbstractTask, Sequence
from neuro.train_loop import Loop
from neuro.training import TIMING_COLUMNS, TrainingDiverged, prepare, train

from _helpers import assert_nested_close

RTOL, ATOL = 1e-10, 1e-13
#: the runs each combination is held to: (task, its settings, train settings)
RUNS = {"continuing": ("sine", {}, {"steps": 60, "chunk": 20, "update_every": 7}),
        "episodic": ("copy", {"length": 5, "delay": 3, "symbols": 4}, {"steps": 60, "update_every": 4}),
        "trace": ("trace-patterning", {"isi": (3, 5), "iti": (4, 8)}, {"steps": 60, "chunk": 20, "update_every": 7})}
#: the loss a run holds a combination to where it is not the task's (trace patterning: TD(lambda)'s inner "value")
RUN_LOSSES = {"trace": "value"}
#: model options each combination is run with (the rate RNN: a vanilla RNN, alpha = 1, and a leaky one)
VARIANTS = {"rate": ({}, {"alpha": 0.5}),
            # spiking: a bias that makes the 6 units fire on both tasks; the other dynamics, resets, refractory
            # periods and surrogates
            "lif": ({"bias_mean": 1.0}, {"bias_mean": 1.0, "reset": "zero", "refractory": 2, "dynamics": "lava"}),
            "alif": ({}, {"dynamics": "euler", "refractory": 1, "surrogate": "fast-sigmoid"})}


def _optimizer_batches(optimizers: tuple[str, ...], run: str) -> list[tuple[str, int]]:
    """The (optimizer, batch) pairs a run is held to: every optimizer with batch 1 on the continuing run; Adam (or,
    without it, the combination's first optimizer) alone with batch 2 and on the episodic run."""
    main = "adam" if "adam" in optimizers else optimizers[0]
    every = [(opt, 1) for opt in optimizers] if run == "continuing" else [(main, 1)]
    return [*every, (main, 2)]


#: the networks of single-unit columns: the LSTM and the rate cell; stages of frozen, learning and inactive columns
VARIANTS.update({"columnar": ({}, {"cell": "rate"}, {"normalise": 0.999}),
                 "constructive": ({"per_stage": 2, "stage": 1}, {"per_stage": 3, "stage": 1, "cell": "rate"},
                                  # online normalisation, a fast rate so the statistics move
                                  {"per_stage": 2, "stage": 1, "normalise": 0.999},
                                  {"per_stage": 3, "stage": 1, "cell": "rate", "normalise": 0.9, "variance_floor": 0.5})})
#: rule options of a combination (TD(lambda): its inner rule, and the trace-patterning US as the cumulant)
RULE_OPTIONS = {("columnar", "td-lambda"): {"rule": "columnar", "cumulant_input": 6},
                ("constructive", "td-lambda"): {"rule": "constructive", "cumulant_input": 6},
                # the LSTM: sliding truncated BPTT of the value, k = 3 (Javed et al.'s baseline)
                ("lstm", "td-lambda"): {"rule": "tbptt", "rule_options": {"k": 3}, "cumulant_input": 6},
                # spiking anp-time: two noise samples; the global norm, with which SGD at the runs' rate stays finite
                **{(m, "anp-time"): {"norm": "global", "samples": 2} for m in ("lif", "alif")},
                # rate and LSTM perturbation rules: a loss difference of order sigma over sigma^2 amplifies rounding (at the
                # default 1e-3 the torch path's own two forms differ by 1e-9 under RMSprop); sigma = 0.05 keeps 1e-10
                **{(m, r): {"sigma": 0.05} for m in ("rate", "lstm") for r in ("np", "anp", "anp-time", "wp")},
                # rate anp-time under RMSprop: each update applies the estimate whole, and the estimate's dependence on
                # the parameters (of order 1/sigma) grows a difference ~10x per update; at 0.05 the torch path's own
                # two forms differ by 7e-11 after 60 steps, at 0.1 by 9e-12
                ("rate", "anp-time"): {"sigma": 0.1}}


def _cases() -> list[Any]:
    out = []
    for c in REGISTRY:
        for variant in VARIANTS.get(c.model, ({},)):
            for run in RUNS:
                if RUN_LOSSES.get(run, tasks.make(RUNS[run][0], **RUNS[run][1]).loss) not in c.losses:
                    continue
                for opt, batch in _optimizer_batches(c.optimizers, run):
                    name = f"{c.model}-{c.rule}-{'-'.join(f'{k}{v}' for k, v in variant.items())}-{run}-{opt}-b{batch}"
                    out.append(pytest.param(c, variant, run, opt, batch, id=name))
    return out


def _setup(c: Any, variant: dict[str, Any], run: str, **rule_opts: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    name, task_opts, settings = RUNS[run]
    task = tasks.make(name, **task_opts)
    net = models.make(c.model, n_in=task.n_in, n_hidden=6, n_out=task.n_out, **variant)
    rule_opts = {**RULE_OPTIONS.get((c.model, c.rule), {}), **rule_opts}
    return net, rules.make(c.rule, net, **rule_opts), task, dict(settings)


def _train(net: Any, rule: Any, task: Any, run_dir: Any, **settings: Any) -> tuple[Any, Any, dict[str, Any]]:
    """History, loop and final checkpoint of a float64 run."""
    steps = settings.pop("steps")
    settings = {"log_every": 9, **settings}
    run = prepare(net, rule, task, steps, dtype="float64", lr=0.05, progress=False, run_dir=run_dir, **settings)
    loop = Loop(run)
    history = loop.execute()
    return history, loop, io.load_checkpoint(run_dir / "checkpoint.pt")


def _close(a: Any, b: Any, what: str) -> None:
    assert_nested_close(a, b, what, RTOL, ATOL)


def _metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def _same(torch_run: tuple, compiled_run: tuple, rule_state: bool = True, loop_state: bool = False) -> None:
    """The torch path's and the compiled engine's ``_train`` results equal: parameters, metrics (timings
    aside), the checkpoint's rule state (``rule_state``), the loop's rule state (``loop_state``) and the
    optimizer state."""
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = torch_run, compiled_run
    _close(h_t.params, h_c.params, "params")
    _close(_metrics(h_t.metrics), _metrics(h_c.metrics), "metrics")
    if rule_state:
        _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")
    if loop_state:
        _close(loop_t.state, loop_c.state, "the loop's rule state")
    _close(ck_t["optimizer"], ck_c["optimizer"], "optimizer")


@pytest.mark.parametrize("c,variant,run,opt,batch", _cases())
def test_compiled_equals_torch(tmp_path, c, variant, run, opt, batch):
    net, rule, task, settings = _setup(c, variant, run)
    got = {}
    for engine in ("torch", "compiled"):
        got[engine] = _train(net, rule, task, tmp_path / engine, optimizer=opt, batch=batch, engine=engine,
                             checkpoint_every=20, **settings)
        assert got[engine][0].engine == engine
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = got["torch"], got["compiled"]
    assert h_c.steps == h_t.steps == settings["steps"] and h_c.updates == h_t.updates >= 3  # bptt: one per sequence
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c), rule_state=False)
    _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")
    _close(loop_t.state, loop_c.state, "the loop's rule state")
    _close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "the loop's optimizer")
    _close(_metrics(ck_t["metrics"]), _metrics(ck_c["metrics"]), "checkpoint metrics")
    assert ck_t["interval"]["steps"] == ck_c["interval"]["steps"]
    assert ck_c["config"]["train"]["engine"] == "compiled" and ck_t["config"]["train"]["engine"] == "torch"
    if opt == "adam":
        assert all(float(s["step"]) == h_t.updates for s in ck_c["optimizer"]["state"].values())


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rflo_updating_at_every_step_equals_torch(tmp_path, opt, batch):
    """``update_every=1``: every step's estimate applied at once (the compiled RFLO sums W_rec's estimate in a
    scratch row and updates W_rec row by row within the traces' pass), held to the torch path."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("rate", "rflo"))
    net, rule, task, settings = _setup(c, {"alpha": 0.5}, "continuing")
    settings["update_every"] = 1
    got = {e: _train(net, rule, task, tmp_path / e, optimizer=opt, batch=batch, engine=e, **settings)
           for e in ("torch", "compiled")}
    (h_t, loop_t, _), (h_c, loop_c, _) = got["torch"], got["compiled"]
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == settings["steps"]
    _close(h_t.params, h_c.params, "params")
    _close(_metrics(h_t.metrics), _metrics(h_c.metrics), "metrics")
    _close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "the loop's optimizer")
    _close(loop_t.state, loop_c.state, "the loop's rule state")


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("window", [3, 5])
def test_uoro_windows_that_fill_between_updates_leave_the_torch_paths_rule_state(tmp_path, opt, window):
    """Rate UORO, one pair (batch 1), windows shorter than the updates' interval (``update_every=7``): windows fill
    and fly before an update, and ranges (log points every 9 steps) cut them. The rule state the compiled engine
    leaves, the landed flight of the last window that filled included, is the torch path's to 1e-10 in float64."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("rate", "uoro"))
    net, rule, task, settings = _setup(c, {"alpha": 0.5}, "continuing", window=window)
    settings.update(optimizer=opt, batch=1, checkpoint_every=20)
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and loop_t.state.flight is not None and loop_t.state.flight.factors.L == window
    assert float(loop_t.state.flight.factors.kernel[1].abs().sum()) > 0  # a window flew: not the idle flight
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c), loop_state=True)


def _resume_equals_the_whole_run(net, rule, task, settings, tmp_path):
    """A compiled run stopped at step 40 and resumed equals the uninterrupted run bit for bit (parameters and
    metrics); returns both runs' results."""
    settings.update(optimizer="adam", batch=2, engine="compiled", checkpoint_every=20, log_every=10)
    whole = _train(net, rule, task, tmp_path / "whole", **settings)
    _train(net, rule, task, tmp_path / "cut", **{**settings, "steps": 40})
    resumed = _train(net, rule, task, tmp_path / "cut", **settings, resume=True)
    for k in whole[0].params:
        assert torch.equal(whole[0].params[k], resumed[0].params[k]), k
    assert _metrics(whole[0].metrics) == _metrics(resumed[0].metrics)
    return whole, resumed


@pytest.mark.parametrize("fast", [True, False])
def test_a_resume_between_chunks_equals_the_uninterrupted_run(tmp_path, fast):
    """Both forms of the rule state (the windowed path's and the definition's); bit for bit."""
    c = REGISTRY[0]
    net, rule, task, settings = _setup(c, {"alpha": 0.5}, "continuing", fast=fast)
    whole, resumed = _resume_equals_the_whole_run(net, rule, task, settings, tmp_path)
    _close(whole[2]["optimizer"], resumed[2]["optimizer"], "optimizer")


def test_compiled_on_an_unsupported_combination_is_refused_naming_the_supported_ones():
    task = tasks.make("sine")
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1)
    big = models.make("rate", n_in=1, n_hidden=256, n_out=1)  # RTRL's influence matrix past the engine's limit
    with pytest.raises(ValueError, match=r"engine='compiled' is invalid for model 'rate' with rule 'rtrl'.*"
                                         r"runs model 'rate' with rule 'rflo'") as e:
        train(big, rules.make("rtrl", big), task, 10, engine="compiled", progress=False)
    assert "\n" not in str(e.value)
    lif = models.make("lif", n_in=1, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match="engine='compiled' is invalid for model 'lif' with rule 'eprop', optimizer "
                                         "adam, loss mse, device cpu, dtype float32: the compiled engine runs"):
        train(lif, rules.make("eprop", lif, feedback="adaptive"), task, 10, engine="compiled", progress=False)
    with pytest.raises(ValueError, match="engine='fast' is invalid: valid choices are 'auto', 'compiled', 'torch'"):
        train(net, rules.make("rflo", net), task, 10, engine="fast")


def test_auto_runs_the_torch_path_where_there_is_no_compiled_engine(tmp_path):
    task = tasks.make("sine")
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1)
    rule = rules.make("kf-rtrl", net)
    a = train(net, rule, task, 30, chunk=10, progress=False, run_dir=tmp_path / "auto")
    b = train(net, rule, task, 30, chunk=10, progress=False, engine="torch")
    assert a.engine == "torch" and all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["train"]["engine"] == "torch"
    c = train(net, rules.make("rflo", net), task, 30, chunk=10, progress=False, run_dir=tmp_path / "rflo")
    assert c.engine == "compiled"
    assert json.loads((tmp_path / "rflo" / "config.json").read_text())["train"]["engine"] == "compiled"


def test_a_resume_keeps_the_engine_of_the_saved_run(tmp_path):
    task = tasks.make("sine")
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1)
    rule = rules.make("rflo", net)
    train(net, rule, task, 20, chunk=10, progress=False, run_dir=tmp_path, engine="torch")
    assert train(net, rule, task, 30, chunk=10, progress=False, run_dir=tmp_path, resume=True).engine == "torch"
    with pytest.raises(ValueError, match=r"train.engine: 'torch' \(saved\) vs 'compiled' \(now\)"):
        train(net, rule, task, 40, chunk=10, progress=False, run_dir=tmp_path, resume=True, engine="compiled")


@pytest.mark.parametrize("rule_name,opt", [("constructive", "adam"), ("td-lambda", "adam"), ("td-lambda", "rmsprop")])
def test_a_stage_schedule_runs_compiled_across_stage_changes(tmp_path, rule_name, opt):
    """``schedule="6:2:20"``: three stages of 20 steps (two stage changes inside the run, each a new rule, fresh
    traces and a fresh optimizer but for the readout's state), the engine rebuilt for each stage's rule; the torch
    path's numbers to 1e-10 in float64, and a resume inside the last stage (its rule rebuilt from the step count)
    equals the uninterrupted run."""
    task = tasks.make("trace-patterning", isi=(3, 5), iti=(4, 8))
    net = models.make("constructive", n_in=task.n_in, n_hidden=6, n_out=task.n_out, per_stage=2)
    opts = {"rule": "constructive", "cumulant_input": 6} if rule_name == "td-lambda" else {}
    rule = rules.make(rule_name, net, **opts)
    settings = {"steps": 70, "chunk": 10, "update_every": 3, "schedule": "6:2:20", "optimizer": opt, "batch": 2,
                "checkpoint_every": 10}
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and loop_c.rule.net.stage == 2 and loop_c.engine.rule is loop_c.rule
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c))
    _train(net, rule, task, tmp_path / "cut", engine="compiled", **{**settings, "steps": 50})
    resumed = _train(net, rule, task, tmp_path / "cut", engine="compiled", **settings, resume=True)
    for k in h_c.params:
        assert torch.equal(h_c.params[k], resumed[0].params[k]), k
    _close(ck_c["optimizer"], resumed[2]["optimizer"], "optimizer")


#: td-rmsprop (neuro.optim, Javed et al.'s TD step) on the TD(lambda) combinations, both readout scales: the columnar
#: network, a constructive one at stage 1 (frozen, learning and inactive columns) and through a stage schedule
#: (its readout's step changing with the stage), the LSTM over T-BPTT
TD_RMSPROP = [pytest.param(m, v, s, scale, id=f"{m}-{'staged' if s else 'stage1' if v else 'plain'}-{scale}")
              for m, v, s in (("columnar", {}, None), ("constructive", {"per_stage": 2, "stage": 1}, None),
                              ("constructive", {"per_stage": 2}, "6:2:20"), ("lstm", {}, None))
              for scale in ("none", "fan-in")]


@pytest.mark.parametrize("model,variant,schedule,scale", TD_RMSPROP)
def test_td_rmsprop_compiled_equals_torch(tmp_path, model, variant, schedule, scale):
    c = next(c for c in REGISTRY if (c.model, c.rule) == (model, "td-lambda"))
    net, rule, task, settings = _setup(c, variant, "trace")
    if schedule:  # three stages of 20 steps
        settings.update(steps=70, chunk=10, update_every=3, schedule=schedule)
    got = [_train(net, rule, task, tmp_path / e, optimizer="td-rmsprop", optimizer_options={"readout_scale": scale},
                  batch=2, engine=e, checkpoint_every=20, **settings) for e in ("torch", "compiled")]
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = got
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates >= 3
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c), rule_state=False)
    _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")
    _close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "the loop's optimizer")
    lrs = [g["lr"] for g in loop_c.opt.param_groups]
    assert lrs == ([0.05] if scale == "none" else [0.05, 0.05 / loop_c.rule.net.readout_fan_in])


@dataclasses.dataclass(frozen=True)
class NaNTask(AbstractTask):
    """Continuing, mse: x_t ~ N(0, 1), target x_t; the target of (1-based) step ``nan_at`` is NaN."""

    nan_at: int = 13

    name: ClassVar[str] = "nan-at"
    loss: ClassVar[str] = "mse"
    episodic: ClassVar[bool] = False
    n_in: ClassVar[int] = 1
    n_out: ClassVar[int] = 1

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000, steps: int | None = None) -> Iterator[Sequence]:
        g, t0 = torch.Generator().manual_seed(seed), 0
        while True:
            xs = torch.randn(chunk, batch, 1, generator=g)
            ys = xs.clone()
            if t0 < self.nan_at <= t0 + chunk:
                ys[self.nan_at - t0 - 1] = float("nan")
            yield Sequence(xs, ys, torch.ones(chunk, batch, dtype=torch.bool))
            t0 += chunk

    def sample(self, steps: int, batch: int = 1, seed: int = 0) -> Sequence:
        return next(self.stream(seed, batch, steps))


@pytest.mark.parametrize("engine", ["torch", "compiled"])
def test_nan_inside_a_range_raises_training_diverged_naming_the_step(tmp_path, engine):
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 23; last good checkpoint: .* \(step 20\)") as e:
        train(net, rules.make("rflo", net), NaNTask(nan_at=23), 60, chunk=10, log_every=50, checkpoint_every=10,
              run_dir=tmp_path, progress=False, engine=engine)
    assert e.value.step == 23 and e.value.checkpoint_step == 20


def test_cli_engine_flag(tmp_path, capsys):
    base = ["train", "--model", "rate", "--rule", "rflo", "--task", "sine", "--hidden", "4", "--steps", "20",
            "--chunk", "10", "--no-progress"]
    assert main([*base, "--engine", "compiled", "--run-dir", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["engine"] == "compiled"
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "a"), "--steps", "30", "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*base, "--rule", "rtrl", "--hidden", "256", "--engine", "compiled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuro: error: engine='compiled' is invalid") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["rflo", "bptt", "tbptt", "np", "anp-time", "wp"])
def test_float32_runs_compiled_close_to_torch(name):
    """float32 (its own compiled specialisation): the torch path's numbers to float32 rounding, over 40 steps."""
    task = tasks.make("sine")
    net = models.make("rate", n_in=1, n_hidden=8, n_out=1, alpha=0.5)
    rule = rules.make(name, net)
    h = {e: train(net, rule, task, 40, chunk=20, update_every=3, dtype="float32", progress=False, engine=e)
         for e in ("torch", "compiled")}
    assert h["compiled"].engine == "compiled"
    for k, p in h["torch"].params.items():
        assert h["compiled"].params[k].dtype == torch.float32
        torch.testing.assert_close(h["compiled"].params[k], p, rtol=1e-4, atol=1e-5)
    assert h["compiled"].metrics[-1]["loss"] == pytest.approx(h["torch"].metrics[-1]["loss"], rel=1e-4)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_tbptt_windows_cut_at_chunk_ends_and_updates_inside_them(tmp_path, opt):
    """k = 7 on chunks of 20 (the last window of each chunk cut short by its end) with updates every 3 steps,
    inside windows and between emissions, and ranges of 9 steps that end inside windows: the torch path's
    numbers to 1e-10 in float64."""
    c = next(c for c in REGISTRY if c.rule == "tbptt")
    net, rule, task, settings = _setup(c, {"alpha": 0.5}, "continuing", k=7)
    settings.update(update_every=3, optimizer=opt, batch=2, checkpoint_every=20)
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == 9
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c))


@pytest.mark.parametrize("name,options", [("np", {"samples": 2}), ("anp", {"norm": "global"}),
                                          ("anp-time", {"window": 5}), ("anp-time", {"fast": False}),
                                          ("wp", {"resample": "step", "samples": 2})])
def test_perturbation_rule_options_compiled_equal_torch(tmp_path, name, options):
    """The perturbation rules' options beside the defaults: noise samples, the global norm, a window shorter than
    the updates' interval (full windows inside it, slots refilled), the definition's state, wp's draw every step;
    the torch path's numbers and noise (the generator's state) to 1e-10 in float64."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("rate", name))
    net, rule, task, settings = _setup(c, {"alpha": 0.5}, "continuing", **options)
    settings.update(optimizer="adam", batch=2, checkpoint_every=20)
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == 9
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c), loop_state=True)


@pytest.mark.parametrize("model,options", [("lif", {"window": 5}), ("alif", {"fast": False}),
                                           ("lif", {"norm": "layer", "samples": 1})])
def test_spiking_anp_time_options_compiled_equal_torch(tmp_path, model, options):
    """ANP in time on LIF/ALIF beside the oracle's options: a window shorter than the updates' interval (full
    windows inside it, slots refilled), the definition's state, the layer norm with one sample; the torch path's
    numbers and noise to 1e-10 in float64, and its spikes, the clean network's and the noisy copies'."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == (model, "anp-time"))
    net, rule, task, settings = _setup(c, VARIANTS[model][0], "continuing", **options)
    settings.update(optimizer="adam", batch=2, checkpoint_every=20)
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == 9
    _close(h_t.params, h_c.params, "params")
    _close(_metrics(h_t.metrics), _metrics(h_c.metrics), "metrics")
    _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")
    _close(loop_t.state, loop_c.state, "the loop's rule state")
    assert torch.equal(loop_t.state.net.z, loop_c.state.net.z)
    assert torch.equal(loop_t.state.noisy.z, loop_c.state.noisy.z)


def test_lstm_td_lambda_runs_compiled_over_sliding_tbptt_only_and_resumes_bit_for_bit(tmp_path):
    """The LSTM's TD(lambda) engine takes the inner rule tbptt alone (rtrl on the LSTM: the torch path); a resume
    between chunks, the windows in the checkpoint, equals the uninterrupted run."""
    from neuro.engine import td_tbptt

    c = next(c for c in REGISTRY if (c.model, c.rule) == ("lstm", "td-lambda"))
    net, rule, task, settings = _setup(c, {}, "trace")
    assert td_tbptt.build(net, rules.make("td-lambda", net, loss="mse", rule="tbptt", cumulant_input=6)) is not None
    assert td_tbptt.build(net, rules.make("td-lambda", net, loss="mse", rule="rtrl", cumulant_input=6)) is None
    _resume_equals_the_whole_run(net, rule, task, settings, tmp_path)


@dataclasses.dataclass(frozen=True)
class EpisodesTask(AbstractTask):
    """Continuing, mse: x_t = (noise ~ N(0, 1), a cumulant in {0, 1} (on w.p. 0.3), a continuation flag (0 w.p.
    0.25: a new episode)); the target is the noise."""

    name: ClassVar[str] = "episodes"
    loss: ClassVar[str] = "mse"
    episodic: ClassVar[bool] = False
    n_in: ClassVar[int] = 3
    n_out: ClassVar[int] = 1

    def _blocks(self, rng: Any, batch: int) -> Iterator[Any]:
        while True:
            xs = rng.standard_normal((16, batch, 3))
            xs[:, :, 1], xs[:, :, 2] = rng.random((16, batch)) < 0.3, rng.random((16, batch)) >= 0.25
            yield xs, xs[:, :, :1].copy(), xs[:, :, 0] == xs[:, :, 0]


@pytest.mark.parametrize("opt,batch", [("adam", 1), ("sgd", 2), ("rmsprop", 2)])
def test_lstm_td_lambda_with_a_discount_input_compiled_equals_torch(tmp_path, opt, batch):
    """TD(lambda) over sliding TBPTT with ``discount_input`` (gamma_t = gamma x_t[2], 0 on an episode's first
    step): the torch path's numbers to 1e-10 in float64."""
    task = EpisodesTask()
    net = models.make("lstm", n_in=3, n_hidden=6, n_out=1)
    rule = rules.make("td-lambda", net, rule="tbptt", rule_options={"k": 3}, cumulant_input=1, discount_input=2)
    settings = {"steps": 60, "chunk": 20, "update_every": 7, "optimizer": opt, "batch": batch, "checkpoint_every": 20}
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == 9
    _same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c))


@pytest.mark.parametrize("model,variant", [("columnar", {"normalise": 0.99}),
                                           ("constructive", {"per_stage": 2, "stage": 1, "normalise": 0.99})])
def test_columns_td_lambda_with_a_discount_input_compiled_equals_torch(tmp_path, model, variant):
    """TD(lambda) over columnar / constructive RTRL with ``discount_input`` on normalised networks: the torch
    path's numbers to 1e-10 in float64."""
    net = models.make(model, n_in=3, n_hidden=6, n_out=1, **variant)
    rule = rules.make("td-lambda", net, rule=model, cumulant_input=1, discount_input=2)
    settings = {"steps": 60, "chunk": 20, "update_every": 7, "optimizer": "adam", "batch": 2, "checkpoint_every": 20}
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, EpisodesTask(), tmp_path / e, engine=e, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and h_c.updates == h_t.updates == 9
    _close(h_t.params, h_c.params, "params")
    _close(_metrics(h_t.metrics), _metrics(h_c.metrics), "metrics")
    _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")


def test_normalised_columnar_td_resumes_bit_for_bit(tmp_path):
    """The normalisation's statistics are network state: they checkpoint and resume with it."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("columnar", "td-lambda"))
    net, rule, task, settings = _setup(c, {"normalise": 0.99}, "trace")
    _resume_equals_the_whole_run(net, rule, task, settings, tmp_path)


def test_normalised_constructive_through_a_stage_schedule_compiled_equals_torch(tmp_path):
    """TD(lambda) on a normalised constructive network through three stages (the statistics carried with the
    network state; each stage's columns learning theirs in turn): the torch path's numbers in float64."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("constructive", "td-lambda"))
    net, rule, task, settings = _setup(c, {"per_stage": 2, "normalise": 0.99}, "trace")
    settings.update(steps=70, chunk=10, update_every=3, schedule="6:2:20")
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = (_train(net, rule, task, tmp_path / e, optimizer="adam", batch=2,
                                                        engine=e, checkpoint_every=20, **settings)
                                                 for e in ("torch", "compiled"))
    assert h_c.engine == "compiled" and loop_c.rule.net.stage == 2
    _close(h_t.params, h_c.params, "params")
    _close(_metrics(h_t.metrics), _metrics(h_c.metrics), "metrics")
    _close(ck_t["rule_state"], ck_c["rule_state"], "rule_state")
    var_x = ck_c["rule_state"].net.var_in[:, :, :task.n_in]  # every stage's columns took their statistics of x
    assert bool((var_x != 1).all())
