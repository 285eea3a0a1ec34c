"""Activity-based node perturbation in time (ANP in time): Garcia Fernandez, Keemink & van Gerven 2024,
"Gradient-free training of recurrent neural networks using random perturbations" (arXiv:2405.08967, code
jesusgf96/NP_RNNs ``node_perturbation_activity``).

A clean copy and ``samples`` noisy copies of the network run on the same input; the noisy ones get
``N(0, sigma^2)`` added to the pre-activations of the hidden units (the currents ``i_t``; for LIF/ALIF the
input currents ``I_t``) and of the output units (``a_t = W_out z_t + b_out``) at every step, and *keep their
own state*. Every step, for each layer ``l`` (hidden: ``W_in``, ``W_rec``, ``b``; output: ``W_out``,
``b_out``)::

    dW_l = -eta sqrt(N) (L~_t - L_t) dh_{l,t} / ||dh_{l,t}||^2  x_{l-1,t}^T

This rule returns the estimate without ``-eta`` (the optimizer applies it). ``dh_{l,t} = h~_{l,t} -
h_{l,t}`` is the noisy minus the clean pre-activation: this step's noise *plus* the propagated effect of all
earlier noise (through ``W_rec`` and the neuron's state, and for the output through ``W_out`` and, for a
leaky readout, the readout's state). ``x_{l-1,t}`` is the clean presynaptic activity: ``x_t`` for ``W_in``,
``p_{t-1}`` for ``W_rec`` (what it reads: ``h_{t-1}`` or ``z_{t-1}``), ``1`` for the biases ``b`` (where it is a
term of the current; a bias of the neuron, as LIF's membrane bias, gets a zero estimate, the noise being on the
current) and ``b_out``, ``z_t`` for ``W_out`` (the step in :mod:`neuro.rules.node`). ``L_t``, ``L~_t``: the
clean and noisy per-step losses of each sequence.

Pinned normalisations (as :mod:`neuro.rules.anp`): ``N = n_in + n_hidden + n_out`` (the public code's
``sum(net_structure)``); ``||dh_{l,t}||^2`` per sequence and noise sample, per layer (``norm="layer"``, the
public code, which however takes the norm over the batch too) or over both layers (``norm="global"``,
artcogsys/decorbp); no ``1/sigma``. For isotropic ``dh`` in ``n_l`` dimensions the expected estimate is
``sqrt(N)/n_l`` times the gradient through the step: it points along the gradient (tested against BPTT),
at a scale the learning rate absorbs. ``samples``: noisy copies per sequence run in parallel, averaged.

In a stack of layers (:class:`models.stack.Stack`) each hidden layer ``l`` has its own ``dh^l_t``, its whole
current's difference (noise of this and earlier steps, its own and the layers' below, propagated), and its
own norm (``norm="layer"``): the layer form in :mod:`neuro.rules.anp` and :mod:`neuro.rules.node`.

Left out: the paper's optional decorrelation layer ``D <- D - eta_D offdiag(E[x x^T]) D`` on each layer's
input (not implemented here).

Cost per step: ``1 + samples`` forward passes, no backward pass (``needs = LOSS``); the fast path
(:mod:`neuro.rules._fast.node`) does the passes' shared products once and sums the outer products of
``window`` steps as one matrix product.
"""

from __future__ import annotations

import dataclasses

from .anp import ANP

__all__ = ["ANPTime"]


@dataclasses.dataclass(frozen=True)
class ANPTime(ANP):
    """ANP in time (module docstring): ANP whose noisy copies keep their own state."""

    name = "anp-time"
    keep_noisy_state = True
