"""Node perturbation (NP) in recurrent networks, as the baseline of Garcia Fernandez, Keemink & van Gerven
2024, "Gradient-free training of recurrent neural networks using random perturbations" (arXiv:2405.08967,
code jesusgf96/NP_RNNs; NP itself: Williams 1992, REINFORCE with Gaussian units; Fiete & Seung 2006).

A clean and ``samples`` noisy copies of the network run on the same input; every step the noisy ones get
``xi_t ~ N(0, sigma^2 I)`` added to the pre-activations of the hidden units (the currents ``i_t``; for LIF
and ALIF the input currents ``I_t``) and of the output units (``a_t = W_out z_t + b_out``), and keep their
own state (the noise of earlier steps stays in them, as in the public code). With ``L_t`` and ``L~_t`` the
clean and noisy losses of the step (per sequence)::

    dW_l = (L~_t - L_t) / sigma^2  xi_{l,t} x_{l-1,t}^T          (this rule returns dW_l; the optimizer
                                                                   applies -eta dW_l)

with ``x_{l-1,t}`` the clean presynaptic activity: ``x_t`` for ``W_in``, ``p_{t-1}`` (what ``W_rec`` reads:
``h_{t-1}`` or ``z_{t-1}``) for ``W_rec``, ``1`` for ``b`` where it is a term of the current (a zero estimate
for a bias of the neuron, as LIF's membrane bias), ``z_t`` for ``W_out``, ``1`` for ``b_out`` (the step in
:mod:`neuro.rules.node`). The node signal is the injected noise::

    e_h = (L~_t - L_t) / sigma^2  xi_h,      e_y = (L~_t - L_t) / sigma^2  xi_y

Normalisation (pinned): ``1 / sigma^2``, so that to first order in ``sigma``
``E[(L~_t - L_t) xi_t / sigma^2] = dL_t/dh_t`` (the public code divides by ``sigma`` only, which scales the
update by ``sigma`` and leaves it to the learning rate). The noise of earlier steps, still in the noisy
copy, has zero mean and is independent of ``xi_t``: it adds variance, not bias. So the expected estimate
is the gradient through the current step only, i.e. the gradient of 1-step truncated BPTT (``tbptt``
with ``k=1``), which the tests check. ``samples`` noisy copies per sequence are run in parallel (a batch
of perturbations) and averaged; the estimate is the mean over the batch and the samples.

In a stack of layers (:class:`models.stack.Stack`; the layer form of the step in :mod:`neuro.rules.node`)
every layer's whole current gets its own noise ``xi^l_h`` and ``e^l_h = (L~_t - L_t) / sigma^2 xi^l_h``,
``dW^l_in = e^l_h u^l_t^T`` (``u^l_t``: the layer below's clean output of the same step), ``dW^l_rec = e^l_h
p^l_{t-1}^T``; the expected estimate is again the gradient through the current step, the feed-forward path
between the layers within the step included (tested against 1-step truncated BPTT by autograd).

Cost per step: ``1 + samples`` forward passes, no backward pass (``needs = LOSS``); the fast path
(:mod:`neuro.rules._fast.node`) does the passes' shared products once and sums the outer products of
``window`` steps as one matrix product.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .node import AbstractNodeRule

__all__ = ["NodePerturbation"]


@dataclasses.dataclass(frozen=True)
class NodePerturbation(AbstractNodeRule):
    """NP (module docstring); the options are those of :class:`~neuro.rules.node.AbstractNodeRule`."""

    name = "np"
    keep_noisy_state = True
    uses_activity = False  # the signal is the injected noise: dh and da are not needed

    def signal(self, dl: Tensor, xi_h: Tensor, xi_y: Tensor, dh: Tensor | None = None,
               da: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = (dl / self.sigma ** 2)[:, None]  # (L~_t - L_t) / sigma^2
        return c * xi_h, c * xi_y
