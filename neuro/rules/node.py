"""The node rules' shared definition (``np``, ``anp``, ``anp-time``) and the forward protocol of the
perturbation rules (``wp`` too).

Node perturbation: Williams 1992 (REINFORCE with Gaussian units), Fiete & Seung 2006 (node perturbation in
a recurrent network); activity-based node perturbation: Dalm, van Gerven & Ahmad 2023 (arXiv:2310.00965,
code artcogsys/decorbp); in time: Garcia Fernandez, Keemink & van Gerven 2024, "Gradient-free training of
recurrent neural networks using random perturbations" (arXiv:2405.08967, code jesusgf96/NP_RNNs). These
rules need a forward function and a scalar loss per step, nothing else (``needs = LOSS``): they never call
autograd, so they train a network simulated by any backend.

The forward protocol (what a backend implements)
------------------------------------------------
``forward(params, state, x, xi_h, xi_y) -> Pass(state, y, h, a, z)``: one step of the network from
``state`` on the input ``x`` [M, n_in] (M rows: sequences, or sequences times noise samples), with

* ``xi_h`` [M, n_cur] or ``None``: noise added to the current ``I_t = net.current(params, state, x)``
  (``W_in x_t + W_rec p_{t-1} (+ b)``);
* ``xi_y`` [M, n_out] or ``None``: noise added to the output pre-activation ``a_t = W_out z_t + b_out``.

It returns the new state (with the noise's effect: a noisy copy keeps its own state), the output ``y``
[M, n_out], ``h = I_t + xi_h`` [M, n_cur], ``a = a_t + xi_y`` [M, n_out] (``None`` for a model without
``local_form``) and the hidden output ``z_t`` [M, n_hidden]. Nothing returned may carry an autograd graph.
:class:`TorchForward` is the default. For a leaky readout (``y_t = readout_decay y_{t-1} + a_t``) the
output noise is added to ``y_t`` and written back as the readout's memory (``net.with_output``), which is
the same as adding it to ``a_t``. A Brian2 or Lava backend passes its own function as the rule's
``forward=`` option.

The node rules' step
--------------------
A clean network and ``K = samples`` noisy copies per sequence run on the same input ``x_t``; ``p_{t-1} =
net.presynaptic(s_{t-1})`` is what ``W_rec`` reads in the clean network::

    I_t  = W_in x_t + W_rec p_{t-1} (+ b)                        clean current (b: if bias_in_current)
    I~_t = W_in x_t + W_rec p~_{t-1} (+ b) + xi_h,   xi_h ~ N(0, sigma^2 I)
    a_t  = W_out z_t + b_out,   a~_t = W_out z~_t + b_out + xi_y,   xi_y ~ N(0, sigma^2 I)
    y_t  = readout_decay y_{t-1} + a_t                            (the noisy copies: y~ from a~)
    dL_t = L(y~_t) - L(y_t)                                       per sequence and sample
    e_h, e_y = signal(dL_t, xi_h, xi_y, I~_t - I_t, a~_t - a_t)   the rule's node signal
    dW_in = e_h x_t^T,  dW_rec = e_h p_{t-1}^T,  db = e_h,  dW_out = e_y z_t^T,  db_out = e_y

averaged over the ``B K`` rows. ``db`` is 0 where ``b`` is a term of the neuron rather than of the current
(LIF, ALIF: the noise is on the current; train it with ``wp`` or leave it fixed). The noisy copies keep
their own state (``keep_noisy_state``: np, anp-time) or restart from the clean state every step (anp).
The rules refuse a model without ``local_form`` (``neuro.contract``) unless it is a stack of layers of
``local_form`` (below). Faster computations of the same numbers (the clean and noisy passes sharing their
products, a window of steps summed as one matrix product) are in :mod:`neuro.rules._fast.node`.

Layers (a stack, :class:`models.stack.Stack`)
----------------------------------------------
The same step with noise on every layer's current, as the papers perturb every layer of a deep network
(Dalm et al. 2023 and Garcia Fernandez et al. 2024 write the update of each layer ``l`` as ``dW_l =
signal_l x_{l-1}^T``, with the layer's own presynaptic vector). For layers ``l = 1..L`` of a stack
(``u^1_t = x_t``, ``u^l_t = z^{l-1}_t`` the layer below's output of the same step, with ``x_t`` after it
where the stack has skip connections)::

    I^l_t  = W^l_in u^l_t  + W^l_rec p^l_{t-1}  (+ b^l)
    I~^l_t = W^l_in u~^l_t + W^l_rec p~^l_{t-1} (+ b^l) + xi^l_h,     xi^l_h ~ N(0, sigma^2 I)
    a_t    = W_out z^L_t + b_out  (skip: all layers' z_t),  a~_t likewise + xi_y
    e^1_h, .., e^L_h, e_y = signal(dL_t, xi_h, xi_y, I~_t - I_t, a~_t - a_t)
    dW^l_in = e^l_h u^l_t^T,  dW^l_rec = e^l_h p^l_{t-1}^T,  db^l = e^l_h,  dW_out = e_y z^L_t^T,  db_out = e_y

with the clean ``u^l_t``, ``p^l_{t-1}``; ``dh^l = I~^l_t - I^l_t`` is layer ``l``'s whole current's
difference: its own noise plus the propagated effect of the noise of the layers below (within the step)
and of earlier steps (noisy copies that keep their state). The stack's ``current`` is each layer's part
known before the step and its ``neuron`` adds ``W^l_in z^{l-1}_t``, so the noise added to the stack's
current (one draw of ``[M, n_cur + n_out]`` as for one layer, layer ``l`` reading its columns
``net.current_slices[l]``) is noise on every layer's whole current; :class:`TorchForward` returns as ``h``
every layer's whole current side by side. A single network is the case ``L = 1`` of these equations (its
numbers are unchanged). The fast paths cover single networks only; a stack runs the definition.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params, check_positive

from ._common import gaussian, new_generator
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["AbstractNodeRule", "Forward", "Layer", "NodeState", "Pass", "TorchForward", "check_forward",
           "check_samples", "check_sigma", "layers", "node_estimate", "node_noise", "per_sample_loss", "presynaptic",
           "readout_units", "repeat", "whole_current"]


class Pass(NamedTuple):
    """One forward step (the protocol in the module docstring): M rows."""

    state: NamedTuple  # the network state after the step
    y: Tensor  # [M, n_out] the output
    h: Tensor  # [M, n_cur] the current, noise included (a stack: every layer's whole current I^l_t)
    a: Tensor | None  # [M, n_out] the output pre-activation W_out z + b_out, noise included
    z: Tensor  # [M, n_hidden] the hidden output


class Layer(NamedTuple):
    """One layer as the node rules read it (:func:`layers`)."""

    prefix: str  # its parameters' keys' prefix: "" for a single network, "l." in a stack
    net: AbstractNetwork  # its network (local form: presynaptic, bias_in_current)
    current: slice  # its entries of the current h [M, n_cur]
    units: slice  # its units of z [M, n_hidden]


def _stack(net: AbstractNetwork) -> bool:
    from models.stack import Stack

    return isinstance(net, Stack)


def layers(net: AbstractNetwork) -> tuple[Layer, ...]:
    """The layers of ``net`` bottom-up: a stack's (:class:`models.stack.Stack`), or the network itself as
    its one layer."""
    if _stack(net):
        return tuple(Layer(f"{l}.", m, net.current_slices[l], net.slices[l]) for l, m in enumerate(net.layers))
    return (Layer("", net, slice(None), slice(None)),)


def node_form(net: AbstractNetwork) -> bool:
    """Whether the node rules read ``net``: a model of ``local_form``, or a stack of such layers."""
    return net.local_form or (_stack(net) and all(m.local_form for m in net.layers))


def readout_units(net: AbstractNetwork) -> slice:
    """The units of ``z`` that ``W_out`` reads: all, or a stack's ``readout_units``."""
    return net.readout_units if _stack(net) else slice(None)


def presynaptic(net: AbstractNetwork, state: NamedTuple) -> Tensor:
    """``p_{t-1}`` [M, n_hidden]: what ``W_rec`` reads (``net.presynaptic``); for a stack every layer's
    ``p^l_{t-1}`` side by side."""
    if not _stack(net):
        return net.presynaptic(state)
    return torch.cat([m.presynaptic(net.layer_state(state, l)) for l, m in enumerate(net.layers)], 1)


def whole_current(net: AbstractNetwork, params: Params, i: Tensor, z: Tensor) -> Tensor:
    """Every layer's whole current ``I^l_t`` side by side [M, n_cur] from the current ``i`` that ``neuron``
    was given and the step's output ``z``: ``i`` itself for a single network; for a stack ``i`` plus each
    layer's input from the layer below (:meth:`models.stack.Stack.complete`)."""
    if not _stack(net):
        return i
    return torch.cat([net.complete(params, i, z[:, net.slices[l - 1]] if l else None, l)
                      for l in range(len(net.layers))], 1)


Forward = Callable[[Params, NamedTuple, Tensor, "Tensor | None", "Tensor | None"], Pass]


@dataclasses.dataclass(frozen=True)
class TorchForward:
    """The torch forward function of ``net`` (the protocol in the module docstring): ``current`` (+ xi_h),
    ``neuron``, ``readout`` (+ xi_y) under ``torch.no_grad()``; for a stack ``h`` is every layer's whole
    current (the noise on the stack's current is on each layer's whole current)."""

    net: AbstractNetwork

    @torch.no_grad()
    def __call__(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
                 xi_y: Tensor | None = None) -> Pass:
        net = self.net
        h = net.current(params, state, x)  # I_t = W_in x_t + W_rec p_{t-1} (+ b) (a stack: known before the step)
        if xi_h is not None:
            h = h + xi_h
        state, z = net.neuron(params, state, h)
        state, y = net.readout(params, state, z)  # y_t = readout_decay y_{t-1} + a_t
        h = whole_current(net, params, h, z)  # a stack: I^l_t, its input from the layer below added
        # a_t = W_out z_t + b_out
        a = z[:, readout_units(net)] @ params["W_out"].mT + params["b_out"] if node_form(net) else None
        if xi_y is not None:
            y = y + xi_y
            a = None if a is None else a + xi_y
            state = net.with_output(state, y)  # a leaky readout integrates the noisy output
        return Pass(state, y, h, a, z)


def check_sigma(sigma: Any) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is invalid: the noise's standard deviation must be a finite number > 0")


def check_samples(samples: Any) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} is invalid: the number of noise samples must be an integer >= 1")


def check_forward(forward: Any) -> None:
    if forward is not None and not callable(forward):
        raise ValueError(f"forward={forward!r} is invalid: expected a function (params, state, x, xi_h, xi_y) -> "
                         "Pass (see neuro.rules.node)")


def node_noise(gen: torch.Generator, M: int, n_cur: int, n_out: int, sigma: float,
               like: Tensor) -> tuple[Tensor, Tensor]:
    """One step's noise of the node rules, ``(xi_h [M, n_cur], xi_y [M, n_out])``: one :func:`gaussian` draw of
    ``[M, n_cur + n_out]`` split by columns (a backend that reproduces a rule's noise draws it so)."""
    xi = gaussian(gen, (M, n_cur + n_out), sigma, like)
    return xi[:, :n_cur], xi[:, n_cur:]


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
    if mask.dtype == torch.bool:
        return torch.where(mask, l, 0.0)  # one operation (a float mask may weight the samples: multiplied)
    return l * mask.to(l.dtype)


def node_estimate(net: AbstractNetwork, params: Params, e_h: Tensor, e_y: Tensor, x: Tensor, p: Tensor,
                  z: Tensor) -> Params:
    """``dW = mean_m e_m pre_m^T`` for each weight, from the node signals ``e_h`` [M, n_cur], ``e_y``
    [M, n_out] and the clean presynaptic activity ``x`` [M, n_in] (``x_t``), ``p`` [M, n_hidden]
    (``p_{t-1}``, :func:`presynaptic`), ``z`` [M, n_hidden] (``z_t``). Layer by layer (:func:`layers`):
    layer ``l``'s ``W_in`` reads ``u^l_t`` (``x_t``, or in a stack the layer below's ``z^{l-1}_t``), its
    ``W_rec`` ``p^l_{t-1}``, each with its columns of ``e_h``; ``W_out`` reads the readout's units of ``z_t``.
    Keys and order of ``params``; ``b`` is 0 where it is not a term of the current, and so is a parameter
    outside the current and the readout (a decorrelation layer's ``D``, learnt by the network's own rule:
    ``net.local_params``)."""
    M = e_h.shape[0]
    out, ls = {}, layers(net)
    for l, layer in enumerate(ls):
        e, k = e_h[:, layer.current], layer.prefix
        u = x if l == 0 else net.layer_input(x, z[:, ls[l - 1].units], l)  # u^l_t
        out[k + "W_in"] = e.T @ u / M
        out[k + "W_rec"] = e.T @ p[:, layer.units] / M
        out[k + "b"] = e.mean(0) if layer.net.bias_in_current else torch.zeros_like(params[k + "b"])
    out["W_out"] = e_y.T @ z[:, readout_units(net)] / M
    out["b_out"] = e_y.mean(0)
    return {k: out[k].to(params[k].dtype) if k in out else torch.zeros_like(params[k]) for k in params}


class NodeState(NamedTuple):
    net: NamedTuple  # the clean network's state [B]
    noisy: NamedTuple | None  # the noisy copies' own state [B K] (None: restarted from the clean state each step)
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset


@accelerated
@dataclasses.dataclass(frozen=True)
class AbstractNodeRule(AbstractRule):
    """The node rules' step (module docstring). Subclasses set ``keep_noisy_state`` and :meth:`signal`.
    ``sigma``: the noise's standard deviation; ``samples``: noisy copies per sequence, averaged; ``forward``:
    a backend's forward function (default :class:`TorchForward`); ``window``: steps whose outer products the
    fast path sums as one matrix product (``None``: 64 with the torch forward, 1 with a backend's, whose step
    costs far more than an outer product and whose callers may read each step's estimate); ``fast=False``:
    the definition here, an estimate every step."""

    sigma: float = 1e-3
    samples: int = 1
    forward: Forward | None = None
    window: int | None = None
    fast: bool = True

    needs = Needs.LOSS
    stochastic = True
    _kept_on_reset = ("gen",)
    #: the noisy copies keep their own state (np, anp-time) or restart from the clean state every step (anp)
    keep_noisy_state: ClassVar[bool] = True
    #: :meth:`signal` reads the activity differences ``dh``, ``da`` (anp); ``False``: they are not used
    uses_activity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if _stack(self.net) and not node_form(self.net):
            raise self._refuse(f"its layers ({self.net.layer!r}) are not of local form: current W_in u + W_rec p "
                               "(+ b), readout y_t = kappa y_(t-1) + W_out z_t + b_out (local_form)")
        if not node_form(self.net):
            self._require_local_form()  # its one-line refusal
        check_sigma(self.sigma)
        check_samples(self.samples)
        check_forward(self.forward)
        if self.window is not None:
            check_positive("window", self.window, integer=True)

    @property
    def window_size(self) -> int:
        """The window in use (``window``, or its default: 64 with the torch forward, 1 with a backend's)."""
        if self.window is not None:
            return self.window
        return 64 if self.forward is None else 1

    @property
    def fwd(self) -> Forward:
        """The forward function: ``forward``, or the torch one."""
        return self.forward if self.forward is not None else TorchForward(self.net)

    def signal(self, dl: Tensor, xi_h: Tensor, xi_y: Tensor, dh: Tensor | None,
               da: Tensor | None) -> tuple[Tensor, Tensor]:
        """The node signals (e_h [M, n_cur], e_y [M, n_out]) from the loss difference ``dl`` [M], the noise
        and the activity differences ``dh = I~ - I``, ``da = a~ - a`` (``None`` unless ``uses_activity``).
        Row by row (a fast path applies it to the rows of several steps at once)."""
        raise NotImplementedError

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NodeState:
        check_positive("batch", batch, integer=True)
        s = self.net.init_state(params, batch)
        return NodeState(net=s, noisy=repeat(s, self.samples) if self.keep_noisy_state else None,
                         gen=new_generator(seed), t=0)

    def step(self, params: Params, state: NodeState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, K, fwd, loss = self.net, self.samples, self.fwd, self.loss or "mse"
        with torch.no_grad():
            p = presynaptic(net, state.net)  # p_{t-1}, what W_rec reads in the clean network (every layer's)
            clean = fwd(params, state.net, x, None, None)
            xi_h, xi_y = node_noise(state.gen, x.shape[0] * K, clean.h.shape[1], clean.y.shape[1], self.sigma,
                                    clean.h)
            start = state.noisy if self.keep_noisy_state else repeat(state.net, K)
            noisy = fwd(params, start, repeat(x, K), xi_h, xi_y)
            l = per_sample_loss(loss, clean.y, y, mask)  # L_t per sequence [B]
            dl = per_sample_loss(loss, noisy.y, repeat(y, K), repeat(mask, K)) - repeat(l, K)  # L~_t - L_t [B K]
            dh = noisy.h - repeat(clean.h, K) if self.uses_activity else None  # I~_t - I_t
            da = noisy.a - repeat(clean.a, K) if self.uses_activity else None  # a~_t - a_t
            e_h, e_y = self.signal(dl, xi_h, xi_y, dh, da)
            grad = node_estimate(net, params, e_h, e_y, repeat(x, K), repeat(p, K), repeat(clean.z, K))
            loss_t = l.mean()
        out = NodeState(net=clean.state, noisy=noisy.state if self.keep_noisy_state else None, gen=state.gen,
                        t=state.t + 1)
        return StepOutput(out, clean.y.detach(), loss_t.detach(), grad)
