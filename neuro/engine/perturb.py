"""The perturbation rules, compiled: what their engines share (the step's estimate, losses, window slots, the
update at the schedule, the perturbed copies' parameters, and a range's setup); the models' passes are in
:mod:`neuro.engine.rate_perturb` (the rate RNN) and :mod:`neuro.engine.lstm_perturb` (the LSTM).

The rules (each module docstring states its paper's equations) are node perturbation ``np``
(:mod:`neuro.rules.node_perturbation`: Williams 1992; Fiete & Seung 2006; as in Garcia Fernandez, Keemink & van
Gerven 2024, arXiv:2405.08967), activity-based node perturbation ``anp`` (:mod:`neuro.rules.anp`: Dalm, van
Gerven & Ahmad 2023, arXiv:2310.00965) and in time ``anp-time`` (:mod:`neuro.rules.anp_time`: Garcia
Fernandez et al. 2024), and weight perturbation ``wp`` (:mod:`neuro.rules.wp`: Jabri & Flower 1992,
Cauwenberghs 1993; Garcia Fernandez et al. 2024).

*Node rules* (the step of :mod:`neuro.rules.node`). A clean network and ``K`` noisy copies per sequence (rows
``m = s K + k``) run on the same input; the noisy currents (``n_cur`` rows: the rate RNN's ``n``, the LSTM's
``4 n``) get ``xi_h ~ N(0, sigma^2)``, the noisy outputs ``xi_y``::

    I_t = W_in x_t + W_rec h_{t-1} + b                I~_t = W_in x_t + W_rec h~_{t-1} + b + xi_h
    a_t = W_out h_t + b_out                           a~_t = W_out h~_t + b_out + xi_y
    dL_t = L(a~_t) - L(a_t)                           (per row; the clean loss of the row's sequence)
    np:   e_h = dL_t / sigma^2 xi_h,                  e_y = dL_t / sigma^2 xi_y
    anp:  e_h = sqrt(N) dL_t dh / ||dh||^2,           e_y = sqrt(N) dL_t da / ||da||^2
          dh = I~_t - I_t = xi_h + W_rec (h~_{t-1} - h_{t-1}),   da = a~_t - a_t,   N = n_in + n + n_out
          (norm "global": ||dh||^2 + ||da||^2 for both)
    dW_in += e_h x_t^T / M,   dW_rec += e_h h_{t-1}^T / M,   db += e_h / M,   dW_out += e_y h_t^T / M,   db_out += e_y / M

(``M = B K`` rows; ``h_t`` the network's new state from ``I_t``, ``h~_t`` the noisy copy's from ``I~_t``). The
noisy copies keep their own state (np, anp-time) or start every step from the clean one (anp: ``dh = xi_h``).
:func:`node_estimate` computes the signals and the estimate, :func:`clean_losses` and :func:`noisy_loss` the
losses, :func:`record` the window slots, :func:`at_schedule` the update.

*Weight perturbation.* The clean network runs with ``theta``, ``K`` perturbed copies with ``theta + xi_k``
(each its own state), and ``g_t = sum_k (L~_{k,t} - L_t) / (sigma^2 K) xi_k`` (the losses the batch means);
``xi`` is redrawn every step after the first (``resample="step"``) or held from the sequence's start
(``"sequence"``, drawn by the rule's ``reset`` in Python). :func:`perturbed` makes the copies' parameters,
:func:`wp_add` sums the estimate, :func:`wp_apply` adds it to the sum and updates.

Per step: the passes, the losses, the estimate added to the loop's accumulator, and at the loop's schedule
(``(t + 1) % update_every == 0`` or the sequence's last step) the optimizer's update with the sum, which zeroes
it. The noise is the torch path's: drawn per range from the rule's generator by
:class:`neuro.engine.noise.GaussianRows` (one draw per step, as the torch path draws them) and read by the
kernel.

Both forms of the node rules' state are run: the definition's :class:`~neuro.rules.node.NodeState` and the
windowed path's :class:`~neuro.rules._fast.node.WindowState` (the steps of the pending window held as
:class:`~neuro.rules._fast.node.Entry` slots, their estimate made at the window's end). The engine leaves the
latter with no pending window (``k = 0``, every step's estimate already in the accumulator) and its slots as
the torch path fills them: the last step at each window position, recorded by the kernel. :class:`NodeEngine`
and :class:`WPEngine` do a range's setup for any model whose state's fields are its kernel's state arrays.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from neuro._numba import numba
from neuro.contract import AbstractNetwork, Params
from neuro.engine import kernels as K
from neuro.engine.base import Engine, RangeResult, SequenceArrays, Views, view
from neuro.engine.noise import GaussianRows
from neuro.engine.optim import OptimizerArrays
from neuro.rules._fast.node import Entry, WindowState
from neuro.rules.anp import ANP
from neuro.rules.anp_time import ANPTime
from neuro.rules.base import add_into
from neuro.rules.node import AbstractNodeRule, NodeState
from neuro.rules.node_perturbation import NodePerturbation
from neuro.rules.wp import WeightPerturbation, WPState

__all__ = ["NodeEngine", "WPEngine", "applies", "at_schedule", "clean_losses", "node_estimate", "noisy_loss",
           "perturbed", "positions", "record", "wp_add", "wp_apply"]

ORDER = ("W_in", "W_rec", "b", "W_out", "b_out")  # the parameters, in the kernels' order
LOSSES = {"mse": K.MSE, "ce": K.CE}
NP, ANP_LAYER, ANP_GLOBAL = 0, 1, 2  # the node signals
NODE_RULES = (NodePerturbation, ANP, ANPTime)


@numba.njit(cache=True)
def current(W_in, W_rec, b, x, h, u):  # noqa: ANN001, ANN201
    """The current ``u = W_in x + W_rec h + b`` of one row (``u`` [n_cur] written): what a window slot holds
    (the network steps compute it inside their cell's step)."""
    for a in range(u.size):
        u[a] = K.dot(x, W_in[a]) + K.dot(h, W_rec[a]) + b[a]


@numba.njit(cache=True)
def positions(W, vk, t0, t1, n_seq, every):  # noqa: ANN001, ANN201
    """The window position of each step ``t0 .. t1 - 1`` as the windowed path assigns it (``vk`` pending
    before ``t0``; a full window and every update start a new one): ``(last [W], vk after)``, ``last[p]`` the
    range's last step at position ``p`` (-1: none)."""
    last = np.full(W, -1)
    for t in range(t0, t1):
        last[vk] = t
        vk += 1
        if vk == W or K.update_due(t, n_seq, every):
            vk = 0
    return last, vk


@numba.njit(cache=True)
def clean_losses(loss_kind, yc, y, mk, Lc, eps):  # noqa: ANN001, ANN201
    """Each sequence's clean loss into ``Lc`` [B] from the outputs ``yc`` [B, n_out]; returns their mean
    (``eps`` [1, n_out] scratch)."""
    total = K.cast(0.0, yc)
    for s in range(Lc.size):
        Lc[s] = K.loss_and_error(loss_kind, yc[s:s + 1], y[s:s + 1], mk[s:s + 1], eps)
        total += Lc[s]
    return total / K.cast(Lc.size, yc)


@numba.njit(cache=True)
def noisy_loss(loss_kind, W_out, b_out, z, xi_y, y, mk, yn, eps):  # noqa: ANN001, ANN201
    """One noisy row's output ``yn`` [1, n_out] = ``W_out z + b_out + xi_y`` (written) and its loss (returned)
    against its sequence's ``y`` [1, n_out], ``mk`` [1] (``eps`` [1, n_out] scratch)."""
    K.readout(W_out, b_out, z, yn)
    for k in range(yn.shape[1]):
        yn[0, k] += xi_y[k]
    return K.loss_and_error(loss_kind, yn, y, mk, eps)


@numba.njit(cache=True)
def node_estimate(signal, keep, W_rec, noise, Lc, Ln, h, hn, yc, yn, x, z, s2, rn, tn, fm, g_in, g_rec, g_b,  # noqa: ANN001, ANN201
                  g_out, g_bout, dh, diff, da, Eh, Ey):
    """A step's node signals (module docstring), summed over each sequence's rows, and the estimate added to the
    accumulator ``g_*`` (the parameters' shapes). ``noise`` [M, n_cur + n_out] the step's; ``Lc`` [B], ``Ln``
    [M] the clean and noisy losses; ``h`` [B, n], ``hn`` [M, n] the clean and noisy ``h_{t-1}`` (``hn`` read
    where ``keep``); ``yc`` [B, n_out], ``yn`` [M, n_out] the outputs; ``x`` [B, n_in], ``z`` [B, n] = ``h_t``;
    ``s2`` = sigma^2, ``rn`` = sqrt(N), ``tn`` the dtype's tiny, ``fm`` = M; ``dh`` [n_cur], ``diff`` [n],
    ``da`` [n_out], ``Eh`` [n_cur], ``Ey`` [n_out] scratch."""
    nb, n = h.shape
    kk = Ln.size // nb
    n_cur, n_in, n_out = W_rec.shape[0], x.shape[1], yc.shape[1]
    for s in range(nb):
        Eh[:] = 0.0
        Ey[:] = 0.0
        for m in range(s * kk, s * kk + kk):
            dl = Ln[m] - Lc[s]
            if signal == NP:
                c = dl / s2
                for a in range(n_cur):
                    Eh[a] += c * noise[m, a]
                for k in range(n_out):
                    Ey[k] += c * noise[m, n_cur + k]
                continue
            if keep:  # dh = I~ - I: this step's noise and the earlier noise through W_rec
                for j in range(n):
                    diff[j] = hn[m, j] - h[s, j]
                for a in range(n_cur):
                    dh[a] = noise[m, a] + K.dot(W_rec[a], diff)
            else:
                dh[:] = noise[m, :n_cur]
            for k in range(n_out):
                da[k] = yn[m, k] - yc[s, k]
            sq_h, sq_y = K.dot(dh, dh), K.dot(da, da)
            if signal == ANP_GLOBAL:
                sq_h = sq_y = sq_h + sq_y
            c = rn * dl
            ch, cy = c / max(sq_h, tn), c / max(sq_y, tn)
            for a in range(n_cur):
                Eh[a] += ch * dh[a]
            for k in range(n_out):
                Ey[k] += cy * da[k]
        for a in range(n_cur):
            f = Eh[a] / fm
            g_b[a] += f
            row, hp = g_rec[a], h[s]
            for j in range(n):
                row[j] += f * hp[j]
            for j in range(n_in):
                g_in[a, j] += f * x[s, j]
        for k in range(n_out):
            f = Ey[k] / fm
            g_bout[k] += f
            for j in range(n):
                g_out[k, j] += f * z[s, j]


@numba.njit(cache=True)
def record(last, t, signal, keep, W_in, W_rec, b, noise, x, h, hn, z, Lc, yc, yn, rec_l, rec_yn, rec_p, rec_z,  # noqa: ANN001, ANN201
           rec_i, rec_in, rec_a):
    """Step ``t`` into its window slot where ``last`` (:func:`positions`) gives it one: the clean losses, the
    noisy outputs, ``h_{t-1}``, ``z = h_t``, and (where ``signal != NP``) the clean and noisy currents and the
    clean output (arguments as :func:`node_estimate`)."""
    pos = -1
    for p in range(last.size):
        if last[p] == t:
            pos = p
    if pos < 0:
        return
    rec_l[pos] = Lc
    rec_yn[pos] = yn
    rec_p[pos] = h
    rec_z[pos] = z
    if signal != NP:
        rec_a[pos] = yc
        kk = yn.shape[0] // Lc.size
        for m in range(yn.shape[0]):
            s = m // kk
            current(W_in, W_rec, b, x[s], h[s], rec_i[pos, s])
            current(W_in, W_rec, b, x[s], hn[m] if keep else h[s], rec_in[pos, m])
            for a in range(rec_in.shape[2]):
                rec_in[pos, m, a] += noise[m, a]


@numba.njit(cache=True)
def at_schedule(ps, acc, ms, vs, steps, opt_kind, hyper, t, n_seq, every):  # noqa: ANN001, ANN201
    """The optimizer's update with the accumulator ``acc`` (then zeroed) after step ``t`` where the loop's
    schedule has one; returns whether it did."""
    if K.update_due(t, n_seq, every):
        K.apply_update(opt_kind, ps, acc, ms, vs, steps, hyper)
        return True
    return False


@numba.njit(cache=True)
def perturbed(ps, xi_r, offs, pert):  # noqa: ANN001, ANN201
    """``pert[k] = theta + xi_r[k]`` for each perturbed copy ``k`` (``offs`` [6]: the parameters' offsets)."""
    for k in range(pert.shape[0]):
        for i in range(5):
            p, a0 = ps[i], offs[i]
            for j in range(p.size):
                pert[k, a0 + j] = p[j] + xi_r[k, a0 + j]


@numba.njit(cache=True)
def wp_add(g, c, e, first):  # noqa: ANN001, ANN201
    """``g += c e`` (``first``: ``g = c e``): one perturbed copy's term of the estimate."""
    if first:
        for j in range(g.size):
            g[j] = c * e[j]
    else:
        for j in range(g.size):
            g[j] += c * e[j]


@numba.njit(cache=True)
def wp_apply(update, clean, ps, acc, g, offs, ms, vs, steps, opt_kind, hyper):  # noqa: ANN001, ANN201
    """The step's estimate ``g`` (flat, ``offs``) to the sum, and where ``update`` the optimizer's step with it;
    ``clean``: the sum is zero (the previous step updated), so the update takes ``g`` itself and the accumulator
    stays untouched."""
    if update and clean:
        K.apply_update(opt_kind, ps, (g[offs[0]:offs[1]], g[offs[1]:offs[2]], g[offs[2]:offs[3]],
                                      g[offs[3]:offs[4]], g[offs[4]:offs[5]]), ms, vs, steps, hyper)
        return
    for i in range(5):
        gi, a0 = acc[i], offs[i]
        for j in range(gi.size):
            gi[j] += g[a0 + j]
    if update:
        K.apply_update(opt_kind, ps, acc, ms, vs, steps, hyper)


class _Arrays:
    """The parameters, the accumulator and the optimizer's state as the kernels' arrays (the parameters' and
    the accumulator's views made once while their tensors stay the same); the network's ``fixed_params`` are
    held (:meth:`OptimizerArrays.of`)."""

    def __init__(self, fixed: tuple[str, ...] = ()) -> None:
        self.params, self.acc = Views(), Views()
        self.held = tuple(k in fixed for k in ORDER)

    def __call__(self, params: Params, acc: Params, opt: torch.optim.Optimizer) -> tuple:
        o = OptimizerArrays.of(opt, [params[k] for k in ORDER], self.held)
        return (self.params([params[k] for k in ORDER]), self.acc([acc[k] for k in ORDER]), o.ms, o.vs, o.steps,
                o.kind, o.hyper)


def _fields(s: NamedTuple) -> list[torch.Tensor]:
    """A network state's tensors as contiguous copies (the kernel's arrays, changed in place)."""
    return [v.detach().clone().contiguous() for v in s]


class _PerturbEngine(Engine):
    """What the node and weight perturbation engines share: the network, the rule, the loss, the parameters'
    and optimizer's arrays, the noise buffer, and the model's kernel (``kernel``) with its own leading
    arguments (``model_args``: the rate RNN's ``alpha``; none for the LSTM; :meth:`model_arguments` gives them
    per range)."""

    def __init__(self, net: AbstractNetwork, rule: AbstractNodeRule | WeightPerturbation, kernel: Callable,
                 model_args: tuple = ()) -> None:
        self.net, self.rule, self.kernel, self.model_args = net, rule, kernel, model_args
        self.loss_kind = LOSSES[rule.loss]
        self._arrays, self._noise = _Arrays(net.fixed_params), GaussianRows()

    def model_arguments(self, params: Params, t0: int) -> tuple:
        """The model kernel's own arguments for a range from step ``t0`` of a sequence: ``model_args``."""
        return self.model_args


class NodeEngine(_PerturbEngine):
    """A node rule's kernel (:func:`neuro.engine.rate_perturb.node_range` or the LSTM's) for one ``np``, ``anp``
    or ``anp-time`` rule on one network whose state's fields are the kernel's state arrays, in order (module
    docstring)."""

    def __init__(self, net: AbstractNetwork, rule: AbstractNodeRule, kernel: Callable, model_args: tuple = ()) -> None:
        super().__init__(net, rule, kernel, model_args)
        self.signal = NP if not rule.uses_activity else ANP_LAYER if rule.norm == "layer" else ANP_GLOBAL
        self._left: tuple[NamedTuple, int] | None = None  # the state handed out mid-sequence, its window position

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        net, rule = self.net, self.rule
        n, n_cur, n_out, keep = net.n_hidden, params["W_in"].shape[0], net.n_out, rule.keep_noisy_state
        windowed = isinstance(state, WindowState)
        W = len(state.buf) if windowed else 0
        vk = 0
        if windowed:
            vk = self._left[1] if self._left is not None and self._left[0] is state else state.k
            if state.k > 0:  # a window left pending by the torch path: its estimate to the sum first
                state, g = rule.flush(params, state)
                add_into(acc, g)
        clean = _fields(state.net)
        nb, dtype = clean[0].shape[0], clean[0].dtype
        M = nb * rule.samples
        noisy = _fields(state.noisy) if keep else [torch.empty(M, n, dtype=dtype) for _ in clean]
        xi = self._noise(state.gen, t1 - t0, (M * (n_cur + n_out),), rule.sigma, dtype).reshape(t1 - t0, M, -1)
        if W > 1:
            last, vk_end = positions(W, vk, t0, t1, n_seq, every)
        else:
            last, vk_end = np.full(0, -1), 0
        act, w = self.signal != NP, (len(last),)
        rec = [np.empty(w + s, view(xi).dtype) for s in
               ((nb,), (M, n_out), (nb, n), (nb, n), (nb, n_cur) if act else (0, 0), (M, n_cur) if act else (0, 0),
                (nb, n_out) if act else (0, 0))]
        losses = np.empty(t1 - t0, view(xi).dtype)
        updates, full = self.kernel(*self._arrays(params, acc, opt), self.loss_kind, *self.model_arguments(params, t0),
                                    self.signal, keep, float(rule.sigma) ** 2, float(net.n_in + n + n_out) ** 0.5,
                                    float(torch.finfo(dtype).tiny), *map(view, clean), *map(view, noisy), view(xi),
                                    seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every, last, *rec, losses)
        State = type(state.net)
        s_net, s_noisy, steps = State(*clean), State(*noisy) if keep else None, state.t + t1 - t0
        if not windowed:
            out = NodeState(net=s_net, noisy=s_noisy, gen=state.gen, t=steps)
        else:
            buf = self._slots(list(state.buf), rec, last, t0, t1, xi, seq, n_cur)
            out = WindowState(net=s_net, noisy=s_noisy, gen=state.gen, t=steps, buf=tuple(buf), k=0)
        self._left = (out, int(vk_end)) if t1 < n_seq else None
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))

    def _slots(self, buf: list, rec: list, last: np.ndarray, t0: int, t1: int, xi: torch.Tensor,
               seq: SequenceArrays, n_cur: int) -> list:
        """``buf`` with the window slots the range filled (``last[p] >= 0``: step ``last[p]``), as the windowed
        path holds them: views of the range's own tensors (the ``rec`` arrays, made for this range, and copies
        of the noise and of the range's inputs, targets and mask), made once per range."""
        if not (last >= 0).any():
            return buf
        act = self.signal != NP
        l, yn, hp, z, i_c, i_n, a = map(torch.from_numpy, rec)
        xh, xy = xi[:, :, :n_cur].clone(), xi[:, :, n_cur:].clone()
        xs, ys = torch.from_numpy(seq.xs[t0:t1].copy()), torch.from_numpy(seq.ys[t0:t1].copy())
        mask = torch.from_numpy(seq.mask[t0:t1] != 0)
        for p, t in enumerate(last.tolist()):
            if t >= 0:
                r = t - t0
                buf[p] = Entry(l=l[p], y_noisy=yn[p], y=ys[r], mask=mask[r], xi_h=xh[r], xi_y=xy[r],
                               h_noisy=i_n[p] if act else None, h=i_c[p] if act else None,
                               a_noisy=yn[p] if act else None, a=a[p] if act else None, x=xs[r], p=hp[p], z=z[p])
        return buf


class WPEngine(_PerturbEngine):
    """A weight perturbation kernel (:func:`neuro.engine.rate_perturb.wp_range` or the LSTM's) for one ``wp``
    rule on one network whose state's fields are the kernel's state arrays, in order (module docstring)."""

    #: the most perturbation entries drawn at once: a longer range runs as consecutive parts (the draws, the
    #: updates and the losses are those of one range; a 500-unit network over a 5,000-step range would
    #: otherwise hold 5 GB of noise)
    MAX_DRAWN = 1 << 25

    def run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
            t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        per_step = self.rule.samples * sum(params[k].numel() for k in ORDER)
        cap = max(1, self.MAX_DRAWN // per_step)
        if t1 - t0 <= cap:
            return self._run(params, state, acc, opt, seq, t0, t1, n_seq, every)
        parts = []
        for a in range(t0, t1, cap):
            parts.append(self._run(params, state, acc, opt, seq, a, min(t1, a + cap), n_seq, every))
            state = parts[-1].state
        return RangeResult(state=state, losses=np.concatenate([r.losses for r in parts]),
                           updates=sum(r.updates for r in parts), pending=parts[-1].pending)

    def _run(self, params: Params, state: NamedTuple, acc: Params, opt: torch.optim.Optimizer, seq: SequenceArrays,
             t0: int, t1: int, n_seq: int, every: int) -> RangeResult:
        rule, nk = self.rule, self.rule.samples
        names = tuple(params)  # ORDER, then the network's local_params (never perturbed: their xi 0)
        if names[:5] != ORDER or set(names[5:]) != set(self.net.local_params):
            raise ValueError(f"parameters {names} are invalid for the compiled wp engine: expected {ORDER}")
        shapes = [tuple(params[k].shape) for k in ORDER]
        sizes = [int(np.prod(s)) for s in shapes]
        offs = np.cumsum([0, *sizes])
        clean = _fields(state.net)
        noisy = [torch.stack([s[i].detach() for s in state.noisy]).contiguous() for i in range(len(clean))]
        dtype = clean[0].dtype
        drawn = sum(1 for t in range(state.t, state.t + t1 - t0) if t > 0) if rule.resample == "step" else 0
        xi0 = torch.stack([torch.cat([e.reshape(-1) for e in xi_k[:5]]) for xi_k in state.xi])[None].to(dtype)
        new = self._draws(state.gen, drawn, sizes, nk, offs, dtype)
        xi = torch.cat([xi0, new]).contiguous()
        losses = np.empty(t1 - t0, view(xi).dtype)
        updates, full, r = self.kernel(*self._arrays(params, acc, opt), self.loss_kind, *self.model_arguments(params, t0),
                                       float(rule.sigma) ** 2 * nk, *map(view, clean), *map(view, noisy), view(xi),
                                       offs, drawn > 0, state.t, seq.xs, seq.ys, seq.mask, t0, t1, n_seq, every,
                                       losses)
        xi_out = state.xi if r == 0 else tuple(
            (*(xi[r, k, offs[i]:offs[i + 1]].reshape(shapes[i]).clone() for i in range(5)), *state.xi[k][5:])
            for k in range(nk))
        State = type(state.net)
        out = WPState(net=State(*clean), noisy=tuple(State(*(v[k].clone() for v in noisy)) for k in range(nk)),
                      xi=xi_out, gen=state.gen, t=state.t + t1 - t0)
        return RangeResult(state=out, losses=losses, updates=int(updates), pending=bool(full))

    def _draws(self, gen: torch.Generator, rows: int, sizes: list[int], nk: int, offs: np.ndarray,
               dtype: torch.dtype) -> torch.Tensor:
        """``rows`` steps' perturbations [rows, K, P] as the rule draws them: each copy's parameters in order,
        but the network's ``fixed_params``, which are not drawn and stay 0."""
        drawn = [k not in self.net.fixed_params for k in ORDER]
        new = self._noise(gen, rows, [s for s, d in zip(sizes, drawn) if d] * nk, self.rule.sigma, dtype)
        if all(drawn):
            return new.reshape(rows, nk, int(offs[-1]))
        new = new.reshape(rows, nk, sum(s for s, d in zip(sizes, drawn) if d))
        out = torch.zeros(rows, nk, int(offs[-1]), dtype=new.dtype)
        o = 0
        for i, d in enumerate(drawn):
            if d:
                out[:, :, offs[i]:offs[i + 1]] = new[:, :, o:o + sizes[i]]
                o += sizes[i]
        return out


def applies(net: AbstractNetwork, cls: type, rule: object) -> bool:
    """Whether a perturbation engine runs ``rule`` on ``net``: the network of class ``cls`` (not a subclass),
    the rule ``np``, ``anp``, ``anp-time`` or ``wp`` (not a subclass) with the torch forward (no ``forward=``)
    and the loss mse or ce."""
    return (type(net) is cls and type(rule) in (*NODE_RULES, WeightPerturbation)
            and getattr(rule, "loss", None) in LOSSES and rule.forward is None)
