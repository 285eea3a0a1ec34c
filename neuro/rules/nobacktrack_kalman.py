"""NoBackTrack with its Kalman-like filter: Ollivier, Tallec & Charpiat 2015, "Training recurrent networks
online without backtracking", arXiv:1507.07680 (the abstract: the unbiased gradient estimate "can then
be fed to a lightweight Kalman-like filter"; the seed's summary: diagonal approximations of the inverse
covariances ``J_theta^{-1}`` and ``J_h``, the factors ``rho`` chosen in the Mahalanobis norms they define,
``G~ J_theta^{-1} G~^T``, regularised denominators, invariance to reparametrisation).

Source and reading. The paper's text could not be reached from where this was written; this is our
reading of it, with the extended Kalman filter on parameters written as Ollivier states it in "Online
natural gradient as a Kalman filter" (2018, arXiv:1703.00209): the EKF on a static parameter is the
online natural gradient ``theta <- theta - eta_t J_t^{-1} g_t`` with the information matrix ``J_t``
(Fisher) averaged over the observations, ``J_t = J_{t-1} + gamma_t (F_t - J_{t-1})``, ``gamma_t = 1/t``.
Every step below is a choice of ours where the paper's details were not available; the rank-one part
is :mod:`neuro.rules.nobacktrack` (notation, rank-one trick, row-norm probes), with other norms.

What is estimated (per sample; ``s = s_{t-1}``, ``y^ = y_t``, ``v w^T`` the rank-one estimate of the
influence matrix ``G_{t-1} = ds_{t-1}/dtheta``):

* ``g~_t = (dl_t/ds_{t-1} . v) w + partial l_t/partial theta``: NoBackTrack's estimate of ``dl_t/dtheta``,
  unbiased for fixed parameters (the factors ``rho`` below do not depend on the current signs).
* ``J_h`` [S], the diagonal of the Fisher information that step t's observation carries about the
  state: ``(partial y^/partial s)^T F_y (partial y^/partial s)``, with ``F_y`` the Fisher matrix of the loss's
  own model of ``y`` (``mse``: Gaussian, ``F_y = I``; ``ce``: categorical, ``diag(p) - p p^T``). Sampled:
  ``u ~ F_y`` (``mse``: ``N(0, I)``; ``ce``: ``p - onehot(k)``, ``k ~ p``), ``a_s = u^T partial y^/partial s`` and
  ``a_theta = u^T partial y^/partial theta`` by one vjp of the output, ``E[a_s^2] = diag``.
* ``J_theta`` [P], the diagonal of the Fisher information about ``theta`` of that observation through the
  whole past: ``dy^/dtheta = (partial y^/partial s) G_{t-1} + partial y^/partial theta``, sampled with the
  same ``u`` and the same rank-one ``G~``: ``g_u = (a_s . v) w + a_theta``, ``J_theta`` from ``g_u^2``. The
  rank-one noise adds its own variance (``E[g_u^2] >= diag``): the filter trusts noisy coordinates less,
  which is what makes it work at all (an unbiased Fisher estimate, from the product of two independent
  pairs, gave steps of the size of the noise and diverged on influence balancing). The price: that noise
  is shaped by the metric ``P_theta = 1/J_theta`` of the factors ``rho`` below, so the two can feed each
  other (``J_theta`` and ``w`` grew without bound in one run of five on influence balancing with
  ``damping = 1e-3`` and ``lr = 0.1``, after a large early step; in none of five with the default).
* Both are running means over the observed (unmasked) steps, ``J <- J + gamma_n (sample - J)`` with
  ``gamma_n = max(1/n, gamma_fisher)``, ``n`` the steps observed so far: the static-parameter EKF average
  at first, then a fading memory of ``1/gamma_fisher`` steps (parameters move). A masked step carries no
  observation and changes neither.

The update direction (returned as the rule's "gradient", to be descended by the optimizer, whose ``lr``
is the filter's step size ``eta``):

    d_t = P_theta (.) g~_t,     P_theta = 1 / (J_theta + damping)      (the diagonal J_theta^{-1})

``damping`` (default 1: a prior variance of 1 per parameter, for weights of order one) is the prior
information of the filter (the regulariser of the denominator): it bounds the step where nothing is
known yet (``J_theta = 0`` at the start; with 1e-3 the first steps on influence balancing were ~500 times
the gradient). **``d_t`` is a preconditioned direction, not an unbiased estimate of the gradient**
(``E[d_t] != dl_t/dtheta``); with ``precondition=False`` the rule returns ``g~_t`` itself (unbiased,
tests/neuro/rules/test_unbiased.py). Its scale differs from a gradient's: ``lr`` ~ 0.1 (influence balancing).

The rank-one trick in the filter's norms: on the parameter side ``||w||^2 = sum_k P_theta,k w_k^2`` (the
covariance ``J_theta^{-1}``, for ``w``, a derivative with respect to ``theta``), on the state side
``||v||^2 = sum_i H_i v_i^2``, ``H = J_h + floor * mean(J_h) + eps`` (``J_h``: the information about the
state; ``floor``, default 0.1, keeps a positive weight on units the output does not read directly, which
still reach it later: this floor is ours). So ``rho_0 = sqrt(||w|| / (||J v|| + eps)) + eps`` and ``rho_i =
sqrt(r_i / sqrt(H_i)) + eps`` with ``r_i^2`` the running estimate of ``sum_k P_theta,k w_ik^2`` (probes
``z = Rademacher (.) sqrt(P_theta)``). These are the variance-minimising factors of the rank-one trick for
the error of ``G~`` measured as ``tr(H (G~ - G) P_theta (G~ - G)^T)``, i.e. in its effect on the
preconditioned step. Invariance: under a diagonal reparametrisation ``theta' = D theta``, ``w' = D^{-1} w``,
``J_theta' = D^{-2} J_theta``, ``P' = D^2 P``: every ``rho`` and every random draw's effect is unchanged and
``d' = D d``, exactly given equivalent priors (``J_theta(0)' = D^{-2} J_theta(0)``) and up to ``damping``
(tests/neuro/rules/test_nobacktrack.py). Under ``s' = E s`` (``E`` diagonal), ``J_h' = E^{-2} J_h``: the same
up to ``floor`` and ``eps``.

Cost per step: one loss gradient through the step, one vjp of the output (the Fisher sample), one jvp
with two tangents and one vjp of the state; memory O(B (S + P)). The noise (signs, probes, Fisher
samples) comes from a ``torch.Generator`` seeded by ``init``'s seed, kept across ``reset``; the filter
(``J_h``, ``J_theta``) is reset with the network state. Like :mod:`neuro.rules.nobacktrack` it reads
``net.step`` only, so it runs on stacks of layers (:mod:`models.stack`) as on one layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vjp, vmap

from neuro.contract import Params, check_positive

from ._common import check_finite_grad, check_rate, new_generator
from ._onestep import FlatStep
from .base import StepOutput
from .nobacktrack import NoBackTrack, propagate

__all__ = ["NoBackTrackKalman", "NoBackTrackKalmanState"]


class NoBackTrackKalmanState(NamedTuple):
    net: NamedTuple
    v: Tensor  # [B, S]  state factor of the rank-one influence estimate
    w: Tensor  # [B, P]  parameter factor
    q: Tensor  # [B, S]  running estimate of the squared row norms in the P_theta metric
    J_h: Tensor  # [B, S]  diagonal Fisher information about the state
    J_theta: Tensor  # [B, P]  diagonal Fisher information about the parameters
    n: Tensor  # [B]  observed (unmasked) steps
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


def _output_vjp(fs: FlatStep, theta: Tensor, s: Tensor, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``(u^T partial y/partial s [B, S], u^T partial y/partial theta [B, P])`` per sample, ``u`` [B, n_out]."""
    def f(s1: Tensor, x1: Tensor, u1: Tensor) -> tuple[Tensor, Tensor]:
        _, pull = vjp(lambda th, s_: fs.step1(th, s_, x1)[1], theta, s1)
        gt, gs = pull(u1)
        return gs, gt
    return vmap(f)(s, x, u)


def fisher_sample(loss: str, y_hat: Tensor, gen: torch.Generator) -> Tensor:
    """``u`` [B, n_out] with ``E[u u^T] = F_y``, the Fisher matrix of the loss's model at ``y_hat``."""
    if loss == "mse":  # Gaussian of unit variance: 1/2 ||y - y^||^2 is its negative log-likelihood
        u = torch.randn(y_hat.shape, generator=gen, dtype=torch.float64)
    else:  # "ce": categorical with probabilities softmax(y^); d(-log p_k)/dy^ = p - onehot(k)
        p = torch.softmax(y_hat.detach().double().cpu(), dim=-1)
        k = torch.multinomial(p, 1, generator=gen)[:, 0]
        u = p - torch.nn.functional.one_hot(k, p.shape[-1]).double()
    return u.to(dtype=y_hat.dtype, device=y_hat.device)


@dataclasses.dataclass(frozen=True)
class NoBackTrackKalman(NoBackTrack):
    """NoBackTrack's Kalman-like variant (module docstring). ``eps``: regulariser of the factors ``rho``;
    ``gamma``: floor of the running-mean rate of the row-norm estimates; ``gamma_fisher``: floor of the
    running-mean rate of the Fisher diagonals; ``damping``: the filter's prior information; ``floor``: the
    relative floor of the state metric; ``precondition``: return ``P_theta g~`` (True) or ``g~`` (False)."""

    gamma_fisher: float = 0.01
    damping: float = 1.0
    floor: float = 0.1
    precondition: bool = True

    name = "nobacktrack-kalman"

    def __post_init__(self) -> None:
        super().__post_init__()  # eps, gamma (NoBackTrack's fields)
        check_rate("gamma_fisher", self.gamma_fisher)
        check_positive("damping", self.damping)
        check_positive("floor", self.floor, allow_zero=True)
        if not isinstance(self.precondition, bool):
            raise ValueError(f"precondition={self.precondition!r} is invalid: expected True or False")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NoBackTrackKalmanState:
        check_positive("batch", batch, integer=True)
        fs = self._flat(params)
        p = next(iter(params.values()))
        zeros = functools.partial(torch.zeros, dtype=p.dtype, device=p.device)
        S, P = fs.n_state, fs.n_params
        return NoBackTrackKalmanState(net=self.net.init_state(params, batch), v=zeros(batch, S), w=zeros(batch, P),
                                      q=zeros(batch, S), J_h=zeros(batch, S), J_theta=zeros(batch, P), n=zeros(batch),
                                      gen=new_generator(seed), t=0)

    def step(self, params: Params, state: NoBackTrackKalmanState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        fs = self._flat(params)
        theta = fs.flat_params({k: v.detach() for k, v in params.items()})
        s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
        B = s.shape[0]
        t = state.t + 1
        v, w = state.v, state.w

        l, dl_ds, dl_dtheta, s_new, y_hat = fs.loss_grads(theta, s, x, y, mask)
        g = (dl_ds * v).sum(1, keepdim=True) * w + dl_dtheta  # NoBackTrack's estimate   [B, P]

        # the filter: Fisher information of this step's observation, about the state and the parameters
        m = mask.to(dtype=s.dtype, device=s.device)
        u = fisher_sample(self.loss or "mse", y_hat, state.gen) * m[:, None]
        a_s, a_theta = _output_vjp(fs, theta, s, x, u)
        g_u = (a_s * v).sum(1, keepdim=True) * w + a_theta
        n = state.n + m
        rate = (m * torch.clamp(1.0 / n.clamp(min=1.0), min=self.gamma_fisher))[:, None]
        J_h = state.J_h + rate * (a_s ** 2 - state.J_h)
        J_theta = state.J_theta + rate * (g_u ** 2 - state.J_theta)
        P_theta = 1.0 / (J_theta + self.damping)

        d = fs.unflat_params((P_theta * g if self.precondition else g).mean(0))
        check_finite_grad(self.name, t, d)

        H = J_h + self.floor * J_h.mean(1, keepdim=True) + self.eps
        v, w, q = propagate(fs, theta, s, x, v, w, state.q, state.gen, max(1.0 / t, self.gamma), self.eps,
                            P_theta=P_theta, J_h=H)
        out = NoBackTrackKalmanState(net=fs.unflat_state(s_new), v=v, w=w, q=q, J_h=J_h, J_theta=J_theta, n=n,
                                     gen=state.gen, t=t)
        return StepOutput(out, y_hat.detach(), (l.sum() / B).detach(), {k: d[k].detach() for k in params})
