"""``neuro bench memory`` at tiny settings: the output is written and coherent (BPTT's memory grows with
T, the local rules' does not), and a run predicted to be too slow is skipped."""

from __future__ import annotations

import json

import pytest

from neuro.bench import memory


@pytest.mark.slow
def test_memory_section_tiny(tmp_path):
    import numpy as np

    # a large parent (as pytest is, late in a run): Linux carries ru_maxrss over fork and exec into the
    # worker processes, so a measure based on it would see the parent's peak, not the run's
    ballast = np.ones(64 * 2**20 // 8 * 8)  # 512 MiB, touched
    rc = memory.main(["--ts", "100", "1500", "--n", "16", "--rules", "ottt", "--seeds", "0",
                      "--out", str(tmp_path)])
    assert rc == 0 and ballast[-1] == 1.0
    del ballast
    data = json.loads((tmp_path / "bench_memory.json").read_text())
    md = (tmp_path / "bench_memory.md").read_text()
    assert "| ottt | lif |" in md and "| bptt | lif |" in md
    runs = [r for r in data["runs"] if r["kind"] == "memory"]
    assert len(runs) == 4 and not [r for r in runs if "error" in r], runs
    assert all(r["finite"] for r in runs)
    peak = {(r["rule"], r["T"]): r["peak_mib"] for r in runs}
    # BPTT keeps the graph of every step: tens of KiB per step here, so > 20 MiB more at T = 1500
    assert peak["bptt", 1500] > peak["bptt", 100] + 20, peak
    assert peak["ottt", 1500] < 0.2 * peak["bptt", 1500], peak
    assert data["summary"]["ottt/lif"]["memory_saving_vs_bptt"] > 0.8, data["summary"]


def test_cue_run():
    job = {"kind": "cue", "rule": "sltt", "seed": 0, "trials": 1, "batch": 2, "hidden": 8, "lr": 1e-2}
    r = memory.train_cue(job)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["peak_mib"] >= 0 and r["ms_per_step"] > 0
    assert r["trial_steps"] == 325 and r["final_loss"] > 0


def test_too_slow_runs_are_skipped(monkeypatch):
    calls = []

    def fake_spawn(job):
        calls.append(job["T"])
        return {**job, "peak_mib": 0.0, "ms_per_step": 10.0}

    monkeypatch.setattr(memory, "_spawn", fake_spawn)
    jobs = [{"kind": "memory", "rule": "x", "model": "lif", "T": T, "n": 4} for T in (10, 1000, 100000)]
    out = memory._chain(jobs, max_run_s=60.0)  # 10 ms/step: T=1000 takes 10 s, T=1e5 would take 1000 s
    assert calls == [10, 1000]
    assert "skipped" in out[2]["error"] and "1000 s" in out[2]["error"]


def test_local_rules_are_discovered_from_the_registry():
    pairs, _ = memory.local_rules()
    names = {r for r, _ in pairs}
    assert {"ottt", "sltt", "sltt-k"} <= names and "bptt" not in names and "rtrl" not in names
    assert dict(pairs)["ottt"] == "lif"
    # the other O(p) online rules (uoro, np, anp-time, columnar RTRL), on their own models
    assert {k: dict(pairs)[k] for k in ("uoro", "np", "anp-time", "columnar")} == memory.OTHER_ONLINE


def test_compiled_bptt_run_reports_the_bytes_it_stores_per_step():
    """BPTT on rate run by the compiled engine: its window stores h, n float32 values per step (alpha = 1)."""
    job = {"kind": "memory", "rule": memory.COMPILED, "model": "rate", "T": 400, "n": 24, "engine": "compiled"}
    r = memory.measure(job)
    assert r["stored_bytes_per_step"] == pytest.approx(24 * 4, rel=0.01) and r["finite"], r
    assert r["peak_mib"] >= 0 and r["ms_per_step"] > 0
