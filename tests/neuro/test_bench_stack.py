"""``neuro bench stack`` on tiny settings (layers of 8, a 37-step cue-accumulation trial): the runs it records, a
rule that refuses the stack recorded as its row's outcome, the report with its kept analysis, resuming, the
recall decision against a hand computation, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from neuro.bench import stack as bench
from neuro.tasks.base import Sequence

ARGS = ["--quick", "--seeds", "1", "--jobs", "1"]


def test_quick_runs_records_a_refusal_resumes_and_keeps_the_analysis(tmp_path):
    out = tmp_path / "b"
    assert bench.main([*ARGS, "--rules", "bptt", "kf-rtrl", "--estimate-trials", "1", "--out", str(out)]) == 0
    report = json.loads((out / "stack.json").read_text())
    # the cost is measured per rule that runs, and the projection made from it (2 trials a run)
    assert list(report["cost_ms_per_step"]) == ["bptt"] and report["cost_ms_per_step"]["bptt"] > 0
    assert report["projection"]["main_core_s"] == pytest.approx(report["cost_ms_per_step"]["bptt"] * 37 / 1e3 * 2)
    assert list(report["refused"]) == ["kf-rtrl"] and "stack" in report["refused"]["kf-rtrl"]
    assert report["summary"]["kf-rtrl"]["outcome"].startswith("ValueError: rule 'kf-rtrl'")
    [run] = report["results"]  # the refusing rule is not run; the other one is
    assert (run["rule"], run["seed"], run["status"], run["lr"]) == ("bptt", 0, "ok", bench.NO_PILOT_LR)
    assert run["hidden"] == [8, 8] and run["feedforward_scale"] == bench.FEEDFORWARD_SCALE
    assert run["ms_per_step"] > 0 and run["peak_mib"] >= 0 and run["final_loss"] > 0
    # 8 held-out trials: the accuracy is a multiple of 1/8; one rate per layer, each a rate in Hz (<= 1000)
    assert 0 <= run["test_acc"] <= 1 and abs(run["test_acc"] * 8 - round(run["test_acc"] * 8)) < 1e-9
    assert len(run["rate_hz"]) == len(run["rate_init_hz"]) == 2
    assert all(0 <= x <= 1000 for x in run["rate_hz"] + run["rate_init_hz"])
    s = report["summary"]["bptt"]
    assert s["outcome"] == "ok" and s["ok"] == 1 and s["test_acc_mean"] == run["test_acc"]
    md = (out / "stack.md").read_text()
    assert "| bptt | 0.003 |" in md and "| kf-rtrl |" in md and "**kf-rtrl**: ValueError" in md
    assert (out / "stack.png").exists()
    # a hand-written analysis survives a rewrite; resuming keeps the finished run (not re-measured)
    from neuro.bench.neurobench import ANALYSIS_BEGIN, ANALYSIS_END

    (out / "stack.md").write_text(md.split(ANALYSIS_BEGIN)[0] + f"{ANALYSIS_BEGIN}\nLayer 2 is quiet.\n{ANALYSIS_END}\n")
    assert bench.main([*ARGS, "--rules", "bptt", "kf-rtrl", "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "stack.json").read_text())["results"]
    assert [(r["wall_s"], r["test_acc"]) for r in again] == [(run["wall_s"], run["test_acc"])]
    assert "Layer 2 is quiet." in (out / "stack.md").read_text()
    # a run its rule refused (a rule not finished then) is tried again on resuming
    path = out / "stack.json"
    saved = json.loads(path.read_text())
    refused_run = {**run, "status": "refused: NotImplementedError: not yet", "test_acc": None, "wall_s": -1.0}
    path.write_text(json.dumps({**saved, "results": [refused_run]}))
    assert bench.main([*ARGS, "--rules", "bptt", "--out", str(out), "--resume"]) == 0
    [rerun] = json.loads(path.read_text())["results"]
    assert rerun["status"] == "ok" and rerun["wall_s"] >= 0 and rerun["test_acc"] == run["test_acc"]


def test_projected_wall_of_a_phase():
    # 2 workers: 3 + 1 + 1 s of runs take their share (2.5 s) unless one run is longer (3 s)
    assert bench._phase_wall([3.0, 1.0, 1.0], 2) == 3.0
    assert bench._phase_wall([2.0, 2.0, 2.0], 2) == 3.0
    assert bench._phase_wall([], 2) == 0.0


def test_run_one_records_a_refusal():
    job = {"phase": "main", "rule": "kf-rtrl", "seed": 0, "lr": 1e-3, "hidden": [4, 4], "connectivity": 0.5,
           "feedforward_scale": 1.0, "batch": 1, "trials": 1, "test_trials": 2,
           "task": {**bench.TASK_OPTIONS, "cue_ms": 2.0, "spacing_ms": 1.0, "delay_ms": 1.0, "recall_ms": 2.0}}
    r = bench.run_one(job)
    assert r["status"].startswith("refused: ValueError") and r["test_acc"] is None and r["ms_per_step"] is None


def test_recall_accuracy_is_the_summed_readout_decision():
    # T = 3 steps, 3 trials; the recall is steps 1 and 2 (step 0 does not count)
    y = torch.tensor([[[9., 0.], [0., 9.], [0., 9.]],     # step 0 (ignored) would flip trials 0 and 1
                      [[0., 1.], [2., 0.], [0., 1.]],
                      [[0., 3.], [0., 1.], [1., 0.]]])
    ys = torch.zeros(3, 3, 2)
    ys[1:, 0, 1] = ys[1:, 1, 0] = ys[1:, 2, 0] = 1  # targets: 1, 0, 0
    mask = torch.tensor([[False] * 3, [True] * 3, [True] * 3])
    # summed over steps 1-2: trial 0 (0, 4) -> 1 right; trial 1 (2, 1) -> 0 right; trial 2 (1, 1) -> tie, argmax 0
    assert bench.recall_accuracy(y, Sequence(torch.zeros(3, 3, 40), ys, mask)) == 1.0
    y[2, 2] = torch.tensor([0., 2.])  # trial 2 now (0, 3) -> 1, wrong
    assert bench.recall_accuracy(y, Sequence(torch.zeros(3, 3, 40), ys, mask)) == pytest.approx(2 / 3)


@pytest.mark.parametrize("argv, match", [(["--lr", "bptt=x"], "--lr 'bptt=x' is invalid"),
                                         (["--rules", "bptt", "--lr", "eprop=0.1"], "'eprop' is invalid"),
                                         (["--task", "delay=5"], "--task 'delay=5' is invalid"),
                                         (["--task", "n_cues=4"], "n_cues=4 is invalid"),
                                         (["--hidden", "8,x"], "'8,x' is invalid"),
                                         (["--connectivity", "0"], "--connectivity=0.0 is invalid"),
                                         (["--trials", "0"], "--trials=0 is invalid")])
def test_bad_options_named(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--out", "unused"])
    assert match in capsys.readouterr().err + str(e.value.code)


def test_default_scale_makes_layer_2_fire_like_layer_1():
    # the default feed-forward scale's claim (module docstring): at initialisation, on the task's input, the
    # second layer's rate is within 25% of the first's, where an unscaled matrix leaves it well below
    import models
    import neuro
    from neuro import tasks

    task = tasks.make("cue-accumulation", **bench.TASK_OPTIONS)
    seq = task.sample(task.trial_steps, batch=4, seed=5)
    rates = {}
    for s in (1.0, bench.FEEDFORWARD_SCALE):
        net = models.make("lif", n_in=40, n_hidden=bench.HIDDEN, n_out=2, connectivity=bench.CONNECTIVITY,
                          feedforward_scale=s)
        with torch.no_grad():
            z = neuro.simulate(net, net.init_params(0), seq.xs).spikes
        rates[s] = [float(z[..., sl].mean()) for sl in net.slices]
    l1, l2 = rates[bench.FEEDFORWARD_SCALE]
    assert abs(l2 / l1 - 1) < 0.25 and rates[1.0][1] / rates[1.0][0] < 0.75
