"""Random-feedback local online learning, RFLO (Murray 2019, "Local online learning in recurrent
networks with random feedback", eLife 8:e43299; the notebook ``RFLO_Example.ipynb`` of
murray-lab/rflo-learning).

Murray's network is the leaky rate RNN (``models.make("rate")``, ``tau = 1/alpha`` steps; ``u`` is the
current of the cell contract, ``h`` its hidden output)::

    u^t = W^rec h^{t-1} + W^in x^t + b        h^t = (1 - 1/tau) h^{t-1} + (1/tau) phi(u^t)      phi = tanh
    y^t = W^out h^t + b^out

His eligibility traces (one per synapse ``b -> a``, with ``a_b(t)`` the presynaptic activity of the synapse:
``h^{t-1}_b`` for ``W^rec``, ``x^t_b`` for ``W^in``, ``1`` for ``b``)::

    P_ab(t) = (1 - 1/tau) P_ab(t-1) + (1/tau) phi'(u^t_a) a_b(t)                 P(0) = 0

and the update of step ``t``, with the output error ``eps^t = dl_t/dy^t = y^t - y*^t`` (mse; masked and
divided by the batch size as :mod:`neuro.losses` does) broadcast to the units through a fixed matrix
``B`` [n, n_out]::

    dl_t/dW_ab  ~  [B eps^t]_a P_ab(t)          (W^rec, W^in, b)
    dl_t/dW^out = eps^t (h^t)^T,   dl_t/db^out = eps^t       (the readout's exact gradient)

*Through the cell contract.* The rule reads the network only through the contract's facts
(:mod:`neuro.contract`): ``W^rec`` multiplies ``net.presynaptic(state)`` (``h^{t-1}``); the two factors of
the trace are the derivatives of one ``neuron`` step (``net.neuron_derivatives``, per sample and unit)::

    1 - 1/tau          = dh^t_a / dh^{t-1}_a      (``dh_dh``: the unit's own leak, the diagonal of its
                                                    one-step Jacobian, the only term RFLO keeps)
    (1/tau) phi'(u^t_a) = dz^t_a / du^t_a         (``dz_dI``, the output ``z = h``; for ``b``: ``dz_db``,
                                                    plus ``dz_dI`` where ``net.bias_in_current``)

so the trace is ``P_ab(t) = (dh^t_a/dh^{t-1}_a) P_ab(t-1) + (dz^t_a/du^t_a) a_b(t)``, Murray's equation on
the rate RNN (where the leak is ``1 - 1/tau`` for every unit and step). This needs a neuron whose state is
one field per unit (``len(net.trace_fields) == 1``) and a linear readout (``net.readout_decay == 0``); the
rule refuses other networks. A LIF neuron has two fields (``v``, ``i``): its ``dh_dh`` is a 2x2 matrix per
unit (the membrane leak, the synaptic current flowing into ``v``, the reset through the surrogate), and its
output is a spike, not a field, so there is no single leak to decay ``P`` by; the per-unit Jacobian kept in
full is e-prop's eligibility vector (``"eprop"``), and its factorised form for LIF the three-factor rule
(``"three-factor"``).

Signs and scales: the estimate is of the *gradient* (an optimizer descends it), so Murray's
``Delta W = eta (B (y* - y)) P`` is ``-eta`` times it; ``P`` carries the factor ``1/tau`` of Murray's code.
``feedback="random"``: ``B`` ~ N(0, 1/n_out) entry-wise (the notebook's ``randn(n_rec, n_out) /
sqrt(n_out)``) times ``feedback_scale``, drawn from ``init``'s seed and kept across ``reset``.
``feedback="readout"``: ``B = (W^out)^T`` (the current readout); then the estimate is *truncated RTRL*: RTRL
with the one-step Jacobian ``dh^t/dh^{t-1} = (1 - 1/tau) I + diag((1/tau) phi'(u^t)) W^rec`` cut to its leak
``(1 - 1/tau) I`` (``P`` is then exactly the influence ``dh^t_a/dW_ab`` of that Jacobian), which
``tests/neuro/rules/test_rflo.py`` checks against ``torch.func.jacrev``.

The estimate (the batch mean: ``eps`` carries the 1/B of the loss; each sample has its own traces) is
emitted every step. A faster computation of the same numbers on the rate RNN (a window of steps summed as
one matrix product per parameter, :mod:`neuro.rules._fast.rflo`) runs by default; ``fast=False`` runs the
equations above. Shapes: ``P_rec`` [B, n, n], ``P_in`` [B, n, n_in], ``P_b`` [B, n]; memory O(B p).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params, check_choice, check_positive

from ._common import feedback_matrix
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["FEEDBACKS", "RFLO", "RFLOState"]

FEEDBACKS = ("random", "readout")


class RFLOState(NamedTuple):
    net: NamedTuple
    P_rec: Tensor  # [B, n, n]     eligibility of W_rec
    P_in: Tensor  # [B, n, n_in]   eligibility of W_in
    P_b: Tensor  # [B, n]          eligibility of b
    B: Tensor  # [n, n_out] the random feedback (feedback="random"), size 0 with feedback="readout"



@accelerated
@dataclasses.dataclass(frozen=True)
class RFLO(AbstractRule):
    """RFLO (module docstring) on a network of local form whose neuron has one state field per unit (the rate
    RNN). ``feedback``: ``"random"`` (Murray's fixed ``B``) or ``"readout"`` (``B = W_out^T``: truncated RTRL);
    ``feedback_scale`` scales the random ``B``. ``fast``: run the windowed sum where it applies
    (:mod:`neuro.rules._fast.rflo`, the same numbers) or the equations (``False``); ``window``: its steps per
    window."""

    feedback: str = "random"
    feedback_scale: float = 1.0
    window: int = 64
    fast: bool = True

    name = "rflo"
    needs = Needs.LOCAL
    stochastic = True  # the seed draws the random feedback B (feedback="readout" uses no random numbers)
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_scale", self.feedback_scale)
        check_positive("window", self.window, integer=True)
        net = self.net
        self._require_local_form()
        if len(net.trace_fields) != 1:
            raise self._refuse(f"RFLO decays its traces by the unit's own leak and needs one state field per unit, "
                               f"the model has {net.trace_fields} (for spiking models use 'eprop' or 'three-factor')")
        if net.readout_decay != 0.0:
            raise self._refuse(f"RFLO needs a linear readout (readout_decay 0), the model's is {net.readout_decay!r} "
                               "(use 'eprop' or 'three-factor')")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RFLOState:
        check_positive("batch", batch, integer=True)
        net, n = self.net, self.net.n_hidden
        new = params["W_rec"].detach().new_zeros
        B = feedback_matrix(n, net.n_out, seed, params["W_rec"], self.feedback_scale) if self.feedback == "random" \
            else new(0)
        return RFLOState(net=net.init_state(params, batch), P_rec=new(batch, n, n), P_in=new(batch, n, net.n_in),
                         P_b=new(batch, n), B=B)

    def step(self, params: Params, state: RFLOState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        h_prev = net.presynaptic(state.net)  # a_b(t) of W^rec: h^{t-1} [B, n]
        u = net.current(p, state.net, x)  # u^t [B, n]
        d = net.neuron_derivatives(p, state.net, u)  # h^t and its derivatives
        s, y_hat = net.readout(p, d.state, d.z)  # y^t = W^out h^t + b^out
        eps = losses.grad(self.loss or "mse", y_hat, y, mask)  # dl_t/dy^t [B, n_out] (masked, / B)

        leak = d.dh_dh[:, :, 0, 0]  # dh^t_a/dh^{t-1}_a = 1 - 1/tau   [B, n]
        D = d.dz_dI  # dz^t_a/du^t_a = (1/tau) phi'(u^t_a)   [B, n]
        D_b = d.dz_db + d.dz_dI if net.bias_in_current else d.dz_db  # dz^t_a/db_a
        P_rec = leak[:, :, None] * state.P_rec + D[:, :, None] * h_prev[:, None, :]
        P_in = leak[:, :, None] * state.P_in + D[:, :, None] * x[:, None, :]
        P_b = leak * state.P_b + D_b
        B = p["W_out"].T if self.feedback == "readout" else state.B
        L = eps @ B.T  # [B eps^t]_a   [B, n]
        grad = {"W_rec": torch.einsum("sa,sab->ab", L, P_rec), "W_in": torch.einsum("sa,sab->ab", L, P_in),
                "b": (L * P_b).sum(0), "W_out": eps.T @ d.z, "b_out": eps.sum(0)}
        new = RFLOState(net=s, P_rec=P_rec, P_in=P_in, P_b=P_b, B=state.B)
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), {k: grad[k] for k in params})
