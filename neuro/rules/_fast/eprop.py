"""e-prop's windowed path (:mod:`neuro.rules.eprop`, Bellec et al. 2020): the same estimate, a window of
steps at a time, the presynaptic terms of the whole window summed as one matrix product.

The traces are per-neuron LINEAR filters of the presynaptic vectors, so a window of ``W`` steps is computed
in bulk, for any neuron-local Jacobian (LIF with any reset or refractory period, ALIF, rate, any model that
implements the contract's ``neuron_derivatives``). Per neuron ``j``, with the rule's definitions over the
carried trace fields ``R`` (every trace field, less a dropped adaptive one) ``D_t`` [R, R], ``c_t`` [R],
``Z_t`` [R], ``zi_t``, ``pre_t`` and the learning signal ``L_t``, the per-step recursions are::

    eps_t = D_t eps_{t-1} + c_t pre_t^T      e_t = Z_t eps_{t-1} + zi_t pre_t^T      bar e_t = kappa bar e_{t-1} + e_t
    g    += L_t bar e_t

Over steps ``s = 1..W`` from ``(eps_0, bar e_0)``, with the backward-filtered learning signal
``Lb_s = sum_{t=s..W} kappa^{t-s} L_t`` (so ``sum_t L_t bar e_t = kappa Lb_1 bar e_0 + sum_s Lb_s e_s``) and
``Phi(a, u) = D_a .. D_{u+1}``, unrolling ``eps_{s-1}`` gives the row vectors
``r_u = sum_{s>u} Lb_s Z_s Phi(s-1, u)``, i.e. ``r_W = 0, r_{s-1} = Lb_s Z_s + r_s D_s``, and::

    g_window = kappa Lb_1 bar e_0 + r_0 . eps_0 + sum_s alpha_s pre_s^T,     alpha_s = r_s . c_s + Lb_s zi_s
    eps_W    = Psi_0 eps_0 + sum_s (Psi_s c_s) pre_s^T,                      Psi_W = I, Psi_{s-1} = Psi_s D_s
    bar e_W  = kappa^W bar e_0 + q_0 . eps_0 + sum_s (q_s . c_s + kappa^{W-s} zi_s) pre_s^T,
               q_W = 0, q_{s-1} = kappa^{W-s} Z_s + q_s D_s

All three are one recursion on ``M_s = [q_s; Psi_s; r_s]`` [R+2, R] per (sample, neuron): with
``lam_s = [kappa^{W-s}, 0 (R), Lb_s]``, ``M_{s-1} = M_s D_s + lam_s Z_s`` and the coefficients of
``pre_s`` are ``M_s c_s + lam_s zi_s`` (O(n R^2) per step). The window's start enters through
``[kappa lam_1 | M_0]`` applied to ``[bar e_0; eps_0]`` (one batched product), and the ``pre`` terms are
ONE matrix product [n (R+2), W] @ [W, n_pre] per sample. The bias ``b`` is the same with ``pre = 1`` and
``c_b``, ``zi_b``.

*Shared rows.* A uniform field (``net.uniform_fields``: one linear filter of the current, the same for every
neuron and step, e.g. LIF's synaptic current ``i``) has ``eps^i_ji = E^i_i`` for every ``j``: it is carried
as one presynaptic trace [B, n_pre], its ``Psi`` row taken from neuron 0, and it enters the per-neuron rows as
one more column of the matrix product (``[..., Tm^i] @ [pre; E^i_0]``), so the product has ``R + 2 - S`` rows
(3 for LIF: ``bar e``, ``eps^v``, the gradient).

Cost per step: the model's ``neuron_derivatives`` and the readout; per window, stacking the steps'
derivatives, a loop of ``W`` small [R+2, R] recursions, ``R + 2 - S`` multiply-adds per synapse and step in
the window's product and one pass over the carried ``[bar e; eps]`` [B, n, 1 + R - S, n_pre]. The estimate is
emitted at each window's end, in ``flush`` and in ``finish``; the readout's ``(dE/dy^t) bar z^t`` is summed
there too. A state holds its window's steps as a tuple (memory bounded by ``window``; a step from an older
state starts its own branch, so a state stays a snapshot). It applies to every network the rule runs on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.eprop import EProp

__all__ = ["EPropWindowState", "Window", "Windowed", "build"]


class Window(NamedTuple):
    """The steps of the current window, written in place (``window`` rows each; ``F = K^2 + 3K + 2``)."""

    d: Tensor  # [W, B, n, F] the model's derivatives, flattened: dh_dh (K^2), dh_dI, dh_db, dz_dh (K each), dz_dI, dz_db
    pre: Tensor  # [W + S, B, n_pre] [x_t, p_{t-1}] (S more rows: the shared traces join the window's product there)
    L: Tensor  # [W, B, n] learning signal
    zbar: Tensor  # [W, B, n] filtered hidden output
    dE_dy: Tensor  # [W, B, n_out]
    filled: Tensor  # int64 []: the steps written in place so far


class EPropWindowState(NamedTuple):
    net: NamedTuple
    eps: Tensor  # [B, n, 1 + R - S, n_pre] [bar e; eps of the per-neuron rows] at the window's start
    eps_b: Tensor  # [B, n, 1 + R, 1] [bar e; eps of every row] of the bias at the window's start
    shared: Tensor  # [B, S, n_pre] eps of the shared rows (the same for every neuron) at the window's start
    zbar: Tensor  # [B, n] filtered hidden output (now)
    bbar: Tensor  # [] filtered 1 (b_out gradient) at the window's start
    B: Tensor | None  # [n_out, n] feedback matrix (None: symmetric)
    buf: Window  # the window's steps so far
    t: int  # steps in the current window


class Windowed(FastPath):
    """e-prop a window at a time (module docstring)."""

    rule: EProp

    def __init__(self, rule: EProp) -> None:
        super().__init__(rule)
        fields, uniform = rule.net.trace_fields, rule.net.uniform_fields
        kept = [k for k, f in enumerate(fields) if f not in rule.dropped]
        #: the carried trace fields (positions in trace_fields): the per-neuron ones, then the shared ones
        self.rows = [k for k in kept if fields[k] not in uniform] + [k for k in kept if fields[k] in uniform]
        self.n_shared = sum(fields[k] in uniform for k in kept)
        # where J's entries (rows: the carried fields, then z; columns: the carried fields, I, b) are in Window.d
        K = len(fields)
        z_row = [K * K + 2 * K + g for g in self.rows] + [K * K + 3 * K, K * K + 3 * K + 1]
        field_rows = [[f * K + g for g in self.rows] + [K * K + f, K * K + K + f] for f in self.rows]
        self.gather = torch.tensor([i for row in field_rows + [z_row] for i in row])

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> EPropWindowState:
        check_positive("batch", batch, integer=True)
        net = self.rule.net
        n, n_pre, R, S, K = net.n_hidden, net.n_in + net.n_hidden, len(self.rows), self.n_shared, len(net.trace_fields)
        new, empty, W = params["W_rec"].detach().new_zeros, params["W_rec"].detach().new_empty, self.rule.window
        buf = Window(d=empty(W, batch, n, K * K + 3 * K + 2), pre=empty(W + S, batch, n_pre), L=empty(W, batch, n),
                     zbar=empty(W, batch, n), dE_dy=empty(W, batch, net.n_out), filled=torch.zeros((), dtype=torch.int64))
        return EPropWindowState(net=net.init_state(params, batch), eps=new(batch, n, 1 + R - S, n_pre),
                                eps_b=new(batch, n, 1 + R, 1), shared=new(batch, S, n_pre), zbar=new(batch, n),
                                bbar=new(()), B=self.rule.feedback_init(params, seed), buf=buf, t=0)

    def step(self, params: Params, state: EPropWindowState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net, t = self.rule, self.rule.net, state.t
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        buf = state.buf
        if int(buf.filled) != t:  # a step from an older state: copy its own entries first (a state is a snapshot)
            buf = Window(*(b.clone() for b in buf[:-1]), torch.tensor(t))
        d = net.neuron_derivatives(p, state.net, net.current(p, state.net, x))
        s, y_hat = net.readout(p, d.state, d.z)
        dE_dy = buf.dE_dy[t]
        dE_dy.copy_(losses.grad(rule.loss or "mse", y_hat, y, mask))
        torch.cat([d.dh_dh.flatten(2), d.dh_dI, d.dh_db, d.dz_dh, d.dz_dI[..., None], d.dz_db[..., None]], -1,
                  out=buf.d[t])
        torch.cat([x, net.presynaptic(state.net)], 1, out=buf.pre[t])
        torch.matmul(dE_dy, p["W_out"] if state.B is None else state.B, out=buf.L[t])  # learning signal
        zbar = torch.add(d.z, state.zbar, alpha=net.readout_decay, out=buf.zbar[t])
        buf.filled.fill_(t + 1)
        B = state.B if rule.feedback != "adaptive" else rule.feedback_update(state.B, dE_dy.T @ zbar)
        new = state._replace(net=s, zbar=zbar, B=B, buf=buf, t=t + 1)
        grad = None
        if t + 1 >= rule.window:
            new, grad = self._flush(p, new)
        return StepOutput(new, y_hat, rule.loss_fn(y_hat, y, mask), grad)

    def flush(self, params: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        return self._flush(params, state)

    def finish(self, params: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        return self._flush(params, state)

    def _flush(self, params: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        """The estimate of the window's steps (module docstring); the traces move to its end."""
        w = state.t
        if w == 0:
            return state, None
        net, buf = self.rule.net, state.buf
        kappa, R, S = net.readout_decay, len(self.rows), self.n_shared
        Bsz, n = buf.L.shape[1:]
        bn, C, k = Bsz * n, R + 2, R + 2 - S  # columns [D | c | c_b]; the per-neuron rows [bar e, eps (own), grad]
        # J [w, R+1, C, b n]: rows the carried fields then z, columns the carried fields then I and b
        J = buf.d[:w].permute(0, 3, 1, 2).reshape(w, -1, bn).index_select(1, self.gather.to(buf.d.device))
        J = J.view(w, R + 1, C, bn)
        if net.bias_in_current:  # b in the current: d/db = (d/db, the current held) + d/dI
            J[:, :, R + 1] += J[:, :, R]
        DC, ZZ = J[:, :R].unsqueeze(3), J[:, R]  # [w, f, col, 1, b n]: [D | c | c_b];  [w, col, b n]: [Z | zi | zi_b]
        ts = torch.arange(w, dtype=DC.dtype, device=DC.device)
        lag = ts[None, :] - ts[:, None]  # [t, s]: s - t
        kp = torch.full_like(lag, kappa)
        F = torch.where(lag >= 0, torch.pow(kp, lag.clamp(min=0)), torch.zeros_like(lag))
        # rows of M (and of the outputs): [q (bar e); Psi of the own fields; r (grad); Psi of the shared fields]
        lam = DC.new_zeros(w, R + 2, bn)  # [kappa^{W-s}, 0, Lb_s, 0]
        lam[:, 0] = torch.pow(kp[0], (w - 1) - ts)[:, None]
        lam[:, k - 1] = F @ buf.L[:w].reshape(w, bn)  # Lb
        # E_s [col, row, b n] = lam_s Z_s (then += M_s D_s | M_s c_s | M_s c_b_s), M_{s-1} = E_s[:R]: in place
        E = ZZ[:, :, None, :] * lam[:, None, :, :]  # [w, C, R+2, b n]
        M = DC.new_zeros(R, R + 2, bn)  # M_W: Psi_W = I, q_W = r_W = 0; stored [f, row, b n]
        for f in range(R):
            M[f, 1 + f if f < R - S else 2 + f] = 1.0
        for s in range(w - 1, -1, -1):
            for f in range(R):
                E[s].addcmul_(DC[s, f], M[f])
            M = E[s, :R]
        Tm = torch.cat([kappa * lam[0].T[:, :, None], M.permute(2, 1, 0)], -1)  # [b n, R+2, 1+R] on [bar e_0; eps_0]
        # the per-neuron rows: [Tm (own columns)] @ [bar e_0; eps_0] + [A | Tm (shared columns)] @ [pre; E^S_0];
        # the shared traces are carried with neuron 0's coefficients
        buf.pre[w:w + S] = state.shared.transpose(0, 1)  # rows past the window's steps
        P = buf.pre[:w + S].transpose(0, 1)  # [B, w + S, n_pre]
        new = torch.bmm(Tm[:, :k, :k - 1], state.eps.reshape(bn, k - 1, -1)).view(Bsz, n * k, -1)
        A = E.new_empty(Bsz, n, k, w + S)
        A[..., :w] = E[:, R, :k].view(w, k, Bsz, n).permute(2, 3, 1, 0)
        shared = state.shared
        if S:
            A[..., w:] = Tm[:, :k, k - 1:].view(Bsz, n, k, S)
            psi = torch.diagonal(M[R - S:, k:], 0, 0, 1).reshape(Bsz, n, S)[:, 0]  # [B, S]: Psi_0 of the shared rows
            coef = E[:, R, k:].reshape(w, S, Bsz, n)[..., 0].permute(2, 1, 0)  # [B, S, w]
            shared = psi[:, :, None] * state.shared + torch.bmm(coef, P[:, :w])
        new = new.baddbmm_(A.view(Bsz, n * k, w + S), P).view(Bsz, n, k, -1)
        newb = (torch.bmm(Tm, state.eps_b.reshape(bn, 1 + R, 1)) + E[:, R + 1:].sum(0).permute(2, 1, 0))
        newb = newb.view(Bsz, n, R + 2, 1)
        G, Gb = (new[0, :, k - 1] if Bsz == 1 else new[:, :, k - 1].sum(0)), newb[:, :, k - 1, 0].sum(0)
        bb, bbars = float(state.bbar), []
        for _ in range(w):
            bb = kappa * bb + 1.0
            bbars.append(bb)
        grad = {"W_in": G[:, :net.n_in].contiguous(), "W_rec": G[:, net.n_in:].contiguous(), "b": Gb,
                "W_out": torch.einsum("tbo,tbj->oj", buf.dE_dy[:w], buf.zbar[:w]),
                "b_out": torch.einsum("tbo,t->o", buf.dE_dy[:w], buf.dE_dy.new_tensor(bbars))}
        eps_b = torch.cat([newb[:, :, :k - 1], newb[:, :, k:]], 2)  # [bar e; eps] in the order of the rows
        new_state = state._replace(eps=new[:, :, :k - 1], eps_b=eps_b, bbar=state.bbar.new_tensor(bb), shared=shared,
                                   buf=Window(*(torch.empty_like(b) for b in buf[:-1]), torch.zeros_like(buf.filled)),
                                   t=0)
        return new_state, {key: grad[key] for key in params}


def build(rule: EProp) -> Windowed:
    """The windowed path: it applies to every network e-prop runs on."""
    return Windowed(rule)
