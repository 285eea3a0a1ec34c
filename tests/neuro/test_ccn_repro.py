"""The reproduction driver (``neuro.ccn_repro``): what it counts, scores and chooses, its config's checks, and
that it resumes.

* ``learnable_params`` counts a constructive network's feed-forward weights only where the mask lets
  them act (by hand: 20 columns in stages of 4 read 4 j earlier columns each), all of a dense LSTM's.
* ``lstm_hidden_for`` is the largest hidden size whose params x (k + 1) fits the budget.
* ``score`` is twice the loss of the whole metric rows over the tail (the last 20% of a short run, the last
  ``score_tail`` steps of a long one), up to a given step; paired differences and their s.e. by hand.
* The pilot's choice: the lowest mean, diverged seeds and ties handled.
* Config: ``valid_patterns``, stage lengths scaled to the run, bad keys -> one-line errors naming them.
* A reproduction run twice runs nothing the second time (runs counted); a seed added runs only it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from neuro.ccn_repro import choose_lr, learnable_params, lstm_hidden_for, main, paired, score, tail_for
from neuro.ccn_repro import config as C
from neuro.ccn_repro import runs as X

ROOT = Path(__file__).resolve().parents[2]


def test_learnable_params_by_hand():
    n_in, G = 12, 4
    ff = sum(4 * G * 4 * j for j in range(5))  # stage j: 4 columns x 4 gates x 4 j earlier columns
    ccn = 20 * G * n_in + ff + 20 * G + 20 * G + 20 + 1
    assert learnable_params("constructive", n_in, 20, 1, {"per_stage": 4}) == ccn == 1781
    assert learnable_params("columnar", n_in, 7, 1) == 7 * G * (n_in + 2) + 7 + 1
    h = 5
    assert learnable_params("lstm", n_in, h, 1) == 4 * h * (n_in + h + 1) + h + 1


@pytest.mark.parametrize("budget,k", [(1781, 3), (1781, 10), (400, 3), (5000, 1)])
def test_lstm_hidden_for_is_the_largest_that_fits(budget, k):
    h = lstm_hidden_for(budget, k, 12, 1)
    assert h == 1 or learnable_params("lstm", 12, h, 1) * (k + 1) <= budget
    assert learnable_params("lstm", 12, h + 1, 1) * (k + 1) > budget


def test_score_is_twice_the_loss_over_the_tail():
    curve = [{"step": 1000 * (i + 1), "loss": float(i)} for i in range(10)]  # 10k steps: tail 2k = last 2 rows
    assert tail_for(10_000, 100_000) == 2000 and tail_for(600_000, 100_000) == 100_000
    err, n = score({"curve": curve, "diverged": None}, tail_for(10_000, 100_000))
    assert n == 2000 and err == pytest.approx(2 * (8 + 9) / 2)
    err, n = score({"curve": curve, "diverged": None}, 3000, end=6000)  # rows ending at 4k, 5k, 6k
    assert n == 3000 and err == pytest.approx(2 * (3 + 4 + 5) / 3)
    curve = [{"step": 50_000 * (i + 1), "loss": float(i)} for i in range(12)]  # 600k steps: tail 100k
    err, n = score({"curve": curve, "diverged": None}, tail_for(600_000, 100_000))
    assert n == 100_000 and err == pytest.approx(2 * (10 + 11) / 2)
    assert math.isnan(score({"curve": curve, "diverged": 123}, 100)[0])


def _run(losses: list[float], steps: int, diverged=None) -> dict:
    every = steps // len(losses)
    return {"spec": {"steps": steps}, "diverged": diverged,
            "curve": [{"step": every * (i + 1), "loss": x} for i, x in enumerate(losses)]}


def test_paired_differences_and_their_se_by_hand():
    # a: 3 seeds of 1000 steps (tail 200 = the last row); b: 4 seeds of 2000 steps, scored at step 1000
    a = {s: _run([9.0, 9.0, 9.0, 9.0, x], 1000) for s, x in zip((0, 1, 2), (1.0, 2.0, 4.0))}
    b = {s: _run([9.0, 9.0, 9.0, 9.0, x] + [7.0] * 5, 2000) for s, x in zip((0, 1, 2, 3), (0.5, 0.5, 1.0, 3.0))}
    b[2]["diverged"] = 1500  # seed 2 is left out; seed 3 has no partner
    p = paired(a, b, score_tail=100_000)
    d = [2 * (1.0 - 0.5), 2 * (2.0 - 0.5)]  # twice the loss difference of the row ending at step 1000
    m = sum(d) / 2
    se = math.sqrt(((d[0] - m) ** 2 + (d[1] - m) ** 2) / 1 / 2)
    assert p["seeds"] == 2 and p["end"] == 1000
    assert p["mean"] == pytest.approx(m) and p["se"] == pytest.approx(se) == pytest.approx(1.0)


def test_the_pilot_picks_the_lowest_mean():
    assert choose_lr({0.1: [3.0, 3.0], 0.01: [1.0, 2.0], 0.001: [2.0, 2.0]}) == 0.01
    # a diverged seed rules an alpha out against one with none; the others' mean decides among equals
    assert choose_lr({0.1: [0.1, None], 0.01: [1.0, 2.0]}) == 0.01
    assert choose_lr({0.3: [None, None], 0.1: [5.0, None], 0.03: [None, 9.0]}) == 0.1
    assert choose_lr({0.1: [None], 0.01: [None]}) == 0.01  # all diverged: the smaller
    assert choose_lr({0.1: [1.0, 3.0], 0.01: [2.0, 2.0]}) == 0.01  # a tie: the smaller


def _cfg(**over) -> dict:
    cfg = {"task": "trace-patterning", "seeds": 2, "steps": 1000,
           "methods": {"m": {"model": "lstm", "hidden": 2, "inner": "tbptt", "k": 1, "lr": 1e-3}}}
    return {**cfg, **over}


def test_valid_patterns_maps_to_the_task_option():
    assert C.check(_cfg(valid_patterns="per-seed"))["task_options"] == {"pattern_seed": None}
    assert C.check(_cfg(valid_patterns=3))["task_options"] == {"pattern_seed": 3}
    assert "pattern_seed" not in C.check(_cfg())["task_options"]
    with pytest.raises(ValueError, match=r"valid_patterns='each' is invalid: valid are 'per-seed'"):
        C.check(_cfg(valid_patterns="each"))


@pytest.mark.parametrize("cfg,msg", [
    (_cfg(stpes=10), r"^config key 'stpes' is unknown: valid keys are task, task_options, "),
    (_cfg(methods={"m": {"model": "lstm", "inner": "tbptt", "k": 1, "lr": 1e-3, "hiden": 3}}),
     r"^methods\.m key 'hiden' is unknown: valid keys are model, hidden, model_options, "),
    (_cfg(pilot={"steps": 10, "seeds": 1, "lrs": [1]}), r"^pilot key 'lrs' is unknown: valid keys are steps, seeds$"),
    (_cfg(pilot={"steps": 10}), r"^pilot has no 'seeds'"),
    (_cfg(methods={"m": {"model": "lstm", "inner": "tbptt", "k": 1, "lr": 1e-3, "lrs": [1e-3]}}),
     r"^methods\.m has both 'lr' and 'lrs'"),
    (_cfg(methods={"m": {"model": "lstm", "inner": "tbptt", "k": 1}}), r"^methods\.m has no learning rate"),
    (_cfg(methods={"m": {"model": "lstm", "inner": "tbptt", "lr": 1e-3}}), r"^methods\.m\.k=None is invalid"),
    (_cfg(seeds=0), r"^seeds=0 is invalid"),
    (_cfg(budget_from="x"), r"^budget_from='x' is not a method: valid are m$"),
    ({"task": "trace-patterning", "seeds": 1, "methods": {}}, r"^config has no 'steps'"),
])
def test_bad_config_keys_are_one_line_errors(cfg, msg):
    with pytest.raises(ValueError, match=msg) as e:
        C.check(cfg)
    assert "\n" not in str(e.value)


def test_a_missing_policy_folder_is_named():
    cfg = C.check(_cfg(task_options={"policy": "no/such/folder"}))
    with pytest.raises(ValueError, match=r"^task option policy='no/such/folder' does not exist"):
        C.experiments(cfg)
    cfg = C.check(_cfg(task_options={"policy": "configs"}, games=["Pong", "Qbert"]))
    assert C.experiments(cfg) == [("Pong", {"policy": "configs", "game": "Pong"}),
                                  ("Qbert", {"policy": "configs", "game": "Qbert"})]  # as given: runs record it
    assert C.task_options({"policy": "configs"}) == {"policy": str(ROOT / "configs")}  # from the repository root


def test_stage_lengths_scale_with_the_run():
    m = {"schedule": "20:4", "stage_steps": 2_000_000, "steps": 10_000_000}
    assert C.stage_schedule(m, 10_000_000, 10_000) == "20:4:2000000"
    assert C.stage_schedule(m, 1_000_000, 10_000) == "20:4:200000"
    assert C.stage_schedule(m, 33_000, 10_000) == "20:4:10000"  # at least one chunk
    assert C.stage_schedule({"schedule": "10:1:6000", "steps": 60_000}, 60_000, 100) == "10:1:6000"
    with pytest.raises(ValueError, match="schedule='20:4' is invalid"):
        C.stage_schedule({"schedule": "20:4", "steps": 10}, 10, 1)


def test_the_protocol_configs_load():
    cfg = C.load(ROOT / "configs" / "ccn_protocol.toml")
    ms = cfg["methods"]
    assert cfg["task_options"] == {"pattern_seed": None} and cfg["optimizer"] == "td-rmsprop"
    assert (ms["columnar"]["steps"], len(ms["columnar"]["seeds"])) == (50_000_000, 5)
    assert (ms["ccn"]["steps"], len(ms["ccn"]["seeds"])) == (10_000_000, 10)
    assert ms["ccn"]["lrs"] == [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    tb = [n for n, m in ms.items() if m["inner"] == "tbptt"]
    assert len(tb) == 8 and all(ms[n]["lrs"] == [1e-3, 3e-4, 1e-4, 3e-5] for n in tb)
    assert C.stage_schedule(ms["constructive"], 10_000_000, cfg["chunk"]) == "10:1:1000000"
    atari = C.load(ROOT / "configs" / "atari_protocol.toml")
    assert atari["td"]["discount_input"] == 275
    assert len(atari["games"]) == 5 and atari["score_tail"] == 500_000
    for name in ("ccn_trace_patterning.toml", "ccn_trace_patterning_long.toml"):
        C.load(ROOT / "configs" / name)


TINY = """
task = "trace-patterning"
valid_patterns = "per-seed"
seeds = {seeds}
steps = 200
optimizer = "sgd"
lrs = [1e-2, 1e-3]
chunk = 50
log_every = 50
score_tail = 100
engine = "torch"
zero_baseline = true
[td]
cumulant_input = 6
gamma = 0.9
lam = 0.99
[pilot]
steps = 100
seeds = 2
[methods.a]
model = "lstm"
hidden = 2
inner = "tbptt"
k = 1
[methods.b]
model = "lstm"
hidden = 1
inner = "tbptt"
k = 2
lr = 1e-3
steps = 150
"""


def test_a_reproduction_resumes_without_rerunning(tmp_path, monkeypatch, capsys):
    calls = []
    real = X.run_one
    monkeypatch.setattr(X, "run_one", lambda spec, path=None: calls.append(spec) or real(spec, path))
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(seeds=2))
    out = tmp_path / "out"
    args = ["--config", str(cfg), "--out", str(out), "--jobs", "0"]
    assert main(args + ["--stage", "pilot"]) == 0
    assert len(calls) == 2 * 2 + 1 * 2  # a: 2 alphas x 2 seeds; b: 1 alpha x 2 seeds
    assert main(args + ["--partial", "--md", str(tmp_path / "p.md")]) == 0
    md = (tmp_path / "p.md").read_text()
    assert len(calls) == 6 and "| 0 / 2 |" in md and "| v = 0 (no learning) |" in md
    assert main(args) == 0
    assert len(calls) == 6 + 2 + 2  # the main runs only
    pilot = json.loads((out / "pilot.json").read_text())[""]
    means = {n: {float(lr): v["mean"] for lr, v in m["scores"].items()} for n, m in pilot["methods"].items()}
    assert pilot["methods"]["a"]["lr"] == min(means["a"], key=means["a"].get)  # the lowest pilot mean
    at = {n: means[n][pilot["methods"][n]["lr"]] for n in ("a", "b")}
    assert pilot["best_tbptt"] == min(at, key=at.get) and at["a"] != at["b"]
    assert main(args + ["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]) == 0
    assert len(calls) == 10 and (tmp_path / "r.png").stat().st_size > 0  # nothing run again
    cfg.write_text(TINY.format(seeds=3))
    assert main(args) == 0
    assert len(calls) == 12 and {c["seed"] for c in calls[10:]} == {2}  # the added seed only
    cfg.write_text(TINY.format(seeds=3).replace("lam = 0.99", "lam = 0.9"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "was run with other settings (rule_options:" in err and err.count("\n") == 1


def test_the_main_stage_waits_for_the_pilot(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(seeds=1))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--stage", "main", "--jobs", "0"]) == 2
    assert "the pilot of methods.a is not finished" in capsys.readouterr().err


def test_the_zero_baseline_is_the_mean_squared_return_of_the_steps():
    import torch

    import neuro.tasks
    from neuro.train_config import TrainConfig

    opts = {"pattern_seed": None}
    task = neuro.tasks.make("trace-patterning", **opts)
    g = torch.cat([s.ys[:, 0, 0] for s in task.stream(seed=TrainConfig(seed=4).seed_for("task"), chunk=70,
                                                          steps=500)]).double()
    assert float(g.abs().sum()) > 0
    want = float((g[130:450] ** 2).mean())  # steps 131..450: across chunk ends
    assert X.zero_baseline("trace-patterning", opts, 4, 70, 130, 450) == pytest.approx(want, rel=1e-12)
    ends = [60, 200, 330, 500]  # metric rows, across chunk ends
    rows = X.zero_rows("trace-patterning", opts, 4, 70, ends)
    assert rows == pytest.approx([float((g[a:b] ** 2).mean()) for a, b in zip([0] + ends[:-1], ends)], rel=1e-12)


def test_the_summary_across_games_ranks_by_hand():
    from neuro.ccn_repro.report import summary

    def rows(**scores):
        return [{"method": n, "score_mean": v, "score_se": math.nan} for n, v in scores.items()]

    from neuro.ccn_repro.report import ZERO

    zero = {"method": ZERO, "score_mean": 0.5, "score_se": 0.0}  # the reference row: shown, never ranked
    md = summary({"Pong": rows(a=1.0, b=2.0, c=math.nan) + [zero], "Breakout": rows(a=3.0, b=2.0, c=1.0) + [zero],
                  "Seaquest": rows(a=1.0, b=3.0, c=2.0) + [zero]})
    lines = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines()[2:]}
    # Pong is not ranked (c has no score yet): ranks over Breakout and Seaquest only
    assert lines["a"].endswith("| 2.00 (2 games) |") and lines["b"].endswith("| 2.50 (2 games) |")  # 3+1, 2+3
    assert lines["c"].endswith("| 1.50 (2 games) |") and "| - | 1.00000 |" in lines["c"]  # 1+2
    assert lines[ZERO].endswith("| - |")


def test_the_estimate_projects_core_hours(tmp_path, monkeypatch, capsys):
    steps = []

    def fake(spec, path=None):  # 36 s per step and 7200 s of setup per run
        steps.append(spec["steps"])
        return {"time_per_step_s": 36.0 + 7200.0 / spec["steps"], "engine": "torch"}

    monkeypatch.setattr(X, "run_one", fake)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(seeds=2))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--estimate", "--estimate-steps", "50"]) == 0
    out = capsys.readouterr().out
    assert steps == [50, 50, 100] * 2 and not (tmp_path / "o").exists()  # a warm-up, then n and 2n steps
    # a: (2 alphas x 2 seeds x 100 + 2 seeds x 200) steps x 36 s + (4 + 2) runs x 7200 s = 20 h;
    # b: (1 x 2 x 100 + 2 x 150) x 36 s + (2 + 2) x 7200 s = 13 h
    assert "| a | torch | 36000000.0 | 7200.00 | 400 | 400 | 20.0 |" in out
    assert "| b | torch | 36000000.0 | 7200.00 | 200 | 300 | 13.0 |" in out
    assert "| all (1 experiment) | | | | | | 33.0 |" in out


def test_a_stage_schedule_that_does_not_fit_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(X, "run_one", lambda spec, path=None: calls.append(spec))
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(seeds=1) + '[methods.c]\nmodel = "constructive"\nhidden = 4\nmodel_options = '
                   '{ per_stage = 2 }\ninner = "constructive"\nschedule = "4:2"\nstage_steps = 200\n')
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert calls == [] and "the last of its 2 stages starts at step 100" in capsys.readouterr().err


@pytest.mark.parametrize("flags,msg", [(["--only", "a,x"], "error: --only 'x' is not in the config: valid are a, b\n"),
                                       (["--games", "Pong"], "error: --games 'Pong' is invalid: the config has no games\n"),
                                       (["--jobs", "-1"], "error: --jobs -1 is invalid: must be >= 0")])
def test_bad_command_line_choices_are_one_line_errors(tmp_path, capsys, flags, msg):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(seeds=1))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_the_plots_running_mean_is_the_authors_metric_by_hand():
    from neuro.ccn_repro.report import running

    # rows of 50 steps: the mean over the last 100 steps is the mean of the last two rows (the first: itself)
    assert running([50, 100, 150, 200], [1.0, 2.0, 3.0, 4.0], 100) == [1.0, 1.5, 2.5, 3.5]
    # rows of unequal length count by their steps: (1 x 10 + 4 x 30) / 40; then the last row alone (60 steps
    # >= 40), and over 50-step windows (4 x 30 + 2 x 60) / 90 (whole rows until they cover the window)
    assert running([10, 40, 100], [1.0, 4.0, 2.0], 40) == [1.0, 3.25, 2.0]
    assert running([10, 40, 100], [1.0, 4.0, 2.0], 70) == [1.0, 3.25, 240 / 90]
    assert running([10, 20], [1.0, 3.0], 0) == [1.0, 3.0]  # window 0 is never used, but must not fail
