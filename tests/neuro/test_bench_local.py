"""`neuro bench local --quick`: files written, every local rule present for every model it supports, cosines
in [-1, 1], the RFLO reproduction's losses finite and decreasing over its first trials. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest

import models
from neuro import rules
from neuro.bench import local
from neuro.rules import Needs


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_local")
    assert local.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_local.json").read_text()), (out / "bench_local.md").read_text()


def test_files(quick):
    out, res, md = quick
    assert sorted(p.name for p in out.iterdir()) == ["bench_local.json", "bench_local.md"]
    for k in ("benchmark", "machine", "settings", "alignment", "reproduction", "command"):
        assert k in res, k
    assert res["benchmark"] == "local" and res["settings"]["quick"]
    assert "## Alignment with BPTT" in md and "## RFLO reproduction" in md


def test_every_local_rule_is_measured_on_every_model_it_supports(quick):
    _, res, md = quick
    seen = {(r["model"], r["rule"]) for r in res["alignment"]}
    for name in rules.available():
        if rules.get(name).needs != Needs.LOCAL:
            continue
        for model in ("lif", "alif", "rate"):
            if rules.refusal(name, models.make(model, n_in=2, n_hidden=4, n_out=1)) is None:
                assert (model, name) in seen, (model, name)
    assert ("rate", "rflo") in seen and ("lif", "rflo") not in seen
    assert {("lif", "tbptt"), ("rate", "tbptt")} <= seen
    variants = {r["variant"] for r in res["alignment"] if r["model"] == "rate"}
    assert {"rflo (symmetric)", "rflo (random)", "three-factor (symmetric)"} <= variants
    seeds = res["settings"]["seeds"]
    for r in res["alignment"]:
        for part in ("overall", "hidden", "W_rec"):
            assert len(r[f"{part}_cosines"]) == seeds and r[part]["n"] <= seeds
            for c in r[f"{part}_cosines"]:
                assert c is None or -1.0 - 1e-9 <= c <= 1.0 + 1e-9
        assert r["variant"] in md


def test_symmetric_rflo_and_its_three_factor_form_agree(quick):
    """On the rate net three-factor in its RFLO form is RFLO: the same cosines, seed by seed."""
    _, res, _ = quick
    by = {(r["model"], r["variant"]): r for r in res["alignment"]}
    for fb in ("symmetric", "random"):
        for part in ("overall", "hidden", "W_rec"):
            a = by[("rate", f"rflo ({fb})")][f"{part}_cosines"]
            b = by[("rate", f"three-factor ({fb})")][f"{part}_cosines"]
            assert all(x is not None for x in a)
            assert a == pytest.approx(b, abs=1e-5)


def test_reproduction_rows(quick):
    _, res, _ = quick
    rep = res["reproduction"]
    assert {r["method"] for r in rep} == {"rflo", "bptt"}
    for r in rep:
        assert r["trials"] == res["settings"]["trials"]
        curve = [r["curve"][k] for k in sorted(r["curve"], key=int)]
        assert all(math.isfinite(x) for x in curve)
        assert curve[-1] < curve[0]  # learning: the loss falls over the first trials
