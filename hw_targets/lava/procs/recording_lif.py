"""``RecordingLIF``: Lava's LIF process that also keeps its own trajectory (v, u, spikes per step).

Its ProcessModels are Lava's stock ``PyLifModelFloat`` (``floating_pt``) and ``PyLifModelBitAcc``
(``fixed_pt``, bit-accurate Loihi) unchanged, subclassed only to copy v, u and the spikes into the
``rec_*`` Vars [num_steps, *shape] after each step. One Monitor process per probed variable (lava 0.10's
Monitor model holds one Var probe) and its per-step reads made a 500-step run several times slower.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.variable import Var
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifModelBitAcc, PyLifModelFloat
from lava.proc.lif.process import LIF

__all__ = ["RecordingLIF"]


class RecordingLIF(LIF):
    """``LIF(shape, u, v, du, dv, bias_mant, bias_exp, vth)`` recording ``num_steps`` steps into
    ``rec_v``, ``rec_u`` and ``rec_s`` (shape [num_steps, *shape]; row t is step t + 1 of the run)."""

    def __init__(self, *, num_steps: int, shape: ty.Tuple[int, ...], **kwargs) -> None:
        super().__init__(shape=shape, **kwargs)
        self.rec_v = Var(shape=(num_steps, *shape), init=0)
        self.rec_u = Var(shape=(num_steps, *shape), init=0)
        self.rec_s = Var(shape=(num_steps, *shape), init=0)


class _Record:
    def record(self) -> None:
        t = self.time_step - 1
        if t < self.rec_v.shape[0]:
            self.rec_v[t] = self.v
            self.rec_u[t] = self.u
            self.rec_s[t] = self.s_out_buff


class PyRecordingLifFloat(_Record, PyLifModelFloat):
    """Lava's floating-point LIF, recording (tags inherited: ``floating_pt``)."""

    implements_process = None  # re-declared below (the parent implements LIF)
    implements_protocol = None
    rec_v: np.ndarray = LavaPyType(np.ndarray, float)
    rec_u: np.ndarray = LavaPyType(np.ndarray, float)
    rec_s: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        super().run_spk()
        self.record()


class PyRecordingLifBitAcc(_Record, PyLifModelBitAcc):
    """Lava's bit-accurate LIF, recording (tags inherited: ``bit_accurate_loihi``, ``fixed_pt``)."""

    implements_process = None
    implements_protocol = None
    rec_v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    rec_u: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    rec_s: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        super().run_spk()
        self.record()


implements(proc=RecordingLIF, protocol=LoihiProtocol)(PyRecordingLifFloat)
implements(proc=RecordingLIF, protocol=LoihiProtocol)(PyRecordingLifBitAcc)
