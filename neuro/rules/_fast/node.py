"""Fast path of the node rules (``np``, ``anp``, ``anp-time``; their definition: :mod:`neuro.rules.node`): the
clean and noisy passes run as a pair, and a window of steps summed as one matrix product per weight.

*The pair.* With the torch forward (no ``forward=`` given) on a model whose current this module knows
(``x W_in^T + p W_rec^T (+ b)``: :class:`models.rate.RateRNN`, :class:`models.lstm.LSTM`,
:class:`models.lif.LIF` and ALIF, with their own ``current``), the clean and the noisy passes of a step
share their products: ``x W_in^T`` is computed once, and the two recurrent products read ``W_rec`` once
(the compiled two-vector product :func:`neuro.rules._matvec.mv2` at batch 1 with one sample, where the
step's two products cost about one; one product of the stacked rows otherwise; one product when the
noisy copies start from the clean state, as in ``anp``). The passes equal two
:class:`~neuro.rules.node.TorchForward` calls up to rounding (a spike could differ where the membrane lies
within rounding of the threshold). For a linear readout (``readout_decay == 0``) the output is the
pre-activation ``a`` itself, and ``a`` is computed only for the rules that read it (``uses_activity``).

*The window.* Each step's estimate is a sum of outer products ``e_m pre_m^T``; written to a fresh
``[n, n_pre]`` matrix at every step it costs more than the forward pass. With ``window = W > 1`` each
step's small tensors are held instead (the noise, the noisy and clean outputs and currents, the
presynaptic activities, and copies of the step's ``x``, ``y``, ``mask``, so that a caller may reuse its
buffers; O(W B samples n) memory). When ``W`` steps are pending, at ``flush`` (an update inside the
sequence) and at ``finish``, the steps' signals are computed for all the window's rows at once (every
operation of the definition acts row by row) and the window's estimate as one matrix product ``[n, W B] @
[W B, n_pre]`` per weight, the ``samples`` rows of a sequence summed first (they share its presynaptic
activity). Summed over a sequence it is the definition's per-step estimate up to rounding. With ``W = 1``
(a backend's forward, by default) the estimate is the definition's, every step.

The state is a NamedTuple of tensors, numbers, a generator and tuples of these (a checkpoint holds it,
pending window included).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_positive
from neuro.rules import _matvec
from neuro.rules._common import new_generator, outer_sum
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.node import AbstractNodeRule, Pass, node_estimate, node_noise, per_sample_loss, repeat

__all__ = ["NodeFast", "Pair", "WindowState", "build", "pair_applies"]


def pair_applies(net: AbstractNetwork) -> bool:
    """Whether :class:`Pair` covers ``net``: a model whose ``current`` is one this module knows (a subclass
    that overrides it is not covered)."""
    from models.lif import LIF  # ALIF is a LIF
    from models.lstm import LSTM
    from models.rate import RateRNN

    return any(isinstance(net, cls) and type(net).current is cls.current for cls in (RateRNN, LSTM, LIF))


def build(rule: AbstractNodeRule) -> FastPath | None:
    """The fast path of a node rule: the pair (torch forward on a covered model) and/or a window > 1; None
    where neither applies (a backend's forward with ``window=1``: the definition runs)."""
    pair = rule.forward is None and pair_applies(rule.net)
    if not pair and rule.window_size == 1:
        return None
    return NodeFast(rule, pair)


class Pair:
    """The clean and noisy passes of one step with their shared products done once (module docstring), for a
    model of :func:`pair_applies`; ``activity``: compute the output pre-activation ``a`` (else ``None``)."""

    def __init__(self, net: AbstractNetwork, activity: bool) -> None:
        self.net, self.activity = net, activity
        self.linear = net.readout_decay == 0

    def __call__(self, params: Params, clean: NamedTuple, noisy: NamedTuple | None, x: Tensor, xi_h: Tensor,
                 xi_y: Tensor, K: int) -> tuple[Pass, Pass]:
        """``(TorchForward(params, clean, x), TorchForward(params, noisy, repeat(x, K), xi_h, xi_y))`` up to
        rounding (``noisy=None``: the noisy copies start from ``clean``). Under ``torch.no_grad()``."""
        net, W_rec = self.net, params["W_rec"]
        xin = x @ params["W_in"].mT
        pc = net.presynaptic(clean)
        if noisy is None:
            rc = pc @ W_rec.mT
            rn = repeat(rc, K)
        else:
            pn = net.presynaptic(noisy)
            if pc.shape[0] == 1 and K == 1 and _matvec.usable(W_rec, pc, pn):
                rc, rn = _matvec.mv2(W_rec, pc, pn)
                rc, rn = rc[None], rn[None]
            else:
                r = torch.cat([pc, pn]) @ W_rec.mT
                rc, rn = r[:pc.shape[0]], r[pc.shape[0]:]
        hc, hn = xin + rc, repeat(xin, K) + rn
        if net.bias_in_current:
            hc, hn = hc + params["b"], hn + params["b"]
        return (self._rest(params, clean, hc, None),
                self._rest(params, noisy if noisy is not None else repeat(clean, K), hn + xi_h, xi_y))

    def _rest(self, params: Params, state: NamedTuple, h: Tensor, xi_y: Tensor | None) -> Pass:
        """The step after the current ``h`` (noise included): neuron, readout, output noise."""
        net = self.net
        state, z = net.neuron(params, state, h)
        state, y = net.readout(params, state, z)
        a = z @ params["W_out"].mT + params["b_out"] if self.activity and not self.linear else None
        if xi_y is not None:
            y = y + xi_y
            a = None if a is None else a + xi_y
            if not self.linear:
                state = net.with_output(state, y)  # a leaky readout integrates the noisy output
        if self.activity and self.linear:
            a = y  # the readout is a = W_out z + b_out itself (the same operations)
        return Pass(state, y, h, a, z)


class WindowState(NamedTuple):
    net: NamedTuple  # the clean network's state [B]
    noisy: NamedTuple | None  # the noisy copies' own state [B samples] (None: restarted every step)
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset
    buf: tuple  # window > 1: ``window`` entries (:class:`Entry`); the first ``k`` are pending (the others are
    #            placeholders or already counted: never read)
    k: int  # steps pending in the window


class Entry(NamedTuple):
    """One step held in the window (M = B samples rows; ``None`` where the rule does not read it)."""

    l: Tensor  # [B] the clean per-sample loss
    y_noisy: Tensor  # [M, n_out] the noisy outputs
    y: Tensor  # [B, n_out] the target (a copy)
    mask: Tensor  # [B] (a copy)
    xi_h: Tensor  # [M, n_cur]
    xi_y: Tensor  # [M, n_out]
    h_noisy: Tensor | None  # [M, n_cur] (rules that read the activity differences)
    h: Tensor | None  # [B, n_cur]
    a_noisy: Tensor | None  # [M, n_out]
    a: Tensor | None  # [B, n_out]
    x: Tensor  # [B, n_in] (a copy)
    p: Tensor  # [B, n_hidden] p_{t-1}
    z: Tensor  # [B, n_hidden] z_t


class NodeFast(FastPath):
    """The node rules' fast path (module docstring): ``pair`` runs the passes as a :class:`Pair`."""

    rule: AbstractNodeRule

    def __init__(self, rule: AbstractNodeRule, pair: bool) -> None:
        super().__init__(rule)
        self.pair = Pair(rule.net, rule.uses_activity) if pair else None
        self.W = rule.window_size

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> WindowState:
        check_positive("batch", batch, integer=True)
        rule = self.rule
        s = rule.net.init_state(params, batch)
        return WindowState(net=s, noisy=repeat(s, rule.samples) if rule.keep_noisy_state else None,
                           gen=new_generator(seed), t=0, buf=self._empty_window(params, batch), k=0)

    def _empty_window(self, params: Params, batch: int) -> tuple:
        """``window`` placeholder entries (one shared set of zero tensors; only the first ``k`` are read)."""
        if self.W == 1:
            return ()
        rule, net, w = self.rule, self.rule.net, params["W_in"]
        M, n_cur, n_out, act = batch * rule.samples, w.shape[0], net.n_out, rule.uses_activity
        z = lambda *d: torch.zeros(*d, dtype=w.dtype, device=w.device)  # noqa: E731
        entry = Entry(l=z(batch), y_noisy=z(M, n_out), y=z(batch, n_out), mask=z(batch).bool(), xi_h=z(M, n_cur),
                      xi_y=z(M, n_out), h_noisy=z(M, n_cur) if act else None, h=z(batch, n_cur) if act else None,
                      a_noisy=z(M, n_out) if act else None, a=z(batch, n_out) if act else None, x=z(batch, net.n_in),
                      p=z(batch, net.n_hidden), z=z(batch, net.n_hidden))
        return (entry,) * self.W

    def step(self, params: Params, state: WindowState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        rule, net, K = self.rule, self.rule.net, self.rule.samples
        B = x.shape[0]
        keep = rule.keep_noisy_state
        with torch.no_grad():
            p = net.presynaptic(state.net)
            if self.pair is not None:
                w = params["W_in"]
                xi_h, xi_y = node_noise(state.gen, B * K, w.shape[0], net.n_out, rule.sigma, w)
                clean, noisy = self.pair(params, state.net, state.noisy if keep else None, x, xi_h, xi_y, K)
            else:
                fwd = rule.fwd
                clean = fwd(params, state.net, x, None, None)
                xi_h, xi_y = node_noise(state.gen, B * K, clean.h.shape[1], clean.y.shape[1], rule.sigma, clean.h)
                noisy = fwd(params, state.noisy if keep else repeat(state.net, K), repeat(x, K), xi_h, xi_y)
            loss = rule.loss or "mse"
            l = per_sample_loss(loss, clean.y, y, mask)
            buf, k, grad = state.buf, state.k, None
            act = rule.uses_activity
            if self.W == 1:  # the definition's estimate of this step
                dl = per_sample_loss(loss, noisy.y, repeat(y, K), repeat(mask, K)) - repeat(l, K)
                dh = noisy.h - repeat(clean.h, K) if act else None
                da = noisy.a - repeat(clean.a, K) if act else None
                e_h, e_y = rule.signal(dl, xi_h, xi_y, dh, da)
                grad = node_estimate(net, params, e_h, e_y, repeat(x, K), repeat(p, K), repeat(clean.z, K))
            else:  # hold the step: its signal and outer products at the window's end
                entry = Entry(l=l, y_noisy=noisy.y, y=y.clone(), mask=mask.clone(), xi_h=xi_h, xi_y=xi_y,
                              h_noisy=noisy.h if act else None, h=clean.h if act else None,
                              a_noisy=noisy.a if act else None, a=clean.a if act else None, x=x.clone(), p=p,
                              z=clean.z)
                buf, k = buf[:k] + (entry,) + buf[k + 1:], k + 1
                if k == self.W:
                    grad, k = self._window(params, buf), 0
            loss_t = l[0] if B == 1 else l.mean()  # the batch mean (B = 1: the row itself)
        out = WindowState(net=clean.state, noisy=noisy.state if keep else None, gen=state.gen, t=state.t + 1,
                          buf=buf, k=k)
        return StepOutput(out, clean.y.detach(), loss_t.detach(), grad)

    def _window(self, params: Params, entries: tuple) -> Params:
        """The summed estimate of the window's ``entries``: the definition's per-step computation done once on
        the window's rows stacked, then one matrix product per weight."""
        rule, K, n_rows = self.rule, self.rule.samples, len(entries)
        cat = lambda *col: torch.cat(col) if n_rows > 1 else col[0]  # noqa: E731
        c = Entry(*(cat(*col) if col[0] is not None else None for col in zip(*entries)))
        loss = rule.loss or "mse"
        dl = per_sample_loss(loss, c.y_noisy, repeat(c.y, K), repeat(c.mask, K)) - repeat(c.l, K)
        dh = c.h_noisy - repeat(c.h, K) if rule.uses_activity else None
        da = c.a_noisy - repeat(c.a, K) if rule.uses_activity else None
        e_h, e_y = rule.signal(dl, c.xi_h, c.xi_y, dh, da)  # [n_rows M, .]
        B = c.x.shape[0] // n_rows
        if K > 1:
            e_h, e_y = e_h.reshape(n_rows * B, K, -1).sum(1), e_y.reshape(n_rows * B, K, -1).sum(1)
        if B * K > 1:  # the mean over the M rows, on the factors (not on the [n, n_pre] products)
            e_h, e_y = e_h / (B * K), e_y / (B * K)
        out = {
            "W_in": e_h.T @ c.x.to(e_h.dtype),
            "W_rec": outer_sum(e_h, c.p),
            "b": e_h.sum(0) if rule.net.bias_in_current else torch.zeros_like(params["b"]),
            "W_out": e_y.T @ c.z,
            "b_out": e_y.sum(0),
        }
        return {k: out[k].to(params[k].dtype) if k in out else torch.zeros_like(params[k]) for k in params}

    def flush(self, params: Params, state: WindowState) -> tuple[WindowState, Params | None]:
        """The pending window's estimate (an update is due): one matrix product per weight."""
        if state.k == 0:
            return state, None
        with torch.no_grad():
            grad = self._window(params, state.buf[:state.k])
        return state._replace(k=0), grad

    def finish(self, params: Params, state: WindowState) -> tuple[WindowState, Params | None]:
        return self.flush(params, state)
