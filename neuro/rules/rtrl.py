"""Real-time recurrent learning (Williams & Zipser 1989, "A learning algorithm for continually running
fully recurrent neural networks", Neural Computation 1(2)): the exact gradient of each step's loss,
carried forward in time, exact for fixed parameters.

With the network state flattened to ``s`` [S] and the parameters to ``theta`` [P] (see
:class:`neuro.rules._onestep.FlatStep`), one step is ``s_t, y_t = f(theta, s_{t-1}, x_t)``. The
influence matrix (Williams & Zipser's ``p^k_ij``) is

    M_t = ds_t/dtheta                          [B, S, P],   M_0 = 0
    M_t = J_t M_{t-1} + I_t                    J_t = partial f / partial s_{t-1},  I_t = partial f / partial theta

and the estimate of step ``t`` (the loss taken through the step from ``s_{t-1}``, as FlatStep does)

    dl_t/dtheta = (partial l_t / partial s_{t-1}) M_{t-1} + partial l_t / partial theta

averaged over the batch as :mod:`neuro.losses` does. Summed over a sequence with the parameters frozen
it is BPTT's gradient; it stays exact across chunk boundaries because ``M`` is carried with the state.
Memory O(B S P), compute O(B S^2 P) per step (O(n^4) for a dense network of n units).

Fast path (``fast=True``): for the leaky tanh rate RNN (the network registered as ``"rate"``,
``h_t = (1 - alpha) h_{t-1} + alpha tanh(W_in x_t + W_rec h_{t-1} + b)``) the one-step Jacobians are
closed form, with ``D_t = alpha (1 - tanh^2(i_t))``::

    J_t = diag(D_t) W_rec + (1 - alpha) I
    I_t[k, W_rec[i, j]] = delta_ki D_t,k h_{t-1,j}      I_t[k, W_in[i, j]] = delta_ki D_t,k x_t,j
    I_t[k, b_i] = delta_ki D_t,k                         (the readout's W_out, b_out: 0)

so ``J_t`` is built from ``W_rec`` without autodiff, ``M_t = J_t M_{t-1}`` is one batched matmul, and the
immediate terms are added, as outer products, to the diagonal of their column blocks: ``I_t`` (``J_theta``,
[B, S, P]) is never materialised. The estimate is then ``(dl_t/dh_t) M_t`` plus the readout's own
gradient (the same quantity in another order). The network is recognised by its registry name, its
parameter keys and its state (``neuro.rules`` imports no concrete model).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive

from ._onestep import FlatStep
from .base import AbstractRule, Needs, StepOutput

__all__ = ["RTRL", "RTRLState"]

_RATE_KEYS = ("W_in", "W_out", "W_rec", "b", "b_out")


class RTRLState(NamedTuple):
    net: NamedTuple
    M: Tensor  # [B, S, P] influence matrix ds_t/dtheta (state and parameters flattened as FlatStep does)


@functools.lru_cache(maxsize=64)
def _flat_step(net: AbstractNetwork, loss: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> FlatStep:
    return FlatStep.build(net, {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes}, loss)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class RTRL(AbstractRule):
    """Exact RTRL. ``max_bytes``: refuse (in ``init``) a network whose influence matrix and one-step
    Jacobians need more memory; ``fast``: use the closed-form Jacobians of the rate RNN."""

    max_bytes: int = 2 * 2 ** 30
    fast: bool = True

    name = "rtrl"
    needs = Needs.JACOBIAN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("max_bytes", self.max_bytes, integer=True)
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast={self.fast!r} is invalid: expected True or False")

    # -- helpers -------------------------------------------------------------------------------------
    def _flat(self, params: Params) -> FlatStep:
        return _flat_step(self.net, self.loss or "mse", tuple((k, tuple(v.shape)) for k, v in sorted(params.items())))

    @property
    def uses_fast_path(self) -> bool:
        """True when the closed-form rate-RNN step is used (``fast`` and a network registered as ``"rate"``)."""
        net = self.net
        return (self.fast and net.name == "rate" and tuple(sorted(net.param_shapes())) == _RATE_KEYS
                and getattr(net.State, "_fields", None) == ("h",))

    def memory_bytes(self, params: Params, batch: int) -> int:
        """Bytes of the influence matrix ``M`` [B, S, P], one more [B, S, P] (``J_theta``, or ``J_s M``)
        and ``J_s`` [B, S, S] (generic path only)."""
        fs = self._flat(params)
        S, P = fs.n_state, fs.n_params
        item = next(iter(params.values())).element_size()
        return item * batch * S * (2 * P + (0 if self.uses_fast_path else S))

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RTRLState:
        check_positive("batch", batch, integer=True)
        fs = self._flat(params)
        need = self.memory_bytes(params, batch)
        if need > self.max_bytes:
            raise ValueError(
                f"rtrl needs {_bytes(need)} for the influence matrix of n_state={fs.n_state}, n_params={fs.n_params} "
                f"(batch {batch}, {next(iter(params.values())).dtype}), more than max_bytes={self.max_bytes} "
                f"({_bytes(self.max_bytes)}): use snap1, uoro, or a smaller network (or raise max_bytes)")
        p = next(iter(params.values()))
        M = torch.zeros(batch, fs.n_state, fs.n_params, dtype=p.dtype, device=p.device)
        return RTRLState(net=self.net.init_state(params, batch), M=M)

    def step(self, params: Params, state: RTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        fs = self._flat(params)
        if self.uses_fast_path:
            net_state, y_hat, loss, M, g = self._rate_step(fs, {k: v.detach() for k, v in params.items()},
                                                           state, x, y, mask)
        else:
            theta = fs.flat_params(params).detach()
            s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
            B = s.shape[0]
            l, dl_ds, dl_dtheta, s_new, y_hat = fs.loss_grads(theta, s, x, y, mask)
            # dl_t/dtheta = (dl_t/ds_{t-1}) M_{t-1} + partial l_t/partial theta   (mean over the batch)
            g = (torch.einsum("bs,bsp->p", dl_ds, state.M) + dl_dtheta.sum(0)) / B
            _, J, I = fs.jacobians(theta, s, x)
            M = torch.baddbmm(I, J, state.M)  # M_t = J_t M_{t-1} + I_t
            net_state, loss = fs.unflat_state(s_new), l.sum() / B
        grad = fs.unflat_params(g)
        return StepOutput(RTRLState(net=net_state, M=M), y_hat.detach(), loss.detach(),
                          {k: grad[k].detach() for k in params})

    def _rate_step(self, fs: FlatStep, params: Params, state: RTRLState, x: Tensor, y: Tensor,
                   mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor, Tensor, Tensor]:
        """The closed-form step of the rate RNN (module docstring): (state, y_t, l_t, M_t, estimate [P])."""
        net = self.net
        alpha = float(net.alpha)
        h0 = state.net.h  # h_{t-1} [B, n]
        n = h0.shape[1]
        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        D = alpha * (1.0 - torch.tanh(i) ** 2)  # [B, n]

        J = D[:, :, None] * params["W_rec"]  # J_t = diag(D_t) W_rec + (1 - alpha) I   [B, n, n]
        if alpha != 1.0:
            J.diagonal(dim1=1, dim2=2).add_(1.0 - alpha)
        M = torch.bmm(J, state.M)  # J_t M_{t-1}   [B, n, P]
        sl = fs.param_slices()
        # I_t: row k of each block W[i, j] is nonzero only where i = k (the block's diagonal in (k, i))
        M[:, :, sl["W_rec"]].unflatten(2, (n, n)).diagonal(dim1=1, dim2=2).add_(h0[:, :, None] * D[:, None, :])
        M[:, :, sl["W_in"]].unflatten(2, (n, net.n_in)).diagonal(dim1=1, dim2=2).add_(x[:, :, None] * D[:, None, :])
        M[:, :, sl["b"]].diagonal(dim1=1, dim2=2).add_(D)

        fn = self.loss_fn
        e = torch.func.grad(lambda yh: fn(yh, y, mask))(y_hat)  # dl_t/dy_t [B, n_out] (masked, / B)
        g = torch.einsum("bk,bkp->p", e @ params["W_out"], M)  # (dl_t/dh_t) M_t
        g[sl["W_out"]] += (e.T @ h).reshape(-1)
        g[sl["b_out"]] += e.sum(0)
        return net_state, y_hat, fn(y_hat, y, mask), M, g
