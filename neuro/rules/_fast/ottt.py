"""OTTT's windowed path on LIF and ALIF (:mod:`neuro.rules.ottt`, Xiao et al. 2022): the same estimate, a window
of steps at a time.

*The paper's form.* In LIF (:class:`models.lif.LIF` and its subclass ALIF) the spike reads the trace fields
through the membrane before firing only, whose update is row ``v`` of the filter ``(A, c, c_b)``
(``net.linear_filter()``): ``dz_dh = psi A[v]``, ``dz_dI = psi c[v]`` (ALIF's ``dz/da`` acts on a row that no
presynaptic source reaches, which stays 0). The definition's term of step ``t`` is then::

    sum_f dz_dh[f] P_{t-1}[f] + dz_dI s_t = psi (A[v] . P_{t-1} + c[v] s_t) = psi P_t[v]
    [W_in, W_rec]: g_I^T a_t        b: (Q_t[v] / c[v]) sum_B g_I

with ``g_I = L_t dz_dI = d l_t / d I_t`` and ``a_t = P_t[v] / c[v]`` (the paper's form). The traces are carried
divided by ``c[v]`` (the filter is linear: ``P_t / c[v] = A P_{t-1} / c[v] + (c / c[v]) s_t``), so row ``v`` is
``a_t`` itself. Only the rows of ``P`` and ``Q`` that their sources reach through the filter are carried
(LIF's ``v`` and ``i``; ``Q``'s as numbers), each updated with the filter's nonzero coefficients.

*The window.* Every step's term is an outer product over ``[n, n_in + n]``; written out at every step it costs
more than the forward pass. This path keeps each step's factors (``g_I`` [B, n], ``P_t[v]`` [B, n_in + n],
``Q_t[v] / c[v]``, ``g_y``, ``zbar_t``, ``obar_t``) and sums the window as one matrix product ``[n, W B] @ [W B, n_in +
n]``. Mode "O" hands that sum over when ``window`` steps are pending, at ``flush`` (an update is due) and at
``finish``; mode "A" adds it to its running sum (handed over by ``finish``; ``flush`` gives nothing: the sum
belongs to the sequence). The step's ``z`` and ``dz/dI`` come from :func:`neuro.rules._fast._local.step` (LIF's
step written out in place; ALIF's ``neuron_derivatives``). A state holds its window as a tuple of its steps'
tensors (the first ``k`` pending), so a state is a snapshot that a checkpoint can hold.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from models.lif import LIF
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.ottt import OTTT

from . import _local

__all__ = ["OTTTWindowState", "Windowed", "build"]


class OTTTWindowState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    P: tuple  # the carried rows of P_t / c[v], each [B, n_in + n]
    Q: tuple  # the carried rows of Q_t / c[v] (numbers)
    zbar: torch.Tensor  # [B, n] kappa-filtered output
    obar: float  # kappa-filtered ones
    acc: tuple | None  # mode "A": the sum so far, in the params' order; mode "O": None
    buf: tuple  # ``window`` entries (g_I, a_t, Q_t[v] / c[v], g_y, zbar, obar); the first ``k`` are pending
    k: int  # steps pending in the window


def _reached(A: tuple, sources: tuple) -> list[int]:
    """The rows of a filter ``h_t = A h_{t-1} + source`` that can be nonzero from ``h_0 = 0``: those with a source,
    and those that ``A`` feeds from them."""
    rows = {f for f, c in enumerate(sources) if c != 0.0}
    while True:
        more = rows | {f for f in range(len(A)) for g in rows if A[f][g] != 0.0}
        if more == rows:
            return sorted(rows)
        rows = more


class Windowed(FastPath):
    """OTTT on LIF / ALIF a window at a time (module docstring)."""

    rule: OTTT

    def __init__(self, rule: OTTT) -> None:
        super().__init__(rule)
        net = rule.net
        f = net.linear_filter()
        c_b = tuple(b + (c if net.bias_in_current else 0.0) for b, c in zip(f.dh_db, f.dh_dI))
        v = net.trace_fields.index("v")  # the membrane: the row the spike reads
        self.rows, self.q_rows = _reached(f.dh_dh, f.dh_dI), _reached(f.dh_dh, c_b)
        # per carried row: (its source coefficient / c[v], [(position of a carried row, coefficient), ...])
        self.P_update = [(f.dh_dI[r] / f.dh_dI[v], [(k, f.dh_dh[r][g]) for k, g in enumerate(self.rows)
                                                    if f.dh_dh[r][g] != 0.0]) for r in self.rows]
        self.Q_update = [(c_b[r] / f.dh_dI[v], [(k, f.dh_dh[r][g]) for k, g in enumerate(self.q_rows)
                                                if f.dh_dh[r][g] != 0.0]) for r in self.q_rows]
        self.v, self.q_v = self.rows.index(v), self.q_rows.index(v) if v in self.q_rows else None

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> OTTTWindowState:
        check_positive("batch", batch, integer=True)
        rule, net = self.rule, self.rule.net
        z = params["W_rec"].detach().new_zeros(batch, net.n_hidden)
        pre = z.new_zeros(batch, net.n_in + net.n_hidden)
        acc = tuple(torch.zeros_like(v.detach()) for v in params.values()) if rule.mode == "A" else None
        # placeholders (never read), so that the state's structure does not change
        buf = ((z, pre, 0.0, z.new_zeros(batch, net.n_out), z, 0.0),) * rule.window
        return OTTTWindowState(net=net.init_state(params, batch), P=(pre,) * len(self.rows),
                               Q=(0.0,) * len(self.q_rows), zbar=z, obar=0.0, acc=acc, buf=buf, k=0)

    def step(self, params: Params, state: OTTTWindowState, x, y, mask) -> StepOutput:
        rule, net, ns = self.rule, self.rule.net, state.net
        kappa = net.readout_decay
        with torch.no_grad():  # params are only read: no graph, no detached copies needed
            x = x.to(params["W_in"].dtype)
            s = torch.cat([x, net.presynaptic(ns)], dim=1)  # s_t
            P = []
            for c, terms in self.P_update:  # P_t / c[v] = A P_{t-1} / c[v] + (c / c[v]) s_t, row by row
                row = s * c if c != 1.0 else s.clone()
                for k, a in terms:
                    row.add_(state.P[k], alpha=a)
                P.append(row)
            Q = tuple(c + sum(a * state.Q[k] for k, a in terms) for c, terms in self.Q_update)
            loc = _local.step(net, params, ns, net.current(params, ns, x))
            new, y_hat = net.readout(params, loc.state, loc.z)
            g_y = losses.grad(rule.loss or "mse", y_hat, y, mask)
            g_I = (g_y @ params["W_out"]).mul_(loc.dz_dI)  # L_t dz_dI = d l_t / d I_t
            zbar = torch.add(loc.z, state.zbar, alpha=kappa)
            obar = kappa * state.obar + 1.0
            l = rule.loss_fn(y_hat, y, mask)
        entry = (g_I, P[self.v], 0.0 if self.q_v is None else Q[self.q_v], g_y, zbar, obar)
        buf, k = state.buf[:state.k] + (entry,) + state.buf[state.k + 1:], state.k + 1
        state = OTTTWindowState(net=new, P=tuple(P), Q=Q, zbar=zbar, obar=obar, acc=state.acc, buf=buf, k=k)
        grad = None
        if k == rule.window:
            state, grad = self._close(params, state)
        return StepOutput(state, y_hat, l, grad)

    def _close(self, params: Params, state: OTTTWindowState) -> tuple[OTTTWindowState, Params | None]:
        """The pending window summed: handed over (mode "O") or added to the running sum (mode "A")."""
        if state.k == 0:
            return state, None
        n_in = self.rule.net.n_in
        with torch.no_grad():
            G, a, Qv, Gy, Zb, Ob = zip(*state.buf[:state.k])
            G, a, Gy, Zb = (torch.cat(col) if state.k > 1 else col[0] for col in (G, a, Gy, Zb))
            Gs = G.view(state.k, -1, G.shape[1]).sum(1)  # [k, n] sum_B g_I
            W = G.T @ a  # sum over the window of g_I^T a_t
            g = {"W_in": W[:, :n_in], "W_rec": W[:, n_in:], "b": Gs.new_tensor(Qv) @ Gs,
                 "W_out": Gy.T @ Zb, "b_out": Gy.new_tensor(Ob) @ Gy.view(state.k, -1, Gy.shape[1]).sum(1)}
        state = state._replace(k=0)
        if self.rule.mode == "O":
            return state, {k: g[k] for k in params}
        return state._replace(acc=tuple(total + g[k] for total, k in zip(state.acc, params))), None

    def flush(self, params: Params, state: OTTTWindowState) -> tuple[OTTTWindowState, Params | None]:
        """Mode "O": the pending window's estimate (an update is due). Mode "A": nothing (its sum is the
        sequence's; the window is folded into it)."""
        return self._close(params, state)

    def finish(self, params: Params, state: OTTTWindowState) -> tuple[OTTTWindowState, Params | None]:
        state, g = self._close(params, state)
        if self.rule.mode == "O":
            return state, g
        return state._replace(acc=tuple(torch.zeros_like(a) for a in state.acc)), dict(zip(params, state.acc))


def build(rule: OTTT) -> Windowed | None:
    """The windowed path on LIF and its subclasses (ALIF), whose spike reads the trace fields through the
    membrane only; None otherwise (the definition runs)."""
    return Windowed(rule) if isinstance(rule.net, LIF) else None
