"""What the engines on LIF and ALIF share in Python (:mod:`neuro.engine.spiking_eprop`, ``spiking_ottt``, ...):
the cell's arrays per dtype (:func:`neuro.engine.spiking.cell`), the parameters and the accumulator as flat
arrays in the kernels' order, the optimizer's arrays and the losses' array of a range. The compiled pieces they
share (the network step, the leaky readout, the step's derivatives) are :mod:`neuro.engine.spiking`'s, the loss,
its error and the optimizers :mod:`neuro.engine.kernels`'.
"""

from __future__ import annotations

import numpy as np
import torch

from models.lif import LIF
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine import spiking as S
from neuro.engine.base import Engine, Views
from neuro.engine.optim import OptimizerArrays
from neuro.rules.base import AbstractRule

__all__ = ["LOSSES", "ORDER", "SpikingEngine"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernels' order
LOSSES = {"mse": K.MSE, "ce": K.CE}


class SpikingEngine(Engine):
    """The part of an engine on LIF / ALIF that does not depend on the rule."""

    def __init__(self, net: LIF, rule: AbstractRule) -> None:
        self.net, self.rule = net, rule
        self.loss_kind = LOSSES[rule.loss]
        self._cells: dict[np.dtype, S.Cell] = {}
        self._kept: tuple | None = None
        self._params, self._acc = Views(), Views()
        self.wr = S.wiring(net)  # the synapses the kernels read and learn (all, where the network is dense)

    @staticmethod
    def supports(rule: AbstractRule) -> bool:
        """Whether the rule's loss is one the kernels compute."""
        return rule.loss in LOSSES

    def cell(self, dtype: np.dtype) -> S.Cell:
        """The network's cell for arrays of ``dtype`` (made once)."""
        if dtype not in self._cells:
            self._cells[dtype] = S.cell(self.net, dtype)
        return self._cells[dtype]

    def reuse(self, state: object) -> tuple | None:
        """The arrays behind ``state`` where it is the rule state this engine returned last (its tensors are views
        of them, so the next range changes them in place: nothing is copied); ``None`` otherwise."""
        return self._kept[1] if self._kept is not None and self._kept[0] is state else None

    def keep(self, state: object, arrays: tuple) -> None:
        """``state`` (returned now) and the arrays its tensors are views of, for :meth:`reuse`."""
        self._kept = (state, arrays)

    def arrays(self, params: Params, acc: Params, opt: torch.optim.Optimizer, steps: int,
               dtype: np.dtype) -> tuple[OptimizerArrays, tuple, tuple, np.ndarray]:
        """The optimizer's arrays, the parameters and the accumulator flat in :data:`ORDER` (made once while
        the tensors are the same), and the losses array of a range of ``steps`` steps."""
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        return (o, self._params([params[k] for k in ORDER]), self._acc([acc[k] for k in ORDER]),
                np.empty(steps, dtype))


class Slots:
    """A windowed path's buffer (a tuple of ``window`` entries, each a tuple of tensors and numbers: the steps of
    the window so far at their positions, stale ones after them) as arrays the kernels write, one per field
    ``[window, *shape]``, and back. The entries returned are views of the arrays; the buffer returned last is
    recognised and its arrays reused, so that a run of ranges copies nothing."""

    def __init__(self) -> None:
        self.last: tuple | None = None
        self.arrays: list[np.ndarray] = []
        self.views: list = []
        self.numbers: list[bool] = []

    def of(self, buf: tuple, dtype: np.dtype) -> list[np.ndarray]:
        """The arrays of ``buf`` (copies, unless ``buf`` is the one :meth:`entries` gave last)."""
        if buf is self.last:
            return self.arrays
        first = buf[0]
        self.numbers = [not isinstance(f, torch.Tensor) for f in first]
        self.arrays = [np.empty((len(buf), *(() if num else tuple(f.shape))), dtype)
                       for f, num in zip(first, self.numbers)]
        for w, entry in enumerate(buf):
            for f, value in enumerate(entry):
                self.arrays[f][w] = value if self.numbers[f] else value.detach().numpy()
        tensors = [torch.from_numpy(a) for a in self.arrays]
        self.views = [tuple(t.unbind(0)) for t in tensors]
        self.last = None
        return self.arrays

    def entries(self) -> tuple:
        """The buffer as entries (tensors: views of the arrays; numbers: Python floats)."""
        if self.last is not None and not any(self.numbers):
            return self.last
        cols = [[float(x) for x in a] if num else v for a, v, num in zip(self.arrays, self.views, self.numbers)]
        self.last = tuple(zip(*cols))
        return self.last
