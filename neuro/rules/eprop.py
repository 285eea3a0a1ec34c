"""e-prop: eligibility propagation (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020,
"A solution to the learning dilemma for recurrent networks of spiking neurons", Nature Communications
11:3625; public code IGITUGraz/eligibility_propagation).

The gradient is factorised into a learning signal ``L^t_j`` and an eligibility trace ``e^t_ji`` (Results,
"Mathematical basis for e-prop"):

    dE/dW_ji ~ sum_t L^t_j  bar e^t_ji

With ``h^t_j`` the hidden state of neuron ``j`` (here: its per-neuron state fields, ``K`` of them) and the
recurrent input ``z^{t-1}`` an explicit argument of its update, the eligibility vector and trace are
(Methods, "eligibility traces")::

    eps^t_ji = (dh^t_j / dh^{t-1}_j) eps^{t-1}_ji + dh^t_j / dW_ji          [K]
    e^t_ji   = (dz^t_j / dh^t_j) . eps^t_ji

with partial derivatives that hold ``z^{t-1}`` fixed: only the neuron-local (per-neuron block) part of
the recurrent Jacobian is kept. Here ``z^t_j`` is the spike computed inside the step from ``h^{t-1}_j``
and the current, so ``e^t = (dz^t/dh^{t-1}) eps^{t-1} + (dz^t/dW)``, the same quantity. For ALIF the
threshold adaptation ``a`` is one of the fields, which gives the paper's adaptive eligibility component
``eps^a`` automatically. Every derivative is taken from the network's own ``neuron`` function (one reverse
pass per output field of the element-wise function, see ``_local``), so the model's reset
(``detach_reset``), refractory period and surrogate (the pseudo-derivative ``psi``) are those of its graph.

``current`` is linear: ``I_t = W_in x_t + W_rec z_{t-1}`` (+ ``b`` for rate nets), so ``dh_j/dW_ji =
(dh_j/dI_j) pre_i`` with ``pre = [x_t, z_{t-1}]``. Per-neuron vectors (``b``) get ``eps^b`` the same way.

Learning signal (symmetric, random and adaptive e-prop of the paper)::

    L^t_j = sum_k B_jk (dE/dy^t_k)           B = W_out^T (symmetric), fixed random (random),
                                               or random and adapted (adaptive, see below)

Readout with leaky dynamics ``y^t = kappa y^{t-1} + W_out z^t + b_out`` (spiking models): the eligibility
trace is filtered by the readout's own filter (the paper's ``F_kappa``, Methods)::

    bar e^t = kappa bar e^{t-1} + e^t

and ``W_out``, ``b_out`` get their exact gradient ``(dE/dy^t) bar z^t``, ``bar z^t = kappa bar z^{t-1} +
z^t``. ``kappa`` is read from the readout (``d y^t / d y^{t-1}``); a rate readout has none (``kappa = 0``).

Adaptive feedback: ``B`` starts random and is then adapted with the readout's own update plus weight
decay (the Kolen & Pollack 1994 scheme, used for mirrored feedback by Akrout et al. 2019; the paper's
adaptive e-prop adapts ``B`` this way, its exact schedule is not reproduced here)::

    B <- B - feedback_lr (g_{W_out}^T + feedback_decay B)

(with plain SGD of the same rate and decay on ``W_out``, ``B - W_out^T`` decays to 0).

Fast path (``fast``, automatic where it applies): when the neuron-local Jacobian (restricted to the
fields that are read) and ``dh/dI`` are the same for every neuron (LIF with ``detach_reset=True`` and no
refractory period), ``eps^t_ji`` does not depend on ``j``: it is a presynaptic trace ``E^t_i`` [K, n_pre],
and ``e^t_ji = sum_r Z^t_jr P^t_ri`` with ``Z = [dz/dh, dz/dI]`` and ``P = [E^{t-1}, pre^t]``. Over a window
of ``window`` steps ``t0..t1``, ``sum_t L^t bar e^t`` is accumulated as one matrix product::

    G = (sum_t kappa^{t-t0+1} L^t) . bar e^{t0-1}  +  [Lb_t Z_t]_(t, r) @ [P_t]_(t, r)
    Lb_t = sum_{t<=s<=t1} kappa^{s-t} L^s      (the learning signal filtered backward inside the window)

and ``bar e`` is carried to the next window with one more batched product; the estimate is emitted at
each window's end and in ``finish``.

Shapes: ``eps`` [B, n, K, n_in + n], ``bar e`` [B, n, n_in + n]; the feedback is stored as ``B^T``
[n_out, n] (like ``W_out``), so ``L^t = (dE/dy^t) B^T``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import jvp

from neuro.contract import AbstractNetwork, Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput

__all__ = ["EProp", "EPropState"]

FEEDBACKS = ("symmetric", "random", "adaptive")
_SYNAPSES = ("W_in", "W_rec")
_READOUT = ("W_out", "b_out")


class EPropState(NamedTuple):
    net: NamedTuple
    z: Tensor  # [B, n] z_{t-1}: the presynaptic activity of W_rec
    eps: Tensor  # [B, n, K, n_pre] eligibility vectors (general path); [B, R, n_pre] presynaptic traces E (fast)
    eps_b: Tensor  # [B, n, K, V] eligibility vectors of the per-neuron vectors (b)
    ebar: Tensor  # [B, n, n_pre] filtered eligibility traces bar e (fast path: at the window's start)
    ebar_b: Tensor  # [B, n, V]
    zbar: Tensor  # [B, n] filtered hidden output (readout gradient)
    bbar: Tensor  # [] filtered 1 (b_out gradient)
    B: Tensor | None  # [n_out, n] feedback matrix (None: symmetric, W_out itself)
    buf: tuple | None  # fast path: (Z [W, B, n, R+1], P [W, B, R+1, n_pre], L [W, B, n], acc dict)
    t: int  # fast path: steps in the current window


class _Layout(NamedTuple):
    fields: tuple[str, ...]  # the state's fields
    hidden: tuple[int, ...]  # indices of the per-neuron fields that `neuron` updates (the K of eps)
    readout: int | None  # index of the readout's state field (y), None for a memoryless readout
    kappa: float  # d y_t / d y_{t-1}
    vectors: tuple[str, ...]  # per-neuron vector parameters (b)
    read: tuple[int, ...]  # positions (in hidden) that the neuron reads (fast path)
    factorises: bool  # the fast path applies


def _fail(net: AbstractNetwork, why: str) -> ValueError:
    return ValueError(f"rule 'eprop' cannot run on model {net.name!r}: {why}; it supports {', '.join(EProp.supports)}")


class _Local(NamedTuple):
    """The element-wise derivatives of one step (hidden fields f, g; per-neuron vectors v)."""

    state: NamedTuple  # s_t after `neuron` (before the readout)
    z: Tensor  # [B, n] z_t
    i: Tensor  # [B, n] the current I_t
    D: Tensor  # [B, n, K(g), K(f)] ds_t/ds_{t-1}, the current held fixed
    Z: Tensor  # [B, n, K] dz_t/ds_{t-1}
    c: Tensor  # [B, n, K] ds_t/dI_t
    zi: Tensor  # [B, n] dz_t/dI_t
    Sb: Tensor  # [B, n, K, V] ds_t/db (through the current and the neuron)
    zb: Tensor  # [B, n, V] dz_t/db


def _local(net: AbstractNetwork, p: Params, s: NamedTuple, x: Tensor, hidden: tuple[int, ...],
           vectors: tuple[str, ...]) -> _Local:
    """Every derivative of the element-wise ``neuron`` (and of ``current`` in a per-neuron vector). As
    ``neuron`` couples no two units or samples, ``d(sum of output g)/d(input f)`` is the diagonal
    ``d g_j / d f_j``: the batch is repeated once per output (K + 1 copies) and one reverse pass of
    ``sum_g sum(output g of copy g)`` gives them all. Per-neuron vectors enter as [B, n]."""
    Bsz, n = x.shape[0], net.n_hidden
    K, V, C = len(hidden), len(vectors), len(hidden) + 1
    with torch.enable_grad():
        bl = {k: p[k].detach().expand(Bsz, n).clone().requires_grad_(True) for k in vectors}
        i0 = net.current({**p, **bl}, type(s)(*(f.detach() for f in s)), x)
        di_db = _grads(i0, list(bl.values()))  # [B, n] each: dI/db (1 for a bias in the current, else 0)
        rep = [f.detach().repeat(C, *([1] * (f.dim() - 1))).requires_grad_(k in hidden) for k, f in enumerate(s)]
        il = i0.detach().repeat(C, 1).requires_grad_(True)
        br = {k: v.detach().repeat(C, 1).requires_grad_(True) for k, v in bl.items()}
        s_new, z = net.neuron({**p, **br}, type(s)(*rep), il)
        outs = [s_new[g] for g in hidden] + [z]
        ins = [rep[k] for k in hidden] + [il] + list(br.values())
        picked = [o[c * Bsz:(c + 1) * Bsz].sum() for c, o in enumerate(outs) if o.requires_grad]
        cols = _grads(torch.stack(picked).sum(), ins) if picked else [torch.zeros_like(t) for t in ins]
    # cols[f] [C B, n]: block c holds d(output c)/d(input f)
    J = torch.stack([g.unflatten(0, (C, Bsz)) for g in cols], -1).permute(1, 2, 0, 3)  # [B, n, C (out), K+1+V (in)]
    D, Z, c, zi = J[:, :, :K, :K], J[:, :, K, :K], J[:, :, :K, K], J[:, :, K, K]
    dib = torch.stack(di_db, -1) if V else J.new_zeros(Bsz, n, 0)  # [B, n, V]
    Sb = J[:, :, :K, K + 1:] + c[..., None] * dib[:, :, None, :]
    zb = J[:, :, K, K + 1:] + zi[..., None] * dib
    state = type(s)(*(f[:Bsz].detach() for f in s_new))
    return _Local(state, z[:Bsz].detach(), i0.detach(), D, Z, c, zi, Sb, zb)


def _grads(out: Tensor, ins: list[Tensor]) -> list[Tensor]:
    """``d(sum out)/d(each input)``, zeros where an input is not reached."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in ins]
    gs = torch.autograd.grad(out, ins, torch.ones_like(out), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, ins)]


@functools.lru_cache(maxsize=64)
def _layout(net: AbstractNetwork) -> _Layout:
    """The roles of the state fields and parameters, found by running one step (float64, seed 0)."""
    shapes = net.param_shapes()
    n = net.n_hidden
    missing = [k for k in _SYNAPSES + _READOUT if k not in shapes]
    if missing:
        raise _fail(net, f"its parameters {sorted(shapes)} lack {missing}")
    vectors = tuple(k for k in sorted(shapes) if k not in _SYNAPSES + _READOUT)
    bad = [k for k in vectors if shapes[k] != (n,)]
    if bad:
        raise _fail(net, f"parameters {bad} are neither synapses nor per-neuron vectors of shape ({n},)")
    p = net.init_params(0, torch.float64)
    s0 = net.init_state(p, 1)
    x = torch.zeros(1, net.n_in, dtype=torch.float64)
    s1, z = net.neuron(p, s0, net.current(p, s0, x))
    s2, y = net.readout(p, s1, z)
    fields = s0._fields
    ro = [k for k in range(len(fields)) if s2[k] is not s1[k]]
    hidden = tuple(k for k in range(len(fields)) if k not in ro and s1[k] is not s0[k] and tuple(s0[k].shape) == (1, n))
    readout, kappa = None, 0.0
    if ro:
        if len(ro) != 1 or s2[ro[0]] is not y:
            raise _fail(net, f"its readout updates the fields {[fields[k] for k in ro]}; e-prop needs a leaky "
                             "readout whose one state field is its output y")
        readout = ro[0]
        tan = tuple(torch.ones_like(f) if k == readout else torch.zeros_like(f) for k, f in enumerate(s1))
        _, (_, dy) = jvp(lambda s_: net.readout(p, type(s1)(*s_), z), (tuple(s1),), (tan,))
        kappa = float(dy.flatten()[0])
        if not torch.allclose(dy, torch.full_like(dy, kappa)):
            raise _fail(net, "its readout's decay dy_t/dy_{t-1} is not one scalar")
    # probe the neuron-local Jacobian at random states: which fields are read, and is it the same for every neuron
    g = torch.Generator().manual_seed(0)
    draws = 16
    scale = torch.tensor([1.0, 3.0], dtype=torch.float64).repeat(draws)[:draws, None]
    st = type(s0)(*(scale.reshape(-1, *[1] * (f.dim() - 1)) * torch.randn(draws, *f.shape[1:], generator=g,
                                                                           dtype=torch.float64) for f in s0))
    xr = torch.randn(draws, net.n_in, generator=g, dtype=torch.float64)
    loc = _local(net, p, st, xr, hidden, vectors)
    D, Z, c = loc.D, loc.Z, loc.c
    used = ((D != 0).any(0).any(0).any(0) | (Z != 0).any(0).any(0))  # [K] columns read
    read = tuple(int(k) for k in torch.nonzero(used).flatten())
    r = list(read)
    Dr, cr = D[:, :, r][:, :, :, r], c[:, :, r]
    factorises = bool((Dr == Dr[:, :1]).all() and (cr == cr[:, :1]).all())
    return _Layout(fields, hidden, readout, kappa, vectors, read, factorises)


@dataclasses.dataclass(frozen=True)
class EProp(AbstractRule):
    """e-prop (module docstring).

    ``feedback``: ``"symmetric"`` (B = W_out^T), ``"random"`` (fixed, drawn from ``init``'s seed, N(0, 1/n)),
    ``"adaptive"`` (random, then ``B <- B - feedback_lr (g_Wout^T + feedback_decay B)``).
    ``adaptive_eligibility``: ``None`` keeps every component (ALIF's threshold adaptation included);
    ``False`` drops the adaptive component ``eps^a`` (ALIF only). ``fast``: the factorised windowed path
    (``None``: where it applies; ``True``: required, an error where it does not; ``False``: never).
    ``window``: steps per accumulation window of the fast path. The rule is declared deterministic (its
    default feedback is); with random or adaptive feedback the estimate depends on ``init``'s seed.
    """

    feedback: str = "symmetric"
    feedback_lr: float = 1e-3
    feedback_decay: float = 1e-2
    adaptive_eligibility: bool | None = None
    fast: bool | None = None
    window: int = 32

    name = "eprop"
    needs = Needs.LOCAL
    supports = ("rate", "lif", "alif")
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_lr", self.feedback_lr, allow_zero=True)
        check_positive("feedback_decay", self.feedback_decay, allow_zero=True)
        check_positive("window", self.window, integer=True)
        for f in ("adaptive_eligibility", "fast"):
            if getattr(self, f) not in (None, True, False):
                raise ValueError(f"{f}={getattr(self, f)!r} is invalid: expected None, True or False")
        lay = _layout(self.net)
        if self.adaptive_eligibility is not None and "a" not in lay.fields:
            raise ValueError(f"rule 'eprop' option adaptive_eligibility={self.adaptive_eligibility!r} applies to "
                             f"neurons with threshold adaptation (model 'alif'); model {self.net.name!r} has none "
                             f"(leave it None; eprop supports {', '.join(self.supports)})")
        if self.fast and not self.uses_fast_path:
            raise ValueError(f"rule 'eprop' option fast=True needs an eligibility trace that factorises (LIF with "
                             f"detach_reset=True and no refractory period); model {self.net!r} does not")

    @property
    def uses_fast_path(self) -> bool:
        lay = _layout(self.net)
        return self.fast is not False and lay.factorises and self.adaptive_eligibility is not False

    def _adaptive_row(self) -> int | None:
        lay = _layout(self.net)
        if self.adaptive_eligibility is False:
            return lay.hidden.index(lay.fields.index("a"))
        return None

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> EPropState:
        check_positive("batch", batch, integer=True)
        p = {k: v.detach() for k, v in params.items()}
        lay = _layout(self.net)
        net = self.net
        n, K, V = net.n_hidden, len(lay.hidden), len(lay.vectors)
        s = net.init_state(p, batch)
        x0 = torch.zeros(batch, net.n_in, dtype=p["W_rec"].dtype, device=p["W_rec"].device)
        eye = torch.eye(n, dtype=p["W_rec"].dtype, device=p["W_rec"].device)  # W_rec-tangent I: d(W_rec z) = z
        _, z = jvp(lambda W: net.current({**p, "W_rec": W}, s, x0), (p["W_rec"],), (eye,))
        n_pre = net.n_in + n
        new = functools.partial(torch.zeros, dtype=p["W_rec"].dtype, device=p["W_rec"].device)
        B = None
        if self.feedback != "symmetric":
            g = torch.Generator().manual_seed(seed)
            B = (torch.randn(net.n_out, n, generator=g, dtype=torch.float64) / math.sqrt(n)).to(p["W_out"])
        buf, R = None, len(lay.read)
        if self.uses_fast_path:
            W = self.window
            eps = new(batch, R, n_pre)
            buf = (new(W, batch, n, R + 1), new(W, batch, R + 1, n_pre), new(W, batch, n),
                   {k: torch.zeros_like(v) for k, v in p.items() if k not in _SYNAPSES})
        else:
            eps = new(batch, n, K, n_pre)
        return EPropState(net=s, z=z, eps=eps, eps_b=new(batch, n, K, V), ebar=new(batch, n, n_pre),
                          ebar_b=new(batch, n, V), zbar=new(batch, n), bbar=new(()), B=B, buf=buf, t=0)

    def step(self, params: Params, state: EPropState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, lay = self.net, _layout(self.net)
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        s = state.net
        kappa = lay.kappa
        pre = torch.cat([x, state.z], dim=1)  # [B, n_pre]
        loc = _local(net, p, s, x, lay.hidden, lay.vectors)
        s_new, z, D, Z, c, zi, dS_b, dz_b = loc.state, loc.z, loc.D, loc.Z, loc.c, loc.zi, loc.Sb, loc.zb
        a = self._adaptive_row()
        if a is not None:  # drop the adaptive component: eps^a stays 0
            D, c, dS_b = D.clone(), c.clone(), dS_b.clone()
            D[:, :, a], c[:, :, a], dS_b[:, :, a] = 0.0, 0.0, 0.0
        s_new, y_hat = net.readout(p, s_new, z)
        fn = self.loss_fn
        with torch.enable_grad():
            yl = y_hat.detach().requires_grad_(True)
            loss = fn(yl, y, mask)
            err = torch.autograd.grad(loss, yl)[0]  # dE/dy_t [B, n_out] (masked, / batch)
        y_hat, loss = y_hat.detach(), loss.detach()
        Bmat = p["W_out"] if state.B is None else state.B
        L = err @ Bmat  # learning signal [B, n]
        # per-neuron vectors (b): eps^b, e^b, bar e^b
        e_b = torch.einsum("bjf,bjfv->bjv", Z, state.eps_b) + dz_b
        eps_b = torch.einsum("bjgf,bjfv->bjgv", D, state.eps_b) + dS_b
        ebar_b = kappa * state.ebar_b + e_b
        zbar = kappa * state.zbar + z
        bbar = kappa * state.bbar + 1.0
        g = {"W_out": err.T @ zbar, "b_out": err.sum(0) * bbar}
        gb = torch.einsum("bj,bjv->jv", L, ebar_b)
        for v, key in enumerate(lay.vectors):
            g[key] = gb[:, v]
        B_new = state.B
        if self.feedback == "adaptive":
            B_new = state.B - self.feedback_lr * (g["W_out"] + self.feedback_decay * state.B)
        common = dict(net=s_new, z=z, eps_b=eps_b, ebar_b=ebar_b, zbar=zbar, bbar=bbar, B=B_new)
        if state.buf is not None:
            return self._fast_step(p, state, common, g, pre, D, Z, c, zi, L, y_hat, loss)
        # general path: eps^t = D eps^{t-1} + c pre,  e^t = Z eps^{t-1} + zi pre,  bar e^t = kappa bar e^{t-1} + e^t
        e = torch.einsum("bjf,bjfk->bjk", Z, state.eps) + zi[:, :, None] * pre[:, None, :]
        eps = torch.einsum("bjgf,bjfk->bjgk", D, state.eps) + c[:, :, :, None] * pre[:, None, None, :]
        ebar = kappa * state.ebar + e
        gW = torch.einsum("bj,bjk->jk", L, ebar)
        g["W_in"], g["W_rec"] = gW[:, :net.n_in], gW[:, net.n_in:]
        new = EPropState(eps=eps, ebar=ebar, buf=None, t=0, **common)
        return StepOutput(new, y_hat.detach(), loss.detach(), {k: g[k] for k in params})

    # -- fast path -----------------------------------------------------------------------------------
    def _fast_step(self, p, state, common, g, pre, D, Z, c, zi, L, y_hat, loss) -> StepOutput:
        lay = _layout(self.net)
        r = list(lay.read)
        K = len(lay.hidden)
        other = [k for k in range(K) if k not in r]
        Dr, cr = D[:, :, r][:, :, :, r], c[:, :, r]
        if ((Dr != Dr[:, :1]).any() or (cr != cr[:, :1]).any() or (other and ((D[..., other] != 0).any()
                                                                              or (Z[..., other] != 0).any()))):
            raise RuntimeError(f"rule 'eprop' (fast path) on model {self.net.name!r}: the neuron-local Jacobian "
                               "differs between neurons at this step; use fast=False")
        Zbuf, Pbuf, Lbuf = (b.clone() for b in state.buf[:3])  # written out of place: a state is a snapshot
        acc = state.buf[3]
        t = state.t
        Zbuf[t, :, :, :-1] = Z[:, :, r]
        Zbuf[t, :, :, -1] = zi
        Pbuf[t, :, :-1] = state.eps
        Pbuf[t, :, -1] = pre
        Lbuf[t] = L
        acc = {k: v + g[k] for k, v in acc.items()}
        E = torch.einsum("bgf,bfk->bgk", Dr[:, 0], state.eps) + cr[:, 0, :, None] * pre[:, None, :]
        new = EPropState(eps=E, ebar=state.ebar, buf=(Zbuf, Pbuf, Lbuf, acc), t=t + 1, **common)
        grad = None
        if t + 1 >= self.window:
            new, grad = self._flush(p, new)
        return StepOutput(new, y_hat.detach(), loss.detach(), grad)

    def _flush(self, p: Params, state: EPropState) -> tuple[EPropState, Params | None]:
        if state.t == 0:
            return state, None
        net, kappa = self.net, _layout(self.net).kappa
        Zbuf, Pbuf, Lbuf, acc = state.buf
        w = state.t
        Zw, Pw, Lw = Zbuf[:w], Pbuf[:w], Lbuf[:w]
        ts = torch.arange(w, dtype=Lw.dtype, device=Lw.device)
        lag = ts[None, :] - ts[:, None]  # [t', s]: s - t'
        F = torch.where(lag >= 0, torch.pow(torch.full_like(lag, kappa), lag.clamp(min=0)), torch.zeros_like(lag))
        Lb = torch.einsum("ts,sbj->tbj", F, Lw)  # backward-filtered learning signal in the window
        Lc = torch.einsum("s,sbj->bj", torch.pow(torch.full_like(ts, kappa), ts + 1), Lw)
        G = torch.einsum("bj,bjk->jk", Lc, state.ebar)
        A = (Lb[..., None] * Zw).permute(2, 0, 1, 3).reshape(net.n_hidden, -1)  # [n, w B (R+1)]
        G = G + A @ Pw.reshape(-1, Pw.shape[-1])
        # carry bar e to the window's end: kappa^w bar e + sum_t' kappa^{t1 - t'} e_t'
        fwd = torch.pow(torch.full_like(ts, kappa), (w - 1) - ts)  # [w]
        Zf = (fwd[:, None, None, None] * Zw).permute(1, 2, 0, 3).reshape(Zw.shape[1], net.n_hidden, -1)
        ebar = kappa ** w * state.ebar + torch.bmm(Zf, Pw.permute(1, 0, 2, 3).reshape(Pw.shape[1], -1, Pw.shape[-1]))
        grad = {k: (acc[k] if k in acc else None) for k in p}
        grad["W_in"], grad["W_rec"] = G[:, :net.n_in].contiguous(), G[:, net.n_in:].contiguous()
        buf = (Zbuf, Pbuf, Lbuf, {k: torch.zeros_like(v) for k, v in acc.items()})
        return state._replace(ebar=ebar, t=0, buf=buf), grad

    def finish(self, params: Params, state: EPropState) -> tuple[EPropState, Params | None]:
        if state.buf is None:
            return state, None
        return self._flush({k: v.detach() for k, v in params.items()}, state)
