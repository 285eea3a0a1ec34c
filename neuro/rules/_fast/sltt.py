"""SLTT's windowed path (:mod:`neuro.rules.sltt`, Meng et al. 2023): the same estimate, a window of steps at a
time.

Every step's ``W_in`` / ``W_rec`` term is an outer product ``g_I [x_t, p_{t-1}]^T`` over ``[n, n_in + n]``;
written out at every step it costs more than the forward pass. This path keeps each step's factors (``g_I``
[B, n], ``x_t``, ``p_{t-1}``, the bias's ``sum_B (d l_t / d z_t) dz/db``, ``g_y``, ``z_t``) and sums the window as
one matrix product ``[n, W B] @ [W B, n_in + n]`` (and ``W_out``'s ``[n_out, W B] @ [W B, n]``), handed over when
``window`` steps are pending, at ``flush`` (an update is due) and at ``finish``. The step's ``z``, ``dz/dI`` and
total ``dz/db`` come from :func:`neuro.rules._fast._local.step` (LIF's step written out in place; the model's
``neuron_derivatives`` otherwise). A state holds its window as a tuple of its steps' tensors (the first ``k``
pending), so a state is a snapshot that a checkpoint can hold. It applies to every network SLTT runs on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.sltt import SLTT

from . import _local

__all__ = ["SLTTWindowState", "Windowed", "build"]


class SLTTWindowState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    buf: tuple  # ``window`` entries (g_I, x, p_prev, g_b, g_y, z); the first ``k`` are pending
    k: int  # steps pending in the window


class Windowed(FastPath):
    """SLTT a window at a time (module docstring)."""

    rule: SLTT

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTWindowState:
        check_positive("batch", batch, integer=True)
        net = self.rule.net
        state = net.init_state(params, batch)
        z = params["W_rec"].detach().new_zeros(batch, net.n_hidden)
        x0 = z.new_zeros(batch, net.n_in)
        # placeholders (never read), so that the state's structure does not change
        buf = ((z, x0, z, z.new_zeros(net.n_hidden), z.new_zeros(batch, net.n_out), z),) * self.rule.window
        return SLTTWindowState(net=state, buf=buf, k=0)

    def step(self, params: Params, state: SLTTWindowState, x, y, mask) -> StepOutput:
        rule, net, ns = self.rule, self.rule.net, state.net
        with torch.no_grad():  # params are only read: no graph, no detached copies needed
            x = x.to(params["W_in"].dtype, copy=True)  # kept in the window: a copy, whatever the caller does with x
            p_prev = net.presynaptic(ns)
            loc = _local.step(net, params, ns, net.current(params, ns, x), bias=True)
            new, y_hat = net.readout(params, loc.state, loc.z)
            g_y = losses.grad(rule.loss or "mse", y_hat, y, mask)
            dl_dz = g_y @ params["W_out"]
            entry = (dl_dz * loc.dz_dI, x, p_prev, (dl_dz * loc.dz_db).sum(0), g_y, loc.z)
            l = rule.loss_fn(y_hat, y, mask)
        buf, k = state.buf[:state.k] + (entry,) + state.buf[state.k + 1:], state.k + 1
        state = SLTTWindowState(net=new, buf=buf, k=k)
        grad = None
        if k == rule.window:
            state, grad = self.flush(params, state)
        return StepOutput(state, y_hat, l, grad)

    def flush(self, params: Params, state: SLTTWindowState) -> tuple[SLTTWindowState, Params | None]:
        """The pending window's estimate: ``W_in: G^T X``, ``W_rec: G^T P`` (``G`` the window's ``g_I`` stacked
        [k B, n]), the bias and the readout likewise."""
        if state.k == 0:
            return state, None
        with torch.no_grad():
            G, X, Pp, Gb, Gy, Z = (torch.cat(col) if state.k > 1 else col[0] for col in zip(*state.buf[:state.k]))
            g = {"W_in": G.T @ X, "W_rec": G.T @ Pp, "b": Gb.view(state.k, -1).sum(0), "W_out": Gy.T @ Z,
                 "b_out": Gy.sum(0)}
        return state._replace(k=0), {k: g[k] for k in params}

    def finish(self, params: Params, state: SLTTWindowState) -> tuple[SLTTWindowState, Params | None]:
        return self.flush(params, state)


def build(rule: SLTT) -> Windowed:
    """The windowed path: it applies to every network SLTT runs on."""
    return Windowed(rule)
