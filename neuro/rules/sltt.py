"""Spatial learning through time (SLTT) and SLTT-K: Meng, Xiao, Yan, Wang, Lin & Luo 2023, "Towards
Memory- and Time-Efficient Backpropagation for Training Spiking Neural Networks", ICCV (arXiv:2302.14311),
Sec. 4.

BPTT of a spiking network splits the gradient of the loss into a *spatial* part (through the spikes and
the readout of the same step) and a *temporal* part (through the membrane, the synaptic current, the
recurrent spikes and the readout's leak to later steps). SLTT keeps the spatial part only (``u`` the
membrane, ``s`` the spikes, ``s_pre`` the presynaptic activity)::

    d L / d W  ~=  sum_t  (d l_t / d s[t]) (d s[t] / d u[t])  s_pre[t]^T

the gradient of the loss of step ``t`` through the spike and the readout of step ``t`` only. That is exactly
backpropagation through the **fully-detached network**: every state carried from one step to the next (the
neuron's fields, the previous spikes, the readout ``y``) is detached, so the estimate of step ``t`` is
``d l_t / d theta`` through one step from the detached state. Memory and time per step are O(1) in T.

*Read through the cell contract.* One step of a network of local form is ``I_t = W_in x_t + W_rec p_{t-1}
(+ b)`` (``p = net.presynaptic``: the previous spikes), the neuron (whose element-wise derivatives the model
gives: ``net.neuron_derivatives``, surrogate spike, reset and refractory period included) and the readout
``y_t = kappa y_{t-1} + W_out z_t + b_out``. With the previous state detached, the only paths from the
parameters to ``l_t`` are those of this step, so with ``g_y = d l_t / d y_t`` (:func:`neuro.losses.grad`)::

    d l_t / d z_t = g_y W_out                                        [B, n]   (the paper's d l_t / d s[t])
    g_I           = (d l_t / d z_t) * dz_dI                          [B, n]   (d l_t / d I_t)
    W_in:  g_I^T x_t           W_rec: g_I^T p_{t-1}
    b:     sum_B (d l_t / d z_t) * (dz_db (+ dz_dI where net.bias_in_current))
    W_out: g_y^T z_t           b_out: sum_B g_y

(``dz_db`` holds the current fixed, so a bias that is a term of the current adds ``dz_dI``.) For LIF
``dz_dI = psi vI`` (``psi`` the surrogate derivative at the membrane before firing, 0 while refractory, ``vI``
the membrane's response to the current in one step): ``g_I = vI (d l_t / d u[t])^{inst}``, the paper's term.

The equations above, step by step, are this file (``fast=False``). By default a faster computation of the same
numbers runs (:mod:`neuro.rules._fast.sltt`: ``window`` steps' outer products summed as one matrix product,
LIF's step written out), which hands over each window's sum (when ``window`` steps are pending, at ``flush``
and at ``finish``) instead of each step's term.

SLTT reads spiking networks only (``net.spiking``): on a network without spikes the same equations are
truncated BPTT with a truncation of one step (``tbptt``, ``k=1``), and the paper's case for dropping the
temporal part (it is small next to the spatial part in a spiking network, Sec. 4) does not carry over.

SLTT-K (the paper's variant for long sequences; ``train_SLTTK.py`` of qymeng94/SLTT) computes that backward pass only at
``k`` time steps per sequence drawn uniformly without replacement from the ``T`` steps of the sequence
(fields ``k`` and ``T``; the other steps run forward only, under ``torch.no_grad``). The paper's code
does not rescale: its loss is ``l_t / T`` at every step and the chosen ones are backpropagated, so
``E[SLTT-K] = (k / T) SLTT``; that is the default here (``scale=False``). ``scale=True`` multiplies the
chosen terms by ``T / k`` so that ``E[SLTT-K] = SLTT``. With ``k = T`` it is SLTT. The chosen steps are
drawn at ``init`` from a ``torch.Generator`` seeded by ``init``'s seed, then again at each ``finish`` and
``reset`` (a new sequence) from the same generator, which survives ``reset``. A sequence longer than
``T`` steps is an error (set ``T`` to the sequence length). SLTT-K takes its steps' terms by autograd
through the step (:func:`spatial_step`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["SLTT", "SLTTK", "SLTTKState", "SLTTState", "spatial_step"]

SPIKING = ("lif", "alif")


class SLTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)


class SLTTKState(NamedTuple):
    net: NamedTuple
    chosen: Tensor  # [T] bool: the steps of this sequence whose backward is computed
    gen: torch.Generator  # draws the steps (seeded by init, kept across reset)
    t: int  # steps since the sequence started


def _detach_state(state: NamedTuple) -> NamedTuple:
    return type(state)(*(s.detach() for s in state))


def _require_spikes(rule: AbstractRule) -> None:
    if not getattr(rule.net, "spiking", True):  # not a network at all: the base class says so
        raise rule._refuse(f"{rule.name.upper()} trains spiking networks (net.spiking; on one with no spikes its "
                           f"estimate is tbptt's with k=1), such as {', '.join(SPIKING)}")


def spatial_step(rule: AbstractRule, params: Params, net_state: NamedTuple, x: Tensor, y: Tensor,
                 mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor, Params]:
    """One step from the detached ``net_state`` and the gradient of its loss through that step alone, by
    autograd: (next state detached, y_hat, loss, grad), all detached."""
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        net_state, y_hat, l = rule._forward(p, net_state, x, y, mask)
        gs = torch.autograd.grad(l, list(p.values()), allow_unused=True) if l.requires_grad else [None] * len(p)
    grad = {k: (g if g is not None else torch.zeros_like(p[k])).detach() for k, g in zip(p, gs)}
    return _detach_state(net_state), y_hat.detach(), l.detach(), grad


@accelerated
@dataclasses.dataclass(frozen=True)
class SLTT(AbstractRule):
    """The spatial gradient of every step (the BPTT gradient of the fully-detached network; module docstring).
    ``fast``: the faster computation of :mod:`neuro.rules._fast.sltt` (the same numbers) or the equations
    (``False``); ``window``: its steps per window (``1``: every step's term)."""

    fast: bool = True
    window: int = 64

    name = "sltt"
    needs = Needs.LOCAL

    def __post_init__(self) -> None:
        _require_spikes(self)
        super().__post_init__()
        check_positive("window", self.window, integer=True)
        self._require_local_form()
        if not self.net.trace_fields:
            raise self._refuse("its neuron has no element-wise trace fields (neuro.contract)")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTState:
        check_positive("batch", batch, integer=True)
        return SLTTState(net=self.net.init_state(params, batch))

    def step(self, params: Params, state: SLTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        p = {k: v.detach() for k, v in params.items()}
        x = x.detach().to(p["W_in"].dtype)
        p_prev = net.presynaptic(state.net)  # what W_rec multiplies: p_{t-1}
        d = net.neuron_derivatives(p, state.net, net.current(p, state.net, x))
        ns, y_hat = net.readout(p, d.state, d.z)
        g_y = losses.grad(self.loss or "mse", y_hat, y, mask)  # d l_t / d y_t [B, n_out]
        dl_dz = g_y @ p["W_out"]  # d l_t / d z_t [B, n]
        g_I = dl_dz * d.dz_dI  # d l_t / d I_t
        dz_db = d.dz_db + d.dz_dI if net.bias_in_current else d.dz_db
        g = {"W_in": g_I.T @ x, "W_rec": g_I.T @ p_prev, "b": (dl_dz * dz_db).sum(0), "W_out": g_y.T @ d.z,
             "b_out": g_y.sum(0)}
        return StepOutput(SLTTState(net=ns), y_hat, self.loss_fn(y_hat, y, mask), {k: g[k] for k in params})


@dataclasses.dataclass(frozen=True)
class SLTTK(AbstractRule):
    """SLTT's per-step term at ``k`` random steps of each sequence of ``T`` steps (times ``T / k`` if ``scale``)."""

    k: int = 2
    T: int = 6
    scale: bool = False

    name = "sltt-k"
    needs = Needs.LOCAL
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        _require_spikes(self)
        super().__post_init__()
        self._require_local_form()
        check_positive("k", self.k, integer=True)
        check_positive("T", self.T, integer=True)
        if self.k > self.T:
            raise ValueError(f"k={self.k!r} is invalid: must be <= T={self.T!r} (k steps of T are chosen)")
        if not isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} is invalid: expected True or False")

    def check_run(self, params: Params, batch: int, sequence: int, where: str = "") -> None:
        """Refuse sequences longer than ``T`` (the steps are drawn among ``T`` per sequence)."""
        if sequence > self.T:
            raise ValueError(f"rule 'sltt-k' option T={self.T} is shorter than the sequences of this run ({sequence} "
                             f"steps{f': {where}' if where else ''}): set T={sequence} (rule option T; k={self.k} of "
                             f"its steps are drawn per sequence)")

    def _draw(self, gen: torch.Generator) -> Tensor:
        chosen = torch.zeros(self.T, dtype=torch.bool)
        chosen[torch.randperm(self.T, generator=gen)[: self.k]] = True
        return chosen

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTKState:
        gen = torch.Generator()
        gen.manual_seed(seed)
        return SLTTKState(net=self.net.init_state(params, batch), chosen=self._draw(gen), gen=gen, t=0)

    def step(self, params: Params, state: SLTTKState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if state.t >= self.T:
            raise ValueError(f"rule 'sltt-k' got step {state.t + 1} of a sequence but T={self.T}: set T to the "
                             "sequence length (k steps are drawn among T per sequence)")
        if bool(state.chosen[state.t]):
            net_state, y_hat, l, grad = spatial_step(self, params, state.net, x, y, mask)
            if self.scale:
                grad = {key: g * (self.T / self.k) for key, g in grad.items()}
        else:
            with torch.no_grad():
                net_state, y_hat, l = self._forward({k: v.detach() for k, v in params.items()}, state.net, x, y, mask)
            grad = None
        return StepOutput(state._replace(net=net_state, t=state.t + 1), y_hat, l, grad)

    def finish(self, params: Params, state: SLTTKState) -> tuple[SLTTKState, Params | None]:
        return state._replace(chosen=self._draw(state.gen), t=0), None

    def reset(self, params: Params, state: SLTTKState) -> SLTTKState:
        return SLTTKState(net=self.net.init_state(params, state.net[0].shape[0]), chosen=self._draw(state.gen),
                          gen=state.gen, t=0)
