"""`neuro bench patterns --quick`: the files written and their contents (both rules, every figure present
and consistent), and the target of the paper's task. No timing or outcome assertions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neuro.bench import patterns


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_patterns")
    assert patterns.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_patterns.json").read_text()), (out / "bench_patterns.md").read_text()


@pytest.mark.slow
def test_files_and_contents(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["bench_patterns.json", "bench_patterns.md"]
    for k in ("benchmark", "machine", "settings", "alignment_at_init", "results", "paper", "command"):
        assert k in res, k
    assert res["benchmark"] == "patterns"
    st = res["settings"]
    assert [r["rule"] for r in res["results"]] == ["eprop", "bptt"]
    for r in res["results"]:
        assert r["iterations"] == st["iters"] and not r["diverged"]
        assert math.isfinite(r["final_mse"]) and r["final_mse"] >= 0
        assert r["final_nmse"] == pytest.approx(r["final_mse"] / st["target_variance"])
        assert r["curve"][0]["iteration"] == 0 and r["curve"][-1]["iteration"] == st["iters"]
        assert r["curve"][-1]["mse"] == r["final_mse"]
        assert r["initial_rate_hz"] > 0, "the network does not spike"
    # both rules start from the same network
    assert res["results"][0]["initial_mse"] == res["results"][1]["initial_mse"]
    assert -1.0 <= res["alignment_at_init"]["overall"] <= 1.0
    assert res["alignment_at_init"]["W_out"] == pytest.approx(1.0)  # the readout's gradient is exact
    assert "| eprop |" in md and "| bptt |" in md and "normalised MSE" in md


def test_target_is_the_papers_sum_of_sines():
    y = patterns.sum_of_sines(1000, np.random.default_rng(0))
    assert y[0] == 0.0 and np.abs(y).max() == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(y - y.mean()))
    top = sorted(np.argsort(spectrum)[-4:])
    assert top == [1, 2, 3, 5]  # 1, 2, 3 and 5 cycles in 1000 ms: periods 1000, 500, 333, 200 ms
