"""`neuro bench cost --quick`: the files are written with the expected keys, every case and size is
present, the fits are computed. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest

from neuro.bench import cost


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_cost")
    assert cost.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_cost.json").read_text()), (out / "bench_cost.md").read_text()


def test_files(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["bench_cost.json", "bench_cost.md"]  # no temporaries left
    for k in ("benchmark", "machine", "settings", "loadavg", "results", "fits", "seconds", "command"):
        assert k in res, k
    assert res["benchmark"] == "cost"
    assert res["settings"]["quick"] is True
    assert "## Fitted exponents" in md and "Reproduce:" in md


def test_every_case_and_size(quick):
    _, res, md = quick
    sizes = res["settings"]["sizes"]
    assert set(sizes) == set(cost.CASES) == set(res["fits"])
    seen = {(r["case"], r["n"]) for r in res["results"]}
    assert seen == {(c, n) for c, ns in sizes.items() for n in ns}
    for r in res["results"]:
        for k in ("n", "p", "seconds_per_step", "repeats", "state_numel", "state_fields", "init_seconds"):
            assert k in r, k
        assert r["seconds_per_step"] > 0 and r["p"] > 0 and r["state_numel"] > 0
        assert (r["graph_numel"] is not None) == (r["case"] == "bptt")
    for case, f in res["fits"].items():
        assert case in md
        assert sorted(f["used"] + f["excluded"]) == sorted(sizes[case])
        for k in ("exponent_n", "exponent_p", "exponent_numel_n"):
            assert math.isfinite(f[k]), (case, k)


def test_state_numel_scaling(quick):
    """The memory figures are structural (no timing): rtrl's influence matrix is S x P, columnar's O(p)."""
    _, res, _ = quick
    for r in res["results"]:
        if r["case"] == "rtrl":
            assert r["state_fields"]["M"] == r["n"] * r["p"]
        if r["case"] == "columnar":
            assert r["state_fields"]["M"] < 2 * r["p"]


def test_fit_exponent_exact():
    rows = [{"n": n, "p": n * n, "seconds_per_step": 3e-9 * n ** 4, "state_numel": n ** 3} for n in (2, 4, 8, 16, 32)]
    f = cost.fit_exponent(rows)
    assert f["used"] == [8, 16, 32] and f["excluded"] == [2, 4]
    assert f["exponent_n"] == pytest.approx(4.0) and f["exponent_p"] == pytest.approx(2.0)
    assert f["exponent_numel_n"] == pytest.approx(3.0)
    assert all(s["slope"] == pytest.approx(4.0) for s in f["local_slopes"])
    assert cost.fit_exponent(rows, fit_min=4)["excluded"] == [2]


def test_bad_case(tmp_path):
    with pytest.raises(SystemExit):
        cost.main(["--quick", "--cases", "nope", "--out", str(tmp_path)])
