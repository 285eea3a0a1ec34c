"""Kronecker-factored RTRL (Mujika, Meier & Steger 2018, "Approximating Real-Time Recurrent Learning
with Random Kronecker Factors", NeurIPS): an unbiased, Kronecker-factored estimate of the influence
matrix of the recurrent layer, for the leaky tanh rate RNN of ``models/rate.py`` only (one layer: a stack of
layers, :mod:`models.stack`, is refused, see ``KFRTRL``).

The paper's class of RNNs: the recurrent layer is ``h_t = f(W a_t)`` with one weight matrix acting on
``a_t = [x_t; h_{t-1}; 1]``. Here ``W = [W_in, W_rec, b]`` [n, m], ``m = n_in + n + 1``, and the leak
alpha of our RateRNN is part of ``f``::

    i_t = W a_t,   h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t)

Influence ``G_t[r, (j, k)] = dh_t[r] / dW[j, k]`` (RTRL; the paper's ``G_t = H_t G_{t-1} + F_t``)::

    G_t = J_t G_{t-1} + F_t
    J_t = dh_t/dh_{t-1} = (1 - alpha) I + D_t W_rec            (the paper's H_t)
    F_t = dh_t/dW (h_{t-1} held) = a_t^T (x) D_t,  i.e.  F_t[r, (j, k)] = a_t[k] D_t[r, j]
    D_t = alpha diag(tanh'(i_t))

The leak enters J_t only: ``(1 - alpha) h_{t-1}`` does not depend on W directly, so the immediate
influence is ``alpha diag(phi') (a_t^T (x) I)``. KF-RTRL keeps ``G'_t = u_t (x) A_t``
(``G'_t[r, (j, k)] = u_t[k] A_t[r, j]``), ``u_t`` [m], ``A_t`` [n, n]. Since
``J_t (u (x) A) = u (x) (J_t A)``, one step of RTRL gives a sum of two Kronecker products, which the
paper's Algorithm 1 turns back into one with two independent random signs ``c1, c2`` in {-1, +1}::

    u_t = p1 c1 u_{t-1} + p2 c2 a_t
    A_t = (c1 / p1) J_t A_{t-1} + (c2 / p2) D_t
    p1 = sqrt(||J_t A_{t-1}|| / ||u_{t-1}||),   p2 = sqrt(||D_t|| / ||a_t||)     (Frobenius norms)

``E[u_t (x) A_t] = u_{t-1} (x) J_t A_{t-1} + a_t (x) D_t`` (the cross terms carry ``E[c1 c2] = 0``),
so ``E[G'_t] = G_t`` by induction from ``G'_0 = G_0 = 0`` (``u_0 = 0``, ``A_0 = 0``) for frozen
parameters; ``p1, p2`` balance the norms of the two factors, which minimises the variance of the
cross terms. Where a term vanishes (``u_{t-1} = 0`` at the first step, or ``D_t = 0`` when every unit
saturates) its ``p`` is set to 1: the term is zero and any ``p`` leaves the estimate unchanged.

Gradient of ``l_t`` (the recurrent layer), with ``q_t = dl_t/dh_t = W_out^T dl_t/dy_t``:

* ``exact_immediate=True`` (default; the convention of :mod:`neuro.rules._onestep`, through the step
  from ``h_{t-1}``): ``dl_t/dW ~ q_t^T (J_t G'_{t-1} + F_t) = (q_t^T J_t A_{t-1})^T u_{t-1}^T
  + (D_t q_t) a_t^T``: the immediate term exactly, the carried part from ``G'_{t-1}``. Lower variance.
* ``exact_immediate=False`` (Algorithm 1 as written): ``dl_t/dW ~ q_t^T G'_t = (q_t^T A_t)^T u_t^T``.

Both are unbiased. The readout ``W_out, b_out`` gets its exact immediate gradient
(``dl_t/dy_t h_t^T`` and ``dl_t/dy_t``). Batch: each sample has its own ``u, A`` and its own signs;
the per-step loss is the batch mean, so the estimate is the mean of the per-sample estimates.
Cost per step O(n^3) (``J_t A``), memory O(n^2 + n_in) per sample. ``needs = JVP``: ``J_t A_{t-1}`` is
n Jacobian-vector products of one step, written here in closed form for the rate RNN (tanh, leak alpha).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from models.stack import Stack
from neuro.contract import AbstractNetwork, Params

from ._common import new_generator
from .base import AbstractRule, Needs, StepOutput


class KFRTRLState(NamedTuple):
    net: NamedTuple  # the RateRNN state (h [B, n])
    u: Tensor  # [B, m] the input-side factor, m = n_in + n + 1
    A: Tensor  # [B, n, n] the unit-side factor
    gen: torch.Generator  # the signs c1, c2 (kept on reset)
    t: int  # steps since init or reset (for error messages)


def _balance(num: Tensor, den: Tensor) -> Tensor:
    """``sqrt(num / den)`` where both are positive, else 1 (the term it balances is zero)."""
    ok = (num > 0) & (den > 0)
    return torch.where(ok, torch.sqrt(num / torch.where(ok, den, torch.ones_like(den))), torch.ones_like(num))


@dataclasses.dataclass(frozen=True)
class KFRTRL(AbstractRule):
    """KF-RTRL on the rate RNN; ``exact_immediate`` picks how the gradient is read (module docstring)."""

    exact_immediate: bool = True

    name = "kf-rtrl"
    needs = Needs.JVP
    supports = ("rate",)
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        if isinstance(self.net, Stack):
            raise self._refuse("KF-RTRL's Kronecker factors are those of one weight matrix acting on [x_t; h_{t-1}; 1] "
                               "(one rate layer); in a stack a lower layer's weights reach the layers above within "
                               "the step, an influence no single Kronecker product u (x) A holds; on a stack run "
                               "bptt, tbptt, rtrl, snap1, snap2, uoro, nobacktrack, nobacktrack-kalman, td-lambda "
                               "(over one of those), rflo (rate layers) or three-factor")
        if isinstance(self.net, AbstractNetwork) and self.net.name not in self.supports:
            raise ValueError(
                f"rule 'kf-rtrl' does not support model {self.net.name!r}: KF-RTRL assumes the rate RNN's "
                f"structure h_t = f(W [x_t; h_{{t-1}}; 1]) (one weight matrix on the input, the previous "
                f"output and a bias, followed by an element-wise f); the supported model is 'rate'")
        super().__post_init__()
        if not isinstance(self.exact_immediate, bool):
            raise ValueError(f"exact_immediate={self.exact_immediate!r} is invalid: expected True or False")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> KFRTRLState:
        w = params["W_rec"]
        n, m = self.net.n_hidden, self.net.n_in + self.net.n_hidden + 1
        return KFRTRLState(net=self.net.init_state(params, batch),
                           u=w.new_zeros(batch, m), A=w.new_zeros(batch, n, n),
                           gen=new_generator(seed), t=0)

    def _signs(self, state: KFRTRLState, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``c1, c2`` [B], independent uniform signs in {-1, +1} for each sample."""
        c = torch.randint(0, 2, (batch, 2), generator=state.gen).to(dtype=like.dtype, device=like.device) * 2 - 1
        return c[:, 0], c[:, 1]

    @torch.no_grad()
    def step(self, params: Params, state: KFRTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, alpha = self.net, self.net.alpha
        params = {k: v.detach() for k, v in params.items()}
        W_rec, W_out = net.weight(params, "W_rec"), params["W_out"]  # W_rec as the current reads it (masked)
        u, A = state.u, state.A  # u_{t-1}, A_{t-1}
        batch = x.shape[0]

        # forward: i_t = W a_t, h_t, y_t
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        a = torch.cat([x, state.net.h, x.new_ones(batch, 1)], dim=1)  # a_t [B, m]

        # l_t and dl_t/dy_t per sample (the batch mean and the mask are in l_t)
        with torch.enable_grad():
            y_leaf = y_hat.detach().requires_grad_(True)
            l = self.loss_fn(y_leaf, y, mask)
            (e,) = torch.autograd.grad(l, y_leaf)  # [B, n_out]
        q = e @ W_out  # dl_t/dh_t [B, n]

        # D_t (its diagonal) and J_t A_{t-1} = (1 - alpha) A + D_t W_rec A
        D = alpha * (1.0 - torch.tanh(i) ** 2)  # [B, n]
        JA = (1.0 - alpha) * A + D[:, :, None] * (W_rec @ A)  # [B, n, n]

        # Algorithm 1: the random Kronecker factors
        c1, c2 = self._signs(state, batch, x)
        p1 = _balance(torch.linalg.matrix_norm(JA), torch.linalg.vector_norm(u, dim=1))
        p2 = _balance(torch.linalg.vector_norm(D, dim=1), torch.linalg.vector_norm(a, dim=1))
        u_new = (p1 * c1)[:, None] * u + (p2 * c2)[:, None] * a
        A_new = (c1 / p1)[:, None, None] * JA + torch.diag_embed((c2 / p2)[:, None] * D)

        # the estimate dl_t/dW [n, m], summed over the batch (q carries the 1/B)
        if self.exact_immediate:
            gW = torch.einsum("br,brj,bk->jk", q, JA, u) + (q * D).T @ a
        else:
            gW = torch.einsum("br,brj,bk->jk", q, A_new, u_new)
        n_in, n = net.n_in, net.n_hidden
        g = {"W_in": gW[:, :n_in], "W_rec": gW[:, n_in:n_in + n], "b": gW[:, -1],
             "W_out": e.T @ h, "b_out": e.sum(0)}
        grad = {k: g[k].contiguous() for k in params}
        t = state.t + 1
        if not bool(torch.isfinite(gW.sum() + g["W_out"].sum())):  # one check; name the parameter when it fails
            bad = [k for k, v in grad.items() if not bool(torch.isfinite(v).all())]
            raise FloatingPointError(f"kf-rtrl: the estimate of {', '.join(map(repr, bad))} is not finite at step {t} "
                                     f"(steps counted from init or reset); check the inputs and parameters for inf or nan")
        state = KFRTRLState(net=net_state, u=u_new, A=A_new, gen=state.gen, t=t)
        return StepOutput(state, y_hat.detach(), l.detach(), grad)
