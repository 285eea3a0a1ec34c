"""Online training through time (OTTT): Xiao, Meng, Zhang, He & Lin 2022, "Online Training Through Time
for Spiking Neural Networks", NeurIPS (arXiv:2210.04195), Sec. 4.

The paper's LIF, ``u[t+1] = lambda (u[t] - V_th s[t]) + W s_pre[t+1]``, detaches the temporal path through
the spikes (reset) and keeps the instantaneous gradient of each step's loss, ``g_u[t] = (dl_t/ds[t])
(ds[t]/du[t])`` (through the spike and the readout of step ``t`` only). The presynaptic trace

    a[t] = lambda a[t-1] + s_pre[t]

then gives the weight gradient ``g_u[t]^T a[t]`` at every step. OTTT_A sums it over the sequence (one update
at the end, ``mode="A"``: the sum is returned by ``finish``); OTTT_O applies it at every step (``mode="O"``:
each step returns its term, the optimizer applies it).

*Read through the cell contract.* The neuron's state is its ``K`` trace fields ``h`` (``net.trace_fields``:
LIF's ``v, i``; ALIF's ``v, i, a``), and ``lambda`` becomes the model's own filter of the current with the
spikes held fixed (``net.linear_filter()``, the same for every neuron: LIF's sub-threshold dynamics)::

    h_t = A h_{t-1} + c I_t + c_b b + (spike and reset terms)        A [K, K], c [K], c_b [K]

Per presynaptic source ``s_t = [x_t, p_{t-1}]`` [n_in + n] (the input for ``W_in``; ``p = net.presynaptic``,
the previous spikes, for ``W_rec``), the paper's trace ``a[t]`` generalises to the filter's response ``P_t``
[K, n_in + n], and the bias gets its own ``Q_t`` [K]::

    P_t = A P_{t-1} + c s_t^T                                        (P_0 = 0)
    Q_t = A Q_{t-1} + c_b (+ c where net.bias_in_current)            (Q_0 = 0)

``P_t[f, i] = d h_t[f] / d W_ji`` for every postsynaptic unit ``j`` in the network defined below (and ``Q_t``
likewise for ``b_j``). With the element-wise derivatives of one step read from the model
(``net.neuron_derivatives``: ``dz_dh`` [n, K], ``dz_dI``, ``dz_db``) and the instantaneous error of the
step's output ``L_t = d l_t / d z_t = g_y W_out`` (``g_y = d l_t / d y_t``, :func:`neuro.losses.grad`; through
this step's readout only), the estimate of step ``t`` is (summed over the batch; ``g_y`` carries the loss's
batch mean)::

    [W_in, W_rec]:  sum_j L_t[j] (dz_dh[j] . P_{t-1} + dz_dI[j] s_t^T)              = d z_t / d W, weighted
    b:              L_t[j] (dz_dh[j] . Q_{t-1} + dz_db[j] (+ dz_dI[j] where bias_in_current))
    W_out: g_y^T zbar_t        b_out: obar_t sum_b g_y
    zbar_t = kappa zbar_{t-1} + z_t        obar_t = kappa obar_{t-1} + 1              (kappa = net.readout_decay)

*The paper's form, for LIF.* There the spike reads the trace fields through the membrane before firing
``v~ = vv v + vi i + vI I + ...`` only: ``dz_dh = psi (vv, vi)``, ``dz_dI = psi vI`` (``psi`` the surrogate
derivative, 0 while refractory), so ``dz_dh . P_{t-1} + dz_dI s_t = psi (vv p_{t-1} + vi e_{t-1} + vI s_t) =
psi p_t`` with ``p_t``, ``e_t`` the ``v`` and ``i`` rows of ``P_t``: the term is ``g_I^T a_t`` with ``g_I = d l_t
/ d I_t = L_t psi vI`` (the paper's ``g_u``) and ``a_t = p_t / vI``, which is the paper's ``a[t]`` when the
synaptic current is instantaneous (``exact`` dynamics, ``tau_syn -> 0``: ``a_t = alpha a_{t-1} + s_t``).

*The readout.* The leaky-integrator readout ``y_t = kappa y_{t-1} + W_out z_t + b_out`` is a temporal path
too. OTTT's hidden error stays instantaneous (``g_y`` through ``W_out z_t`` only), but ``W_out`` and ``b_out``
get the kappa-filtered traces ``zbar_t``, ``obar_t`` (as e-prop does): their gradient is then exact for the
given spikes.

*What OTTT_A equals.* Exactly the BPTT gradient (float64, fixed parameters) of the network in which the
temporal paths through the *spikes* are detached and the *linear* ones are kept: the recurrent input
``W_rec z_{t-1}.detach()``, the reset ``v_t = v~_t - z_t.detach() v_th``, ALIF's adaptation
``a_{t-1}.detach()`` and a readout in which the past spikes enter detached (``y_t = kappa yhat_{t-1} + W_out
z_t + b_out``, ``yhat_t = kappa yhat_{t-1} + W_out z_t.detach() + b_out``), while the fields of the filter
(``v`` and ``i``) carry the gradient from step to step. (Summing that network's backpropagated ``dL/dh`` over
time and swapping the sums gives ``sum_t`` of the terms above: the paper's derivation.) This is *not* the
network whose membrane is detached from one step to the next: BPTT of that one is SLTT
(:mod:`neuro.rules.sltt`), whose presynaptic factor is ``s_t``, not the trace. The equality needs
``reset="subtract"`` and ``refractory=0``: a reset to zero and the refractory hold multiply the membrane's
memory by a postsynaptic 0/1 that a presynaptic trace cannot carry; there OTTT ignores them (it is then an
approximation of that network).

The equations above, step by step, are this file (``fast=False``). By default a faster computation of the same
numbers runs (:mod:`neuro.rules._fast.ottt`: ``window`` steps' outer products summed as one matrix product,
LIF's step written out); mode "O" then hands over each window's sum (when ``window`` steps are pending, at
``flush`` and at ``finish``) instead of each step's term. Memory O((n_in + n) K B) for the traces, time
O(n (n_in + n) B) per step, both constant in T. A model whose trace fields have no linear filter
(``linear_filter()`` is None: the rate RNN) is refused.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["OTTT", "OTTTState"]

MODES = ("A", "O")


class OTTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    P: Tensor  # [B, K, n_in + n] the filter's response to the presynaptic sources s = [x, p_prev]
    Q: Tensor  # [K] the filter's response to the bias
    zbar: Tensor  # [B, n] kappa-filtered output (readout trace)
    obar: Tensor  # [] kappa-filtered ones (b_out trace)
    acc: tuple | None  # mode "A": the sum of the per-step estimates so far, in the params' order; mode "O": None



@accelerated
@dataclasses.dataclass(frozen=True)
class OTTT(AbstractRule):
    """OTTT (module docstring): the instantaneous error times the presynaptic trace of the model's linear filter;
    ``mode`` "A" (the sum at ``finish``) or "O" (every estimate handed over). ``fast``: the faster computation of
    :mod:`neuro.rules._fast.ottt` (the same numbers) or the equations (``False``); ``window``: its steps per
    window (``1``: every step's term)."""

    mode: str = "A"
    fast: bool = True
    window: int = 64

    name = "ottt"
    needs = Needs.LOCAL

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES)
        check_positive("window", self.window, integer=True)
        net = self.net
        self._require_local_form()
        if not net.trace_fields or net.linear_filter() is None:
            raise self._refuse("its trace fields have no linear filter of the current (linear_filter() is None: a "
                               "rate net has no membrane filtering spikes), and OTTT's presynaptic traces are that "
                               "filter (models with one: lif, alif)")

    def filter(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model's filter ``(A [K, K], c [K], c_b [K])`` in the dtype and on the device of ``like``; ``c_b``
        includes ``c`` where the bias is a term of the current."""
        f = self.net.linear_filter()
        A, c, c_b = (like.new_tensor(v) for v in (f.dh_dh, f.dh_dI, f.dh_db))
        return A, c, (c_b + c if self.net.bias_in_current else c_b)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> OTTTState:
        check_positive("batch", batch, integer=True)
        net = self.net
        new = params["W_rec"].detach().new_zeros
        acc = tuple(torch.zeros_like(v.detach()) for v in params.values()) if self.mode == "A" else None
        return OTTTState(net=net.init_state(params, batch), P=new(batch, len(net.trace_fields), net.n_in + net.n_hidden),
                         Q=new(len(net.trace_fields)), zbar=new(batch, net.n_hidden), obar=new(()), acc=acc)

    def step(self, params: Params, state: OTTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, kappa = self.net, self.net.readout_decay
        p = {k: v.detach() for k, v in params.items()}
        x = x.detach().to(state.P.dtype)
        A, c, c_b = self.filter(state.P)
        s = torch.cat([x, net.presynaptic(state.net)], dim=1)  # s_t [B, n_pre]
        d = net.neuron_derivatives(p, state.net, net.current(p, state.net, x))
        ns, y_hat = net.readout(p, d.state, d.z)
        g_y = losses.grad(self.loss or "mse", y_hat, y, mask)  # d l_t / d y_t [B, n_out]
        L = g_y @ p["W_out"]  # d l_t / d z_t [B, n]
        dz_db = d.dz_db + d.dz_dI if net.bias_in_current else d.dz_db
        # this step's term: d z_t / d theta through the traces of step t-1, weighted by L_t
        gW = torch.einsum("bj,bjf,bfi->ji", L, d.dz_dh, state.P) + (L * d.dz_dI).T @ s
        gb = torch.einsum("bj,bjf,f->j", L, d.dz_dh, state.Q) + (L * dz_db).sum(0)
        # the traces of step t
        P = torch.einsum("fg,bgi->bfi", A, state.P) + c[:, None] * s[:, None, :]
        Q = A @ state.Q + c_b
        zbar = kappa * state.zbar + d.z
        obar = kappa * state.obar + 1.0
        g = {"W_in": gW[:, :net.n_in], "W_rec": gW[:, net.n_in:], "b": gb, "W_out": g_y.T @ zbar,
             "b_out": obar * g_y.sum(0)}
        grad = {k: g[k] for k in params}
        acc = tuple(a + grad[k] for a, k in zip(state.acc, params)) if self.mode == "A" else None
        new = OTTTState(net=ns, P=P, Q=Q, zbar=zbar, obar=obar, acc=acc)
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), grad if self.mode == "O" else None)

    def finish(self, params: Params, state: OTTTState) -> tuple[OTTTState, Params | None]:
        """Mode "A": the sum over the sequence (and the sum restarts); mode "O": nothing is pending."""
        if self.mode == "O":
            return state, None
        return state._replace(acc=tuple(torch.zeros_like(a) for a in state.acc)), dict(zip(params, state.acc))
