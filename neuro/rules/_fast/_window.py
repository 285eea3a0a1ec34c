"""Decayed outer-product windows: the summed estimate of an eligibility rule, one matrix product per window
(the fast paths of RFLO and of the three-factor rule, :mod:`neuro.rules._fast.rflo`, ``.three_factor``).

The rules keep, per sample ``b`` and synapse ``i <- j``, an eligibility ``o_t`` [B, n, m] that a small linear
filter, the same for every synapse, drives with rank-one terms, and sum its row-scaled product with a third
factor ``M_t`` [B, n]::

    q_t = A q_{t-1} + beta (u_t v_t^T)        o_t = C q_t        (q_t = (q_t,1 .. q_t,S), A [S, S], beta [S], C [S])
    G   = sum_t sum_b M_t,b (.) o_t,b                            ((M (.) o)_ij = M_i o_ij)

(RFLO: ``S = 1``, ``A = 1 - alpha``; three-factor: ``e`` then ``ebar``, ``A = [[lambda, 0], [lambda, kappa]]``,
``beta = (1, 1)``, ``C = (0, 1)``). Over a window of ``w`` steps ``1..w`` from the carry ``q_0``::

    G   = sum_s diag(sum_t (C A^t)_s M_t) q_0,s  +  sum_r (Mb_r (.) u_r) v_r^T
    q_w = A^w q_0 + sum_r (A^{w-r} beta) u_r v_r^T
    Mb_r = sum_{t >= r} h_{t-r} M_t,   h_k = C A^k beta      (the third factor filtered backward in the window)

so a window costs one matrix product [n, w B] @ [w B, m] for ``G`` and one batched product per carried
component (none when ``A = 0``: nothing outlives a step); per step only the O(n + m) vectors ``u_t``,
``v_t``, ``M_t`` are kept. ``window_sum`` does the window; ``push``/``stacked`` keep the pending steps as a
fixed-length tuple of per-step rows (a state of constant structure, never written in place).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

__all__ = ["Filter", "push", "slots", "stacked", "window_sum"]


@dataclasses.dataclass(frozen=True)
class Filter:
    """``q_t = A q_{t-1} + beta (u v^T)``, ``o_t = C q_t`` (module docstring); Python floats."""

    A: tuple[tuple[float, ...], ...]
    beta: tuple[float, ...]
    C: tuple[float, ...]

    @staticmethod
    def decay(d: float) -> "Filter":
        """One trace ``o_t = d o_{t-1} + u v^T``."""
        return Filter(((float(d),),), (1.0,), (1.0,))

    @property
    def carries(self) -> bool:
        """Whether anything outlives a step (``A != 0``); else ``q`` is never read and stays as given."""
        return any(a != 0.0 for row in self.A for a in row)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (frozen, hashable; a handful of (w, dtype) per rule)
    def coefficients(self, w: int, dtype: torch.dtype, device: torch.device):
        """``H`` [w, w] (``H[r, t] = h_{t-r}``, t >= r), ``Gc`` [w, S] (``C A^t``), ``Fc`` [w, S] (``A^{w-r} beta``)
        as tensors, ``A^w`` as nested floats; computed with Python floats (S <= 2, a few hundred steps)."""
        S = len(self.beta)
        mat = lambda X, Y: [[sum(X[i][k] * Y[k][j] for k in range(S)) for j in range(S)] for i in range(S)]  # noqa: E731
        vec = lambda X, v: [sum(X[i][k] * v[k] for k in range(S)) for i in range(S)]  # noqa: E731
        powers = [[[float(i == j) for j in range(S)] for i in range(S)]]
        for _ in range(w):
            powers.append(mat(self.A, powers[-1]))
        row = lambda P: [sum(self.C[i] * P[i][j] for i in range(S)) for j in range(S)]  # noqa: E731  C A^k
        h = [sum(c * b for c, b in zip(row(P), self.beta)) for P in powers[:w]]
        H = [[h[t - r] if t >= r else 0.0 for t in range(w)] for r in range(w)]
        Gc = [row(P) for P in powers[1:]]  # step t (1-based) reads C A^t q_0
        Fc = [vec(powers[w - 1 - r], self.beta) for r in range(w)]
        to = dict(dtype=dtype, device=device)
        return torch.tensor(H, **to), torch.tensor(Gc, **to), torch.tensor(Fc, **to), powers[w]


def slots(window: int, like: Tensor) -> tuple[Tensor, ...]:
    """An empty window: ``window`` references to one zero row shaped like ``like``."""
    zero = torch.zeros_like(like)
    return (zero,) * window


def push(rows: tuple[Tensor, ...], t: int, row: Tensor) -> tuple[Tensor, ...]:
    """``rows`` with slot ``t`` replaced by ``row`` (a new tuple; the tensors are shared, not copied)."""
    return rows[:t] + (row,) + rows[t + 1:]


def stacked(rows: tuple[Tensor, ...], t: int) -> Tensor:
    """The first ``t`` rows as one tensor [t, ...]."""
    return torch.stack(rows[:t])


def window_sum(f: Filter, M: Tensor, groups: list[tuple[Tensor, tuple[Tensor, ...], Tensor]]
               ) -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """One window (module docstring) for groups of synapses that share the third factor ``M`` [w, B, n].

    Each group is ``(U, q_0, V)``: the postsynaptic factors ``U`` [w, B, n] (groups may share one tensor), the
    carry, ``S`` tensors [B, n, m] (ignored when ``not f.carries``), and the presynaptic factors ``V`` [w, B, m].
    Returns per group ``(G [n, m], q_w)``.
    """
    w, nb, n = M.shape
    H, Gc, Fc, Aw = f.coefficients(w, M.dtype, M.device)
    S = len(Aw)
    if f.carries:
        Mb = (H @ M.reshape(w, nb * n)).reshape(w, nb, n)  # the third factor filtered backward in the window
        c = torch.einsum("ts,tbn->sbn", Gc, M)  # [S, B, n]: the weights of the carry in G
    else:
        Mb = M * float(H[0, 0]) if float(H[0, 0]) != 1.0 else M
    X = {}
    out = []
    for U, q0, V in groups:
        m = V.shape[-1]
        fused = f.carries and nb == 1  # G and the carry's new terms in one product [(1 + S) n, w] @ [w, m]
        if id(U) not in X:
            XU = (Mb * U).reshape(w * nb, n)
            X[id(U)] = torch.cat([XU] + [Fc[:, s, None] * U[:, 0] for s in range(S)], dim=1) if fused else XU
        XU = X[id(U)]
        if fused:
            P = XU.T @ V[:, 0]
            G, q = P[:n], tuple(P[(1 + s) * n:(2 + s) * n][None] for s in range(S))
            for s in range(S):
                G.addcmul_(c[s, 0, :, None], q0[s][0])
                for j, a in enumerate(Aw[s]):
                    if a != 0.0:
                        q[s].add_(q0[j], alpha=a)
            out.append((G, q))
            continue
        G = XU.T @ V.reshape(w * nb, m)
        if not f.carries:
            out.append((G, q0))
            continue
        for s, qs in enumerate(q0):
            for b in range(nb):
                G.addcmul_(c[s, b, :, None], qs[b])
        Vt = V.transpose(0, 1)  # [B, w, m]
        q = []
        for s in range(S):
            Uf = (Fc[:, s, None, None] * U).permute(1, 2, 0)  # [B, n, w]
            terms = [(j, a) for j, a in enumerate(Aw[s]) if a != 0.0]
            if not terms:
                q.append(torch.bmm(Uf, Vt))
            elif len(terms) == 1:
                q.append(torch.baddbmm(q0[terms[0][0]], Uf, Vt, beta=terms[0][1]))
            else:
                q.append(torch.baddbmm(sum(a * q0[j] for j, a in terms), Uf, Vt))
        out.append((G, tuple(q)))
    return out
