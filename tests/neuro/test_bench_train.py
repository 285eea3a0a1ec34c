"""``neuro bench train`` on tiny settings: a row per (model, rule, n, engine) with consistent statistics."""

from __future__ import annotations

import json

import pytest
import torch

from neuro.bench import train


def _rows(tmp_path):
    data = json.loads((tmp_path / "train.json").read_text())
    return data, {(r["model"], r["rule"], r["engine"]): r for r in data["rows"]}


def _check_stats(r, bptt):
    s = r["steps_per_s"]
    assert len(r["blocks"]) == s["n"] == 2 and all(b > 0 for b in r["blocks"])
    assert r["blocks"] == [r["steps"] / t for t in r["seconds"]]  # steps per second of each timed call
    assert r["loop_steps_per_s"] >= s["median"]  # the loop alone is part of each timed call
    assert s["min"] == min(r["blocks"]) <= s["median"] <= s["max"] == max(r["blocks"])
    assert s["spread"] == pytest.approx((s["max"] - s["min"]) / s["median"])
    assert r["vs_bptt"] == pytest.approx(s["median"] / bptt["steps_per_s"]["median"])


def test_quick_run_writes_a_row_per_model_rule_and_size(tmp_path):
    threads = torch.get_num_threads()
    argv = ["--quick", "--models", "rate", "lif", "--rules", "rflo", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    data, by = _rows(tmp_path)
    assert set(by) == {(m, r, "auto") for m in ("rate", "lif") for r in ("bptt", "tbptt", "rflo")}
    assert all(r["n"] == 32 for r in data["rows"]) and not [r for r in data["rows"] if "error" in r]
    assert "does not support model 'lif'" in by["lif", "rflo", "auto"]["skipped"]
    for (model, rule, _), r in by.items():
        if "skipped" in r:
            continue
        _check_stats(r, by[model, "bptt", "auto"])
        assert r["steps"] == 50 and r["task"] == train.TASKS[model] and r["engine_used"]
    assert by["rate", "bptt", "auto"]["vs_bptt"] == 1.0
    assert by["rate", "rflo", "auto"]["updates_per_block"] == 50  # an update at every step
    assert by["rate", "tbptt", "auto"]["options"] == {"k": 20}
    assert data["settings"]["steps"] == 50 and data["settings"]["blocks"] == 2 and data["settings"]["n"] == [32]
    assert data["machine"]["threads"] == 1 and "loadavg_before" in data and "loadavg_after" in data
    md = (tmp_path / "train.md").read_text()
    assert "## rate (task `sine`)" in md and "## lif (task `add`)" in md
    assert "| rule | n=32 steps/s (min-max) | n=32 x bptt |" in md
    assert "| bptt | " in md and "| 1.00x |" in md and f"`neuro bench train {' '.join(argv)}`" in md
    assert "load average" in md and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not train.has_engine(), reason="neuro.train has no engine setting")
def test_both_engines_report_the_speed_up(tmp_path):
    """``--engine both`` runs torch and compiled side by side: compiled / torch is the ratio of their medians, the
    engine each row used is the run's own, and a rule without a compiled engine is a note, not a row of figures."""
    assert train.main(["--quick", "--models", "rate", "--rules", "rflo", "--engine", "both", "--out", str(tmp_path)]) == 0
    _, by = _rows(tmp_path)
    assert set(by) == {("rate", r, e) for r in ("bptt", "tbptt", "rflo") for e in ("torch", "compiled")}
    assert by["rate", "bptt", "compiled"]["engine_used"] == by["rate", "tbptt", "compiled"]["engine_used"] == "compiled"
    assert by["rate", "rflo", "compiled"]["engine_used"] == "compiled"
    assert by["rate", "rflo", "torch"]["engine_used"] == by["rate", "bptt", "torch"]["engine_used"] == "torch"
    for r in by.values():
        if "steps_per_s" in r:  # each against bptt on its own engine
            _check_stats(r, by["rate", "bptt", r["engine"]])
    c, t = by["rate", "rflo", "compiled"], by["rate", "rflo", "torch"]
    assert c["speedup_vs_torch"] == pytest.approx(c["steps_per_s"]["median"] / t["steps_per_s"]["median"])
    md = (tmp_path / "train.md").read_text()
    assert "n=32 compiled / torch" in md and "| rflo | compiled | " in md and "| bptt | compiled |" in md
    assert "no compiled engine for" not in md


def test_floor_with_each_optimizer_beside_compiled_bptt(tmp_path):
    assert train.main(["--quick", "--models", "rate", "--rules", "rflo", "--engine", "compiled", "--floor",
                       "--out", str(tmp_path)]) == 0
    data, by = _rows(tmp_path)
    assert set(data["floor_steps_per_s"]) == set(data["floor_adam_steps_per_s"]) == {"32"}
    assert data["floor_steps_per_s"]["32"] > 0 and data["floor_adam_steps_per_s"]["32"] > 0
    text = (tmp_path / "train.md").read_text()
    assert "with sgd: n=32 " in text and "with adam: n=32 " in text
    assert "Compiled rate BPTT, whole neuro.train calls of this run, updating once per chunk: n=32 " in text


def test_update_every_sets_every_rules_schedule(tmp_path):
    """``--update-every 10``: the online rule updates every 10 steps (5 in a block of 50), BPTT still once per
    chunk; the setting is in the JSON and the text."""
    assert train.main(["--quick", "--models", "rate", "--rules", "rflo", "--update-every", "10", "--out",
                       str(tmp_path)]) == 0
    data, by = _rows(tmp_path)
    assert by["rate", "rflo", "auto"]["updates_per_block"] == 5 and by["rate", "bptt", "auto"]["updates_per_block"] == 1
    assert data["settings"]["update_every"] == 10 and "columns" not in data
    assert "update_every=10" in (tmp_path / "train.md").read_text()


def test_columns_section_alone(tmp_path):
    """``--columns`` without ``--models``: only the columns networks on trace patterning, each row its goal and
    whether its median meets it; the CCN runs its five stages within the block."""
    assert train.main(["--columns", "--steps", "7", "--columns-steps", "500", "--blocks", "2", "--out",
                       str(tmp_path)]) == 0
    data = json.loads((tmp_path / "train.json").read_text())
    assert {r["steps"] for r in data["columns"]} == {500}  # --columns-steps, not --steps
    assert data["rows"] == [] and data["settings"]["columns"] == ["columnar", "ccn", "lstm-td"]
    by = {r["entry"]: r for r in data["columns"]}
    assert set(by) == {"columnar", "ccn", "lstm-td"} and not [r for r in by.values() if "error" in r or "skipped" in r]
    assert {e: r["goal_steps_per_s"] for e, r in by.items()} == {"columnar": 250_000, "ccn": 150_000, "lstm-td": 100_000}
    assert (by["columnar"]["model"], by["columnar"]["n"], by["ccn"]["model"], by["ccn"]["n"]) == \
        ("columnar", 7, "constructive", 20)
    assert by["ccn"]["schedule"] == "20:4:100" and by["lstm-td"]["options"]["rule_options"] == {"k": 3}
    for r in by.values():
        s = r["steps_per_s"]
        assert r["task"] == "trace-patterning" and r["rule"] == "td-lambda" and r["options"]["cumulant_input"] == 6
        assert len(r["blocks"]) == s["n"] == 2 and r["blocks"] == [500 / t for t in r["seconds"]]
        assert r["meets_goal"] == (s["median"] >= r["goal_steps_per_s"]) and r["updates_per_block"] == 500
    md = (tmp_path / "train.md").read_text()
    assert "## Columns networks on trace patterning" in md and "| ccn | CCN 20:4, schedule 20:4:100 |" in md
    assert "## rate" not in md and "load average" in md


@pytest.mark.parametrize("argv, says", [
    (["--rules", "nosuch"], "--rules nosuch: unknown"),
    (["--models", "nosuch"], "--models nosuch: unknown"),
    (["--n", "0"], "must be an integer >= 1"),
    (["--steps", "x"], "invalid int value"),
    (["--engine", "jit"], "--engine 'jit' is invalid"),
    (["--update-every", "0"], "--update-every 0: each must be an integer >= 1"),
    (["--columns", "nosuch"], "--columns nosuch: unknown"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_options_are_one_line_and_exit_2(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and err.count("\n") == 1 and err.startswith("neuro bench train: error:")
    assert not list(tmp_path.iterdir())


def test_compiled_without_an_engine_setting_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "has_engine", lambda: False)
    with pytest.raises(SystemExit) as e:
        train.main(["--engine", "compiled", "--out", str(tmp_path)])
    assert e.value.code == 2 and "no engine setting" in capsys.readouterr().err
