"""Activity-based node perturbation (ANP), applied step by step to a recurrent network: Dalm, van Gerven &
Ahmad 2023, "Effective learning with node perturbation in deep neural networks" (arXiv:2310.00965, code
artcogsys/decorbp), in the form that Garcia Fernandez, Keemink & van Gerven 2024 (arXiv:2405.08967, code
jesusgf96/NP_RNNs) extend to time (:mod:`neuro.rules.anp_time`).

A clean copy and ``samples`` noisy copies run on the same input; every step the noisy ones get
``N(0, sigma^2)`` on the pre-activations of the hidden (``h``: the currents ``i_t``) and output (``a_t =
W_out z_t + b_out``) units. ANP uses the *activity difference* ``dh_{l,t} = h~_{l,t} - h_{l,t}`` (noisy
minus clean pre-activation of layer ``l``) instead of the injected noise::

    dW_l = sqrt(N) (L~_t - L_t) dh_{l,t} / ||dh_{l,t}||^2  x_{l-1,t}^T      (returned; the optimizer applies -eta)

``x_{l-1,t}`` is the clean presynaptic activity (``x_t`` for ``W_in``, ``p_{t-1}`` (what ``W_rec`` reads) for
``W_rec``, ``1`` for the biases ``b`` (where it is a term of the current; a zero estimate for a bias of the
neuron, as LIF's membrane bias) and ``b_out``, ``z_t`` for ``W_out``): the step in :mod:`neuro.rules.node`,
with the node signal::

    e_h = sqrt(N) (L~_t - L_t) dh_t / ||dh_t||^2,   e_y = sqrt(N) (L~_t - L_t) da_t / ||da_t||^2

(``dh_t = I~_t - I_t``, ``da_t = a~_t - a_t``; ``norm="global"``: one norm ``||dh_t||^2 + ||da_t||^2`` for both).

In a stack of layers (:class:`models.stack.Stack`; the step's layer form in :mod:`neuro.rules.node`) every
hidden layer ``l`` has its own signal, from its whole current's difference ``dh^l_t = I~^l_t - I^l_t`` (its
noise plus that of the layers below, propagated within the step through ``W^l_in``)::

    e^l_h = sqrt(N) (L~_t - L_t) dh^l_t / ||dh^l_t||^2      (norm="layer")
    e^l_h = sqrt(N) (L~_t - L_t) dh^l_t / (sum_k ||dh^k_t||^2 + ||da_t||^2)      (norm="global")

and ``dW^l_in = e^l_h u^l_t^T`` (``u^l_t``: the layer below's clean output), ``dW^l_rec = e^l_h p^l_{t-1}^T``,
as the papers write it for each layer of a deep network; a single network is the case ``L = 1``.

Pinned normalisations: ``N = n_in + n_hidden + n_out`` (the public code's ``sum(net_structure)``, every
layer's units counted in a stack; a constant that the learning rate absorbs); ``||dh_{l,t}||^2`` is taken per sequence and noise sample (the public code
takes it over the whole batch), per layer (``norm="layer"``, jesusgf96/NP_RNNs) or over both layers together
(``norm="global"``, artcogsys/decorbp). There is no ``1/sigma``: the direction ``dh / ||dh||^2`` is
scale-free. For isotropic ``dh`` in ``n_l`` dimensions, to first order ``E[dW_l] = sqrt(N) / n_l
dL_t/dh_l x^T``: it points along the gradient, scaled by ``sqrt(N)/n_l`` (not the gradient's scale).

The difference from ANP in time (this module's ``"anp"`` against ``"anp-time"``, our reading of the paper's
distinction, made from the paper's abstract): here the noisy copies restart from the
clean state at every step, so ``dh`` holds only this step's noise, propagated from the hidden layer to the
output within the step (``dh_hidden = xi_h``, ``dh_out = W_out (z~_t - z_t) + xi_y``), and ``L~_t - L_t`` only
this step's effect. In ANP in time the noisy copy keeps its own state, so ``dh`` also carries the noise of
earlier steps propagated through the recurrence, and ``L~_t - L_t`` its effect on the loss.

Cost per step: ``1 + samples`` forward passes, no backward pass (``needs = LOSS``); the fast path
(:mod:`neuro.rules._fast.node`) does the passes' shared products once and sums the outer products of
``window`` steps as one matrix product.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from neuro.contract import check_choice

from .node import AbstractNodeRule, layers

__all__ = ["ANP", "NORMS"]

NORMS = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class ANP(AbstractNodeRule):
    """ANP (module docstring). ``norm``: ``"layer"`` or ``"global"``; the other options are those of
    :class:`~neuro.rules.node.AbstractNodeRule`."""

    norm: str = "layer"

    name = "anp"
    keep_noisy_state = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, NORMS)

    def signal(self, dl: Tensor, xi_h: Tensor, xi_y: Tensor, dh: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
        N = self.net.n_in + self.net.n_hidden + self.net.n_out  # a stack: n_hidden is the layers' sizes summed
        tiny = torch.finfo(dh.dtype).tiny
        parts = [dh[:, layer.current] for layer in layers(self.net)]  # dh^l_t, each layer's columns
        sq_h, sq_y = [d * d for d in parts], da * da
        sq_h, sq_y = [q.sum(1) for q in sq_h], sq_y.sum(1)  # ||dh^l_t||^2, ||da_t||^2 [M]
        if self.norm == "global":
            total = sq_h[0]
            for q in sq_h[1:]:
                total = total + q
            sq_y = total + sq_y
            sq_h = [sq_y] * len(parts)
        c = math.sqrt(N) * dl  # sqrt(N) (L~_t - L_t)
        e_h = [(c / q.clamp_min(tiny))[:, None] * d for q, d in zip(sq_h, parts)]
        return e_h[0] if len(e_h) == 1 else torch.cat(e_h, 1), (c / sq_y.clamp_min(tiny))[:, None] * da
