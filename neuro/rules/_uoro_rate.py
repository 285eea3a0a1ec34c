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

Cost per step: the forward step, one matrix-vector product with ``W_rec`` and three rank-one-equivalent
shares of [n, L] x [L, m] matrix products (``U``, ``Theta``, the estimate); memory O(B (n m + L n)).
``window = 1`` hands the estimate over every step (as :mod:`neuro.rules.td` needs). A step adds few
Python objects: a window of the default size holds a few hundred, below the garbage collector's
threshold (700), so that steps do not set off collections.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import linear as _linear

from models.rate import RateState as _RateState
from neuro.contract import Params

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
    t: int  # steps since init or reset (folded or pending)


def applies(net, loss: str) -> bool:
    """Whether the fast path covers ``net`` (exactly the rate RNN of :mod:`models.rate`) with ``loss``."""
    from models.rate import RateRNN

    return type(net) is RateRNN and loss in _LOSSES


def init_state(net, params: Params, batch: int, samples: int, gen: torch.Generator) -> RateUOROState:
    p = params["W_rec"]
    n, m, BK = net.n_hidden, net.n_in + net.n_hidden + 1, batch * samples
    return RateUOROState(net=net.init_state(params, batch), s_tilde=torch.zeros(BK, n, dtype=p.dtype, device=p.device),
                         theta_mat=torch.zeros(BK, n, m, dtype=p.dtype, device=p.device),
                         theta_sq=torch.zeros(BK, dtype=torch.float64, device=p.device), pending=_EMPTY, gen=gen, t=0)


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
    """One network step; the step is kept pending (folded in every ``rule.window`` steps)."""
    with torch.no_grad():
        alpha = rule.net.alpha
        h = state.net.h
        i = _linear(x, params["W_in"], params["b"])
        i.addmm_(h, params["W_rec"].t())
        th = i.tanh_()
        h_new = th if alpha == 1.0 else torch.add(h * (1.0 - alpha), th, alpha=alpha)
        y_hat = _linear(h_new, params["W_out"], params["b_out"])
        loss = _loss(rule.loss or "mse", y_hat, y, mask)
        # x, y copied (the caller's may change before the fold)
        steps = state.pending.steps + (torch.cat([x, y], 1), h, th, y_hat, mask)
        new = RateUOROState(_RateState(h_new), state.s_tilde, state.theta_mat, state.theta_sq, Pending(steps),
                            state.gen, state.t + 1)
        grad = None
        if len(steps) >= 5 * rule.window:
            new, grad = _fold(rule, params, new, steps, True)
    return _StepOutput(new, y_hat, loss, grad)


def fold(rule, params: Params, state: RateUOROState, check: bool = True) -> tuple[RateUOROState, Params | None]:
    """Fold the pending steps into the pair; their summed estimate (``None`` when nothing is pending)."""
    steps = state.pending.steps
    if not steps:
        return state, None
    with torch.no_grad():
        return _fold(rule, params, state, steps, check)


def _fold(rule, params: Params, state: RateUOROState, steps: tuple, check: bool):
    net, eps, K = rule.net, rule.eps, rule.samples
    alpha, n, n_in = net.alpha, net.n_hidden, net.n_in
    W_rec = params["W_rec"]
    L, B = len(steps) // 5, steps[0].shape[0]
    BK = B * K
    XY, Hp, TH, Yh, M = (torch.stack(steps[i::5]) for i in range(5))  # [L, B, .]
    X, Y = XY[..., :n_in], XY[..., n_in:]
    E = _dl_dy(rule.loss or "mse", Yh, Y).mul_(M.to(Yh.dtype)[..., None])  # e_s = dl_s/dy_s, masked
    F = 1.0 - TH.square_()  # f'_s (TH is ours: overwritten)
    if alpha != 1.0:
        F.mul_(alpha)
    R = E @ params["W_out"]  # r_s = W_out^T e_s  [L, B, n]
    Z = torch.cat([X, Hp, torch.ones_like(Hp[..., :1])], -1)  # z_s [L, B, m]
    rep = (lambda v: v.repeat_interleave(K, 1)) if K > 1 else (lambda v: v)
    Fp, Zp = rep(F), rep(Z)
    NU = _random_signs(state.gen, (L, BK, n), F)  # the signs of L one-step draws, in order
    A = Fp * NU  # a_s [L, BK, n]
    At, Zt = A.transpose(0, 1), Zp.transpose(0, 1)  # [BK, L, .]
    H = (At @ At.transpose(1, 2)).mul_(Zt @ Zt.transpose(1, 2))  # [BK, L, L]
    nd = H.diagonal(dim1=1, dim2=2).sqrt().t()  # ||delta_s|| = ||a_s|| ||z_s||  [L, BK]
    rho1 = nd.div(math.sqrt(n) + eps).sqrt_().add_(eps)
    NU1 = NU.mul_(rho1[..., None])  # rho_1 nu_s
    Theta = state.theta_mat
    U = (At @ Theta).mul_(Zt).sum(-1)  # a_s^T Theta z_s  [BK, L]

    # the sequential part: per pair, scalars in float64 (Python floats); one matrix-vector product per step
    q = state.theta_sq.tolist()
    c = [1.0 if qi > 0 else 0.0 for qi in q]  # Theta = 0: its coefficient is 0 (never inf * 0)
    if BK == 1:  # 1-d vectors, plain floats, flat lists
        JS = torch.empty_like(Fp)
        s_t, D1, w1, Dprev = _sequence1(state.s_tilde[0], W_rec, Fp[:, 0], NU1[:, 0], JS[:, 0], alpha, eps, q[0], c[0],
                                        U[0].tolist(), H[0].flatten().tolist(), rho1[:, 0].tolist(), nd[:, 0].tolist())
        s_t, D, w = s_t[None], [D1], [w1]
    else:
        s_t, JS, D, w, Dprev = _sequence(state.s_tilde, W_rec.t(), Fp, NU1, alpha, eps, q, c, U.tolist(), H.tolist(),
                                         rho1.t().tolist(), nd.t().tolist())
        JS = torch.stack(JS)
    Dp = torch.tensor(Dprev, dtype=torch.float64).reshape(L, BK)  # D_{s-1}

    # the window's estimate and the pair at its end
    kap = (torch.linalg.vecdot(rep(R), JS).double().cpu() * Dp).t()  # k_s D_{s-1}, k_s = dl_s/ds_{s-1} . s~_{s-1}
    tails = kap.flip(1).cumsum(1).flip(1)  # sum_{s>=r} k_s D_{s-1}  [BK, L]
    tails = torch.cat([tails[:, 1:], torch.zeros(BK, 1, dtype=torch.float64)], 1)  # sum_{s>r}
    wt = torch.tensor(w, dtype=torch.float64)  # [BK, L]
    v = (wt * tails / BK).t()  # [L, BK]
    gam = [ci * float(ti) / BK for ci, ti in zip(c, kap.sum(1))]
    cA = (wt * torch.tensor(D, dtype=torch.float64)[:, None]).t()  # [L, BK]
    dt, dev = A.dtype, A.device
    left = v.to(dtype=dt, device=dev)[..., None] * A  # [L, BK, n]
    if K > 1:
        left = left.reshape(L, B, K, n).sum(2)
    left.add_(R.mul_(F), alpha=1.0 / B)  # + q_s / B with q_s = alpha f'_s * r_s
    Zf = Z.reshape(L * B, -1)
    Ac = cA.to(dtype=dt, device=dev)[..., None] * A
    if BK == 1:
        G = torch.addmm(Theta[0], left.reshape(L, n).t(), Zf, beta=gam[0])
        new_theta = torch.addmm(Theta[0], Ac.reshape(L, n).t(), Zf, beta=c[0] * D[0])[None]
    else:
        G = torch.addmm(torch.einsum("p,pnm->nm", torch.tensor(gam, dtype=dt, device=dev), Theta),
                        left.reshape(L * B, n).t(), Zf)
        cL = torch.tensor([ci * Di for ci, Di in zip(c, D)], dtype=dt, device=dev)
        new_theta = torch.baddbmm(Theta * cL[:, None, None], Ac.permute(1, 2, 0), Zt)
    Hn = torch.cat([Hp[1:], state.net.h[None]]) if L > 1 else state.net.h[None]  # h_s [L, B, n]
    Ef = E.reshape(L * B, -1)
    g_out, g_bout = Ef.t() @ Hn.reshape(L * B, n) / B, Ef.sum(0) / B
    if check and not bool(torch.isfinite(G.sum() + g_out.sum() + g_bout.sum())):  # one cheap pass, then the details
        grad = {"W_in": G[:, :n_in], "W_rec": G[:, n_in:n_in + n], "b": G[:, -1], "W_out": g_out, "b_out": g_bout}
        _check_finite(rule, state.t - L, grad, (Z, E, Hn), (kap.t(), rho1, nd))
    # views of G (the caller sums them; nothing else holds G)
    grad = {"W_in": G[:, :n_in], "W_rec": G[:, n_in:n_in + n], "b": G[:, -1], "W_out": g_out, "b_out": g_bout}
    theta_sq = torch.linalg.vector_norm(new_theta.flatten(1), dim=1).double().square_()
    new = state._replace(s_tilde=s_t, theta_mat=new_theta, theta_sq=theta_sq, pending=_EMPTY)
    return new, {kk: grad[kk] for kk in params}


def _sequence1(s_t, W_rec, Fs, N1s, JS, alpha, eps, q, c, U, H, rho1, nd):
    """:func:`_sequence` for one pair: 1-d vectors, plain floats, ``J s~_{s-1}`` written into ``JS`` [L, n]
    (few Python objects: no garbage collection is triggered here)."""
    L = Fs.shape[0]
    D, w, Dprev = 1.0, [0.0] * L, [0.0] * L
    for s in range(L):
        Ws = torch.mv(W_rec, s_t)
        if alpha == 1.0:
            Js = torch.mul(Ws, Fs[s], out=JS[s])
        else:
            Js = torch.addcmul(s_t * (1.0 - alpha), Fs[s], Ws, out=JS[s])
        nJ = math.sqrt(float(torch.dot(Js, Js)))
        if q == 0.0 and c == 0.0 and not any(w[:s]):
            D = 1.0  # theta~_{s-1} = 0 exactly: restart its scale (D stays bounded)
        r0 = math.sqrt(math.sqrt(q) / (nJ + eps)) + eps
        r1 = rho1[s]
        cross = c * U[s] + sum(map(operator.mul, w[:s], H[s * L:s * L + s]))  # a_s^T theta~_{s-1} z_s / D_{s-1}
        q = max(q / (r0 * r0) + 2.0 * D * cross / (r0 * r1) + (nd[s] / r1) ** 2, 0.0)
        Dprev[s] = D
        D /= r0
        w[s] = 1.0 / (r1 * D) if nd[s] > 0 else 0.0
        s_t = torch.add(N1s[s], Js, alpha=r0)
    return s_t, D, w, Dprev


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
