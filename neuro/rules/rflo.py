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

*Stacks of layers* (:class:`models.stack.Stack` of rate layers; Murray's equations per layer, the
multi-layer form of random feedback as in direct feedback alignment, Nokland 2016, "Direct feedback alignment
provides learning in deep neural networks", NeurIPS, where every layer gets the output error through its own
fixed random matrix). Layer ``l``'s synapses read their own presynaptic vector: ``u^l_t`` (``x_t`` for the
first layer, the layer below's output of the same step ``h^{l-1}_t`` above it; with ``skip``, ``[h^{l-1}_t,
x_t]``; the stack's ``layer_input``) for ``W^l_in`` and ``h^l_{t-1}`` for ``W^l_rec``, and the layer's own
neuron derivatives at its whole current ``I^l_t`` (Murray's ``u^t`` of the layer; the stack's ``complete``)::

    P^l_ab(t) = (1 - 1/tau) P^l_ab(t-1) + (1/tau) phi'(I^l_{t,a}) a^l_b(t)
    dl_t/dW^l_ab  ~  [B^l eps^t]_a P^l_ab(t)          B^l [n_l, n_out]

with ``a^l_b(t)`` = ``u^l_{t,b}`` for ``W^l_in``, ``h^l_{t-1,b}`` for ``W^l_rec``, ``1`` for ``b^l``
(tests/neuro/rules/test_stack_rules.py holds a sparse 2-layer stack to these equations written out per layer).

``feedback="random"``: ``B^l`` drawn as the single-layer ``B`` from seed ``seed + 1000003 l`` (the stack's
seed rule for its layers), so layer 0 keeps the single-layer ``B``. ``feedback="readout"``: ``B^l = (W^out)^T``
restricted to layer ``l``'s columns, which needs every layer read by the readout (``skip=True``, or one
layer); a stack without skip connections refuses it (its lower layers have no readout columns). The path
from a lower layer's weights through the layers above within the step is not followed (RFLO keeps only each
unit's own leak, and the random feedback replaces every path to the output): a single-layer network is the
case ``L = 1``, with the numbers above. The traces of a stack are tuples over the layers.

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

from models.stack import Stack
from neuro import losses
from neuro.contract import Params, check_choice, check_positive

from ._common import feedback_matrix
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["FEEDBACKS", "RFLO", "RFLOState"]

FEEDBACKS = ("random", "readout")


class RFLOState(NamedTuple):
    net: NamedTuple
    P_rec: Tensor | tuple  # [B, n, n]     eligibility of W_rec (a stack: one per layer, [B, n_l, n_l])
    P_in: Tensor | tuple  # [B, n, n_in]   eligibility of W_in (a stack: [B, n_l, n_in_l] per layer)
    P_b: Tensor | tuple  # [B, n]          eligibility of b (a stack: [B, n_l] per layer)
    B: Tensor  # [n, n_out] the random feedback (feedback="random"; a stack: the layers' B^l one above the
    # other), size 0 with feedback="readout"


def _layers(net) -> tuple:
    """The layers the rule runs on: a stack's, or the network itself (one layer)."""
    return net.layers if isinstance(net, Stack) else (net,)


def _layer_steps(net, p: Params, s: NamedTuple, x: Tensor) -> tuple[list, NamedTuple, Tensor]:
    """One step of the neurons, layer by layer: per layer ``(key prefix, layer net, u^l_t, p^l_{t-1},
    Derivatives at I^l_t)``, then the network's state after the neurons and its output ``z_t`` (all units)."""
    if not isinstance(net, Stack):
        d = net.neuron_derivatives(p, s, net.current(p, s, x))
        return [("", net, x, net.presynaptic(s), d)], d.state, d.z
    i, out, below = net.current(p, s, x), [], None
    for l, layer in enumerate(net.layers):
        lp, ls = net.layer_params(p, l), net.layer_state(s, l)
        d = layer.neuron_derivatives(lp, ls, net.complete(p, i, below, l))
        out.append((f"{l}.", layer, net.layer_input(x, below, l), layer.presynaptic(ls), d))
        below = d.z
    return out, net.join_states([o[-1].state for o in out], getattr(s, "y", None)), torch.cat([o[-1].z for o in out], 1)


@accelerated
@dataclasses.dataclass(frozen=True)
class RFLO(AbstractRule):
    """RFLO (module docstring) on a network of local form whose neuron has one state field per unit (the rate
    RNN), or a stack of such layers (one trace set and one feedback matrix per layer). ``feedback``:
    ``"random"`` (Murray's fixed ``B``) or ``"readout"`` (``B = W_out^T``: truncated RTRL on one layer);
    ``feedback_scale`` scales the random ``B``. ``fast``: run the windowed sum where it applies
    (:mod:`neuro.rules._fast.rflo`, one dense rate layer; the same numbers) or the equations (``False``);
    ``window``: its steps per window."""

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
        if not isinstance(net, Stack):
            self._require_local_form()
        for layer in _layers(net):
            if not layer.local_form:
                raise self._refuse(f"its layers ({layer.name!r}) are not of local form (local_form)")
            if len(layer.trace_fields) != 1:
                raise self._refuse(f"RFLO decays its traces by the unit's own leak and needs one state field per "
                                   f"unit, the model has {layer.trace_fields} (for spiking models use 'eprop' or "
                                   "'three-factor')")
        if net.readout_decay != 0.0:
            raise self._refuse(f"RFLO needs a linear readout (readout_decay 0), the model's is {net.readout_decay!r} "
                               "(use 'eprop' or 'three-factor')")
        if self.feedback == "readout" and isinstance(net, Stack) and net.readout_units != slice(0, net.n_hidden):
            raise ValueError("feedback='readout' is invalid on a stack without skip connections: the readout reads "
                             "the last layer only, so the lower layers have no readout columns to take as feedback; "
                             "use feedback='random' (or a stack with skip=True)")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RFLOState:
        check_positive("batch", batch, integer=True)
        net, like = self.net, params["W_out"].detach()
        new = like.new_zeros
        layers = _layers(net)
        B = torch.cat([feedback_matrix(layer.n_hidden, net.n_out, seed + 1000003 * l, like, self.feedback_scale)
                       for l, layer in enumerate(layers)]) if self.feedback == "random" else new(0)
        P_rec = tuple(new(batch, m.n_hidden, m.n_hidden) for m in layers)
        P_in = tuple(new(batch, m.n_hidden, m.n_in) for m in layers)
        P_b = tuple(new(batch, m.n_hidden) for m in layers)
        if not isinstance(net, Stack):  # one layer: the traces themselves
            P_rec, P_in, P_b = P_rec[0], P_in[0], P_b[0]
        return RFLOState(net=net.init_state(params, batch), P_rec=P_rec, P_in=P_in, P_b=P_b, B=B)

    def step(self, params: Params, state: RFLOState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, stack = self.net, isinstance(self.net, Stack)
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        # per layer l: u^l_t, h^l_{t-1} (a_b(t) of W^l_in, W^l_rec) and the derivatives of the layer's neuron
        layers, s_mid, z = _layer_steps(net, p, state.net, x)
        s, y_hat = net.readout(p, s_mid, z)  # y^t = W^out h^t + b^out (a stack's: of the units it reads)
        eps = losses.grad(self.loss or "mse", y_hat, y, mask)  # dl_t/dy^t [B, n_out] (masked, / B)
        B = p["W_out"].T if self.feedback == "readout" else state.B  # [n_hidden, n_out]: B^l one above the other
        L_all = eps @ B.T  # [B^l eps^t]_a for every unit of every layer   [B, n_hidden]
        traces = zip(*((state.P_rec, state.P_in, state.P_b) if stack else ((state.P_rec,), (state.P_in,), (state.P_b,))))
        grad, P_new, lo = {}, [], 0
        for (pre, layer, u, h_prev, d), (P_rec, P_in, P_b) in zip(layers, traces):
            L = L_all[:, lo:lo + layer.n_hidden]
            lo += layer.n_hidden
            leak = d.dh_dh[:, :, 0, 0]  # dh^t_a/dh^{t-1}_a = 1 - 1/tau   [B, n_l]
            D = d.dz_dI  # dz^t_a/du^t_a = (1/tau) phi'(u^t_a)   [B, n_l]
            D_b = d.dz_db + d.dz_dI if layer.bias_in_current else d.dz_db  # dz^t_a/db_a
            P_rec = leak[:, :, None] * P_rec + D[:, :, None] * h_prev[:, None, :]
            P_in = leak[:, :, None] * P_in + D[:, :, None] * u[:, None, :]
            P_b = leak * P_b + D_b
            grad.update({pre + "W_rec": torch.einsum("sa,sab->ab", L, P_rec),
                         pre + "W_in": torch.einsum("sa,sab->ab", L, P_in), pre + "b": (L * P_b).sum(0)})
            P_new.append((P_rec, P_in, P_b))
        grad.update({"W_out": eps.T @ (z[:, net.readout_units] if stack else z), "b_out": eps.sum(0)})
        P_rec, P_in, P_b = (tuple(q) for q in zip(*P_new)) if stack else P_new[0]
        new = RFLOState(net=s, P_rec=P_rec, P_in=P_in, P_b=P_b, B=state.B)
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), {k: grad[k] for k in params})
