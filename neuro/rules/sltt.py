"""Spatial learning through time (SLTT) and SLTT-K: Meng, Xiao, Yan, Wang, Lin & Luo 2023, "Towards
Memory- and Time-Efficient Backpropagation for Training Spiking Neural Networks", ICCV (arXiv:2302.14311).

BPTT of a spiking network splits the gradient of the loss into a *spatial* part (through the spikes and
the readout of the same step) and a *temporal* part (through the membrane, the synaptic current, the
recurrent spikes and the readout's leak to later steps). SLTT keeps the spatial part only (with ``u`` the
membrane before firing, ``s`` the presynaptic activity)::

    d L / d W  ~=  sum_t  (d l_t / d u_t)^{inst}  s_t^T

where ``(d l_t / d u_t)^{inst}`` is the gradient of the loss of step ``t`` through the spike and the
readout of step ``t`` only. Here that is *exactly* backpropagation through the **fully-detached
network**: every state carried from one step to the next (``v, i, z, r`` of the neuron, ALIF's ``a``,
the readout ``y``) is detached, so the per-step estimate is ``d l_t / d theta`` through one step from
the detached state. For our LIF that means: ``W_in`` gets ``g_I x_t^T`` and ``W_rec`` gets
``g_I z_{t-1}^T`` (``g_I = d l_t / d I_t``, one step of the sub-threshold update deep, e.g. ``kappa
d l_t / d v~_t`` for ``dynamics="exact"``), ``b`` its instantaneous gradient, ``W_out`` and ``b_out``
``(d l_t / d y_t) z_t^T`` and ``d l_t / d y_t`` (the readout's leak is a temporal path too). Memory and
time per step are O(1) in T: nothing but the network state (and the window below) is kept.

SLTT-K (the paper's variant for long sequences; ``train_SLTTK.py`` of qymeng94/SLTT) computes that backward pass only at
``k`` time steps per sequence drawn uniformly without replacement from the ``T`` steps of the sequence
(fields ``k`` and ``T``; the other steps run forward only, under ``torch.no_grad``). The paper's code
does not rescale: its loss is ``l_t / T`` at every step and the chosen ones are backpropagated, so
``E[SLTT-K] = (k / T) SLTT``; that is the default here (``scale=False``). ``scale=True`` multiplies the
chosen terms by ``T / k`` so that ``E[SLTT-K] = SLTT``. With ``k = T`` it is SLTT. The chosen steps are
drawn at ``init`` from a ``torch.Generator`` seeded by ``init``'s seed, then again at each ``finish`` and
``reset`` (a new sequence) from the same generator, which survives ``reset``. A sequence longer than
``T`` steps is an error (set ``T`` to the sequence length).

*The window* (SLTT). Every step's ``W_in``/``W_rec`` term is an outer product ``g_I [x_t, z_{t-1}]^T``; written
out at every step (as autograd does) it costs more than the forward pass. With ``window = W > 1`` the rule
keeps each step's factors (``g_I`` [B, n], ``x_t``, ``z_{t-1}``, the small bias and readout terms) and sums the
window as one matrix product ``[n, W B] @ [W B, n_in + n]``, returned when ``W`` steps are pending and at
:meth:`SLTT.flush` (an update is due) and :meth:`SLTT.finish`. The local errors are then written out
(:func:`local_errors`: ``g_I = vI (g_y W_out) psi``, the surrogate derivative ``psi``, no autograd). Summed,
the estimates equal those of ``window=1`` (autograd through each step, the reference path) up to rounding.

Both rules need LOCAL information: one step's element-wise derivatives (taken by autograd through one
step, no graph is kept between steps). Supported models: ``lif`` and ``alif``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params, check_positive

from ._common import outer_sum
from ._spiking import fire
from .base import AbstractRule, Needs, StepOutput

__all__ = ["SLTT", "SLTTK", "SLTTKState", "SLTTState", "local_errors", "spatial_step"]

SPIKING = ("lif", "alif")


class SLTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    buf: tuple = ()  # window > 1: ``window`` entries (g_I, x, z_prev, g_b, g_y, z); the first ``k`` are pending
    k: int = 0  # steps pending in the window


class SLTTKState(NamedTuple):
    net: NamedTuple
    chosen: Tensor  # [T] bool: the steps of this sequence whose backward is computed
    gen: torch.Generator  # draws the steps (seeded by init, kept across reset)
    t: int  # steps since the sequence started


def _detach_state(state: NamedTuple) -> NamedTuple:
    return type(state)(*(s.detach() for s in state))


def _check_spiking(rule: AbstractRule) -> None:
    if not getattr(rule.net, "spiking", True):  # not a network at all: the base class says so
        raise ValueError(f"rule {rule.name!r} does not support model {rule.net.name!r}: {rule.name.upper()} trains "
                         f"spiking networks (a membrane and spikes; a rate net has no spikes); it supports "
                         f"{', '.join(SPIKING)}")


def spatial_step(rule: AbstractRule, params: Params, net_state: NamedTuple, x: Tensor, y: Tensor,
                 mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor, Params]:
    """One step from the detached ``net_state`` and the gradient of its loss through that step alone:
    (next state detached, y_hat, loss, grad), all detached."""
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        net_state, y_hat, l = rule._forward(p, net_state, x, y, mask)
        gs = torch.autograd.grad(l, list(p.values()), allow_unused=True) if l.requires_grad else [None] * len(p)
    grad = {k: (g if g is not None else torch.zeros_like(p[k])).detach() for k, g in zip(p, gs)}
    return _detach_state(net_state), y_hat.detach(), l.detach(), grad


def local_errors(net: AbstractNetwork, loss: str, params: Params, state: NamedTuple, I: Tensor, y: Tensor,
                 mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step of ``lif``/``alif`` from the detached ``state`` driven by the synaptic input ``I`` [B, n], and the
    instantaneous errors of its loss through this step alone, written out (no autograd)::

        g_y = d l_t / d y_t                                              [B, n_out]
        g_v = d l_t / d v~_t = (g_y W_out) psi(v~_t; A_t) [r_{t-1} = 0]   [B, n]

    (``psi``: the surrogate derivative of the spike at the membrane before firing ``v~_t``, held at ``v_reset``
    during a refractory period, and the threshold ``A_t``: ``v_th``, ALIF's ``v_th + beta_a a_{t-1}``).
    ``d l_t / d I_t = vI g_v`` and ``d l_t / d b = vb sum_B g_v`` (``net.subthreshold()``). Returns
    (state, z_t, y_t, l_t, g_v, g_y), all detached. The tests check it against autograd through the step."""
    with torch.no_grad():
        new, z, _, _, psi, _ = fire(net, params, state, I)
        new, y_hat = net.readout(params, new, z)
        l = losses.get(loss)(y_hat, y, mask)
        g_y = losses.grad(loss, y_hat, y, mask)
        g_v = (g_y @ params["W_out"]) * psi
    return new, z, y_hat, l, g_v, g_y


@dataclasses.dataclass(frozen=True)
class SLTT(AbstractRule):
    """The spatial gradient of every step (the BPTT gradient of the fully-detached network). ``window``: steps
    whose outer products are summed as one matrix product (module docstring; ``1``: every step's gradient by
    autograd through the step, the reference path)."""

    window: int = 64

    name = "sltt"
    needs = Needs.LOCAL
    supports = SPIKING

    def __post_init__(self) -> None:
        _check_spiking(self)
        super().__post_init__()
        check_positive("window", self.window, integer=True)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTState:
        net_state = self.net.init_state(params, batch)
        buf = ()
        if self.window > 1:  # placeholders (never read), so that the state's structure does not change
            z = net_state.z
            x0 = z.new_zeros(batch, self.net.n_in)
            buf = ((z, x0, z, z.new_zeros(z.shape[1]), net_state.y, z),) * self.window
        return SLTTState(net=net_state, buf=buf, k=0)

    def step(self, params: Params, state: SLTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if self.window == 1:
            net_state, y_hat, l, grad = spatial_step(self, params, state.net, x, y, mask)
            return StepOutput(state._replace(net=net_state), y_hat, l, grad)
        c = self.net.subthreshold()
        ns = state.net
        with torch.no_grad():  # params are only read: no graph, no detached copies needed
            x = x.to(ns.z.dtype, copy=True)  # kept in the window: a copy, whatever the caller does with x
            I = self.net.current(params, ns, x)
        new, z, y_hat, l, g_v, g_y = local_errors(self.net, self.loss or "mse", params, ns, I, y, mask)
        entry = (g_v * c.vI, x, ns.z, g_v.sum(0) * c.vb, g_y, z)
        buf, k = state.buf[:state.k] + (entry,) + state.buf[state.k + 1:], state.k + 1
        state = SLTTState(net=new, buf=buf, k=k)
        grad = None
        if k == self.window:
            state, grad = self.flush(params, state)
        return StepOutput(state, y_hat, l, grad)

    def flush(self, params: Params, state: SLTTState) -> tuple[SLTTState, Params | None]:
        """The pending window's estimate: ``W_in: G^T X``, ``W_rec: G^T Z_prev`` (``G`` the window's ``g_I``
        stacked [W B, n]), the biases and the readout likewise."""
        if state.k == 0:
            return state, None
        with torch.no_grad():
            G, X, Zp, Gb, Gy, Z = (torch.cat(col) if state.k > 1 else col[0]
                                   for col in zip(*state.buf[:state.k]))
            g = {"W_in": G.T @ X, "W_rec": outer_sum(G, Zp), "b": Gb.reshape(state.k, -1).sum(0), "W_out": Gy.T @ Z,
                 "b_out": Gy.sum(0)}
            grad = {k: g[k].to(v.dtype) for k, v in params.items()}
        return state._replace(k=0), grad

    def finish(self, params: Params, state: SLTTState) -> tuple[SLTTState, Params | None]:
        return self.flush(params, state)


@dataclasses.dataclass(frozen=True)
class SLTTK(AbstractRule):
    """SLTT's per-step term at ``k`` random steps of each sequence of ``T`` steps (times ``T / k`` if ``scale``)."""

    k: int = 2
    T: int = 6
    scale: bool = False

    name = "sltt-k"
    needs = Needs.LOCAL
    supports = SPIKING
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        _check_spiking(self)
        super().__post_init__()
        check_positive("k", self.k, integer=True)
        check_positive("T", self.T, integer=True)
        if self.k > self.T:
            raise ValueError(f"k={self.k!r} is invalid: must be <= T={self.T!r} (k steps of T are chosen)")
        if not isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} is invalid: expected True or False")

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
