"""The generic three-factor rule: ``dw_ij = -eta M_i(t) e_ij(t)``, an eligibility trace built from a
presynaptic and a postsynaptic factor, gated by a third factor (Gerstner et al. 2018, "Eligibility traces
and plasticity on behavioral time scales: experimental support of neoHebbian three-factor learning
rules", Front. Neural Circuits 12:53; the form of Loihi's learning engine, Davies et al. 2018, IEEE Micro
38(1), and of e-prop, Bellec et al. 2020, Nat. Commun. 11:3625, and RFLO, Murray 2019, eLife 8:e43299).

For a synapse ``j -> i`` with presynaptic activity ``a_j(t)`` (``x_{t,j}`` for ``W_in``, ``z_{t-1,j}``
for ``W_rec``, the constant ``1`` for ``b``), per step ``t``::

    x_k,j(t) = d_k x_k,j(t-1) + c_k a_j(t)           k = 1..K (K <= 2)   presynaptic traces (Loihi x1, x2)
    pre_j(t) = sum_k x_k,j(t)
    y_i(t)   = d_y y_i(t-1) + c_y post_i(t)                               postsynaptic trace (Loihi y1)
    e_ij(t)  = lambda_e e_ij(t-1) + y_i(t) pre_j(t)                        eligibility (Loihi tag t)
    ebar_ij(t) = kappa ebar_ij(t-1) + e_ij(t)                              readout filter (Loihi tag d)
    dl_t/dW_ij ~ M_i(t) ebar_ij(t)                                         third factor M (Loihi y2)

Fields: ``pre_decay`` = (d_1, ..), ``pre_impulse`` = (c_1, ..), ``post_decay`` = d_y, ``post_impulse`` =
c_y, ``eligibility_decay`` = lambda_e, ``bias_pre_decay`` (``b``'s own single trace, see below).
``kappa`` is not a field: it is the leak of the network's readout (``y_t = kappa y_{t-1} + W_out z_t +
b_out``), read off ``readout`` through the contract (one ``jvp`` in its state at ``init``; 0 for the rate
RNN, ``exp(-dt/tau_out)`` for LIF/ALIF). Filtering by it is what makes the estimate exact at the readout
(e-prop's ``ebar``). The postsynaptic factor ``post_i(t)``:

* ``post="derivative"`` (default): ``dz_{t,i}/dI_{t,i}``, the derivative of ``neuron`` in its input
  current (one reverse pass of ``sum(z_t)``, the neuron being element-wise; see
  :func:`neuro.rules.rflo.local_step`). Rate RNN: ``alpha phi'(i_t)``; LIF (exact dynamics):
  ``kappa_mem psi_t`` with ``psi_t`` the pseudo-derivative of the spike in ``v`` (``kappa_mem`` the voltage
  step for a unit current jump); ALIF: the same at the adaptive threshold
  (the adaptation's own eligibility, e-prop's ``epsilon_a``, does not factorise and is left out). For ``b``
  the derivative of ``neuron(current(.))`` in ``b`` (``dz/db``);
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
  dynamics, ``1 - dt/tau_mem``, ``1 - dt/tau_syn`` for forward Euler), ``pre_decay=(alpha, beta)``, ``pre_impulse=(alpha/(alpha-beta),
  -beta/(alpha-beta))`` (the voltage kernel of a current jump, ``sum_m alpha^(k-m) beta^m``, normalised to
  1 at lag 0), ``eligibility_decay=0``, ``bias_pre_decay=alpha``: e-prop's ``e_ij = psi_i epsilon_ij``
  (its eligibility vector factorises into presynaptic traces because the sub-threshold dynamics are
  linear and the same for every unit), equal to :mod:`neuro.rules.eprop`. ``b`` enters the membrane
  directly, not through the synaptic current: its constant input goes through one trace of decay
  ``bias_pre_decay`` (impulse 1) when that is set, else through the synapses' traces (right for the rate
  RNN, where ``b`` is part of the current).

Mapping onto Lava's ``Loihi3FLearningRule`` (magma/core/learning): ``x1``, ``x2`` are the presynaptic
traces (``x1_impulse = |c_1|``, ``x1_tau`` with ``d_1 = exp(-1/x1_tau)``, Lava's ``decay_trace``; Loihi's
traces are non-negative, so a negative ``c_k`` becomes a minus sign in ``dt``), ``y1`` the postsynaptic factor
sent by the neuron each step (3F rules overwrite y1..y3 from the neuron: ``y1 = y_i(t)``), ``y2`` the
third factor ``M_i(t)`` (graded, per post-neuron through a ``Dense`` from the error or reward unit),
``dt = "x1*y1 + x2*y1 - (1-lambda_e)*t"`` (tag_1 = e), ``dd = "t - (1-kappa)*d"`` (tag_2 = ebar) and
``dw = "-eta*y2*d"`` (or ``*t`` when ``kappa = 0``), up to the order in which the chip applies ``dt`` and
``dd`` within an epoch. Loihi rounds the constants to ``m 2^e``.

Generic: only the cell contract is used (``current``, ``neuron``, ``readout`` and the parameter names
``W_in``, ``W_rec``, ``b``, ``W_out``, ``b_out`` of its documented form). The presynaptic activity of
``W_rec`` is read off ``current`` (linear in ``W_rec``: once per network, to find the state field it reads).
Memory O(B n) without per-synapse traces (``eligibility_decay = 0`` and ``kappa = 0``), O(B p) with them.

Windowed sum (``fast=True``, the default; ``fast=False`` is the per-step recursion above, O(B p) per step,
kept as the reference). Every option factorises: the presynaptic traces ``pre_j(t)`` and the postsynaptic
trace ``y_i(t)`` are O(n) per step, and ``e``, ``ebar`` are a linear filter of the rank-one terms
``y(t) pre(t)^T``, the same for every synapse (:mod:`neuro.rules._window`, state ``q = (e, ebar)``)::

    q(t) = A q(t-1) + (1, 1) y(t) pre(t)^T      A = [[lambda_e, 0], [lambda_e, kappa]]      ebar(t) = (0, 1) q(t)

(one component when ``lambda_e`` or ``kappa`` is 0, none when both are). Over a window of ``window`` steps
``sum_t M(t) (.) ebar(t)`` is, per parameter, one matrix product [n, w B] @ [w B, n_pre] (``W_in`` and
``W_rec`` share its left factor, built from ``y`` and ``M``) plus the carry of ``q`` to the window's end, one
batched product per component (with batch 1 both in one product); ``b`` is the same with its own ``y``
(``dz/db``) and ``pre``. The readout's ``eps_t zbar_t^T`` is summed over the window in one product too. The estimate of a window comes at its last step, from :meth:`ThreeFactor.flush`
(an update is due) and from :meth:`ThreeFactor.finish`; the other steps return ``None``. ``dz/dI`` and
``dz/db`` come from their closed forms for the rate RNN and LIF (:func:`neuro.rules.rflo.closed_form_step`),
else from the reverse pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_choice, check_positive
from neuro.losses import per_sample

from . import _window
from .base import AbstractRule, Needs, StepOutput
from .rflo import FEEDBACKS, closed_form_step, feedback_matrix, local_step

__all__ = ["ThreeFactor", "ThreeFactorState"]

POSTS = ("derivative", "activity")
THIRDS = ("error", "reward")
_SYN = ("W_in", "W_rec", "b")  # the synapses with an eligibility trace (presynaptic x, z_{t-1}, 1)


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
    kappa: float  # the readout's leak
    #: windowed: ``window`` rows [B, 5n + n_in + n_out + 2] (y, y_b, M, pre_in, pre_rec, pre_b, eps, zbar, cbar)
    rows: tuple = ()
    t: int = 0  # windowed: the number of pending steps (e, ebar are those at the window's start)
    rec: int = -1  # windowed: the state field that is W_rec's presynaptic activity (-1: read off current)


@functools.lru_cache(maxsize=32)
def _presynaptic_field(net) -> int:
    """The index of the field of ``net``'s state that ``current`` multiplies by ``W_rec`` (``current`` is linear in
    ``W_rec``: with ``W_rec = I``, every other parameter and the input 0, and a random state, it returns that
    field), or -1 when no field is it."""
    params = net.init_params(seed=0, dtype=torch.float64)
    probe = {k: torch.zeros_like(v) for k, v in params.items()}
    probe["W_rec"] = torch.eye(net.n_hidden, dtype=torch.float64)
    s = net.init_state(params, 1)
    g = torch.Generator().manual_seed(0)
    s = type(s)(*[torch.rand(f.shape, generator=g, dtype=f.dtype) + 1.0 for f in s])
    a = net.current(probe, s, torch.zeros(1, net.n_in, dtype=torch.float64))
    for k, f in enumerate(s):
        if f.shape == a.shape and torch.equal(f, a):
            return k
    return -1


@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)[:, None, None]


def _unit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is invalid: expected a decay per step in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ThreeFactor(AbstractRule):
    """``dl/dW_ij ~ M_i(t) ebar_ij(t)`` (module docstring); fields are the traces' decays and impulses and
    the choice of postsynaptic factor and third factor. ``fast``: the windowed sum (one matrix product per
    ``window`` steps) and the closed-form derivatives; ``fast=False``: the per-step reference."""

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
    supports = ("rate", "lif", "alif")
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
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast={self.fast!r} is invalid: expected True or False")

    # -- helpers -------------------------------------------------------------------------------------------
    def _readout_leak(self, params: Params) -> float:
        """``kappa``: the derivative of the readout's output in its own previous state (a jvp with ones)."""
        net = self.net
        s = net.init_state(params, 1)
        ones = type(s)(*[torch.ones_like(f) for f in s])
        z = torch.zeros(1, net.n_hidden, dtype=s[0].dtype, device=s[0].device)
        _, dy = torch.func.jvp(lambda st: net.readout(params, st, z)[1], (s,), (ones,))
        k = dy.flatten()
        if not torch.allclose(k, k[0].expand_as(k)):
            raise ValueError(f"three-factor needs one readout leak for every output; model {net.name!r} "
                             f"has {k.tolist()}")
        return float(k[0])

    def _pre(self, group: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(decays, impulses) of the presynaptic traces of a synapse group."""
        if group == "b" and self.bias_pre_decay is not None:
            return (self.bias_pre_decay,), (1.0,)
        return self.pre_decay, self.pre_impulse

    def _n_pre(self) -> dict[str, int]:
        return {"W_in": self.net.n_in, "W_rec": self.net.n_hidden, "b": 1}

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ThreeFactorState:
        check_positive("batch", batch, integer=True)
        net = self.net
        missing = sorted({"W_in", "W_rec", "W_out", "b_out"} - set(params))
        if missing:
            raise ValueError(f"three-factor needs the contract's parameters W_in, W_rec, W_out, b_out; "
                             f"{missing} missing")
        p = params["W_rec"]
        zeros = lambda *s: torch.zeros(*s, dtype=p.dtype, device=p.device)  # noqa: E731
        kappa = self._readout_leak({k: v.detach() for k, v in params.items()})
        n = net.n_hidden
        groups = [g for g in _SYN if g in params]
        pre = self._n_pre()
        per_syn = lambda g, on: zeros(batch, n, pre[g]) if on else zeros(0)  # noqa: E731
        B = feedback_matrix(n, net.n_out, seed, p, self.feedback_scale) if self.feedback == "random" else zeros(0)
        state = ThreeFactorState(
            net=net.init_state(params, batch),
            x=tuple(zeros(len(self._pre(g)[0]), batch, pre[g]) for g in groups),
            y=tuple(zeros(batch, n) if self.post_decay > 0 else zeros(0) for _ in groups),
            e=tuple(per_syn(g, self.eligibility_decay > 0) for g in groups),
            ebar=tuple(per_syn(g, kappa > 0) for g in groups),
            zbar=zeros(batch, n) if kappa > 0 else zeros(0), cbar=zeros(batch, 1) if kappa > 0 else zeros(0),
            baseline=zeros(batch), B=B, kappa=kappa)
        if self.fast:
            self._filter(kappa).coefficients(self.window, p.dtype, p.device)  # a full window's, once (cached)
            width = 5 * n + net.n_in + net.n_out + 2
            state = state._replace(rows=_window.slots(self.window, zeros(batch, width)), rec=_presynaptic_field(net))
        return state

    def step(self, params: Params, state: ThreeFactorState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if self.fast:
            return self._step_windowed(params, state, x, y, mask)
        net = self.net
        params = {k: v.detach() for k, v in params.items()}
        s = state.net
        groups = [g for g in _SYN if g in params]
        # presynaptic activities a_j(t): x_t, z_{t-1} (read off current, linear in W_rec), 1
        probe = {k: torch.zeros_like(v) for k, v in params.items()}
        probe["W_rec"] = torch.eye(net.n_hidden, dtype=x.dtype, device=x.device)
        act = {"W_in": x, "W_rec": net.current(probe, s, torch.zeros_like(x)), "b": torch.ones_like(x[:, :1])}

        f = local_step(net, params, s, x, y, mask, self.loss_fn, bias="b" in groups and self.post == "derivative")
        z, eps, net_state, y_hat = f.z, f.eps, f.net, f.y  # eps = dl_t/dy_t [B, n_out] (masked, / B)
        if self.post == "activity":
            post = {g: z for g in groups}
        else:  # dz/dI for the synapses, dz/db for b (b may enter the current, rate, or the membrane, LIF)
            post = {g: (f.dz_db if g == "b" else f.dz_di) for g in groups}

        if self.third == "error":
            Bm = params["W_out"].T if self.feedback == "readout" else state.B
            M = eps @ Bm.T  # [B, n]
            baseline = state.baseline
        else:
            l_b = per_sample(self.loss or "mse")(y_hat, y) * mask.to(y_hat.dtype)  # [B]
            M = ((l_b - state.baseline) / y_hat.shape[0])[:, None].expand(-1, net.n_hidden)
            baseline = self.reward_decay * state.baseline + (1.0 - self.reward_decay) * l_b

        kappa = state.kappa
        xs, ys, es, ebars, grad = [], [], [], [], {}
        for gi, g in enumerate(groups):
            dec, imp = (torch.tensor(c, dtype=x.dtype, device=x.device)[:, None, None] for c in self._pre(g))
            xt = dec * state.x[gi] + imp * act[g][None]  # [K, B, n_pre]
            yt = post[g] * self.post_impulse
            if self.post_decay > 0:
                yt = self.post_decay * state.y[gi] + yt
            pre_t = xt.sum(0)  # [B, n_pre]
            if self.eligibility_decay == 0 and kappa == 0:  # nothing per synapse to keep: M y pre^T directly
                e = ebar = None
                est = (M * yt).T @ pre_t
            else:
                e = yt[:, :, None] * pre_t[:, None, :]  # [B, n, n_pre]
                if self.eligibility_decay > 0:
                    e = self.eligibility_decay * state.e[gi] + e
                ebar = kappa * state.ebar[gi] + e if kappa > 0 else e
                est = torch.einsum("bi,bij->ij", M, ebar)
            grad[g] = est[:, 0] if g == "b" else est
            xs.append(xt)
            ys.append(yt if self.post_decay > 0 else state.y[gi])
            es.append(e if self.eligibility_decay > 0 else state.e[gi])
            ebars.append(ebar if kappa > 0 else state.ebar[gi])
        if kappa > 0:
            zbar, cbar = kappa * state.zbar + z, kappa * state.cbar + 1.0
        else:
            zbar, cbar = z, torch.ones_like(z[:, :1])
        grad["W_out"] = eps.T @ zbar
        grad["b_out"] = (eps * cbar).sum(0)
        for k in params:
            if k not in grad:  # a parameter outside the contract's documented form gets no signal
                grad[k] = torch.zeros_like(params[k])
        new = state._replace(net=net_state, x=tuple(xs), y=tuple(ys), e=tuple(es), ebar=tuple(ebars),
                             zbar=zbar if kappa > 0 else state.zbar, cbar=cbar if kappa > 0 else state.cbar,
                             baseline=baseline)
        return StepOutput(new, y_hat, f.loss, {k: grad[k].detach() for k in params})

    # -- the windowed path ---------------------------------------------------------------------------------------
    def _filter(self, kappa: float) -> _window.Filter:
        """``q = (e, ebar)`` (module docstring), without the components that are 0 (``lambda_e = 0``: ``e`` is the
        step's own term; ``kappa = 0``: ``ebar = e``)."""
        lam = float(self.eligibility_decay)
        if lam > 0 and kappa > 0:
            return _window.Filter(((lam, 0.0), (lam, kappa)), (1.0, 1.0), (0.0, 1.0))
        return _window.Filter.decay(lam if lam > 0 else kappa)

    def _trace(self, x: Tensor, a: Tensor, group: str) -> tuple[Tensor, Tensor]:
        """The presynaptic traces of ``group`` after the activity ``a`` [B, n_pre] ([K, B, n_pre]) and their sum."""
        dec, imp = self._pre(group)
        if not any(dec) and imp == (1.0,):
            return a[None], a
        xt = _const(imp, a.dtype, a.device) * a[None]
        if any(dec):
            xt = _const(dec, a.dtype, a.device) * x + xt
        return xt, (xt[0] if xt.shape[0] == 1 else xt.sum(0))

    @torch.no_grad()  # nothing here is differentiated (local_step's reverse pass enables grad for itself)
    def _step_windowed(self, p: Params, state: ThreeFactorState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        s = state.net
        groups = [g for g in _SYN if g in p]
        if state.rec >= 0:
            a_rec = s[state.rec]
        else:
            probe = {k: torch.zeros_like(v) for k, v in p.items()}
            probe["W_rec"] = torch.eye(net.n_hidden, dtype=x.dtype, device=x.device)
            a_rec = net.current(probe, s, torch.zeros_like(x))
        bias = "b" in groups and self.post == "derivative"
        f = closed_form_step(net, p, s, x, y, mask, self.loss or "mse", bias=bias)
        if f is None:
            f = local_step(net, p, s, x, y, mask, self.loss_fn, bias=bias)
        z, eps = f.z, f.eps
        if self.third == "error":
            M = eps @ (p["W_out"] if self.feedback == "readout" else state.B.T)  # [B, n]
            baseline = state.baseline
        else:
            l_b = per_sample(self.loss or "mse")(f.y, y) * mask.to(f.y.dtype)  # [B]
            M = ((l_b - state.baseline) / f.y.shape[0])[:, None].expand(-1, net.n_hidden)
            baseline = self.reward_decay * state.baseline + (1.0 - self.reward_decay) * l_b
        act = {"W_in": x, "W_rec": a_rec}
        xs, ys, pre, post = [], [], {}, {}
        for gi, g in enumerate(groups):
            a = act[g] if g != "b" else torch.ones_like(x[:, :1])
            xt, pre[g] = self._trace(state.x[gi], a, g)  # [K, B, n_pre], [B, n_pre]
            xs.append(xt)
            if g == "W_rec" and "W_in" in post:  # the same postsynaptic trace as W_in's
                yt = post["W_in"]
            else:
                yt = z if self.post == "activity" else (f.dz_db if g == "b" else f.dz_di)
                if self.post_impulse != 1.0:
                    yt = yt * self.post_impulse
                if self.post_decay > 0:
                    yt = self.post_decay * state.y[gi] + yt
            post[g] = yt
            ys.append(yt if self.post_decay > 0 else state.y[gi])
        kappa = state.kappa
        if kappa > 0:
            zbar, cbar = torch.add(z, state.zbar, alpha=kappa), state.cbar * kappa + 1.0
        else:
            zbar, cbar = z, torch.ones_like(z[:, :1])
        parts = [post.get("W_in", post.get("W_rec")), post.get("b"), M, pre.get("W_in"), pre.get("W_rec"),
                 pre.get("b"), eps, zbar, cbar]
        zero = {0: z, 1: z, 3: x, 4: z, 5: cbar}  # a group the params lack: zeros of its shape
        row = torch.cat([v if v is not None else torch.zeros_like(zero[k]) for k, v in enumerate(parts)], dim=1)
        new = state._replace(net=f.net, x=tuple(xs), y=tuple(ys), zbar=zbar if kappa > 0 else state.zbar,
                             cbar=cbar if kappa > 0 else state.cbar, baseline=baseline,
                             rows=_window.push(state.rows, state.t, row), t=state.t + 1)
        grad = None
        if new.t >= self.window:
            new, grad = self._flush(p, new)
        return StepOutput(new, f.y, f.loss, grad)

    def _flush(self, p: Params, state: ThreeFactorState) -> tuple[ThreeFactorState, Params | None]:
        if not self.fast or state.t == 0:
            return state, None
        net, n = self.net, self.net.n_hidden
        R = _window.stacked(state.rows, state.t)  # [w, B, width]
        w, nb = R.shape[:2]
        U, U_b, M, pre_in, pre_rec, pre_b, eps, zbar, cbar = torch.split(
            R, [n, n, n, net.n_in, n, 1, net.n_out, n, 1], dim=2)
        groups = [g for g in _SYN if g in p]
        f = self._filter(state.kappa)
        lam, kappa = self.eligibility_decay, state.kappa
        carry = lambda gi: tuple(q[gi] for q, on in ((state.e, lam > 0), (state.ebar, kappa > 0)) if on)  # noqa: E731
        UV = {"W_in": (U, pre_in), "W_rec": (U, pre_rec), "b": (U_b, pre_b)}  # W_in, W_rec share y
        res = dict(zip(groups, _window.window_sum(f, M, [(UV[g][0], carry(gi), UV[g][1])
                                                         for gi, g in enumerate(groups)])))
        grad = {g: res[g][0] for g in groups}
        if "b" in grad:
            grad["b"] = grad["b"][:, 0]
        grad["W_out"] = eps.reshape(w * nb, -1).T @ zbar.reshape(w * nb, n)
        grad["b_out"] = (eps * cbar).sum((0, 1))
        for k in p:
            if k not in grad:  # a parameter outside the contract's documented form gets no signal
                grad[k] = torch.zeros_like(p[k])
        new = state._replace(t=0, rows=_window.slots(self.window, R[0]))
        if f.carries:
            qs = [res[g][1] for g in groups]
            es = tuple(q[0] for q in qs) if lam > 0 else state.e
            ebars = tuple(q[-1] for q in qs) if kappa > 0 else state.ebar
            new = new._replace(e=es, ebar=ebars)
        return new, {k: grad[k] for k in p}

    def flush(self, params: Params, state: ThreeFactorState) -> tuple[ThreeFactorState, Params | None]:
        return self._flush({k: v.detach() for k, v in params.items()}, state)

    def finish(self, params: Params, state: ThreeFactorState) -> tuple[ThreeFactorState, Params | None]:
        return self.flush(params, state)
