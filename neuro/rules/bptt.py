"""Backpropagation through time (Rumelhart et al. 1986; Werbos 1990): the exact gradient of the
summed loss over the whole sequence, computed when the sequence ends (``finish``).

    dL/dtheta = sum_t dl_t/dtheta,  L = sum_t l_t,  by reverse-mode autodiff of the unrolled graph.

Memory grows as O(n T). The graph is built on a detached copy of the parameters taken at the start
of the sequence, so an optimizer may change the live parameters without corrupting it. A run whose
graph cannot fit is refused before it starts (:meth:`BPTT.check_run`, from :func:`graph_bytes`).

It differentiates ``net.step`` and nothing else, so it runs on every network of the cell contract, a stack of
layers (:mod:`models.stack`) included: the gradient then follows the same-step feed-forward path through the
layers as well as the recurrence within each; sparse matrices get estimates zero off their masks
(tests/neuro/rules/test_stack_rules.py).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params
from neuro.errors import check_fits, format_bytes

from .base import AbstractRule, Needs, StepOutput

#: what the graph of one step keeps, per value of the network's state, input and output (measured: 1 to 7
#: times the step's values, by model), and per step whatever the size (autograd's nodes and their records)
GRAPH_FACTOR, GRAPH_STEP_BYTES = 8, 32 * 2 ** 10


def graph_bytes(rule: AbstractRule, params: Params, batch: int, steps: int) -> int:
    """An upper estimate of the memory of the autograd graph of ``steps`` steps of ``rule.net`` on ``batch``
    streams (``params`` read for their dtype only): ``steps x (batch x values x GRAPH_FACTOR x dtype size +
    GRAPH_STEP_BYTES)``, the values being the network state's, the input's and the output's."""
    net, p = rule.net, next(iter(params.values()))
    state = net.init_state({k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in params.items()}, 1)
    values = sum(f.numel() for f in state) + net.n_in + net.n_out
    return steps * (batch * values * GRAPH_FACTOR * p.element_size() + GRAPH_STEP_BYTES)


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
    _shorter_graph: ClassVar[str] = "tbptt (rule option k)"  # how to hold fewer steps in one graph

    def window(self, sequence: int) -> int:
        """The most steps one graph holds on sequences of ``sequence`` steps."""
        return sequence

    def check_run(self, params: Params, batch: int, sequence: int, where: str = "") -> None:
        """Refuse a run whose graph (:func:`graph_bytes` of a window) cannot fit in memory."""
        T = self.window(sequence)
        need = graph_bytes(self, params, batch, T)
        per = format_bytes(need / T)
        check_fits(f"rule {self.name!r} on sequences of {sequence} steps{f' ({where})' if where else ''}", need,
                   f"its graph holds {T} steps of about {per} each; use {self._shorter_graph} or shorter sequences "
                   "(a smaller chunk)")

    def run_bytes(self, params: Params, batch: int, sequence: int) -> int | None:
        return graph_bytes(self, params, batch, self.window(sequence))

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
