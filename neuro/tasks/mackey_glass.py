"""Mackey-Glass prediction (Mackey & Glass 1977, "Oscillation and chaos in physiological control
systems", Science 197:287), in the setting of the ANP-in-time paper (Fernandez et al. 2024, code
jesusgf96/NP_RNNs): predict the series ``horizon = 15`` steps ahead. The delay equation::

    dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t),      beta 0.2, gamma 0.1, n 10, tau 17

is sampled at dt = 1: the input is ``x_t`` and the target ``x_{t + horizon}`` (``n_in = n_out = 1``, mse,
every step counts). With ``normalise=True`` (default) both are ``tanh(x - 1)``, the ANP code's squashing
(a fixed map, so chunks stay continuous; the code also removes the sample mean: ``center`` below).

Integration (method of steps, an exponential integrator): on a grid of step ``h = 1 / substeps`` the
delayed drive ``f(t) = beta x(t - tau) / (1 + x(t - tau)^n)`` is already known ``tau`` ahead, so
``x_{k+1} = e^{-gamma h} x_k + int_0^h e^{-gamma (h - r)} f(t_k + r) dr`` with ``f`` interpolated by the
cubic through ``f_{k-1}, ..., f_{k+2}`` (weights integrated exactly by Gauss-Legendre; one-sided
stencils next to the breakpoints t = tau, 2 tau, 3 tau of the initial history): fourth-order accurate
(checked against RK4 in the tests), and vectorised over windows of ``tau / h - 1`` grid steps. The
history is constant, ``x(t) = x_0`` for ``t <= 0`` with ``x_0 ~ U(0.5, 1.5)`` per stream from the seed;
the first ``washout`` time units (default 500) are discarded.

``integrator="euler"`` is instead the authors' generator (``mackey_glass_sequence``) exactly: forward Euler
with ``substeps`` sub-steps per unit, from a random history of ``tau * substeps`` values
``1.2 + 0.2 (U - 0.5)`` (``U ~ U[0, 1)``, one history per stream from the seed) and the running value 1.2;
see :func:`euler`.

``horizon`` may be negative: the input is then ``x_{t + |horizon|}`` and the target ``x_t`` (the authors'
code as written pairs them so, ``horizon=-15``). ``length=None`` (default) is the endless stream; an integer
makes the task episodic, with trials of ``length`` steps that are all the same series, the authors' setting
(one series replayed every epoch, the state reset before each): ``length + |horizon|`` values after the
washout (the authors': 5000 steps, washout 100), squashed if ``normalise`` and then, with ``center=True``,
minus that series' own mean (one mean per stream; the authors remove one mean taken over all their train
and test series together).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterator

import numpy as np

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block

__all__ = ["INTEGRATORS", "MackeyGlass", "euler", "integrate"]

INTEGRATORS = ("exponential", "euler")


def _weights(gamma: float, h: float, first: int = -1) -> np.ndarray:
    """``w_j = int_0^h e^{-gamma (h - r)} l_j(r) dr`` for the Lagrange basis on nodes
    ``first h, ..., (first + 3) h``."""
    z, wq = np.polynomial.legendre.leggauss(8)
    r, wq = 0.5 * h * (z + 1.0), 0.5 * h * wq
    nodes = h * np.arange(first, first + 4.0)
    w = np.empty(4)
    for j in range(4):
        lj = np.prod([(r - nodes[m]) / (nodes[j] - nodes[m]) for m in range(4) if m != j], axis=0)
        w[j] = np.sum(wq * np.exp(-gamma * (h - r)) * lj)
    return w


def integrate(x0: np.ndarray, beta: float = 0.2, gamma: float = 0.1, n: float = 10.0, tau: float = 17.0,
              substeps: int = 10) -> Iterator[np.ndarray]:
    """The solution from the constant history ``x0`` [B], as endless blocks [L, B] of the values at
    t = 1, 2, 3, ... (L varies; t = 0 is ``x0``)."""
    h, D = 1.0 / substeps, round(tau * substeps)
    a = math.exp(-gamma * h)
    w = {first: _weights(gamma, h, first) for first in (-2, -1, 0)}
    # f is not smooth at t = m tau (x is not at t = 0): the steps next to those breakpoints take their
    # stencil from one side (-2: nodes k-2..k+1, 0: nodes k..k+3) instead of the centred one (-1)
    special = {m * D + d: first for m in (1, 2, 3) for d, first in ((-1, -2), (0, 0))}
    # the longest run of the recurrence x_{k+1} = a x_k + b_k solved with one cumulative sum
    run = max(1, int(math.log(1e6) / (gamma * h)))
    buf = np.repeat(np.asarray(x0, dtype=np.float64)[None], D + 3, axis=0)   # x_{K-D-2}, ..., x_K
    K = 0
    while True:
        f = beta * buf / (1.0 + buf ** n)                                      # f_{K-2}, ..., f_{K+D}
        c = w[-1]
        b = c[0] * f[1:-3] + c[1] * f[2:-2] + c[2] * f[3:-1] + c[3] * f[4:]   # b_K, ..., b_{K+D-2}
        for k, first in special.items():
            lo = k + first - (K - 2)                                           # f index of the first node
            if K <= k <= K + D - 2 and lo + 4 <= D + 3:
                b[k - K] = w[first] @ f[lo:lo + 4]
        new, x = [], buf[-1]
        for s in range(0, D - 1, run):
            bs = b[s:s + run]
            powers = a ** np.arange(1, bs.shape[0] + 1)[:, None]               # a^1, ..., a^m
            xs = powers * (x + np.cumsum(bs / powers, axis=0))                 # x_{k+1}, ..., x_{k+m}
            new.append(xs)
            x = xs[-1]
        new = np.concatenate(new, axis=0)                                      # x_{K+1}, ..., x_{K+D-1}
        idx = np.arange(K + 1, K + D)
        yield new[idx % substeps == 0]
        buf = np.concatenate([buf, new], axis=0)[-(D + 3):]
        K += D - 1


def euler(history: np.ndarray, beta: float = 0.2, gamma: float = 0.1, n: float = 10.0, substeps: int = 10,
          x0: float = 1.2, block: int = 250) -> Iterator[np.ndarray]:
    """The authors' ``mackey_glass_sequence`` from the histories ``history`` [B, tau * substeps] (oldest
    first), as endless blocks [block, B] of the values after each ``substeps`` Euler sub-steps::

        x_tau <- history.popleft();  history.append(x);  x <- x + (beta x_tau / (1 + x_tau^n) - gamma x) / substeps

    starting from ``x = x0``, one history per row (the authors' loop starts only its first sample at 1.2 and
    each later one where the previous ended; here every stream starts at ``x0``). The same floating-point operations in the same order,
    on Python floats row by row: numpy's vectorised power differs from the scalar ``pow`` in the last bit
    for some arguments, and the chaotic series grows that to 1e-8 within 3000 steps (the rows take
    15 ms per 5000 steps each, faster than a loop over numpy rows for batches up to about 50)."""
    rows = [collections.deque(h) for h in np.asarray(history, dtype=np.float64).tolist()]
    xs = [float(x0)] * len(rows)
    while True:
        out = np.empty((block, len(rows)))
        for b, hist in enumerate(rows):
            x, pop, push = xs[b], hist.popleft, hist.append
            for t in range(block):
                for _ in range(substeps):
                    x_tau = pop()
                    push(x)
                    x = x + (beta * x_tau / (1.0 + x_tau ** n) - gamma * x) / substeps
                out[t, b] = x
            xs[b] = x
        yield out


@dataclasses.dataclass(frozen=True)
class MackeyGlass(AbstractTask):
    beta: float = 0.2
    gamma: float = 0.1
    n: float = 10.0
    tau: float = 17.0
    horizon: int = 15
    substeps: int = 10
    washout: int = 500
    normalise: bool = True
    integrator: str = "exponential"
    length: int | None = None
    center: bool = False

    name = "mackey-glass"
    loss = "mse"

    def __post_init__(self) -> None:
        for f in ("beta", "gamma", "n", "tau"):
            check_positive(f, getattr(self, f))
        if not isinstance(self.horizon, int) or isinstance(self.horizon, bool):
            raise ValueError(f"horizon={self.horizon!r} is invalid: expected an integer")
        check_positive("substeps", self.substeps, integer=True)
        check_positive("washout", self.washout, allow_zero=True, integer=True)
        grid = self.tau * self.substeps
        if abs(grid - round(grid)) > 1e-9 or round(grid) < 3:
            raise ValueError(f"tau={self.tau!r} is invalid with substeps={self.substeps!r}: "
                             f"tau * substeps must be an integer >= 3")
        for f in ("normalise", "center"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{f}={getattr(self, f)!r} is invalid: must be True or False")
        check_choice("integrator", self.integrator, INTEGRATORS)
        if self.length is not None and (not isinstance(self.length, int) or isinstance(self.length, bool)
                                        or self.length <= 0):
            raise ValueError(f"length={self.length!r} is invalid: must be a positive integer or None")
        if self.center and self.length is None:
            raise ValueError("center=True is invalid with length=None: an endless stream has no mean to remove; "
                             "give a length")

    @property
    def episodic(self) -> bool:  # type: ignore[override]
        return self.length is not None

    @property
    def trial_steps(self) -> int | None:
        return self.length

    @property
    def n_in(self) -> int:
        return 1

    @property
    def n_out(self) -> int:
        return 1

    def series(self, rng: np.random.Generator, batch: int) -> Iterator[np.ndarray]:
        """The observed series after the washout (normalised if asked), as blocks [L, B]."""
        if self.integrator == "euler":
            D = round(self.tau * self.substeps)
            history = 1.2 + 0.2 * (rng.random((batch, D)) - 0.5)             # one history per stream
            blocks = euler(history, self.beta, self.gamma, self.n, self.substeps)
        else:
            blocks = integrate(rng.uniform(0.5, 1.5, size=batch), self.beta, self.gamma, self.n, self.tau,
                               self.substeps)
        t = 0
        for block in blocks:
            t_next = t + block.shape[0]                                       # block holds t+1 .. t_next
            block = block[max(0, self.washout - t):]
            t = t_next
            if block.shape[0]:
                yield np.tanh(block - 1.0) if self.normalise else block

    def _pairs(self, values: np.ndarray, steps: int) -> Block:
        """Inputs and targets of ``steps`` steps from ``values`` [steps + |horizon|, B]: ``x_t -> x_{t + h}``,
        or ``x_{t + |h|} -> x_t`` for a negative horizon ``h``."""
        h = self.horizon
        xs, ys = (values[:steps], values[h:h + steps]) if h >= 0 else (values[-h:-h + steps], values[:steps])
        return (xs[:, :, None].astype(np.float32), ys[:, :, None].astype(np.float32),
                np.ones((steps, values.shape[1]), dtype=bool))

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        lead = abs(self.horizon)
        pending = np.zeros((0, batch))
        for block in self.series(rng, batch):
            pending = np.concatenate([pending, block], axis=0)
            if self.length is not None:
                if pending.shape[0] < self.length + lead:
                    continue
                values = pending[:self.length + lead]
                if self.center:
                    values = values - values.mean(axis=0)
                trial = self._pairs(values, self.length)
                while True:                                                   # the same series every trial
                    yield trial
            steps = pending.shape[0] - lead
            if steps > 0:
                yield self._pairs(pending, steps)
                pending = pending[steps:]
