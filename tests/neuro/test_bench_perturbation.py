"""`neuro bench perturbation --quick`: files written, every task/method/seed row present with its curve,
losses finite or marked diverged, the verdict and alignment tables filled. No timing or outcome assertions."""

from __future__ import annotations

import json
import math

import pytest

from neuro.bench import perturbation


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_perturbation")
    assert perturbation.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "perturbation.json").read_text()), (out / "perturbation.md").read_text()


@pytest.mark.slow
def test_files(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["perturbation.json", "perturbation.md", "perturbation.png"]
    assert (out / "perturbation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in ("benchmark", "machine", "settings", "references", "pilot", "results", "summary", "verdict",
              "alignment", "command"):
        assert k in res, k
    assert res["benchmark"] == "perturbation"
    assert math.isclose(res["references"]["copy"]["chance"], math.log(10))


@pytest.mark.slow
def test_every_row_present(quick):
    _, res, md = quick
    st = res["settings"]
    seen = {(r["task"], r["method"], r["seed"]) for r in res["results"]}
    assert seen == {(t, m, s) for t in perturbation.TASKS for m in perturbation.METHODS for s in range(st["seeds"])}
    assert len(res["pilot"]) == len(perturbation.TASKS) * len(perturbation.METHODS) * len(st["grid"])
    assert {r["lr"] for r in res["pilot"]} == set(st["grid"])
    for r in res["results"]:
        assert r["lr"] == st["chosen_lr"][r["task"]][r["method"]]
        if r["final_loss"] is None:
            assert r["status"].startswith("diverged")
        else:
            assert math.isfinite(r["final_loss"]) and r["final_loss"] > 0 and r["curve"]
    for m in perturbation.METHODS:
        assert f"| {perturbation._label(m)} |" in md
    assert set(res["verdict"]) <= set(perturbation.TASKS)
    assert set(res["alignment"]) == set(perturbation.RULES) | {"tbptt (k=1)"}
    for row in res["alignment"].values():
        assert all(-1 <= v <= 1 for v in row.values())
