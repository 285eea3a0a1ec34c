"""UORO on the rate RNN, compiled: a range of steps of online training in one numba call.

The rule is :mod:`neuro.rules.uoro` (Tallec & Ollivier 2017, Algorithm 1; its module docstring states the
equations); the network :class:`models.rate.RateRNN` (not a subclass). On the rate RNN, with ``D_t = alpha (1 -
tanh(u_t)^2)``, ``z_t = [x_t; h_{t-1}; 1]`` and ``e_t = dl_t/dy_t`` (carrying the loss's ``1/B``), the step's
Jacobian-vector products are closed form (``(partial F/partial s) v = (1 - alpha) v + D_t * (W_rec v)``,
``nu^T partial F/partial theta = a_t z_t^T`` on ``[W_in | W_rec | b]`` with ``a_t = D_t * nu_t``), and
:func:`uoro_range` computes, per step and per rank-one pair (``s~`` [n], ``theta~`` kept as the matrix ``Theta``
[n, n_in + n + 1]; zero on the readout), in the rule's order::

    J s~ = (1 - alpha) s~ + D_t * (W_rec s~);     k = (W_out^T e_t) . (J s~)           (= dl_t/ds_{t-1} . s~)
    estimate += k Theta / samples + (D_t * W_out^T e_t) z_t^T,   e_t h_t^T and e_t on W_out, b_out
    nu = the step's random signs;   ||delta|| = ||a_t|| ||z_t||
    rho_0 = sqrt(||Theta|| / (||J s~|| + eps)) + eps;    rho_1 = sqrt(||delta|| / (sqrt(n) + eps)) + eps
    s~ <- rho_0 J s~ + rho_1 nu;    Theta <- Theta / rho_0 + a_t z_t^T / rho_1

(the scalars in float64, as the rule's fast path computes them), after the network step
(:func:`neuro.engine.kernels.rate_step`), the readout and the loss's error; at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) the optimizer's update with the sum, which zeroes it (with Adam,
``W_rec``'s rows updated in the pass over ``Theta``, as each row's sum is complete). The signs are the torch
path's: drawn from the state's generator per range, ``[steps, B samples, n]`` at once (the numbers, and the
generator's state after them, of one draw per step, as the rule's fast path draws them).

Both forms of the rule's state are run: the definition's :class:`~neuro.rules.uoro.UOROState` (``theta~`` flat
in sorted key order) and the fast path's :class:`~neuro.rules._fast.uoro.RateUOROState`, which the engine leaves
with every step folded in (``held = 0``, ``||Theta||^2`` in ``theta_sq``, no window in flight; the same future
as the torch path's, and at every update and sequence end, where checkpoints are taken, the same state), each
step written to the row of the window's buffer the torch path writes it to (``tanh(u_t)`` recovered from ``h_t``
where ``alpha < 1``). With one pair (batch 1, one sample) a window that fills before an update flies in the
torch path (its sequential part run during the next steps, landed at the next update) and stays in its state
once landed: the engine keeps what that window's factors are made of (the pair at its start, its rows, the
parameters it ran on, the generator's state before its signs) and builds the last such window's landed flight
with the fast path's own functions, so that the state's flight is the torch path's too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from models.rate import RateRNN
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, Views, view
from neuro.engine.optim import OptimizerArrays
from neuro.rules._fast import uoro_window
from neuro.rules._fast.uoro import Flight, RateUOROState, _run_rest, _take_off
from neuro.rules._onestep import flat_step
from neuro.rules.base import add_into
from neuro.rules.uoro import UORO

__all__ = ["UOROEngine", "build", "theta_pass", "uoro_range"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernel's order
LOSSES = {"mse": K.MSE, "ce": K.CE}


@numba.njit(cache=True, error_model="numpy", inline="always")
def theta_pass(Th, kg, inv0, A, Q, x, h, samples, g_in, g_rec, g_b, sq, scratch, direct, fused,  # noqa: ANN001, ANN201
               opt_kind, W_rec, m_rec, v_rec, step, hyper):
    """One pass over the rows ``r`` of ``Theta`` (rank-one pairs ``p``, sample ``s = p // samples``): the step's
    estimate ``k Theta + q z^T`` on ``[W_in | W_rec | b]`` added to ``g_in``, ``g_rec``, ``g_b``, then ``Theta``'s
    update ``Theta / rho_0 + a z^T / rho_1``, and ``||Theta||^2`` into ``sq`` [BK] (float64)::

        g[r] += k_p Theta_p[r] + q_sr z_s         Theta_p[r] <- Theta_p[r] / rho_0,p + a_pr z_s       (z_s = [x_s; h_s; 1])

    ``Th`` [BK, R, n_in + n + 1], ``kg`` [BK] ``k / samples``, ``inv0`` [BK] ``1 / rho_0``, ``A`` [BK, R] ``a /
    rho_1``, ``Q`` [B, R] the direct term ``q`` (``dl/du``, added once a sample), ``x`` [B, n_in], ``h`` [B, n]
    (``h_{t-1}``). With ``fused`` the optimizer's step of ``W_rec`` (its step count ``step``) is begun and each of
    its rows updated as soon as its sum is complete (:func:`neuro.engine.kernels.row_update`); ``direct``: the
    accumulator of ``W_rec`` is zero and each row's sum is the step's alone, summed in ``scratch`` (kept zero)."""
    BK, R = Th.shape[0], Th.shape[1]
    n_in, n = x.shape[1], h.shape[1]
    if fused:  # W_rec's step begun; its rows are updated below, as each row's sum is done
        c = K.row_update_begin(opt_kind, step, hyper, W_rec)
    for p in range(BK):
        sq[p] = 0.0
    for r in range(R):
        g_row = scratch if direct else g_rec[r]
        for p in range(BK):
            s = p // samples
            T_row, kk, i0, ar = Th[p, r], kg[p], inv0[p], A[p, r]
            q = Q[s, r] if p % samples == 0 else K.cast(0.0, Th)  # the direct term, once a sample
            x_s, h_s = x[s], h[s]
            for j in range(n_in):
                old = T_row[j]
                g_in[r, j] += kk * old + q * x_s[j]
                T_row[j] = old * i0 + ar * x_s[j]
            for j in range(n):
                old = T_row[n_in + j]
                g_row[j] += kk * old + q * h_s[j]
                T_row[n_in + j] = old * i0 + ar * h_s[j]
            old = T_row[n_in + n]
            g_b[r] += kk * old + q
            T_row[n_in + n] = old * i0 + ar
            sq[p] += K.sum_squares(T_row)
        if fused:  # and W_rec's row updated with it (the step's forward pass has read it), its sum zeroed
            K.row_update(opt_kind, W_rec[r], g_row, m_rec, v_rec, r, c)


@numba.njit(cache=True, error_model="numpy")
def uoro_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, eps_u, n_in, n, n_out,  # noqa: ANN001, ANN201
               samples, h, S, Th, sq, NU, xs, ys, mask, t0, t1, n_seq, every, window, rows, hi, losses, track,
               at_open, at_close):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``,
    ``steps``, ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``h`` [B, n]
    the network state; the pairs (``samples`` a sample, sample-major): ``S`` [BK, n] ``s~``, ``Th`` [BK, n, m]
    ``Theta``, ``sq`` [BK] ``||Theta||^2`` (float64); ``NU`` [t1 - t0, BK, n] the signs; ``xs`` [T, B, n_in],
    ``ys`` [T, B, n_out], ``mask`` [T, B]; ``window`` > 0: each step written to its row of ``rows`` [window, B,
    width] (the rows from ``hi`` on are zero); ``losses`` [t1 - t0] (written); ``track``: what the torch path's
    flight is built from is kept, at a window's first step the pair ``at_open`` = (``s~``, ``Theta``,
    ``||Theta||^2``), where it fills ``at_close`` = (the pair at its start, its rows, ``h`` [n], ``W_rec``,
    ``W_out``). All changed in place. Returns the updates applied, whether the accumulator holds estimates not
    yet applied, the rows written in the last window, ``hi`` and the last step at which a window filled (-1:
    none)."""
    W_in, W_rec, b = ps[0].reshape((n, n_in)), ps[1].reshape((n, n)), ps[2]
    W_out, b_out = ps[3].reshape((n_out, n)), ps[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    m_rec = ms[1].reshape((ms[1].size // n, n))  # Adam's moments (rows of W_rec; no rows where there are none)
    v_rec = vs[1].reshape((vs[1].size // n, n))
    nb, BK = h.shape[0], S.shape[0]
    h_new = np.empty_like(h)
    D = np.empty_like(h)
    R = np.empty_like(h)  # W_out^T e
    Q = np.empty_like(h)  # D * W_out^T e: the estimate's direct term
    y_hat = np.empty((nb, n_out), h.dtype)
    eps = np.empty((nb, n_out), h.dtype)
    Js = np.empty_like(S)
    A = np.empty_like(S)  # a = D * nu, then a / rho_1
    kg = np.empty(BK, h.dtype)  # k / samples
    inv0 = np.empty(BK, h.dtype)  # 1 / rho_0
    zz = np.empty(nb)  # ||z||^2
    leak = K.cast(1.0 - alpha, h)
    a_ = K.cast(alpha, h)
    root_n = math.sqrt(n)
    scratch = np.zeros(n, h.dtype)  # a row's sum where W_rec's accumulator is known to be zero (kept zero)
    written, filled = 0, -1
    oS, oTh, osq = at_open
    cS, cTh, csq, crows, ch, cW, cWo = at_close
    updates, full, clean = 0, False, False  # clean: the previous step of this range updated (the sums are zero)
    for t in range(t0, t1):
        x, nu = xs[t], NU[t - t0]
        K.rate_step(W_in, W_rec, b, alpha, x, h, h_new, D)
        K.readout(W_out, b_out, h_new, y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], eps)
        for s in range(nb):
            for i in range(n):
                ri = K.cast(0.0, h)
                for k in range(n_out):
                    ri += eps[s, k] * W_out[k, i]
                R[s, i] = ri
                Q[s, i] = D[s, i] * ri
            z2 = 1.0
            for j in range(n_in):
                z2 += np.float64(x[s, j]) * np.float64(x[s, j])
            for j in range(n):
                z2 += np.float64(h[s, j]) * np.float64(h[s, j])
            zz[s] = z2
        if window > 0:  # the step in its row of the window's buffer (a window's first row: a zeroed buffer)
            j = (t - (t // every) * every) % window
            if j == 0:
                for r in range(1, hi):
                    rows[r] = 0.0
                hi = 1
            hi = max(hi, j + 1)
            written = j + 1
            for s in range(nb):
                row = rows[j, s]
                o = 0
                for c in range(n_in):
                    row[o + c] = x[s, c]
                o += n_in
                for c in range(n_out):
                    row[o + c] = ys[t, s, c]
                o += n_out
                for c in range(n):
                    row[o + c] = h[s, c]
                    row[o + n + c] = h_new[s, c] if alpha == 1.0 else (h_new[s, c] - leak * h[s, c]) / a_
                o += 2 * n
                for c in range(n_out):
                    row[o + c] = y_hat[s, c]
                row[o + n_out] = mask[t, s]
            if track and j == 0:  # a window opens: the pair at its start
                oS[:] = S[0]
                oTh[:, :] = Th[0]
                osq[0] = sq[0]
            if track and j == window - 1:  # it fills (the torch path's flight takes off): what its factors read
                cS[:] = oS
                cTh[:, :] = oTh
                csq[0] = osq[0]
                crows[:] = rows
                ch[:] = h_new[0]
                cW[:, :] = W_rec
                cWo[:, :] = W_out
                filled = t
        for k in range(n_out):  # the readout's exact gradient
            for s in range(nb):
                e = eps[s, k]
                for j in range(n):
                    g_out[k, j] += e * h_new[s, j]
                g_bout[k] += e
        for p in range(BK):  # J s~, k, the factors rho_0 and rho_1, the new s~
            s = p // samples
            sp, Jp, Dp, Rp = S[p], Js[p], D[s], R[s]
            nJ2, kd, na2 = 0.0, 0.0, 0.0
            for i in range(n):
                v = Dp[i] * K.dot(W_rec[i], sp)
                if alpha != 1.0:
                    v += leak * sp[i]
                Jp[i] = v
                nJ2 += np.float64(v) * np.float64(v)
                kd += np.float64(Rp[i]) * np.float64(v)
                ai = Dp[i] * nu[p, i]
                A[p, i] = ai
                na2 += np.float64(ai) * np.float64(ai)
            r0 = math.sqrt(math.sqrt(sq[p]) / (math.sqrt(nJ2) + eps_u)) + eps_u
            r1 = math.sqrt(math.sqrt(na2 * zz[s]) / (root_n + eps_u)) + eps_u
            kg[p] = K.cast(kd / samples, h)
            inv0[p] = K.cast(1.0 / r0, h)
            c0, c1 = K.cast(r0, h), K.cast(r1, h)
            inv1 = K.cast(1.0 / r1, h)
            for i in range(n):
                sp[i] = c0 * Jp[i] + c1 * nu[p, i]
                A[p, i] = A[p, i] * inv1
        update = K.update_due(t, n_seq, every)
        fused = update and opt_kind == K.ADAM  # W_rec's rows updated in the pass over Theta
        theta_pass(Th, kg, inv0, A, Q, x, h, samples, g_in, g_rec, g_b, sq, scratch, fused and clean, fused, opt_kind,
                   W_rec, m_rec, v_rec, steps[1], hyper)
        h[:, :] = h_new
        applied, full = K.scheduled_update(update, 1 if fused else -1, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
        clean = not full
    return updates, full, written, hi, filled


class UOROEngine(Engine):
    """:func:`uoro_range` for one UORO rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: UORO) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self._rows: tuple[torch.Tensor, int] | None = None  # the window's buffer handed out, rows from hi on zero
        self._pair: tuple[torch.Tensor, ...] = ()  # s~, Theta, ||Theta||^2, written: the fast form's, handed out
        self._params, self._acc = Views(), Views()
        self._flights: dict[bool, _Flights] = {}  # kept (True) or not (False)

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, rule = self.net, self.rule
        n, n_in = net.n_hidden, net.n_in
        fast = isinstance(state, RateUOROState)
        if fast and (state.held > 0 or (state.flight is not None and state.flight.active)):
            state, g = rule.flush(params, state)  # steps left pending by the torch path: their estimate first
            add_into(acc, g)
        h = state.net.h if state.net.h.is_contiguous() else state.net.h.contiguous()
        BK, dtype = state.s_tilde.shape[0], h.dtype
        continued = False  # the state is the one this engine handed out last
        if fast:
            continued = bool(self._pair) and all(a is b for a, b in zip(self._pair, (state.s_tilde, state.theta_mat,
                                                                                     state.theta_sq)))
            if not continued:
                self._pair = (state.s_tilde.contiguous().clone(), state.theta_mat.contiguous().clone(),
                              state.theta_sq.detach().clone(), torch.zeros(1, dtype=torch.int64))
            S, Th, sq, written_t = self._pair
            rows, hi = self._rows_for(state.rows)
        else:
            S = state.s_tilde.contiguous().clone()
            sl = flat_step(net, rule.loss, params).param_slices()
            tt = state.theta_tilde
            Th = torch.cat([tt[:, sl["W_in"]].reshape(BK, n, n_in), tt[:, sl["W_rec"]].reshape(BK, n, n),
                            tt[:, sl["b"]].reshape(BK, n, 1)], 2).contiguous()
            sq = (Th.double() ** 2).sum((1, 2))
            rows, hi = torch.zeros(0, h.shape[0], 0, dtype=dtype), 0
        fl, track = self._flights_for(state, every, view(h).dtype)
        gen0 = state.gen.get_state() if track else None
        r = torch.randint(0, 2, (t1 - t0, BK, n), generator=state.gen, dtype=torch.int8)  # the torch path's draws
        NU = (2 * r - 1).to(dtype)
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER])
        ps = self._params([params[k] for k in ORDER])
        gs = self._acc([acc[k] for k in ORDER])
        losses = np.empty(t1 - t0, view(h).dtype)
        updates, full, written, hi, filled = uoro_range(
            ps, gs, o.ms, o.vs, o.steps, o.kind, o.hyper, self.loss_kind, self.alpha, float(rule.eps), n_in, n,
            net.n_out, rule.samples, view(h), view(S), view(Th), view(sq), view(NU), seq.xs, seq.ys, seq.mask, t0, t1,
            n_seq, every, rule.window if fast else 0, view(rows), hi, losses, track, fl.at_open(), fl.at_close())
        net_state = state.net._replace(h=h)
        if fast:
            self._rows = (rows, int(hi))
            written_t.fill_(int(written))
            flight = state.flight
            if track:
                flight = fl.after(rule, state, gen0, continued, t0, t1, n_seq, every, int(filled)) or flight
            state = state._replace(net=net_state, s_tilde=S, theta_mat=Th, theta_sq=sq, rows=rows, written=written_t,
                                   held=0, t=state.t + t1 - t0, flight=flight)
        else:
            tt = torch.zeros_like(state.theta_tilde)
            tt[:, sl["W_in"]] = Th[:, :, :n_in].reshape(BK, -1)
            tt[:, sl["W_rec"]] = Th[:, :, n_in:n_in + n].reshape(BK, -1)
            tt[:, sl["b"]] = Th[:, :, -1]
            state = state._replace(net=net_state, s_tilde=S, theta_tilde=tt, t=state.t + t1 - t0)
        return RangeResult(state=state, losses=losses, updates=int(updates), pending=bool(full))

    def _flights_for(self, state: NamedTuple, every: int, dtype: np.dtype) -> tuple[_Flights, bool]:
        """The buffers of the windows that fly in the torch path and whether they are kept: where windows fill
        before an update and fly (a flight in the fast form's state: one pair); else empty ones, not written."""
        net, L = self.net, self.rule.window
        track = isinstance(state, RateUOROState) and state.flight is not None and every >= L
        f = self._flights.get(track)
        if f is None or f.cS.dtype != dtype:
            shape = (net.n_hidden, net.n_in, net.n_out, L, state.rows.shape[2]) if track else (0, 0, 0, 0, 0)
            f = self._flights[track] = _Flights.empty(*shape, dtype)
        return f, track

    def _rows_for(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The window's buffer the kernel writes, holding ``rows``, and the rows from which it is zero."""
        if self._rows is not None and self._rows[0] is rows:
            return self._rows
        return rows.clone().contiguous(), rows.shape[0]


class _Flights:
    """What the torch path's flights are built from: the pair at the open window's start (``oS``, ``oTh``,
    ``osq``) and the generator's state before its signs; for the last window that filled, the pair at its start,
    its rows, ``h`` at its end and the parameters it ran on (``c*``; :func:`uoro_range` writes them), and that
    window's generator state."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.__dict__.update(arrays)
        self.open_gen: torch.Tensor | None = None  # the generator's state at the open window's first step
        self.closed_gen: torch.Tensor | None = None  # and at the filled window's, not yet built (None: built)

    @classmethod
    def empty(cls, n: int, n_in: int, n_out: int, L: int, width: int, dtype: np.dtype) -> _Flights:
        m = n_in + n + 1
        shapes = {"oS": (n,), "oTh": (n, m), "osq": (1,), "cS": (n,), "cTh": (n, m), "csq": (1,),
                  "crows": (L, 1, width), "ch": (n,), "cW": (n, n), "cWo": (n_out, n)}
        return cls({k: np.zeros(v, np.float64 if k.endswith("sq") else dtype) for k, v in shapes.items()})

    def at_open(self) -> tuple[np.ndarray, ...]:
        return self.oS, self.oTh, self.osq

    def at_close(self) -> tuple[np.ndarray, ...]:
        return self.cS, self.cTh, self.csq, self.crows, self.ch, self.cW, self.cWo

    def after(self, rule: UORO, state: RateUOROState, gen0: torch.Tensor, continued: bool, t0: int, t1: int,
              n_seq: int, every: int, filled: int) -> Flight | None:
        """After steps ``t0 .. t1 - 1`` (the generator at ``gen0`` before their signs; ``filled``: the last step at
        which a window filled, -1: none): the generator's states kept, and the landed flight of the window that
        filled last (``None`` where none filled, or its start lies in a range this engine did not run)."""
        L = rule.window
        if not continued:
            self.open_gen = None
        n = self.cS.shape[0]

        def gen_at(t: int) -> torch.Tensor | None:  # the generator's state before step t's signs
            if t < t0:
                return self.open_gen
            g = torch.Generator()
            g.set_state(gen0)
            torch.randint(0, 2, (t - t0, 1, n), generator=g, dtype=torch.int8)
            return g.get_state()

        if filled >= 0:
            self.closed_gen = gen_at(filled - L + 1)
        last = t1 - 1
        j = (last % every) % L
        opening = None if last == n_seq - 1 or (last + 1) % every == 0 or j == L - 1 else last - j
        self.open_gen = None if opening is None else gen_at(opening)
        if filled < 0 or self.closed_gen is None:
            return None
        gen = torch.Generator()
        gen.set_state(self.closed_gen)
        self.closed_gen = None
        t = torch.from_numpy
        st = state._replace(net=state.net._replace(h=t(self.ch).clone()[None]), s_tilde=t(self.cS).clone()[None],
                            theta_mat=t(self.cTh).clone()[None], theta_sq=t(self.csq).clone(),
                            rows=t(self.crows).clone(), held=L, gen=gen)
        factors = uoro_window.prepare(rule, {"W_out": t(self.cWo).clone()}, st, kernel=True)
        return _run_rest(t(self.cW).clone(), _take_off(factors, st))._replace(active=False)


def build(net: object, rule: object) -> UOROEngine | None:
    """The engine for ``rule`` on ``net``: UORO (not a subclass) on the rate RNN (not a subclass) with the loss mse
    or ce; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) is not UORO or rule.loss not in LOSSES:
        return None
    return UOROEngine(net, rule)
