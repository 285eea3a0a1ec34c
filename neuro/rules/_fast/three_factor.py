"""The three-factor rule's windowed path (:mod:`neuro.rules.three_factor`, Gerstner et al. 2018): the same
estimate, a window of steps at a time, one matrix product per parameter.

Every option factorises: the presynaptic traces ``pre_j(t)`` and the postsynaptic trace ``y_i(t)`` are O(n)
per step, and ``e``, ``ebar`` are a linear filter of the rank-one terms ``y(t) pre(t)^T``, the same for every
synapse (:mod:`neuro.rules._fast._window`, state ``q = (e, ebar)``)::

    q(t) = A q(t-1) + (1, 1) y(t) pre(t)^T      A = [[lambda_e, 0], [lambda_e, kappa]]      ebar(t) = (0, 1) q(t)

(one component when ``lambda_e`` or ``kappa`` is 0, none when both are). Over a window of ``window`` steps
``sum_t M(t) (.) ebar(t)`` is, per parameter, one matrix product [n, w B] @ [w B, n_pre] (``W_in`` and
``W_rec`` share its left factor, built from ``y`` and ``M``) plus the carry of ``q`` to the window's end, one
batched product per component (with batch 1 both in one product); ``b`` is the same with its own ``y``
(``dz/db``) and ``pre``. The readout's ``eps_t zbar_t^T`` is summed over the window in one product too. The
estimate of a window comes at its last step, from ``flush`` (an update is due) and from ``finish``; the other
steps return ``None``. ``dz/dI`` and ``dz/db`` are computed in place on the rate RNN and LIF, and read from
``net.neuron_derivatives`` on any other network (:mod:`neuro.rules._fast._local`). It applies to every network
the rule runs on.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.three_factor import ThreeFactor

from . import _local, _window

__all__ = ["ThreeFactorWindowState", "Windowed", "build"]


class ThreeFactorWindowState(NamedTuple):
    net: NamedTuple
    x: tuple  # per synapse group (W_in, W_rec, b): [K, B, n_pre] presynaptic traces
    y: tuple  # per group: [B, n] postsynaptic traces (size 0 when post_decay = 0)
    e: tuple  # per group: [B, n, n_pre] eligibility at the window's start (size 0 when eligibility_decay = 0)
    ebar: tuple  # per group: [B, n, n_pre] readout-filtered eligibility at the window's start (size 0: kappa = 0)
    zbar: Tensor  # [B, n] readout trace of z (size 0 when kappa = 0)
    cbar: Tensor  # [B, 1] readout trace of the constant 1 (size 0 when kappa = 0)
    baseline: Tensor  # [B] running mean of the per-sample loss (third="reward")
    B: Tensor  # [n, n_out] random feedback (feedback="random"), else size 0
    rows: tuple  # ``window`` rows [B, 5n + n_in + n_out + 2] (y, y_b, M, pre_in, pre_rec, pre_b, eps, zbar, cbar)
    t: int  # the number of pending steps


@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)[:, None, None]


class Windowed(FastPath):
    """The three-factor rule a window at a time (module docstring)."""

    rule: ThreeFactor

    def __init__(self, rule: ThreeFactor) -> None:
        super().__init__(rule)
        lam, kappa = float(rule.eligibility_decay), float(rule.net.readout_decay)
        # q = (e, ebar), without the components that are 0 (lambda_e = 0: e is the step's own term; kappa = 0: ebar = e)
        if lam > 0 and kappa > 0:
            self.filter = _window.Filter(((lam, 0.0), (lam, kappa)), (1.0, 1.0), (0.0, 1.0))
        else:
            self.filter = _window.Filter.decay(lam if lam > 0 else kappa)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ThreeFactorWindowState:
        rule, net = self.rule, self.rule.net
        p = params["W_rec"].detach()
        self.filter.coefficients(rule.window, p.dtype, p.device)  # a full window's coefficients, once (cached)
        width = 5 * net.n_hidden + net.n_in + net.n_out + 2
        s = ThreeFactor.init.definition(rule, params, batch, seed)
        return ThreeFactorWindowState(*s, rows=_window.slots(rule.window, p.new_zeros(batch, width)), t=0)

    def _trace(self, x: Tensor, a: Tensor, group: str) -> tuple[Tensor, Tensor]:
        """The presynaptic traces of ``group`` after the activity ``a`` [B, n_pre] ([K, B, n_pre]) and their sum."""
        dec, imp = self.rule.traces(group)
        if not any(dec) and imp == (1.0,):
            return a[None], a
        xt = _const(imp, a.dtype, a.device) * a[None]
        if any(dec):
            xt = _const(dec, a.dtype, a.device) * x + xt
        return xt, (xt[0] if xt.shape[0] == 1 else xt.sum(0))

    @torch.no_grad()
    def step(self, params: Params, state: ThreeFactorWindowState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net = self.rule, self.rule.net
        s = state.net
        groups = rule.groups(params)
        bias = "b" in groups and rule.post == "derivative"
        a_rec = net.presynaptic(s)
        f = _local.step(net, params, s, net.current(params, s, x), bias=bias)
        s_new, y_hat = net.readout(params, f.state, f.z)
        z, eps = f.z, losses.grad(rule.loss or "mse", y_hat, y, mask)
        M, baseline = rule.third_factor(params, state, eps, y_hat, y, mask)
        act = {"W_in": x, "W_rec": a_rec}
        xs, ys, pre, post = [], [], {}, {}
        for gi, g in enumerate(groups):
            a = act[g] if g != "b" else torch.ones_like(x[:, :1])
            xt, pre[g] = self._trace(state.x[gi], a, g)  # [K, B, n_pre], [B, n_pre]
            xs.append(xt)
            if g == "W_rec" and "W_in" in post:  # the same postsynaptic trace as W_in's
                yt = post["W_in"]
            else:
                yt = z if rule.post == "activity" else (f.dz_db if g == "b" else f.dz_dI)
                if rule.post_impulse != 1.0:
                    yt = yt * rule.post_impulse
                if rule.post_decay > 0:
                    yt = rule.post_decay * state.y[gi] + yt
            post[g] = yt
            ys.append(yt if rule.post_decay > 0 else state.y[gi])
        kappa = net.readout_decay
        if kappa > 0:
            zbar, cbar = torch.add(z, state.zbar, alpha=kappa), state.cbar * kappa + 1.0
        else:
            zbar, cbar = z, torch.ones_like(z[:, :1])
        parts = [post.get("W_in", post.get("W_rec")), post.get("b"), M, pre.get("W_in"), pre.get("W_rec"),
                 pre.get("b"), eps, zbar, cbar]
        zero = {0: z, 1: z, 3: x, 4: z, 5: cbar}  # a group the params lack: zeros of its shape
        row = torch.cat([v if v is not None else torch.zeros_like(zero[k]) for k, v in enumerate(parts)], dim=1)
        new = state._replace(net=s_new, x=tuple(xs), y=tuple(ys), zbar=zbar if kappa > 0 else state.zbar,
                             cbar=cbar if kappa > 0 else state.cbar, baseline=baseline,
                             rows=_window.push(state.rows, state.t, row), t=state.t + 1)
        grad = None
        if new.t >= rule.window:
            new, grad = self._flush(params, new)
        return StepOutput(new, y_hat, rule.loss_fn(y_hat, y, mask), grad)

    def flush(self, params: Params, state: ThreeFactorWindowState) -> tuple[ThreeFactorWindowState, Params | None]:
        return self._flush(params, state)

    def finish(self, params: Params, state: ThreeFactorWindowState) -> tuple[ThreeFactorWindowState, Params | None]:
        return self._flush(params, state)

    @torch.no_grad()
    def _flush(self, params: Params, state: ThreeFactorWindowState) -> tuple[ThreeFactorWindowState, Params | None]:
        """The estimate of the pending steps (module docstring); ``e``, ``ebar`` move to the window's end."""
        if state.t == 0:
            return state, None
        rule, net, n = self.rule, self.rule.net, self.rule.net.n_hidden
        R = _window.stacked(state.rows, state.t)  # [w, B, width]
        w, nb = R.shape[:2]
        U, U_b, M, pre_in, pre_rec, pre_b, eps, zbar, cbar = torch.split(
            R, [n, n, n, net.n_in, n, 1, net.n_out, n, 1], dim=2)
        groups = rule.groups(params)
        f, lam, kappa = self.filter, rule.eligibility_decay, net.readout_decay
        carry = lambda gi: tuple(q[gi] for q, on in ((state.e, lam > 0), (state.ebar, kappa > 0)) if on)  # noqa: E731
        UV = {"W_in": (U, pre_in), "W_rec": (U, pre_rec), "b": (U_b, pre_b)}  # W_in, W_rec share y
        res = dict(zip(groups, _window.window_sum(f, M, [(UV[g][0], carry(gi), UV[g][1])
                                                         for gi, g in enumerate(groups)])))
        grad = {g: res[g][0] for g in groups}
        if "b" in grad:
            grad["b"] = grad["b"][:, 0]
        grad["W_out"] = eps.reshape(w * nb, -1).T @ zbar.reshape(w * nb, n)
        grad["b_out"] = (eps * cbar).sum((0, 1))
        new = state._replace(t=0, rows=_window.slots(rule.window, R[0]))
        if f.carries:
            qs = [res[g][1] for g in groups]
            es = tuple(q[0] for q in qs) if lam > 0 else state.e
            ebars = tuple(q[-1] for q in qs) if kappa > 0 else state.ebar
            new = new._replace(e=es, ebar=ebars)
        # a parameter outside the contract's local form gets no signal
        return new, {k: grad[k] if k in grad else torch.zeros_like(v) for k, v in params.items()}


def build(rule: ThreeFactor) -> Windowed:
    """The windowed path: it applies to every network the rule runs on."""
    return Windowed(rule)
