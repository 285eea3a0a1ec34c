"""``neuro bench seeds`` on tiny settings: the report is written and each member equals its own run."""

from __future__ import annotations

import json

from neuro.bench import seeds


def test_quick_run_writes_a_coherent_report(tmp_path):
    assert seeds.main(["--quick", "--models", "rate", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_seeds.json").read_text())
    (row,) = report["rows"]
    assert row["model"] == "rate" and row["members"] == 2 and row["batched"] == "direct"
    assert row["vectorised_ms_per_member_step"] > 0 and row["sequential_ms_per_step"] > 0
    assert row["max_final_loss_diff"] < 1e-5  # float32: each member is its own run, to rounding
    assert "| rate | 2 x 8 | direct |" in (tmp_path / "bench_seeds.md").read_text()
