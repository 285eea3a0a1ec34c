"""Backpropagation through time (Rumelhart et al. 1986; Werbos 1990): the exact gradient of the
summed loss over the whole sequence, computed when the sequence ends (``finish``).

    dL/dtheta = sum_t dl_t/dtheta,  L = sum_t l_t,  by reverse-mode autodiff of the unrolled graph.

Memory grows as O(n T). The graph is built on a detached copy of the parameters taken at the start
of the sequence, so an optimizer may change the live parameters without corrupting it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params

from .base import AbstractRule, Needs, StepOutput


class BPTTState(NamedTuple):
    net: NamedTuple
    window: Params | None  # parameters the current graph is built on (requires_grad)
    total: Tensor | None  # summed loss of the window (a graph)
    t: int  # steps in the current window


def _window_params(params: Params) -> Params:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _detach_state(state: NamedTuple) -> NamedTuple:
    return type(state)(*(s.detach() for s in state))


@dataclasses.dataclass(frozen=True)
class BPTT(AbstractRule):
    name = "bptt"
    needs = Needs.GRAPH

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> BPTTState:
        return BPTTState(net=self.net.init_state(params, batch), window=None, total=None, t=0)

    def step(self, params: Params, state: BPTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        window = state.window if state.window is not None else _window_params(params)
        net_state = state.net if state.window is not None else _detach_state(state.net)
        with torch.enable_grad():
            net_state, y_hat, l = self._forward(window, net_state, x, y, mask)
            total = l if state.total is None else state.total + l
        state = BPTTState(net=net_state, window=window, total=total, t=state.t + 1)
        return self._maybe_flush(state, y_hat, l)

    def _maybe_flush(self, state: BPTTState, y_hat: Tensor, l: Tensor) -> StepOutput:
        return StepOutput(state, y_hat.detach(), l.detach(), None)

    def _flush(self, state: BPTTState) -> tuple[BPTTState, Params | None]:
        if state.window is None:
            return state, None
        fresh = BPTTState(net=_detach_state(state.net), window=None, total=None, t=0)
        if not state.total.requires_grad:  # every step of the window was masked out: no estimate
            return fresh, None
        keys = list(state.window)
        gs = torch.autograd.grad(state.total, [state.window[k] for k in keys], allow_unused=True)
        grad = {k: (g if g is not None else torch.zeros_like(state.window[k])) for k, g in zip(keys, gs)}
        return fresh, grad

    def finish(self, params: Params, state: BPTTState) -> tuple[BPTTState, Params | None]:
        return self._flush(state)
