"""neuro.compare: the harness on cheap rules and two seeds, its files and plots, resume after a killed
sweep, identical results across executors, configuration files, and its errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import neuro
from neuro import io
from neuro.cli import main as cli
from neuro.comparison import Results, plan
from neuro.comparison.config import load

SMALL = dict(task="sine", rules=["bptt", "tbptt"], seeds=2, steps=300, hidden=6, log_every=100,
             rule_options={"tbptt": {"k": 3}}, align_steps=50, eval_steps=200, progress=False)
TIMING = ("time_per_step_s", "peak_mem_bytes", "wall_s")


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in TIMING}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Results, Path]:
    out = tmp_path_factory.mktemp("cmp")
    return neuro.compare(**SMALL, out=out, workers=2), out


@pytest.mark.slow
def test_every_rule_and_seed_runs_and_is_summarised(swept):
    res, _ = swept
    assert [(r["spec"]["rule"], r["spec"]["seed"]) for r in res.runs] == [("bptt", 0), ("bptt", 1), ("tbptt", 0), ("tbptt", 1)]
    rows = {r["rule"]: r for r in res.summary()}
    assert set(rows) == {"bptt", "tbptt"}
    for r in res.runs:
        assert not r["diverged"] and math.isfinite(r["final_loss"]) and r["time_per_step_s"] > 0
        assert [c["step"] for c in r["curve"]] == [100, 200, 300]
    # bptt is its own reference; truncation to 3 steps is measurably misaligned on a 50-step probe
    assert all(a["cosine"] == 1.0 for r in res.of("bptt") for a in r["alignment"])
    tb = [a["cosine"] for r in res.of("tbptt") for a in r["alignment"]]
    assert all(0.0 < c < 0.999 for c in tb), tb
    # the table's mean and standard error are those of the runs
    final = [r["final_loss"] for r in res.of("tbptt")]
    assert rows["tbptt"]["final_loss"] == pytest.approx(sum(final) / 2)
    assert rows["tbptt"]["final_loss_se"] == pytest.approx(abs(final[0] - final[1]) / 2)
    assert rows["bptt"]["time_vs_bptt"] == 1.0


@pytest.mark.slow
def test_files_and_plots_are_written_and_hold_the_data(swept):
    res, out = swept
    for name in ("runs.csv", "curves.csv", "summary.csv", "summary.md", "curves.png", "alignment.png", "cost.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    import matplotlib.image

    for name in ("curves.png", "alignment.png", "cost.png"):
        img = matplotlib.image.imread(out / name)
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img.std()) > 0, name
    curves = io.read_csv(out / "curves.csv")
    assert len(curves) == 4 * 3
    by = {(r["rule"], r["seed"], r["step"]): r for r in curves}
    for run in res.runs:
        for c in run["curve"]:
            assert by[(run["spec"]["rule"], run["spec"]["seed"], c["step"])]["loss"] == c["loss"]
    for rule in ("bptt", "tbptt"):  # the trained parameters are kept beside each result, and in the Results
        saved = io.load_checkpoint(out / "runs" / rule / "seed-1.pt")
        assert set(saved) == {"W_in", "W_rec", "b", "W_out", "b_out"} and saved["W_rec"].shape == (6, 6)
        assert all(torch.equal(saved[k], res.trained(rule, 1)[k]) for k in saved)
    assert res.best("eval_loss") in {(r["spec"]["rule"], r["spec"]["seed"]) for r in res.runs}
    summary = io.read_csv(out / "summary.csv")
    assert [r["rule"] for r in summary] == ["bptt", "tbptt"]
    assert "| tbptt |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_in_process_runs_equal_the_worker_processes(swept):
    res, _ = swept
    again = neuro.compare(**{**SMALL, "seeds": [1]}, workers=0)
    for a in again.runs:
        b = next(r for r in res.runs if r["spec"] == a["spec"])
        assert _strip(a) == _strip(b)


def test_rtrl_is_aligned_with_bptt_along_training():
    res = neuro.compare(**{**SMALL, "rules": ["rtrl"], "rule_options": {}, "seeds": 1, "dtype": "float64"}, workers=0)
    cos = [a["cosine"] for a in res.runs[0]["alignment"]]
    assert len(cos) == 3 and all(c > 1 - 1e-9 for c in cos), cos


def test_bad_sweeps_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"'nope', 'zzz' unknown: valid choices are .*bptt"):
        plan("sine", ["bptt", "nope", "zzz"])
    with pytest.raises(ValueError, match=r"task 'nada' unknown.*rule\(s\) 'x' unknown"):
        plan("nada", ["x"])
    with pytest.raises(ValueError, match="seeds=\\[\\] is empty"):
        plan("sine", ["bptt"], seeds=[])
    with pytest.raises(ValueError, match="rule 'rtrl' does not support model 'lif'|'rflo'|does not support"):
        plan("sine", ["kf-rtrl"], model="lif")
    with pytest.raises(ValueError, match="executor='ray' needs address"):
        neuro.compare("sine", ["bptt"], executor="ray")
    assert not any(tmp_path.iterdir())


def test_an_unreachable_ray_address_fails_in_seconds():
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="no Ray cluster answers at address='127.0.0.1:9'"):
        neuro.compare(**SMALL, executor="ray", address="127.0.0.1:9", connect_timeout_s=2.0)
    assert time.monotonic() - t0 < 10


def test_config_file_with_flags_overriding(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text('task = "sine"\nrules = ["bptt", "tbptt"]\nseeds = 1\nsteps = 200\nhidden = 5\n'
                   'log_every = 100\nalign_steps = 50\neval_steps = 100\nworkers = 0\n[rule_options.tbptt]\nk = 4\n')
    assert load(cfg)["rule_options"] == {"tbptt": {"k": 4}}
    out = tmp_path / "o"
    assert cli(["compare", "--config", str(cfg), "--steps", "300", "--rule-opt", "tbptt:k=2", "--update-every", "50",
                "--out", str(out)]) == 0
    spec = json.loads((out / "runs" / "tbptt" / "seed-0.json").read_text())["spec"]
    assert spec["steps"] == 300 and spec["rule_options"] == {"k": 2} and spec["hidden"] == 5
    assert spec["update_every"] == 50
    assert "| tbptt |" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "sine"\nrulez = ["bptt"]\nsteps = "many"\n')
    assert cli(["compare", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'rulez'" in err and "steps='many' is invalid" in err



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_ray_executor_on_a_local_cluster_equals_the_local_run(swept, tmp_path):
    pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    import shutil
    import tempfile

    short = tempfile.mkdtemp(prefix="ray")  # Ray's unix sockets live here: pytest's tmp_path is too long for them
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats", f"--temp-dir={short}"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    try:
        res = neuro.compare(**SMALL, executor="ray", address=f"127.0.0.1:{port}")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
        shutil.rmtree(short, ignore_errors=True)
    local, _ = swept
    assert [_strip(r) for r in res.runs] == [_strip(r) for r in local.runs]


@pytest.mark.slow
def test_vectorised_seeds_equal_separate_runs():
    """The seeds of tbptt trained as one ensemble give each seed's own run, to rounding (float64)."""
    kw = {**SMALL, "rules": ["tbptt", "rtrl"], "seeds": 3, "dtype": "float64", "rule_options": {"tbptt": {"k": 3}}}
    vec = neuro.compare(**kw, vectorise=True, workers=2)
    sep = neuro.compare(**kw, workers=0)
    assert [r.get("vectorised") for r in vec.runs] == [3, 3, 3, None, None, None]
    for a, b in zip(vec.runs, sep.runs):
        assert a["spec"] == b["spec"]
        for key in ("final_loss", "eval_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-10, abs=1e-12), key
        assert [c["step"] for c in a["curve"]] == [c["step"] for c in b["curve"]]
        pa, pb = vec.trained(a["spec"]["rule"], a["spec"]["seed"]), sep.trained(b["spec"]["rule"], b["spec"]["seed"])
        for k in pa:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-9, atol=1e-12)
        for x, y in zip(a["curve"] + a["alignment"], b["curve"] + b["alignment"]):
            assert x["step"] == y["step"]
            assert x.get("loss", x.get("cosine")) == pytest.approx(y.get("loss", y.get("cosine")), rel=1e-9, abs=1e-12)


def test_ensemble_network_runs_each_member_with_its_own_parameters():
    import torch

    import models
    from neuro.ensemble import Ensemble, unstack_params

    for name in ("rate", "lif", "alif", "lstm"):
        net = models.make(name, n_in=3, n_hidden=5, n_out=2)
        ens = Ensemble(net, 3)
        p = ens.init_params(4, dtype=torch.float64)
        x = torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
        st = ens.init_state(p, 6)
        for _ in range(5):
            st, y = ens.step(p, st, x)
        for m, pm in enumerate(unstack_params(p)):
            assert torch.equal(pm["W_in"], net.init_params(4 + m, dtype=torch.float64)["W_in"])
            s = net.init_state(pm, 2)
            for _ in range(5):
                s, ym = net.step(pm, s, x[2 * m:2 * m + 2])
            torch.testing.assert_close(y[2 * m:2 * m + 2], ym, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="batch=5 is invalid for an ensemble of 3"):
        ens.init_state(p, 5)
