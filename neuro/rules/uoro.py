"""Unbiased Online Recurrent Optimization (UORO): Tallec & Ollivier 2018, "Unbiased online recurrent
optimization", ICLR (arXiv:1702.05043), Algorithm 1. A simplification of NoBackTrack (Ollivier, Tallec &
Charpiat 2015, :mod:`neuro.rules.nobacktrack`) that needs no sparsity of the model.

With the network state flattened to ``s`` [S] and the parameters to ``theta`` [P] (see
:class:`neuro.rules._onestep.FlatStep`), one step is ``s_t, y_t = f(theta, s_{t-1}, x_t)``. RTRL's influence
matrix ``M_t = ds_t/dtheta`` [S, P] is replaced, per sample, by a random rank-one matrix
``s~_t theta~_t^T`` with ``E[s~_t theta~_t^T] = M_t`` (for fixed parameters; ``s~_0 = 0, theta~_0 = 0``,
since the resting state does not depend on ``theta``). Each step, per sample, in this order:

    g_t       = (dl_t/ds_{t-1} . s~_{t-1}) theta~_{t-1} + partial l_t / partial theta     the estimate
    nu        = independent random signs (+-1)  [S]
    J s~      = (partial f / partial s) s~_{t-1}                                         one jvp
    delta     = nu^T (partial f / partial theta)  [P]                                   one vjp
    rho_0     = sqrt(||theta~_{t-1}|| / (||J s~|| + eps)) + eps
    rho_1     = sqrt(||delta|| / (||nu|| + eps)) + eps
    s~_t      = rho_0 J s~ + rho_1 nu
    theta~_t  = theta~_{t-1} / rho_0 + delta / rho_1

The loss is taken through the step from ``s_{t-1}`` (FlatStep's convention, which is also Algorithm 1's:
its output ``o_{t+1}`` is computed from ``s_t``), so the estimate uses the rank-one pair of the previous
step, *before* it is propagated. ``E[g_t] = dl_t/dtheta`` because, given the past, ``E[nu nu^T] = I`` and
every term linear in ``nu`` has zero mean (``rho_1`` is even in ``nu``, ``rho_0`` does not depend on it).

``rho_0`` and ``rho_1`` are the paper's variance-minimising factors: they balance the norms of the two
factors of each rank-one term (``||rho_0 J s~|| = ||theta~ / rho_0||``, ``||rho_1 nu|| = ||delta / rho_1||``),
which minimises the variance of the sum of the two terms (the paper's rank-one trick). ``eps`` (field,
default 1e-7) is Algorithm 1's regulariser: it keeps the
factors finite and positive when a norm is zero (at the first step ``theta~ = 0`` gives ``rho_0 = eps``,
which leaves ``theta~ / rho_0 = 0``). Any positive ``rho`` that does not depend on the current ``nu``
keeps the estimate unbiased; ``eps`` only changes the variance.

``samples`` (field, default 1) keeps that many independent rank-one pairs per sequence and averages
their estimates: still unbiased, the variance divided by ``samples``, the jvp/vjp cost multiplied by it.

A batch holds independent sequences, each with its own noise; the estimate is the batch mean of the
per-sample estimates (as :mod:`neuro.losses` averages the loss). Cost per step: one loss gradient through
the step, one jvp and one vjp of the step (vmapped over the batch); memory O(B (S + P)), no Jacobian
is ever formed. The noise comes from a ``torch.Generator`` seeded by ``init``'s seed, kept in the
state and across ``reset``. With parameters that change online the estimate is no longer exactly
unbiased (the rank-one pair mixes past parameters), as for RTRL.

On the rate RNN (:mod:`models.rate`) an analytic path is taken (``fast``, default True;
:mod:`neuro.rules._uoro_rate`): the parameter factor is kept as a matrix per sample, updated by rank-one
terms, and the steps are folded in every ``window`` steps (default 128) with matrix products instead of
one jvp and one vjp per step. Same random signs, same estimate summed over a sequence (to rounding); the
estimate of a window is handed over at its end, at ``flush`` and at ``finish`` (``window = 1``: every
step, as :mod:`neuro.rules.td` needs). With one pair (batch 1, ``samples=1``) on the CPU a window's
sequential part runs during the next window, each of its steps fused with a network step's recurrent
product: a window end then hands over the window before it, and ``flush`` / ``finish`` everything. ``fast=False`` (or another model, or a subclass that overrides
``step``) takes the generic path. ``pair(params, state)`` gives the current rank-one pair on both paths.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive

from . import _uoro_rate
from ._onestep import FlatStep
from .base import AbstractRule, Needs, StepOutput

__all__ = ["UORO", "UOROState"]


class UOROState(NamedTuple):
    net: NamedTuple
    s_tilde: Tensor  # [B * samples, S]  state factors of the rank-one influence estimates
    theta_tilde: Tensor  # [B * samples, P]  parameter factors
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


@functools.lru_cache(maxsize=64)
def _cached_flat_step(net: AbstractNetwork, loss: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> FlatStep:
    return FlatStep.build(net, {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes}, loss)


def flat_step(net: AbstractNetwork, loss: str, params: Params) -> FlatStep:
    """The (cached) :class:`FlatStep` of ``net`` for parameters shaped like ``params``."""
    return _cached_flat_step(net, loss, tuple((k, tuple(v.shape)) for k, v in sorted(params.items())))


def random_signs(gen: torch.Generator, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Independent +-1 entries [shape], drawn on the CPU from ``gen`` (so that a seed gives the same
    numbers on every device), in the dtype and on the device of ``like``."""
    r = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
    return (2 * r - 1).to(dtype=like.dtype, device=like.device)


def new_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer")
    return torch.Generator().manual_seed(seed)


def check_finite(name: str, t: int, keys: tuple[str, ...], g: Tensor, fs: FlatStep) -> None:
    """Raise ``FloatingPointError`` naming the step and the parameters if the estimate ``g`` [P] is not finite."""
    if not bool(torch.isfinite(g).all()):
        bad = [k for k, sl in fs.param_slices().items() if not bool(torch.isfinite(g[sl]).all())]
        raise FloatingPointError(f"{name}: the estimate at step {t} (since init or reset) is not finite for "
                                 f"parameter(s) {', '.join(map(repr, bad))}")


def norm(v: Tensor) -> Tensor:
    """Per-sample Euclidean norm of ``v`` [B, D] -> [B, 1]."""
    return torch.linalg.vector_norm(v, dim=1, keepdim=True)


@dataclasses.dataclass(frozen=True)
class UORO(AbstractRule):
    """UORO (module docstring). ``eps``: the regulariser of the factors ``rho_0`` and ``rho_1``;
    ``samples``: independent rank-one pairs per sequence, averaged; ``fast``: the analytic path on the rate
    RNN; ``window``: steps folded in at once by that path."""

    eps: float = 1e-7
    samples: int = 1
    fast: bool = True
    window: int = 128

    name = "uoro"
    needs = Needs.JVP
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("eps", self.eps)
        check_positive("samples", self.samples, integer=True)
        check_positive("window", self.window, integer=True)
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast={self.fast!r} is invalid: expected True or False")

    @property
    def _fast(self) -> bool:
        """Whether the analytic rate path runs (module docstring)."""
        return self.fast and type(self).step is UORO.step and _uoro_rate.applies(self.net, self.loss or "mse")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> UOROState | _uoro_rate.RateUOROState:
        check_positive("batch", batch, integer=True)
        if self._fast:
            return _uoro_rate.init_state(self.net, params, batch, self.samples, new_generator(seed))
        fs = flat_step(self.net, self.loss or "mse", params)
        p = next(iter(params.values()))
        zeros = functools.partial(torch.zeros, dtype=p.dtype, device=p.device)
        K = self.samples
        return UOROState(net=self.net.init_state(params, batch), s_tilde=zeros(batch * K, fs.n_state),
                         theta_tilde=zeros(batch * K, fs.n_params), gen=new_generator(seed), t=0)

    def step(self, params: Params, state: UOROState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if isinstance(state, _uoro_rate.RateUOROState):
            return _uoro_rate.step(self, params, state, x, y, mask)
        fs = flat_step(self.net, self.loss or "mse", params)
        theta = fs.flat_params({k: v.detach() for k, v in params.items()})
        s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
        B, S = s.shape
        s_tilde, theta_tilde = state.s_tilde, state.theta_tilde

        l, dl_ds, dl_dtheta, s_new, y_hat = fs.loss_grads(theta, s, x, y, mask)
        K = self.samples
        if K > 1:  # K rank-one pairs per sequence: the same s_{t-1}, x_t and loss gradient for each
            s, x, dl_ds = (v.repeat_interleave(K, 0) for v in (s, x, dl_ds))
        # g_t = (dl_t/ds_{t-1} . s~_{t-1}) theta~_{t-1} + partial l_t/partial theta, averaged over the batch
        # (and over the K pairs)
        g = ((dl_ds * s_tilde).sum(1, keepdim=True) * theta_tilde).mean(0) + dl_dtheta.mean(0)
        check_finite(self.name, state.t + 1, fs.keys, g, fs)

        nu = random_signs(state.gen, (B * K, S), s)
        _, Js = fs.jvp_state(theta, s, x, s_tilde, torch.zeros_like(theta))  # (partial f/partial s) s~
        _, delta = fs.vjp_state(theta, s, x, nu)  # nu^T partial f/partial theta   [B, P]
        eps = self.eps
        rho0 = torch.sqrt(norm(theta_tilde) / (norm(Js) + eps)) + eps
        rho1 = torch.sqrt(norm(delta) / (math.sqrt(S) + eps)) + eps  # ||nu|| = sqrt(S)
        s_tilde = rho0 * Js + rho1 * nu
        theta_tilde = theta_tilde / rho0 + delta / rho1

        grad = fs.unflat_params(g)
        out = UOROState(net=fs.unflat_state(s_new), s_tilde=s_tilde, theta_tilde=theta_tilde, gen=state.gen,
                        t=state.t + 1)
        return StepOutput(out, y_hat.detach(), (l.sum() / B).detach(), {k: grad[k].detach() for k in params})

    def flush(self, params: Params, state: UOROState) -> tuple[UOROState, Params | None]:
        """The estimate of the steps not yet handed over (the fast path's pending window)."""
        if isinstance(state, _uoro_rate.RateUOROState):
            return _uoro_rate.fold(self, params, state)
        return state, None

    def finish(self, params: Params, state: UOROState) -> tuple[UOROState, Params | None]:
        return self.flush(params, state)

    def pair(self, params: Params, state: UOROState) -> tuple[Tensor, Tensor]:
        """The current rank-one pair ``(s~ [B K, S], theta~ [B K, P])`` (flat, FlatStep's order), every step
        so far included; the state is left as it is."""
        if isinstance(state, _uoro_rate.RateUOROState):
            return _uoro_rate.flat_pair(self, {k: v.detach() for k, v in params.items()}, state)
        return state.s_tilde, state.theta_tilde
