"""NoBackTrack: Ollivier, Tallec & Charpiat 2015, "Training recurrent networks online without
backtracking", arXiv:1507.07680. A random rank-one estimate of the influence matrix whose expectation is
the true one at every step, built with the paper's *rank-one trick*. (The Kalman-like variant is
:mod:`neuro.rules.nobacktrack_kalman`; UORO, its 2018 simplification, is :mod:`neuro.rules.uoro`.)

Source. The paper's full text could not be reached from where this was written; the equations below are
the paper's as summarised in the project's seed (``G~ = v w^T + sum_i e_i w_i^T`` reduced to rank one by
random signs, with variance-minimising factors ``rho``), in the UORO paper's account of NoBackTrack
(Tallec & Ollivier 2018: the same trick, NoBackTrack decomposing ``partial f/partial theta`` unit by
unit, which is cheap only for sparse models) and Ollivier's related papers. Where the paper's
own details were not available the choice is ours and says so.

With the network state flattened to ``s`` [S] and the parameters to ``theta`` [P] (see
:class:`neuro.rules._onestep.FlatStep`), one step is ``s_t, y_t = f(theta, s_{t-1}, x_t)`` and the
influence matrix ``G_t = ds_t/dtheta`` [S, P] (the paper's ``G(t) = dh(t)/dtheta``) follows
``G_t = (partial f/partial s) G_{t-1} + partial f/partial theta``. Write the second term unit by unit,
``partial f/partial theta = sum_i e_i w_i^T`` (``e_i`` the i-th basis vector of the state, ``w_i = partial f_i
/partial theta`` the i-th row), so that, with ``G~_{t-1} = v w^T``, the new matrix is a sum of S + 1
rank-one terms:  ``(J v) w^T + sum_i e_i w_i^T``,  ``J = partial f/partial s``.

*Rank-one trick* (the paper's proposition): for ``A = sum_k a_k b_k^T``, independent random signs
``eps_k`` and any ``rho_k > 0`` that do not depend on them, ``A~ = (sum_k rho_k eps_k a_k)(sum_k eps_k b_k
/ rho_k)^T`` has ``E[A~] = A``; ``E||A~ - A||^2`` is ``sum_{k != l} rho_k^2 / rho_l^2 ||a_k||^2 ||b_l||^2``
plus a term free of ``rho``, least (Cauchy-Schwarz) for ``rho_k^2 = ||b_k|| / ||a_k||``. The global sign drops
out (``eps_0 = 1``). Each step, per sample:

    g_t      = (dl_t/ds_{t-1} . v_{t-1}) w_{t-1} + partial l_t / partial theta          the estimate
    rho_0    = sqrt(||w_{t-1}|| / (||J v_{t-1}|| + eps)) + eps                           (term (J v) w^T)
    rho_i    = sqrt(r_i / ||e_i||) + eps = sqrt(r_i) + eps,   r_i ~ ||w_i||               (terms e_i w_i^T)
    nu       = independent random signs [S]
    v_t      = rho_0 J v_{t-1} + rho (.) nu
    w_t      = w_{t-1} / rho_0 + sum_i nu_i w_i / rho_i     (one vjp with the cotangent nu / rho)

``v_0 = 0, w_0 = 0`` (the resting state does not depend on theta). The loss is taken through the step
from ``s_{t-1}`` (FlatStep's convention), so ``g_t`` uses the pair of the previous step. With the
parameters frozen ``E[v_t w_t^T] = G_t`` and ``E[g_t] = dl_t/dtheta`` (tests/neuro/rules/test_unbiased.py).

*How it differs from UORO.* UORO treats ``partial f/partial theta`` as *one* term, ``nu (nu^T partial f
/partial theta)``, with one factor ``rho_1 = sqrt(||nu^T partial f/partial theta|| / ||nu||)``; NoBackTrack
balances each unit's term on its own, ``rho_i^2 = ||w_i||``, so that a unit whose state barely depends on
the parameters (a refractory counter, a saturated unit) adds little noise to ``v``. The paper gets the row
norms ``||w_i||`` for free from the sparsity of a standard RNN (unit i's row holds only its incoming
weights). Here every model of the cell contract is allowed, so the row norms are *estimated* (our choice):
``r_i^2`` is a running mean of ``(J_theta z)_i^2`` for Rademacher probes ``z`` in parameter space
(``E[(J_theta z)_i^2] = ||w_i||^2``), one more tangent in the same (vmapped) jvp call:

    q_t = q_{t-1} + gamma_t ((J_theta z_t)^2 - q_{t-1}),   gamma_t = max(1/t, gamma),   r = sqrt(q_t)

a plain mean over the first ``1/gamma`` steps, then an exponential one. ``q`` depends on ``z`` and on the
past but not on ``nu``, so the estimate stays unbiased whatever its error; only the variance suffers.
``eps`` (default 1e-7) regularises the denominators as in UORO: a unit with ``w_i = 0`` gets ``rho_i = eps``.

It reads ``net.step`` only (its jvp, vjp and the loss gradient), so it runs on every network of the cell
contract, a stack of layers (:mod:`models.stack`) included; the row norms are estimated, not read from one
layer's weight structure.

Cost per step: one loss gradient through the step, one jvp with two tangents (``J v`` and ``J_theta z``)
and one vjp; memory O(B (S + P)); no Jacobian is formed. A batch holds independent sequences with their
own noise; the estimate is the batch mean. The noise comes from a ``torch.Generator`` seeded by
``init``'s seed, kept in the state and across ``reset``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_positive

from ._common import check_finite_grad, check_rate, new_generator, random_signs, row_norms
from ._onestep import FlatStep, flat_step
from .base import AbstractRule, Needs, StepOutput

__all__ = ["NoBackTrack", "NoBackTrackState", "propagate"]


class NoBackTrackState(NamedTuple):
    net: NamedTuple
    v: Tensor  # [B, S]  state factor of the rank-one influence estimate
    w: Tensor  # [B, P]  parameter factor
    q: Tensor  # [B, S]  running estimate of the squared row norms ||partial f_i/partial theta||^2
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


def propagate(fs: FlatStep, theta: Tensor, s: Tensor, x: Tensor, v: Tensor, w: Tensor, q: Tensor,
              gen: torch.Generator, gamma_t: float, eps: float, P_theta: Tensor | None = None,
              J_h: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One rank-one-trick step: ``(v_t, w_t, q_t)`` from ``v_{t-1}`` [B, S], ``w_{t-1}`` [B, P], ``q_{t-1}``.

    The norms are Euclidean, or, when given, ``||w||^2 = sum_k P_theta,k w_k^2`` on the parameter side and
    ``||v||^2 = sum_i J_h,i v_i^2`` on the state side (``P_theta`` [B, P] > 0, ``J_h`` [B, S] > 0: the
    diagonal metrics of the Kalman-like variant). The probes are then scaled by ``sqrt(P_theta)`` so that
    ``q`` estimates the squared row norms in that metric.
    """
    B, S = s.shape
    P = theta.shape[0]
    z = random_signs(gen, (B, P), s)  # probes for the row norms
    if P_theta is not None:
        z = z * P_theta.sqrt()
    zeros_s, zeros_p = torch.zeros_like(v), torch.zeros_like(w)
    # one jvp call, two tangents per sample: (v, 0) -> J v  and  (0, z) -> J_theta z
    _, out = fs.jvp_state(theta, torch.cat([s, s]), torch.cat([x, x]), torch.cat([v, zeros_s]),
                          torch.cat([zeros_p, z]))
    Jv, Jz = out[:B], out[B:]
    q = q + gamma_t * (Jz ** 2 - q)

    w_norm = row_norms(w) if P_theta is None else row_norms(w * P_theta.sqrt())
    Jv_norm = row_norms(Jv) if J_h is None else row_norms(Jv * J_h.sqrt())
    e_norm = 1.0 if J_h is None else J_h.sqrt()  # ||e_i||
    rho0 = torch.sqrt(w_norm / (Jv_norm + eps)) + eps  # [B, 1]
    rho = torch.sqrt(q.sqrt() / (e_norm + eps)) + eps  # [B, S]

    nu = random_signs(gen, (B, S), s)
    _, delta = fs.vjp_state(theta, s, x, nu / rho)  # sum_i nu_i w_i / rho_i   [B, P]
    return rho0 * Jv + rho * nu, w / rho0 + delta, q


@dataclasses.dataclass(frozen=True)
class NoBackTrack(AbstractRule):
    """NoBackTrack's unbiased rank-one estimate (module docstring). ``eps``: regulariser of the factors
    ``rho``; ``gamma``: the floor of the running-mean rate of the row-norm estimates."""

    eps: float = 1e-7
    gamma: float = 0.1

    name = "nobacktrack"
    needs = Needs.JVP
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("eps", self.eps)
        check_rate("gamma", self.gamma)

    def _flat(self, params: Params) -> FlatStep:
        return flat_step(self.net, self.loss or "mse", params)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NoBackTrackState:
        check_positive("batch", batch, integer=True)
        fs = self._flat(params)
        p = next(iter(params.values()))
        zeros = functools.partial(torch.zeros, dtype=p.dtype, device=p.device)
        return NoBackTrackState(net=self.net.init_state(params, batch), v=zeros(batch, fs.n_state),
                                w=zeros(batch, fs.n_params), q=zeros(batch, fs.n_state), gen=new_generator(seed), t=0)

    def step(self, params: Params, state: NoBackTrackState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        fs = self._flat(params)
        theta = fs.flat_params({k: v.detach() for k, v in params.items()})
        s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
        B = s.shape[0]
        t = state.t + 1

        l, dl_ds, dl_dtheta, s_new, y_hat = fs.loss_grads(theta, s, x, y, mask)
        # g_t = (dl_t/ds_{t-1} . v_{t-1}) w_{t-1} + partial l_t/partial theta, averaged over the batch
        g = fs.unflat_params(((dl_ds * state.v).sum(1, keepdim=True) * state.w + dl_dtheta).mean(0))
        check_finite_grad(self.name, t, g)

        v, w, q = propagate(fs, theta, s, x, state.v, state.w, state.q, state.gen, max(1.0 / t, self.gamma), self.eps)
        out = NoBackTrackState(net=fs.unflat_state(s_new), v=v, w=w, q=q, gen=state.gen, t=t)
        return StepOutput(out, y_hat.detach(), (l.sum() / B).detach(), {k: g[k].detach() for k in params})
