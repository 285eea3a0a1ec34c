"""UORO on the leaky tanh rate RNN (:mod:`models.rate`) without generic Jacobian-vector products: the
analytic fast path of :class:`neuro.rules.uoro.UORO` (Tallec & Ollivier 2018, ICLR, arXiv:1702.05043,
Algorithm 1). Same estimate as the generic path (same random signs, drawn in the same order), summed
over a sequence; only the time at which it is handed over differs (at window ends, ``flush`` and ``finish``).

The rate step (``f'_t = 1 - tanh(i_t)^2``, ``z_t = [x_t; h_{t-1}; 1]`` [m = n_in + n + 1])::

    i_t = W_in x_t + W_rec h_{t-1} + b,   h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t),   y_t = W_out h_t + b_out

has ``(partial f/partial s) v = (1 - alpha) v + alpha f'_t * (W_rec v)`` (one matrix-vector product), and
``nu^T partial f/partial theta`` is rank one: ``a_t z_t^T`` on the blocks ``[W_in | W_rec | b]`` (zero on
``W_out, b_out``) with ``a_t = alpha nu_t * f'_t``, so ``||delta_t|| = ||a_t|| ||z_t||``. Hence ``theta~``
(kept per sample as an n x m matrix ``Theta``) stays "a scaled matrix plus rank-one terms". With ``e_t =
dl_t/dy_t`` and ``r_t = W_out^T e_t``: ``dl_t/ds_{t-1} . s~_{t-1} = r_t . (J s~_{t-1})`` and the direct term
of the estimate is ``q_t z_t^T`` with ``q_t = alpha f'_t * r_t`` (plus ``e_t h_t^T``, ``e_t`` on the readout).

Each step only runs the network and keeps ``x_t, y*_t, h_{t-1}, tanh(i_t), y_t`` and the mask. After
``window`` steps (or at ``flush`` / ``finish``) the L pending steps are folded in. All signs ``nu`` are
drawn at once (the numbers that L one-step draws give); with ``Theta`` the pair's matrix at the window
start (``c = 1``, or 0 when ``Theta = 0``), per pair:

    U_s = a_s^T Theta z_s                   one matrix product [L, n] x [n, m]
    H_sr = (a_s . a_r)(z_s . z_r)           Gram matrices [L, L];  ||delta_s|| = sqrt(H_ss)
    rho_1,s = sqrt(||delta_s|| / (sqrt(n) + eps)) + eps
    for s = 1..L (the sequential part: one matrix-vector product and scalars, in float64):
        Js_s = (partial f/partial s) s~_{s-1},      rho_0,s = sqrt(||theta~_{s-1}|| / (||Js_s|| + eps)) + eps
        theta~_{s-1} = D_{s-1} (c Theta + sum_{r<s} w_r a_r z_r^T),   D_s = D_{s-1} / rho_0,s,  D_0 = 1
        ||theta~_s||^2 = ||theta~_{s-1}||^2 / rho_0^2 + 2 D_{s-1} X_s / (rho_0 rho_1) + ||delta_s||^2 / rho_1^2
            X_s = a_s^T theta~_{s-1} z_s / D_{s-1} = c U_s + sum_{r<s} w_r H_sr,    w_s = 1 / (rho_1,s D_s)
        s~_s = rho_0,s Js_s + rho_1,s nu_s
    k_s = r_s . Js_s   (= dl_s/ds_{s-1} . s~_{s-1})
    sum_s k_s theta~_{s-1} = gamma Theta + sum_r v_r a_r z_r^T,
        gamma = c sum_s k_s D_{s-1},   v_r = w_r sum_{s>r} k_s D_{s-1}
    Theta <- c D_L Theta + sum_r D_L w_r a_r z_r^T                        one matrix product

and the window's estimate, the mean over the pairs (and the batch), is ``gamma Theta + sum_r (v_r a_r +
q_r) z_r^T`` on ``[W_in | W_rec | b]`` (one matrix product) and ``sum_s e_s h_s^T``, ``sum_s e_s`` on the
readout. ``D`` restarts at 1 where ``theta~`` is exactly 0 (a saturated network), so it stays bounded.
``||Theta||^2`` is recomputed at each window end.

*In flight* (one pair: batch 1, ``samples = 1``, on the CPU, ``window > 1``). The sequential part needs a
product with ``W_rec`` per step, as the network does, and at ``n = 1024`` each is bound by reading
``W_rec``. So when a window is full its factors are computed (:func:`_prepare`: the signs, ``U``, ``H``)
and its sequential part runs one step at a time during the next window's steps, in the compiled
:func:`_seq_step`, which forms the network's ``W_rec h_{t-1}`` and ``W_rec s~`` in one pass over ``W_rec``.
At the end of that next window it lands (:func:`_complete`: the estimate and ``Theta`` at its end; the
two matrix products are formed first and ``Theta``'s shares added in one pass that also gives
``||Theta||^2``, :func:`_add_shares`, instead of copying ``Theta`` twice) and the next one takes off. So
a window end hands over the estimate of the window before it; ``flush`` and ``finish`` run what is
left (the rest of the flight, then the pending steps) and hand over everything. The flight's scalars are
written to a new array at each step: a state stays a snapshot.

Cost per step: the forward step (in flight its product with ``W_rec`` is shared with the sequential
part's; otherwise one more product with ``W_rec``) and three rank-one-equivalent shares of [n, L] x [L, m]
matrix products (``U``, ``Theta``, the estimate); memory O(B (n m + L n)) (two windows in flight).
``window = 1`` hands the estimate over every step (as :mod:`neuro.rules.td` needs).
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import linear as _linear

from models.rate import RateState as _RateState
from neuro.contract import Params

from . import _matvec
from .base import StepOutput as _StepOutput

__all__ = ["Pending", "RateUOROState", "applies", "init_state", "step", "fold", "flat_pair"]

_LOSSES = ("mse", "ce", "value")


class Pending:
    """The steps not yet folded into the pair, oldest first (at most ``window``), as one flat tuple of 5 tensors a
    step: ``[x_t, y*_t] [B, n_in + n_out], h_{t-1} [B, n], tanh(i_t) [B, n], y_t [B, n_out], mask_t [B]``
    (detached; flat, so that a step allocates few Python objects). An opaque container: its length changes
    within a window, the state's structure does not."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple = ()) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps) // 5

    def __repr__(self) -> str:
        return f"Pending({len(self)} steps)"

    def __getstate__(self):
        return self.steps

    def __setstate__(self, steps) -> None:
        self.steps = steps


_EMPTY = Pending()


class RateUOROState(NamedTuple):
    net: NamedTuple  # RateState: h_t [B, n]
    s_tilde: Tensor  # [B K, n]  s~ after the last folded step
    theta_mat: Tensor  # [B K, n, n_in + n + 1]  theta~ after the last folded step, blocks [W_in | W_rec | b]
    theta_sq: Tensor  # [B K]  ||theta~||^2 (float64)
    pending: Pending
    gen: torch.Generator
    t: int  # steps since init or reset (folded, in flight or pending)
    flight: "Flight | None"  # the previous window, its sequential part under way (batch 1, one pair, CPU)


def applies(net, loss: str) -> bool:
    """Whether the fast path covers ``net`` (exactly the rate RNN of :mod:`models.rate`) with ``loss``."""
    from models.rate import RateRNN

    return type(net) is RateRNN and loss in _LOSSES


def init_state(net, params: Params, batch: int, samples: int, gen: torch.Generator) -> RateUOROState:
    p = params["W_rec"]
    n, m, BK = net.n_hidden, net.n_in + net.n_hidden + 1, batch * samples
    return RateUOROState(net=net.init_state(params, batch), s_tilde=torch.zeros(BK, n, dtype=p.dtype, device=p.device),
                         theta_mat=torch.zeros(BK, n, m, dtype=p.dtype, device=p.device),
                         theta_sq=torch.zeros(BK, dtype=torch.float64, device=p.device), pending=_EMPTY, gen=gen, t=0,
                         flight=None)


def _loss(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``mean_b m_b l_b`` for the per-sample loss ``l`` of :mod:`neuro.losses` (the step's reported loss)."""
    B = y_hat.shape[0]
    if loss == "mse":
        if B == 1:
            return (y_hat - y).square_().sum().mul_(0.5 * float(mask))
        d = y_hat - y
        return torch.dot(torch.linalg.vecdot(d, d), mask.to(d.dtype)).mul_(0.5 / B)
    if loss == "ce":
        return torch.dot((y * torch.log_softmax(y_hat, dim=-1)).sum(-1), mask.to(y_hat.dtype)).mul_(-1.0 / B)
    return torch.dot(y_hat.sum(-1), mask.to(y_hat.dtype)).mul_(1.0 / B)  # "value"


def _dl_dy(loss: str, Y_hat: Tensor, Y: Tensor) -> Tensor:
    """``dl/dy_hat`` (unmasked), elementwise over any leading dimensions."""
    if loss == "mse":
        return Y_hat.sub_(Y)
    if loss == "ce":
        return torch.softmax(Y_hat, dim=-1).mul_(Y.sum(-1, keepdim=True)).sub_(Y)
    return torch.ones_like(Y_hat)  # "value"


def step(rule, params: Params, state: RateUOROState, x: Tensor, y: Tensor, mask: Tensor):
    """One network step; the step is kept pending (its window is folded in once ``rule.window`` steps are
    pending). In flight: one step of the previous window's sequential part, fused with this step's
    recurrent product (module docstring)."""
    with torch.no_grad():
        alpha = rule.net.alpha
        h, W_rec, fl = state.net.h, params["W_rec"], state.flight
        i = _linear(x, params["W_in"], params["b"])
        if fl is not None:
            fl, Wh = _advance(rule, W_rec, fl, h)
            i.add_(Wh)
        else:
            i.addmm_(h, W_rec.t())
        th = i.tanh_()
        h_new = th if alpha == 1.0 else torch.add(h * (1.0 - alpha), th, alpha=alpha)
        y_hat = _linear(h_new, params["W_out"], params["b_out"])
        loss = _loss(rule.loss or "mse", y_hat, y, mask)
        # x, y copied (the caller's may change before the fold)
        steps = state.pending.steps + (torch.cat([x, y], 1), h, th, y_hat, mask)
        new = RateUOROState(_RateState(h_new), state.s_tilde, state.theta_mat, state.theta_sq, Pending(steps),
                            state.gen, state.t + 1, fl)
        grad = None
        if len(steps) >= 5 * rule.window:
            if rule.window > 1 and _kernel_applies(rule, W_rec, h_new):
                new, grad = _close_window(rule, params, new)
            else:
                new, grad = _fold(rule, params, new, steps, True)
    return _StepOutput(new, y_hat, loss, grad)


def fold(rule, params: Params, state: RateUOROState, check: bool = True) -> tuple[RateUOROState, Params | None]:
    """Fold everything not yet handed over into the pair (the flight's remaining steps, then the pending
    steps); their summed estimate (``None`` when there is nothing)."""
    steps, fl = state.pending.steps, state.flight
    if not steps and fl is None:
        return state, None
    grads = []
    with torch.no_grad():
        if fl is not None:
            fl = _run_rest(rule, params["W_rec"], fl)
            state, g = _land_flight(rule, params, state, fl, check)
            grads.append(g)
        if steps:
            state, g = _fold(rule, params, state, steps, check)
            grads.append(g)
    if len(grads) == 2:
        return state, {k: grads[0][k] + grads[1][k] for k in grads[0]}
    return state, grads[0]


def _kernel_applies(rule, W_rec: Tensor, h: Tensor) -> bool:
    """Whether the sequential part runs in the compiled kernel: one pair (batch 1, one sample), on the CPU."""
    return h.shape[0] == 1 and rule.samples == 1 and _matvec.usable(W_rec, h)


class _Prep(NamedTuple):
    """A window's factors, computed once its steps are known (:func:`_prepare`). [L, BK, .] per pair, [L, B, .]
    per sequence; scalars of the sequential part in float64 on the CPU."""

    L: int
    c: list  # [BK] Theta's coefficient (0 where Theta = 0)
    q: list  # [BK] ||theta~||^2 at the window's start
    Fp: Tensor  # [L, BK, n] alpha f'_s
    NU1: Tensor  # [L, BK, n] rho_1,s nu_s
    R: Tensor  # [L, B, n] r_s = W_out^T e_s
    RF: Tensor  # [L, B, n] q_s = alpha f'_s * r_s
    A: Tensor  # [L, BK, n] a_s
    Z: Tensor  # [L, B, m] z_s
    U: Tensor  # [BK, L] a_s^T Theta z_s
    H: Tensor  # [BK, L, L] (a_s . a_r)(z_s . z_r)
    rho1: Tensor  # [L, BK]
    nd: Tensor  # [L, BK] ||delta_s||
    E: Tensor  # [L, B, n_out] e_s (masked)
    Hn: Tensor  # [L, B, n] h_s
    kernel: tuple  # the kernel's arrays (numpy: F, NU1, R [L, n], U [L], H [L, L], rho1, nd [L], and 1 - alpha, eps,
    #               c); () where the kernel is not used


class Flight:
    """A window whose sequential part is under way (:func:`_advance`): its factors ``prep``, the steps done
    ``j``, ``s~`` after them ``s_t`` [n] and the scalars ``acc`` (float64 [3 + 3 L]: ``||theta~||^2``, ``D``, 0,
    then ``w_s``, ``D_{s-1}``, ``k_s D_{s-1}``). Opaque; a step makes a new one (no array of an earlier state
    is written)."""

    __slots__ = ("prep", "j", "s_t", "acc")

    def __init__(self, prep: _Prep, j: int, s_t: Tensor, acc: np.ndarray) -> None:
        self.prep, self.j, self.s_t, self.acc = prep, j, s_t, acc

    def __repr__(self) -> str:
        return f"Flight({self.j} of {self.prep.L} steps)"

    def __getstate__(self):
        return self.prep, self.j, self.s_t, self.acc

    def __setstate__(self, st) -> None:
        self.prep, self.j, self.s_t, self.acc = st


def _close_window(rule, params: Params, state: RateUOROState) -> tuple[RateUOROState, Params | None]:
    """A full window with one pair on the CPU: the flight in progress (the previous window, its sequence done
    by this window's steps) lands (its estimate is handed over), and this window takes off."""
    grad = None
    if state.flight is not None:
        fl = state.flight
        if fl.j != fl.prep.L:
            raise RuntimeError(f"{rule.name}: a window closed with {fl.prep.L - fl.j} steps of the previous one "
                               "still to run (the state was stepped by a rule with another window)")
        state, grad = _land_flight(rule, params, state, fl, True)
    prep = _prepare(rule, params, state, state.pending.steps, kernel=True)
    return state._replace(pending=_EMPTY, flight=_take_off(prep, state)), grad


def _take_off(prep: _Prep, state: RateUOROState) -> Flight:
    """The flight of a prepared window (one pair), no step of its sequence run yet."""
    acc = np.zeros(3 + 3 * prep.L)
    acc[0], acc[1] = prep.q[0], 1.0  # ||theta~||^2 at the window's start, D_0 = 1
    return Flight(prep, 0, state.s_tilde[0], acc)


def _run_rest(rule, W_rec: Tensor, fl: Flight) -> Flight:
    """The flight with the rest of its sequence run (no network step to share the products with)."""
    while fl.j < fl.prep.L:
        fl, _ = _advance(rule, W_rec, fl, None)
    return fl


def _advance(rule, W_rec: Tensor, fl: Flight, h: Tensor | None) -> tuple[Flight, Tensor | None]:
    """One step of the flight's sequence (:func:`_seq_step`); with ``h`` [1, n] also ``W_rec h`` [n] from the
    same pass over ``W_rec``."""
    p, s = fl.prep, fl.j
    F, NU1, R, U, H, rho1, nd, consts = p.kernel
    s_new, Wh = torch.empty_like(fl.s_t), torch.empty_like(fl.s_t)
    acc = np.empty_like(fl.acc)
    sv = fl.s_t.numpy()
    _seq_step(W_rec.detach().numpy(), h.reshape(-1).numpy() if h is not None else sv, sv, F, NU1, R, U, H, rho1,
              nd, consts, fl.acc, acc, Wh.numpy(), s_new.numpy(), s)  # without h: W s~ twice, one thrown away
    return Flight(p, s + 1, s_new, acc), (Wh if h is not None else None)


def _land_flight(rule, params: Params, state: RateUOROState, fl: Flight, check: bool):
    L = fl.prep.L
    kap = torch.from_numpy(fl.acc[3 + 2 * L:].copy())[None]
    w = torch.from_numpy(fl.acc[3:3 + L].copy())[None]
    return _complete(rule, params, state._replace(flight=None), fl.prep, fl.s_t[None], kap, [float(fl.acc[1])], w,
                     check)


def _prepare(rule, params: Params, state: RateUOROState, steps: tuple, kernel: bool = False) -> _Prep:
    """The window's factors from its pending ``steps`` and the pair at its start (draws its signs)."""
    net, eps, K = rule.net, rule.eps, rule.samples
    n, n_in = net.n_hidden, net.n_in
    L, B = len(steps) // 5, steps[0].shape[0]
    XY, Hp, TH, Yh, M = (torch.stack(steps[i::5]) for i in range(5))  # [L, B, .]
    X, Y = XY[..., :n_in], XY[..., n_in:]
    E = _dl_dy(rule.loss or "mse", Yh, Y).mul_(M.to(Yh.dtype)[..., None])  # e_s = dl_s/dy_s, masked
    F = 1.0 - TH.square_()  # f'_s (TH is ours: overwritten)
    if net.alpha != 1.0:
        F.mul_(net.alpha)
    R = E @ params["W_out"]  # r_s = W_out^T e_s  [L, B, n]
    Z = torch.cat([X, Hp, torch.ones_like(Hp[..., :1])], -1)  # z_s [L, B, m]
    rep = (lambda v: v.repeat_interleave(K, 1)) if K > 1 else (lambda v: v)
    Fp = rep(F)
    NU = _random_signs(state.gen, (L, B * K, n), F)  # the signs of L one-step draws, in order
    A = Fp * NU  # a_s [L, BK, n]
    At, Zt = A.transpose(0, 1), rep(Z).transpose(0, 1)  # [BK, L, .]
    H = (At @ At.transpose(1, 2)).mul_(Zt @ Zt.transpose(1, 2))  # [BK, L, L]
    nd = H.diagonal(dim1=1, dim2=2).sqrt().t()  # ||delta_s|| = ||a_s|| ||z_s||  [L, BK]
    rho1 = nd.div(math.sqrt(n) + eps).sqrt_().add_(eps)
    NU1 = NU.mul_(rho1[..., None])  # rho_1 nu_s
    U = (At @ state.theta_mat).mul_(Zt).sum(-1)  # a_s^T Theta z_s  [BK, L]
    q = state.theta_sq.tolist()
    Hn = torch.cat([Hp[1:], state.net.h[None]]) if L > 1 else state.net.h[None]  # h_s [L, B, n]
    arrays = ()
    if kernel:
        f64 = lambda v: np.ascontiguousarray(v.double().numpy())  # noqa: E731
        arrays = (Fp[:, 0].numpy(), NU1[:, 0].numpy(), R[:, 0].numpy(), f64(U[0]), f64(H[0]), f64(rho1[:, 0]),
                  f64(nd[:, 0]), np.array([1.0 - net.alpha, eps, 1.0 if q[0] > 0 else 0.0]))
    return _Prep(L=L, c=[1.0 if qi > 0 else 0.0 for qi in q], q=q, Fp=Fp, NU1=NU1, R=R, RF=R * F, A=A, Z=Z,
                 U=U, H=H, rho1=rho1, nd=nd, E=E, Hn=Hn, kernel=arrays)


def _fold(rule, params: Params, state: RateUOROState, steps: tuple, check: bool):
    """Fold ``steps`` into the pair at once: prepare, the whole sequential part, complete."""
    kernel = _kernel_applies(rule, params["W_rec"], state.net.h)
    p = _prepare(rule, params, state, steps, kernel=kernel)
    state = state._replace(pending=_EMPTY)
    if kernel:
        fl = _run_rest(rule, params["W_rec"], _take_off(p, state))
        return _land_flight(rule, params, state, fl, check)
    L, BK = p.L, p.Fp.shape[1]
    s_t, JS, D, w, Dprev = _sequence(state.s_tilde, params["W_rec"].t(), p.Fp, p.NU1, rule.net.alpha, rule.eps,
                                     list(p.q), p.c, p.U.tolist(), p.H.tolist(), p.rho1.t().tolist(),
                                     p.nd.t().tolist())
    Dp = torch.tensor(Dprev, dtype=torch.float64).reshape(L, BK)  # D_{s-1}
    R = p.R.repeat_interleave(rule.samples, 1) if rule.samples > 1 else p.R
    kap = (torch.linalg.vecdot(R, torch.stack(JS)).double().cpu() * Dp).t()  # k_s D_{s-1}
    return _complete(rule, params, state, p, s_t, kap, D, torch.tensor(w, dtype=torch.float64), check)


def _complete(rule, params: Params, state: RateUOROState, p: _Prep, s_t: Tensor, kap: Tensor, D: list, wt: Tensor,
              check: bool):
    """The window's estimate and the pair at its end, from its sequential part: ``s~_L`` [BK, n], ``k_s
    D_{s-1}`` [BK, L], ``D_L`` [BK], ``w_s`` [BK, L] (float64)."""
    n, n_in, K = rule.net.n_hidden, rule.net.n_in, rule.samples
    L, B = p.L, p.Z.shape[1]
    BK = B * K
    Theta, c, A = state.theta_mat, p.c, p.A
    tails = kap.flip(1).cumsum(1).flip(1)  # sum_{s>=r} k_s D_{s-1}  [BK, L]
    tails = torch.cat([tails[:, 1:], torch.zeros(BK, 1, dtype=torch.float64)], 1)  # sum_{s>r}
    v = (wt * tails / BK).t()  # [L, BK]
    gam = [ci * float(ti) / BK for ci, ti in zip(c, kap.sum(1))]
    cA = (wt * torch.tensor(D, dtype=torch.float64)[:, None]).t()  # [L, BK]
    dt, dev = A.dtype, A.device
    left = v.to(dtype=dt, device=dev)[..., None] * A  # [L, BK, n]
    if K > 1:
        left = left.reshape(L, B, K, n).sum(2)
    left.add_(p.RF, alpha=1.0 / B)  # + q_s / B
    Zf = p.Z.reshape(L * B, -1)
    Ac = cA.to(dtype=dt, device=dev)[..., None] * A
    theta_sq = None
    if BK == 1 and p.kernel:  # the products, then Theta's shares and ||theta~||^2 in one pass (no copies of Theta)
        G = torch.mm(left.reshape(L, n).t(), Zf)
        new_theta = torch.mm(Ac.reshape(L, n).t(), Zf)
        sq = _add_shares(G.view(-1).numpy(), new_theta.view(-1).numpy(), Theta.view(-1).numpy(), gam[0], c[0] * D[0])
        theta_sq, new_theta = torch.tensor([sq], dtype=torch.float64), new_theta[None]
    elif BK == 1:
        G = torch.addmm(Theta[0], left.reshape(L, n).t(), Zf, beta=gam[0])
        new_theta = torch.addmm(Theta[0], Ac.reshape(L, n).t(), Zf, beta=c[0] * D[0])[None]
    else:
        G = torch.addmm(torch.einsum("p,pnm->nm", torch.tensor(gam, dtype=dt, device=dev), Theta),
                        left.reshape(L * B, n).t(), Zf)
        cL = torch.tensor([ci * Di for ci, Di in zip(c, D)], dtype=dt, device=dev)
        Zt = (p.Z.repeat_interleave(K, 1) if K > 1 else p.Z).transpose(0, 1)  # [BK, L, m]
        new_theta = torch.baddbmm(Theta * cL[:, None, None], Ac.permute(1, 2, 0), Zt)
    Ef = p.E.reshape(L * B, -1)
    g_out, g_bout = Ef.t() @ p.Hn.reshape(L * B, n) / B, Ef.sum(0) / B
    if check and not bool(torch.isfinite(G.sum() + g_out.sum() + g_bout.sum())):  # one cheap pass, then the details
        grad = {"W_in": G[:, :n_in], "W_rec": G[:, n_in:n_in + n], "b": G[:, -1], "W_out": g_out, "b_out": g_bout}
        _check_finite(rule, state.t - len(state.pending) - L, grad, (p.Z, p.E, p.Hn), (kap.t(), p.rho1, p.nd))
    # views of G (the caller sums them; nothing else holds G)
    grad = {"W_in": G[:, :n_in], "W_rec": G[:, n_in:n_in + n], "b": G[:, -1], "W_out": g_out, "b_out": g_bout}
    if theta_sq is None:
        theta_sq = torch.linalg.vector_norm(new_theta.flatten(1), dim=1).double().square_()
    new = state._replace(s_tilde=s_t, theta_mat=new_theta, theta_sq=theta_sq)
    return new, {kk: grad[kk] for kk in params}


@numba.njit(cache=True, nogil=True, fastmath=_matvec.FASTMATH)
def _add_shares(G, T_new, Theta, gam, cD):
    """``G += gam Theta``, ``T_new += cD Theta`` (flat arrays) in one pass; returns ``||T_new||^2`` (float64)."""
    sq = 0.0
    g = G.dtype.type(gam)
    d = G.dtype.type(cD)
    for k in range(G.shape[0]):
        t = Theta[k]
        G[k] += g * t
        v = T_new[k] + d * t
        T_new[k] = v
        sq += np.float64(v) * np.float64(v)
    return sq


@numba.njit(cache=True, nogil=True, fastmath=_matvec.FASTMATH)
def _products(W, h, s_prev, F_s, R_s, oma, out_Wh, out_s):
    """``out_Wh = W h``, ``out_s = J s~ = oma s~ + F_s * (W s~)`` from one pass over ``W``; returns ``(||J s~||^2,
    r_s . J s~)`` in float64. (The row loop is :func:`neuro.rules._matvec.mv2`'s, written here again on
    purpose: numba's on-disk cache does not notice a change in a compiled function of another module.)"""
    n, k = W.shape
    nJ2 = 0.0
    kd = 0.0
    for i in range(n):
        sa = h.dtype.type(0.0)
        sb = h.dtype.type(0.0)
        for j in range(k):
            w = W[i, j]
            sa += w * h[j]
            sb += w * s_prev[j]
        out_Wh[i] = sa
        js = F_s[i] * sb
        if oma != 0.0:
            js += oma * s_prev[i]
        out_s[i] = js
        jd = np.float64(js)
        nJ2 += jd * jd
        kd += np.float64(R_s[i]) * jd
    return nJ2, kd


@numba.njit(cache=True, nogil=True)
def _seq_step(W, h, s_prev, F, NU1, R, U, H, rho1, nd, consts, acc_in, acc_out, out_Wh, out_s, s):
    """Step ``s`` of a window's sequential part for one pair (the module docstring's loop body): ``J s~_{s-1}``
    (and ``W h``, the network's product, from the same pass), the scalars in float64 (``acc_in`` -> ``acc_out``,
    layout in :class:`Flight`), ``out_s = s~_s = rho_0 J s~_{s-1} + rho_1 nu_s``. ``consts``: ``1 - alpha, eps, c``."""
    oma, eps, c = consts[0], consts[1], consts[2]
    nJ2, kd = _products(W, h, s_prev, F[s], R[s], oma, out_Wh, out_s)
    L = U.shape[0]
    acc_out[:] = acc_in
    q, D = acc_in[0], acc_in[1]
    if q == 0.0 and c == 0.0:
        restart = True
        for r in range(s):
            if acc_in[3 + r] != 0.0:
                restart = False
        if restart:
            D = 1.0  # theta~_{s-1} = 0 exactly: restart its scale (D stays bounded)
    r0 = math.sqrt(math.sqrt(q) / (math.sqrt(nJ2) + eps)) + eps
    r1 = rho1[s]
    cross = c * U[s]  # a_s^T theta~_{s-1} z_s / D_{s-1}
    for r in range(s):
        cross += acc_in[3 + r] * H[s, r]
    qn = q / (r0 * r0) + 2.0 * D * cross / (r0 * r1) + (nd[s] / r1) ** 2
    acc_out[0] = 0.0 if 0.0 > qn else qn  # max(qn, 0) that keeps NaN
    acc_out[3 + L + s] = D
    acc_out[3 + 2 * L + s] = kd * D  # k_s D_{s-1}
    D = D / r0
    acc_out[1] = D
    acc_out[3 + s] = 1.0 / (r1 * D) if nd[s] > 0 else 0.0
    nu1 = NU1[s]
    for i in range(out_s.shape[0]):
        out_s[i] = nu1[i] + r0 * out_s[i]


def _sequence(s_t, WrT, Fp, NU1, alpha, eps, q, c, U, H, rho1, nd):

    """The sequential part of a fold for B K pairs: ``(s~_L, [J s~_{s-1}], D_L, w [BK][L], D_{s-1} [L][BK])``
    (module docstring; ``q`` [BK] ||theta~||^2 and ``c`` [BK] are updated in place)."""
    L, BK = Fp.shape[0], Fp.shape[1]
    D, w, Dprev, JS = [1.0] * BK, [[0.0] * L for _ in range(BK)], [[0.0] * BK for _ in range(L)], []
    for s in range(L):
        Ws = s_t @ WrT
        Js = Fp[s] * Ws if alpha == 1.0 else torch.addcmul(s_t * (1.0 - alpha), Fp[s], Ws)
        JS.append(Js)
        nJ = torch.linalg.vector_norm(Js, dim=1).tolist()
        rho0 = []
        for p in range(BK):
            wp = w[p]
            if q[p] == 0.0 and c[p] == 0.0 and not any(wp[:s]):
                D[p] = 1.0
            r0 = math.sqrt(math.sqrt(q[p]) / (nJ[p] + eps)) + eps
            r1, Dp = rho1[p][s], D[p]
            cross = c[p] * U[p][s] + sum(map(operator.mul, wp[:s], H[p][s][:s]))
            q[p] = max(q[p] / (r0 * r0) + 2.0 * Dp * cross / (r0 * r1) + (nd[p][s] / r1) ** 2, 0.0)
            Dprev[s][p] = Dp
            D[p] = Dp / r0
            wp[s] = 1.0 / (r1 * D[p]) if nd[p][s] > 0 else 0.0
            rho0.append(r0)
        s_t = torch.addcmul(NU1[s], Js, torch.tensor(rho0, dtype=Js.dtype, device=Js.device)[:, None])
    return s_t, JS, D, w, Dprev


def _check_finite(rule, t0: int, grad: Params, per_step: tuple, scalars: tuple) -> None:
    """Raise ``FloatingPointError`` naming the first step of the window with a non-finite ingredient and the
    parameters whose estimate is not finite."""
    bad = [kk for kk, g in grad.items() if not bool(torch.isfinite(g).all())]
    if not bad:
        return
    L = per_step[0].shape[0]
    ok = torch.ones(L, dtype=torch.bool)
    for v in per_step:
        ok &= torch.isfinite(v).reshape(L, -1).all(1).cpu()
    k, rho1, nd = scalars
    ok &= torch.isfinite(k).all(1) & torch.isfinite(rho1).all(1).cpu() & torch.isfinite(nd).all(1).cpu()
    s = int((~ok).nonzero()[0]) if bool((~ok).any()) else L - 1
    raise FloatingPointError(f"{rule.name}: the estimate at step {t0 + s + 1} (since init or reset) is not finite for "
                             f"parameter(s) {', '.join(map(repr, bad))}")


def _random_signs(gen: torch.Generator, shape: tuple[int, ...], like: Tensor) -> Tensor:
    from .uoro import random_signs

    return random_signs(gen, shape, like)


def flat_pair(rule, params: Params, state: RateUOROState) -> tuple[Tensor, Tensor]:
    """``(s~ [B K, n], theta~ [B K, P])`` after every step so far, theta~ flattened like the generic path's
    (sorted keys; zero on the readout). Folds a copy: the state and its generator are left as they were."""
    gen = torch.Generator(device=state.gen.device)
    gen.set_state(state.gen.get_state())
    st, _ = fold(rule, params, state._replace(gen=gen), check=False)
    n_in, n = rule.net.n_in, rule.net.n_hidden
    Th = st.theta_mat
    BK = Th.shape[0]
    parts = {"W_in": Th[:, :, :n_in], "W_rec": Th[:, :, n_in:n_in + n], "b": Th[:, :, -1]}
    flat = [parts[k].reshape(BK, -1) if k in parts else Th.new_zeros(BK, params[k].numel()) for k in sorted(params)]
    return st.s_tilde, torch.cat(flat, 1)
