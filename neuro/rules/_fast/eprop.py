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

*The window's Jacobians.* A step keeps what its Jacobian needs (:class:`Step`, tensors held, not copied: a
state is a snapshot, a step from an older state starts its own branch; ``window`` slots, so the state's size
does not grow): the model's ``neuron_derivatives`` (:class:`Windowed`), or, for LIF and ALIF
(:class:`LIFWindowed`), the neuron's inputs only (``v, i`` and ``r, a`` where read, ``I_t``, ``z_t``): their
Jacobians are built for the whole window at its end from the sub-threshold filter (``net.linear_filter``)
and the surrogate at the potential ``v~``, so that a step costs the network's own step, the readout and the
learning signal. The estimate is emitted at each window's end, in ``flush`` and in ``finish``; the readout's
``(dE/dy^t) bar z^t`` is summed there too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from models.alif import ALIF
from models.lif import LIF
from neuro import losses
from neuro.contract import Params, check_positive
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.eprop import EProp
from neuro.surrogate import surrogate_derivative

__all__ = ["EPropWindowState", "LIFWindowed", "Step", "Windowed", "build"]


class Step(NamedTuple):
    """What one step leaves for its window's estimate."""

    pre: Tensor  # [B, n_pre] [x_t, p_{t-1}]
    L: Tensor  # [B, n] learning signal
    zbar: Tensor  # [B, n] filtered hidden output
    dE_dy: Tensor  # [B, n_out]
    local: tuple[Tensor, ...]  # what the step's Jacobian is built from (Windowed.local)


class EPropWindowState(NamedTuple):
    net: NamedTuple
    eps: Tensor  # [B, n, 1 + R - S, n_pre] [bar e; eps of the per-neuron rows] at the window's start
    eps_b: Tensor  # [B, n, 1 + R, 1] [bar e; eps of every row] of the bias at the window's start
    shared: Tensor  # [B, S, n_pre] eps of the shared rows (the same for every neuron) at the window's start
    zbar: Tensor  # [B, n] filtered hidden output (now)
    bbar: Tensor  # [] filtered 1 (b_out gradient) at the window's start
    B: Tensor | None  # [n_out, n] feedback matrix (None: symmetric)
    steps: tuple[Step, ...]  # ``window`` slots: the first t are the window's steps (the rest: placeholders)
    t: int  # steps in the current window


class Windowed(FastPath):
    """e-prop a window at a time (module docstring), the Jacobians from ``net.neuron_derivatives``."""

    rule: EProp

    def __init__(self, rule: EProp) -> None:
        super().__init__(rule)
        fields, uniform = rule.net.trace_fields, rule.net.uniform_fields
        kept = [k for k, f in enumerate(fields) if f not in rule.dropped]
        #: the carried trace fields (positions in trace_fields): the per-neuron ones, then the shared ones
        self.rows = [k for k in kept if fields[k] not in uniform] + [k for k in kept if fields[k] in uniform]
        self.n_shared = sum(fields[k] in uniform for k in kept)
        # where J's entries (rows: the carried fields, then z; columns: the carried fields, I, b) are among the
        # derivatives (dh_dh, dh_dI, dh_db, dz_dh, dz_dI, dz_db) flattened
        K = len(fields)
        z_row = [K * K + 2 * K + g for g in self.rows] + [K * K + 3 * K, K * K + 3 * K + 1]
        field_rows = [[f * K + g for g in self.rows] + [K * K + f, K * K + K + f] for f in self.rows]
        self.gather = torch.tensor([i for row in field_rows + [z_row] for i in row])

    # -- what a step keeps, and the window's Jacobians from it --------------------------------------------
    def local(self, p: Params, s: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor, tuple[Tensor, ...]]:
        """The neuron's step from ``s`` driven by ``i``: ``(s_t, z_t, what its Jacobian needs)``."""
        d = self.rule.net.neuron_derivatives(p, s, i)
        return d.state, d.z, tuple(d[2:])

    def blank(self, like: Tensor, batch: int) -> tuple[Tensor, ...]:
        """Placeholders of ``local``'s shapes."""
        n, K = self.rule.net.n_hidden, len(self.rule.net.trace_fields)
        return (like.new_zeros(batch, n, K, K), *(like.new_zeros(batch, n, K),) * 3, *(like.new_zeros(batch, n),) * 2)

    def jacobians(self, p: Params, local: tuple[Tensor, ...]) -> Tensor:
        """J [w, R+1, C, B n] of the window's steps (``local`` stacked, each [w, B, n, ...]): rows the carried
        fields then z, columns the carried fields then I and b (the bias's total derivative)."""
        w, Bsz, n = local[-1].shape
        T = torch.cat([t.reshape(w, Bsz * n, -1) for t in local], 2)  # [w, B n, F]
        J = T.transpose(1, 2).index_select(1, self.gather.to(T.device)).view(w, len(self.rows) + 1, -1, Bsz * n)
        if self.rule.net.bias_in_current:  # b in the current: d/db = (d/db, the current held) + d/dI
            J[:, :, -1] += J[:, :, -2]
        return J

    # -- the rule ------------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> EPropWindowState:
        check_positive("batch", batch, integer=True)
        net = self.rule.net
        n, n_pre, R, S = net.n_hidden, net.n_in + net.n_hidden, len(self.rows), self.n_shared
        like = params["W_rec"].detach()
        new = like.new_zeros
        blank = Step(new(batch, n_pre), new(batch, n), new(batch, n), new(batch, net.n_out), self.blank(like, batch))
        return EPropWindowState(net=net.init_state(params, batch), eps=new(batch, n, 1 + R - S, n_pre),
                                eps_b=new(batch, n, 1 + R, 1), shared=new(batch, S, n_pre), zbar=new(batch, n),
                                bbar=new(()), B=self.rule.feedback_init(params, seed),
                                steps=(blank,) * self.rule.window, t=0)

    def step(self, params: Params, state: EPropWindowState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net, t = self.rule, self.rule.net, state.t
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        s, z, local = self.local(p, state.net, net.current(p, state.net, x))
        s, y_hat = net.readout(p, s, z)
        dE_dy = losses.grad(rule.loss or "mse", y_hat, y, mask)
        L = dE_dy @ (p["W_out"] if state.B is None else state.B)  # learning signal
        zbar = torch.add(z, state.zbar, alpha=net.readout_decay)
        B = state.B if rule.feedback != "adaptive" else rule.feedback_update(state.B, dE_dy.T @ zbar)
        step = Step(torch.cat([x, net.presynaptic(state.net)], 1), L, zbar, dE_dy, local)
        new = state._replace(net=s, zbar=zbar, B=B, steps=state.steps[:t] + (step,) + state.steps[t + 1:], t=t + 1)
        grad = None
        if t + 1 >= rule.window:
            new, grad = self._flush(p, new)
        return StepOutput(new, y_hat, rule.loss_fn(y_hat, y, mask), grad)

    def flush(self, params: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        return self._flush({k: v.detach() for k, v in params.items()}, state)

    def finish(self, params: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        return self.flush(params, state)

    def _flush(self, p: Params, state: EPropWindowState) -> tuple[EPropWindowState, Params | None]:
        """The estimate of the window's steps (module docstring); the traces move to its end."""
        w = state.t
        if w == 0:
            return state, None
        net, steps = self.rule.net, state.steps[:w]
        kappa, R, S = net.readout_decay, len(self.rows), self.n_shared
        J = self.jacobians(p, tuple(torch.stack(f) for f in zip(*(st.local for st in steps))))
        Lw, zbars, errs = (torch.stack([getattr(st, f) for st in steps]) for f in ("L", "zbar", "dE_dy"))
        # pre: [B, w + S, n_pre], the shared traces after the steps (they join the window's product there)
        P = torch.stack([st.pre for st in steps] + list(state.shared.unbind(1)), 1)
        Bsz, n = Lw.shape[1:]
        bn, k = Bsz * n, R + 2 - S  # the per-neuron rows [bar e, eps (own), grad]
        DC, ZZ = J[:, :R].unsqueeze(3), J[:, R]  # [w, f, col, 1, b n]: [D | c | c_b];  [w, col, b n]: [Z | zi | zi_b]
        ts = torch.arange(w, dtype=DC.dtype, device=DC.device)
        lag = ts[None, :] - ts[:, None]  # [t, s]: s - t
        kp = torch.full_like(lag, kappa)
        F = torch.where(lag >= 0, torch.pow(kp, lag.clamp(min=0)), torch.zeros_like(lag))
        # rows of M (and of the outputs): [q (bar e); Psi of the own fields; r (grad); Psi of the shared fields]
        lam = DC.new_zeros(w, R + 2, bn)  # [kappa^{W-s}, 0, Lb_s, 0]
        lam[:, 0] = torch.pow(kp[0], (w - 1) - ts)[:, None]
        lam[:, k - 1] = F @ Lw.reshape(w, bn)  # Lb
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
        newb = torch.bmm(Tm, state.eps_b.reshape(bn, 1 + R, 1)) + E[:, R + 1:].sum(0).permute(2, 1, 0)
        newb = newb.view(Bsz, n, R + 2, 1)
        G, Gb = (new[0, :, k - 1] if Bsz == 1 else new[:, :, k - 1].sum(0)), newb[:, :, k - 1, 0].sum(0)
        bb, bbars = float(state.bbar), []
        for _ in range(w):
            bb = kappa * bb + 1.0
            bbars.append(bb)
        grad = {"W_in": G[:, :net.n_in].contiguous(), "W_rec": G[:, net.n_in:].contiguous(), "b": Gb,
                "W_out": torch.einsum("tbo,tbj->oj", errs, zbars),
                "b_out": torch.einsum("tbo,t->o", errs, errs.new_tensor(bbars))}
        eps_b = torch.cat([newb[:, :, :k - 1], newb[:, :, k:]], 2)  # [bar e; eps] in the order of the rows
        new_state = state._replace(eps=new[:, :, :k - 1], eps_b=eps_b, bbar=state.bbar.new_tensor(bb), shared=shared,
                                   t=0)
        return new_state, {key: grad[key] for key in p}


class LIFWindowed(Windowed):
    """LIF and ALIF (:mod:`models.lif`, :mod:`models.alif`): a step keeps the neuron's inputs (``v, i`` and ``r``,
    ``a`` where the neuron reads them, ``I_t``, ``z_t``) and the window's Jacobians are built at its end (the
    closed form of the models' ``neuron_derivatives``, over the whole window). With ``u_x`` the sub-threshold
    filter's row of ``v`` (``net.linear_filter``), ``v~ = u . (v, i, I, b) + v_leak (1 - u_v)`` the potential,
    held at ``v_reset`` while refractory (``A = [r_{t-1} = 0]``), ``psi`` the surrogate derivative at ``v~``
    times ``A``, ``w_x = d(threshold)/dx`` (ALIF: ``beta_a`` on ``a``) and ``delta = 0`` when the reset is
    detached::

        dz/dx = psi (u_x - w_x)
        dv/dx = A u_x - delta v_th dz/dx                        (reset="subtract")
              = (1 - z) A u_x + delta (v_reset - v~) dz/dx      (reset="zero")
        di/dx = the filter's row of i          da/dx = the filter's row of a + dz/dx
    """

    def __init__(self, rule: EProp) -> None:
        super().__init__(rule)
        net: LIF = rule.net
        #: the state fields a step keeps, then I_t and z_t
        self.reads = ("v", "i") + (("r",) if net.refractory > 0 else ()) + (("a",) if "a" in net.trace_fields else ())
        f = net.linear_filter()
        cols = self.rows + ["I", "b"]  # the columns of J: the carried fields, I, b

        def row(h: int) -> list[float]:
            return [f.dh_dh[h][c] if c not in ("I", "b") else (f.dh_dI if c == "I" else f.dh_db)[h] for c in cols]

        alif = "a" in net.trace_fields
        #: per field of J's rows, its filter's row; ``u`` (v's row) and ``u - w`` (what z reads)
        self.filters = {net.trace_fields[h]: row(h) for h in self.rows}
        v, i = net.trace_fields.index("v"), net.trace_fields.index("i")
        self.u = row(v)
        self.uw = [u - (net.beta_a if alif and c == net.trace_fields.index("a") else 0.0) for u, c in zip(self.u, cols)]
        #: v~ = v_rest + (dv~/dv, dv~/di, dv~/dI, dv~/db) . (v, i, I, b)
        self.v_rest = net.v_leak * (1.0 - f.dh_dh[v][v])
        self.potential = (f.dh_dh[v][v], f.dh_dh[v][i], f.dh_dI[v], f.dh_db[v])

    def local(self, p: Params, s: NamedTuple, i: Tensor) -> tuple[NamedTuple, Tensor, tuple[Tensor, ...]]:
        s_new, z = self.rule.net.neuron(p, s, i)
        return s_new, z, tuple(getattr(s, f) for f in self.reads) + (i, z)

    def blank(self, like: Tensor, batch: int) -> tuple[Tensor, ...]:
        return (like.new_zeros(batch, self.rule.net.n_hidden),) * (len(self.reads) + 2)

    def jacobians(self, p: Params, local: tuple[Tensor, ...]) -> Tensor:
        net: LIF = self.rule.net
        h = dict(zip(self.reads, local))
        I, z = local[-2:]
        w, Bsz, n = z.shape
        u, uw = h["v"].new_tensor(self.u)[:, None], h["v"].new_tensor(self.uw)[:, None]  # [C, 1]
        vv, vi, vI, vb = self.potential
        vt = vv * h["v"] + vi * h["i"] + vI * I + (vb * p["b"] + self.v_rest)  # [w, B, n]
        threshold = net.v_th + net.beta_a * h["a"] if "a" in h else net.v_th
        if "r" in h:
            A = (h["r"] <= 0).to(vt.dtype)
            vt = torch.where(h["r"] > 0, torch.full_like(vt, net.v_reset), vt)
        psi = surrogate_derivative(vt, threshold, net.surrogate, net.surrogate_width, net.surrogate_scale, net.v_th)
        if "r" in h:
            psi = psi * A
        psi, vt, z = psi.view(w, 1, -1), vt.view(w, 1, -1), z.view(w, 1, -1)
        Au = u if "r" not in h else A.view(w, 1, -1) * u  # [C, 1] or [w, C, B n]
        dz = psi * uw  # [w, C, B n]
        delta = 0.0 if net.detach_reset else 1.0
        rows = []
        for f in (net.trace_fields[k] for k in self.rows):
            if f == "v":
                rows.append(Au - (delta * net.v_th) * dz if net.reset == "subtract"
                            else (1.0 - z) * Au + (delta * (net.v_reset - vt)) * dz)
            elif f == "i":
                rows.append(vt.new_tensor(self.filters["i"])[:, None].expand_as(dz))
            else:  # a
                rows.append(dz + vt.new_tensor(self.filters["a"])[:, None])
        return torch.stack(rows + [dz], 1)  # [w, R+1, C, B n]


def build(rule: EProp) -> Windowed:
    """The windowed path: LIF's and ALIF's Jacobians built in bulk (those two classes: a subclass may step
    otherwise), every other network's from the model."""
    return LIFWindowed(rule) if type(rule.net) in (LIF, ALIF) else Windowed(rule)
