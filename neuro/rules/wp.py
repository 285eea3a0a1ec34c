"""Weight perturbation (WP) for recurrent networks, as the baseline of Garcia Fernandez, Keemink & van
Gerven 2024, "Gradient-free training of recurrent neural networks using random perturbations"
(arXiv:2405.08967, code jesusgf96/NP_RNNs; WP itself: Jabri & Flower 1992, Cauwenberghs 1993).

A clean copy of the network runs with ``theta``, and ``samples`` perturbed copies with ``theta + xi_k``,
``xi_k ~ N(0, sigma^2 I)`` over every parameter the loss trains (not ``net.fixed_params`` or
``net.local_params``), on the same input, each keeping its own state. With
``L_t`` and ``L~_{k,t}`` the clean and perturbed per-step losses (the mean over the batch, which shares the
perturbation)::

    g_t = mean_k (L~_{k,t} - L_t) xi_k / sigma^2                   (returned; the optimizer applies -eta g_t)

Normalisation (pinned): ``1 / sigma^2``, so that ``E[g_t] -> dL_t/dtheta`` as ``sigma -> 0`` (the public code
divides by ``sigma``, which leaves a factor ``sigma`` to the learning rate). ``resample`` decides when a new
``xi`` is drawn:

* ``"sequence"`` (default): once per sequence (at ``init`` and ``reset``) and held. Then the perturbed copy
  is the network with weights ``theta + xi`` from the sequence's start, ``L~_{k,t} - L_t`` is the finite
  difference of the per-step loss along ``xi`` (through time), and summed over a sequence with frozen
  parameters ``sum_t g_t = (L(theta + xi) - L(theta)) xi / sigma^2``: the forward difference, which tends
  to the central difference ``(L(theta + xi) - L(theta - xi)) / 2  xi / sigma^2`` as ``sigma -> 0`` (the
  tests' oracle), and whose mean over ``xi`` tends to BPTT's gradient.
* ``"step"``: a new ``xi`` every step (the public code's), the perturbed copies keeping their state, so
  the earlier perturbations are still in it; the expected estimate is the gradient through the current
  step only (that of 1-step truncated BPTT).

Acts through the network's step alone (``net.step``, or a backend's ``forward``, see
:mod:`neuro.rules.node`; only its ``state`` and ``y`` are used), so it supports every model. The current perturbations are kept in the state
(``xi``, one entry per sample). On a sparse network (:mod:`neuro.connectivity`; a stack of layers included)
``xi`` is drawn on every entry, but an entry off its mask never reaches the forward pass (the current reads
``W * mask``) and the estimate is masked (:class:`~neuro.rules.base.AbstractRule`): summed over a sequence it
is the masked forward difference ``(L(theta + xi) - L(theta)) mask * xi / sigma^2`` (tested). Cost per step: ``1 + samples`` forward passes (the samples in a loop, as each
has its own weights), no backward pass.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_choice, check_positive

from ._common import gaussian, new_generator
from .base import AbstractRule, Needs, StepOutput
from .node import Forward, check_forward, check_samples, check_sigma, per_sample_loss

__all__ = ["RESAMPLE", "WeightPerturbation", "WPState"]

RESAMPLE = ("sequence", "step")


class WPState(NamedTuple):
    net: NamedTuple  # the clean network's state [B]
    noisy: tuple  # the perturbed copies' states, one per sample, each [B]
    xi: tuple  # the perturbations: per sample, a tuple of one tensor per parameter (params' order and shapes)
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


@dataclasses.dataclass(frozen=True)
class WeightPerturbation(AbstractRule):
    """WP (module docstring). ``sigma``: the perturbation's standard deviation; ``samples``: perturbed
    copies, averaged; ``resample``: ``"sequence"`` or ``"step"``; ``forward``: a backend's forward function."""

    sigma: float = 1e-3
    samples: int = 1
    resample: str = "sequence"
    forward: Forward | None = None

    name = "wp"
    needs = Needs.LOSS
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sigma(self.sigma)
        check_samples(self.samples)
        check_choice("resample", self.resample, RESAMPLE)
        check_forward(self.forward)

    def _step(self, params: Params, state: NamedTuple, x: Tensor) -> tuple[NamedTuple, Tensor]:
        """One step of the network with ``params``: (state, y)."""
        if self.forward is None:
            return self.net.step(params, state, x)
        p = self.forward(params, state, x, None, None)
        return p.state, p.y

    def _draw(self, params: Params, gen: torch.Generator) -> tuple:
        """``samples`` perturbations ``xi_k ~ N(0, sigma^2 I)``, each a tuple in ``params``' order; 0 for the
        parameters the loss does not train (``net.fixed_params``, ``net.local_params``)."""
        held = self.net.held_params
        return tuple(tuple(torch.zeros_like(v) if k in held else gaussian(gen, tuple(v.shape), self.sigma, v)
                           for k, v in params.items()) for _ in range(self.samples))

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> WPState:
        return self._fresh(params, batch, new_generator(seed))

    def _fresh(self, params: Params, batch: int, gen: torch.Generator) -> WPState:
        check_positive("batch", batch, integer=True)
        net = self.net.init_state(params, batch)
        return WPState(net=net, noisy=tuple(net for _ in range(self.samples)), xi=self._draw(params, gen),
                       gen=gen, t=0)

    def reset(self, params: Params, state: WPState) -> WPState:
        """Back to rest; a new perturbation is drawn from the kept generator."""
        return self._fresh(params, state.net[0].shape[0], state.gen)

    def step(self, params: Params, state: WPState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        loss = self.loss or "mse"
        B = x.shape[0]
        with torch.no_grad():
            params = {k: v.detach() for k, v in params.items()}
            xi = self._draw(params, state.gen) if self.resample == "step" and state.t > 0 else state.xi
            s, y_hat = self._step(params, state.net, x)  # the clean network, theta
            l = per_sample_loss(loss, y_hat, y, mask).sum() / B  # L_t
            grad = {k: torch.zeros_like(v) for k, v in params.items()}
            noisy = []
            for xi_k, s_k in zip(xi, state.noisy):  # the perturbed copies, theta + xi_k
                s_k, y_k = self._step({k: v + e for (k, v), e in zip(params.items(), xi_k)}, s_k, x)
                noisy.append(s_k)
                c = (per_sample_loss(loss, y_k, y, mask).sum() / B - l) / (self.sigma ** 2 * self.samples)
                for k, e in zip(grad, xi_k):  # g_t += (L~_{k,t} - L_t) xi_k / (sigma^2 K)
                    grad[k] += c * e
        out = WPState(net=s, noisy=tuple(noisy), xi=xi, gen=state.gen, t=state.t + 1)
        return StepOutput(out, y_hat.detach(), l.detach(), grad)
