"""The influence-balancing test of truncation bias (Tallec & Ollivier 2018, section 5.1), on a short run.

The parameter's one-step effect on the loss has the opposite sign to its long-run effect, so truncated
BPTT moves theta away from the optimum theta* = -1/6 (from theta_0 = 0.5), while RTRL and the
unbiased estimates (UORO, NoBackTrack) move it towards it. ``neuro bench influence`` reproduces the
full figure.
"""

from __future__ import annotations

import statistics

import pytest

import neuro
from neuro.bench import influence

THETA0 = 0.5
START = abs(THETA0 - influence.THETA_STAR)


def distance(rule: str, opts: dict, lr: float, seed: int = 0, steps: int = 3000) -> float:
    r = influence.run_one(rule, opts, lr, steps, seed)
    return abs(r["theta"] - influence.THETA_STAR) if r["theta"] == r["theta"] else float("inf")


@pytest.mark.parametrize("k", [1, 10, 100])
def test_truncated_bptt_moves_away_from_the_optimum(k):
    assert distance("tbptt", {"k": k}, 1e-4) > START


@pytest.mark.slow
def test_rtrl_converges_to_the_optimum():
    assert distance("rtrl", {}, 1e-4) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["uoro", "nobacktrack"])
def test_unbiased_online_rules_move_towards_the_optimum(rule):
    assert rule in neuro.rules.available()
    d = [distance(rule, {}, 1e-5, seed=s) for s in range(3)]  # single runs are noisy: some seeds diverge
    assert statistics.median(d) < 0.5 * START, d
