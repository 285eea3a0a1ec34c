"""Current-based leaky integrate-and-fire (LIF) recurrent network with a leaky-integrator readout.

The ODE (norse's convention; ``i`` in units of voltage)::

    tau_mem dv/dt = v_leak + b - v + i          tau_syn di/dt = -i

An input or recurrent spike of weight ``w`` makes ``i`` jump by ``w``. Per step of ``dt``:

    I_t = W_in x_t + W_rec z_{t-1}                                  (current: the synaptic part)

``dynamics="exact"`` (default): exact integration of the linear parts, the input jump first
(alpha = exp(-dt/tau_mem), beta = exp(-dt/tau_syn),
kappa = tau_syn (beta - alpha) / (tau_syn - tau_mem), or (dt/tau_mem) alpha when the taus are equal)::

    j   = i_{t-1} + I_t
    v~  = v_leak + b + (v_{t-1} - v_leak - b) alpha + kappa j
    i_t = beta j

``dynamics="euler"``: norse 1.1's forward-Euler ``lif_step`` (the input jump first, as in norse's
``norse.torch.functional.lif.lif_step``: the voltage sees the current after the jump)::

    j   = i_{t-1} + I_t
    v~  = v_{t-1} + dt/tau_mem (v_leak + b - v_{t-1} + j)
    i_t = j (1 - dt/tau_syn)

``dynamics="lava"``: Lava's ``LIF`` process (floating point), with du = 1 - beta, dv = 1 - alpha::

    i_t = i_{t-1} (1 - du) + I_t              (Lava's u)
    v~  = v_{t-1} (1 - dv) + i_t + b

Then, for every dynamics, with ``r`` the refractory counter (steps left)::

    v~  = v_reset                      where r_{t-1} > 0        (held during the refractory period)
    z_t = H(v~ - v_th) [r_{t-1} = 0]   (surrogate derivative, see neuro.surrogate)
    v_t = v~ - z_t v_th                (reset="subtract")   or   v~ (1 - z_t) + z_t v_reset  (reset="zero")
    r_t = refractory if z_t else max(r_{t-1} - 1, 0)
    y_t = kappa_out y_{t-1} + W_out z_t + b_out,   kappa_out = exp(-dt/tau_out)      (readout)

Times are in ms. Shapes: W_in [n, n_in], W_rec [n, n], b [n], W_out [n_out, n], b_out [n_out].
Initialisation scales weights by the steady-state voltage gain ``G`` of the dynamics (voltage per
unit of constant ``I``) so that ``input_scale`` and ``rec_scale`` are in units of ``v_th``:
``W_in ~ N(0, (input_scale v_th / G)^2 / n_in)``, ``W_rec ~ N(0, (rec_scale v_th / G)^2 / n)``. The bias
gives each neuron a resting offset ``N(bias_mean, bias_std^2) v_th`` (its steady-state voltage with no
input; drawn after the weights, so a seed's weights do not depend on it). Without it a network driven
by sparse inputs stays silent: a lone input spike moves ``v`` by about 3% of what the same weight held
constant does, so no single ``input_scale`` makes both a pulse and a constant input fire at a plausible
rate. With the defaults, a 64-unit network (dt = 1 ms) fires at about 3-30 Hz on every task of
``neuro.tasks`` and on Poisson inputs of 0.05-0.2 spikes per step (``tests/models/test_defaults_fire.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Derivatives, LinearFilter, Params, check_choice, check_positive, state_dtype
from neuro.surrogate import SURROGATES, spike, surrogate_derivative

from . import _init

DYNAMICS = ("exact", "euler", "lava")
RESETS = ("subtract", "zero")


class LIFState(NamedTuple):
    v: Tensor  # [B, n] membrane potential (after reset)
    i: Tensor  # [B, n] synaptic current (Lava's u)
    z: Tensor  # [B, n] spikes of this step
    r: Tensor  # [B, n] refractory steps left (float)
    y: Tensor  # [B, n_out] readout


class Subthreshold(NamedTuple):
    """Coefficients of the linear sub-threshold update (:meth:`LIF.subthreshold`)."""

    vv: float  # d v~ / d v_{t-1}
    vi: float  # d v~ / d i_{t-1}
    vI: float  # d v~ / d I_t
    vb: float  # d v~ / d b
    ii: float  # d i_t / d i_{t-1}
    iI: float  # d i_t / d I_t


@dataclasses.dataclass(frozen=True)
class LIF(AbstractNetwork):
    dt: float = 1.0
    tau_mem: float = 20.0
    tau_syn: float = 5.0
    tau_out: float = 20.0
    v_th: float = 1.0
    v_leak: float = 0.0
    v_reset: float = 0.0
    reset: str = "subtract"
    refractory: int = 0
    dynamics: str = "exact"
    surrogate: str = "triangle"
    surrogate_width: float = 1.0
    surrogate_scale: float = 0.3
    detach_reset: bool = False
    input_scale: float = 1.0
    rec_scale: float = 0.5
    bias_mean: float = 0.6
    bias_std: float = 0.4

    name = "lif"
    spiking = True
    State = LIFState
    local_form = True
    maskable = ("W_in", "W_rec")
    bias_in_current = False
    trace_fields = ("v", "i")
    uniform_fields = ("i",)

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("dt", "tau_mem", "tau_syn", "tau_out", "v_th", "surrogate_width", "surrogate_scale"):
            check_positive(f, getattr(self, f))
        check_positive("input_scale", self.input_scale, allow_zero=True)
        check_positive("rec_scale", self.rec_scale, allow_zero=True)
        check_positive("bias_std", self.bias_std, allow_zero=True)
        check_positive("refractory", self.refractory, allow_zero=True, integer=True)
        for f in ("v_leak", "v_reset", "bias_mean"):  # any sign, but a finite number
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f}={value!r} is invalid: expected a finite number")
        check_choice("dynamics", self.dynamics, DYNAMICS)
        check_choice("reset", self.reset, RESETS)
        check_choice("surrogate", self.surrogate, tuple(SURROGATES))
        if self.dynamics == "lava" and self.v_leak != 0.0:
            raise ValueError(f"v_leak={self.v_leak!r} is invalid for dynamics='lava': Lava's LIF has no leak "
                             "potential (use 0; b is a bias added to v every step)")
        if self.dynamics == "euler" and (self.dt > self.tau_syn or self.dt > self.tau_mem):
            raise ValueError(f"dt={self.dt!r} is invalid for dynamics='euler': must be <= tau_syn and tau_mem")

    # -- coefficients ------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return _init.decay(self.dt, self.tau_mem)

    @property
    def beta(self) -> float:
        return _init.decay(self.dt, self.tau_syn)

    @property
    def kappa(self) -> float:
        """Voltage response at the end of a step to a unit current jump at its start (exact dynamics)."""
        if self.tau_syn == self.tau_mem:
            return self.dt / self.tau_mem * self.alpha
        # tau_syn (beta - alpha) / (tau_syn - tau_mem), written with expm1 so that it stays accurate
        # as tau_syn -> tau_mem (the direct difference loses ~1e-7 relative at 1e-8 apart)
        d = self.tau_syn - self.tau_mem
        return self.alpha * self.tau_syn * math.expm1(self.dt * d / (self.tau_syn * self.tau_mem)) / d

    @property
    def kappa_out(self) -> float:
        return _init.decay(self.dt, self.tau_out)

    def gain(self) -> float:
        """Steady-state voltage per unit of constant synaptic input ``I`` per step."""
        if self.dynamics == "exact":
            return self.kappa / ((1.0 - self.beta) * (1.0 - self.alpha))
        if self.dynamics == "euler":
            return self.tau_syn / self.dt
        return 1.0 / ((1.0 - self.beta) * (1.0 - self.alpha))

    def subthreshold(self) -> Subthreshold:
        """The linear sub-threshold update of one step as coefficients (before the refractory hold,
        the spike and the reset), for rules that filter presynaptic activity through it (OTTT)::

            v~  = vv v_{t-1} + vi i_{t-1} + vI I_t + vb b + (a constant)
            i_t = ii i_{t-1} + iI I_t
        """
        if self.dynamics == "exact":
            a, k, b = self.alpha, self.kappa, self.beta
            return Subthreshold(vv=a, vi=k, vI=k, vb=1.0 - a, ii=b, iI=b)
        if self.dynamics == "euler":
            c, d = self.dt / self.tau_mem, 1.0 - self.dt / self.tau_syn
            return Subthreshold(vv=1.0 - c, vi=c, vI=c, vb=c, ii=d, iI=d)
        return Subthreshold(vv=self.alpha, vi=self.beta, vI=1.0, vb=1.0, ii=self.beta, iI=1.0)

    # -- parameters and state ------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.n_hidden
        return {"W_in": (n, self.n_in), "W_rec": (n, n), "b": (n,), "W_out": (self.n_out, n), "b_out": (self.n_out,)}

    def init_params(self, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Params:
        g = self._generator(seed)
        n = self.n_hidden
        unit = self.v_th / self.gain()
        p = {
            "W_in": _init.normal(g, (n, self.n_in), self.input_scale * unit / math.sqrt(self.n_in)),
            "W_rec": _init.normal(g, (n, n), self.rec_scale * unit / math.sqrt(n)),
            "b": torch.zeros(n, dtype=torch.float64),
            "W_out": _init.normal(g, (self.n_out, n), 1.0 / math.sqrt(n)),
            "b_out": torch.zeros(self.n_out, dtype=torch.float64),
        }
        sub = self.subthreshold()  # b moves the steady-state voltage by b vb / (1 - vv)
        offset = self.bias_mean + _init.normal(g, (n,), self.bias_std)
        p["b"] = offset * self.v_th * (1.0 - sub.vv) / sub.vb
        return _init.finish(self.sparse_init(p), dtype, device)

    def init_state(self, params: Params, batch: int = 1) -> LIFState:
        dtype, device = state_dtype(params)
        z = torch.zeros(batch, self.n_hidden, dtype=dtype, device=device)
        v = torch.full_like(z, self.v_leak) if self.dynamics != "lava" else z.clone()
        y = torch.zeros(batch, self.n_out, dtype=dtype, device=device)
        return LIFState(v=v, i=z.clone(), z=z.clone(), r=z.clone(), y=y)

    # -- one step -------------------------------------------------------------------------------------
    def current(self, params: Params, state: LIFState, x: Tensor) -> Tensor:
        return x @ self.weight(params, "W_in").mT + state.z @ self.weight(params, "W_rec").mT

    def _integrate(self, params: Params, state: NamedTuple, I: Tensor) -> tuple[Tensor, Tensor]:
        """Sub-threshold update: (v~, i_t) from the previous state and the synaptic input ``I``."""
        v, i, b = state.v, state.i, params["b"]
        if self.dynamics == "exact":
            j = i + I
            rest = self.v_leak + b
            return rest + (v - rest) * self.alpha + self.kappa * j, self.beta * j
        if self.dynamics == "euler":  # norse 1.1 lif_step: jump, then one Euler step of v and i
            j = i + I
            v_new = v + self.dt / self.tau_mem * (self.v_leak + b - v + j)
            return v_new, j * (1.0 - self.dt / self.tau_syn)
        i_new = i * self.beta + I  # Lava: u (1 - du) + a_in with du = 1 - beta
        return v * self.alpha + i_new + b, i_new

    def _fire(self, state: NamedTuple, v: Tensor, threshold: Tensor | float,
              fire: Callable[[Tensor, Tensor | float, Tensor | None], Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
        """Refractory hold, spike and reset: returns (v_t, z_t, r_t). ``fire(v, threshold, active)`` (``active``
        0 while refractory, None without a refractory period) makes the spike instead of the surrogate spike
        function: the NeuroBench adapter's spike module, whose outputs NeuroBench counts."""
        active = None
        if self.refractory > 0:
            active = (state.r <= 0).to(v.dtype)
            v = torch.where(state.r > 0, torch.full_like(v, self.v_reset), v)
        if fire is not None:
            z = fire(v, threshold, active)
        else:
            z = spike(v, threshold, self.surrogate, self.surrogate_width, self.surrogate_scale, self.v_th)
            if active is not None:
                z = z * active
        zr = z.detach() if self.detach_reset else z
        if self.reset == "subtract":
            v = v - zr * self.v_th
        else:
            v = v * (1.0 - zr) + zr * self.v_reset
        if self.refractory > 0:
            r = torch.where(z.detach() > 0, torch.full_like(v, float(self.refractory)), (state.r - 1.0).clamp(min=0.0))
        else:
            r = state.r
        return v, z, r

    def neuron(self, params: Params, state: LIFState, i: Tensor) -> tuple[LIFState, Tensor]:
        v, i_new = self._integrate(params, state, i)
        v, z, r = self._fire(state, v, self.v_th)
        return LIFState(v=v, i=i_new, z=z, r=r, y=state.y), z

    def readout(self, params: Params, state: NamedTuple, z: Tensor) -> tuple[NamedTuple, Tensor]:
        y = self.kappa_out * state.y + z @ params["W_out"].mT + params["b_out"]
        return state._replace(y=y), y

    def observe(self, state: NamedTuple) -> dict[str, Tensor]:
        return {"spikes": state.z, "v": state.v, "i": state.i}

    # -- facts for local rules (neuro.contract) --------------------------------------------------------
    def presynaptic(self, state: NamedTuple) -> Tensor:
        return state.z

    @property
    def readout_decay(self) -> float:
        return self.kappa_out

    def with_output(self, state: NamedTuple, y: Tensor) -> NamedTuple:
        return state._replace(y=y)

    def linear_filter(self) -> LinearFilter:
        """The sub-threshold update of ``(v, i)`` (:meth:`subthreshold`), spikes held fixed."""
        c = self.subthreshold()
        return LinearFilter(dh_dh=((c.vv, c.vi), (0.0, c.ii)), dh_dI=(c.vI, c.iI), dh_db=(c.vb, 0.0))

    def neuron_derivatives(self, params: Params, state: LIFState, i: Tensor) -> Derivatives:
        return self._derivatives(params, state, i, self.v_th, None)

    def _derivatives(self, params: Params, state: NamedTuple, i: Tensor, threshold: Tensor | float,
                     adapt: tuple[float, float] | None) -> Derivatives:
        """Closed form of :meth:`neuron_derivatives` over the trace fields ``(v, i)`` (ALIF: ``(v, i, a)``, with
        ``adapt = (beta_a, rho)``). With ``v~`` the potential after integration (held at ``v_reset`` while
        refractory), ``A = [r_{t-1} = 0]``, ``psi`` the surrogate derivative at ``v~`` times ``A``, ``u_x =
        dv~/dx`` the coefficients of :meth:`subthreshold` (``A u_x`` after the hold), ``w_x = d(threshold)/dx``
        (ALIF: ``beta_a`` on ``a``) and ``delta = 0`` when the reset is detached::

            dz/dx   = psi (u_x - w_x)
            dv_t/dx = A u_x - delta v_th dz/dx                        (reset="subtract")
                    = (1 - z) A u_x + delta (v_reset - v~) dz/dx      (reset="zero")
            di_t/dx = ii on i, iI on I                da_t/dx = rho on a, + dz/dx
        """
        with torch.no_grad():
            vt, i_new = self._integrate(params, state, i)
            A = None
            if self.refractory > 0:
                A = (state.r <= 0).to(vt.dtype)
                vt = torch.where(state.r > 0, torch.full_like(vt, self.v_reset), vt)
            z = (vt > threshold).to(vt.dtype)
            psi = surrogate_derivative(vt, threshold, self.surrogate, self.surrogate_width, self.surrogate_scale,
                                       self.v_th)
            r = state.r
            if A is not None:
                z, psi = z * A, psi * A
                r = torch.where(z > 0, torch.full_like(vt, float(self.refractory)), (state.r - 1.0).clamp(min=0.0))
            v = vt - self.v_th * z if self.reset == "subtract" else vt * (1.0 - z) + z * self.v_reset
            new = {"v": v, "i": i_new, "z": z, "r": r}
            c = self.subthreshold()
            ins = ("v", "i", "a", "I", "b") if adapt else ("v", "i", "I", "b")
            u = {"v": c.vv, "i": c.vi, "I": c.vI, "b": c.vb}
            w = {"a": adapt[0]} if adapt else {}
            delta = 0.0 if self.detach_reset else 1.0
            dz = {x: psi * (u.get(x, 0.0) - w.get(x, 0.0)) for x in ins}
            dv = {}
            for x in ins:
                Au = u.get(x, 0.0) if A is None else u.get(x, 0.0) * A
                if self.reset == "subtract":
                    dv[x] = Au - (delta * self.v_th) * dz[x]
                else:
                    dv[x] = (1.0 - z) * Au + delta * (self.v_reset - vt) * dz[x]
            di = {x: torch.full_like(vt, {"i": c.ii, "I": c.iI}.get(x, 0.0)) for x in ins}
            rows = {"v": dv, "i": di}
            if adapt:
                new["a"] = adapt[1] * state.a + z
                rows["a"] = {x: dz[x] + (adapt[1] if x == "a" else 0.0) for x in ins}
            fields = self.trace_fields
            row = lambda f, xs: torch.stack([rows[f][x] for x in xs], -1)  # noqa: E731
            return Derivatives(
                state=state._replace(**new), z=z,
                dh_dh=torch.stack([row(f, fields) for f in fields], -2),
                dh_dI=torch.stack([rows[f]["I"] for f in fields], -1),
                dh_db=torch.stack([rows[f]["b"] for f in fields], -1),
                dz_dh=torch.stack([dz[x] for x in fields], -1), dz_dI=dz["I"], dz_db=dz["b"])
