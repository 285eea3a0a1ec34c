"""Truncated BPTT (Williams & Peng 1990; Elman 1990): BPTT over windows of ``k`` steps, the state
carried from one window to the next but detached, an estimate returned every ``k`` steps.

    g_window = sum_{t in window} dl_t/dtheta, backpropagated no further than the window's start.

Biased (it ignores the influence of earlier windows); memory O(n k). Like BPTT it differentiates ``net.step``
only, so it runs on stacks of layers (:mod:`models.stack`) as on one layer.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from neuro.contract import check_positive

from .base import Needs, StepOutput
from .bptt import BPTT, BPTTState


@dataclasses.dataclass(frozen=True)
class TBPTT(BPTT):
    k: int = 10

    name = "tbptt"
    needs = Needs.GRAPH
    _shorter_graph = "a smaller k (rule option)"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("k", self.k, integer=True)

    def window(self, sequence: int) -> int:
        return min(self.k, sequence)

    def _maybe_flush(self, state: BPTTState, y_hat: Tensor, l: Tensor) -> StepOutput:
        grad = None
        if state.t >= self.k:
            state, grad = self._flush(state)
        return StepOutput(state, y_hat.detach(), l.detach(), grad)
