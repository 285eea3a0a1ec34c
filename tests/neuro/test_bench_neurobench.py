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


def _torch_reference(run: int, window: int, hidden: int, epochs: int, ln: bool, relu: bool) -> tuple[float, float]:
    """NeuroBench's LSTMModel and lstm_benchmark.py training, one run, written with torch modules (the oracle of
    the stacked re-implementation): sMAPE of the test from warmed states and from rest."""
    import torch
    from torch import nn

    from neuro.tasks.neurobench_mg import NeuroBenchMG

    torch.manual_seed(run)
    cell = nn.LSTMCell(window, hidden).double()
    fc, norm = nn.Linear(hidden, 1).double(), nn.LayerNorm(window).double()
    mods = nn.ModuleList([cell, fc, norm])
    task = NeuroBenchMG(tau=17, offset=run, window=window)
    x = task.values()
    opt = torch.optim.Adam(mods.parameters(), lr=0.005, weight_decay=0.001)

    def forward(inp, hc):
        h, c = cell(norm(inp) if ln else inp, hc)
        return fc(torch.relu(h) if relu else h), (h, c)

    def zero():
        return torch.zeros(1, hidden, dtype=torch.float64), torch.zeros(1, hidden, dtype=torch.float64)

    for _ in range(epochs):
        buf, hc, out = torch.zeros(1, window, dtype=torch.float64), zero(), []
        for t in range(750):                                     # the look-back buffer, shifted by one value
            buf = torch.cat([buf[:, 1:], torch.tensor([[x[t]]])], 1)
            y, hc = forward(buf, hc)
            out.append(y[0, 0])
        loss = nn.functional.mse_loss(torch.stack(out), torch.tensor(x[1:751]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = []
    with torch.no_grad():
        for warm in (True, False):
            buf, hc = torch.zeros(1, window, dtype=torch.float64), zero()
            if warm:
                for t in range(750):
                    buf = torch.cat([buf[:, 1:], torch.tensor([[x[t]]])], 1)
                    _, hc = forward(buf, hc)
            y, preds = torch.tensor([[x[750]]]), []
            for _ in range(750):
                buf = torch.cat([buf[:, 1:], y], 1)
                y, hc = forward(buf, hc)
                preds.append(float(y))
            scores.append(200 * np.mean(np.abs(np.array(preds) - x[751:]) / (np.abs(preds) + np.abs(x[751:]))))
    return scores[0], scores[1]


@pytest.mark.slow
def test_reference_lstm_matches_torch_modules(cache):
    got = nb.reference_lstm(["ln+relu", "none"], [1], epochs=2, hidden=3, window=4)
    for r in got:
        ln, relu = nb.REFERENCE_VARIANTS[r["variant"]]
        warm, cold = _torch_reference(1, 4, 3, 2, ln, relu)
        assert (r["smape_warm"], r["smape_cold"]) == (pytest.approx(warm, rel=1e-9), pytest.approx(cold, rel=1e-9))
    assert got[0]["smape_warm"] != got[1]["smape_warm"]                    # the variants differ
    with pytest.raises(ValueError, match="variants"):
        nb.reference_lstm(["layernorm"], [0])


def test_report_regenerates_and_keeps_the_analysis(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(nb, "run_one", lambda job: {**job, "smape": 10.0 + job["run"], "train_loss": 0.0,
                                                    "status": "ok", "seconds": 0.1, "train_seconds": 0.1})
    out = tmp_path / "out"
    argv = ["--rows", "lstm-bptt", "--offsets", "0", "1", "--epochs", "1", "--lr", "lstm-bptt=0.01", "--out", str(out)]
    nb.main(argv)
    md_path, json_path = out / "neurobench.md", out / "neurobench.json"
    md = md_path.read_text()
    assert md.count(nb.ANALYSIS_BEGIN) == 1 and md.index(nb.ANALYSIS_BEGIN) < md.index(nb.ANALYSIS_END)
    assert "## Calibration against NeuroBench's LSTM" in md and "No reproduction" in md
    md_path.write_text(md.replace("(no analysis written yet)", "## Findings\n\n- hand-written: kept"))
    data = json.loads(json_path.read_text())
    data["runs"].append({**data["runs"][-1], "run": 2, "smape": 12.0})   # one more run: the table changes
    data["calibration"] = {"command": "neuro bench neurobench --reference ...", "sweeps": [
        {"name": "lr 0.005", "command": "neuro bench neurobench --lr lstm-bptt=0.005", "runs": [
            {"run": 0, "smape": 10.0}, {"run": 1, "smape": None}]}], "runs": [
        {"variant": "ln+relu", "run": r, "epochs": 1, "lr": 0.005, "weight_decay": 0.001, "hidden": 100,
         "window": 50, "train_loss": 0.0, "smape_warm": w, "smape_cold": c} for r, w, c in ((0, 12.0, 20.0),
                                                                                            (1, 14.0, 30.0))]}
    json_path.write_text(json.dumps(data))
    nb.main(["--rows", "lstm-bptt", "--out", str(out), "--partial"])
    md = md_path.read_text()
    assert "- hand-written: kept" in md and md.count("## Findings") == 1
    assert "11.00 ± 0.58" in md                                           # mean of 10, 11, 12; s.e. by hand
    assert "| NeuroBench's LSTMModel (LayerNorm, ReLU) | 2 | 13.00 ± 1.00 | 25.00 ± 5.00 |" in md
    assert "- lr 0.005: sMAPE 105.00 ± 95.00 over 2 runs [0, 1]" in md       # a diverged run counts 200
    assert json.loads(json_path.read_text())["calibration"]["runs"][1]["smape_cold"] == 30.0
    nb.main(argv + ["--resume"])                                          # a sweep keeps both too
    assert "- hand-written: kept" in md_path.read_text()
    assert "calibration" in json.loads(json_path.read_text())


def test_kept_analysis_old_findings_and_a_lost_end_marker():
    assert nb.kept_analysis("# t\n\n## Findings\n\n- a\n") == "## Findings\n\n- a"
    assert nb.kept_analysis("# t\n") == ""
    assert nb.kept_analysis(f"x\n{nb.ANALYSIS_BEGIN}\n\n  b \n{nb.ANALYSIS_END}\ny") == "b"
    with pytest.raises(ValueError, match="end marker"):
        nb.kept_analysis(f"{nb.ANALYSIS_BEGIN}\nb\n")
