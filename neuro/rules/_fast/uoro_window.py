"""The window arithmetic of UORO's rate fast path (:mod:`neuro.rules._fast.uoro`, whose docstring has the
equations): a window's factors from its held steps and the pair at its start (:func:`prepare`), and the
window's estimate and the pair at its end from its sequential part (:func:`complete`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params
from neuro.rules._common import random_signs

from .uoro_sequence import add_shares

if TYPE_CHECKING:
    from neuro.rules.uoro import UORO

    from .uoro import RateUOROState

__all__ = ["Factors", "check_finite", "complete", "prepare"]


class Factors(NamedTuple):
    """A window's factors, computed once its steps are known (:func:`prepare`). [L, BK, .] per pair, [L, B, .]
    per sequence; the sequential part's scalars in float64 on the CPU."""

    L: int
    c: tuple  # [BK] Theta's coefficient (0 where Theta = 0)
    q: tuple  # [BK] ||theta~||^2 at the window's start
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
    kernel: tuple  # (FNR [3, L, n], S64 float64) for uoro_sequence.seq_step (one pair); () where it is not used


def idle_factors(n: int, m: int, n_out: int, L: int, dtype: torch.dtype) -> Factors:
    """Factors of the shapes of a window of ``L`` steps of one pair on the CPU, all zero (views of one buffer): the
    arrays of an idle flight."""
    sizes = {"v": L * n, "Z": L * m, "U": L, "H": L * L, "E": L * n_out, "FNR": 3 * L * n}
    buf = torch.zeros(max(sizes.values()), dtype=dtype)
    v = buf[:L * n].view(L, 1, n)
    s64 = torch.zeros(3 * L + 3 + L * L, dtype=torch.float64)
    return Factors(L=L, c=(0.0,), q=(0.0,), Fp=v, NU1=v, R=v, RF=v, A=v, Z=buf[:L * m].view(L, 1, m),
                   U=buf[:L].view(1, L), H=buf[:L * L].view(1, L, L), rho1=buf[:L].view(L, 1), nd=buf[:L].view(L, 1),
                   E=buf[:L * n_out].view(L, 1, n_out), Hn=v, kernel=(buf[:3 * L * n].view(3, L, n), s64))


def _dl_dy(loss: str, Y_hat: Tensor, Y: Tensor) -> Tensor:
    """``dl/dy_hat`` (unmasked), elementwise over any leading dimensions, as a new tensor."""
    if loss == "mse":
        return Y_hat - Y
    if loss == "ce":
        return torch.softmax(Y_hat, dim=-1).mul_(Y.sum(-1, keepdim=True)).sub_(Y)
    return torch.ones_like(Y_hat)  # "value"


def prepare(rule: UORO, params: Params, state: RateUOROState, kernel: bool = False) -> Factors:
    """The factors of the window of ``state``'s held steps and the pair at its start (draws its signs)."""
    net, eps, K = rule.net, rule.eps, rule.samples
    n, n_in, n_out = net.n_hidden, net.n_in, net.n_out
    steps = state.rows[:state.held]  # read only: another state may share the rows
    L, B = steps.shape[0], steps.shape[1]
    cols = (n_in, n_out, n, n, n_out, 1)
    X, Y, Hp, TH, Yh, M = torch.split(steps, cols, dim=-1)  # [L, B, .]
    E = _dl_dy(rule.loss or "mse", Yh, Y).mul_(M)  # e_s = dl_s/dy_s, masked
    F = 1.0 - TH.square()  # f'_s
    if net.alpha != 1.0:
        F.mul_(net.alpha)
    R = E @ params["W_out"]  # r_s = W_out^T e_s  [L, B, n]
    Z = torch.cat([X, Hp, torch.ones_like(Hp[..., :1])], -1)  # z_s [L, B, m]
    rep = (lambda v: v.repeat_interleave(K, 1)) if K > 1 else (lambda v: v)
    Fp = rep(F)
    NU = random_signs(state.gen, (L, B * K, n), F)  # the signs of L one-step draws, in order
    A = Fp * NU  # a_s [L, BK, n]
    At, Zt = A.transpose(0, 1), rep(Z).transpose(0, 1)  # [BK, L, .]
    H = (At @ At.transpose(1, 2)).mul_(Zt @ Zt.transpose(1, 2))  # [BK, L, L]
    nd = H.diagonal(dim1=1, dim2=2).sqrt().t()  # ||delta_s|| = ||a_s|| ||z_s||  [L, BK]
    rho1 = nd.div(math.sqrt(n) + eps).sqrt_().add_(eps)
    NU1 = NU.mul_(rho1[..., None])  # rho_1 nu_s
    U = (At @ state.theta_mat).mul_(Zt).sum(-1)  # a_s^T Theta z_s  [BK, L]
    q = tuple(state.theta_sq.tolist())
    Hn = torch.cat([Hp[1:], state.net.h[None]]) if L > 1 else state.net.h[None]  # h_s [L, B, n]
    arrays = ()
    if kernel:
        consts = torch.tensor([1.0 - net.alpha, eps, 1.0 if q[0] > 0 else 0.0], dtype=torch.float64)
        arrays = (torch.stack([Fp[:, 0], NU1[:, 0], R[:, 0]]),
                  torch.cat([U[0].double(), rho1[:, 0].double(), nd[:, 0].double(), consts, H[0].double().reshape(-1)]))
    return Factors(L=L, c=tuple(1.0 if qi > 0 else 0.0 for qi in q), q=q, Fp=Fp, NU1=NU1, R=R, RF=R * F, A=A, Z=Z,
                   U=U, H=H, rho1=rho1, nd=nd, E=E, Hn=Hn, kernel=arrays)


def complete(rule: UORO, params: Params, state: RateUOROState, p: Factors, s_t: Tensor, kap: Tensor, D: list,
              wt: Tensor, check: bool):
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
        sq = add_shares(G.view(-1).numpy(), new_theta.view(-1).numpy(), Theta.reshape(-1).numpy(), gam[0],
                             c[0] * D[0])
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
    # views of G (the caller sums them; nothing else holds G)
    grad = {"W_in": G[:, :n_in], "W_rec": G[:, n_in:n_in + n], "b": G[:, -1], "W_out": g_out, "b_out": g_bout}
    if check and not bool(torch.isfinite(G.sum() + g_out.sum() + g_bout.sum())):  # one cheap pass, then the details
        check_finite(rule, state.t - state.held - L, grad, (p.Z, p.E, p.Hn), (kap.t(), p.rho1, p.nd))
    if theta_sq is None:
        theta_sq = torch.linalg.vector_norm(new_theta.flatten(1), dim=1).double().square_()
    new = state._replace(s_tilde=s_t, theta_mat=new_theta, theta_sq=theta_sq)
    return new, {kk: grad[kk] for kk in params}


def check_finite(rule: UORO, t0: int, grad: Params, per_step: tuple, scalars: tuple) -> None:
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
