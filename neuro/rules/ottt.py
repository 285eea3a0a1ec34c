"""Online training through time (OTTT): Xiao, Meng, Zhang, He & Lin 2022, "Online Training Through Time
for Spiking Neural Networks", NeurIPS (arXiv:2210.04195), Sec. 4.

The paper's LIF, ``u[t+1] = lambda (u[t] - V_th s[t]) + W s_pre[t+1]``, detaches the temporal path through
the spikes (reset) and keeps the instantaneous gradient of each step's loss, ``g_u[t] = (dl_t/ds[t])
(ds[t]/du[t])`` (through the spike and the readout of step ``t`` only). The presynaptic trace

    a[t] = lambda a[t-1] + s_pre[t]

then gives the weight gradient ``g_u[t]^T a[t]`` at every step. OTTT_A sums it over the sequence
(one update at the end, ``mode="A"``: the sum is returned by ``finish``); OTTT_O applies it at every step
(``mode="O"``: each step returns its term, the optimizer applies it).

*The trace for our LIF.* Our membrane sees the presynaptic input through a synaptic current as well
(:mod:`models.lif`, ``dynamics`` exact, euler or lava), so the trace generalises to the linear
sub-threshold filter of the presynaptic input. With the coefficients of ``net.subthreshold()``
(``v~ = vv v + vi i + vI I + vb b + c``, ``i' = ii i + iI I``), per presynaptic source ``s`` (the
inputs ``x_t`` for ``W_in``, the previous spikes ``z_{t-1}`` for ``W_rec``)::

    p_t = vv p_{t-1} + vi e_{t-1} + vI s_t        e_t = ii e_{t-1} + iI s_t      (p_0 = e_0 = 0)
    a_t = p_t / vI                                (the membrane's response to s, normalised)
    q_t = vv q_{t-1} + vb                          (the same for the bias b)

``p_t = d v~_t / d W`` in the network defined below, ``a_t`` is the paper's ``a[t]`` when the synaptic
current is instantaneous (``exact`` with ``tau_syn -> 0``: ``a_t = alpha a_{t-1} + s_t``). With
``g_I = d l_t / d I_t`` (instantaneous: through one step from the detached state; written out,
:func:`neuro.rules.sltt.local_errors`, or by autograd with ``window=1``) and
``g_v = g_I / vI = d l_t / d v~_t``, the estimate of step ``t`` is (``g_I^T a_t = g_v^T p_t``; summed over
the batch, ``g`` carries the batch mean of the loss)::

    W_in: g_I^T a_t(x)     W_rec: g_I^T a_t(z)     b: q_t sum_b g_v
    W_out: g_y^T zbar_t    b_out: obar_t sum_b g_y
    zbar_t = kappa_out zbar_{t-1} + z_t        obar_t = kappa_out obar_{t-1} + 1

*The readout.* The leaky-integrator readout ``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` is a temporal
path too. OTTT's hidden error stays instantaneous (``g_y = d l_t / d y_t`` through ``W_out z_t`` only), but
``W_out`` and ``b_out`` get the kappa-filtered traces ``zbar_t``, ``obar_t`` (as e-prop does): their
gradient is then exact for the given spikes.

*What OTTT_A equals.* Exactly the BPTT gradient (float64, fixed parameters) of the network in which
the temporal paths through the *spikes* are detached and the *linear* ones are kept: the recurrent
input ``W_rec z_{t-1}.detach()``, the reset ``v_t = v~_t - z_t.detach() v_th``, ALIF's adaptation
``a_{t-1}.detach()`` and a readout in which the past spikes enter detached
(``y_t = kappa_out yhat_{t-1} + W_out z_t + b_out``, ``yhat_t = kappa_out yhat_{t-1} + W_out z_t.detach()
+ b_out``), while ``v`` and ``i`` carry the gradient from step to step. (Summing the backpropagated
``dL/dv~`` of that network over time and swapping the sums gives ``sum_t g_v[t] p_t``; the paper's
derivation.) This is *not* the network whose membrane is detached from one step to the next:
BPTT of that one is SLTT (:mod:`neuro.rules.sltt`), whose presynaptic factor is ``s_t``, not the trace.
The equality needs ``reset="subtract"`` and ``refractory=0``: a reset to zero (``v_t = v~ (1 - z)``)
and the refractory hold multiply the membrane's memory by a postsynaptic 0/1 that a presynaptic trace
cannot carry; there OTTT ignores them (it is then an approximation of that network).

*The window.* Every step's ``W_in``/``W_rec`` term is an outer product over ``[n, n_in + n]``; written out at
every step it costs more than the forward pass. With ``window = W > 1`` the rule keeps each step's factors
(``g_v = g_I / vI`` [B, n], the trace ``p_t`` [B, n_in + n], ``q_t``, ``g_y``, ``zbar_t``, ``obar_t``) and sums the
window as one matrix product ``[n, W B] @ [W B, n_in + n]`` (``g_v^T p_t = g_I^T a_t``). Mode "O" returns that
sum when ``W`` steps are pending and at :meth:`OTTT.flush` (an update is due) and :meth:`OTTT.finish`; mode "A"
adds it to its running sum (returned by ``finish``; ``flush`` gives nothing: the sum belongs to the sequence).
Summed, the estimates equal the per-step path's (``window=1``, the reference) up to rounding.

Memory O((n_in + n) B W) for the traces and the window, time O(n (n_in + n) B) per step, both constant in T.
Needs LOCAL: element-wise derivatives of one step and presynaptic traces. Models: ``lif``, ``alif``
(the readout leak ``kappa_out`` and ``subthreshold()`` of :class:`models.lif.LIF`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput, zeros_like_params
from ._common import outer_sum
from .sltt import local_errors

__all__ = ["OTTT", "OTTTState"]

MODES = ("A", "O")


class OTTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    p: Tensor  # [B, n_in + n] membrane response to the presynaptic sources (x_t, z_{t-1})
    e: Tensor  # [B, n_in + n] synaptic-current part of that response
    q: Tensor  # [] the bias trace
    zbar: Tensor  # [B, n] kappa_out-filtered spikes (readout trace)
    obar: Tensor  # [] kappa_out-filtered ones (b_out trace)
    acc: Params | None  # mode "A": the sum of the per-step estimates so far; mode "O": None
    buf: tuple  # window > 1: ``window`` entries (g_v, p, q, g_y, zbar, obar); the first ``k`` are pending
    k: int  # steps pending in the window


def _window_sum(entries: tuple, n_in: int) -> dict[str, Tensor]:
    """The estimate summed over ``entries`` (see the module docstring, *The window*)."""
    G, P, Q, Gy, Zb, Ob = (torch.stack(col) for col in zip(*entries))  # [k, B, .] and [k] for q, obar
    k, B = G.shape[:2]
    G2, P2 = G.reshape(k * B, -1), P.reshape(k * B, -1)
    return {"W_in": G2.T @ P2[:, :n_in], "W_rec": outer_sum(G2, P2[:, n_in:]), "b": Q @ G.sum(1),
            "W_out": Gy.reshape(k * B, -1).T @ Zb.reshape(k * B, -1), "b_out": Ob @ Gy.sum(1)}


@dataclasses.dataclass(frozen=True)
class OTTT(AbstractRule):
    """OTTT: instantaneous membrane gradient times the presynaptic trace; ``mode`` "A" (sum at ``finish``) or "O";
    ``window``: steps whose outer products are summed as one matrix product (``1``: every step)."""

    mode: str = "A"
    window: int = 64

    name = "ottt"
    needs = Needs.LOCAL
    supports = ("lif", "alif")

    def __post_init__(self) -> None:
        if not getattr(self.net, "spiking", True):
            raise ValueError(f"rule 'ottt' does not support model {self.net.name!r}: OTTT on a rate net with no "
                             f"spikes has no membrane nor presynaptic spike trace; it supports "
                             f"{', '.join(self.supports)}")
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        check_positive("window", self.window, integer=True)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> OTTTState:
        net_state = self.net.init_state(params, batch)
        z = net_state.z
        pre = z.new_zeros(batch, self.net.n_in + self.net.n_hidden)
        acc = zeros_like_params({k: v.detach() for k, v in params.items()}) if self.mode == "A" else None
        buf = ()
        if self.window > 1:  # placeholders (never read), so that the state's structure does not change
            zero = z.new_zeros(())
            buf = ((torch.zeros_like(z), pre, zero, net_state.y, z, zero),) * self.window
        return OTTTState(net=net_state, p=pre, e=pre.clone(), q=z.new_zeros(()), zbar=torch.zeros_like(z),
                         obar=z.new_zeros(()), acc=acc, buf=buf, k=0)

    def step(self, params: Params, state: OTTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        c = self.net.subthreshold()
        kappa = self.net.kappa_out
        ns = state.net
        # traces of step t (presynaptic sources of I_t: x_t and z_{t-1})
        s = torch.cat([x.to(state.p.dtype), ns.z], dim=1)
        p = c.vv * state.p + c.vi * state.e + c.vI * s
        e = c.ii * state.e + c.iI * s
        q = c.vv * state.q + c.vb
        if self.window > 1:  # the errors written out (no autograd), the outer products held back
            with torch.no_grad():  # params are only read: no graph, no detached copies needed
                I = self.net.current(params, ns, x)
            ns, z, y_hat, l, g_v, g_y = local_errors(self.net, self.loss or "mse", params, ns, I, y, mask)
            zbar = kappa * state.zbar + z
            obar = kappa * state.obar + 1.0
            buf, k = state.buf, state.k
            buf, k = buf[:k] + ((g_v, p, q, g_y, zbar, obar),) + buf[k + 1:], k + 1
            state = OTTTState(net=ns, p=p, e=e, q=q, zbar=zbar, obar=obar, acc=state.acc, buf=buf, k=k)
            grad = None
            if k == self.window:
                state, grad = self._close(params, state)
            return StepOutput(state, y_hat, l, grad)
        # the reference path: autograd through one step from the detached state to I_t and y_t
        pd = {k: v.detach() for k, v in params.items()}
        with torch.enable_grad():
            I = self.net.current(pd, ns, x).detach().requires_grad_(True)
            ns, z = self.net.neuron(pd, ns, I)
            ns, y_hat = self.net.readout(pd, ns, z)
            l = self.loss_fn(y_hat, y, mask)
            if l.requires_grad:
                g_I, g_y = torch.autograd.grad(l, [I, y_hat], allow_unused=True)
            else:
                g_I = g_y = None
        g_I = torch.zeros_like(I) if g_I is None else g_I.detach()
        g_y = torch.zeros_like(y_hat) if g_y is None else g_y.detach()
        z = z.detach()
        zbar = kappa * state.zbar + z
        obar = kappa * state.obar + 1.0
        g_v = g_I / c.vI
        ns = type(ns)(*(v.detach() for v in ns))
        # the reference path: this step's outer products
        a = p / c.vI
        n_in = self.net.n_in
        grad = {"W_in": g_I.T @ a[:, :n_in], "W_rec": g_I.T @ a[:, n_in:], "b": q * g_v.sum(0),
                "W_out": g_y.T @ zbar, "b_out": obar * g_y.sum(0)}
        grad = {k: grad[k].to(pd[k].dtype) for k in pd}  # the params' key order
        acc = {k: state.acc[k] + g for k, g in grad.items()} if self.mode == "A" else None
        state = OTTTState(net=ns, p=p, e=e, q=q, zbar=zbar, obar=obar, acc=acc, buf=state.buf, k=0)
        return StepOutput(state, y_hat.detach(), l.detach(), None if self.mode == "A" else grad)

    def _close(self, pd: Params, state: OTTTState) -> tuple[OTTTState, Params | None]:
        """The pending window summed: returned (mode "O") or added to the running sum (mode "A")."""
        if state.k == 0:
            return state, None
        g = _window_sum(state.buf[:state.k], self.net.n_in)
        state = state._replace(k=0)
        if self.mode == "O":
            return state, {k: g[k].to(pd[k].dtype) for k in pd}
        return state._replace(acc={k: state.acc[k] + g[k] for k in pd}), None

    def flush(self, params: Params, state: OTTTState) -> tuple[OTTTState, Params | None]:
        """Mode "O": the pending window's estimate (an update is due). Mode "A": nothing (its sum is the
        sequence's; the window is folded into it)."""
        return self._close({k: v.detach() for k, v in params.items()}, state)

    def finish(self, params: Params, state: OTTTState) -> tuple[OTTTState, Params | None]:
        state, g = self._close({k: v.detach() for k, v in params.items()}, state)
        if self.mode == "O":
            return state, g
        return state._replace(acc=zeros_like_params(state.acc)), state.acc
