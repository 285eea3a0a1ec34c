"""Spatial learning through time (SLTT) and SLTT-K: Meng, Xiao, Yan, Wang, Lin & Luo 2023, "Towards
Memory- and Time-Efficient Backpropagation for Training Spiking Neural Networks", ICCV (arXiv:2302.14311),
Sec. 4.

BPTT of a spiking network splits the gradient of the loss into a *spatial* part (through the spikes and
the readout of the same step) and a *temporal* part (through the membrane, the synaptic current, the
recurrent spikes and the readout's leak to later steps). SLTT keeps the spatial part only (``u`` the
membrane, ``s`` the spikes, ``s_pre`` the presynaptic activity)::

    d L / d W  ~=  sum_t  (d l_t / d s[t]) (d s[t] / d u[t])  s_pre[t]^T

the gradient of the loss of step ``t`` through the spike and the readout of step ``t`` only. That is exactly
backpropagation through the **fully-detached network**: every state carried from one step to the next (the
neuron's fields, the previous spikes, the readout ``y``) is detached, so the estimate of step ``t`` is
``d l_t / d theta`` through one step from the detached state. Memory and time per step are O(1) in T.

*Read through the cell contract, for a stack of layers.* The paper's networks are deep (Meng et al., Sec. 4 and
its Algorithm 1: at every step the spatial backward pass runs down through the layers of that step, the
temporal one is dropped). Here a network is ``L`` layers (a :class:`models.stack.Stack` of lif/alif layers; a
single-layer network is the case ``L = 1``: its one layer is the network itself). Layer ``l`` (from 0) reads,
within the step, ``u^l_t`` (``x_t`` for ``l = 0``, else the layer below's output ``z^(l-1)_t``, with ``x_t`` after it
where the stack has skip connections) and its own previous spikes ``p^l_(t-1)`` (``net.presynaptic``)::

    I^l_t = W^l_in u^l_t + W^l_rec p^l_(t-1) (+ b^l)
    y_t   = kappa y_(t-1) + W_out z^R_t + b_out           (z^R the readout's units: the last layer's, skip: all)

its neuron's element-wise derivatives coming from its model (``net.neuron_derivatives``, surrogate spike, reset
and refractory period included). With the previous state detached, the only paths from the parameters to
``l_t`` are those of this step: the readout and the feed-forward path up through the layers. With ``g_y = d l_t
/ d y_t`` (:func:`neuro.losses.grad`), the spatial backward pass is, from the top layer down::

    d l_t / d z^l_t = [g_y W_out]^l + g_I^(l+1) W^(l+1)_in[:, :n_l]     [B, n_l]  (the paper's d l_t / d s^l[t])
    g_I^l           = (d l_t / d z^l_t) * dz_dI^l                       [B, n_l]  (d l_t / d I^l_t)

(``[g_y W_out]^l`` the columns of layer ``l``, zero for a layer the readout does not read; the second term absent
for the top layer) and the estimate of step ``t``::

    W^l_in:  g_I^(l)T u^l_t           W^l_rec: g_I^(l)T p^l_(t-1)
    b^l:     sum_B (d l_t / d z^l_t) * (dz_db^l (+ dz_dI^l where the layer's bias_in_current))
    W_out:   g_y^T z^R_t               b_out: sum_B g_y

(``dz_db`` holds the current fixed, so a bias that is a term of the current adds ``dz_dI``.) For LIF
``dz_dI = psi vI`` (``psi`` the surrogate derivative at the membrane before firing, 0 while refractory, ``vI``
the membrane's response to the current in one step): ``g_I = vI (d l_t / d u[t])^{inst}``, the paper's term.
On a stack this is exactly BPTT of the stacked network whose every state (each layer's fields, its previous
spikes, the readout) is detached from one step to the next while the same-step feed-forward path
``z^(l-1)_t -> I^l_t`` is kept. Sparse matrices enter the backward pass masked (``net.weight``), and every
estimate is zero off the masks.

The equations above, step by step, are this file (``fast=False``). By default a faster computation of the same
numbers runs (:mod:`neuro.rules._fast.sltt`: ``window`` steps' outer products summed as one matrix product,
LIF's step written out), which hands over each window's sum (when ``window`` steps are pending, at ``flush``
and at ``finish``) instead of each step's term (single-layer networks; a stack runs the definition).

SLTT reads spiking networks only (``net.spiking``): on a network without spikes the same equations are
truncated BPTT with a truncation of one step (``tbptt``, ``k=1``), and the paper's case for dropping the
temporal part (it is small next to the spatial part in a spiking network, Sec. 4) does not carry over.

SLTT-K (the paper's variant for long sequences; ``train_SLTTK.py`` of qymeng94/SLTT) computes that backward pass only at
``k`` time steps per sequence drawn uniformly without replacement from the ``T`` steps of the sequence
(fields ``k`` and ``T``; the other steps run forward only, under ``torch.no_grad``). The paper's code
does not rescale: its loss is ``l_t / T`` at every step and the chosen ones are backpropagated, so
``E[SLTT-K] = (k / T) SLTT``; that is the default here (``scale=False``). ``scale=True`` multiplies the
chosen terms by ``T / k`` so that ``E[SLTT-K] = SLTT``. With ``k = T`` it is SLTT. The chosen steps are
drawn at ``init`` from a ``torch.Generator`` seeded by ``init``'s seed, then again at each ``finish`` and
``reset`` (a new sequence) from the same generator, which survives ``reset``. A sequence longer than
``T`` steps is an error (set ``T`` to the sequence length). SLTT-K takes its steps' terms by autograd
through the step (:func:`spatial_step`), which on a stack is the same spatial pass through the layers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from models.stack import Stack
from neuro import losses
from neuro.contract import AbstractNetwork, Derivatives, Params, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["SLTT", "SLTTK", "SLTTKState", "SLTTState", "SpatialPass", "layers_of", "spatial_pass", "spatial_step"]

SPIKING = ("lif", "alif")


class SLTTState(NamedTuple):
    net: NamedTuple  # the network state (detached)


class SLTTKState(NamedTuple):
    net: NamedTuple
    chosen: Tensor  # [T] bool: the steps of this sequence whose backward is computed
    gen: torch.Generator  # draws the steps (seeded by init, kept across reset)
    t: int  # steps since the sequence started


def _detach_state(state: NamedTuple) -> NamedTuple:
    return type(state)(*(s.detach() for s in state))


def layers_of(net: AbstractNetwork) -> tuple[AbstractNetwork, ...]:
    """The layers of ``net``: a stack's (:attr:`models.stack.Stack.layers`), else ``(net,)`` (the case L = 1)."""
    return net.layers if isinstance(net, Stack) else (net,)


def layer_key(net: AbstractNetwork, l: int, key: str) -> str:
    """The parameter key of layer ``l``'s ``key`` (``W_in``, ``W_rec``, ``b``): ``"l.key"`` in a stack."""
    return f"{l}.{key}" if isinstance(net, Stack) else key


def require_layers(rule: AbstractRule) -> None:
    """Refuse a network that is neither of local form nor a stack of layers of local form."""
    net = rule.net
    if not isinstance(net, Stack):
        rule._require_local_form()
    elif not net.layers[0].local_form:
        raise rule._refuse(f"its layers ({net.layer!r}) are not of local form: current W_in u + W_rec p (+ b) "
                           "(local_form; stacks of lif or alif layers are)")


class SpatialPass(NamedTuple):
    """One step forward through the layers and the spatial backward pass of its loss (:func:`spatial_pass`)."""

    state: NamedTuple  # the network's next state (detached)
    y_hat: Tensor  # [B, n_out]
    g_y: Tensor  # [B, n_out] d l_t / d y_t
    z_read: Tensor  # [B, n_read] what the readout reads (the last layer's output; skip: every layer's)
    u: tuple[Tensor, ...]  # per layer: u^l_t [B, n_in^l], what W^l_in reads
    p_prev: tuple[Tensor, ...]  # per layer: p^l_(t-1) [B, n_l], what W^l_rec reads
    d: tuple[Derivatives, ...]  # per layer: the neuron's element-wise derivatives at this step
    dl_dz: tuple[Tensor, ...]  # per layer: d l_t / d z^l_t [B, n_l] through this step (readout and layers above)


def spatial_pass(rule: AbstractRule, params: Params, state: NamedTuple, x: Tensor, y: Tensor,
                 mask: Tensor) -> SpatialPass:
    """Layer by layer bottom-up (each layer's current completed with the output of the layer below of this step,
    its derivatives from its model), the readout and the loss's ``g_y``, then the spatial backward pass top-down
    (module docstring): ``d l_t / d z^l_t = [g_y W_out]^l + (d l_t / d I^(l+1)_t) W^(l+1)_in[:, :n_l]``. All
    detached; on a single-layer network, that network's own step."""
    net = rule.net
    stack = isinstance(net, Stack)
    layers = layers_of(net)
    p = {k: v.detach() for k, v in params.items()}
    x = x.detach().to(p["W_out"].dtype)
    lps = [net.layer_params(p, l) for l in range(len(layers))] if stack else [p]
    us, prev, ds, below = [], [], [], None
    for l, layer in enumerate(layers):
        ls = net.layer_state(state, l) if stack else state
        u = net.layer_input(x, below, l) if stack else x
        d = layer.neuron_derivatives(lps[l], ls, layer.current(lps[l], ls, u))
        us.append(u)
        prev.append(layer.presynaptic(ls))
        ds.append(d)
        below = d.z
    if stack:
        z = torch.cat([d.z for d in ds], 1)
        ns, y_hat = net.readout(p, net.join_states([d.state for d in ds], getattr(state, "y", None)), z)
        read, slices = net.readout_units, net.slices
    else:
        z = ds[0].z
        ns, y_hat = net.readout(p, ds[0].state, z)
        read, slices = slice(0, net.n_hidden), (slice(0, net.n_hidden),)
    g_y = losses.grad(rule.loss or "mse", y_hat, y, mask)
    dl_dz_all = z.new_zeros(z.shape)
    dl_dz_all[:, read] = g_y @ p["W_out"]  # the readout's part
    dl_dz: list[Tensor] = [dl_dz_all] * len(layers)
    g_I = None  # d l_t / d I^(l+1)_t
    for l in reversed(range(len(layers))):
        L = dl_dz_all[:, slices[l]]
        if g_I is not None:  # down from the layer above, through its feed-forward weights (masked)
            L = L + g_I @ lps[l + 1]["W_in"][:, :layers[l].n_hidden]
        dl_dz[l] = L
        g_I = L * ds[l].dz_dI
    return SpatialPass(state=ns, y_hat=y_hat, g_y=g_y, z_read=z[:, read], u=tuple(us), p_prev=tuple(prev),
                       d=tuple(ds), dl_dz=tuple(dl_dz))


def _require_spikes(rule: AbstractRule) -> None:
    if not getattr(rule.net, "spiking", True):  # not a network at all: the base class says so
        raise rule._refuse(f"{rule.name.upper()} trains spiking networks (net.spiking; on one with no spikes its "
                           f"estimate is tbptt's with k=1), such as {', '.join(SPIKING)}")


def spatial_step(rule: AbstractRule, params: Params, net_state: NamedTuple, x: Tensor, y: Tensor,
                 mask: Tensor) -> tuple[NamedTuple, Tensor, Tensor, Params]:
    """One step from the detached ``net_state`` and the gradient of its loss through that step alone, by
    autograd: (next state detached, y_hat, loss, grad), all detached."""
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        net_state, y_hat, l = rule._forward(p, net_state, x, y, mask)
        gs = torch.autograd.grad(l, list(p.values()), allow_unused=True) if l.requires_grad else [None] * len(p)
    grad = {k: (g if g is not None else torch.zeros_like(p[k])).detach() for k, g in zip(p, gs)}
    return _detach_state(net_state), y_hat.detach(), l.detach(), grad


@accelerated
@dataclasses.dataclass(frozen=True)
class SLTT(AbstractRule):
    """The spatial gradient of every step (the BPTT gradient of the fully-detached network; module docstring).
    ``fast``: the faster computation of :mod:`neuro.rules._fast.sltt` (the same numbers) or the equations
    (``False``); ``window``: its steps per window (``1``: every step's term)."""

    fast: bool = True
    window: int = 64

    name = "sltt"
    needs = Needs.LOCAL

    def __post_init__(self) -> None:
        _require_spikes(self)
        super().__post_init__()
        check_positive("window", self.window, integer=True)
        require_layers(self)
        if not layers_of(self.net)[0].trace_fields:
            raise self._refuse("its neuron has no element-wise trace fields (neuro.contract)")

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTState:
        check_positive("batch", batch, integer=True)
        return SLTTState(net=self.net.init_state(params, batch))

    def step(self, params: Params, state: SLTTState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        net = self.net
        sp = spatial_pass(self, params, state.net, x, y, mask)
        g = {"W_out": sp.g_y.T @ sp.z_read, "b_out": sp.g_y.sum(0)}
        for l, layer in enumerate(layers_of(net)):
            d, dl_dz = sp.d[l], sp.dl_dz[l]
            g_I = dl_dz * d.dz_dI  # d l_t / d I^l_t
            dz_db = d.dz_db + d.dz_dI if layer.bias_in_current else d.dz_db
            g[layer_key(net, l, "W_in")] = g_I.T @ sp.u[l]
            g[layer_key(net, l, "W_rec")] = g_I.T @ sp.p_prev[l]
            g[layer_key(net, l, "b")] = (dl_dz * dz_db).sum(0)
        return StepOutput(SLTTState(net=sp.state), sp.y_hat, self.loss_fn(sp.y_hat, y, mask), {k: g[k] for k in params})


@dataclasses.dataclass(frozen=True)
class SLTTK(AbstractRule):
    """SLTT's per-step term at ``k`` random steps of each sequence of ``T`` steps (times ``T / k`` if ``scale``)."""

    k: int = 2
    T: int = 6
    scale: bool = False

    name = "sltt-k"
    needs = Needs.LOCAL
    stochastic = True
    _kept_on_reset = ("gen",)

    def __post_init__(self) -> None:
        _require_spikes(self)
        super().__post_init__()
        require_layers(self)
        check_positive("k", self.k, integer=True)
        check_positive("T", self.T, integer=True)
        if self.k > self.T:
            raise ValueError(f"k={self.k!r} is invalid: must be <= T={self.T!r} (k steps of T are chosen)")
        if not isinstance(self.scale, bool):
            raise ValueError(f"scale={self.scale!r} is invalid: expected True or False")

    def check_run(self, params: Params, batch: int, sequence: int, where: str = "") -> None:
        """Refuse sequences longer than ``T`` (the steps are drawn among ``T`` per sequence)."""
        if sequence > self.T:
            raise ValueError(f"rule 'sltt-k' option T={self.T} is shorter than the sequences of this run ({sequence} "
                             f"steps{f': {where}' if where else ''}): set T={sequence} (rule option T; k={self.k} of "
                             f"its steps are drawn per sequence)")

    def _draw(self, gen: torch.Generator) -> Tensor:
        chosen = torch.zeros(self.T, dtype=torch.bool)
        chosen[torch.randperm(self.T, generator=gen)[: self.k]] = True
        return chosen

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SLTTKState:
        gen = torch.Generator()
        gen.manual_seed(seed)
        return SLTTKState(net=self.net.init_state(params, batch), chosen=self._draw(gen), gen=gen, t=0)

    def step(self, params: Params, state: SLTTKState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        if state.t >= self.T:
            raise ValueError(f"rule 'sltt-k' got step {state.t + 1} of a sequence but T={self.T}: set T to the "
                             "sequence length (k steps are drawn among T per sequence)")
        if bool(state.chosen[state.t]):
            net_state, y_hat, l, grad = spatial_step(self, params, state.net, x, y, mask)
            if self.scale:
                grad = {key: g * (self.T / self.k) for key, g in grad.items()}
        else:
            with torch.no_grad():
                net_state, y_hat, l = self._forward({k: v.detach() for k, v in params.items()}, state.net, x, y, mask)
            grad = None
        return StepOutput(state._replace(net=net_state, t=state.t + 1), y_hat, l, grad)

    def finish(self, params: Params, state: SLTTKState) -> tuple[SLTTKState, Params | None]:
        return state._replace(chosen=self._draw(state.gen), t=0), None

    def reset(self, params: Params, state: SLTTKState) -> SLTTKState:
        return SLTTKState(net=self.net.init_state(params, state.net[0].shape[0]), chosen=self._draw(state.gen),
                          gen=state.gen, t=0)
