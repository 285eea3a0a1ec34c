"""e-prop: eligibility propagation (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020,
"A solution to the learning dilemma for recurrent networks of spiking neurons", Nature Communications
11:3625; public code IGITUGraz/eligibility_propagation).

The gradient is factorised into a learning signal ``L^t_j`` and a filtered eligibility trace ``bar e^t_ji``
(Results, "Mathematical basis for e-prop")::

    dE/dW_ji ~ sum_t L^t_j  bar e^t_ji

Each neuron ``j`` has a hidden state ``h^t_j`` (its ``K`` trace fields, ``net.trace_fields``: rate ``h``; LIF
``v, i``; ALIF ``v, i, a``) updated from ``h^{t-1}_j`` and its input current ``I^t_j = sum_i W_ji pre^t_i``,
``pre^t = [x^t, p^{t-1}]`` (the input and what ``W_rec`` multiplies, ``net.presynaptic``: ``z^{t-1}`` or
``h^{t-1}``). Its one-step derivatives, read from the model (``net.neuron_derivatives``: surrogate spike, reset,
refractory period and adaptation included), are::

    D^t  = dh^t_j / dh^{t-1}_j  [K, K]     c^t  = dh^t_j / dI^t_j  [K]
    Z^t  = dz^t_j / dh^{t-1}_j  [K]        zi^t = dz^t_j / dI^t_j

Eligibility vectors and traces (Methods, "eligibility traces"; the partial derivatives hold ``pre`` fixed:
only the neuron-local part of the recurrent Jacobian is kept; ``z^t`` is computed inside the step from
``h^{t-1}`` and the current, so ``e^t = (dz^t/dh^{t-1}) eps^{t-1} + dz^t/dW``, the paper's quantity)::

    eps^t_ji = D^t eps^{t-1}_ji + c^t pre^t_i                        [K]
    e^t_ji   = Z^t . eps^{t-1}_ji + zi^t pre^t_i
    bar e^t  = kappa bar e^{t-1} + e^t

For ALIF the threshold adaptation ``a`` is one of the fields, which gives the paper's adaptive component
``eps^a`` (``adaptive_eligibility=False`` drops it: :attr:`EProp.adaptation`). The bias ``b`` gets the same
recursions with ``pre = 1`` and its own derivatives (``dh/db``, ``dz/db``, plus ``c``, ``zi`` where ``b`` is a
term of the current: ``net.bias_in_current``).

Readout ``y^t = kappa y^{t-1} + W_out z^t + b_out`` (``kappa = net.readout_decay``: 0 for a linear readout,
the leaky readout's decay for spiking models, the paper's ``F_kappa``): the trace is filtered by it (above),
and ``W_out``, ``b_out`` get their exact gradient ``(dE/dy^t) bar z^t``, ``bar z^t = kappa bar z^{t-1} +
z^t`` (and ``bar 1^t`` for ``b_out``). ``dE/dy^t`` is written out (:func:`neuro.losses.grad`).

Learning signal (symmetric, random and adaptive e-prop of the paper)::

    L^t_j = sum_k B_jk (dE/dy^t_k)           B = W_out^T (symmetric), fixed random (random),
                                               or random and adapted (adaptive, see below)

Adaptive feedback: ``B`` starts random and is then adapted with the readout's own update plus weight
decay (the Kolen & Pollack 1994 scheme, used for mirrored feedback by Akrout et al. 2019; the paper's
adaptive e-prop adapts ``B`` this way, its exact schedule is not reproduced here)::

    B <- B - feedback_lr (g_{W_out}^T + feedback_decay B)

(with plain SGD of the same rate and decay on ``W_out``, ``B - W_out^T`` decays to 0).

The estimate (mean over the batch: ``dE/dy`` carries the 1/B of the loss; each sample has its own traces)
is emitted every step. A faster computation of the same numbers (a window of steps summed as matrix
products, :mod:`neuro.rules._fast.eprop`) runs by default; ``fast=False`` runs the equations above.

*Stacks of layers* (:class:`models.stack.Stack` of rate, LIF or ALIF layers ``l = 0..L-1``; layer ``l`` reads
the output of the layer below of the same step, ``u^l_t = z^{l-1}_t``, ``[z^{l-1}_t, x_t]`` with skip
connections, ``u^0_t = x_t``: the stack's ``layer_input``). The stack is one network of element-wise neurons,
and e-prop's approximation applies to it unchanged: a neuron's eligibility holds fixed everything it receives
from other neurons, its recurrent input ``p^l_{t-1}`` and, above the first layer, the lower layer's ``z^{l-1}_t``
too. Per layer, with the layer's own neuron derivatives at its whole current ``I^l_t`` (the stack's
``complete``) and its own parameters ``W^l_in``, ``W^l_rec``, ``b^l``, the equations above::

    pre^l_t = [u^l_t, p^l_{t-1}]
    eps^l_t = D^l_t eps^l_{t-1} + c^l_t pre^l_t,   e^l_t = Z^l_t . eps^l_{t-1} + zi^l_t pre^l_t
    bar e^l_t = kappa bar e^l_{t-1} + e^l_t,        dE/dW^l ~ sum_t L^l_t bar e^l_t

The learning signal is e-prop's ``dE_t/dz^l_t``, the partial derivative of this step's loss through this step's
readout (no recurrence); in a stack it also runs through the layers above within the step, so it is computed
top-down (``zi^{l+1}_t = dz^{l+1}_t / dI^{l+1}_t``; "columns of layer l": those of its units that the readout
reads, the last layer's, or every layer's with skip connections)::

    symmetric:  L^l_t = (dE/dy^t) W_out[:, columns of layer l]  +  (L^{l+1}_t * zi^{l+1}_t) W^{l+1}_in[:, :n_l]
                (the first term only where the readout reads layer l, the second only below the last layer)
    random:     L^l_t = (dE/dy^t) B^l      B^l [n_out, n_l] fixed, N(0, 1/n_l), drawn from seed + 1000003 l
    adaptive:   as random; the B^l of the layers the readout reads adapt as above, mirroring their columns of
                W_out (the last layer's; every layer's with skip); the others have no readout weights to mirror
                and keep their draw

(random feedback per layer: every layer gets the output error through its own fixed random matrix, as in
direct feedback alignment, Nokland 2016, "Direct feedback alignment provides learning in deep neural networks",
NeurIPS). A single-layer network is the case ``L = 1``: one layer, read by the readout, ``L = (dE/dy) B^T``
with the numbers above. Where the readout has memory (``kappa > 0``), the symmetric signal of a layer below the
readout weighs the filtered trace ``bar e^l_t``, a sum over earlier steps, with step ``t``'s derivatives of the
layers above, while the readout's memory carries each earlier step's own same-step path to the later losses:
an approximation beyond e-prop's that vanishes for the layers the readout reads (``W_out`` is the same at every
step) and with a memoryless readout. ``tests/neuro/rules/test_stack_eprop.py`` holds the rule to RTRL cut to
neuron-local blocks with this learning signal and, with ``kappa = 0``, to BPTT of the network whose
cross-neuron inputs are detached from every neuron's carried state. Depth is crossed within the step only: the
influence of a lower layer's weights on the upper layers' states, which carries to later steps, is not traced
(a recursion across depth that follows it: "Generalising E-prop to Deep Networks", arXiv:2512.24506, 2025).
A stack runs these equations (the windowed path is for one dense layer).

Shapes: ``eps`` [B, n, K, n_in + n], ``bar e`` [B, n, n_in + n]; the feedback is stored as ``B^T``
[n_out, n] (like ``W_out``), so ``L^t = (dE/dy^t) B^T``. A stack: the traces are tuples over the layers (``n``,
``n_in`` the layer's), ``B^T`` is [n_out, n_hidden] (the layers' columns side by side).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from models.stack import Stack
from neuro import losses
from neuro.contract import AbstractNetwork, Derivatives, Params, check_choice, check_positive

from ._common import feedback_matrix
from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["EProp", "EPropState", "Layer"]

FEEDBACKS = ("symmetric", "random", "adaptive")
#: the parameters of a network of local form (neuro.contract): synapses, bias, readout
LOCAL_PARAMS = ("W_in", "W_rec", "b", "W_out", "b_out")


class EPropState(NamedTuple):
    """The rule's state. One layer: the tensors below; a stack: each trace field a tuple of one tensor per layer
    (``n``, ``n_pre`` the layer's), ``zbar`` over the units the readout reads, ``B`` over all units."""

    net: NamedTuple
    eps: Tensor | tuple[Tensor, ...]  # [B, n, K, n_pre] eligibility vectors of the synapses (W_in, W_rec)
    eps_b: Tensor | tuple[Tensor, ...]  # [B, n, K] eligibility vectors of the bias b
    ebar: Tensor | tuple[Tensor, ...]  # [B, n, n_pre] filtered eligibility traces bar e
    ebar_b: Tensor | tuple[Tensor, ...]  # [B, n]
    zbar: Tensor  # [B, n_read] filtered hidden output the readout reads (readout gradient)
    bbar: Tensor  # [] filtered 1 (b_out gradient)
    B: Tensor | None  # [n_out, n_hidden] feedback matrix (None: symmetric, W_out itself)


class Layer(NamedTuple):
    """One layer's step as the rule sees it: its parameter keys' prefix (``""`` for a single-layer network,
    ``"l."`` in a stack), its network, parameters (masked) and ``pre^l_t = [u^l_t, p^l_{t-1}]``, and its neuron's
    derivatives at its whole current ``I^l_t``."""

    key: str
    net: AbstractNetwork
    params: Params
    pre: Tensor  # [B, n_in_l + n_l]
    d: Derivatives


@accelerated
@dataclasses.dataclass(frozen=True)
class EProp(AbstractRule):
    """e-prop (module docstring) on any network of local form with element-wise trace fields (rate, LIF, ALIF),
    or a stack of such layers (:class:`models.stack.Stack`: one set of traces per layer, the learning signal
    of the module docstring's multi-layer form; a single-layer network is its case ``L = 1``).

    ``feedback``: ``"symmetric"`` (B = W_out^T, through the layers above in a stack), ``"random"`` (fixed, drawn
    from ``init``'s seed, N(0, 1/n_l) per layer), ``"adaptive"`` (random, then ``B <- B - feedback_lr (g_Wout^T
    + feedback_decay B)`` on the units the readout reads).
    ``adaptive_eligibility``: ``None`` or ``True`` keep every component; ``False`` drops the components of the
    threshold adaptation (:attr:`adaptation`: ALIF's ``a``), so ``eps^a`` stays 0; on a model without one only
    ``None`` is valid. ``fast``: run the windowed path (:mod:`neuro.rules._fast.eprop`, the same numbers; one
    dense layer only, a stack runs the definition) or the equations (``False``). ``window``: steps per window of
    the windowed path. The rule is declared deterministic (its default feedback is); with random or adaptive
    feedback the estimate depends on ``init``'s seed.
    """

    feedback: str = "symmetric"
    feedback_lr: float = 1e-3
    feedback_decay: float = 1e-2
    adaptive_eligibility: bool | None = None
    fast: bool = True
    window: int = 128

    name = "eprop"
    needs = Needs.LOCAL
    _kept_on_reset = ("B",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_positive("feedback_lr", self.feedback_lr, allow_zero=True)
        check_positive("feedback_decay", self.feedback_decay, allow_zero=True)
        check_positive("window", self.window, integer=True)
        if self.adaptive_eligibility not in (None, True, False):
            raise ValueError(f"adaptive_eligibility={self.adaptive_eligibility!r} is invalid: "
                             "expected None, True or False")
        net = self.net
        if not self.stacked:
            self._require_local_form()
        for layer in self.layers:
            if not layer.local_form:
                raise self._refuse(f"its layers ({layer.name!r}) are not of local form (local_form)")
        first = self.layers[0]
        if not first.trace_fields:
            raise self._refuse("its neuron has no element-wise trace fields (e-prop needs one state per unit, "
                               "driven by one entry of the current)")
        for layer in self.layers:
            shapes = layer.param_shapes()
            extra = sorted(set(shapes) - set(LOCAL_PARAMS))
            if extra or shapes.get("b", (layer.n_hidden,)) != (layer.n_hidden,):
                raise self._refuse(f"its parameters {sorted(shapes)} are not those of local form "
                                   f"({', '.join(LOCAL_PARAMS)}, with b of shape ({layer.n_hidden},))")
        if self.adaptive_eligibility is not None and not self.adaptation:
            raise ValueError(f"adaptive_eligibility={self.adaptive_eligibility!r} is invalid for model {net.name!r}: "
                             "it selects the eligibility of a threshold adaptation (a trace field driven only by the "
                             f"neuron's spikes), and none of its trace fields {first.trace_fields} is one "
                             "(leave it None)")

    # -- the network as layers -------------------------------------------------------------------------
    @property
    def stacked(self) -> bool:
        """Whether the network is a stack of layers (:class:`models.stack.Stack`)."""
        return isinstance(self.net, Stack)

    @functools.cached_property
    def layers(self) -> tuple[AbstractNetwork, ...]:
        """The layers: a stack's, or the network itself (one layer)."""
        return self.net.layers if self.stacked else (self.net,)

    @functools.cached_property
    def slices(self) -> tuple[slice, ...]:
        """Each layer's units among the network's ``n_hidden``."""
        return self.net.slices if self.stacked else (slice(0, self.net.n_hidden),)

    @functools.cached_property
    def readout_units(self) -> slice:
        """The units the readout reads (a stack: its last layer's, or all with skip connections)."""
        return self.net.readout_units if self.stacked else slice(0, self.net.n_hidden)

    @functools.cached_property
    def readout_columns(self) -> tuple[slice | None, ...]:
        """Layer ``l``'s columns of ``W_out`` (None: the readout does not read the layer)."""
        ru, out = self.readout_units, []
        for sl in self.slices:
            inside = ru.start <= sl.start and sl.stop <= ru.stop
            out.append(slice(sl.start - ru.start, sl.stop - ru.start) if inside else None)
        return tuple(out)

    def _per_layer(self, v):
        """A trace field of the state as a tuple over the layers."""
        return tuple(v) if self.stacked else (v,)

    def _packed(self, vs):
        """Per-layer traces as the state keeps them: the tensor itself for one layer, else the tuple."""
        return tuple(vs) if self.stacked else vs[0]

    def neurons(self, p: Params, s: NamedTuple, x: Tensor) -> tuple[list[Layer], NamedTuple, Tensor]:
        """The neurons' step, layer by layer bottom-up: each :class:`Layer` (its ``pre^l_t`` and derivatives at
        ``I^l_t``, the layer below's ``z^{l-1}_t`` completing a stack's current), then the network state after
        the neurons and ``z_t`` of all units."""
        net, i = self.net, self.net.current(p, s, x)
        if not self.stacked:
            d = net.neuron_derivatives(p, s, i)
            return [Layer("", net, p, torch.cat([x, net.presynaptic(s)], 1), d)], d.state, d.z
        out, below = [], None
        for l, layer in enumerate(self.layers):
            lp, ls = net.layer_params(p, l), net.layer_state(s, l)
            d = layer.neuron_derivatives(lp, ls, net.complete(p, i, below, l))
            out.append(Layer(f"{l}.", layer, lp, torch.cat([net.layer_input(x, below, l), layer.presynaptic(ls)], 1), d))
            below = d.z
        state = net.join_states([o.d.state for o in out], getattr(s, "y", None))
        return out, state, torch.cat([o.d.z for o in out], 1)

    # -- learning signal and feedback ----------------------------------------------------------------
    @functools.cached_property
    def adaptation(self) -> tuple[str, ...]:
        """The trace fields of the neuron's threshold adaptation: those driven only by its own spikes, i.e. whose
        update with the spikes held fixed (``net.linear_filter``) reads neither the current, nor the bias, nor
        another field (ALIF's ``a_t = rho a_{t-1} + z_t``: the paper's adaptive component ``eps^a``)."""
        layer = self.layers[0]
        f, K = layer.linear_filter(), len(layer.trace_fields)
        if f is None:
            return ()
        return tuple(name for k, name in enumerate(layer.trace_fields)
                     if f.dh_dI[k] == 0 and f.dh_db[k] == 0 and all(f.dh_dh[k][g] == 0 for g in range(K) if g != k))

    @property
    def dropped(self) -> tuple[str, ...]:
        """The trace fields whose eligibility component is dropped (``adaptive_eligibility=False``)."""
        return self.adaptation if self.adaptive_eligibility is False else ()

    def feedback_init(self, params: Params, seed: int) -> Tensor | None:
        """The feedback ``B^T`` [n_out, n_hidden] at the start: None (symmetric), else layer ``l``'s columns
        N(0, 1/n_l) from seed ``seed + 1000003 l`` (the stack's seed rule for its layers; one layer: ``seed``)."""
        if self.feedback == "symmetric":
            return None
        return torch.cat([feedback_matrix(self.net.n_out, layer.n_hidden, seed + 1000003 * l, params["W_out"])
                          for l, layer in enumerate(self.layers)], 1)  # [n_out, n]: N(0, 1/n_l) per layer

    def feedback_update(self, B: Tensor | None, g_out: Tensor) -> Tensor | None:
        """Adaptive feedback: ``B <- B - feedback_lr (g_Wout + feedback_decay B)`` on the columns of the units the
        readout reads (all of a single layer's); the other layers' columns stay as drawn. Else ``B`` unchanged."""
        if self.feedback != "adaptive":
            return B
        ru = self.readout_units
        if ru == slice(0, B.shape[1]):
            return B - self.feedback_lr * (g_out + self.feedback_decay * B)
        read = B[:, ru]
        return torch.cat([B[:, :ru.start], read - self.feedback_lr * (g_out + self.feedback_decay * read),
                          B[:, ru.stop:]], 1)

    def learning_signals(self, p: Params, B: Tensor | None, dE_dy: Tensor, layers: list[Layer]) -> list[Tensor]:
        """``L^l_t`` [B, n_l] of every layer (module docstring): ``dE/dy B^l`` (random, adaptive), or the
        symmetric ``dE_t/dz^l_t`` through this step's readout and the layers above, top-down."""
        if B is not None:
            return [dE_dy @ B[:, sl] for sl in self.slices]
        out: list[Tensor] = [None] * len(layers)  # type: ignore[list-item]
        for l in reversed(range(len(layers))):
            cols = self.readout_columns[l]
            L = dE_dy @ p["W_out"][:, cols] if cols is not None else None
            if l + 1 < len(layers):  # through layer l+1's current: (L^{l+1} * dz^{l+1}/dI^{l+1}) W^{l+1}_in[:, :n_l]
                up = layers[l + 1]
                n_l = layers[l].net.n_hidden
                via = (out[l + 1] * up.d.dz_dI) @ up.params["W_in"][:, :n_l]
                L = via if L is None else L + via
            out[l] = L
        return out

    def factors(self, d: Derivatives) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(D, c, Z, zi, c_b, zi_b)`` of one step (module docstring) from the model's derivatives ``d``:
        ``D`` [B, n, K, K], ``c`` [B, n, K], ``Z`` [B, n, K], ``zi`` [B, n] and the bias's ``c_b`` [B, n, K],
        ``zi_b`` [B, n] (through the current too where ``bias_in_current``). The rows of the dropped fields are
        0, so their eligibility vectors stay 0."""
        layer = self.layers[0]
        c_b, zi_b = d.dh_db, d.dz_db
        if layer.bias_in_current:
            c_b, zi_b = c_b + d.dh_dI, zi_b + d.dz_dI
        D, c = d.dh_dh, d.dh_dI
        if self.dropped:
            keep = torch.tensor([f not in self.dropped for f in layer.trace_fields], dtype=c.dtype, device=c.device)
            D, c, c_b = D * keep[:, None], c * keep, c_b * keep
        return D, c, d.dz_dh, d.dz_dI, c_b, zi_b

    # -- the rule ------------------------------------------------------------------------------------
    def init(self, params: Params, batch: int = 1, seed: int = 0) -> EPropState:
        check_positive("batch", batch, integer=True)
        net, K = self.net, len(self.layers[0].trace_fields)
        new = params["W_out"].detach().new_zeros
        sizes = [(layer.n_hidden, layer.n_in + layer.n_hidden) for layer in self.layers]  # (n_l, n_pre_l)
        n_read = self.readout_units.stop - self.readout_units.start
        return EPropState(net=net.init_state(params, batch),
                          eps=self._packed([new(batch, n, K, n_pre) for n, n_pre in sizes]),
                          eps_b=self._packed([new(batch, n, K) for n, _ in sizes]),
                          ebar=self._packed([new(batch, n, n_pre) for n, n_pre in sizes]),
                          ebar_b=self._packed([new(batch, n) for n, _ in sizes]),
                          zbar=new(batch, n_read), bbar=new(()), B=self.feedback_init(params, seed))

    def step(self, params: Params, state: EPropState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net, kappa = self.net, self.net.readout_decay
        p = {k: v.detach() for k, v in params.items()}
        x, y = x.detach(), y.detach()
        layers, s, z = self.neurons(p, state.net, x)  # per layer: pre^l_t = [u^l_t, p^l_{t-1}], derivatives at I^l_t
        s, y_hat = net.readout(p, s, z)
        dE_dy = losses.grad(self.loss or "mse", y_hat, y, mask)  # [B, n_out]
        Ls = self.learning_signals(p, state.B, dE_dy, layers)  # [B, n_l] per layer
        g: Params = {}
        traces: list[tuple[Tensor, ...]] = []
        for (key, _, _, pre, d), L, eps0, eps_b0, ebar0, ebar_b0 in zip(
                layers, Ls, *(self._per_layer(f) for f in (state.eps, state.eps_b, state.ebar, state.ebar_b))):
            D, c, Z, zi, c_b, zi_b = self.factors(d)
            # synapses: e^t = Z eps^{t-1} + zi pre,  eps^t = D eps^{t-1} + c pre,  bar e^t = kappa bar e^{t-1} + e^t
            e = torch.einsum("bjf,bjfk->bjk", Z, eps0) + zi[:, :, None] * pre[:, None, :]
            eps = torch.einsum("bjgf,bjfk->bjgk", D, eps0) + c[:, :, :, None] * pre[:, None, None, :]
            ebar = kappa * ebar0 + e
            # the bias: the same with pre = 1
            e_b = torch.einsum("bjf,bjf->bj", Z, eps_b0) + zi_b
            eps_b = torch.einsum("bjgf,bjf->bjg", D, eps_b0) + c_b
            ebar_b = kappa * ebar_b0 + e_b
            gW = torch.einsum("bj,bjk->jk", L, ebar)  # sum_t L^t bar e^t (this step's term), summed over the batch
            n_in = pre.shape[1] - L.shape[1]
            g.update({key + "W_in": gW[:, :n_in], key + "W_rec": gW[:, n_in:],
                      key + "b": torch.einsum("bj,bj->j", L, ebar_b)})
            traces.append((eps, eps_b, ebar, ebar_b))
        # the readout's exact gradient (dE/dy^t) bar z^t
        zbar = kappa * state.zbar + z[:, self.readout_units]
        bbar = kappa * state.bbar + 1.0
        g.update({"W_out": dE_dy.T @ zbar, "b_out": dE_dy.sum(0) * bbar})
        eps, eps_b, ebar, ebar_b = (self._packed(f) for f in zip(*traces))
        new = EPropState(net=s, eps=eps, eps_b=eps_b, ebar=ebar, ebar_b=ebar_b, zbar=zbar, bbar=bbar,
                         B=self.feedback_update(state.B, g["W_out"]))
        return StepOutput(new, y_hat, self.loss_fn(y_hat, y, mask), {k: g[k] for k in params})
