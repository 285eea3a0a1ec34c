"""`neuro bench span --quick`: files written, every size/condition/method/seed row present, losses finite or
marked diverged, the paired verdict recomputed from the rows, a resumed run reusing them. No timing or
outcome assertions."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from neuro.bench import span


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_span")
    assert span.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_span.json").read_text()), (out / "bench_span.md").read_text()


@pytest.mark.slow
def test_files(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["bench_span.json", "bench_span.md", "bench_span.png"]
    assert (out / "bench_span.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in ("benchmark", "machine", "settings", "gaps", "cost_s_per_step", "pilot", "results", "summary",
              "verdict", "command"):
        assert k in res, k
    assert res["benchmark"] == "span"
    assert res["settings"]["conditions"] == ["add L=6", "anbn", "brackets"]
    for cond, g in res["gaps"].items():
        assert g["baseline"] > g["target"] > 0, cond
    assert set(res["cost_s_per_step"]["8"]) == set(span.METHODS)


@pytest.mark.slow
def test_every_row_present(quick):
    _, res, md = quick
    st = res["settings"]
    seen = [(r["hidden"], r["condition"], r["method"], r["seed"]) for r in res["results"]]
    assert sorted(seen) == sorted((n, c, m, s) for n in st["sizes"] for c in st["conditions"]
                                  for m in st["methods"][str(n)] for s in range(st["seeds"]))
    for r in res["results"]:
        assert r["lr"] == st["chosen_lr"][str(r["hidden"])][r["method"]]
        if r["final_loss"] is None:
            assert r["status"].startswith("diverged")
        else:
            assert math.isfinite(r["final_loss"]) and r["final_loss"] > 0 and r["status"] == "ok"
    # the pilot: every candidate of every method, at one condition
    assert {(r["method"], r["lr"]) for r in res["pilot"]} == {(m, lr) for m in span.METHODS for lr in span.GRID[m][1]}
    assert {r["condition"] for r in res["pilot"]} == {"add L=6"}
    for m in span.METHODS:
        assert m in md
        for c in st["conditions"]:
            s = res["summary"]["8"][c][m]
            assert s["n"] + s["diverged"] == st["seeds"]
    for c in st["conditions"]:
        assert c in md


@pytest.mark.slow
def test_verdict_is_paired(quick):
    _, res, md = quick
    assert {(v["hidden"], v["condition"]) for v in res["verdict"]} == {(8, c) for c in res["settings"]["conditions"]}
    for v in res["verdict"]:
        loss = {(r["method"], r["seed"]): r["final_loss"] for r in res["results"]
                if (r["hidden"], r["condition"]) == (v["hidden"], v["condition"])}
        d = [loss["nobacktrack-kalman", s] - loss["tbptt", s] for s in range(res["settings"]["seeds"])
             if loss["nobacktrack-kalman", s] is not None and loss["tbptt", s] is not None]
        assert v["seeds"] == len(d) and v["difference"] == pytest.approx(statistics.fmean(d), rel=1e-12)
        assert v["se"] == pytest.approx(statistics.stdev(d) / math.sqrt(len(d)), rel=1e-12)
        assert v["better"] == ("neither (within 2 s.e.)" if abs(v["difference"]) <= 2 * v["se"] else
                               "Kalman NBT" if v["difference"] < 0 else "TBPTT")
        assert f"{v['difference']:+.4f} ± {v['se']:.4f}" in md


@pytest.mark.slow
def test_resume_reuses_runs(quick, tmp_path):
    out, res, _ = quick
    (tmp_path / "bench_span.json").write_text(json.dumps(res))
    args = ["--quick", "--out", str(tmp_path), "--estimate-steps", "0", "--resume"]
    assert span.main(args) == 0
    again = json.loads((tmp_path / "bench_span.json").read_text())
    assert again["results"] == res["results"] and again["pilot"] == res["pilot"]


@pytest.mark.parametrize("args", [["--seeds", "0"], ["--lags", "0"], ["--sizes", "0"], ["--jobs", "2"],
                                  ["--steps-at", "16"], ["--lr", "sgd=0.1"], ["--methods-at", "16=bptt"]])
def test_bad_arguments(tmp_path, args):
    with pytest.raises(SystemExit):
        span.main([*args, "--out", str(tmp_path)])
