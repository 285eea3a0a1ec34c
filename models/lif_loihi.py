"""Loihi's integer LIF: the arithmetic of Lava's bit-accurate ``PyLifModelBitAcc`` and ``PyDenseModelBitAcc``.

Loihi: Davies et al. (2018), "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning", IEEE Micro
38(1):82-99 (the CUBA LIF with 12-bit decays); the equations below are lava-nc 0.10.0's bit-accurate model.

The integer twin of :mod:`models.lif` with ``dynamics="lava"``, ``reset="zero"`` (what
:func:`hw_targets.lava.quantize` maps a float network to). Every value below is an integer; ``M = 2^23``
(24-bit ``u`` and ``v``); ``trunc`` rounds toward zero (Lava's ``sgn(x) (|x| >> 12)``) and
``x >> k`` is an arithmetic shift (rounds toward -inf)::

    W'       = 2 floor(clip(W, -256, 255) / 2)          Dense weights, mixed sign mode, 8 bits (the LSB dropped)
    a_t      = shift(W'_in x_t, e_in) + shift(W'_rec z_{t-1}, e_rec),   shift(s, e) = s << e  or  s >> -e
    u~       = trunc(u_{t-1} (4096 - (du + 1)) / 4096) + (a_t << 6)
    u_t      = u~ - 2M  if u~ > M;   u~ + 2M  if u~ <= -M;   else u~         (wraps at 24 bits)
    v~       = clip(trunc(v_{t-1} (4096 - dv) / 4096) + u_t + (b << bias_exp), -(M-1), M-1)
    z_t      = [v~ > vth << 6]                         (strict: Lava's ``v > vth``)
    v_t      = v~ (1 - z_t)                            (Lava resets v to 0; u is not reset)
    y_t      = kappa_out y_{t-1} + W_out z_t + b_out   (readout, floating point: computed on the host)

Lava's own docstring (``lava/proc/lif/models.py``, lava-nc 0.10.0): du, dv unsigned 12 bits, bias
mantissa signed 13 bits, bias exponent 3 bits, vth unsigned 17 bits (shifted left 6 bits to align with
the 24-bit v), activations shifted left 6 bits (``act_shift``); decays use ``ds_offset = 1`` on u and
``dm_offset = 0`` on v. Not modelled by Lava (nor here): refractory period, axonal delays.

Inputs ``x`` are graded spikes: they are truncated toward zero to integers, as Lava's fixed-point
``RingBuffer`` stores them (``int32``); binary spike inputs pass unchanged.

Parameters are held in the params' float dtype but are integers (``W_in``, ``W_rec``: Dense weights;
``b``: the bias mantissa); any other value is rounded to the nearest integer first. The integer
arithmetic is done in float64, exact for these ranges (|products| < 2^36), and the results (|x| <= 2^23)
are exact in float32 as well. Gradients pass straight through the rounding, truncation, wrapping and
clipping (the derivative of the linear update without them), so rules run on this model too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice, check_positive, state_dtype
from neuro.surrogate import SURROGATES, spike

from . import _init

M = 2 ** 23  # 24-bit u and v
DECAY_UNITY = 4096  # 12-bit decays
ACT_SHIFT = VTH_SHIFT = 6
LIMITS = {"du": (0, 4095), "dv": (0, 4095), "vth": (1, 2 ** 17 - 1), "bias_exp": (0, 7),
          "weight_exp_in": (-8, 7), "weight_exp_rec": (-8, 7)}
W_RANGE = (-256, 254)  # even integers: mixed sign mode, 8 bits
B_RANGE = (-4096, 4095)  # 13-bit signed bias mantissa


class LIFLoihiState(NamedTuple):
    v: Tensor  # [B, n] membrane potential (after reset), integer
    u: Tensor  # [B, n] synaptic current, integer
    z: Tensor  # [B, n] spikes of this step
    y: Tensor  # [B, n_out] readout


def _ste(exact: Tensor, lin: Tensor) -> Tensor:
    """The value ``exact`` (computed without gradient) with the derivative of ``lin``."""
    return exact.to(lin.dtype) + (lin - lin.detach())


def shift(s: Tensor, e: int) -> Tensor:
    """``s << e`` for e >= 0, ``s >> -e`` (floor division by 2^-e) for e < 0; ``s`` integer-valued."""
    return s * float(2 ** e) if e >= 0 else torch.floor(s / float(2 ** -e))


def dense_weights(W: Tensor) -> Tensor:
    """The weights Lava's bit-accurate Dense uses (mixed sign mode, 8 bits): exact values, float64."""
    return torch.floor(torch.clamp(torch.round(W.detach().double()), -256, 255) / 2.0) * 2.0


@dataclasses.dataclass(frozen=True)
class LIFLoihi(AbstractNetwork):
    du: int = 741  # 4095 - round(4096 exp(-1/5)): tau_syn = 5 steps
    dv: int = 200  # 4096 - round(4096 exp(-1/20)): tau_mem = 20 steps
    vth: int = 1024
    weight_exp_in: int = 0
    weight_exp_rec: int = 0
    bias_exp: int = 0
    dt: float = 1.0
    tau_out: float = 20.0
    scale: float = 65536.0  # integer units of v per unit of voltage of the float network (reporting only)
    surrogate: str = "triangle"
    surrogate_width: float = 1.0
    surrogate_scale: float = 0.3
    input_scale: float = 1.0
    rec_scale: float = 0.5

    name = "lif-loihi"
    spiking = True
    State = LIFLoihiState
    maskable = ("W_in", "W_rec")

    def __post_init__(self) -> None:
        super().__post_init__()
        for f, (lo, hi) in LIMITS.items():
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{f}={value!r} is invalid: expected an integer in [{lo}, {hi}] (Loihi's range)")
        for f in ("dt", "tau_out", "scale", "surrogate_width", "surrogate_scale"):
            check_positive(f, getattr(self, f))
        check_positive("input_scale", self.input_scale, allow_zero=True)
        check_positive("rec_scale", self.rec_scale, allow_zero=True)
        check_choice("surrogate", self.surrogate, tuple(SURROGATES))

    # -- coefficients ------------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        """The effective decay of u per step, (4096 - (du + 1)) / 4096 (before truncation)."""
        return (DECAY_UNITY - (self.du + 1)) / DECAY_UNITY

    @property
    def alpha(self) -> float:
        """The effective decay of v per step, (4096 - dv) / 4096 (before truncation)."""
        return (DECAY_UNITY - self.dv) / DECAY_UNITY

    @property
    def threshold(self) -> int:
        """The threshold in units of v: vth << 6."""
        return self.vth << VTH_SHIFT

    @property
    def kappa_out(self) -> float:
        return _init.decay(self.dt, self.tau_out)

    def gain(self) -> float:
        """Steady-state v per unit of constant activation a per step (ignoring truncation)."""
        return 2 ** ACT_SHIFT / (max(1.0 - self.beta, 1.0 / DECAY_UNITY) * max(1.0 - self.alpha, 1.0 / DECAY_UNITY))

    # -- parameters and state ------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_hidden
        return {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        """Random even integer weights (in Dense units) scaled like :meth:`models.lif.LIF.init_params`."""
        g = self._generator(seed)
        n = self.n_hidden
        unit = self.threshold / self.gain()  # activation per step that holds v at threshold

        p = {
            "W_in": _init.normal(g, (n, self.n_in), self.input_scale * unit / math.sqrt(self.n_in) / 2.0 ** self.weight_exp_in),
            "W_rec": _init.normal(g, (n, n), self.rec_scale * unit / math.sqrt(n) / 2.0 ** self.weight_exp_rec),
            "b": torch.zeros(n, dtype=torch.float64),
            "W_out": _init.normal(g, (self.n_out, n), 1.0 / math.sqrt(n)),
            "b_out": torch.zeros(self.n_out, dtype=torch.float64),
        }
        p = self.sparse_init(p)  # sparse matrices: zero off the mask, scaled up (before rounding)
        for k in ("W_in", "W_rec"):
            p[k] = (2.0 * torch.round(p[k] / 2.0)).clamp(*W_RANGE)
        return _init.finish(p, dtype, device)

    def init_state(self, params: Params, batch: int = 1) -> LIFLoihiState:
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        y = torch.zeros(batch, self.n_out, dtype=dtype, device=device)
        return LIFLoihiState(v=z.clone(), u=z.clone(), z=z.clone(), y=y)

    # -- one step -------------------------------------------------------------------------------------
    def current(self, params: Params, state: LIFLoihiState, x: Tensor) -> Tensor:
        """The activation ``a_t`` Lava's two Dense processes deliver to the LIF's ``a_in``."""
        x_int = _ste(torch.trunc(x.detach().double()), x)
        parts = []
        for W, inp, e in ((self.weight(params, "W_in"), x_int, self.weight_exp_in),
                          (self.weight(params, "W_rec"), state.z, self.weight_exp_rec)):
            exact = shift(inp.detach().double() @ dense_weights(W).T, e)
            parts.append(_ste(exact, inp @ W.T * float(2.0 ** e)))
        return parts[0] + parts[1]

    def input_current(self, params: Params, x: Tensor) -> Tensor:
        """The input's Dense process alone: the first term of :meth:`current`."""
        x_int = _ste(torch.trunc(x.detach().double()), x)
        W, e = self.weight(params, "W_in"), self.weight_exp_in
        return _ste(shift(x_int.detach().double() @ dense_weights(W).T, e), x_int @ W.T * float(2.0 ** e))

    def neuron(self, params: Params, state: LIFLoihiState, a: Tensor) -> tuple[LIFLoihiState, Tensor]:
        u, v = state.u, state.v
        b = params["b"]
        bias = _ste(shift(torch.round(b.detach().double()), self.bias_exp), b * float(2 ** self.bias_exp))
        # u: truncated decay, activation << 6, wrap at 24 bits
        d = (torch.trunc(u.detach().double() * (DECAY_UNITY - (self.du + 1)) / DECAY_UNITY)
             + a.detach().double() * 2 ** ACT_SHIFT)
        w = torch.where(d > M, d - 2 * M, d)
        w = torch.where(w <= -M, d + 2 * M, w)
        u_new = _ste(w, u * self.beta + a * 2 ** ACT_SHIFT)
        # v: truncated decay + u + bias, clipped to 24 bits
        dv = torch.trunc(v.detach().double() * (DECAY_UNITY - self.dv) / DECAY_UNITY)
        v_ex = torch.clamp(dv + w + bias.detach().double(), -(M - 1), M - 1)
        v_new = _ste(v_ex, v * self.alpha + u_new + bias)
        z = spike(v_new, float(self.threshold), self.surrogate, self.surrogate_width, self.surrogate_scale)
        v_new = v_new * (1.0 - z)
        return LIFLoihiState(v=v_new, u=u_new, z=z, y=state.y), z

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        y = self.kappa_out * state.y + z @ params["W_out"].T + params["b_out"]
        return state._replace(y=y), y

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return {"spikes": state.z, "v": state.v, "u": state.u}
