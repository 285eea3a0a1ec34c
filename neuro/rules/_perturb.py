"""Shared machinery of the perturbation rules (``wp``, ``np``, ``anp``, ``anp-time``): forward passes with
noise, per-sample losses, and the outer products that turn a node signal into weight estimates.

Garcia Fernandez, Keemink & van Gerven 2024, "Gradient-free training of recurrent neural networks using
random perturbations" (arXiv:2405.08967; code jesusgf96/NP_RNNs); Dalm et al. 2023 (activity-based node
perturbation, code artcogsys/decorbp). These rules need a forward function and a scalar loss per step,
nothing else (``needs = LOSS``): they never call autograd, so they train a network simulated by any backend.

The forward protocol (what a backend implements)
------------------------------------------------
A rule calls ``forward(params, state, x, xi_h, xi_y) -> Pass(state, y, h, a, z)``: one step of the network
from ``state`` on the input ``x`` [M, n_in] (M rows: sequences, or sequences times noise samples), with

* ``xi_h`` [M, n_cur] or ``None``: noise added to the hidden pre-activations ``i_t = current(params, state,
  x)`` (the synaptic currents: ``W_in x_t + W_rec z_{t-1} (+ b)``; for LIF/ALIF the input current ``I_t``);
* ``xi_y`` [M, n_out] or ``None``: noise added to the output pre-activation ``a_t = W_out z_t + b_out``.

It returns the new state (with the noise's effect: a noisy copy keeps its own state), the output ``y``
[M, n_out], ``h = i_t + xi_h`` [M, n_cur], ``a = a_t + xi_y`` [M, n_out] (``None`` for a network without
``W_out``/``b_out``) and the hidden output ``z_t`` [M, n_hidden]. Nothing returned may carry an autograd
graph. :class:`TorchForward` is the default: ``current -> (+ xi_h) -> neuron -> readout (+ xi_y)`` under
``torch.no_grad()``. For a leaky readout (LIF: ``y_t = kappa y_{t-1} + a_t``) the output noise is added to
``y_t`` and written back into ``state.y``, which is the same as adding it to ``a_t``. A Brian2 or Lava
backend passes its own function as the rule's ``forward=`` option; the weights estimates then need
only the returned ``h``, ``a``, ``z`` and the input ``x``.

Node rules (np, anp, anp-time) turn a per-row node signal ``e_h`` [M, n_cur], ``e_y`` [M, n_out] into
estimates with the presynaptic activity of the clean network (``x_t`` for ``W_in``, ``z_{t-1}`` for
``W_rec``, ``1`` for ``b``, ``z_t`` for ``W_out``, ``1`` for ``b_out``), averaged over the M rows.

*The pair.* With the torch forward (no ``forward=`` given) on these models, the clean and the noisy passes
of a step are run by :meth:`TorchForward.pair`: the input product ``x W_in^T`` is shared, and the two
recurrent products read ``W_rec`` once (the compiled two-vector product of :mod:`neuro.rules._matvec` at
batch 1 with one sample: the step's two products cost about one). The passes equal two forward calls up to
rounding, so the clean output equals ``net.step``'s up to rounding there (a spike could differ where the
membrane lies within rounding of the threshold).

*The window.* Each step's estimate is a sum of outer products ``e_m pre_m^T``; written to a fresh
``[n, n_pre]`` matrix at every step it costs more than the forward pass. With ``window = W > 1`` a node
rule holds each step's small tensors instead (by reference: the noise, the noisy and clean outputs and
pre-activations, the clean presynaptic activities, the inputs, which the caller must not modify in place
meanwhile (checked); O(W B samples n) memory). When ``W`` steps are pending, at
:meth:`~AbstractNodeRule.flush` (an update inside the sequence) and at :meth:`~AbstractNodeRule.finish`
(returned there, so it is never delayed past an update), it computes the steps' signals for all the
window's rows at once (every operation acts row by row) and the window's estimate as one matrix product
``[n, W B] @ [W B, n_pre]`` per weight. Summed over a sequence it is the per-step estimate (``window=1``, the
reference path: :func:`node_estimate` every step) up to rounding. They
support the models whose current is ``W_in x + W_rec z_{t-1} (+ b)`` with a ``W_out z + b_out`` readout
(:data:`NODE_MODELS`). In LIF and ALIF ``b`` is a bias of the membrane equation, not of the current the
noise is added to, so node rules give it a zero estimate (train it with ``wp`` or leave it fixed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import AbstractNetwork, Params, check_positive

from . import _matvec
from .base import AbstractRule, Needs, StepOutput

__all__ = ["AbstractNodeRule", "BIAS_IN_CURRENT", "NODE_MODELS", "NodeState", "Pass", "TorchForward", "check_samples",
           "check_sigma", "gaussian", "LINEAR_READOUT", "new_generator", "node_estimate", "node_noise", "outer_sum",
           "per_sample_loss", "repeat"]

#: models whose current is W_in x + W_rec z_{t-1} (+ b) and whose readout is W_out z + b_out (+ leak)
NODE_MODELS = ("rate", "lstm", "lif", "alif")
#: of those, the models whose bias b is inside the current (rate, lstm); in lif/alif b is in the neuron
BIAS_IN_CURRENT = ("rate", "lstm")
#: the models whose readout is ``y = z @ W_out.T + b_out`` (no state): the output pre-activation is ``y``
LINEAR_READOUT = ("rate", "lstm")


class Pass(NamedTuple):
    """One forward step (see the module docstring): M rows."""

    state: NamedTuple  # the network state after the step
    y: Tensor  # [M, n_out] the output
    h: Tensor  # [M, n_cur] the hidden pre-activation, noise included
    a: Tensor | None  # [M, n_out] the output pre-activation W_out z + b_out, noise included
    z: Tensor  # [M, n_hidden] the hidden output


Forward = Callable[[Params, NamedTuple, Tensor, "Tensor | None", "Tensor | None"], Pass]


@dataclasses.dataclass(frozen=True)
class TorchForward:
    """The torch forward function of ``net`` (the protocol in the module docstring)."""

    net: AbstractNetwork

    @torch.no_grad()
    def __call__(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
                 xi_y: Tensor | None = None) -> Pass:
        return self._step(params, state, x, xi_h, xi_y)

    def _step(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
              xi_y: Tensor | None = None) -> Pass:
        """:meth:`__call__` for a caller already under ``torch.no_grad()``."""
        h = self.net.current(params, state, x)
        if xi_h is not None:
            h = h + xi_h
        return self._rest(params, state, h, xi_y)

    def _rest(self, params: Params, state: NamedTuple, h: Tensor, xi_y: Tensor | None) -> Pass:
        """The step after the current ``h`` (noise included): neuron, readout, output noise."""
        net = self.net
        state, z = net.neuron(params, state, h)
        state, y = net.readout(params, state, z)
        linear = net.name in LINEAR_READOUT  # the readout is a = W_out z + b_out itself (the same operations)
        a = None
        if not linear and "W_out" in params and "b_out" in params:
            a = z @ params["W_out"].T + params["b_out"]
        if xi_y is not None:
            y = y + xi_y
            a = None if a is None else a + xi_y
            if "y" in getattr(state, "_fields", ()):  # a leaky readout integrates the noisy output
                state = state._replace(y=y)
        if linear:
            a = y
        return Pass(state, y, h, a, z)

    def pair(self, params: Params, clean: NamedTuple, noisy: NamedTuple | None, x: Tensor, xi_h: Tensor,
             xi_y: Tensor, samples: int) -> tuple[Pass, Pass]:
        """The clean pass ``_step(params, clean, x)`` and the noisy one ``_step(params, noisy, repeat(x, K), xi_h,
        xi_y)`` (``noisy=None``: the noisy copies start from ``clean``, as in ``anp``), equal to those two calls
        up to rounding, with the products they share done once: ``x W_in^T`` (the same input), and the two
        recurrent products, which read ``W_rec`` once (:func:`neuro.rules._matvec.mv2` for one clean and one
        noisy row; one product of the stacked rows otherwise; one product when the noisy copies start from the
        clean state). For the models of :func:`pair_applies` only (their current is ``x W_in^T + z_{t-1}
        W_rec^T (+ b)``), under ``torch.no_grad()``."""
        net, K = self.net, samples
        W_rec, field = params["W_rec"], _Z_FIELD[net.name]
        xin = x @ params["W_in"].mT
        zc = getattr(clean, field)
        if noisy is None:
            rc = zc @ W_rec.mT
            rn = repeat(rc, K)
        else:
            zn = getattr(noisy, field)
            if zc.shape[0] == 1 and K == 1 and _matvec.usable(W_rec, zc, zn):
                rc, rn = _matvec.mv2(W_rec, zc, zn)
                rc, rn = rc[None], rn[None]
            else:
                r = torch.cat([zc, zn]) @ W_rec.mT
                rc, rn = r[:zc.shape[0]], r[zc.shape[0]:]
        hc, hn = xin + rc, repeat(xin, K) + rn
        if net.name in BIAS_IN_CURRENT:
            hc, hn = hc + params["b"], hn + params["b"]
        return (self._rest(params, clean, hc, None),
                self._rest(params, noisy if noisy is not None else repeat(clean, K), hn + xi_h, xi_y))


#: the state field each node model's current reads as ``z_{t-1}`` (``x W_in^T + z_{t-1} W_rec^T (+ b)``)
_Z_FIELD = {"rate": "h", "lstm": "h", "lif": "z", "alif": "z"}


def pair_applies(net: AbstractNetwork) -> bool:
    """Whether :meth:`TorchForward.pair` covers ``net``: one of the node models with its own ``current``
    (a subclass that overrides it is not covered)."""
    from models.lif import LIF
    from models.lstm import LSTM
    from models.rate import RateRNN

    own = {"rate": RateRNN, "lstm": LSTM, "lif": LIF, "alif": LIF}
    cls = own.get(net.name)
    return cls is not None and isinstance(net, cls) and type(net).current is cls.current




def outer_sum(E: Tensor, P: Tensor) -> Tensor:
    """``E^T P`` [n, m] for ``E`` [R, n], ``P`` [R, m]: the sum of the ``R`` rows' outer products ``e_r p_r^T``
    (a window's estimate), as one BLAS product. (oneDNN's ``mkldnn_linear`` was tried: for these thin shapes
    its time swung between 0.3x and 10x BLAS's with the window length, so it is not used.)"""
    return E.T @ P


def new_generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer")
    return torch.Generator().manual_seed(seed)


def gaussian(gen: torch.Generator, shape: tuple[int, ...], sigma: float, like: Tensor) -> Tensor:
    """``N(0, sigma^2)`` entries [shape], standard normals drawn on the CPU in float32 from ``gen`` (a seed
    gives the same numbers in every dtype, to float32's rounding, and on every device; float32 draws cost a
    quarter of float64 ones), times ``sigma`` in the dtype and on the device of ``like``."""
    xi = torch.randn(shape, generator=gen, dtype=torch.float32)
    if like.dtype != torch.float32 or like.device.type != "cpu":
        xi = xi.to(dtype=like.dtype, device=like.device)
    return xi * sigma


def node_noise(gen: torch.Generator, M: int, n_cur: int, n_out: int, sigma: float,
               like: Tensor) -> tuple[Tensor, Tensor]:
    """One step's noise of the node rules, ``(xi_h [M, n_cur], xi_y [M, n_out])``: one :func:`gaussian` draw of
    ``[M, n_cur + n_out]`` split by columns (a backend that reproduces a rule's noise draws it so)."""
    xi = gaussian(gen, (M, n_cur + n_out), sigma, like)
    return xi[:, :n_cur], xi[:, n_cur:]


def check_sigma(sigma: Any) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is invalid: the noise's standard deviation must be a finite number > 0")


def check_samples(samples: Any) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} is invalid: the number of noise samples must be an integer >= 1")


def repeat(obj: Any, k: int) -> Any:
    """Each row of every tensor in ``obj`` (a tensor or a NamedTuple of tensors) repeated ``k`` times in a
    row: row ``b`` becomes rows ``b k .. b k + k - 1``."""
    if k == 1:
        return obj
    if isinstance(obj, Tensor):
        return obj.repeat_interleave(k, dim=0)
    return type(obj)(*(repeat(v, k) for v in obj))


def per_sample_loss(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """The masked loss of each row [M] (``losses.per_sample``): ``ValueError`` unless it is one scalar per
    row and step (e.g. a forward function that returned an output of the wrong shape)."""
    if y_hat.shape != y.shape:
        raise ValueError(f"the forward pass gave an output of shape {tuple(y_hat.shape)} for a target of shape "
                         f"{tuple(y.shape)}: the loss must be one scalar per sample and step")
    l = losses.per_sample(loss)(y_hat, y)
    if l.shape != mask.shape:
        raise ValueError(f"loss {loss!r} gave shape {tuple(l.shape)} per step; expected one scalar per sample "
                         f"{tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return torch.where(mask, l, 0.0)  # one operation (a float mask may weight the samples: multiplied)
    return l * mask.to(l.dtype)


def node_estimate(net: AbstractNetwork, params: Params, e_h: Tensor, e_y: Tensor, x: Tensor, z_prev: Tensor,
                  z: Tensor) -> Params:
    """``dW = mean_m e_m pre_m^T`` for each weight, from the node signals ``e_h`` [M, n_cur], ``e_y``
    [M, n_out] and the clean presynaptic activity ``x`` [M, n_in], ``z_prev`` [M, n_hidden] (``z_{t-1}``),
    ``z`` [M, n_hidden] (``z_t``). Keys and order of ``params``; ``b`` is 0 where it is not in the current."""
    M = e_h.shape[0]
    out = {
        "W_in": e_h.T @ x / M,
        "W_rec": e_h.T @ z_prev / M,
        "b": e_h.mean(0) if net.name in BIAS_IN_CURRENT else torch.zeros_like(params["b"]),
        "W_out": e_y.T @ z / M,
        "b_out": e_y.mean(0),
    }
    return {k: out[k].to(params[k].dtype) for k in params}


# -- the node rules' common step ---------------------------------------------------------------------------------


class NodeState(NamedTuple):
    net: NamedTuple  # the clean network's state [B]
    noisy: NamedTuple | None  # the noisy copies' own state [B * samples] (None when restarted every step)
    z_prev: Tensor  # [B, n_hidden] the clean z_{t-1} (presynaptic for W_rec)
    gen: torch.Generator  # the noise (seeded by init, kept across reset)
    t: int  # steps since init or reset
    buf: tuple  # window > 1: ``window`` entries (:class:`_Entry`); the first ``k`` are pending
    #            (the others are placeholders or already counted: never read)
    k: int  # steps pending in the window


class _Entry(NamedTuple):
    """One step held in a node rule's window (M = B samples rows; ``None`` where the rule does not need it)."""

    l: Tensor  # [B] the clean per-sample loss
    y_noisy: Tensor  # [M, n_out] the noisy outputs
    y: Tensor  # [B, n_out] the target (the caller's tensor)
    mask: Tensor  # [B] (the caller's tensor)
    xi_h: Tensor  # [M, n_cur]
    xi_y: Tensor  # [M, n_out]
    h_noisy: Tensor | None  # [M, n_cur] (rules that use the activity differences)
    h: Tensor | None  # [B, n_cur]
    a_noisy: Tensor | None  # [M, n_out]
    a: Tensor | None  # [B, n_out]
    x: Tensor  # [B, n_in] (the caller's tensor)
    z_prev: Tensor  # [B, n_hidden]
    z: Tensor  # [B, n_hidden]
    versions: tuple  # the version counters of x, y, mask when the step ran


def _empty_window(rule: "AbstractNodeRule", params: Params, batch: int) -> tuple:
    """``window`` placeholder entries (one shared set of zero tensors; only the first ``k`` entries are read)."""
    if rule.window_size == 1:
        return ()
    p, net, M = params["W_in"], rule.net, batch * rule.samples
    z = lambda *d: torch.zeros(*d, dtype=p.dtype, device=p.device)  # noqa: E731
    n_cur, n_out, act = p.shape[0], net.n_out, rule.uses_activity
    entry = _Entry(l=z(batch), y_noisy=z(M, n_out), y=z(batch, n_out), mask=z(batch).bool(), xi_h=z(M, n_cur),
                   xi_y=z(M, n_out), h_noisy=z(M, n_cur) if act else None, h=z(batch, n_cur) if act else None,
                   a_noisy=z(M, n_out) if act else None, a=z(batch, n_out) if act else None, x=z(batch, net.n_in),
                   z_prev=z(batch, net.n_hidden), z=z(batch, net.n_hidden), versions=())
    return (entry,) * rule.window_size


@dataclasses.dataclass(frozen=True)
class AbstractNodeRule(AbstractRule):
    """A clean copy and ``samples`` noisy copies per sequence run on the same input; the noisy ones get
    ``N(0, sigma^2)`` on the hidden and output pre-activations at every step. Subclasses set
    ``keep_noisy_state`` (the noisy copies keep their own state, or restart from the clean state every
    step) and :meth:`signal` (the node signals from the loss difference). ``forward``: the forward function
    (module docstring; default :class:`TorchForward`). ``window``: steps whose outer products are computed
    as one matrix product (module docstring; ``1``: every step, the reference path; ``None``: 64 with the torch
    forward, 1 with a backend's ``forward``, whose step costs far more than an outer product and whose callers
    may read each step's estimate)."""

    sigma: float = 1e-3
    samples: int = 1
    forward: Forward | None = None
    window: int | None = None

    needs = Needs.LOSS
    supports = NODE_MODELS
    stochastic = True
    _kept_on_reset = ("gen",)
    #: the noisy copies keep their own state (np, anp-time) or restart from the clean state every step (anp)
    keep_noisy_state: ClassVar[bool] = True
    #: :meth:`signal` reads the activity differences ``dh``, ``da`` (anp); ``False``: they are not computed
    uses_activity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sigma(self.sigma)
        check_samples(self.samples)
        if self.forward is not None and not callable(self.forward):
            raise ValueError(f"forward={self.forward!r} is invalid: expected a function "
                             "(params, state, x, xi_h, xi_y) -> Pass (see neuro.rules._perturb)")
        if self.window is not None:
            check_positive("window", self.window, integer=True)

    @property
    def window_size(self) -> int:
        """The window in use (``window``, or its default: 64 with the torch forward, 1 with a backend's)."""
        if self.window is not None:
            return self.window
        return 64 if self.forward is None else 1

    @functools.cached_property
    def _torch_step(self) -> Forward:
        """The torch forward for a caller already under ``no_grad`` (built once per rule)."""
        return TorchForward(self.net)._step

    @functools.cached_property
    def _torch_pair(self):
        """:meth:`TorchForward.pair` where it covers the network and no backend forward is given, else None."""
        return TorchForward(self.net).pair if self.forward is None and pair_applies(self.net) else None

    @property
    def fwd(self) -> Forward:
        return self.forward if self.forward is not None else TorchForward(self.net)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NodeState:
        check_positive("batch", batch, integer=True)
        net = self.net.init_state(params, batch)
        noisy = repeat(net, self.samples) if self.keep_noisy_state else None
        p = next(iter(params.values()))
        z0 = torch.zeros(batch, self.net.n_hidden, dtype=p.dtype, device=p.device)
        return NodeState(net=net, noisy=noisy, z_prev=z0, gen=new_generator(seed), t=0,
                         buf=_empty_window(self, params, batch), k=0)

    def signal(self, dl: Tensor, xi_h: Tensor, xi_y: Tensor, dh: Tensor | None,
               da: Tensor | None) -> tuple[Tensor, Tensor]:
        """The node signals (e_h [M, n_cur], e_y [M, n_out]) from the loss difference ``dl`` [M], the noise
        and the activity differences ``dh``, ``da`` (noisy minus clean pre-activations; ``None`` unless
        ``uses_activity``). Row by row: the window applies it to the rows of all its steps at once."""
        raise NotImplementedError

    def step(self, params: Params, state: NodeState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        K = self.samples
        B = x.shape[0]
        M = B * K
        fwd = self.forward if self.forward is not None else self._torch_step  # (in no_grad below)
        with torch.no_grad():  # params are only read here: no graph, no detached copies needed
            if self._torch_pair is not None:  # both passes at once (the same numbers as below, up to rounding)
                p = params["W_in"]
                xi_h, xi_y = node_noise(state.gen, M, p.shape[0], self.net.n_out, self.sigma, p)
                clean, noisy = self._torch_pair(params, state.net, state.noisy if self.keep_noisy_state else None,
                                                x, xi_h, xi_y, K)
            else:
                clean = fwd(params, state.net, x, None, None)
                xi_h, xi_y = node_noise(state.gen, M, clean.h.shape[1], clean.y.shape[1], self.sigma, clean.h)
                start = state.noisy if self.keep_noisy_state else repeat(state.net, K)
                noisy = fwd(params, start, repeat(x, K), xi_h, xi_y)
            l = per_sample_loss(self.loss or "mse", clean.y, y, mask)
            buf, k, grad = state.buf, state.k, None
            if self.window_size == 1:  # the reference path: this step's signal and outer products
                l_noisy = per_sample_loss(self.loss or "mse", noisy.y, repeat(y, K), repeat(mask, K))
                dl = l_noisy - repeat(l, K)
                dh = noisy.h - repeat(clean.h, K) if self.uses_activity else None
                da = noisy.a - repeat(clean.a, K) if self.uses_activity else None
                e_h, e_y = self.signal(dl, xi_h, xi_y, dh, da)
                grad = node_estimate(self.net, params, e_h, e_y, repeat(x, K), repeat(state.z_prev, K),
                                     repeat(clean.z, K))
            else:  # hold the step (references, no copies): its signal and outer products at the window's end
                act = self.uses_activity
                entry = _Entry(l=l, y_noisy=noisy.y, y=y, mask=mask, xi_h=xi_h, xi_y=xi_y,
                               h_noisy=noisy.h if act else None, h=clean.h if act else None,
                               a_noisy=noisy.a if act else None, a=clean.a if act else None, x=x,
                               z_prev=state.z_prev, z=clean.z, versions=(x._version, y._version, mask._version))
                buf, k = buf[:k] + (entry,) + buf[k + 1:], k + 1
                if k == self.window_size:
                    grad, k = self._window(params, buf), 0
            loss = l[0] if B == 1 else l.mean()  # the batch mean (B = 1: the row itself, no operation)
        out = NodeState(net=clean.state, noisy=noisy.state if self.keep_noisy_state else None, z_prev=clean.z,
                        gen=state.gen, t=state.t + 1, buf=buf, k=k)
        return StepOutput(out, clean.y.detach(), loss.detach(), grad)

    def _window(self, params: Params, entries: tuple) -> Params:
        """The summed estimate of the window's ``entries`` (:class:`_Entry`): the per-step computation of the
        reference path done once on the window's rows stacked (every operation acts row by row), then one matrix
        product ``[n, W B] @ [W B, n_pre]`` per weight, the ``samples`` rows of a sequence summed first (they
        share its presynaptic activity)."""
        for e in entries:
            if (e.x._version, e.y._version, e.mask._version) != e.versions:
                raise RuntimeError(f"rule {self.name!r}: an input (x, y or mask) of a step still in the window was "
                                   "modified in place before the window was summed; pass fresh tensors each step "
                                   "(or use window=1)")
        K, n_rows = self.samples, len(entries)
        cat = lambda *col: torch.cat(col) if n_rows > 1 else col[0]  # noqa: E731
        cols = list(zip(*entries))[:-1]  # every field but the versions
        c = _Entry(*(cat(*col) if col[0] is not None else None for col in cols), versions=())
        l_noisy = per_sample_loss(self.loss or "mse", c.y_noisy, repeat(c.y, K), repeat(c.mask, K))
        dl = l_noisy - repeat(c.l, K)
        dh = c.h_noisy - repeat(c.h, K) if self.uses_activity else None
        da = c.a_noisy - repeat(c.a, K) if self.uses_activity else None
        e_h, e_y = self.signal(dl, c.xi_h, c.xi_y, dh, da)  # [n_rows M, .]
        B = c.x.shape[0] // n_rows
        if K > 1:
            e_h, e_y = e_h.reshape(n_rows * B, K, -1).sum(1), e_y.reshape(n_rows * B, K, -1).sum(1)
        if B * K > 1:  # the mean over the M rows, on the factors (not on the [n, n_pre] products)
            e_h, e_y = e_h / (B * K), e_y / (B * K)
        out = {
            "W_in": e_h.T @ c.x.to(e_h.dtype),
            "W_rec": outer_sum(e_h, c.z_prev),
            "b": e_h.sum(0) if self.net.name in BIAS_IN_CURRENT else torch.zeros_like(params["b"]),
            "W_out": e_y.T @ c.z,
            "b_out": e_y.sum(0),
        }
        return {k: out[k].to(params[k].dtype) for k in params}

    def flush(self, params: Params, state: NodeState) -> tuple[NodeState, Params | None]:
        """The pending window's estimate (an update is due): one matrix product per weight."""
        if state.k == 0:
            return state, None
        with torch.no_grad():
            grad = self._window(params, state.buf[:state.k])
        return state._replace(k=0), grad

    def finish(self, params: Params, state: NodeState) -> tuple[NodeState, Params | None]:
        return self.flush(params, state)
