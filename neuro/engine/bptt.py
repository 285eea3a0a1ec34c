"""BPTT and truncated BPTT on the rate RNN, compiled: a range of steps of online training in one numba call.

The rules are :mod:`neuro.rules.bptt` (the exact gradient of the sequence's summed loss, emitted when the
sequence ends) and :mod:`neuro.rules.tbptt` (the same over windows of ``k`` steps, emitted when a window is
full, the last, shorter one when the sequence ends; the network state is carried into the next window but no
gradient flows through it); the network :class:`models.rate.RateRNN` (not a subclass). Neither rule holds an
estimate back at an update inside a window (their ``flush`` returns nothing), so an update there applies only
what earlier windows emitted, and none at all when nothing was emitted since the last one.

As the torch path does, a window's forward steps run on a copy of the parameters taken at its first step (an
update inside the window changes the live parameters, not the window's). Per step, :func:`bptt_range` stores
what the backward pass cannot recompute exactly: the network state ``h_t`` after the step, and where ``alpha !=
1`` also ``D_t = dh_t/du_t = alpha (1 - tanh(u_t)^2)`` (at ``alpha = 1``, ``h_t = tanh(u_t)`` and ``D_t = 1 -
h_t^2`` is recomputed from it): at most ``2 n`` values per step and sample. At the window's end
:func:`backward` runs through the stored steps backwards, recomputing each step's readout and loss error
``eps_t = dl_t/dy_hat_t`` from ``h_t`` and the targets as the forward step computed them::

    dh_t = W_out^T eps_t + c_{t+1}     du_t = D_t dh_t     c_t = (1 - alpha) dh_t + W_rec^T du_t
    dW_out += eps_t h_t^T   db_out += eps_t   dW_in += du_t x_t^T   db += du_t
    dW_rec += DU^T H_prev   (per block of BLOCK steps: DU the rows du_t, H_prev the rows h_{t-1})

(``c`` zero after the window's last step; nothing flows to the window's first ``h_{t-1}``; ``W_rec^T du_t`` is
summed by rows of ``W_rec``, and a block's ``dW_rec`` as one matrix product on the BLAS run on torch's thread
count, or, where its threads cannot be set, step by step by rows: ``dW_rec += du_t h_{t-1}^T``), adding the
window's gradient to the loop's accumulator. The optimizer's update falls at the loop's schedule (``(t + 1) %
update_every == 0`` or the sequence's last step) when an estimate was emitted since the last one.

The torch rule state holds an autograd graph mid-window; between the ranges of one sequence the engine keeps
its own stored steps instead (the rule state it returns then carries the current ``h`` and the window's step
count only, and is handed back to it). At a sequence's end (where checkpoints are taken) the state is the torch
path's: ``h`` detached, no window, ``t = 0``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from models.rate import RateRNN
from neuro._numba import numba
from neuro.contract import Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, flat, view
from neuro.engine.optim import OptimizerArrays
from neuro.rules.bptt import BPTT, BPTTState
from neuro.rules.tbptt import TBPTT

__all__ = ["BPTTEngine", "WindowsEngine", "backward", "bptt_range", "build", "open_window", "update_emitted"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernels' order
LOSSES = {"mse": K.MSE, "ce": K.CE}
BLOCK = 32  # steps whose dW_rec terms one matrix product sums (the backward's scratch holds this many du)


@functools.cache
def _blas() -> object | None:
    """The thread-pool controller of the BLAS libraries loaded (numba's ``np.dot`` calls SciPy's), or ``None``
    without ``threadpoolctl`` (then the engine does without the BLAS)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loaded, so that the controller sees it)
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController().select(user_api="blas")


def _blas_threads(n: int) -> contextlib.AbstractContextManager:
    """The BLAS on torch's thread count (``torch.get_num_threads()``) while a range runs: OpenBLAS's own default,
    every core, is slower by far on a busy machine. Nothing for small ``n`` (products too small to be split)."""
    ctl = _blas() if n >= 64 else None
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=torch.get_num_threads())


@numba.njit(cache=True)
def backward(W_rec, W_out, b_out, alpha, loss_kind, xs, ys, mask, t_start, H, Dst, m, DU, S,  # noqa: ANN001, ANN201
             g_in, g_rec, g_b, g_out, g_bout):
    """The gradient of a window's summed loss (module docstring) added to ``g_*``: its ``m`` steps are steps
    ``t_start ..`` of ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B]; ``H`` [>= m + 1, B, n] the
    state before the window and after each step; ``Dst`` [>= m, B, n] the steps' ``dh/du`` (``alpha != 1``; at
    ``alpha = 1`` it is recomputed from ``h``). ``DU`` [BLOCK * B, n] and ``S`` [n, n]: scratch (written); ``S``
    [0, 0]: ``dW_rec`` summed step by step by rows, without the BLAS."""
    nb, n = H.shape[1], H.shape[2]
    n_in, n_out = xs.shape[2], W_out.shape[0]
    blk = DU.shape[0] // nb
    gemm = S.shape[0] > 0
    leak = K.cast(1.0 - alpha, H)
    one = K.cast(1.0, H)
    y_hat = np.empty((nb, n_out), H.dtype)
    e = np.empty((nb, n_out), H.dtype)
    dh = np.empty(n, H.dtype)
    carry = np.zeros((nb, n), H.dtype)
    for j in range(m - 1, -1, -1):
        t = t_start + j
        hn = H[j + 1]
        K.readout(W_out, b_out, hn, y_hat)  # the step's error, recomputed as the forward step computed it
        K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], e)
        j0 = j - j % blk
        for s in range(nb):
            c, du, x = carry[s], DU[(j - j0) * nb + s], xs[t, s]
            for i in range(n):
                dh[i] = c[i]
            for k in range(n_out):
                ek = e[s, k]
                wk, gk, hk = W_out[k], g_out[k], hn[s]
                g_bout[k] += ek
                for i in range(n):
                    dh[i] += ek * wk[i]
                    gk[i] += ek * hk[i]
            if alpha == 1.0:
                for i in range(n):
                    du[i] = dh[i] * (one - hn[s, i] * hn[s, i])
                    c[i] = 0.0
            else:
                D = Dst[j, s]
                for i in range(n):
                    du[i] = dh[i] * D[i]
                    c[i] = leak * dh[i]
            for a in range(n):  # c += W_rec^T du, by rows of W_rec
                d, w = du[a], W_rec[a]
                g_b[a] += d
                for i in range(n):
                    c[i] += d * w[i]
                gi = g_in[a]
                for i in range(n_in):
                    gi[i] += d * x[i]
                if not gemm:
                    ga, hp = g_rec[a], H[j, s]
                    for i in range(n):
                        ga[i] += d * hp[i]
        if gemm and j == j0:  # the block's dW_rec terms: sum_t du_t h_{t-1}^T as one matrix product
            L = min(blk, m - j0) * nb
            np.dot(DU[:L].T, H[j0:j0 + L // nb].reshape((L, n)), S)
            for a in range(n):
                ga, sa = g_rec[a], S[a]
                for i in range(n):
                    ga[i] += sa[i]


@numba.njit(cache=True)
def open_window(ps, snap):  # noqa: ANN001, ANN201
    """A window opens: the parameters ``ps`` copied to ``snap``, which its forward steps run on (an update inside
    the window changes the live parameters, not the window's)."""
    for i in range(len(ps)):
        snap[i][:] = ps[i]


@numba.njit(cache=True)
def update_emitted(full, t, n_seq, every, opt_kind, ps, acc, ms, vs, steps, hyper):  # noqa: ANN001, ANN201
    """The loop's update after step ``t`` where it falls due (:func:`neuro.engine.kernels.update_due`) and an
    estimate was emitted since the last one (``full``): applied, the sum zeroed. Returns the updates applied (0
    or 1) and ``full`` after it."""
    if full and K.update_due(t, n_seq, every):
        K.apply_update(opt_kind, ps, acc, ms, vs, steps, hyper)
        return 1, False
    return 0, full


@numba.njit(cache=True)
def bptt_range(ps, acc, ms, vs, steps, opt_kind, hyper, loss_kind, alpha, n_in, n, n_out, k,  # noqa: ANN001, ANN201
               snap, H, Dst, DU, S, h, xs, ys, mask, t0, t1, n_seq, every, tw, full, losses):
    """Steps ``t0 .. t1 - 1`` of a sequence of ``n_seq`` steps (module docstring).

    ``ps``, ``acc``: the parameters and the summed estimates, flat, in :data:`ORDER`; ``ms``, ``vs``, ``steps``,
    ``opt_kind``, ``hyper``: the optimizer (:func:`neuro.engine.kernels.apply_update`); ``k`` the window length
    (0: the whole sequence); ``snap`` the window's parameters (flat, :data:`ORDER`); ``H``, ``Dst`` the stored
    steps and ``DU``, ``S`` the backward's scratch (:func:`backward`; at ``alpha = 1`` ``Dst`` [1, B, n] is
    scratch too); ``h`` [B, n] the network state; ``xs`` [T, B, n_in], ``ys`` [T, B, n_out], ``mask`` [T, B];
    ``tw`` the steps already in the open window (0: none open); ``full`` whether the accumulator holds estimates
    not yet applied; ``losses`` [t1 - t0] (written). Returns the updates applied, ``full`` and ``tw`` after the
    range."""
    W_in, W_rec, b = snap[0].reshape((n, n_in)), snap[1].reshape((n, n)), snap[2]
    W_out, b_out = snap[3].reshape((n_out, n)), snap[4]
    g_in, g_rec, g_b = acc[0].reshape((n, n_in)), acc[1].reshape((n, n)), acc[2]
    g_out, g_bout = acc[3].reshape((n_out, n)), acc[4]
    y_hat = np.empty((h.shape[0], n_out), h.dtype)
    e = np.empty((h.shape[0], n_out), h.dtype)
    updates = 0
    for t in range(t0, t1):
        if tw == 0:  # a window opens: the parameters it runs on, the state it starts from
            open_window(ps, snap)
            H[0] = h
        K.rate_step(W_in, W_rec, b, alpha, xs[t], H[tw], H[tw + 1], Dst[tw if alpha != 1.0 else 0])
        K.readout(W_out, b_out, H[tw + 1], y_hat)
        losses[t - t0] = K.loss_and_error(loss_kind, y_hat, ys[t], mask[t], e)
        tw += 1
        if tw == k or t == n_seq - 1:  # the window closes: its gradient to the sum
            backward(W_rec, W_out, b_out, alpha, loss_kind, xs, ys, mask, t + 1 - tw, H, Dst, tw, DU, S, g_in,
                     g_rec, g_b, g_out, g_bout)
            h[:, :] = H[tw]
            tw = 0
            full = True
        applied, full = update_emitted(full, t, n_seq, every, opt_kind, ps, acc, ms, vs, steps, hyper)
        updates += applied
    if tw > 0:
        h[:, :] = H[tw]
    return updates, full, tw


class _Open(NamedTuple):
    """A sequence under way between two ranges: the rule state handed out, the steps in the open window, whether
    the accumulator holds estimates not yet applied, and the engine's buffers of the sequence (its window's
    parameters and stored steps, where the engine keeps them per sequence)."""

    state: BPTTState
    tw: int
    full: bool
    buffers: tuple = ()


class WindowsEngine(Engine):
    """The windows' bookkeeping of a compiled BPTT / TBPTT engine between the ranges of a sequence (module
    docstring): the rule state it hands out mid-sequence carries the network state and the open window's step
    count, and is handed back to it; at a sequence's end it is the torch path's (no window, ``t = 0``)."""

    _open: _Open | None = None

    def _begin(self, state: BPTTState, t0: int, fields: tuple[str, ...],
               buffers: Callable[[], tuple] = tuple) -> tuple[_Open, tuple]:
        """The sequence under way at step ``t0`` (``buffers()``: its buffers where one starts) and the network
        state's ``fields``, contiguous copies at a sequence's start (the kernel writes them)."""
        what = f"the compiled {self.rule.name} engine on {type(self.net).__name__}"
        if t0 == 0:
            if state.window is not None or state.t != 0:
                raise RuntimeError(f"{what} was handed a rule state with an open window at a sequence's start")
            nets = tuple(getattr(state.net, k).detach().clone().contiguous() for k in fields)
            return _Open(state=state, tw=0, full=False, buffers=buffers()), nets
        o = self._open
        if o is None or o.state is not state:
            raise RuntimeError(f"{what} was handed a rule state it did not leave mid-sequence")
        return o, tuple(getattr(state.net, k) for k in fields)

    def _end(self, o: _Open, state: BPTTState, nets: dict, losses: np.ndarray, updates: int, full: bool, tw: int,
             t1: int, n_seq: int) -> RangeResult:
        """The range's result: the rule state with the network state ``nets`` (fields), kept for the next range."""
        out = BPTTState(net=state.net._replace(**nets), window=None, total=None, t=int(tw))
        self._open = None if t1 == n_seq else o._replace(state=out, tw=int(tw), full=bool(full))
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))


class BPTTEngine(WindowsEngine):
    """:func:`bptt_range` for one BPTT or TBPTT rule on one rate RNN (module docstring)."""

    def __init__(self, net: RateRNN, rule: BPTT) -> None:
        self.net, self.rule = net, rule
        self.alpha = float(net.alpha)
        self.loss_kind = LOSSES[rule.loss]
        self.k = int(rule.k) if isinstance(rule, TBPTT) else 0
        self._buffers: dict[str, np.ndarray] = {}

    def shapes(self, steps: int, nb: int) -> dict[str, tuple[int, ...]]:
        """The shapes of the arrays a window of ``steps`` steps of ``nb`` samples uses: its parameters (named as
        in :data:`ORDER`), the stored steps ``H`` [steps + 1, B, n] and ``D`` ([steps, B, n] where ``alpha != 1``,
        else [1, B, n] scratch), the backward's scratch ``DU`` [min(BLOCK, steps) B, n] and ``S`` [n, n] ([0, 0]
        where the BLAS's threads cannot be set: ``dW_rec`` is then summed step by step)."""
        net, n = self.net, self.net.n_hidden
        return {"W_in": (n, net.n_in), "W_rec": (n, n), "b": (n,), "W_out": (net.n_out, n), "b_out": (net.n_out,),
                "H": (steps + 1, nb, n), "D": (steps if self.alpha != 1.0 else 1, nb, n),
                "DU": (min(BLOCK, steps) * nb, n), "S": (n, n) if _blas() is not None else (0, 0)}

    def stored_bytes(self, steps: int, nb: int, itemsize: int) -> int:
        """The bytes of the stored steps (``H`` and ``D``) of a window of ``steps`` steps: ``n`` values per step
        and sample where ``alpha = 1``, ``2 n`` otherwise (and one state more)."""
        shapes = self.shapes(steps, nb)
        return sum(math.prod(shapes[k]) for k in ("H", "D")) * itemsize

    def buffers(self, steps: int, nb: int, dtype: np.dtype) -> dict[str, np.ndarray]:
        """The arrays of :meth:`shapes`, kept between sequences while their shapes hold."""
        for name, shape in self.shapes(steps, nb).items():
            a = self._buffers.get(name)
            if a is None or a.shape != shape or a.dtype != dtype:
                self._buffers[name] = np.empty(shape, dtype)
        return self._buffers

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net = self.net
        ps = tuple(flat(params[k]) for k in ORDER)
        gs = tuple(flat(acc[k]) for k in ORDER)
        o, (h,) = self._begin(state, t0, ("h",))
        hv = view(h)
        b = self.buffers(n_seq if self.k == 0 else min(self.k, n_seq), hv.shape[0], hv.dtype)
        opt_arrays = OptimizerArrays.of(opt, [params[k] for k in ORDER], tuple(k in net.fixed_params for k in ORDER))
        losses = np.empty(t1 - t0, hv.dtype)
        with _blas_threads(net.n_hidden):
            updates, full, tw = bptt_range(
                ps, gs, opt_arrays.ms, opt_arrays.vs, opt_arrays.steps, opt_arrays.kind, opt_arrays.hyper,
                self.loss_kind, self.alpha, net.n_in, net.n_hidden, net.n_out, self.k,
                tuple(b[k].reshape(-1) for k in ORDER), b["H"], b["D"], b["DU"], b["S"], hv, seq.xs, seq.ys,
                seq.mask, t0, t1, n_seq, every, o.tw, o.full, losses)
        return self._end(o, state, {"h": h}, losses, updates, full, tw, t1, n_seq)


def build(net: object, rule: object) -> BPTTEngine | None:
    """The engine for ``rule`` on ``net``: BPTT or TBPTT (not a subclass) on the rate RNN (not a subclass) with
    the loss mse or ce; ``None`` otherwise."""
    if type(net) is not RateRNN or type(rule) not in (BPTT, TBPTT) or rule.loss not in LOSSES:
        return None
    return BPTTEngine(net, rule)
