"""`neuro bench span --quick`: files written, every method/lag/seed row present, losses finite or marked
diverged. No timing or outcome assertions."""

from __future__ import annotations

import json
import math

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
    for k in ("benchmark", "machine", "settings", "floors", "pilot", "results", "summary", "verdict", "command"):
        assert k in res, k
    assert res["benchmark"] == "span"
    assert set(res["floors"]) == {"none", "t1", "both"}


@pytest.mark.slow
def test_every_row_present(quick):
    _, res, md = quick
    st = res["settings"]
    lags, seeds = st["lags"], st["seeds"]
    seen = {(r["method"], r["lag"], r["seed"]) for r in res["results"]}
    assert seen == {(m, lag, s) for m in span.METHODS for lag in lags for s in range(seeds)}
    assert len(res["results"]) == len(seen)
    for r in res["results"]:
        assert r["lr"] == st["chosen_lr"][r["method"]]
        if r["final_loss"] is None:
            assert r["status"].startswith("diverged")
        else:
            assert math.isfinite(r["final_loss"]) and r["final_loss"] > 0 and r["status"] == "ok"
    # the pilot: every candidate of every method, at one lag
    assert {(r["method"], r["lr"]) for r in res["pilot"]} == {(m, lr) for m in span.METHODS for lr in span.GRID[m][1]}
    for m in span.METHODS:
        assert m in md
        for lag in lags:
            s = res["summary"][m][str(lag)]
            assert s["n"] + s["diverged"] == seeds
    for lag in lags:
        assert f"L={lag}" in md


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        span.main(["--seeds", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        span.main(["--lags", "0", "--out", str(tmp_path)])
