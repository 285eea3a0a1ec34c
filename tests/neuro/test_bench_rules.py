"""``neuro bench rules`` on tiny settings: a row per rule with the forward and rule times and their ratio."""

from __future__ import annotations

import json

from neuro.bench import rules


def test_quick_run_writes_every_rule(tmp_path):
    assert rules.main(["--quick", "--rules", "rflo", "ottt", "bptt", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_rules.json").read_text())
    by = {r["rule"]: r for r in data["rows"]}
    assert set(by) == {"rflo", "ottt", "bptt"} and not [r for r in data["rows"] if "error" in r]
    for r in data["rows"]:
        assert r["forward_ms"] > 0 and r["rule_ms"] > 0
        assert abs(r["ratio"] - r["rule_ms"] / r["forward_ms"]) < 1e-9
    assert by["ottt"]["rate_per_step"] > 0  # the spiking network fires
    assert "| rflo | rate | 32 |" in (tmp_path / "bench_rules.md").read_text()
