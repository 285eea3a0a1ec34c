"""The generic three-factor rule: ``dw_ij = -eta M_i(t) e_ij(t)``, an eligibility trace built from a
presynaptic and a postsynaptic factor, gated by a third factor (Gerstner et al. 2018, "Eligibility traces
and plasticity on behavioral time scales: experimental support of neoHebbian three-factor learning
rules", Front. Neural Circuits 12:53; the form of Loihi's learning engine, Davies et al. 2018, IEEE Micro
38(1), and of e-prop, Bellec et al. 2020, Nat. Commun. 11:3625, and RFLO, Murray 2019, eLife 8:e43299).

For a synapse ``j -> i`` with presynaptic activity ``a_j(t)`` (``x_{t,j}`` for ``W_in``, ``p_{t-1,j}`` for
``W_rec``, with ``p = net.presynaptic(state)`` what ``W_rec`` multiplies, the constant ``1`` for ``b``), per
step ``t``::

    x_k,j(t) = d_k x_k,j(t-1) + c_k a_j(t)           k = 1..K (K <= 2)   presynaptic traces (Loihi x1, x2)
    pre_j(t) = sum_k x_k,j(t)
    y_i(t)   = d_y y_i(t-1) + c_y post_i(t)                               postsynaptic trace (Loihi y1)
    e_ij(t)  = lambda_e e_ij(t-1) + y_i(t) pre_j(t)                        eligibility (Loihi tag t)
    ebar_ij(t) = kappa ebar_ij(t-1) + e_ij(t)                              readout filter (Loihi tag d)
    dl_t/dW_ij ~ M_i(t) ebar_ij(t)                                         third factor M (Loihi y2)

Fields: ``pre_decay`` = (d_1, ..), ``pre_impulse`` = (c_1, ..), ``post_decay`` = d_y, ``post_impulse`` =
c_y, ``eligibility_decay`` = lambda_e, ``bias_pre_decay`` (``b``'s own single trace, see below).
``kappa`` is not a field: it is the leak of the network's readout (``y_t = kappa y_{t-1} + W_out z_t +
b_out``), the contract's ``net.readout_decay`` (0 for the rate RNN, ``exp(-dt/tau_out)`` for LIF/ALIF).
Filtering by it is what makes the estimate exact at the readout (e-prop's ``ebar``). The postsynaptic
factor ``post_i(t)``:

* ``post="derivative"`` (default): ``dz_{t,i}/dI_{t,i}``, the derivative of ``neuron`` in its input current
  (``dz_dI`` of the contract's ``net.neuron_derivatives``). Rate RNN: ``alpha phi'(i_t)``; LIF (exact
  dynamics): ``kappa_mem psi_t`` with ``psi_t`` the pseudo-derivative of the spike in ``v`` (``kappa_mem`` the
  voltage step for a unit current jump); ALIF: the same at the adaptive threshold (the adaptation's own
  eligibility, e-prop's ``epsilon_a``, does not factorise and is left out). For ``b``: ``dz/db``, through the
  current too where ``net.bias_in_current`` (``dz_db + dz_dI``);
* ``post="activity"``: ``z_{t,i}`` (Hebbian; not a gradient estimate).

The third factor ``M_i(t)``: ``third="error"``: ``(B eps_t)_i`` with ``eps_t = dl_t/dy_t`` (masked, divided
by the batch size) and ``B`` [n, n_out] = ``W_out^T`` (``feedback="readout"``) or a fixed random matrix
(``feedback="random"``, N(0, feedback_scale^2/n_out) entries, Murray's scale, drawn from ``init``'s seed
and kept across ``reset``). ``third="reward"``: a global scalar ``M(t) = l_t - lbar_t`` (the per-sample loss,
a cost, minus its running mean ``lbar_t = r lbar_{t-1} + (1 - r) l_t``, ``r = reward_decay``) broadcast to
every unit, as Loihi's reward channel; without exploration noise this is not a gradient estimate. The
readout (``W_out``, ``b_out``) always learns with its exact local gradient ``eps_t zbar_t^T``, ``eps_t cbar_t``
(``zbar = kappa zbar + z_t``, ``cbar = kappa cbar + 1``).

Special cases (tests/neuro/rules/test_three_factor.py checks them in float64):

* RFLO (rate): ``pre_decay=(0,)``, ``pre_impulse=(1,)``, ``post="derivative"``, ``eligibility_decay = 1 -
  alpha`` gives :mod:`neuro.rules.rflo` exactly (the same feedback and seed).
* e-prop (LIF, ``detach_reset=True``, no refractory period): with the membrane and synaptic decays
  ``alpha``, ``beta`` of the dynamics (``exp(-dt/tau_mem)``, ``exp(-dt/tau_syn)`` for the exact and Lava
  dynamics, ``1 - dt/tau_mem``, ``1 - dt/tau_syn`` for forward Euler), ``pre_decay=(alpha, beta)``,
  ``pre_impulse=(alpha/(alpha-beta), -beta/(alpha-beta))`` (the voltage kernel of a current jump, ``sum_m
  alpha^(k-m) beta^m``, normalised to 1 at lag 0), ``eligibility_decay=0``, ``bias_pre_decay=alpha``:
  e-prop's ``e_ij = psi_i epsilon_ij`` (its eligibility vector factorises into presynaptic traces because the
  sub-threshold dynamics are linear and the same for every unit), equal to :mod:`neuro.rules.eprop`. ``b``
  enters the membrane directly, not through the synaptic current: its constant input goes through one trace
  of decay ``bias_pre_decay`` (impulse 1) when that is set, else through the synapses' traces (right for the
  rate RNN, where ``b`` is part of the current).

Mapping onto Lava's ``Loihi3FLearningRule`` (magma/core/learning): ``x1``, ``x2`` are the presynaptic
traces (``x1_impulse = |c_1|``, ``x1_tau`` with ``d_1 = exp(-1/x1_tau)``, Lava's ``decay_trace``; Loihi's
traces are non-negative, so a negative ``c_k`` becomes a minus sign in ``dt``), ``y1`` the postsynaptic factor
sent by the neuron each step (3F rules overwrite y1..y3 from the neuron: ``y1 = y_i(t)``), ``y2`` the
third factor ``M_i(t)`` (graded, per post-neuron through a ``Dense`` from the error or reward unit),
``dt = "x1*y1 + x2*y1 - (1-lambda_e)*t"`` (tag_1 = e), ``dd = "t - (1-kappa)*d"`` (tag_2 = ebar) and
``dw = "-eta*y2*d"`` (or ``*t`` when ``kappa = 0``), up to the order in which the chip applies ``dt`` and
``dd`` within an epoch. Loihi rounds the constants to ``m 2^e`` (:mod:`hw_targets.lava.learning`).

*Stacks of layers* (:class:`models.stack.Stack` of rate, lif or alif layers): the same equations per layer,
each synapse reading its own presynaptic vector, as a three-factor rule is local to its synapse: ``a_j(t)``
is ``u^l_{t,j}`` for ``W^l_in`` (the input ``x_t`` for the first layer, the layer below's output of the same
step ``z^{l-1}_t`` above it; with ``skip``, ``[z^{l-1}_t, x_t]``; the stack's ``layer_input``),
``p^l_{t-1,j}`` for ``W^l_rec``, ``1`` for ``b^l``; the postsynaptic factor is the layer's own neuron's
derivative at its whole current ``I^l_t`` (the stack's ``complete``). The third factor reaches every layer
the way the single-layer rule reaches every unit: ``third="error"`` with ``feedback="random"`` through a
fixed random matrix per layer ``B^l`` [n_l, n_out] (drawn as the single-layer ``B`` from seed ``seed +
1000003 l``, the stack's seed rule for its layers; direct feedback alignment's multi-layer broadcast,
Nokland 2016, "Direct feedback alignment provides learning in deep neural networks", NeurIPS);
``feedback="readout"`` with ``B^l`` the readout's columns of layer ``l``, so only on a stack whose readout
reads every layer (``skip=True``; a stack without skip connections refuses it); ``third="reward"`` the same
scalar to every unit. The readout filter ``kappa`` is the stack's readout's. The path from a lower layer's
weights through the layers above within the step is not followed. A single-layer network is the case
``L = 1`` of these equations; a stack's synapse groups are ``"0.W_in"``, ``"0.W_rec"``, ``"0.b"``,
``"1.W_in"``, ... (its parameters' keys), and it runs these equations, not the windowed path below.
tests/neuro/rules/test_stack_rules.py holds sparse 2-layer lif and alif stacks to the single-layer equations
written out per layer (float64).

Generic: the rule reads the network only through the cell contract (``local_form``, ``presynaptic``,
``bias_in_current``, ``readout_decay``, ``neuron_derivatives``; :mod:`neuro.contract`), so it runs on every
network of local form whose neuron has element-wise trace fields (rate, LIF, ALIF). The estimate is
emitted every step; memory O(B n) without per-synapse traces (``eligibility_decay = 0`` and ``kappa = 0``),
O(B p) with them. A faster computation of the same numbers (a window of steps summed as one matrix product
per parameter, :mod:`neuro.rules._fast.three_factor`) runs by default; ``fast=False`` runs the equations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from models.stack import Stack
from neuro import losses
from neuro.contract import Params, check_choice, check_positive

from ._common import feedback_matrix
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["ThreeFactor", "ThreeFactorState"]

POSTS = ("derivative", "activity")
THIRDS = ("error", "reward")
FEEDBACKS = ("random", "readout")
SYNAPSES = ("W_in", "W_rec", "b")  # the synapses with an eligibility trace (presynaptic x, p_{t-1}, 1)


class ThreeFactorState(NamedTuple):
    net: NamedTuple
    x: tuple  # per synapse group (W_in, W_rec, b): [K, B, n_pre] presynaptic traces
    y: tuple  # per group: [B, n] postsynaptic traces (size 0 when post_decay = 0)
    e: tuple  # per group: [B, n, n_pre] eligibility (size 0 when eligibility_decay = 0)
    ebar: tuple  # per group: [B, n, n_pre] readout-filtered eligibility (size 0 when kappa = 0)
    zbar: Tensor  # [B, n] readout trace of z (size 0 when kappa = 0)
    cbar: Tensor  # [B, 1] readout trace of the constant 1 (size 0 when kappa = 0)
    baseline: Tensor  # [B] running mean of the per-sample loss (third="reward")
    B: Tensor  # [n, n_out] random feedback (feedback="random"), else size 0


def _unit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: expected a decay per step in [0, 1)")



@accelerated
@dataclasses.dataclass(frozen=True)
class ThreeFactor(AbstractRule):
    """``dl/dW_ij ~ M_i(t) ebar_ij(t)`` (module docstring); fields are the traces' decays and impulses and
    the choice of postsynaptic factor and third factor. ``fast``: run the windowed sum
    (:mod:`neuro.rules._fast.three_factor`, the same numbers) or the equations (``False``); ``window``: its
    steps per window."""

    pre_decay: tuple[float, ...] = (0.0,)
    pre_impulse: tuple[float, ...] = (1.0,)
    post: str = "derivative"
    post_decay: float = 0.0
    post_impulse: float = 1.0
    eligibility_decay: float = 0.0
    bias_pre_decay: float | None = None
    third: str = "error"
    feedback: str = "random"
    feedback_scale: float = 1.0
    reward_decay: float = 0.99
    window: int = 64
    fast: bool = True

    name = "three-factor"
    needs = Needs.LOCAL
    stochastic = True  # the seed draws the random feedback B (feedback="readout" uses no random numbers)
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("pre_decay", "pre_impulse"):
            v = getattr(self, f)
            if not isinstance(v, tuple) or not 1 <= len(v) <= 2:
                raise ValueError(f"{f}={v!r} is invalid: expected a tuple of 1 or 2 numbers (Loihi's x1, x2)")
        if len(self.pre_decay) != len(self.pre_impulse):
            raise ValueError(f"pre_decay={self.pre_decay!r} and pre_impulse={self.pre_impulse!r} have different "
                             "lengths: give one impulse per presynaptic trace")
        for k, d in enumerate(self.pre_decay):
            _unit(f"pre_decay[{k}]", d)
        for k, c in enumerate(self.pre_impulse):
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise ValueError(f"pre_impulse[{k}]={c!r} is invalid: expected a finite number")
        for f in ("post_decay", "eligibility_decay", "reward_decay"):
            _unit(f, getattr(self, f))
        if self.bias_pre_decay is not None:
            _unit("bias_pre_decay", self.bias_pre_decay)
        check_positive("post_impulse", self.post_impulse)
        check_choice("post", self.post, POSTS)
        check_choice("third", self.third, THIRDS)
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_scale", self.feedback_scale)
        check_positive("window", self.window, integer=True)
        net = self.net
        if not isinstance(net, Stack):
            self._require_local_form()
        for layer in self._layers():
            if not layer.local_form:
                raise self._refuse(f"its layers ({layer.name!r}) are not of local form (local_form)")
            if not layer.trace_fields:
                raise self._refuse("its neuron has no element-wise trace fields (the postsynaptic factor is one "
                                   "unit's dz/dI)")
        if isinstance(net, Stack):
            if self.third == "error" and self.feedback == "readout" and net.readout_units != slice(0, net.n_hidden):
                raise ValueError("feedback='readout' is invalid on a stack without skip connections: the readout "
                                 "reads the last layer only, so the lower layers have no readout columns to take "
                                 "as feedback; use feedback='random' (or a stack with skip=True)")

    # -- the pieces of one step, shared with the fast path ---------------------------------------------------
    def groups(self, params: Params) -> list[str]:
        """The synapse groups of ``params`` with an eligibility trace, in the order of the state's tuples (a
        stack's: layer by layer, under its keys ``"l.W_in"``, ...)."""
        pres = [f"{l}." for l in range(len(self.net.sizes))] if isinstance(self.net, Stack) else [""]
        return [q + g for q in pres for g in SYNAPSES if q + g in params]

    def traces(self, group: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(decays ``d_k``, impulses ``c_k``) of the presynaptic traces of a synapse group."""
        if group.rpartition(".")[2] == "b" and self.bias_pre_decay is not None:
            return (self.bias_pre_decay,), (1.0,)
        return self.pre_decay, self.pre_impulse

    def third_factor(self, params: Params, state: NamedTuple, eps: Tensor, y_hat: Tensor, y: Tensor,
                     mask: Tensor) -> tuple[Tensor, Tensor]:
        """``M(t)`` [B, n] (a stack: every unit of every layer) and the new reward baseline [B] (module
        docstring)."""
        if self.third == "error":
            return eps @ (params["W_out"] if self.feedback == "readout" else state.B.T), state.baseline
        l_b = losses.per_sample(self.loss or "mse")(y_hat, y) * mask.to(y_hat.dtype)  # l_t per sample [B]
        M = ((l_b - state.baseline) / y_hat.shape[0])[:, None].expand(-1, self.net.n_hidden)
        return M, self.reward_decay * state.baseline + (1.0 - self.reward_decay) * l_b

    def _layers(self) -> tuple:
        """The layers: a stack's, or the network itself."""
        return self.net.layers if isinstance(self.net, Stack) else (self.net,)

    def _layer_steps(self, p: Params, s: NamedTuple, x: Tensor) -> tuple[list, NamedTuple, Tensor]:
        """The neurons' step layer by layer: per layer ``(key prefix, layer, {group: a_j(t)}, Derivatives at
        I^l_t)``, then the state after the neurons and the output ``z_t`` of every unit."""
        net = self.net
        if not isinstance(net, Stack):
            d = net.neuron_derivatives(p, s, net.current(p, s, x))
            return [("", net, {"W_in": x, "W_rec": net.presynaptic(s)}, d)], d.state, d.z
        i, out, below = net.current(p, s, x), [], None
        for l, layer in enumerate(net.layers):
            lp, ls = net.layer_params(p, l), net.layer_state(s, l)
            d = layer.neuron_derivatives(lp, ls, net.complete(p, i, below, l))
            out.append((f"{l}.", layer, {"W_in": net.layer_input(x, below, l), "W_rec": layer.presynaptic(ls)}, d))
            below = d.z
        return out, net.join_states([o[-1].state for o in out], getattr(s, "y", None)), torch.cat([o[-1].z for o in out], 1)

    # -- the rule ----------------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ThreeFactorState:
        check_positive("batch", batch, integer=True)
        net, kappa = self.net, self.net.readout_decay
        like, n = params["W_out"].detach(), net.n_hidden
        new = like.new_zeros
        layers = self._layers()
        pre, post = {}, {}  # n_pre and n of every group
        for l, layer in enumerate(layers):
            q = f"{l}." if isinstance(net, Stack) else ""
            for g, m in (("W_in", layer.n_in), ("W_rec", layer.n_hidden), ("b", 1)):
                pre[q + g], post[q + g] = m, layer.n_hidden
        groups = self.groups(params)
        per_syn = lambda g, on: new(batch, post[g], pre[g]) if on else new(0)  # noqa: E731
        B = torch.cat([feedback_matrix(layer.n_hidden, net.n_out, seed + 1000003 * l, like, self.feedback_scale)
                       for l, layer in enumerate(layers)]) if self.feedback == "random" else new(0)
        return ThreeFactorState(
            net=net.init_state(params, batch),
            x=tuple(new(len(self.traces(g)[0]), batch, pre[g]) for g in groups),
            y=tuple(new(batch, post[g]) if self.post_decay > 0 else new(0) for g in groups),
            e=tuple(per_syn(g, self.eligibility_decay > 0) for g in groups),
            ebar=tuple(per_syn(g, kappa > 0) for g in groups),
            zbar=new(batch, n) if kappa > 0 else new(0), cbar=new(batch, 1) if kappa > 0 else new(0),
            baseline=new(batch), B=B)

    def step(self, params: Params, state: ThreeFactorState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, kappa, lam = self.net, self.net.readout_decay, self.eligibility_decay
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        layers, s_mid, z = self._layer_steps(p, state.net, x)  # z_t and each layer's neuron derivatives
        s_new, y_hat = net.readout(p, s_mid, z)
        eps = losses.grad(self.loss or "mse", y_hat, y, mask)  # dl_t/dy_t [B, n_out] (masked, / B)
        M_all, baseline = self.third_factor(p, state, eps, y_hat, y, mask)  # M_i(t) [B, n] (all layers' units)
        index = {g: gi for gi, g in enumerate(self.groups(p))}  # the state's tuples, by group

        xs, ys, es, ebars, grad, lo = {}, {}, {}, {}, {}, 0
        for q, layer, a, d in layers:
            M = M_all[:, lo:lo + layer.n_hidden]  # this layer's units
            lo += layer.n_hidden
            a = {**a, "b": torch.ones_like(x[:, :1])}  # a_j(t)
            if self.post == "activity":
                post = {g: d.z for g in SYNAPSES}
            else:  # dz/dI for the synapses, dz/db for b (b may be a term of the current, rate, or of the neuron, LIF)
                post = {"W_in": d.dz_dI, "W_rec": d.dz_dI, "b": d.dz_db + d.dz_dI if layer.bias_in_current else d.dz_db}
            for g in SYNAPSES:
                if q + g not in index:
                    continue
                gi = index[q + g]
                dec, imp = (torch.tensor(c, dtype=x.dtype, device=x.device)[:, None, None] for c in self.traces(q + g))
                x_k = dec * state.x[gi] + imp * a[g][None]  # x_k,j(t) [K, B, n_pre]
                pre = x_k.sum(0)  # pre_j(t) [B, n_pre]
                y_i = self.post_impulse * post[g]  # y_i(t) [B, n]
                if self.post_decay > 0:
                    y_i = self.post_decay * state.y[gi] + y_i
                e = y_i[:, :, None] * pre[:, None, :]  # e_ij(t) [B, n, n_pre]
                if lam > 0:
                    e = lam * state.e[gi] + e
                ebar = kappa * state.ebar[gi] + e if kappa > 0 else e  # ebar_ij(t)
                est = torch.einsum("bi,bij->ij", M, ebar)  # sum over the batch of M_i(t) ebar_ij(t)
                grad[q + g] = est[:, 0] if g == "b" else est
                xs[gi] = x_k
                ys[gi] = y_i if self.post_decay > 0 else state.y[gi]
                es[gi] = e if lam > 0 else state.e[gi]
                ebars[gi] = ebar if kappa > 0 else state.ebar[gi]
        if kappa > 0:
            zbar, cbar = kappa * state.zbar + z, kappa * state.cbar + 1.0
        else:
            zbar, cbar = z, torch.ones_like(z[:, :1])
        read = net.readout_units if isinstance(net, Stack) else slice(None)  # the units the readout reads
        grad["W_out"] = eps.T @ zbar[:, read]
        grad["b_out"] = (eps * cbar).sum(0)
        order = range(len(index))
        new = state._replace(net=s_new, x=tuple(xs[i] for i in order), y=tuple(ys[i] for i in order),
                             e=tuple(es[i] for i in order), ebar=tuple(ebars[i] for i in order),
                             zbar=zbar if kappa > 0 else state.zbar, cbar=cbar if kappa > 0 else state.cbar,
                             baseline=baseline)
        # a parameter outside the contract's local form gets no signal
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask),
                          {k: grad[k] if k in grad else torch.zeros_like(v) for k, v in p.items()})
