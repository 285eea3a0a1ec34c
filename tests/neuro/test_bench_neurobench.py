"""``neuro bench neurobench``: the Mackey-Glass sweep writes its JSON after every run, resumes, summarises
sMAPE as mean ± s.e. by hand, reports beside the published rows, and refuses bad options."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from neuro.bench import neurobench as nb
from neuro.yardsticks import mackey_glass as mg


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A series of the right length in a temporary NEURO_CACHE (no jitcdde run): a smooth quasi-periodic curve
    in the attractor's range."""
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path / "cache"))
    t = np.arange(mg.POINTS)
    x = 0.9 + 0.3 * np.sin(2 * np.pi * t / 40) + 0.1 * np.sin(2 * np.pi * t / 13)
    for tau in (17, 18):
        path = mg.cache_path(tau)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x)


@pytest.mark.slow
def test_quick_run_writes_json_report_and_neurobench_metrics(cache, tmp_path):
    out = tmp_path / "out"
    assert nb.main(["--quick", "--rows", "rate-bptt", "--out", str(out)]) == 0
    data = json.loads((out / "neurobench.json").read_text())
    runs = [r for r in data["runs"] if r["phase"] == "eval"]
    assert [r["run"] for r in runs] == [0, 1] and all(r["status"] == "ok" for r in runs)
    vals = [r["smape"] for r in runs]
    s = data["summary"]["rate-bptt"]
    assert s["smape_mean"] == pytest.approx(statistics.fmean(vals))
    assert s["smape_se"] == pytest.approx(statistics.stdev(vals) / math.sqrt(2))
    metrics = runs[0]["neurobench"]
    assert "error" not in metrics and metrics["dense"] > 0          # NeuroBench's own count, per step
    assert "neurobench" not in runs[1]                               # measured on the first run only
    assert data["cost_s_per_epoch"]["rate-bptt"] > 0
    md = (out / "neurobench.md").read_text()
    assert "| LSTM (NeuroBench) | published |" in md and "13.37" in md and "| rate-bptt |" in md
    assert (out / "neurobench.png").stat().st_size > 0


def test_resume_reruns_nothing_and_partial_reports(cache, tmp_path, monkeypatch):
    calls = []

    def fake(job):
        calls.append(job)
        return {**job, "smape": 10.0 + job["run"] + 100 * (job["phase"] == "pilot") * (job["lr"] != nb.LRS[1]),
                "train_loss": 0.0, "status": "ok", "seconds": 0.1, "train_seconds": 0.1}

    monkeypatch.setattr(nb, "run_one", fake)
    out = str(tmp_path / "out")
    argv = ["--rows", "lif-eprop", "--offsets", "0", "3", "--epochs", "2", "--out", out]
    nb.main(argv)
    evals = [c for c in calls if c["phase"] == "eval"]
    assert [c["lr"] for c in evals] == [nb.LRS[1]] * 2               # the pilot's lowest sMAPE
    assert {c["tau"] for c in calls if c["phase"] == "pilot"} == {nb.PILOT_TAU}
    n = len(calls)
    nb.main(argv + ["--resume"])
    assert len(calls) - n == 2                                       # only the cost estimate runs again
    s = json.loads((tmp_path / "out" / "neurobench.json").read_text())["summary"]["lif-eprop"]
    assert (s["smape_mean"], s["runs"]) == (11.5, 2)
    path = tmp_path / "out" / "neurobench.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "note": "kept"}))
    n = len(calls)
    nb.main(["--rows", "lif-eprop", "--out", out, "--partial"])
    assert len(calls) == n and "11.50 ± 1.50" in (tmp_path / "out" / "neurobench.md").read_text()
    assert json.loads(path.read_text())["note"] == "kept"                # the JSON's other entries stay


def test_diverged_runs_count_200():
    rs = [{"phase": "eval", "row": "lif-bptt", "run": 0, "smape": 20.0, "lr": 1e-3, "epochs": 1, "seconds": 1.0},
          {"phase": "eval", "row": "lif-bptt", "run": 1, "smape": None, "lr": 1e-3, "epochs": 1, "seconds": 1.0}]
    s = nb.summarise(rs, ["lif-bptt"])["lif-bptt"]
    assert (s["smape_mean"], s["diverged"]) == (110.0, 1)


@pytest.mark.parametrize("argv", [["--lr", "nope=0.1"], ["--lr", "lif-bptt=x"], ["--offsets", "30"],
                                  ["--offsets-at", "lif-bptt"], ["--epochs", "0"]])
def test_bad_options_exit_with_a_message(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        nb.main(argv + ["--out", str(tmp_path)])
    assert e.value.code != 0


def test_no_learning_baselines_by_hand(cache):
    x = mg.series(17)[37:37 + 1501]
    b = nb.baselines([1])
    mean = x[:751].mean()
    assert b["constant: training mean"]["smape_mean"] == pytest.approx(
        200 * np.mean(np.abs(mean - x[751:]) / (mean + x[751:])), rel=1e-12)
    assert b["constant: last true value"]["smape_mean"] == pytest.approx(
        200 * np.mean(np.abs(x[750] - x[751:]) / (x[750] + x[751:])), rel=1e-12)
