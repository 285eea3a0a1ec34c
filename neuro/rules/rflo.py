"""Random-feedback local online learning, RFLO (Murray 2019, "Local online learning in recurrent
networks with random feedback", eLife 8:e43299; the notebook ``RFLO_Example.ipynb`` of
murray-lab/rflo-learning).

The network is the leaky tanh rate RNN (``models.make("rate")``, time constant ``tau = 1/alpha``
steps)::

    i_t = W_in x_t + W_rec h_{t-1} + b        h_t = (1 - alpha) h_{t-1} + alpha phi(i_t)      phi = tanh
    y_t = W_out h_t + b_out

Murray's eligibility traces (his eq. for ``P_ij``, one per synapse ``j -> i``, with ``a_j`` the
presynaptic activity of the synapse: ``h_{t-1,j}`` for ``W_rec``, ``x_{t,j}`` for ``W_in``, ``1`` for
``b``)::

    P_ij(t) = (1 - alpha) P_ij(t-1) + alpha phi'(i_{t,i}) a_j(t)                 P(0) = 0

and the update of step ``t``, with the output error ``eps_t = dl_t/dy_t = y_t - y*_t`` (mse; masked and
divided by the batch size as :mod:`neuro.losses` does) broadcast to the units through a fixed matrix
``B`` [n, n_out]::

    dl_t/dW_ij  ~  (B eps_t)_i P_ij(t)          (W_rec, W_in, b)
    dl_t/dW_out = eps_t h_t^T,   dl_t/db_out = eps_t       (the readout's exact gradient)

Signs and scales: the estimate is of the *gradient* (an optimizer descends it), so Murray's
``Delta W = eta (B (y* - y)) P`` is ``-eta`` times it; ``P`` carries the factor ``alpha`` (= 1/tau) of
Murray's code. ``feedback="random"``: ``B`` ~ N(0, 1/n_out) entry-wise (the notebook's
``randn(n_rec, n_out) / sqrt(n_out)``) times ``feedback_scale``, drawn from ``init``'s seed and kept
across ``reset``. ``feedback="readout"``: ``B = W_out^T`` (the current readout); then the estimate is
*truncated RTRL*: RTRL with the one-step Jacobian ``dh_t/dh_{t-1} = (1 - alpha) I + diag(alpha
phi'(i_t)) W_rec`` cut to its leak ``(1 - alpha) I`` (``P`` is then exactly the influence
``dh_{t,i}/dW_ij`` of that Jacobian), which ``tests/neuro/rules/test_rflo.py`` checks against
``torch.func.jacrev``.

``phi'(i)`` is read off the network through the cell contract: ``alpha phi'(i_t)`` is the derivative of
``neuron`` in its (element-wise) input, one reverse pass of ``sum(z_t)`` (:func:`local_step`; several
times cheaper per step here than ``torch.func.jvp``). Memory O(B p), compute O(B p) per step. For spiking
networks use e-prop (``"eprop"``) or ``"three-factor"``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["FEEDBACKS", "LocalStep", "RFLO", "RFLOState", "feedback_matrix", "local_step"]

FEEDBACKS = ("random", "readout")


def feedback_matrix(n: int, n_out: int, seed: int, like: Tensor, scale: float = 1.0) -> Tensor:
    """Murray's fixed random feedback ``B`` [n, n_out], entries N(0, scale^2 / n_out), drawn in float64
    on the CPU from a generator seeded ``seed`` (so a seed gives the same ``B`` in any dtype)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n_out, generator=g, dtype=torch.float64) * (scale / math.sqrt(n_out))
    return B.to(dtype=like.dtype, device=like.device)


class LocalStep(NamedTuple):
    """One forward step with the element-wise derivatives a local rule needs (all detached)."""

    net: NamedTuple  # the new network state
    z: Tensor  # [B, n] hidden output
    y: Tensor  # [B, n_out] network output
    loss: Tensor  # the per-step loss
    eps: Tensor  # [B, n_out] dl_t/dy_t (masked, divided by the batch size)
    dz_di: Tensor  # [B, n] dz_t/dI_t: the derivative of the element-wise neuron in its input current
    dz_db: Tensor | None  # [B, n] dz_t/db per sample (through current and neuron), when asked


def local_step(net, params: Params, state: NamedTuple, x: Tensor, y: Tensor, mask: Tensor, loss_fn,
               bias: bool = False) -> LocalStep:
    """``current -> neuron -> readout`` and the loss, with ``dz/dI`` read off ``neuron`` by one reverse pass of
    ``sum(z)`` (the neuron is element-wise, so this is the diagonal of its Jacobian), ``dl/dy`` and, with
    ``bias``, ``dz/db`` per sample (``b`` expanded to [B, n] as a leaf). No graph outlives the call."""
    p = {k: v.detach() for k, v in params.items()}
    with torch.enable_grad():
        q = p
        if bias:
            q = {**p, "b": p["b"].expand(x.shape[0], -1).clone().requires_grad_(True)}
        i = net.current(q, state, x)
        u = i.detach().requires_grad_(True)  # the leaf of dz/dI
        # with ``bias`` the value stays i, and b's path through the current (rate) reaches b as well
        net_state, z = net.neuron(q, state, u + (i - i.detach()) if bias else u)
        leaves = [u] + ([q["b"]] if bias else [])
        grads = torch.autograd.grad(z.sum(), leaves, allow_unused=True)
    zero = lambda g: torch.zeros_like(u) if g is None else g.detach()  # noqa: E731
    net_state = type(net_state)(*[f.detach() for f in net_state])
    z = z.detach()
    net_state, y_hat = net.readout(p, net_state, z)
    with torch.enable_grad():
        y_leaf = y_hat.detach().requires_grad_(True)
        loss = loss_fn(y_leaf, y, mask)
        eps, = torch.autograd.grad(loss, y_leaf)
    return LocalStep(net_state, z, y_hat.detach(), loss.detach(), eps.detach(), zero(grads[0]),
                     zero(grads[1]) if bias else None)


class RFLOState(NamedTuple):
    net: NamedTuple
    P_rec: Tensor  # [B, n, n]     eligibility of W_rec
    P_in: Tensor  # [B, n, n_in]   eligibility of W_in
    P_b: Tensor  # [B, n]          eligibility of b
    B: Tensor  # [n, n_out] the random feedback (feedback="random"), [0] with feedback="readout"


@dataclasses.dataclass(frozen=True)
class RFLO(AbstractRule):
    """RFLO on the rate RNN. ``feedback``: ``"random"`` (Murray's fixed ``B``) or ``"readout"``
    (``B = W_out^T``: truncated RTRL); ``feedback_scale`` scales the random ``B``."""

    feedback: str = "random"
    feedback_scale: float = 1.0

    name = "rflo"
    needs = Needs.LOCAL
    supports = ("rate",)
    stochastic = True  # the seed draws the random feedback B (feedback="readout" uses no random numbers)
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        if getattr(self.net, "name", "rate") != "rate":
            raise ValueError(f"rule 'rflo' does not support model {self.net.name!r}: it supports rate "
                             "(RFLO is the rate-network rule; for spiking models use 'eprop' or 'three-factor')")
        super().__post_init__()
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_scale", self.feedback_scale)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RFLOState:
        check_positive("batch", batch, integer=True)
        net = self.net
        p = params["W_rec"]
        n = net.n_hidden
        zeros = lambda *s: torch.zeros(*s, dtype=p.dtype, device=p.device)  # noqa: E731
        B = (feedback_matrix(n, net.n_out, seed, p, self.feedback_scale) if self.feedback == "random" else zeros(0))
        return RFLOState(net=net.init_state(params, batch), P_rec=zeros(batch, n, n),
                         P_in=zeros(batch, n, net.n_in), P_b=zeros(batch, n), B=B)

    def step(self, params: Params, state: RFLOState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        params = {k: v.detach() for k, v in params.items()}
        h_prev = state.net.h  # a_j of W_rec: h_{t-1} [B, n]
        f = local_step(net, params, state.net, x, y, mask, self.loss_fn)
        D, h, eps = f.dz_di, f.z, f.eps  # D = alpha phi'(i_t) [B, n];  eps = dl_t/dy_t [B, n_out] (masked, / B)

        leak = 1.0 - float(net.alpha)
        P_rec = leak * state.P_rec + D[:, :, None] * h_prev[:, None, :]
        P_in = leak * state.P_in + D[:, :, None] * x[:, None, :]
        P_b = leak * state.P_b + D
        B = params["W_out"].T if self.feedback == "readout" else state.B
        L = eps @ B.T  # (B eps_t)_i   [B, n]
        grad = {"W_rec": torch.einsum("bi,bij->ij", L, P_rec), "W_in": torch.einsum("bi,bij->ij", L, P_in),
                "b": (L * P_b).sum(0), "W_out": eps.T @ h, "b_out": eps.sum(0)}
        new = RFLOState(net=f.net, P_rec=P_rec, P_in=P_in, P_b=P_b, B=state.B)
        return StepOutput(new, f.y, f.loss, {k: grad[k].detach() for k in params})
