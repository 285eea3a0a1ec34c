"""SnAp-n: the influence matrix restricted to the entries reachable in n steps (Menick, Elsen, Evci,
Osindero, Simonyan, Graves 2021, "Practical Real Time Recurrent Learning with a Sparse Approximation",
ICLR).

With the state flattened to ``s`` [S] and the parameters to ``theta`` [P] as in :mod:`neuro.rules.rtrl`
(``J_t = partial f / partial s_{t-1}`` [S, S], ``I_t = partial f / partial theta`` [S, P]), RTRL carries
``M_t = J_t M_{t-1} + I_t``. SnAp-n keeps only the entries of ``M`` where parameter ``theta_j`` can
influence state ``s_k`` within ``n`` steps, and sets the rest to zero after every update::

    P_1 = pattern(I)                                  (theta_j reaches s_k in the step itself)
    P_n = pattern((I + J)^(n-1) P_1)                   P_2 = pattern(J) @ P_1  OR  P_1   (boolean)
    M~_t = (J_t M~_{t-1} + I_t) (.) P_n               M~_0 = 0

For a rate RNN ``h_t = (1 - alpha) h_{t-1} + alpha tanh(W_in x_t + W_rec h_{t-1} + b)``, ``W_rec[i, j]``,
``W_in[i, j]`` and ``b_i`` reach only ``h_i`` in one step: SnAp-1 keeps one row per column, the
e-prop / RFLO-like diagonal approximation ``M~_t[i, W_i.] = J_t[i, i] M~_{t-1}[i, W_i.] + I_t[i, W_i.]``.
With a dense ``W_rec``, ``pattern(J) @ P_1`` is full and SnAp-2 is RTRL; with a sparse ``W_rec`` SnAp
keeps the pattern of its mask. For a LIF network the state is (v, i, z, r, y) per unit: a weight into
unit ``i`` reaches ``v_i``, ``i_i``, ``z_i`` (and, through the readout, every ``y``) in one step, so
SnAp-1 keeps those rows and SnAp-2 with a dense ``W_rec`` is again full (except ``r``, which carries no
gradient).

The pattern is derived generically, once in ``init``: the nonzero structure of ``J`` and ``I`` from
:class:`FlatStep`'s Jacobians at the given parameters (so the zeros of a sparse weight mask are
structural) OR-ed over ``draws`` random states and inputs (``x ~ N(0, 1)``; ``s ~ N(0, 1)`` and
``N(0, 9)`` in turn; plus the resting state), so that an entry that happens to vanish at one point is
not missed: a surrogate derivative outside its support, a refractory unit, or ``W_out[k, j] -> y_k`` of
a LIF network, nonzero only where unit ``j`` spikes (``z_j = 1`` needs ``v > v_th``, hence the wide
draws). Its seed is fixed: the pattern does not depend on ``init``'s seed.

*Sparse and stacked networks.* The pattern follows the network's synapses, as Menick et al. define it
(the entries reachable in ``n`` steps through the existing connections): a sparse matrix enters the step as
``W * mask`` (:mod:`neuro.connectivity`), so ``J`` and ``I`` are zero off the masks at every point and the
pattern keeps only what the existing synapses reach. On a stack of layers (:mod:`models.stack`) one step runs
the layers bottom-up, so ``pattern(I)`` already carries a parameter of layer ``l`` up through the existing
feed-forward synapses ``W^{l+1}_in``, ``W^{l+2}_in``, ... within the step, and ``pattern(J)`` the recurrent
synapses and leaks followed by the same feed-forward closure. tests/neuro/rules/test_stack_rules.py holds
the pattern of a sparse 2-layer rate stack equal to that reachability computed from the masks alone, and
SnAp-n with a pattern of every reachable entry equal to RTRL.

The estimate of step ``t`` is RTRL's with ``M~`` in place of ``M`` (the loss taken through the step
from ``s_{t-1}``, see :class:`FlatStep`)::

    dl_t/dtheta ~ (dl_t/ds_{t-1}) M~_{t-1} + partial l_t / partial theta

i.e. the step's own Jacobians are exact and the truncation enters through ``M~_{t-1}`` (Menick et al.
contract ``dl_t/ds_t`` with ``M~_t``; the two differ only by the last step's entries outside ``P_n``).

This definition stores the dense masked influence matrix [B, S, P] on top of RTRL's equations (every
model; the cost of RTRL). Faster computations of the same numbers on the rate RNN live in
:mod:`neuro.rules._fast.snap` and run by default (``fast=False`` runs this definition): RTRL's closed-form
step, masked, and for SnAp-1 with ``sparse=True`` only the nonzeros, O(p) memory and compute per step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from neuro.contract import Params, check_positive

from ._onestep import FlatStep
from .base import Needs, StepOutput, accelerated
from .rtrl import RTRL, RTRLState

__all__ = ["SnAp1", "SnAp2", "SnApState", "snap_pattern"]


class SnApState(NamedTuple):
    net: NamedTuple
    M: Tensor  # [B, S, P] masked influence matrix M~_t (the sparse fast path: its nonzeros only)
    P: Tensor | None  # [S, P] the pattern P_n (0/1 in the parameters' dtype); None on the sparse fast path,
    # whose layout is the pattern: O(p) memory, no dense [S, P]


def snap_pattern(fs: FlatStep, params: Params, n: int, draws: int = 32) -> Tensor:
    """``P_n`` [S, P] (bool): the structural pattern of SnAp-n, from the Jacobians of one step at the
    parameters ``params``, OR-ed over the resting state and ``draws`` random states and inputs."""
    check_positive("n", n, integer=True)
    p = next(iter(params.values()))
    theta = fs.flat_params(params).detach()
    gen = torch.Generator(device=p.device).manual_seed(0)
    scale = torch.tensor([1.0, 3.0], dtype=p.dtype, device=p.device).repeat(draws)[:draws, None]
    s = scale * torch.randn(draws, fs.n_state, generator=gen, dtype=p.dtype, device=p.device)
    s = torch.cat([fs.flat_state(fs.net.init_state(params, 1)).to(p.dtype), s])
    x = torch.randn(draws + 1, fs.net.n_in, generator=gen, dtype=p.dtype, device=p.device)
    _, J, I = fs.jacobians(theta, s, x)
    pJ = (J != 0).any(0).to(torch.float64)  # [S, S]
    P = (I != 0).any(0)  # P_1 [S, P]
    for _ in range(n - 1):  # P_{k+1} = pattern(J) @ P_k OR P_k
        P = P | ((pJ @ P.to(torch.float64)) > 0)
    return P


@accelerated
@dataclasses.dataclass(frozen=True)
class _SnAp(RTRL):
    """SnAp-n (module docstring). ``draws``: random points over which the pattern is OR-ed; ``max_bytes``
    as for RTRL; ``fast``: the fast paths of :mod:`neuro.rules._fast.snap` where they apply (default) or
    this definition."""

    draws: int = 32

    n: ClassVar[int] = 1
    needs = Needs.JACOBIAN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("draws", self.draws, integer=True)

    def pattern(self, params: Params) -> Tensor:
        """``P_n`` [S, P] in the parameters' dtype (0/1), from :func:`snap_pattern`."""
        return snap_pattern(self._flat(params), params, self.n, self.draws).to(next(iter(params.values())).dtype)

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> SnApState:
        return SnApState(net=self.net.init_state(params, batch), M=self._influence(params, batch),
                         P=self.pattern(params))

    def step(self, params: Params, state: SnApState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        # RTRL's step from M~_{t-1} gives the estimate (dl_t/ds_{t-1}) M~_{t-1} + partial l_t/partial theta
        # and J_t M~_{t-1} + I_t; the mask makes it M~_t
        out = self._exact_step(params, RTRLState(net=state.net, M=state.M), x, y, mask)
        return out._replace(state=SnApState(net=out.state.net, M=out.state.M * state.P, P=state.P))

    _kept_on_reset: ClassVar[tuple[str, ...]] = ("P",)


@dataclasses.dataclass(frozen=True)
class SnAp1(_SnAp):
    """SnAp-1: ``M~`` restricted to ``pattern(I)``. ``sparse``: on the rate RNN's fast path, store only the
    nonzeros (O(p) per step) instead of the dense masked [B, S, P]."""

    sparse: bool = True

    name = "snap1"
    n = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.sparse, bool):
            raise ValueError(f"sparse={self.sparse!r} is invalid: expected True or False")


@dataclasses.dataclass(frozen=True)
class SnAp2(_SnAp):
    """SnAp-2: ``M~`` restricted to ``pattern(J) @ pattern(I) OR pattern(I)`` (dense masked)."""

    name = "snap2"
    n = 2
