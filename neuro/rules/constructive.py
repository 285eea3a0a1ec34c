"""Constructive RTRL (Javed, Shah, Sutton & White 2023, "Scalable real-time recurrent learning using
columnar-constructive networks", JMLR 24, Sec. 5-6): exact RTRL for the learning stage of a constructive
or columnar-constructive network (:mod:`models.constructive`).

Only the stage ``L = net.stage`` learns, with columns ``lo..hi-1``; the earlier stages are frozen and the
later ones inactive. Column ``k`` of stage ``L`` has the parameters ``theta_k = (W_in[k], W_ff[k, :, :lo],
w_rec[k], b[k])`` (its feed-forward weights over the earlier stages' columns ``0..lo-1``, all of which it
reads). The earlier stages do not depend on ``theta`` of stage ``L`` (they come first and are frozen),
and the columns of stage ``L`` do not read each other, so ``ds_t/dtheta`` restricted to stage ``L`` is
block-diagonal in its columns: the per-column traces

    M_{t,k} = ds_{t,k}/dtheta_k                                [B, m, S_c, q],   M_{0,k} = 0
    M_{t,k} = (partial s_{t,k}/partial s_{t-1,k}) M_{t-1,k} + partial s_{t,k}/partial theta_k

are exact, with the frozen stages' current outputs ``u_t = h_t[:, :lo]`` entering as inputs: O(p) memory
and compute per step, as in :mod:`neuro.rules.columnar` (one-column Jacobians by ``torch.func.jacrev``,
``vmap``-ed over the stage's columns and the batch). The estimate of step ``t``::

    e_t = dl_t/dy_t              dl_t/dtheta_k = (e_t W_out)_k  M_{t,k}[h]      (stage L only)
    dl_t/dW_out = e_t^T h_t      dl_t/db_out = sum_b e_t                        (all columns)
    every other parameter (frozen and inactive stages): 0

The readout is learnt over all features (as in the paper, which learns the value prediction from every
feature at every stage); its immediate gradient is exact, so summed over a sequence with the parameters
frozen the estimate equals BPTT's gradient restricted to the learning stage and the readout.

With the network's online normalisation (``normalise``, :mod:`models.constructive`) the statistics are
constants of the step: column ``k`` reads its normalised inputs ``(xhat_{t,k}, uhat_{t,k})`` (the network's
``column_inputs``), the readout ``hhat_t`` (``readout_features``), and ``(e_t W_out)_k`` becomes
``dl_t/dh_t`` (``readout_backward``: divided by ``sqrt(var_f[k])``), as in :mod:`neuro.rules.columnar`.

Running the paper's ``"total:per-stage:steps-per-stage"`` schedule (e.g. CCN ``20:4:N``, constructive
``10:1:N``, columnar ``7:7:N``)::

    total, per_stage, steps = schedule("20:4:10000")
    net = models.make("constructive", n_in=..., n_hidden=total, n_out=..., per_stage=per_stage, stage=0)
    params = net.init_params()
    for j in range(net.n_stages):
        rule = neuro.rules.make("constructive", net)    # a new rule (new traces) per stage
        ...  # `steps` online steps of rule.step + an optimizer on params (the network state may be carried)
        if j + 1 < net.n_stages:
            net = net.next_stage()                      # same params; stage j is now frozen

:mod:`neuro.staged` runs this schedule as one run (``neuro.train(..., schedule="20:4:10000")``,
``neuro train --schedule``).

A faster computation of the same numbers (the one-column Jacobians written out) lives in
:mod:`neuro.rules._fast.constructive` and runs by default; ``fast=False`` runs this definition.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from models.stack import Stack
from neuro.contract import Params, check_positive

from .base import AbstractRule, Needs, StepOutput, accelerated

__all__ = ["ConstructiveRTRL", "ConstructiveRTRLState", "schedule"]


def schedule(spec: str) -> tuple[int, int, int]:
    """Parse ``"total:per-stage:steps-per-stage"`` (e.g. ``"20:4:10000"``) into ``(total, per_stage,
    steps_per_stage)``: positive integers, ``per_stage`` dividing ``total``."""
    if not isinstance(spec, str):
        raise ValueError(f"schedule spec={spec!r} is invalid: expected a string 'total:per-stage:steps-per-stage'")
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"schedule spec={spec!r} is invalid: expected three integers "
                         f"'total:per-stage:steps-per-stage', e.g. '20:4:10000'")
    names = ("total", "per-stage", "steps-per-stage")
    vals = []
    for name, part in zip(names, parts):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise ValueError(f"schedule spec={spec!r} is invalid: {name}={part!r} must be a positive integer")
        vals.append(int(part))
    total, per_stage, steps = vals
    if total % per_stage:
        raise ValueError(f"schedule spec={spec!r} is invalid: total={total} is not a multiple of per-stage={per_stage}")
    return total, per_stage, steps


class ConstructiveRTRLState(NamedTuple):
    net: NamedTuple
    M: Tensor  # per-column traces of the learning stage: [B, m, S_c, q] (the fast path: [B, S_c, m, G, F])


@accelerated
@dataclasses.dataclass(frozen=True)
class ConstructiveRTRL(AbstractRule):
    """Exact RTRL for the learning stage (``net.stage``) of a constructive network; other stages get 0.
    ``fast``: the fast path of :mod:`neuro.rules._fast.constructive` (default) or this definition
    (``torch.func``)."""

    fast: bool = True

    name = "constructive"
    needs = Needs.JACOBIAN
    supports = ("constructive",)

    def __post_init__(self) -> None:
        if isinstance(self.net, Stack):
            raise self._refuse("constructive RTRL learns one stage of independent columns of a constructive network "
                               "(models.constructive); a stack's layers are fully recurrent and all learn at once, "
                               "so no stage's influence matrix is block-diagonal; on a stack run bptt, tbptt, rtrl, "
                               "snap1, snap2, uoro, nobacktrack, nobacktrack-kalman, td-lambda (over one of those), "
                               "rflo (rate layers) or three-factor")
        super().__post_init__()

    @property
    def _cols(self) -> slice:
        return self.net.stage_columns(self.net.stage)

    def _pack(self, params: Params) -> Tensor:
        """``Theta`` [m, q]: the learning stage's ``theta_k`` flattened, one row per column."""
        sl = self._cols
        m = sl.stop - sl.start
        return torch.cat([params["W_in"][sl].reshape(m, -1), params["W_ff"][sl, :, :sl.start].reshape(m, -1),
                          params["w_rec"][sl], params["b"][sl]], dim=1)

    def _split(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_in, lo = self.net.n_in, self._cols.start
        G = theta.shape[-1] // (n_in + lo + 2)
        w_in, w_ff, w_rec, b = theta.split([G * n_in, G * lo, G, G], dim=-1)
        lead = theta.shape[:-1]
        return w_in.reshape(*lead, G, n_in), w_ff.reshape(*lead, G, lo), w_rec, b

    def _column_step(self, theta: Tensor, s: Tensor, x: Tensor, u: Tensor) -> Tensor:
        """One column, one sample: ``s_{t,k}`` [S_c] from ``theta_k``, ``s_{t-1,k}`` [S_c], ``x`` [n_in] and
        the frozen stages' current outputs ``u`` [lo] as the column reads them, through the network's own
        column equations."""
        net = self.net
        w_in, w_ff, w_rec, b = self._split(theta[None])
        a = net.column_preact(w_in, w_ff, w_rec, b, x[None], u[None], s[0].reshape(1, 1))
        h, c = net.cell_update(a, s[1].reshape(1, 1) if s.shape[0] == 2 else None)  # s: (h, c) or (h,)
        return torch.stack([h.reshape(())] + ([] if c is None else [c.reshape(())]))

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> ConstructiveRTRLState:
        check_positive("batch", batch, integer=True)
        self.net.check_params(params)
        net_state = self.net.init_state(params, batch)
        theta = self._pack(params)
        (m, q), S = theta.shape, self.net.n_cell_state
        M = theta.new_zeros(batch, m, S, q)
        return ConstructiveRTRLState(net=net_state, M=M)

    def memory_numel(self, params: Params, batch: int = 1) -> int:
        """Numbers held by the traces: ``B m S_c q`` (the learning stage's parameters times S_c), O(p)."""
        m, q = self._pack(params).shape
        return batch * m * self.net.n_cell_state * q

    def step(self, params: Params, state: ConstructiveRTRLState, x: Tensor, y: Tensor,
             mask: Tensor) -> StepOutput:
        params = {k: v.detach() for k, v in params.items()}
        net, sl = self.net, self._cols
        theta = self._pack(params)  # [m, q]
        s = torch.stack(tuple(state.net)[:net.n_cell_state], dim=-1).detach()[:, sl]  # s_{t-1} of the stage [B, m, S_c]

        i = net.current(params, state.net, x)
        net_state, h = net.neuron(params, state.net, i)
        net_state, y_hat = net.readout(params, net_state, h)
        v = net.column_inputs(state.net, torch.cat([x, h[:, :sl.start]], dim=1), sl)  # [B, m, n_in + lo]
        xk, u = v[:, :, :x.shape[1]], v[:, :, x.shape[1]:]  # x_t and the frozen stages' h_t as column k reads them

        jac = jacrev(self._column_step, argnums=(0, 1))
        J_theta, J_s = vmap(vmap(jac, in_dims=(0, 0, 0, 0)), in_dims=(None, 0, 0, 0))(theta, s, xk, u)
        M = torch.einsum("bkij,bkjq->bkiq", J_s, state.M) + J_theta  # [B, m, S_c, q]

        fn = self.loss_fn
        e = torch.func.grad(lambda yh: fn(yh, y, mask))(y_hat)  # dl_t/dy_t [B, n_out] (masked, / B)
        eh = net.readout_backward(params, net_state, e)[:, sl]  # dl_t/dh_t of the stage [B, m]
        g = torch.einsum("bk,bkq->kq", eh, M[:, :, 0])  # M[..., 0]: h
        w_in, w_ff, w_rec, b = self._split(g)
        grad = {k: torch.zeros_like(v) for k, v in params.items()}
        grad["W_in"][sl] = w_in
        grad["W_ff"][sl, :, :sl.start] = w_ff
        grad["w_rec"][sl] = w_rec
        grad["b"][sl] = b
        grad["W_out"] = e.T @ net.readout_features(net_state, h)
        grad["b_out"] = e.sum(0)
        return StepOutput(ConstructiveRTRLState(net=net_state, M=M.detach()), y_hat.detach(),
                          fn(y_hat, y, mask).detach(), {k: grad[k].detach().contiguous() for k in params})
