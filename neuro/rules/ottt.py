"""Online training through time (OTTT): Xiao, Meng, Zhang, He & Lin 2022, "Online Training Through Time
for Spiking Neural Networks", NeurIPS (arXiv:2210.04195), Sec. 4 and its Algorithm 1 (deep networks).

The paper's LIF, ``u[t+1] = lambda (u[t] - V_th s[t]) + W s_pre[t+1]``, detaches the temporal path through
the spikes (reset) and keeps the instantaneous gradient of each step's loss, ``g_u[t] = (dl_t/ds[t])
(ds[t]/du[t])`` (through the spike and the readout of step ``t`` only). The presynaptic trace

    a[t] = lambda a[t-1] + s_pre[t]

then gives the weight gradient ``g_u[t]^T a[t]`` at every step. OTTT_A sums it over the sequence (one update
at the end, ``mode="A"``: the sum is returned by ``finish``); OTTT_O applies it at every step (``mode="O"``:
each step returns its term, the optimizer applies it). In a deep network (Algorithm 1) ``g_u^l[t]`` of layer
``l`` is the instantaneous error backpropagated at step ``t`` down through the layers of that step
(``g_u^l = g_u^(l+1) W^(l+1) ds^l/du^l``), and ``a^l`` is the trace of layer ``l``'s own input.

*Layers.* A network here is ``L`` layers: a :class:`models.stack.Stack` of lif/alif layers, or a single-layer
network, the case ``L = 1`` of the same equations. Layer ``l`` (from 0) reads within the step ``u^l_t`` (``x_t``
for ``l = 0``, else ``z^(l-1)_t``, with ``x_t`` after it where the stack has skip connections) and its previous
spikes ``p^l_(t-1)`` (``net.presynaptic``): ``I^l_t = W^l_in u^l_t + W^l_rec p^l_(t-1)``; the readout reads
``z^R_t`` (the last layer's output; skip: every layer's).

*Read through the cell contract.* The neuron's state is its ``K`` trace fields ``h`` (``net.trace_fields``:
LIF's ``v, i``; ALIF's ``v, i, a``), and ``lambda`` becomes the model's own filter of the current with the
spikes held fixed (``net.linear_filter()``, the same for every neuron and every layer: LIF's sub-threshold
dynamics)::

    h_t = A h_{t-1} + c I_t + c_b b + (spike and reset terms)        A [K, K], c [K], c_b [K]

Per presynaptic source of layer ``l``, ``s^l_t = [u^l_t, p^l_(t-1)]`` [n_in^l + n_l] (the input for ``W^l_in``, the
previous spikes for ``W^l_rec``), the paper's trace ``a[t]`` generalises to the filter's response ``P^l_t``
[K, n_in^l + n_l] (all layers' side by side in one ``P`` [K, sum_l (n_in^l + n_l)]), and the bias gets its own
``Q_t`` [K] (the same for every layer)::

    P^l_t = A P^l_{t-1} + c s^l_t^T                                  (P_0 = 0)
    Q_t   = A Q_{t-1} + c_b (+ c where bias_in_current)              (Q_0 = 0)

``P^l_t[f, i] = d h^l_t[f] / d W^l_ji`` for every unit ``j`` of layer ``l`` in the network defined below (and
``Q_t`` likewise for ``b^l_j``). With the element-wise derivatives of one step read from the layer's model
(``neuron_derivatives``: ``dz_dh`` [n_l, K], ``dz_dI``, ``dz_db``), ``g_y = d l_t / d y_t``
(:func:`neuro.losses.grad`; through this step's readout only) and the instantaneous error of layer ``l``'s
output, backpropagated through this step's layers from the top down (the spatial pass,
:func:`neuro.rules.sltt.spatial_pass`; ``[.]^l`` the columns of layer ``l``, zero for one the readout does not
read; no second term for the top layer)::

    L^l_t = d l_t / d z^l_t = [g_y W_out]^l + (L^(l+1)_t * dz_dI^(l+1)) W^(l+1)_in[:, :n_l]

the estimate of step ``t`` is (summed over the batch; ``g_y`` carries the loss's batch mean)::

    [W^l_in, W^l_rec]:  sum_j L^l_t[j] (dz_dh[j] . P^l_{t-1} + dz_dI[j] s^l_t^T)     = d z^l_t / d W^l, weighted
    b^l:                L^l_t[j] (dz_dh[j] . Q_{t-1} + dz_db[j] (+ dz_dI[j] where bias_in_current))
    W_out: g_y^T zbar_t        b_out: obar_t sum_b g_y
    zbar_t = kappa zbar_{t-1} + z^R_t        obar_t = kappa obar_{t-1} + 1              (kappa = net.readout_decay)

*The paper's form, for LIF.* There the spike reads the trace fields through the membrane before firing
``v~ = vv v + vi i + vI I + ...`` only: ``dz_dh = psi (vv, vi)``, ``dz_dI = psi vI`` (``psi`` the surrogate
derivative, 0 while refractory), so ``dz_dh . P_{t-1} + dz_dI s_t = psi (vv p_{t-1} + vi e_{t-1} + vI s_t) =
psi p_t`` with ``p_t``, ``e_t`` the ``v`` and ``i`` rows of ``P_t``: the term is ``g_I^T a_t`` with ``g_I = d l_t
/ d I_t = L_t psi vI`` (the paper's ``g_u``) and ``a_t = p_t / vI``, which is the paper's ``a[t]`` when the
synaptic current is instantaneous (``exact`` dynamics, ``tau_syn -> 0``: ``a_t = alpha a_{t-1} + s_t``).

*The readout.* The leaky-integrator readout ``y_t = kappa y_{t-1} + W_out z^R_t + b_out`` is a temporal path
too. OTTT's hidden error stays instantaneous (``g_y`` through ``W_out z^R_t`` only), but ``W_out`` and ``b_out``
get the kappa-filtered traces ``zbar_t``, ``obar_t`` (as e-prop does): their gradient is then exact for the
given spikes.

*What OTTT_A equals.* Exactly the BPTT gradient (float64, fixed parameters) of the network in which the
temporal paths through the *spikes* are detached and the *linear* ones are kept: the recurrent input
``W_rec z_{t-1}.detach()``, the reset ``v_t = v~_t - z_t.detach() v_th``, ALIF's adaptation
``a_{t-1}.detach()`` and a readout in which the past spikes enter detached (``y_t = kappa yhat_{t-1} + W_out
z_t + b_out``, ``yhat_t = kappa yhat_{t-1} + W_out z_t.detach() + b_out``), while the fields of the filter
(``v`` and ``i``) carry the gradient from step to step. In a stack, a layer's input from the layer below is a
spike too: it reaches this step's spike with its gradient (``I^l_t = W^l_in z^(l-1)_t + ...``, the spatial
path), while the layer's membrane carries it to later steps detached, as the readout does (the fields of step
``t`` carried on are those of ``W^l_in z^(l-1)_t.detach()``). (Summing that network's backpropagated ``dL/dh``
over time and swapping the sums gives ``sum_t`` of the terms above: the paper's derivation.) This is *not* the
network whose membrane is detached from one step to the next: BPTT of that one is SLTT
(:mod:`neuro.rules.sltt`), whose presynaptic factor is ``s_t``, not the trace. The equality needs
``reset="subtract"`` and ``refractory=0``: a reset to zero and the refractory hold multiply the membrane's
memory by a postsynaptic 0/1 that a presynaptic trace cannot carry; there OTTT ignores them (it is then an
approximation of that network). On a sparse network the backward pass reads the masked weights
(``net.weight``) and every estimate is zero off the masks.

The equations above, step by step, are this file (``fast=False``). By default, on single-layer LIF and ALIF, a
faster computation of the same numbers runs (:mod:`neuro.rules._fast.ottt`: ``window`` steps' outer products
summed as one matrix product, LIF's step written out); mode "O" then hands over each window's sum (when
``window`` steps are pending, at ``flush`` and at ``finish``) instead of each step's term; a stack runs the
definition. Memory O(sum_l (n_in^l + n_l) K B) for the traces, time O(sum_l n_l (n_in^l + n_l) B) per step, both
constant in T. A model whose trace fields have no linear filter (``linear_filter()`` is None: the rate RNN) is
refused.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_choice, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated
from .sltt import layer_key, layers_of, require_layers, spatial_pass

__all__ = ["OTTT", "OTTTState"]

MODES = ("A", "O")


class OTTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)
    P: Tensor  # [B, K, sum_l (n_in^l + n_l)] the filter's response to each layer's sources s^l = [u^l, p^l_prev]
    Q: Tensor  # [K] the filter's response to the bias
    zbar: Tensor  # [B, n_read] kappa-filtered output the readout reads (readout trace)
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
        require_layers(self)
        layer = layers_of(self.net)[0]
        if not layer.trace_fields or layer.linear_filter() is None:
            raise self._refuse("its trace fields have no linear filter of the current (linear_filter() is None: a "
                               "rate net has no membrane filtering spikes), and OTTT's presynaptic traces are that "
                               "filter (models with one: lif, alif)")

    def filter(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model's filter ``(A [K, K], c [K], c_b [K])`` in the dtype and on the device of ``like``; ``c_b``
        includes ``c`` where the bias is a term of the current (a stack's layers share one model, so one filter)."""
        layer = layers_of(self.net)[0]
        f = layer.linear_filter()
        A, c, c_b = (like.new_tensor(v) for v in (f.dh_dh, f.dh_dI, f.dh_db))
        return A, c, (c_b + c if layer.bias_in_current else c_b)

    def sources(self) -> list[slice]:
        """Layer ``l``'s columns of the traces ``P``: its sources ``s^l = [u^l, p^l_prev]``, layer after layer."""
        out, start = [], 0
        for layer in layers_of(self.net):
            out.append(slice(start, start + layer.n_in + layer.n_hidden))
            start = out[-1].stop
        return out

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> OTTTState:
        check_positive("batch", batch, integer=True)
        net = self.net
        new = params["W_out"].detach().new_zeros
        acc = tuple(torch.zeros_like(v.detach()) for v in params.values()) if self.mode == "A" else None
        K, n_read = len(layers_of(net)[0].trace_fields), params["W_out"].shape[1]
        return OTTTState(net=net.init_state(params, batch), P=new(batch, K, self.sources()[-1].stop), Q=new(K),
                         zbar=new(batch, n_read), obar=new(()), acc=acc)

    def step(self, params: Params, state: OTTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, kappa = self.net, self.net.readout_decay
        A, c, c_b = self.filter(state.P)
        sp = spatial_pass(self, params, state.net, x, y, mask)  # this step, and d l_t / d z^l_t for every layer
        g_y = sp.g_y
        g = {"W_out": None, "b_out": None}
        s_all = []
        for l, (layer, cols) in enumerate(zip(layers_of(net), self.sources())):
            L, d = sp.dl_dz[l], sp.d[l]
            s = torch.cat([sp.u[l], sp.p_prev[l]], dim=1)  # s^l_t [B, n_pre^l]
            dz_db = d.dz_db + d.dz_dI if layer.bias_in_current else d.dz_db
            # this step's term: d z^l_t / d theta^l through the traces of step t-1, weighted by L^l_t
            gW = torch.einsum("bj,bjf,bfi->ji", L, d.dz_dh, state.P[:, :, cols]) + (L * d.dz_dI).T @ s
            g[layer_key(net, l, "W_in")] = gW[:, :layer.n_in]
            g[layer_key(net, l, "W_rec")] = gW[:, layer.n_in:]
            g[layer_key(net, l, "b")] = torch.einsum("bj,bjf,f->j", L, d.dz_dh, state.Q) + (L * dz_db).sum(0)
            s_all.append(s)
        s = torch.cat(s_all, dim=1) if len(s_all) > 1 else s_all[0]
        # the traces of step t
        P = torch.einsum("fg,bgi->bfi", A, state.P) + c[:, None] * s[:, None, :]
        Q = A @ state.Q + c_b
        zbar = kappa * state.zbar + sp.z_read
        obar = kappa * state.obar + 1.0
        g["W_out"], g["b_out"] = g_y.T @ zbar, obar * g_y.sum(0)
        grad = {k: g[k] for k in params}
        acc = tuple(a + grad[k] for a, k in zip(state.acc, params)) if self.mode == "A" else None
        new = OTTTState(net=sp.state, P=P, Q=Q, zbar=zbar, obar=obar, acc=acc)
        y_hat = sp.y_hat
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), grad if self.mode == "O" else None)

    def finish(self, params: Params, state: OTTTState) -> tuple[OTTTState, Params | None]:
        """Mode "A": the sum over the sequence (and the sum restarts); mode "O": nothing is pending."""
        if self.mode == "O":
            return state, None
        return state._replace(acc=tuple(torch.zeros_like(a) for a in state.acc)), dict(zip(params, state.acc))
