"""`neuro bench sim --quick`: files written with every figure; firing rates in band. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest

from neuro.bench import main as bench_main
from neuro.bench import sim


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert sim.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_sim.json").read_text()), (out / "bench_sim.md").read_text()


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_files_and_keys(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["bench_sim.json", "bench_sim.md"]  # no temp files left
    for k in ("benchmark", "machine", "settings", "bandwidth", "op_overhead_us", "results", "reference",
              "gap_to_brian2_ref", "errors", "command"):
        assert k in res, k
    for k in ("date", "cpu_model", "cores", "torch", "numpy", "norse", "threads", "loadavg_start", "loadavg_end"):
        assert k in res["machine"], k
    assert res["settings"]["sizes"] == [64, 128] and res["settings"]["steps"] == 200
    assert res["settings"]["threads"] == 2
    for k in ("limit_GBps", "read_GBps", "copy_GBps"):
        assert _positive(res["bandwidth"][k]), k
    assert _positive(res["op_overhead_us"])
    ref = res["reference"]["brian2_cpp_standalone"]
    assert "not in this run" in ref["label"] and ref["steps_per_s"] == {"256": 451e3, "1024": 48e3, "4096": 2.9e3}
    # the table: every variant row, the labelled reference row
    assert md.startswith("# neuro bench sim")
    for label in sim.LABELS.values():
        assert label in md
    assert "reference, measured earlier, not in this run" in md


@pytest.mark.slow
def test_every_figure(quick):
    _, res, _ = quick
    keys = {(r["key"], r["n"]) for r in res["results"]}
    expected = set(sim.ORDER) if "norse" not in res["errors"] else set(sim.ORDER) - {"norse"}
    assert keys == {(k, n) for k in expected for n in (64, 128)}
    for r in res["results"]:
        s = r["steps_per_s"]
        for k in ("median", "min", "max"):
            assert _positive(s[k]), (r["key"], k)
        assert s["min"] <= s["median"] <= s["max"] and s["spread"] >= 0
        for k in ("time_per_step_us", "bytes_per_step", "limit_time_per_step_us", "fraction_of_limit", "vs_plain"):
            assert _positive(r[k]), (r["key"], k)
        if r["key"] == "lif_compiled":  # event-driven: the rows of this step's spikes and input spikes only
            from neuro.bench.sim import DT, N_IN, P_IN

            events = r["rate_hz"] * DT * 1e-3 * r["n"] + P_IN * N_IN
            assert r["bytes_per_step"] == int(events * r["n"] * 4) < r["n"] * r["n"] * 4
        else:
            assert r["bytes_per_step"] == r["n"] * r["n"] * 4
        assert r["vs_brian2_ref"] is None  # no reference figure at quick sizes
        if "norse" not in res["errors"]:
            assert _positive(r["vs_norse"])


@pytest.mark.slow
def test_firing_rates_in_band(quick):
    _, res, _ = quick
    lo, hi = sim.TARGET_HZ
    spiking = [r for r in res["results"] if r["key"] in ("lif_simulate", "lif_step", "plain", "norse")]
    assert spiking
    for r in spiking:
        assert lo <= r["rate_hz"] <= hi, (r["key"], r["n"], r["rate_hz"])
    for r in res["results"]:
        if r["key"] in ("rate_simulate", "rate_step", "matvec"):
            assert r["rate_hz"] is None


@pytest.mark.slow
def test_norse_recorded_not_raised(quick):
    _, res, _ = quick
    if "norse" in res["errors"]:  # peers are optional: the error is written down, the run goes on
        assert res["errors"]["norse"]
    else:
        assert any(r["key"] == "norse" for r in res["results"])


def test_dispatcher_and_bad_args(tmp_path, capsys):
    assert bench_main(["nope"]) == 2
    assert "unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sim.main(["--quick", "--steps", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "bench_sim.json").exists()


def test_write_atomic_replaces(tmp_path):
    from neuro.bench import _report

    p = tmp_path / "sub" / "x.json"
    _report.write_json(p, {"a": 1})
    _report.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


@pytest.mark.slow
def test_all_quick_runs_the_six_performance_sections(tmp_path, capsys):
    """``neuro bench all --quick``: sim, rules, memory, batch (seeds), rtrl (cost) and train each write figures."""
    from neuro.cli import main as cli_main

    assert cli_main(["bench", "all", "--quick", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    for name, fname in (("sim", "bench_sim.json"), ("rules", "bench_rules.json"), ("memory", "bench_memory.json"),
                        ("batch", "bench_seeds.json"), ("rtrl", "bench_cost.json"), ("train", "train.json")):
        assert f"neuro bench all: {name}: ok" in err
        assert json.loads((tmp_path / name / fname).read_text())


def test_all_reports_a_section_without_figures(tmp_path, monkeypatch, capsys):
    import neuro.bench as bench

    monkeypatch.setitem(bench.QUICK, "rules", (["--quick", "--rules", "nosuch"], "bench_rules.json"))
    monkeypatch.setattr(bench, "QUICK", {"rules": bench.QUICK["rules"]})
    assert bench_main(["all", "--quick", "--out", str(tmp_path)]) == 1
    assert "rules: FAILED" in capsys.readouterr().err
