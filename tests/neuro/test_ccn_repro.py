"""The reproduction driver's bookkeeping (``neuro.ccn_repro``): what it counts and scores.

* ``learnable_params`` counts a constructive network's feed-forward weights only where the mask lets
  them act (by hand: 20 columns in stages of 4 read 4 j earlier columns each), all of a dense LSTM's.
* ``lstm_hidden_for`` is the largest hidden size whose params x (k + 1) fits the budget.
* ``score`` averages twice the loss over the last 20% of a short run (whole metric rows), the last 100k
  of a long one.
* The committed config parses and every method builds (T-BPTT sizes from the budget).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from neuro.ccn_repro import _methods, learnable_params, lstm_hidden_for, score

ROOT = Path(__file__).resolve().parents[2]


def test_learnable_params_by_hand():
    n_in, G = 12, 4
    ff = sum(4 * G * 4 * j for j in range(5))  # stage j: 4 columns x 4 gates x 4 j earlier columns
    ccn = 20 * G * n_in + ff + 20 * G + 20 * G + 20 + 1
    assert learnable_params("constructive", n_in, 20, 1, {"per_stage": 4}) == ccn == 1781
    assert learnable_params("columnar", n_in, 7, 1) == 7 * G * (n_in + 2) + 7 + 1
    h = 5
    assert learnable_params("lstm", n_in, h, 1) == 4 * h * (n_in + h + 1) + h + 1


@pytest.mark.parametrize("budget,k", [(1781, 3), (1781, 10), (400, 3), (5000, 1)])
def test_lstm_hidden_for_is_the_largest_that_fits(budget, k):
    h = lstm_hidden_for(budget, k, 12, 1)
    assert h == 1 or learnable_params("lstm", 12, h, 1) * (k + 1) <= budget
    assert learnable_params("lstm", 12, h + 1, 1) * (k + 1) > budget


def test_score_is_twice_the_loss_over_the_tail():
    curve = [{"step": 1000 * (i + 1), "loss": float(i)} for i in range(10)]  # 10k steps: tail 2k = last 2 rows
    err, n = score({"curve": curve}, 10_000)
    assert n == 2000 and err == pytest.approx(2 * (8 + 9) / 2)
    curve = [{"step": 50_000 * (i + 1), "loss": float(i)} for i in range(12)]  # 600k steps: tail 100k
    err, n = score({"curve": curve}, 600_000)
    assert n == 100_000 and err == pytest.approx(2 * (10 + 11) / 2)


def test_the_committed_config_builds():
    cfg = tomllib.loads((ROOT / "configs" / "ccn_trace_patterning.toml").read_text())
    methods = _methods(cfg)
    assert {"columnar", "ccn", "constructive", "tbptt-3", "tbptt-10"} <= set(methods)
    budget = methods["ccn"]["params"]
    for name in ("tbptt-3", "tbptt-10"):
        m = methods[name]
        assert m["compute"] == m["params"] * (m["k"] + 1) <= budget
