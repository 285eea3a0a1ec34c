"""Unbiased Online Recurrent Optimization (UORO): Tallec & Ollivier 2017, "Unbiased online recurrent
optimization", arXiv:1702.05043 (ICLR 2018), Algorithm 1. A simplification of NoBackTrack (Ollivier, Tallec
& Charpiat 2015, :mod:`neuro.rules.nobacktrack`) that needs no sparsity of the model.

The network state is flattened to ``s`` [S] and the parameters to ``theta`` [P] (see
:class:`neuro.rules._onestep.FlatStep`); one step is ``s_t = F_state(x_t, s_{t-1}, theta)`` with the output
``o_t = F_out(x_t, s_{t-1}, theta)`` and the loss ``l_t = l(o_t, o*_t)``. RTRL's influence matrix
``ds_t/dtheta`` [S, P] is replaced, per sample, by a random rank-one matrix ``s~_t theta~_t`` (a column and a
row vector) with ``E[s~_t theta~_t] = ds_t/dtheta`` for fixed parameters (``s~_0 = 0, theta~_0 = 0``: the
resting state does not depend on ``theta``). One step of Algorithm 1, per sample, in this order:

    g~_t      = (dl_t/ds_{t-1} . s~_{t-1}) theta~_{t-1} + partial l_t / partial theta     the estimate
    nu        = a vector of independent random signs (+-1)  [S]
    rho_0     = sqrt(||theta~_{t-1}|| / (||(partial F_state/partial s) s~_{t-1}|| + eps)) + eps
    rho_1     = sqrt(||nu^T partial F_state/partial theta|| / (||nu|| + eps)) + eps
    s~_t      = rho_0 (partial F_state/partial s) s~_{t-1} + rho_1 nu                   one jvp
    theta~_t  = theta~_{t-1} / rho_0 + (nu^T partial F_state/partial theta) / rho_1       one vjp

The loss of step t is taken through the step from ``s_{t-1}`` (the paper's ``o_{t+1} = F_out(x_{t+1}, s_t,
theta)``), so the estimate uses the rank-one pair of the previous step, *before* it is propagated.
``E[g~_t] = dl_t/dtheta`` because, given the past, ``E[nu nu^T] = I`` and every term linear in ``nu`` has zero
mean (``rho_1`` is even in ``nu``, ``rho_0`` does not depend on it).

``rho_0`` and ``rho_1`` are the paper's variance-minimising factors: they balance the norms of the two
factors of each rank-one term (``||rho_0 J s~|| = ||theta~ / rho_0||``, ``||rho_1 nu|| = ||delta / rho_1||``
with ``J s~ = (partial F_state/partial s) s~`` and ``delta = nu^T partial F_state/partial theta``), which
minimises the variance of their sum (the rank-one trick). ``eps`` (field, default 1e-7) keeps the factors
finite and positive when a norm is zero (at the first step ``theta~ = 0`` gives ``rho_0 = eps``, which
leaves ``theta~ / rho_0 = 0``). Any positive ``rho`` that does not depend on the current ``nu`` keeps the
estimate unbiased; ``eps`` only changes the variance.

``samples`` (field, default 1) keeps that many independent rank-one pairs per sequence and averages their
estimates: still unbiased, the variance divided by ``samples``, the jvp/vjp cost multiplied by it.

It needs only jvp/vjp of ``net.step``, so it runs on every network of the cell contract, a stack of layers
(:mod:`models.stack`) included (the state is every layer's).

A batch holds independent sequences, each with its own noise; the estimate is the batch mean of the
per-sample estimates (as :mod:`neuro.losses` averages the loss). Cost per step: one loss gradient through
the step, one jvp and one vjp of the step (vmapped over the batch); memory O(B (S + P)), no Jacobian is
ever formed. The noise comes from a ``torch.Generator`` seeded by ``init``'s seed, kept in the state and
across ``reset``. With parameters that change online the estimate is no longer exactly unbiased (the
rank-one pair mixes past parameters), as for RTRL.

*Fast path.* On the rate RNN (:mod:`models.rate`) :mod:`neuro.rules._fast.uoro` computes the same estimate
(the same random signs) in closed form, holding ``window`` steps (field, default 128) back and folding them
in with matrix products; the estimate of a window is handed over at its end, at ``flush`` and at ``finish``
(``window = 1``: every step). ``fast=False`` runs the definition above everywhere. ``pair(params, state)``
gives the current rank-one pair on both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_positive

from ._common import check_finite_grad, new_generator, random_signs, row_norms
from ._onestep import flat_step
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["UORO", "UOROState"]


class UOROState(NamedTuple):
    net: NamedTuple  # the network state s_t
    s_tilde: Tensor  # [B * samples, S]  s~_t, the state factors of the rank-one influence estimates
    theta_tilde: Tensor  # [B * samples, P]  theta~_t, the parameter factors
    gen: torch.Generator  # the signs nu (seeded by init, kept across reset)
    t: int  # steps since init or reset


@accelerated
@dataclasses.dataclass(frozen=True)
class UORO(AbstractRule):
    """UORO (module docstring). ``eps``: the regulariser of the factors ``rho_0`` and ``rho_1``; ``samples``:
    independent rank-one pairs per sequence, averaged; ``fast``: run the fast path where one applies;
    ``window``: the steps the rate fast path folds in at once."""

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

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> UOROState:
        check_positive("batch", batch, integer=True)
        fs = flat_step(self.net, self.loss or "mse", params)
        p = next(iter(params.values()))
        BK = batch * self.samples
        return UOROState(net=self.net.init_state(params, batch),
                         s_tilde=torch.zeros(BK, fs.n_state, dtype=p.dtype, device=p.device),
                         theta_tilde=torch.zeros(BK, fs.n_params, dtype=p.dtype, device=p.device),
                         gen=new_generator(seed), t=0)

    def step(self, params: Params, state: UOROState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        fs = flat_step(self.net, self.loss or "mse", params)
        theta = fs.flat_params({k: v.detach() for k, v in params.items()})
        s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
        B, S = s.shape
        K = self.samples
        s_tilde, theta_tilde = state.s_tilde, state.theta_tilde  # s~_{t-1} [B K, S], theta~_{t-1} [B K, P]

        # l_t, dl_t/ds_{t-1} and partial l_t/partial theta through the step from s_{t-1}; s_t; o_t
        l, dl_ds, dl_dtheta, s_new, o = fs.loss_grads(theta, s, x, y, mask)
        if K > 1:  # K rank-one pairs per sequence: the same s_{t-1}, x_t and loss gradient for each
            s, x, dl_ds = (v.repeat_interleave(K, 0) for v in (s, x, dl_ds))
        # g~_t = (dl_t/ds_{t-1} . s~_{t-1}) theta~_{t-1} + partial l_t/partial theta, averaged over the batch
        # (and over the K pairs)
        g_tilde = fs.unflat_params(((dl_ds * s_tilde).sum(1, keepdim=True) * theta_tilde).mean(0) + dl_dtheta.mean(0))
        check_finite_grad(self.name, state.t + 1, g_tilde)

        nu = random_signs(state.gen, (B * K, S), s)
        _, J_s_tilde = fs.jvp_state(theta, s, x, s_tilde, torch.zeros_like(theta))  # (partial F_state/partial s) s~
        _, delta = fs.vjp_state(theta, s, x, nu)  # nu^T partial F_state/partial theta  [B K, P]
        eps = self.eps
        rho_0 = torch.sqrt(row_norms(theta_tilde) / (row_norms(J_s_tilde) + eps)) + eps
        rho_1 = torch.sqrt(row_norms(delta) / (math.sqrt(S) + eps)) + eps  # ||nu|| = sqrt(S)
        s_tilde = rho_0 * J_s_tilde + rho_1 * nu
        theta_tilde = theta_tilde / rho_0 + delta / rho_1

        out = UOROState(net=fs.unflat_state(s_new), s_tilde=s_tilde, theta_tilde=theta_tilde, gen=state.gen,
                        t=state.t + 1)
        return StepOutput(out, o.detach(), (l.sum() / B).detach(), {k: g_tilde[k].detach() for k in params})

    def pair(self, params: Params, state: UOROState) -> tuple[Tensor, Tensor]:
        """The current rank-one pair ``(s~ [B K, S], theta~ [B K, P])`` (flat, FlatStep's order), every step so
        far included; the state is left as it is."""
        fast = self.fast_path
        if fast is not None:
            return fast.pair(params, state)
        return state.s_tilde, state.theta_tilde
