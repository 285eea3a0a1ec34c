"""TD(lambda) prediction with online eligibility traces over an inner gradient rule (Sutton 1988,
"Learning to predict by the methods of temporal differences", Machine Learning 3; Sutton & Barto 2018,
*Reinforcement Learning*, Sec. 12.2, semi-gradient TD(lambda)), as Javed, Shah, Sutton & White (2023)
learn the value prediction on trace patterning (``gamma = 0.9``, ``lambda = 0.99``, gradient traces
decayed by ``gamma lambda``).

The prediction is ``v_t = sum_k y_hat_{t,k}`` (the network's output after step ``t``, summed over
outputs). The inner rule (``rule``, e.g. ``"rtrl"`` or ``"columnar"``) is built with ``loss="value"``
(:mod:`neuro.losses`), so its per-step estimate is ``grad v_t = dv_t/dtheta`` (through the whole past,
exact for rtrl/columnar). It runs on each sample of the batch separately (batch 1 each), so ``delta``
and the traces are per sample.

Timing (one step ``t`` of ``step(params, state, x_t, y_t, mask_t)``): the cumulant ``c_t`` is the one
that *arrives with* step ``t`` (``y_t``, summed over outputs; or ``x_t[cumulant_input]``), so ``v_{t-1}``
predicts ``G_{t-1} = c_t + gamma_t G_t`` -- the trace-patterning convention, where the US is
``x_t[6]`` and the task's return target of step ``t`` is ``sum_{j>=1} gamma^{j-1} US_{t+j}``::

    delta_t = c_t + gamma_t v_t - v_{t-1}             (v_0 = 0, e_0 = 0: the first step gives 0)
    estimate_t = -mean_b delta_{t,b} e_{t-1,b}
    e_t = lam gamma_t e_{t-1} + grad v_t

The discount is ``gamma_t = gamma`` on every step, or, with ``discount_input``, state-dependent
(White 2017, "Unifying task specification in reinforcement learning", ICML; Sutton & Barto 2018, Sec. 12):
``gamma_t = gamma x_t[discount_input]``, the input a continuation flag (1 while an episode continues, 0 on
the first step of a new one, as ``atari-prediction``'s input 275). On that first step ``delta_t = c_t -
v_{t-1}`` is the last episode's terminal update, made with its whole trace ``e_{t-1}``, and the new episode's
trace starts from ``grad v_t`` alone. (Javed et al.'s ``atari_experiment.cpp`` decays the trace by
``lam gamma_t`` one step earlier, before that terminal update: the two differ at episode boundaries only.)

Sign: the estimate is *minus* the TD(lambda) update direction, so an optimizer that descends it
(``theta -= lr * estimate``) performs ``theta += lr delta_t e_{t-1}``. A masked-out sample (``mask_t``
false) adds nothing to the estimate; its traces and ``v`` advance as usual. ``reset`` clears ``e`` and
``v_prev`` (a new episode). The last ``delta`` is kept in the state (``state.delta`` [B]) to monitor.

The reported per-step loss is, as the rule contract requires, ``loss(y_hat_t, y_t)`` with the rule's
``loss`` (the task's, via ``neuro.train``): with ``cumulant_input`` set and the task's return as the
target (``trace-patterning``'s default), that is the squared return error the paper scores; with
``y_t`` the cumulant (``trace-patterning`` with ``target="cumulant"``) it is only ``1/2 (v_t - c_t)^2``.

``needs`` is declared ``JACOBIAN`` (a class attribute, so it cannot follow the ``rule`` field): the most
an allowed inner rule needs; inner rules that need the whole graph (bptt) give no per-step ``grad v_t``
and are refused. ``rule="tbptt"`` (option ``k``) is the exception, and the paper's baseline: the inner
estimate is then *truncated* BPTT of ``v_t`` alone, every step (:class:`SlidingTBPTT`)::

    grad v_t ~ d v_t / d theta  through s_t, s_{t-1}, ..., s_{t-k+1}, with s_{t-k} held fixed

recomputed each step from the last ``k`` inputs and the (detached) state ``s_{t-k}``: ``k`` forward and
``k`` backward steps per step, the compute Javed et al. match as ``params x (truncation + 1)``. No
autograd graph outlives the step. The rule runs on the networks its inner rule runs on: on a stack of layers
(:mod:`models.stack`) with ``rtrl``, ``snap1``, ``snap2``, ``uoro``, ``tbptt``, ..., while ``columnar`` and
``constructive`` refuse a stack (when the rule is built, with their reason). ``stochastic`` is declared False: with a stochastic inner rule (uoro,
kf-rtrl, ...) the estimate is random too, decided by ``init``'s seed (sample ``b`` uses ``seed + b``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["SlidingTBPTT", "SlidingTBPTTState", "TDLambda", "TDLambdaState"]


class SlidingTBPTTState(NamedTuple):
    net: NamedTuple  # s_t (detached)
    window: tuple  # the last (up to k) pairs (s_{j-1}, x_j), oldest first, detached


@dataclasses.dataclass(frozen=True)
class SlidingTBPTT(AbstractRule):
    """Every step, the gradient of the step's loss (``value``: ``v_t``) by BPTT through the last ``k`` steps
    only, recomputed from the stored state ``s_{t-k}`` and inputs (an inner rule of :class:`TDLambda`,
    ``rule="tbptt"``; not registered on its own)."""

    k: int = 10

    name = "sliding-tbptt"
    needs = Needs.GRAPH

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("k", self.k, integer=True)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SlidingTBPTTState:
        return SlidingTBPTTState(net=self.net.init_state(params, batch), window=())

    def step(self, params: Params, state: SlidingTBPTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        window = (state.window + ((state.net, x),))[-self.k:]
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            s = window[0][0]
            for _, xj in window:
                s, y_hat = self.net.step(leaves, s, xj)
            loss = self.loss_fn(y_hat, y, mask)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grad = {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(params.items(), grads)}
        s = type(s)(*(v.detach() for v in s))
        return StepOutput(SlidingTBPTTState(net=s, window=window), y_hat.detach(), loss.detach(), grad)


class TDLambdaState(NamedTuple):
    net: NamedTuple  # the network state [B, ...] (the inner states' network states, side by side)
    inner: tuple  # B inner-rule states, each of batch 1
    e: dict  # eligibility traces: params' keys, [B, *shape]
    v_prev: Tensor  # [B] v_{t-1}
    delta: Tensor  # [B] the last step's TD error


def _cat_states(states: list[NamedTuple]) -> NamedTuple:
    first = states[0]
    return type(first)(*[torch.cat(list(vs)) if isinstance(vs[0], Tensor) else vs[0] for vs in zip(*states)])


@dataclasses.dataclass(frozen=True)
class TDLambda(AbstractRule):
    """TD(lambda) with eligibility traces of ``grad v_t`` from the inner rule ``rule`` (options
    ``rule_options``, key/value pairs or a dict); ``cumulant_input``: the input index that carries the
    cumulant (``None``: the target ``y_t``, summed over outputs); ``discount_input``: the input index whose
    value scales the discount, ``gamma_t = gamma x_t[discount_input]`` (``None``: ``gamma`` every step)."""

    rule: str = "rtrl"
    gamma: float = 0.9
    lam: float = 0.99
    rule_options: tuple = ()
    cumulant_input: int | None = None
    discount_input: int | None = None

    name = "td-lambda"
    needs = Needs.JACOBIAN

    def __post_init__(self) -> None:
        super().__post_init__()
        opts = self.rule_options
        if isinstance(opts, dict):
            opts = tuple(sorted(opts.items()))
        try:
            opts = tuple((str(k), v) for k, v in opts)
        except (TypeError, ValueError):
            raise ValueError(f"rule_options={self.rule_options!r} is invalid: expected a dict or (key, value) pairs") from None
        object.__setattr__(self, "rule_options", opts)
        for nm, v in (("gamma", self.gamma), ("lam", self.lam)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{nm}={v!r} is invalid: must be a number in [0, 1]")
        for nm in ("cumulant_input", "discount_input"):
            i = getattr(self, nm)
            if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.net.n_in):
                raise ValueError(f"{nm}={i!r} is invalid: must be None or an input index in [0, {self.net.n_in})")
        if self.rule == self.name:
            raise ValueError("rule='td-lambda' is invalid: the inner rule must be a gradient rule (e.g. 'rtrl', 'columnar')")
        _ = self.inner  # build it now: unknown names, options and unsupported models fail here

    @functools.cached_property
    def inner(self) -> AbstractRule:
        """The inner gradient rule, on the same network, with ``loss="value"``."""
        from neuro import rules

        if self.rule == "tbptt":
            return SlidingTBPTT(self.net, loss="value", **dict(self.rule_options))
        cls = rules.get(self.rule)
        if cls.needs >= Needs.GRAPH:
            raise ValueError(f"rule={self.rule!r} is invalid for td-lambda: it needs the whole graph and gives no "
                             f"per-step gradient of the prediction; use an online rule such as 'rtrl' or 'columnar'")
        return rules.make(self.rule, self.net, loss="value", **dict(self.rule_options))

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> TDLambdaState:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch={batch!r} is invalid: must be an integer >= 1")
        inner = tuple(self.inner.init(params, 1, seed + b) for b in range(batch))
        p = next(iter(params.values()))
        e = {k: torch.zeros((batch, *v.shape), dtype=v.dtype, device=v.device) for k, v in params.items()}
        z = torch.zeros(batch, dtype=p.dtype, device=p.device)
        return TDLambdaState(net=_cat_states([s.net for s in inner]), inner=inner, e=e, v_prev=z, delta=z.clone())

    def step(self, params: Params, state: TDLambdaState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        B = len(state.inner)
        one = torch.ones(1, dtype=torch.bool, device=x.device)
        inner, y_hats, grads = [], [], []
        for b in range(B):
            out = self.inner.step(params, state.inner[b], x[b:b + 1], y[b:b + 1], one)
            if out.grad is None:  # a rule that holds a window back (uoro, rflo, ...) hands it over now
                st, g = self.inner.flush(params, out.state)
                out = out._replace(state=st, grad=g)
            if out.grad is None:
                raise ValueError(f"rule={self.rule!r} gave no per-step estimate of grad v_t: td-lambda needs one every step")
            inner.append(out.state)
            y_hats.append(out.y)
            grads.append(out.grad)
        y_hat = torch.cat(y_hats).detach()  # [B, n_out]
        v = y_hat.sum(-1)  # v_t [B]
        c = (x[:, self.cumulant_input] if self.cumulant_input is not None else y.sum(-1)).to(v.dtype)
        gamma, decay = self.gamma, self.gamma * self.lam  # gamma_t, lam gamma_t: numbers, or [B] with discount_input
        if self.discount_input is not None:
            flag = x[:, self.discount_input].to(v.dtype)
            gamma, decay = gamma * flag, decay * flag
        delta = c + gamma * v - state.v_prev  # [B]
        w = torch.where(mask.to(device=v.device, dtype=torch.bool), -delta, torch.zeros_like(delta)) / B
        grad, e = {}, {}
        for k, tr in state.e.items():
            shape = (B, *([1] * (tr.dim() - 1)))
            wk = w.reshape(shape).to(tr.dtype)
            dk = decay.reshape(shape).to(tr.dtype) if isinstance(decay, Tensor) else decay
            grad[k] = (wk * tr).sum(0)  # -mean_b delta_b e_{t-1,b}
            e[k] = dk * tr + torch.stack([g[k] for g in grads]).to(tr.dtype)
        new = TDLambdaState(net=_cat_states([s.net for s in inner]), inner=tuple(inner), e=e,
                            v_prev=v, delta=delta.detach())
        loss = self.loss_fn(y_hat, y, mask)
        return StepOutput(new, y_hat, loss.detach(), {k: grad[k].detach() for k in params})

    def reset(self, params: Params, state: TDLambdaState) -> TDLambdaState:
        return self.init(params, len(state.inner))
