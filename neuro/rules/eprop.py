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
``eps^a`` automatically. The per-step path takes every derivative from the network's own ``neuron`` function
(one reverse pass per step for all its fields and the loss, see ``_local``), so the model's reset
(``detach_reset``), refractory period and surrogate (the pseudo-derivative ``psi``) are those of its graph;
the windowed path takes LIF's and ALIF's in closed form (``_closed_local``, equal to the reverse pass in
the tests) and every other model's from the same reverse pass.

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

Windowed path (``fast``, the default): the traces are per-neuron LINEAR filters of the presynaptic
vectors, so a window of ``W`` steps is computed in bulk, for any neuron-local Jacobian (LIF with any reset
or refractory period, ALIF, rate). Per neuron ``j`` with read fields ``R`` (the fields whose eligibility
vectors reach ``z``, directly or through other fields: for LIF ``v, i``; ALIF adds ``a``; the spike field
and the refractory counter never do), ``D_t = dh^t/dh^{t-1}`` [R, R], ``c_t = dh^t/dI^t`` [R],
``Z_t = dz^t/dh^{t-1}`` [R], ``zi_t = dz^t/dI^t``, ``pre_t = [x_t, z^{t-1}]``, learning signal ``L_t``;
the per-step recursions are::

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
ONE matrix product [n (R+2), W] @ [W, n_pre] per sample. A per-neuron vector ``b`` is the same with
``pre = 1`` and ``c = ds/db`` (the neuron's, plus ``c dI/db`` where ``b`` is in the current). A field whose
row of ``D`` and ``c`` is one constant for every neuron and step (LIF's and ALIF's synaptic current ``i``:
``(ii, iI)`` of ``subthreshold``) has ``eps^i_ji = E^i_i`` for every ``j``: it is carried as one
presynaptic trace [n_pre], its ``Psi`` row taken from neuron 0, and it enters the per-neuron rows as one
more column of the matrix product (``[..., Tm^i] @ [pre; E^i_0]``), so the product has ``R + 2 - S`` rows
(3 for LIF: ``bar e``, ``eps^v``, the gradient). Cost per step: O(n R^2) element-wise work plus
``R + 2 - S`` multiply-adds per synapse in the window's product; per window, one pass over the carried
``[bar e; eps]`` [B, n, 1 + R - S, n_pre] and a loop of ``W`` small [R+2, R] recursions. The estimate (mean over the batch: ``L`` carries the 1/B of the
loss; each sample has its own traces) is emitted at each window's end, in ``flush`` and in ``finish``;
the readout's ``(dE/dy^t) bar z^t`` is summed there too. The steps of a window are written into buffers
of ``window`` steps (memory bounded in T); a step from an older state (a branch) copies its own entries
first, so a state stays a snapshot. ``fast=False``: the per-step path above (the reference).

Shapes: ``eps`` [B, n, K, n_in + n], ``bar e`` [B, n, n_in + n] (windowed: ``[bar e; eps]`` on the read
fields that are not shared, [B, n, 1 + R - S, n_in + n], at the window's start); the feedback is stored as ``B^T``
[n_out, n] (like ``W_out``), so ``L^t = (dE/dy^t) B^T``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import jvp

from neuro import losses
from neuro.contract import AbstractNetwork, Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput
from ._spiking import closed_form, fire

__all__ = ["EProp", "EPropState"]

FEEDBACKS = ("symmetric", "random", "adaptive")
_SYNAPSES = ("W_in", "W_rec")
_READOUT = ("W_out", "b_out")


class EPropState(NamedTuple):
    net: NamedTuple
    z: Tensor  # [B, n] z_{t-1}: the presynaptic activity of W_rec
    eps: Tensor  # [B, n, K, n_pre] eligibility vectors; windowed: [B, n, 1 + R - S, n_pre] = [bar e; eps] at start
    eps_b: Tensor  # [B, n, K, V] eligibility vectors of the per-neuron vectors (b); windowed: [B, n, 1 + R, V]
    ebar: Tensor | None  # [B, n, n_pre] filtered eligibility traces bar e (per-step path)
    ebar_b: Tensor | None  # [B, n, V]
    zbar: Tensor  # [B, n] filtered hidden output (readout gradient)
    bbar: Tensor  # [] filtered 1 (b_out gradient); windowed: at the window's start
    B: Tensor | None  # [n_out, n] feedback matrix (None: symmetric, W_out itself)
    buf: tuple | None  # windowed: (J [W, R+1, R+1+V, B, n], L [W, B, n], zbar [W, B, n], pre [W, B, n_pre],
    #                    dE/dy [W, B, n_out], filled: int64 [] the steps written in place so far)
    t: int  # windowed: steps in the current window
    shared: Tensor | None = None  # windowed: [B, S, n_pre] the eligibility vectors that are the same for every neuron


class _Layout(NamedTuple):
    fields: tuple[str, ...]  # the state's fields
    hidden: tuple[int, ...]  # indices of the per-neuron fields that `neuron` updates (the K of eps)
    readout: int | None  # index of the readout's state field (y), None for a memoryless readout
    kappa: float  # d y_t / d y_{t-1}
    vectors: tuple[str, ...]  # per-neuron vector parameters (b)
    read: tuple[int, ...]  # positions (in hidden) whose eligibility vectors reach z (directly or through others)
    dib: Tensor  # [n, V] float64: dI/db (the current is affine: a constant)


def _fail(net: AbstractNetwork, why: str) -> ValueError:
    return ValueError(f"rule 'eprop' cannot run on model {net.name!r}: {why}; it supports {', '.join(EProp.supports)}")


Head = Callable[[NamedTuple, Tensor], tuple[NamedTuple, Tensor, Tensor]]


def _local(net: AbstractNetwork, p: Params, s: NamedTuple, i: Tensor, hidden: tuple[int, ...],
           vectors: tuple[str, ...], head: Head, out: Tensor | None = None):
    """Every element-wise derivative of ``neuron`` at ``(s, I = i)`` and ``dE/dy`` of the step, in ONE reverse
    pass. As ``neuron`` couples no two units or samples, ``d(sum of output g)/d(input f)`` is the diagonal
    ``d g_j / d f_j``: the batch is repeated once per output (C = K + 1 copies: the K hidden fields, then z)
    and the reverse pass of ``sum_c sum(output c of copy c) + loss`` gives them all. ``head(s_t, z_t)`` runs
    the readout and returns ``(state, y leaf, loss)``. Returns ``(state, y leaf, loss, z_t, J, dE/dy)`` with
    ``J`` [C, K + 1 + V, B, n] (inputs: the K fields, the current, the per-neuron vectors; written into
    ``out`` if given); ``dz/db`` etc. here hold the current fixed (see ``_Layout.dib``). ``hidden``: the
    fields (state indices) taken as outputs and inputs (all hidden fields, or the read ones)."""
    Bsz, n = i.shape
    C = len(hidden) + 1
    with torch.enable_grad():
        rep = [f.repeat(C, *([1] * (f.dim() - 1))).requires_grad_(k in hidden) for k, f in enumerate(s)]
        il = i.repeat(C, 1).requires_grad_(True)
        br = {k: p[k].expand(C * Bsz, n).clone().requires_grad_(True) for k in vectors}
        s_new, z = net.neuron({**p, **br}, type(s)(*rep), il)
        state = type(s)(*(f[:Bsz].detach() for f in s_new))
        zt = z[:Bsz].detach()
        state, yl, loss = head(state, zt)
        outs = [s_new[g] for g in hidden] + [z]
        picked = [o[c * Bsz:(c + 1) * Bsz].sum() for c, o in enumerate(outs) if o.requires_grad]
        ins = [rep[k] for k in hidden] + [il] + list(br.values()) + [yl]
        root = loss + torch.stack(picked).sum() if picked else loss
        cols = _grads(root, ins)
    J = torch.stack([g.view(C, Bsz, n) for g in cols[:-1]], 1, out=out)
    return state, yl.detach(), loss.detach(), zt, J, cols[-1]


def _grads(out: Tensor, ins: list[Tensor]) -> list[Tensor]:
    """``d(sum out)/d(each input)``, zeros where an input is not reached."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in ins]
    gs = torch.autograd.grad(out, ins, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, ins)]


def _no_head(s: NamedTuple, z: Tensor):
    leaf = z.new_zeros(()).requires_grad_(True)
    return s, leaf, leaf * 0.0


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
    # probe the neuron-local Jacobian at random states: which fields are read; dI/db of the affine current
    g = torch.Generator().manual_seed(0)
    draws = 16
    scale = torch.tensor([1.0, 3.0], dtype=torch.float64).repeat(draws)[:draws, None]
    st = type(s0)(*(scale.reshape(-1, *[1] * (f.dim() - 1)) * torch.randn(draws, *f.shape[1:], generator=g,
                                                                           dtype=torch.float64) for f in s0))
    xr = torch.randn(draws, net.n_in, generator=g, dtype=torch.float64)
    with torch.enable_grad():
        bl = {k: p[k].expand(draws, n).clone().requires_grad_(True) for k in vectors}
        i0 = net.current({**p, **bl}, st, xr)
        dib = torch.stack(_grads(i0.sum(), list(bl.values())), -1) if vectors else i0.new_zeros(draws, n, 0)
    if not torch.equal(dib, dib[:1].expand_as(dib)):
        raise _fail(net, f"its current is not affine in {list(vectors)}")
    J = _local(net, p, st, i0.detach(), hidden, vectors, _no_head)[4]  # [K+1, K+1+V, draws, n]
    K = len(hidden)
    nz = (J[:, :K] != 0).any(-1).any(-1)  # [K+1 (out), K (in)]: out depends on in somewhere
    read = set(torch.nonzero(nz[K]).flatten().tolist())  # the fields that z reads, then those that they read
    while True:
        more = read | {f for g in read for f in torch.nonzero(nz[g]).flatten().tolist()}
        if more == read:
            break
        read = more
    read = tuple(sorted(read))
    return _Layout(fields, hidden, readout, kappa, vectors, read, dib[0])


def _closed_local(net: AbstractNetwork, p: Params, s: NamedTuple, i: Tensor, names: tuple[str, ...],
                  vectors: tuple[str, ...], out: Tensor | None = None) -> tuple[NamedTuple, Tensor, Tensor]:
    """``_local``'s ``J`` for LIF/ALIF without autograd (equal to it: tests/neuro/rules/test_eprop.py), with the
    fields ``names`` (``v``, ``i``, ``a``) as outputs and inputs: with ``v~`` the potential before the hold and
    the reset, ``A = [r_{t-1} = 0]``, ``psi`` the surrogate derivative at the held potential, ``u = dv~/d(input)``
    (``subthreshold``), ``w = d(threshold)/d(input)`` (ALIF: ``beta_a`` on ``a``) and ``delta = 0`` if the reset is
    detached::

        dz    = A psi (u - w)
        dv_t  = A u - delta v_th dz                                   (reset="subtract")
              = (1 - z) A u + delta (v_reset - v_held) dz                    (reset="zero")
        di_t  = (ii on i, iI on I)        da_t = rho (on a) + dz

    Returns ``(s_t, z_t, J [len(names) + 1, len(names) + 1 + V, B, n])``."""
    with torch.no_grad():
        s_new, z, vt, _, psi, active = fire(net, p, s, i)
        u, uw, irow, arow = _closed_coefs(net, names, vectors, i.dtype, i.device)  # [C, 1, 1] each
        J = vt.new_empty(len(names) + 1, u.shape[0], *vt.shape) if out is None else out
        dz = torch.mul(uw, psi, out=J[-1])
        delta = 0.0 if net.detach_reset else 1.0
        for k, f in enumerate(names):
            if f == "v":
                Au = u if active is None else u * active
                if net.reset == "subtract":
                    torch.sub(Au, dz, alpha=delta * net.v_th, out=J[k])
                else:
                    torch.addcmul(Au * (1.0 - z), dz, delta * (net.v_reset - vt), out=J[k])
            elif f == "i":
                J[k].copy_(irow.expand_as(dz))
            else:  # a
                torch.add(dz, arow, out=J[k])
    return s_new, z, J


@functools.lru_cache(maxsize=64)
def _closed_coefs(net: AbstractNetwork, names: tuple[str, ...], vectors: tuple[str, ...], dtype: torch.dtype,
                  device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``u = dv~/d(input)``, ``u - w``, the rows ``di_t/d(input)`` and ``da_t/d(input) - dz`` over the inputs
    ``names + (I,) + vectors`` (see ``_closed_local``)."""
    c = net.subthreshold()
    ins = names + ("I",) + vectors
    row = lambda d: torch.tensor([d.get(k, 0.0) for k in ins], dtype=dtype, device=device)[:, None, None]  # noqa: E731
    u = row({"v": c.vv, "i": c.vi, "I": c.vI, "b": c.vb})
    w = row({"a": getattr(net, "beta_a", 0.0)})
    return u, u - w, row({"i": c.ii, "I": c.iI}), row({"a": getattr(net, "rho", 0.0)})


def _parts(J: Tensor, K: int, dib: Tensor):
    """Per-step path: (D [B,n,K,K], Z [B,n,K], c [B,n,K], zi [B,n], Sb [B,n,K,V], zb [B,n,V]) from J
    (``Sb``, ``zb`` include the current's ``dI/db``)."""
    Jp = J.permute(2, 3, 0, 1)
    D, Z, c, zi = Jp[:, :, :K, :K], Jp[:, :, K, :K], Jp[:, :, :K, K], Jp[:, :, K, K]
    Sb = Jp[:, :, :K, K + 1:] + c[..., None] * dib[:, None, :]
    zb = Jp[:, :, K, K + 1:] + zi[..., None] * dib
    return D, Z, c, zi, Sb, zb


@dataclasses.dataclass(frozen=True)
class EProp(AbstractRule):
    """e-prop (module docstring).

    ``feedback``: ``"symmetric"`` (B = W_out^T), ``"random"`` (fixed, drawn from ``init``'s seed, N(0, 1/n)),
    ``"adaptive"`` (random, then ``B <- B - feedback_lr (g_Wout^T + feedback_decay B)``).
    ``adaptive_eligibility``: ``None`` keeps every component (ALIF's threshold adaptation included);
    ``False`` drops the adaptive component ``eps^a`` (ALIF only). ``fast``: the windowed path (``None`` or
    ``True``; it applies to every supported model) or ``False``: the per-step path (the reference).
    ``window``: steps per window of the windowed path. The rule is declared deterministic (its default
    feedback is); with random or adaptive feedback the estimate depends on ``init``'s seed.
    """

    feedback: str = "symmetric"
    feedback_lr: float = 1e-3
    feedback_decay: float = 1e-2
    adaptive_eligibility: bool | None = None
    fast: bool | None = None
    window: int = 128

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

    @property
    def uses_fast_path(self) -> bool:
        return self.fast is not False

    def _adaptive_row(self) -> int | None:
        lay = _layout(self.net)
        if self.adaptive_eligibility is False:
            return lay.hidden.index(lay.fields.index("a"))
        return None

    @functools.cached_property
    def _rows(self) -> tuple[int, ...]:
        """The fields (positions in hidden) whose eligibility vectors the windowed path carries (shared last)."""
        lay = _layout(self.net)
        rows = [k for k in lay.read if k != self._adaptive_row()]
        if self._closed:
            rows.sort(key=lambda k: lay.fields[lay.hidden[k]] == "i")
        return tuple(rows)

    @functools.cached_property
    def _names(self) -> tuple[str, ...]:
        lay = _layout(self.net)
        return tuple(lay.fields[lay.hidden[k]] for k in self._rows)

    @functools.cached_property
    def _shared(self) -> tuple[int, ...]:
        """Positions (in ``_rows``) whose eligibility vector is the same for every neuron: LIF/ALIF's synaptic
        current ``i`` (its row of the Jacobian is the constant ``(ii, iI)``: ``eps^i_ji = E^i_i``)."""
        return tuple(k for k, f in enumerate(self._names) if f == "i") if self._closed else ()

    @functools.cached_property
    def _closed(self) -> bool:
        """The windowed path takes LIF/ALIF's derivatives in closed form (``_closed_local``)."""
        lay = _layout(self.net)
        return (closed_form(self.net) and {lay.fields[lay.hidden[k]] for k in lay.read} <= {"v", "i", "a"}
                and set(lay.vectors) <= {"b"})

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
        common = dict(net=s, z=z, zbar=new(batch, n), bbar=new(()), B=B, t=0)
        if self.uses_fast_path:
            R, S = len(self._rows), len(self._shared)
            return EPropState(eps=new(batch, n, 1 + R - S, n_pre), eps_b=new(batch, n, 1 + R, V), ebar=None,
                              ebar_b=None, buf=self._buffers(p, batch), shared=new(batch, S, n_pre), **common)
        return EPropState(eps=new(batch, n, K, n_pre), eps_b=new(batch, n, K, V), ebar=new(batch, n, n_pre),
                          ebar_b=new(batch, n, V), buf=None, **common)

    def _buffers(self, p: Params, batch: int) -> tuple:
        """Fresh buffers for one window (see EPropState.buf)."""
        lay, net = _layout(self.net), self.net
        R, V, W, n = len(self._rows), len(lay.vectors), self.window, net.n_hidden
        new = functools.partial(torch.empty, dtype=p["W_rec"].dtype, device=p["W_rec"].device)
        S = len(self._shared)  # pre has S more rows: the shared traces join the matrix product there (_flush)
        return (new(W, R + 1, R + 1 + V, batch, n), new(W, batch, n), new(W, batch, n), new(W + S, batch, net.n_in + n),
                new(W, batch, net.n_out), torch.zeros((), dtype=torch.int64))

    def step(self, params: Params, state: EPropState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, lay = self.net, _layout(self.net)
        p = {k: v.detach() for k, v in params.items()}
        x, y, kappa, fn, t = x.detach(), y.detach(), lay.kappa, self.loss_fn, state.t
        K, V = len(lay.hidden), len(lay.vectors)

        def head(s1, z):  # the readout and the loss: dE/dy comes out of the same reverse pass
            s2, y_hat = net.readout(p, s1, z)
            yl = y_hat.detach().requires_grad_(True)
            return s2, yl, fn(yl, y, mask)

        buf = state.buf
        if buf is not None and int(buf[-1]) != t:  # a step from an older state: copy its own entries first
            buf = tuple(b.clone() for b in buf[:-1]) + (torch.tensor(t),)
        with torch.no_grad():
            i = net.current(p, state.net, x)
        if buf is None:
            s_new, y_hat, loss, z, J, err = _local(net, p, state.net, i, lay.hidden, lay.vectors, head)
        elif self._closed:  # the read fields' derivatives in closed form, written into the window's buffer
            s_new, z, _ = _closed_local(net, p, state.net, i, self._names, lay.vectors, out=buf[0][t])
            s_new, y_hat = net.readout(p, s_new, z)
            loss, err = fn(y_hat, y, mask), losses.grad(self.loss or "mse", y_hat, y, mask)
        else:
            rows = tuple(lay.hidden[k] for k in self._rows)
            s_new, y_hat, loss, z, _, err = _local(net, p, state.net, i, rows, lay.vectors, head, out=buf[0][t])
        Bmat = p["W_out"] if state.B is None else state.B
        if buf is not None:  # windowed: record the step
            Jb, Lb, Zb, Pb, Eb, filled = buf
            torch.matmul(err, Bmat, out=Lb[t])  # learning signal L_t [B, n]
            zbar = torch.add(z, state.zbar, alpha=kappa, out=Zb[t])
            torch.cat([x, state.z], 1, out=Pb[t])
            Eb[t].copy_(err)
            filled.fill_(t + 1)
            B_new = state.B
            if self.feedback == "adaptive":
                B_new = state.B - self.feedback_lr * (err.T @ zbar + self.feedback_decay * state.B)
            new = state._replace(net=s_new, z=z, zbar=zbar, B=B_new, buf=buf, t=t + 1)
            grad = None
            if t + 1 >= self.window:
                new, grad = self._flush(p, new)
            return StepOutput(new, y_hat, loss, grad)
        # per-step path: eps^t = D eps^{t-1} + c pre,  e^t = Z eps^{t-1} + zi pre,  bar e^t = kappa bar e^{t-1} + e^t
        pre = torch.cat([x, state.z], dim=1)  # [B, n_pre]
        L = err @ Bmat  # learning signal [B, n]
        D, Z, c, zi, dS_b, dz_b = _parts(J, K, lay.dib.to(J))
        a = self._adaptive_row()
        if a is not None:  # drop the adaptive component: eps^a stays 0
            D, c, dS_b = D.clone(), c.clone(), dS_b.clone()
            D[:, :, a], c[:, :, a], dS_b[:, :, a] = 0.0, 0.0, 0.0
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
        e = torch.einsum("bjf,bjfk->bjk", Z, state.eps) + zi[:, :, None] * pre[:, None, :]
        eps = torch.einsum("bjgf,bjfk->bjgk", D, state.eps) + c[:, :, :, None] * pre[:, None, None, :]
        ebar = kappa * state.ebar + e
        gW = torch.einsum("bj,bjk->jk", L, ebar)
        g["W_in"], g["W_rec"] = gW[:, :net.n_in], gW[:, net.n_in:]
        new = EPropState(net=s_new, z=z, eps=eps, eps_b=eps_b, ebar=ebar, ebar_b=ebar_b, zbar=zbar, bbar=bbar,
                         B=B_new, buf=None, t=0)
        return StepOutput(new, y_hat, loss, {k: g[k] for k in params})

    # -- windowed path -------------------------------------------------------------------------------
    def _flush(self, p: Params, state: EPropState) -> tuple[EPropState, Params | None]:
        """The estimate of the window's steps (module docstring, "Windowed path"); the traces move to its end."""
        w = state.t
        if state.buf is None or w == 0:
            return state, None
        net, lay = self.net, _layout(self.net)
        kappa, V, n = lay.kappa, len(lay.vectors), net.n_hidden
        R = len(self._rows)
        Jb, Lbuf, Zbuf, Pbuf, Ebuf, _ = state.buf
        Bsz = Lbuf.shape[1]
        C, bn = R + 1 + V, Bsz * n
        DC = Jb[:w, :R].view(w, R, C, 1, bn)  # [w, f, col, 1, b n]: [D | c | Sb]
        ZZ = Jb[:w, R].view(w, C, bn)  # [w, col, b n]: [Z | zi | zb]
        if bool(lay.dib.any()):  # a vector in the current (rate's b): ds/db = (ds/db)_neuron + c dI/db (copies)
            dib = lay.dib.to(DC).T.repeat(1, Bsz)  # [V, b n]
            DC, ZZ = DC.clone(), ZZ.clone()
            DC[:, :, R + 1:] += DC[:, :, R:R + 1] * dib[None, None, :, None, :]
            ZZ[:, R + 1:] += ZZ[:, R:R + 1] * dib
        ts = torch.arange(w, dtype=DC.dtype, device=DC.device)
        lag = ts[None, :] - ts[:, None]  # [t, s]: s - t
        kp = torch.full_like(lag, kappa)
        F = torch.where(lag >= 0, torch.pow(kp, lag.clamp(min=0)), torch.zeros_like(lag))
        # rows of M (and of the outputs): [q (bar e); Psi of the own fields; r (grad); Psi of the shared fields]
        S = len(self._shared)  # the shared fields are the last S of the rows
        k = R + 2 - S  # the per-neuron rows [bar e, eps (own), grad]
        lam = DC.new_zeros(w, R + 2, bn)  # [kappa^{W-s}, 0, Lb_s, 0]
        lam[:, 0] = torch.pow(kp[0], (w - 1) - ts)[:, None]
        lam[:, k - 1] = (F @ Lbuf[:w].reshape(w, bn))  # Lb
        # E_s [col, row, b n] = lam_s Z_s (then += M_s D_s | M_s c_s | M_s Sb_s), M_{s-1} = E_s[:R]: in place
        E = ZZ[:, :, None, :] * lam[:, None, :, :]  # [w, C, R+2, b n]
        M = DC.new_zeros(R, R + 2, bn)  # M_W: Psi_W = I, q_W = r_W = 0; stored [f, row, b n]
        for f in range(R):
            M[f, 1 + f if f < R - S else 2 + f] = 1.0
        for s in range(w - 1, -1, -1):
            for f in range(R):
                E[s].addcmul_(DC[s, f], M[f])
            M = E[s, :R]
        Tm = torch.cat([kappa * lam[0].T[:, :, None], M.permute(2, 1, 0)], -1)  # [b n, R+2, 1+R] on [bar e_0; eps_0]
        # the per-neuron rows: [Tm (own columns) @ [bar e_0; eps_0] | A, Tm (shared columns)] @ [pre; E^S_0]; the
        # shared traces are carried with neuron 0's coefficients
        new = torch.bmm(Tm[:, :k, :k - 1], state.eps.reshape(bn, k - 1, -1)).view(Bsz, n * k, -1)
        A = E.new_empty(Bsz, n, k, w + S)
        A[..., :w] = E[:, R, :k].view(w, k, Bsz, n).permute(2, 3, 1, 0)
        P = Pbuf[:w + S].transpose(0, 1)  # [B, w + S, n_pre]
        shared = state.shared
        if S:
            A[..., w:] = Tm[:, :k, k - 1:].view(Bsz, n, k, S)
            psi = torch.diagonal(M[R - S:, k:], 0, 0, 1).reshape(Bsz, n, S)[:, 0]  # [B, S]: Psi_0 of the shared rows
            coef = E[:, R, k:].reshape(w, S, Bsz, n)[..., 0].permute(2, 1, 0)  # [B, S, w]
            shared = psi[:, :, None] * state.shared + torch.bmm(coef, P[:, :w])
            Pbuf[w:w + S] = state.shared.transpose(0, 1)
        new = new.baddbmm_(A.view(Bsz, n * k, w + S), P).view(Bsz, n, k, -1)
        outb = E[:, R + 1:].sum(0).permute(2, 1, 0)  # [b n, R+2, V]
        newb = (torch.bmm(Tm, state.eps_b.reshape(bn, 1 + R, V)) + outb).view(Bsz, n, R + 2, V)
        G, Gb = (new[0, :, k - 1] if Bsz == 1 else new[:, :, k - 1].sum(0)), newb[:, :, k - 1].sum(0)
        bb, bbars = float(state.bbar), []
        for _ in range(w):
            bb = kappa * bb + 1.0
            bbars.append(bb)
        errs = Ebuf[:w]
        grad = {"W_in": G[:, :net.n_in].contiguous(), "W_rec": G[:, net.n_in:].contiguous(),
                "W_out": torch.einsum("tbo,tbj->oj", errs, Zbuf[:w]),
                "b_out": torch.einsum("tbo,t->o", errs, errs.new_tensor(bbars))}
        for v, key in enumerate(lay.vectors):
            grad[key] = Gb[:, v]
        eps_b = torch.cat([newb[:, :, :k - 1], newb[:, :, k:]], 2)  # [bar e; eps] in the order of the rows
        new_state = state._replace(eps=new[:, :, :k - 1], eps_b=eps_b, bbar=state.bbar.new_tensor(bb),
                                   buf=self._buffers(p, Bsz), t=0, shared=shared)
        return new_state, {k: grad[k] for k in p}

    def flush(self, params: Params, state: EPropState) -> tuple[EPropState, Params | None]:
        return self._flush({k: v.detach() for k, v in params.items()}, state)

    def finish(self, params: Params, state: EPropState) -> tuple[EPropState, Params | None]:
        return self.flush(params, state)
