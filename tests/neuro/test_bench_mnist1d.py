"""``neuro bench mnist1d`` on tiny settings (a small MNIST-1D of 500 signals): the runs it makes, the pairs
``neuro.rules.make`` refuses, the report, resuming, and the one-line errors."""

from __future__ import annotations

import json

import pytest

from neuro.bench import mnist1d as bench

ARGS = ["--quick", "--num-samples", "500", "--models", "rate", "--rules", "bptt", "ottt", "anp-time",
        "--pilot-trials", "0", "--estimate-trials", "0", "--jobs", "1"]


def test_quick_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "b"
    assert bench.main([*ARGS, "--out", str(out)]) == 0
    report = json.loads((out / "bench_mnist1d.json").read_text())
    assert report["settings"]["pairs"] == ["rate:bptt", "rate:anp-time"]
    assert "rate:ottt" in report["refused"]  # ottt trains spiking networks only
    runs = report["results"]
    assert sorted((r["rule"], r["seed"]) for r in runs) == [("anp-time", 0), ("anp-time", 1), ("bptt", 0), ("bptt", 1)]
    for r in runs:
        assert r["status"] == "ok" and r["lr"] == bench.NO_PILOT_LR  # no pilot
        assert 0 <= r["test_acc"] <= 1 and r["ms_per_step"] > 0 and r["peak_mib"] >= 0
        # the whole test split is scored: accuracy is a multiple of 1/100 (100 test signals of 500)
        assert abs(r["test_acc"] * 100 - round(r["test_acc"] * 100)) < 1e-9
    s = report["summary"]["rate:bptt"]
    assert s["runs"] == 2 and s["test_acc_mean"] == pytest.approx(sum(s["test_acc"]) / 2)
    md = (out / "bench_mnist1d.md").read_text()
    assert "| rate | bptt |" in md and "GRU" in md and (out / "bench_mnist1d.png").exists()
    # resuming keeps the finished runs (their timings are the old ones, not re-measured)
    assert bench.main([*ARGS, "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "bench_mnist1d.json").read_text())["results"]
    assert [(r["wall_s"], r["test_acc"]) for r in again] == [(r["wall_s"], r["test_acc"]) for r in runs]


@pytest.mark.slow
def test_fixed_lr_per_model_and_rule(tmp_path):
    argv = [*ARGS[:ARGS.index("--models")], "--models", "rate", "--rules", "bptt", "--seeds", "1",
            "--lr", "rate:bptt=0.02", "--estimate-trials", "0", "--jobs", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "bench_mnist1d.json").read_text())
    assert report["settings"]["chosen_lr"] == {"rate:bptt": 0.02} and report["pilot"] == []
    assert [r["lr"] for r in report["results"]] == [0.02]


@pytest.mark.parametrize("argv, match", [(["--lr", "bptt=x"], "--lr 'bptt=x' is invalid"),
                                         (["--lr", "lif:np=0.1"], "'lif:np' is invalid"),
                                         (["--trials", "0"], "--trials=0 is invalid"),
                                         (["--num-samples", "10"], "--num-samples=10 is invalid")])
def test_bad_options_named(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--out", "unused"])
    assert match in capsys.readouterr().err + str(e.value.code)


def test_published_baselines_are_the_readme_figures():
    # greydanus/mnist1d README, "Comparing MNIST and MNIST-1D": MNIST-1D row and the shuffled row
    assert bench.BASELINES["logistic regression"] == (32, 32)
    assert bench.BASELINES["MLP"] == (68, 68)
    assert bench.BASELINES["CNN"] == (94, 56)
    assert bench.BASELINES["GRU (bidirectional)"] == (91, 57)


def test_rate_model_options_reach_the_network_and_the_resume_key(monkeypatch):
    # the rate RNN is made with Glorot init (MODEL_OPTIONS) for every rule; a run recorded with other model
    # hyper-parameters (an old JSON without model_kw: the model's defaults) has another resume key
    assert bench.MODEL_OPTIONS["rate"] == {"init": "xavier"} and bench.MODEL_OPTIONS["lif"] == {}
    job = {"phase": "pilot", "model": "rate", "model_kw": {"init": "normal"}, "rule": "bptt", "seed": 0, "lr": 1e-3,
           "hidden": 4, "batch": 2, "trials": 1, "num_samples": 500}
    old = {k: v for k, v in job.items() if k != "model_kw"}
    assert bench._key(old) == bench._key({**job, "model_kw": {}})
    assert bench._key(old) != bench._key({**job, "model_kw": {"init": "xavier"}})
    # the network run_one trains is the one models.make builds with those options
    import models

    made = []
    real = models.make
    monkeypatch.setattr(models, "make", lambda name, **kw: made.append((name, kw)) or real(name, **kw))
    assert bench.run_one(job)["status"] == "ok"
    assert made == [("rate", {"n_in": 1, "n_hidden": 4, "n_out": 10, "init": "normal"})]


@pytest.mark.slow
def test_rate_init_in_the_report_and_a_stale_run_rerun(tmp_path):
    out = tmp_path / "b"
    argv = [*ARGS[:ARGS.index("--rules")], "--rules", "bptt", "--seeds", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    path = out / "bench_mnist1d.json"
    report = json.loads(path.read_text())
    assert report["settings"]["model_options"]["rate"] == {"init": "xavier"}
    assert [r["model_kw"] for r in report["results"]] == [{"init": "xavier"}]
    assert "rate init=xavier" in (out / "bench_mnist1d.md").read_text()
    # (test_quick_runs_resumes_and_reports checks that a run of the same settings is kept)
    stale = {k: v for k, v in report["results"][0].items() if k != "model_kw"}
    path.write_text(json.dumps({**report, "results": [{**stale, "test_acc": 0.25, "wall_s": -1.0}]}))
    assert bench.main([*argv, "--resume"]) == 0
    [again] = json.loads(path.read_text())["results"]
    assert again["wall_s"] >= 0 and again["test_acc"] != 0.25 and again["model_kw"] == {"init": "xavier"}
