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

It differentiates ``net.step`` only, so it runs on every network of the cell contract: on a stack of layers
(:mod:`models.stack`) ``s`` is every layer's state and ``J_t``, ``I_t`` include the same-step feed-forward
path (a lower layer's parameter reaches the layers above within the step); it equals BPTT there
(tests/neuro/rules/test_stack_rules.py, float64).

A faster computation of the same numbers for the leaky tanh rate RNN (closed-form one-step Jacobians, no
``J_theta`` materialised) lives in :mod:`neuro.rules._fast.rtrl` and runs by default; ``fast=False`` runs
this definition.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive
from neuro.errors import format_bytes

from ._onestep import FlatStep
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["RTRL", "RTRLState"]


class RTRLState(NamedTuple):
    net: NamedTuple
    M: Tensor  # [B, S, P] influence matrix ds_t/dtheta (state and parameters flattened as FlatStep does)


@functools.lru_cache(maxsize=64)
def _flat_step(net: AbstractNetwork, loss: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> FlatStep:
    return FlatStep.build(net, {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes}, loss)


@accelerated
@dataclasses.dataclass(frozen=True)
class RTRL(AbstractRule):
    """Exact RTRL. ``max_bytes``: refuse (in ``check_run``, before a run, and in ``init``) a network whose influence matrix and one-step
    Jacobians need more memory; ``fast``: the fast path of :mod:`neuro.rules._fast.rtrl` where it applies
    (default) or this definition."""

    max_bytes: int = 2 * 2 ** 30
    fast: bool = True

    name = "rtrl"
    needs = Needs.JACOBIAN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("max_bytes", self.max_bytes, integer=True)

    # -- helpers -------------------------------------------------------------------------------------
    def _flat(self, params: Params) -> FlatStep:
        return _flat_step(self.net, self.loss or "mse", tuple((k, tuple(v.shape)) for k, v in sorted(params.items())))

    def memory_bytes(self, params: Params, batch: int) -> int:
        """Bytes of the influence matrix ``M`` [B, S, P] and the one-step Jacobians the running computation
        holds: here one more [B, S, P] (``J_theta``) and ``J_s`` [B, S, S]; a fast path counts its own."""
        fast = self.fast_path
        if fast is not None:
            return fast.memory_bytes(params, batch)
        fs = self._flat(params)
        S, P = fs.n_state, fs.n_params
        return next(iter(params.values())).element_size() * batch * S * (2 * P + S)

    def check_run(self, params: Params, batch: int, sequence: int, where: str = "") -> None:
        """The memory guard: ``ValueError`` where :meth:`memory_bytes` exceed ``max_bytes``."""
        check_positive("batch", batch, integer=True)
        need = self.memory_bytes(params, batch)
        if need > self.max_bytes:
            fs, p = self._flat(params), next(iter(params.values()))
            others = ", ".join(r for r in ("snap1", "uoro") if r != self.name)
            raise ValueError(
                f"{self.name} needs {format_bytes(need)} for the influence matrix of n_state={fs.n_state}, "
                f"n_params={fs.n_params} (batch {batch}, {p.dtype}), more than max_bytes={self.max_bytes} "
                f"({format_bytes(self.max_bytes)}): use {others}, or a smaller network (or raise max_bytes)")

    def run_bytes(self, params: Params, batch: int, sequence: int) -> int | None:
        return self.memory_bytes(params, batch)

    def _influence(self, params: Params, batch: int) -> Tensor:
        """``M_0 = 0`` [B, S, P], after the memory guard (``max_bytes``, :meth:`check_run`)."""
        self.check_run(params, batch, 1)
        fs = self._flat(params)
        return next(iter(params.values())).new_zeros(batch, fs.n_state, fs.n_params)

    def _exact_step(self, params: Params, state: RTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        """One step of the equations in the module docstring (the estimate from ``M_{t-1}``, then ``M_t``)."""
        fs = self._flat(params)
        theta = fs.flat_params(params).detach()
        s = fs.flat_state(state.net).detach()  # s_{t-1} [B, S]
        B = s.shape[0]
        l, dl_ds, dl_dtheta, s_new, y_hat = fs.loss_grads(theta, s, x, y, mask)
        # dl_t/dtheta = (dl_t/ds_{t-1}) M_{t-1} + partial l_t/partial theta   (mean over the batch)
        g = (torch.einsum("bs,bsp->p", dl_ds, state.M) + dl_dtheta.sum(0)) / B
        _, J, I = fs.jacobians(theta, s, x)
        M = torch.baddbmm(I, J, state.M)  # M_t = J_t M_{t-1} + I_t
        grad = fs.unflat_params(g)
        return StepOutput(RTRLState(net=fs.unflat_state(s_new), M=M), y_hat.detach(), (l.sum() / B).detach(),
                          {k: grad[k].detach() for k in params})

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RTRLState:
        return RTRLState(net=self.net.init_state(params, batch), M=self._influence(params, batch))

    def step(self, params: Params, state: RTRLState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        return self._exact_step(params, state, x, y, mask)
