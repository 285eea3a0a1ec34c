"""Unbiasedness oracle for the stochastic online gradient estimators: with the parameters frozen, the
mean of N independent estimates converges to BPTT's gradient, and its error shrinks like 1/sqrt(N).

Add a rule to ``UNBIASED`` (with the options that make it return its unbiased estimate) to run it here, on
the models of ``MODELS`` that it supports.

Setup: one fixed sequence (T = 10, some steps masked) on a rate RNN with 4 units and on a LIF network
(checked to spike), float64; BPTT's gradient ``g`` is the truth.

Sampling: ``GROUPS = 64`` runs (seeds 0..63), each on a batch of ``GROUP = 500`` copies of the sequence.
Every sample of a batch draws its own noise and the rule averages over the batch, so a run's estimate
is the mean of 500 independent estimates and the runs are independent: 32 000 estimates in all, and the
mean of N of them is the mean of N / 500 consecutive runs.

Statistics (Sigma: the covariance of one estimate):
* ``tr Sigma`` = 500 x the summed sample variances of the 64 run means (unbiased).
* ``SE_N = sqrt(tr Sigma / N)``: the root-mean-square of ``||mean_N - g||`` when the estimate is unbiased.
  ``||mean_N - g||^2 / SE_N^2`` is then a weighted sum of chi-square(1) variables with weights summing to 1
  (mean 1), and exceeds 9 with probability at most P(chi2_1 > 9) = 0.27% (when one direction dominates).
* Unbiased: ``||mean_2000 - g|| <= 3 SE_2000`` (seeds 0..3), and the same for the mean of all 32 000.
* Per coordinate: Student t statistics of the pooled mean (63 degrees of freedom), Bonferroni-corrected to
  a family-wise level of 1%; coordinates without noise (e.g. the readout bias, which has only a direct
  term) equal BPTT's to 1e-10.
* 1/sqrt(N): the root-mean-square error over the 64 disjoint means of N = 500 and over the 16 of
  N = 2000; their ratio is 2 for an unbiased estimate (a bias adds ``||bias||^2`` to both mean squares and
  pulls it towards 1). Checked within [1.6, 2.5].
* The single-sample cosine with BPTT, over 40 seeds (batch 1): reported, and checked positive.

A rule with a time-indexing error (UORO pairing ``dl_t/ds_{t-1}`` with the rank-one pair already
propagated to ``t``) fails these checks: ``test_the_oracle_catches_a_biased_rule``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import pytest
import torch
from scipy import stats as scipy_stats

import models
import neuro
from neuro import rules
from neuro.rules.uoro import UORO, flat_step

from _helpers import flat as _flat

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

#: (rule, options): estimators unbiased for fixed parameters, with the options that return that estimate
UNBIASED: list[tuple[str, dict[str, Any]]] = [
    ("uoro", {}),
    ("nobacktrack", {}),
    ("nobacktrack-kalman", {"precondition": False}),  # the rank-one estimate its Kalman-like direction is built on
]
MODELS = ("rate", "lif")
T, N_IN, N_HIDDEN, N_OUT = 10, 2, 4, 2
GROUP, GROUPS = 500, 64
N = 2000
SINGLES = 40
F64 = torch.float64


#: model options: a LIF network fast and strongly driven enough to spike within T steps
OPTIONS = {"lif": dict(input_scale=8.0, tau_mem=5.0, tau_syn=2.0)}


def _setup(model: str):
    net = models.make(model, n_in=N_IN, n_hidden=N_HIDDEN, n_out=N_OUT, **OPTIONS.get(model, {}))
    params = net.init_params(seed=0, dtype=F64)
    g = torch.Generator().manual_seed(5)
    if net.spiking:  # input spikes
        xs = (torch.rand(T, 1, N_IN, generator=g) < 0.5).to(F64)
    else:
        xs = torch.randn(T, 1, N_IN, generator=g, dtype=F64)
    ys = torch.randn(T, 1, N_OUT, generator=g, dtype=F64)
    mask = torch.rand(T, 1, generator=g) < 0.7
    mask[-1] = True
    return net, params, xs, ys, mask


@dataclasses.dataclass
class Stats:
    rule: str
    model: str
    g: torch.Tensor  # BPTT's gradient [P]
    means: torch.Tensor  # [GROUPS, P] the run means (each of GROUP estimates)
    cosines: torch.Tensor  # [SINGLES] single-sample cosines with g

    @property
    def tr_sigma(self) -> float:
        return GROUP * float(self.means.var(0).sum())

    def se(self, n: int) -> float:
        return math.sqrt(self.tr_sigma / n)

    def means_of(self, n: int) -> torch.Tensor:
        """The disjoint means of ``n`` estimates [GROUPS * GROUP / n, P]."""
        k = n // GROUP
        return self.means.reshape(GROUPS // k, k, -1).mean(1)

    def rms_error(self, n: int) -> float:
        return float(((self.means_of(n) - self.g).norm(dim=1) ** 2).mean().sqrt())

    def summary(self) -> str:
        return (f"{self.rule} on {self.model}: |g| = {float(self.g.norm()):.3g}, tr Sigma = {self.tr_sigma:.3g}, "
                f"||mean_{N} - g|| = {float((self.means_of(N)[0] - self.g).norm()):.3g} "
                f"({float((self.means_of(N)[0] - self.g).norm()) / self.se(N):.2f} SE), pooled "
                f"{float((self.means.mean(0) - self.g).norm()) / self.se(GROUP * GROUPS):.2f} SE, "
                f"RMS error ratio N=500/2000: {self.rms_error(500) / self.rms_error(N):.2f}"
                + (f", single-sample cosine {float(self.cosines.mean()):.3f} +- {float(self.cosines.std()):.3f}"
                   if self.cosines.numel() > 1 else ""))


def collect(rule: rules.AbstractRule, model: str, singles: int = SINGLES) -> Stats:
    net, params, xs, ys, mask = _setup(model)
    if net.spiking:
        assert float(neuro.simulate(net, params, xs).spikes.sum()) >= 3, "the spiking network (nearly) never fires"
    g = _flat(neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask))

    def estimate(seed: int, batch: int) -> torch.Tensor:
        e = neuro.grad_estimate(net, params, rule, xs.expand(T, batch, N_IN), ys.expand(T, batch, N_OUT), seed=seed,
                                mask=mask.expand(T, batch))
        return _flat(e)

    means = torch.stack([estimate(j, GROUP) for j in range(GROUPS)])
    one = torch.stack([estimate(j, 1) for j in range(singles)]) if singles else torch.zeros(0, g.numel(), dtype=F64)
    cosines = torch.nn.functional.cosine_similarity(one, g[None], dim=1)
    return Stats(rule.name, model, g, means, cosines)


@functools.lru_cache(maxsize=None)
def _stats(rule_name: str, model: str) -> Stats:
    options = dict(UNBIASED)[rule_name]
    net = _setup(model)[0]
    return collect(rules.make(rule_name, net, loss="mse", **options), model)


def check_unbiased(st: Stats) -> None:
    """The mean of N estimates is within 3 standard errors of BPTT's gradient (module docstring)."""
    assert st.tr_sigma > 0, f"{st.rule} is declared stochastic but its estimates have no variance"
    noiseless = st.means.std(0) == 0
    torch.testing.assert_close(st.means[0][noiseless], st.g[noiseless], rtol=1e-10, atol=1e-10)
    err = float((st.means_of(N)[0] - st.g).norm())
    assert err <= 3 * st.se(N), f"||mean_{N} - g|| = {err:.4g} > 3 SE = {3 * st.se(N):.4g}: {st.summary()}"
    pooled = float((st.means.mean(0) - st.g).norm())
    n_all = GROUP * GROUPS
    assert pooled <= 3 * st.se(n_all), (f"||mean_{n_all} - g|| = {pooled:.4g} > 3 SE = {3 * st.se(n_all):.4g}: "
                                        f"{st.summary()}")
    t = (st.means.mean(0) - st.g)[~noiseless] / (st.means.std(0)[~noiseless] / math.sqrt(GROUPS))
    bound = float(scipy_stats.t.ppf(1 - 0.01 / (2 * t.numel()), GROUPS - 1))
    worst = float(t.abs().max())
    assert worst <= bound, f"a coordinate is off by {worst:.2f} > {bound:.2f} SE: {st.summary()}"


def check_rate(st: Stats) -> None:
    """The root-mean-square error shrinks like 1/sqrt(N): halves from N = 500 to N = 2000."""
    ratio = st.rms_error(500) / st.rms_error(N)
    assert 1.6 <= ratio <= 2.5, f"RMS error ratio between N = 500 and N = {N} is {ratio:.2f}, not ~2: {st.summary()}"


CASES = [pytest.param(r, m, id=f"{r}-{m}") for r, _ in UNBIASED for m in MODELS
         if rules.get(r).supports is None or m in rules.get(r).supports]


@pytest.mark.parametrize("rule_name,model", CASES)
@pytest.mark.slow
def test_mean_of_estimates_converges_to_bptt(rule_name, model):
    check_unbiased(_stats(rule_name, model))


@pytest.mark.parametrize("rule_name,model", CASES)
@pytest.mark.slow
def test_error_shrinks_like_one_over_sqrt_n(rule_name, model):
    check_rate(_stats(rule_name, model))


@pytest.mark.parametrize("rule_name,model", CASES)
@pytest.mark.slow
def test_single_sample_cosine(rule_name, model):
    st = _stats(rule_name, model)
    print(st.summary())  # pytest -s shows the numbers
    c = st.cosines
    assert float(c.mean()) > 3 * float(c.std()) / math.sqrt(c.numel()), st.summary()
    assert float(c.mean()) < 0.99, f"{st.rule}: single estimates agree with BPTT, is it stochastic? {st.summary()}"


@dataclasses.dataclass(frozen=True)
class _LateUORO(UORO):
    """UORO with the time-indexing error FlatStep's convention invites: the estimate of step t pairs
    dl_t/ds_{t-1} with the pair already propagated to t (an estimate of M_t, not M_{t-1})."""

    name = "test-late-uoro"

    def step(self, params, state, x, y, mask):
        out = super().step(params, state, x, y, mask)
        fs = flat_step(self.net, self.loss or "mse", params)
        theta, s = fs.flat_params(params), fs.flat_state(state.net)
        _, dl_ds, dl_dtheta, _, _ = fs.loss_grads(theta, s, x, y, mask)
        new = out.state
        g = fs.unflat_params(((dl_ds * new.s_tilde).sum(1, keepdim=True) * new.theta_tilde + dl_dtheta).mean(0))
        return out._replace(grad={k: g[k] for k in params})


@pytest.mark.slow
def test_the_oracle_catches_a_biased_rule():
    st = collect(_LateUORO(net=_setup("rate")[0], loss="mse"), "rate", singles=0)
    with pytest.raises(AssertionError, match="SE"):
        check_unbiased(st)
