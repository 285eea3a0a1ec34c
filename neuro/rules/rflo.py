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
times cheaper per step here than ``torch.func.jvp``), or, for the models with a closed form (the rate RNN:
``alpha (1 - tanh(i)^2)``; LIF: ``psi(v~) dv~/dI``), from that form (:func:`closed_form_step`, tested equal to
the reverse pass). For spiking networks use e-prop (``"eprop"``) or ``"three-factor"``.

Windowed sum (``fast=True``, the default). ``P`` is a rank-one update with a common decay ``d = 1 - alpha``,
``P(t) = d P(t-1) + D_t a_t^T`` (``D_t = alpha phi'(i_t)``), so over a window of ``window`` steps from
``P(0)`` (:mod:`neuro.rules._window`, ``S = 1``)::

    sum_t L_t (.) P(t) = diag(sum_t d^t L_t) P(0) + sum_s (sum_{t>=s} d^(t-s) L_t (.) D_s) a_s^T
    P(w) = d^w P(0) + sum_s d^(w-s) D_s a_s^T

with ``a_t`` = ``x_t``, ``h_{t-1}``, ``1`` (``W_in``, ``W_rec``, ``b``): per window and parameter one matrix
product [n, w B] @ [w B, n_pre] and one per sample for the carry (none when ``alpha = 1``: nothing outlives a
step; with batch 1 the two are one product [2n, w] @ [w, n_pre]); per step only
``D_t``, ``L_t``, ``a_t``, ``eps_t``, ``h_t`` (O(n)) are kept. The estimate of a window is returned at its
last step, by :meth:`RFLO.flush` (an update is due) and by :meth:`RFLO.finish`; other steps return ``None``.
``fast=False`` is the per-step path above (the reference, O(B p) per step). Memory O(B p + window B n).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params, check_choice, check_positive

from . import _window
from ._spiking import closed_form, fire
from .base import AbstractRule, Needs, StepOutput

__all__ = ["FEEDBACKS", "LocalStep", "RFLO", "RFLOState", "closed_form_step", "feedback_matrix", "local_step"]

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


def _closed_form(net) -> str | None:
    """Which closed form of ``dz/dI`` applies to ``net`` (the model's own update, see :func:`closed_form_step`)."""
    if net.name == "rate" and hasattr(net, "alpha"):
        return "rate"
    if net.name == "lif" and closed_form(net):
        return "lif"
    return None


def closed_form_step(net, params: Params, state: NamedTuple, x: Tensor, y: Tensor, mask: Tensor,
                     loss: str, bias: bool = False) -> LocalStep | None:
    """:func:`local_step` without autograd, for the models whose element-wise derivative has a closed form: the
    rate RNN (``dz/dI = dz/db = alpha (1 - tanh(i)^2)``) and LIF (``models/lif.py``: ``neuron`` is ``_integrate``
    then ``_fire``; ``dz/dI = psi(v~) dv~/dI [r_{t-1} = 0]``, ``dz/db = psi(v~) dv~/db [r_{t-1} = 0]`` with ``psi``
    the surrogate derivative and ``dv~/dI``, ``dv~/db`` the coefficients of ``subthreshold``), and a loss with a
    written-out loss gradient (:func:`neuro.losses.grad`). ``None`` otherwise. Equal to :func:`local_step` (tests/neuro/rules/test_rflo.py)."""
    kind = _closed_form(net)
    if kind is None:
        return None
    with torch.no_grad():
        i = net.current(params, state, x)
        if kind == "rate":
            net_state, z = net.neuron(params, state, i)
            t = torch.tanh(i)
            dz_di = 1.0 - t * t if net.alpha == 1.0 else (1.0 - t * t) * float(net.alpha)
            dz_db = dz_di
        else:
            net_state, z, _, _, psi, _ = fire(net, params, state, i)
            sub = net.subthreshold()
            dz_di = psi * sub.vI if sub.vI != 1.0 else psi
            dz_db = (psi * sub.vb if sub.vb != 1.0 else psi) if bias else None
        net_state, y_hat = net.readout(params, net_state, z)
        l, eps = losses.get(loss)(y_hat, y, mask), losses.grad(loss, y_hat, y, mask)
        return LocalStep(net_state, z, y_hat, l, eps, dz_di, dz_db)


class RFLOState(NamedTuple):
    net: NamedTuple
    P_rec: Tensor  # [B, n, n]     eligibility of W_rec (windowed: at the start of the pending window)
    P_in: Tensor  # [B, n, n_in]   eligibility of W_in (size 0 when windowed with alpha = 1: nothing is carried)
    P_b: Tensor  # [B, n]          eligibility of b
    B: Tensor  # [n, n_out] the random feedback (feedback="random"), [0] with feedback="readout"
    rows: tuple = ()  # windowed: ``window`` rows [B, 4n + n_in + n_out] (D, L, x, h_{t-1}, h, eps) of the pending steps
    t: int = 0  # windowed: the number of pending steps


@dataclasses.dataclass(frozen=True)
class RFLO(AbstractRule):
    """RFLO on the rate RNN. ``feedback``: ``"random"`` (Murray's fixed ``B``) or ``"readout"``
    (``B = W_out^T``: truncated RTRL); ``feedback_scale`` scales the random ``B``. ``fast``: the windowed sum
    (one matrix product per ``window`` steps, module docstring) and the closed-form ``phi'``; ``fast=False``: the
    per-step reference."""

    feedback: str = "random"
    feedback_scale: float = 1.0
    window: int = 64
    fast: bool = True

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
        check_positive("window", self.window, integer=True)
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast={self.fast!r} is invalid: expected True or False")

    def _filter(self) -> _window.Filter:
        return _window.Filter.decay(1.0 - float(self.net.alpha))

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RFLOState:
        check_positive("batch", batch, integer=True)
        net = self.net
        p = params["W_rec"]
        n = net.n_hidden
        zeros = lambda *s: torch.zeros(*s, dtype=p.dtype, device=p.device)  # noqa: E731
        B = (feedback_matrix(n, net.n_out, seed, p, self.feedback_scale) if self.feedback == "random" else zeros(0))
        if not self.fast:
            return RFLOState(net=net.init_state(params, batch), P_rec=zeros(batch, n, n),
                             P_in=zeros(batch, n, net.n_in), P_b=zeros(batch, n), B=B)
        f = self._filter()
        f.coefficients(self.window, p.dtype, p.device)  # a full window's coefficients, computed once (cached)
        carry = f.carries  # alpha < 1: P outlives a step
        P = lambda *s: zeros(batch, n, *s) if carry else zeros(0)  # noqa: E731
        rows = _window.slots(self.window, zeros(batch, 4 * n + net.n_in + net.n_out))
        return RFLOState(net=net.init_state(params, batch), P_rec=P(n), P_in=P(net.n_in), P_b=P(), B=B, rows=rows, t=0)

    def step(self, params: Params, state: RFLOState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if self.fast:
            return self._step_windowed(params, state, x, y, mask)
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

    # -- the windowed path ---------------------------------------------------------------------------------------
    @torch.no_grad()  # nothing here is differentiated (local_step's reverse pass enables grad for itself)
    def _step_windowed(self, p: Params, state: RFLOState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        h_prev = state.net.h
        f = closed_form_step(net, p, state.net, x, y, mask, self.loss or "mse")
        if f is None:
            f = local_step(net, p, state.net, x, y, mask, self.loss_fn)
        B = p["W_out"] if self.feedback == "readout" else state.B.T  # [n_out, n]
        L = f.eps @ B  # (B eps_t)_i   [B, n]
        row = torch.cat([f.dz_di, L, x, h_prev, f.z, f.eps], dim=1)
        new = state._replace(net=f.net, rows=_window.push(state.rows, state.t, row), t=state.t + 1)
        grad = None
        if new.t >= self.window:
            new, grad = self._flush(p, new)
        return StepOutput(new, f.y, f.loss, grad)

    def _flush(self, p: Params, state: RFLOState) -> tuple[RFLOState, Params | None]:
        if not self.fast or state.t == 0:
            return state, None
        net, n, n_in, n_out = self.net, self.net.n_hidden, self.net.n_in, self.net.n_out
        R = _window.stacked(state.rows, state.t)  # [w, B, 4n + n_in + n_out]
        w, nb = R.shape[:2]
        cut = [n, n, n_in, n, n, n_out]
        D, L, x, h_prev, h, eps = torch.split(R, cut, dim=2)
        f = self._filter()
        ones = torch.ones(w, nb, 1, dtype=R.dtype, device=R.device)
        (g_in, q_in), (g_rec, q_rec), (g_b, q_b) = _window.window_sum(
            f, L, [(D, (state.P_in,), x), (D, (state.P_rec,), h_prev), (D, (state.P_b[..., None],), ones)])
        grad = {"W_in": g_in, "W_rec": g_rec, "b": g_b[:, 0],
                "W_out": eps.reshape(w * nb, n_out).T @ h.reshape(w * nb, n), "b_out": eps.sum((0, 1))}
        new = state._replace(t=0, rows=_window.slots(self.window, R[0]))
        if f.carries:
            new = new._replace(P_in=q_in[0], P_rec=q_rec[0], P_b=q_b[0][..., 0])
        return new, {k: grad[k] for k in p}

    def flush(self, params: Params, state: RFLOState) -> tuple[RFLOState, Params | None]:
        return self._flush({k: v.detach() for k, v in params.items()}, state)

    def finish(self, params: Params, state: RFLOState) -> tuple[RFLOState, Params | None]:
        return self.flush(params, state)
