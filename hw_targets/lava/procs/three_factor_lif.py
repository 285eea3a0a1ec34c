"""``ThreeFactorLIF``: Lava's ``LearningLIF`` whose floating-point model *sends* its learning traces.

Lava 0.10's shipped ``LearningLIF`` models never send on ``s_out_bap`` / ``s_out_y1..3``, so a
``Loihi3FLearningRule`` on a ``LearningDense`` would see zeros. This model, per step ``t``::

    u  = u (1 - du) + a_in                       (Lava's LIF, floating point)
    v~ = v (1 - dv) + u + bias_mant
    z  = v~ > vth,   v = v~ (1 - z)
    p  = psi(v~)  (post_kind 0: triangle, 1: fast-sigmoid surrogate, as neuro.surrogate)   or   z  (post_kind 2)
    y  = y_decay y + y_impulse p                  the postsynaptic factor of the three-factor rule
    sends s_out = z, s_out_bap = z, s_out_y1 = y1_gain y, s_out_y2 = y2_gain m, s_out_y3 = y3_gain y

with ``m`` the graded third factor received on ``a_third_factor_in``. The gains fold in the constants of
the rule that Loihi's learning strings cannot hold exactly (see :mod:`hw_targets.lava.learning`). During
the first ``hold`` steps the neuron holds its state and sends zeros (an input delay). Every step's z, v, u,
y and m are recorded into ``rec_*`` [num_steps, n].
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.process import LearningLIF

__all__ = ["ThreeFactorLIF"]


class ThreeFactorLIF(LearningLIF):
    """``LearningLIF(shape, du, dv, vth, bias_mant, learning_rule)`` sending its traces (module docstring).
    Extra keywords: ``num_steps`` (recorded steps), ``post_kind`` (0 triangle, 1 fast-sigmoid, 2 activity),
    ``sg_width``, ``sg_scale`` (the surrogate's width and scale), ``y_decay``, ``y_impulse``, ``y1_gain``,
    ``y2_gain``, ``y3_gain``, ``hold``."""

    def __init__(self, *, num_steps: int, shape: ty.Tuple[int, ...], post_kind: int = 0, sg_width: float = 1.0,
                 sg_scale: float = 0.3, y_decay: float = 0.0, y_impulse: float = 1.0, y1_gain: float = 1.0,
                 y2_gain: float = 1.0, y3_gain: float = 1.0, hold: int = 0, **kwargs) -> None:
        super().__init__(shape=shape, **kwargs)
        for name, value in dict(post_kind=post_kind, sg_width=sg_width, sg_scale=sg_scale, y_decay=y_decay,
                                y_impulse=y_impulse, y1_gain=y1_gain, y2_gain=y2_gain, y3_gain=y3_gain,
                                hold=hold).items():
            setattr(self, name, Var(shape=(1,), init=value))
        self.ytrace = Var(shape=shape, init=0)
        for k in ("s", "v", "u", "y", "m"):
            setattr(self, f"rec_{k}", Var(shape=(num_steps, *shape), init=0))


@implements(proc=ThreeFactorLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyThreeFactorLIFFloat(PyLoihiProcessModel):
    """Floating point (module docstring)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_third_factor_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    s_out_bap: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, bool)
    s_out_y1: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    s_out_y2: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    s_out_y3: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias_mant: np.ndarray = LavaPyType(np.ndarray, float)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, float)
    du: float = LavaPyType(float, float)
    dv: float = LavaPyType(float, float)
    vth: float = LavaPyType(float, float)
    y1: np.ndarray = LavaPyType(np.ndarray, float)
    y2: np.ndarray = LavaPyType(np.ndarray, float)
    y3: np.ndarray = LavaPyType(np.ndarray, float)
    ytrace: np.ndarray = LavaPyType(np.ndarray, float)
    post_kind: np.ndarray = LavaPyType(np.ndarray, float)
    sg_width: np.ndarray = LavaPyType(np.ndarray, float)
    sg_scale: np.ndarray = LavaPyType(np.ndarray, float)
    y_decay: np.ndarray = LavaPyType(np.ndarray, float)
    y_impulse: np.ndarray = LavaPyType(np.ndarray, float)
    y1_gain: np.ndarray = LavaPyType(np.ndarray, float)
    y2_gain: np.ndarray = LavaPyType(np.ndarray, float)
    y3_gain: np.ndarray = LavaPyType(np.ndarray, float)
    hold: np.ndarray = LavaPyType(np.ndarray, float)
    rec_s: np.ndarray = LavaPyType(np.ndarray, float)
    rec_v: np.ndarray = LavaPyType(np.ndarray, float)
    rec_u: np.ndarray = LavaPyType(np.ndarray, float)
    rec_y: np.ndarray = LavaPyType(np.ndarray, float)
    rec_m: np.ndarray = LavaPyType(np.ndarray, float)

    def _post(self, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        kind = int(self.post_kind[0])
        if kind == 2:
            return z.astype(float)
        vth = float(self.vth)
        x = (v - vth) / (vth * float(self.sg_width[0]))
        der = np.maximum(0.0, 1.0 - np.abs(x)) if kind == 0 else 1.0 / (1.0 + np.abs(x)) ** 2
        return float(self.sg_scale[0]) / vth * der

    def run_spk(self) -> None:
        a = self.a_in.recv()
        m = self.a_third_factor_in.recv()
        if self.time_step <= int(self.hold[0]):
            z = np.zeros_like(self.v)
        else:
            self.u[:] = self.u * (1 - self.du) + a
            v = self.v * (1 - self.dv) + self.u + self.bias_mant
            z = v > self.vth
            self.ytrace[:] = self.y_decay[0] * self.ytrace + self.y_impulse[0] * self._post(v, z)
            self.v[:] = np.where(z, 0.0, v)
        y = self.ytrace
        self.y1[:], self.y2[:], self.y3[:] = self.y1_gain[0] * y, self.y2_gain[0] * m, self.y3_gain[0] * y
        self.s_out.send(z.astype(float))
        self.s_out_bap.send(z.astype(bool))
        self.s_out_y1.send(self.y1)
        self.s_out_y2.send(self.y2)
        self.s_out_y3.send(self.y3)
        t = self.time_step - 1
        if t < self.rec_s.shape[0]:
            self.rec_s[t], self.rec_v[t], self.rec_u[t] = z, self.v, self.u
            self.rec_y[t], self.rec_m[t] = y, m
