"""Shared machinery of the perturbation rules (``wp``, ``np``, ``anp``, ``anp-time``): forward passes with
noise, per-sample losses, and the outer products that turn a node signal into weight estimates.

Garcia Fernandez, Keemink & van Gerven 2024, "Gradient-free training of recurrent neural networks using
random perturbations" (arXiv:2405.08967; code jesusgf96/NP_RNNs); Dalm et al. 2023 (activity-based node
perturbation, code artcogsys/decorbp). These rules need a forward function and a scalar loss per step,
nothing else (``needs = LOSS``): they never call autograd, so they train a network simulated by any backend.

The forward protocol (what a backend implements)
------------------------------------------------
A rule calls ``forward(params, state, x, xi_h, xi_y) -> Pass(state, y, h, a, z)``: one step of the network
from ``state`` on the input ``x`` [M, n_in] (M rows: sequences, or sequences times noise samples), with

* ``xi_h`` [M, n_cur] or ``None``: noise added to the hidden pre-activations ``i_t = current(params, state,
  x)`` (the synaptic currents: ``W_in x_t + W_rec z_{t-1} (+ b)``; for LIF/ALIF the input current ``I_t``);
* ``xi_y`` [M, n_out] or ``None``: noise added to the output pre-activation ``a_t = W_out z_t + b_out``.

It returns the new state (with the noise's effect: a noisy copy keeps its own state), the output ``y``
[M, n_out], ``h = i_t + xi_h`` [M, n_cur], ``a = a_t + xi_y`` [M, n_out] (``None`` for a network without
``W_out``/``b_out``) and the hidden output ``z_t`` [M, n_hidden]. Nothing returned may carry an autograd
graph. :class:`TorchForward` is the default: ``current -> (+ xi_h) -> neuron -> readout (+ xi_y)`` under
``torch.no_grad()``. For a leaky readout (LIF: ``y_t = kappa y_{t-1} + a_t``) the output noise is added to
``y_t`` and written back into ``state.y``, which is the same as adding it to ``a_t``. A Brian2 or Lava
backend passes its own function as the rule's ``forward=`` option; the weights estimates then need
only the returned ``h``, ``a``, ``z`` and the input ``x``.

Node rules (np, anp, anp-time) turn a per-row node signal ``e_h`` [M, n_cur], ``e_y`` [M, n_out] into
estimates with the presynaptic activity of the clean network (``x_t`` for ``W_in``, ``z_{t-1}`` for
``W_rec``, ``1`` for ``b``, ``z_t`` for ``W_out``, ``1`` for ``b_out``), averaged over the M rows. They
support the models whose current is ``W_in x + W_rec z_{t-1} (+ b)`` with a ``W_out z + b_out`` readout
(:data:`NODE_MODELS`). In LIF and ALIF ``b`` is a bias of the membrane equation, not of the current the
noise is added to, so node rules give it a zero estimate (train it with ``wp`` or leave it fixed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["AbstractNodeRule", "BIAS_IN_CURRENT", "NODE_MODELS", "NodeState", "Pass", "TorchForward", "check_samples",
           "check_sigma", "gaussian", "new_generator", "node_estimate", "per_sample_loss", "repeat"]

#: models whose current is W_in x + W_rec z_{t-1} (+ b) and whose readout is W_out z + b_out (+ leak)
NODE_MODELS = ("rate", "lstm", "lif", "alif")
#: of those, the models whose bias b is inside the current (rate, lstm); in lif/alif b is in the neuron
BIAS_IN_CURRENT = ("rate", "lstm")


class Pass(NamedTuple):
    """One forward step (see the module docstring): M rows."""

    state: NamedTuple  # the network state after the step
    y: Tensor  # [M, n_out] the output
    h: Tensor  # [M, n_cur] the hidden pre-activation, noise included
    a: Tensor | None  # [M, n_out] the output pre-activation W_out z + b_out, noise included
    z: Tensor  # [M, n_hidden] the hidden output


Forward = Callable[[Params, NamedTuple, Tensor, "Tensor | None", "Tensor | None"], Pass]


@dataclasses.dataclass(frozen=True)
class TorchForward:
    """The torch forward function of ``net`` (the protocol in the module docstring)."""

    net: AbstractNetwork

    @torch.no_grad()
    def __call__(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
                 xi_y: Tensor | None = None) -> Pass:
        net = self.net
        h = net.current(params, state, x)
        if xi_h is not None:
            h = h + xi_h
        state, z = net.neuron(params, state, h)
        state, y = net.readout(params, state, z)
        a = None
        if "W_out" in params and "b_out" in params:
            a = z @ params["W_out"].T + params["b_out"]
        if xi_y is not None:
            y = y + xi_y
            a = None if a is None else a + xi_y
            if "y" in getattr(state, "_fields", ()):  # a leaky readout integrates the noisy output
                state = state._replace(y=y)
        return Pass(state, y, h, a, z)


def new_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer")
    return torch.Generator().manual_seed(seed)


def gaussian(gen: torch.Generator, shape: tuple[int, ...], sigma: float, like: Tensor) -> Tensor:
    """``N(0, sigma^2)`` entries [shape], drawn on the CPU in float64 from ``gen`` (a seed gives the same
    numbers in every dtype and on every device), in the dtype and on the device of ``like``."""
    return (sigma * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype=like.dtype, device=like.device)


def check_sigma(sigma: Any) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is invalid: the noise's standard deviation must be a finite number > 0")


def check_samples(samples: Any) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} is invalid: the number of noise samples must be an integer >= 1")


def repeat(obj: Any, k: int) -> Any:
    """Each row of every tensor in ``obj`` (a tensor or a NamedTuple of tensors) repeated ``k`` times in a
    row: row ``b`` becomes rows ``b k .. b k + k - 1``."""
    if k == 1:
        return obj
    if isinstance(obj, Tensor):
        return obj.repeat_interleave(k, dim=0)
    return type(obj)(*(repeat(v, k) for v in obj))


def per_sample_loss(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """The masked loss of each row [M] (``losses.per_sample``): ``ValueError`` unless it is one scalar per
    row and step (e.g. a forward function that returned an output of the wrong shape)."""
    if y_hat.shape != y.shape:
        raise ValueError(f"the forward pass gave an output of shape {tuple(y_hat.shape)} for a target of shape "
                         f"{tuple(y.shape)}: the loss must be one scalar per sample and step")
    l = losses.per_sample(loss)(y_hat, y)
    if l.shape != mask.shape:
        raise ValueError(f"loss {loss!r} gave shape {tuple(l.shape)} per step; expected one scalar per sample "
                         f"{tuple(mask.shape)}")
    return l * mask.to(l.dtype)


def node_estimate(net: AbstractNetwork, params: Params, e_h: Tensor, e_y: Tensor, x: Tensor, z_prev: Tensor,
                  z: Tensor) -> Params:
    """``dW = mean_m e_m pre_m^T`` for each weight, from the node signals ``e_h`` [M, n_cur], ``e_y``
    [M, n_out] and the clean presynaptic activity ``x`` [M, n_in], ``z_prev`` [M, n_hidden] (``z_{t-1}``),
    ``z`` [M, n_hidden] (``z_t``). Keys and order of ``params``; ``b`` is 0 where it is not in the current."""
    M = e_h.shape[0]
    out = {
        "W_in": e_h.T @ x / M,
        "W_rec": e_h.T @ z_prev / M,
        "b": e_h.mean(0) if net.name in BIAS_IN_CURRENT else torch.zeros_like(params["b"]),
        "W_out": e_y.T @ z / M,
        "b_out": e_y.mean(0),
    }
    return {k: out[k].to(params[k].dtype) for k in params}


# -- the node rules' common step ---------------------------------------------------------------------------------


class NodeState(NamedTuple):
    net: NamedTuple  # the clean network's state [B]
    noisy: NamedTuple | None  # the noisy copies' own state [B * samples] (None when restarted every step)
    z_prev: Tensor  # [B, n_hidden] the clean z_{t-1} (presynaptic for W_rec)
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


@dataclasses.dataclass(frozen=True)
class AbstractNodeRule(AbstractRule):
    """A clean copy and ``samples`` noisy copies per sequence run on the same input; the noisy ones get
    ``N(0, sigma^2)`` on the hidden and output pre-activations at every step. Subclasses set
    ``keep_noisy_state`` (the noisy copies keep their own state, or restart from the clean state every
    step) and :meth:`signal` (the node signals from the loss difference). ``forward``: the forward function
    (module docstring; default :class:`TorchForward`)."""

    sigma: float = 1e-3
    samples: int = 1
    forward: Forward | None = None

    needs = Needs.LOSS
    supports = NODE_MODELS
    stochastic = True
    _kept_on_reset = ("gen",)
    #: the noisy copies keep their own state (np, anp-time) or restart from the clean state every step (anp)
    keep_noisy_state: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sigma(self.sigma)
        check_samples(self.samples)
        if self.forward is not None and not callable(self.forward):
            raise ValueError(f"forward={self.forward!r} is invalid: expected a function "
                             "(params, state, x, xi_h, xi_y) -> Pass (see neuro.rules._perturb)")

    @property
    def fwd(self) -> Forward:
        return self.forward if self.forward is not None else TorchForward(self.net)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NodeState:
        check_positive("batch", batch, integer=True)
        net = self.net.init_state(params, batch)
        noisy = repeat(net, self.samples) if self.keep_noisy_state else None
        p = next(iter(params.values()))
        z0 = torch.zeros(batch, self.net.n_hidden, dtype=p.dtype, device=p.device)
        return NodeState(net=net, noisy=noisy, z_prev=z0, gen=new_generator(seed), t=0)

    def signal(self, dl: Tensor, xi_h: Tensor, xi_y: Tensor, dh: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
        """The node signals (e_h [M, n_cur], e_y [M, n_out]) from the loss difference ``dl`` [M], the noise
        and the activity differences (noisy minus clean pre-activations)."""
        raise NotImplementedError

    def step(self, params: Params, state: NodeState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        K = self.samples
        with torch.no_grad():
            params = {k: v.detach() for k, v in params.items()}
            fwd = self.fwd
            clean = fwd(params, state.net, x, None, None)
            M = x.shape[0] * K
            xi_h = gaussian(state.gen, (M, clean.h.shape[1]), self.sigma, clean.h)
            xi_y = gaussian(state.gen, (M, clean.y.shape[1]), self.sigma, clean.y)
            start = state.noisy if self.keep_noisy_state else repeat(state.net, K)
            noisy = fwd(params, start, repeat(x, K), xi_h, xi_y)
            l = per_sample_loss(self.loss or "mse", clean.y, y, mask)
            l_noisy = per_sample_loss(self.loss or "mse", noisy.y, repeat(y, K), repeat(mask, K))
            dl = l_noisy - repeat(l, K)
            e_h, e_y = self.signal(dl, xi_h, xi_y, noisy.h - repeat(clean.h, K), noisy.a - repeat(clean.a, K))
            grad = node_estimate(self.net, params, e_h, e_y, repeat(x, K), repeat(state.z_prev, K), repeat(clean.z, K))
        out = NodeState(net=clean.state, noisy=noisy.state if self.keep_noisy_state else None, z_prev=clean.z,
                        gen=state.gen, t=state.t + 1)
        return StepOutput(out, clean.y.detach(), (l.sum() / x.shape[0]).detach(), grad)
