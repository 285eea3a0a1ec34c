"""e-prop: eligibility propagation (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020,
"A solution to the learning dilemma for recurrent networks of spiking neurons", Nature Communications
11:3625; public code IGITUGraz/eligibility_propagation).

The gradient is factorised into a learning signal ``L^t_j`` and a filtered eligibility trace ``bar e^t_ji``
(Results, "Mathematical basis for e-prop")::

    dE/dW_ji ~ sum_t L^t_j  bar e^t_ji

Each neuron ``j`` has a hidden state ``h^t_j`` (its ``K`` trace fields, ``net.trace_fields``: rate ``h``; LIF
``v, i``; ALIF ``v, i, a``) updated from ``h^{t-1}_j`` and its input current ``I^t_j = sum_i W_ji pre^t_i``,
``pre^t = [x^t, p^{t-1}]`` (the input and what ``W_rec`` multiplies, ``net.presynaptic``: ``z^{t-1}`` or
``h^{t-1}``). Its one-step derivatives, read from the model (``net.neuron_derivatives``: surrogate spike, reset,
refractory period and adaptation included), are::

    D^t  = dh^t_j / dh^{t-1}_j  [K, K]     c^t  = dh^t_j / dI^t_j  [K]
    Z^t  = dz^t_j / dh^{t-1}_j  [K]        zi^t = dz^t_j / dI^t_j

Eligibility vectors and traces (Methods, "eligibility traces"; the partial derivatives hold ``pre`` fixed:
only the neuron-local part of the recurrent Jacobian is kept; ``z^t`` is computed inside the step from
``h^{t-1}`` and the current, so ``e^t = (dz^t/dh^{t-1}) eps^{t-1} + dz^t/dW``, the paper's quantity)::

    eps^t_ji = D^t eps^{t-1}_ji + c^t pre^t_i                        [K]
    e^t_ji   = Z^t . eps^{t-1}_ji + zi^t pre^t_i
    bar e^t  = kappa bar e^{t-1} + e^t

For ALIF the threshold adaptation ``a`` is one of the fields, which gives the paper's adaptive component
``eps^a`` (``adaptive_eligibility=False`` drops it: :attr:`EProp.adaptation`). The bias ``b`` gets the same
recursions with ``pre = 1`` and its own derivatives (``dh/db``, ``dz/db``, plus ``c``, ``zi`` where ``b`` is a
term of the current: ``net.bias_in_current``).

Readout ``y^t = kappa y^{t-1} + W_out z^t + b_out`` (``kappa = net.readout_decay``: 0 for a linear readout,
the leaky readout's decay for spiking models, the paper's ``F_kappa``): the trace is filtered by it (above),
and ``W_out``, ``b_out`` get their exact gradient ``(dE/dy^t) bar z^t``, ``bar z^t = kappa bar z^{t-1} +
z^t`` (and ``bar 1^t`` for ``b_out``). ``dE/dy^t`` is written out (:func:`neuro.losses.grad`).

Learning signal (symmetric, random and adaptive e-prop of the paper)::

    L^t_j = sum_k B_jk (dE/dy^t_k)           B = W_out^T (symmetric), fixed random (random),
                                               or random and adapted (adaptive, see below)

Adaptive feedback: ``B`` starts random and is then adapted with the readout's own update plus weight
decay (the Kolen & Pollack 1994 scheme, used for mirrored feedback by Akrout et al. 2019; the paper's
adaptive e-prop adapts ``B`` this way, its exact schedule is not reproduced here)::

    B <- B - feedback_lr (g_{W_out}^T + feedback_decay B)

(with plain SGD of the same rate and decay on ``W_out``, ``B - W_out^T`` decays to 0).

The estimate (mean over the batch: ``dE/dy`` carries the 1/B of the loss; each sample has its own traces)
is emitted every step. A faster computation of the same numbers (a window of steps summed as matrix
products, :mod:`neuro.rules._fast.eprop`) runs by default; ``fast=False`` runs the equations above.

Shapes: ``eps`` [B, n, K, n_in + n], ``bar e`` [B, n, n_in + n]; the feedback is stored as ``B^T``
[n_out, n] (like ``W_out``), so ``L^t = (dE/dy^t) B^T``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Derivatives, Params, check_choice, check_positive

from ._common import feedback_matrix
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["EProp", "EPropState"]

FEEDBACKS = ("symmetric", "random", "adaptive")
#: the parameters of a network of local form (neuro.contract): synapses, bias, readout
LOCAL_PARAMS = ("W_in", "W_rec", "b", "W_out", "b_out")


class EPropState(NamedTuple):
    net: NamedTuple
    eps: Tensor  # [B, n, K, n_pre] eligibility vectors of the synapses (W_in, W_rec)
    eps_b: Tensor  # [B, n, K] eligibility vectors of the bias b
    ebar: Tensor  # [B, n, n_pre] filtered eligibility traces bar e
    ebar_b: Tensor  # [B, n]
    zbar: Tensor  # [B, n] filtered hidden output (readout gradient)
    bbar: Tensor  # [] filtered 1 (b_out gradient)
    B: Tensor | None  # [n_out, n] feedback matrix (None: symmetric, W_out itself)



@accelerated
@dataclasses.dataclass(frozen=True)
class EProp(AbstractRule):
    """e-prop (module docstring) on any network of local form with element-wise trace fields (rate, LIF, ALIF).

    ``feedback``: ``"symmetric"`` (B = W_out^T), ``"random"`` (fixed, drawn from ``init``'s seed, N(0, 1/n)),
    ``"adaptive"`` (random, then ``B <- B - feedback_lr (g_Wout^T + feedback_decay B)``).
    ``adaptive_eligibility``: ``None`` or ``True`` keep every component; ``False`` drops the components of the
    threshold adaptation (:attr:`adaptation`: ALIF's ``a``), so ``eps^a`` stays 0; on a model without one only
    ``None`` is valid. ``fast``: run the windowed path (:mod:`neuro.rules._fast.eprop`, the same numbers)
    or the equations (``False``). ``window``: steps per window of the windowed path. The rule is declared
    deterministic (its default feedback is); with random or adaptive feedback the estimate depends on
    ``init``'s seed.
    """

    feedback: str = "symmetric"
    feedback_lr: float = 1e-3
    feedback_decay: float = 1e-2
    adaptive_eligibility: bool | None = None
    fast: bool = True
    window: int = 128

    name = "eprop"
    needs = Needs.LOCAL
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_lr", self.feedback_lr, allow_zero=True)
        check_positive("feedback_decay", self.feedback_decay, allow_zero=True)
        check_positive("window", self.window, integer=True)
        if self.adaptive_eligibility not in (None, True, False):
            raise ValueError(f"adaptive_eligibility={self.adaptive_eligibility!r} is invalid: "
                             "expected None, True or False")
        net = self.net
        self._require_local_form()
        if not net.trace_fields:
            raise self._refuse("its neuron has no element-wise trace fields (e-prop needs one state per unit, "
                               "driven by one entry of the current)")
        shapes = net.param_shapes()
        extra = sorted(set(shapes) - set(LOCAL_PARAMS))
        if extra or shapes.get("b", (net.n_hidden,)) != (net.n_hidden,):
            raise self._refuse(f"its parameters {sorted(shapes)} are not those of local form "
                               f"({', '.join(LOCAL_PARAMS)}, with b of shape ({net.n_hidden},))")
        if self.adaptive_eligibility is not None and not self.adaptation:
            raise ValueError(f"adaptive_eligibility={self.adaptive_eligibility!r} is invalid for model {net.name!r}: "
                             "it selects the eligibility of a threshold adaptation (a trace field driven only by the "
                             f"neuron's spikes), and none of its trace fields {net.trace_fields} is one "
                             "(leave it None)")

    @functools.cached_property
    def adaptation(self) -> tuple[str, ...]:
        """The trace fields of the neuron's threshold adaptation: those driven only by its own spikes, i.e. whose
        update with the spikes held fixed (``net.linear_filter``) reads neither the current, nor the bias, nor
        another field (ALIF's ``a_t = rho a_{t-1} + z_t``: the paper's adaptive component ``eps^a``)."""
        f, K = self.net.linear_filter(), len(self.net.trace_fields)
        if f is None:
            return ()
        return tuple(name for k, name in enumerate(self.net.trace_fields)
                     if f.dh_dI[k] == 0 and f.dh_db[k] == 0 and all(f.dh_dh[k][g] == 0 for g in range(K) if g != k))

    @property
    def dropped(self) -> tuple[str, ...]:
        """The trace fields whose eligibility component is dropped (``adaptive_eligibility=False``)."""
        return self.adaptation if self.adaptive_eligibility is False else ()

    def feedback_init(self, params: Params, seed: int) -> Tensor | None:
        """The feedback ``B^T`` [n_out, n] at the start: None (symmetric), else N(0, 1/n) from ``seed``."""
        if self.feedback == "symmetric":
            return None
        return feedback_matrix(self.net.n_out, self.net.n_hidden, seed, params["W_out"])  # [n_out, n]: N(0, 1/n)

    def feedback_update(self, B: Tensor | None, g_out: Tensor) -> Tensor | None:
        """Adaptive feedback: ``B <- B - feedback_lr (g_Wout + feedback_decay B)``; else ``B`` unchanged."""
        if self.feedback != "adaptive":
            return B
        return B - self.feedback_lr * (g_out + self.feedback_decay * B)

    def factors(self, d: Derivatives) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(D, c, Z, zi, c_b, zi_b)`` of one step (module docstring) from the model's derivatives ``d``:
        ``D`` [B, n, K, K], ``c`` [B, n, K], ``Z`` [B, n, K], ``zi`` [B, n] and the bias's ``c_b`` [B, n, K],
        ``zi_b`` [B, n] (through the current too where ``bias_in_current``). The rows of the dropped fields are
        0, so their eligibility vectors stay 0."""
        c_b, zi_b = d.dh_db, d.dz_db
        if self.net.bias_in_current:
            c_b, zi_b = c_b + d.dh_dI, zi_b + d.dz_dI
        D, c = d.dh_dh, d.dh_dI
        if self.dropped:
            keep = torch.tensor([f not in self.dropped for f in self.net.trace_fields], dtype=c.dtype, device=c.device)
            D, c, c_b = D * keep[:, None], c * keep, c_b * keep
        return D, c, d.dz_dh, d.dz_dI, c_b, zi_b

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> EPropState:
        check_positive("batch", batch, integer=True)
        net = self.net
        n, K, n_pre = net.n_hidden, len(net.trace_fields), net.n_in + net.n_hidden
        new = params["W_rec"].detach().new_zeros
        return EPropState(net=net.init_state(params, batch), eps=new(batch, n, K, n_pre), eps_b=new(batch, n, K),
                          ebar=new(batch, n, n_pre), ebar_b=new(batch, n), zbar=new(batch, n), bbar=new(()),
                          B=self.feedback_init(params, seed))

    def step(self, params: Params, state: EPropState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, kappa = self.net, self.net.readout_decay
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        pre = torch.cat([x, net.presynaptic(state.net)], dim=1)  # [B, n_pre] = [x^t, p^{t-1}]
        d = net.neuron_derivatives(p, state.net, net.current(p, state.net, x))
        s, y_hat = net.readout(p, d.state, d.z)
        dE_dy = losses.grad(self.loss or "mse", y_hat, y, mask)  # [B, n_out]
        D, c, Z, zi, c_b, zi_b = self.factors(d)
        L = dE_dy @ (p["W_out"] if state.B is None else state.B)  # learning signal [B, n]
        # synapses: e^t = Z eps^{t-1} + zi pre,  eps^t = D eps^{t-1} + c pre,  bar e^t = kappa bar e^{t-1} + e^t
        e = torch.einsum("bjf,bjfk->bjk", Z, state.eps) + zi[:, :, None] * pre[:, None, :]
        eps = torch.einsum("bjgf,bjfk->bjgk", D, state.eps) + c[:, :, :, None] * pre[:, None, None, :]
        ebar = kappa * state.ebar + e
        # the bias: the same with pre = 1
        e_b = torch.einsum("bjf,bjf->bj", Z, state.eps_b) + zi_b
        eps_b = torch.einsum("bjgf,bjf->bjg", D, state.eps_b) + c_b
        ebar_b = kappa * state.ebar_b + e_b
        # the readout's exact gradient (dE/dy^t) bar z^t
        zbar = kappa * state.zbar + d.z
        bbar = kappa * state.bbar + 1.0
        gW = torch.einsum("bj,bjk->jk", L, ebar)  # sum_t L^t bar e^t (this step's term), summed over the batch
        g = {"W_in": gW[:, :net.n_in], "W_rec": gW[:, net.n_in:], "b": torch.einsum("bj,bj->j", L, ebar_b),
             "W_out": dE_dy.T @ zbar, "b_out": dE_dy.sum(0) * bbar}
        new = EPropState(net=s, eps=eps, eps_b=eps_b, ebar=ebar, ebar_b=ebar_b, zbar=zbar, bbar=bbar,
                         B=self.feedback_update(state.B, g["W_out"]))
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), {k: g[k] for k in params})
