"""One network step as a function of flat vectors, for the rules that differentiate a single step
(JVP and JACOBIAN rules: RTRL, SnAp, UORO, NoBackTrack, KF-RTRL).

The network state (a NamedTuple of [B, ...] tensors) is flattened to ``s`` [B, S] and the parameters
to ``theta`` [P] (keys in ``sorted`` order). For one sample (no batch dimension)::

    s_t, y_t = f(theta, s_{t-1}, x_t)          l_t = loss(y_t, y*_t)

The per-step loss gradient is taken through the step from ``s_{t-1}``, which is how an influence
matrix ``M_{t-1} = ds_{t-1}/dtheta`` is used:

    dl_t/dtheta = (dl_t/ds_{t-1}) M_{t-1} + (partial l_t / partial theta)
    M_t = (partial f / partial s) M_{t-1} + (partial f / partial theta)

``vmap`` maps every per-sample function over the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap

from neuro.contract import AbstractNetwork, Params
from neuro.losses import per_sample

__all__ = ["FlatStep", "flat_step"]


@dataclasses.dataclass(frozen=True)
class FlatStep:
    """Flat views of ``net.step`` for parameters with keys ``keys`` and a state like ``template``."""

    net: AbstractNetwork
    keys: tuple[str, ...]
    shapes: tuple[torch.Size, ...]  # parameter shapes
    state_type: type
    state_shapes: tuple[torch.Size, ...]  # per-sample shapes of the state fields
    loss: str

    @classmethod
    def build(cls, net: AbstractNetwork, params: Params, loss: str) -> "FlatStep":
        keys = tuple(sorted(params))
        template = net.init_state(params, 1)
        return cls(net=net, keys=keys, shapes=tuple(params[k].shape for k in keys), state_type=type(template),
                   state_shapes=tuple(f.shape[1:] for f in template), loss=loss)

    # -- sizes and conversions ----------------------------------------------------------------------
    @property
    def n_state(self) -> int:
        return sum(s.numel() for s in self.state_shapes)

    @property
    def n_params(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def flat_params(self, params: Params) -> Tensor:
        return torch.cat([params[k].reshape(-1) for k in self.keys])

    def unflat_params(self, theta: Tensor) -> Params:
        out, i = {}, 0
        for k, shape in zip(self.keys, self.shapes):
            n = shape.numel()
            out[k] = theta[..., i:i + n].reshape(*theta.shape[:-1], *shape)
            i += n
        return out

    def flat_state(self, state: NamedTuple) -> Tensor:
        """[B, S] from a batched state."""
        return torch.cat([f.reshape(f.shape[0], -1) for f in state], dim=1)

    def unflat_state(self, s: Tensor) -> NamedTuple:
        """A state from ``s`` [..., S] (batched or one sample)."""
        fields, i = [], 0
        lead = s.shape[:-1]
        for shape in self.state_shapes:
            n = shape.numel()
            fields.append(s[..., i:i + n].reshape(*lead, *shape))
            i += n
        return self.state_type(*fields)

    def param_slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for k, shape in zip(self.keys, self.shapes):
            out[k] = slice(i, i + shape.numel())
            i += shape.numel()
        return out

    def state_slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for name, shape in zip(self.state_type._fields, self.state_shapes):
            out[name] = slice(i, i + shape.numel())
            i += shape.numel()
        return out

    # -- per-sample functions (vmap them over the batch) ---------------------------------------------
    def step1(self, theta: Tensor, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One sample: ``(s_t [S], y_t [n_out])`` from ``theta`` [P], ``s_{t-1}`` [S], ``x`` [n_in]."""
        params = self.unflat_params(theta)
        state = self.unflat_state(s[None])
        state, y = self.net.step(params, state, x[None])
        return self.flat_state(state)[0], y[0]

    def loss1(self, theta: Tensor, s: Tensor, x: Tensor, target: Tensor, m: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One sample's masked loss through one step, and (s_t, y_t) as auxiliary outputs."""
        s_new, y = self.step1(theta, s, x)
        return per_sample(self.loss)(y, target) * m, (s_new, y)

    # -- batched building blocks ---------------------------------------------------------------------
    def jacobians(self, theta: Tensor, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(s_t [B, S], J_s [B, S, S], J_theta [B, S, P])``: full one-step Jacobians."""
        def f(th, s1, x1):
            s_new, _ = self.step1(th, s1, x1)
            return s_new, s_new
        (Jt, Js), s_new = vmap(jacrev(f, argnums=(0, 1), has_aux=True), in_dims=(None, 0, 0))(theta, s, x)
        return s_new, Js, Jt

    def loss_grads(self, theta: Tensor, s: Tensor, x: Tensor, target: Tensor,
                   m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(l [B], dl/ds_{t-1} [B, S], dl/dtheta direct [B, P], s_t [B, S], y_t [B, n_out])``."""
        def g(th, s1, x1, t1, m1):
            (gt, gs), (l, aux) = _grad_and_value(self.loss1, th, s1, x1, t1, m1)
            return l, gs, gt, aux[0], aux[1]
        return vmap(g, in_dims=(None, 0, 0, 0, 0))(theta, s, x, target, m)

    def jvp_state(self, theta: Tensor, s: Tensor, x: Tensor, ds: Tensor, dtheta: Tensor) -> tuple[Tensor, Tensor]:
        """``(s_t, J_s ds + J_theta dtheta)`` per sample; ``dtheta`` [B, P] or [P]."""
        in_dt = 0 if dtheta.dim() == 2 else None

        def f(th, s1, x1, ds1, dth1):
            (s_new, _), (ds_new, _) = jvp(lambda a, b: self.step1(a, b, x1), (th, s1), (dth1, ds1))
            return s_new, ds_new
        return vmap(f, in_dims=(None, 0, 0, 0, in_dt))(theta, s, x, ds, dtheta)

    def vjp_state(self, theta: Tensor, s: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(v^T J_s [B, S], v^T J_theta [B, P])`` per sample, for a cotangent ``v`` [B, S] on s_t."""
        def f(s1, x1, v1):
            _, pull = vjp(lambda a, b: self.step1(a, b, x1)[0], theta, s1)
            gt, gs = pull(v1)
            return gs, gt
        return vmap(f, in_dims=(0, 0, 0))(s, x, v)


def _grad_and_value(fn: Callable, th: Tensor, s: Tensor, x: Tensor, t: Tensor, m: Tensor):
    from torch.func import grad_and_value
    return grad_and_value(fn, argnums=(0, 1), has_aux=True)(th, s, x, t, m)


@functools.lru_cache(maxsize=64)
def _cached_flat_step(net: AbstractNetwork, loss: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> FlatStep:
    return FlatStep.build(net, {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes}, loss)


def flat_step(net: AbstractNetwork, loss: str, params: Params) -> FlatStep:
    """The :class:`FlatStep` of ``net`` and ``loss`` for parameters shaped like ``params`` (built once per
    network, loss and shapes)."""
    return _cached_flat_step(net, loss, tuple((k, tuple(v.shape)) for k, v in sorted(params.items())))
