"""``backend="compiled"``: an event-driven, compiled time loop for the spiking models (numba).

The torch backend runs ``net.step`` in a Python loop: at small N each step is bound by per-operation
overhead (tens of microseconds for a handful of tiny tensor ops), at large N by the dense recurrent
matrix-vector product, which reads all of ``W_rec`` every step although only the neurons that spiked
contribute. This backend removes both, the way Brian2 and Lava do:

* the whole time loop is one compiled function (numba, ``nopython``; compiled once per dtype and cached
  on disk), so a step costs what its arithmetic costs;
* recurrent input is event-driven: when neuron ``k`` spikes at step ``t``, its outgoing weights (row
  ``k`` of ``W_rec^T``, contiguous) are added to the input of step ``t + 1``; a step costs
  ``O(N + spikes x N)`` instead of ``O(N^2)``;
* input is event-driven too: only the rows of ``W_in^T`` of the inputs that are nonzero at a step are
  read (spike inputs are mostly zero; a dense input costs what a matrix-vector product costs).

The dynamics are those of :mod:`models.lif` and :mod:`models.alif`, term for term in the same order
(every ``dynamics``, ``reset``, ``refractory``, the adaptive threshold, the leaky readout), so in float64
the voltages agree with the torch backend to rounding (the recurrent sums are added in another order)
and the spikes are identical; the tests check this on random networks. Forward only: no surrogate
gradients (train with the torch model; simulate with either).

*Sparse networks and stacks* (a ``connectivity`` that makes some matrix sparse, or a
:class:`models.stack.Stack` of ``lif``/``alif`` layers) run another loop, :mod:`neuro.backends._sparse`: every
matrix is stored by presynaptic unit, outgoing synapses only (the masks of ``net.masks``, the weights of
``params`` on them), so a spike costs its fan-out and an input spike its fan-out (one-to-one input: one
addition); the work per step is ``O(N + synapses of the units and inputs that spiked)``. Dense rows (a dense
matrix, or a dense layer of a stack) are stored as contiguous runs and read without indices. A stack's layers
run bottom-up within the step: a spike of layer ``l`` adds its feed-forward weights to layer ``l + 1``'s input of
the same step before that layer is integrated, and its recurrent weights to its own layer's next step
(:mod:`models.stack`). The wiring (which synapses exist) is built once per network (:func:`synapse_tables`,
cached: a mask is part of the network's definition); each call gathers the current weights onto it, so the
weights off a mask are never read. Dense single-layer networks keep the loop above.

Supported: ``lif`` and ``alif`` networks and stacks of them (read from their own fields), float32 and float64,
CPU tensors, any batch (the batch is a loop inside the compiled function). Anything else raises a
``ValueError`` naming the backend that can run it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params

__all__ = ["RECORDABLE", "SUPPORTED", "simulate", "synapse_tables"]

SUPPORTED = ("lif", "alif")
RECORDABLE = ("spikes", "v", "i", "a", "y")
_DYNAMICS = {"exact": 0, "euler": 1, "lava": 2}
_RESETS = {"subtract": 0, "zero": 1}


def _kernel():
    """The compiled time loop (:mod:`neuro.backends._lif_kernel`; numba is imported only there)."""
    try:
        from ._lif_kernel import run
    except ImportError as e:
        if "numba" not in str(e):
            raise
        raise ImportError("backend='compiled' needs numba (pip install numba); backend='torch' runs every "
                          "model without it") from None
    return run


def _sparse_kernel():
    """The compiled loop of sparse networks and stacks (:mod:`neuro.backends._sparse`)."""
    _kernel()  # the same clear error where numba is missing
    from ._sparse import run

    return run


def _model(net: AbstractNetwork) -> str:
    """The neuron model ``net`` runs: its own name, or a stack's layer model."""
    return getattr(net, "layer", "") if net.name == "stack" else net.name


def _check(net: AbstractNetwork, params: Params, record: tuple[str, ...]) -> None:
    if net.name == "stack" and _model(net) not in SUPPORTED:
        raise ValueError(f"backend='compiled' cannot run a stack of {_model(net)!r} layers: it runs stacks of "
                         f"{', '.join(SUPPORTED)}; backend='torch' runs every model")
    if net.name not in SUPPORTED and net.name != "stack":
        raise ValueError(f"backend='compiled' cannot run model {net.name!r}: it runs {', '.join(SUPPORTED)} "
                         f"(event-driven spiking networks); backend='torch' runs every model")
    p = next(iter(params.values()))
    if p.device.type != "cpu":
        raise ValueError(f"backend='compiled' runs on the CPU; params are on {p.device} (use backend='torch')")
    if p.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"backend='compiled' needs float32 or float64 params, got {p.dtype}")
    bad = [r for r in record if r not in RECORDABLE]
    alif = _model(net) == "alif"
    if bad or (not alif and "a" in record):
        raise ValueError(f"record={record!r} is invalid for {net.name!r}: choose from "
                         f"{', '.join(r for r in RECORDABLE if r != 'a' or alif)}")


def simulate(net: AbstractNetwork, params: Params, xs: Tensor,
             record: tuple[str, ...] = ("spikes", "v", "y")) -> Any:
    """Run ``net`` (``lif`` or ``alif``) on ``xs`` [T, B, n_in] from rest; a :class:`neuro.backends.Trace`
    with ``spikes`` and ``y`` always, ``v``/``i``/``a`` when in ``record``."""
    record = tuple(record)
    _check(net, params, record)
    if net.name == "stack" or net.masks:
        return _simulate_sparse(net, params, xs, record)
    p = {k: v.detach() for k, v in params.items()}
    dtype = p["W_rec"].dtype
    xs = xs.to(dtype=dtype)
    T, B, _ = xs.shape
    n, n_out = net.n_hidden, net.n_out
    x_np = np.ascontiguousarray(xs.numpy())
    np_dtype = x_np.dtype
    W_in_T = np.ascontiguousarray(p["W_in"].T.numpy())
    W_rec_T = np.ascontiguousarray(p["W_rec"].T.numpy())
    b, W_out, b_out = (np.ascontiguousarray(p[k].numpy()) for k in ("b", "W_out", "b_out"))
    return _run(_kernel(), (x_np, W_in_T, W_rec_T, b, W_out, b_out), net, record, (T, B, n, n_out), np_dtype)


def _run(kernel, head: tuple, cell: AbstractNetwork, record: tuple[str, ...], sizes: tuple[int, int, int, int],
         np_dtype) -> Any:
    """``kernel(*head, <the neuron's constants>, <the outputs>)`` (the dense and the sparse kernel end their
    arguments alike), with the outputs allocated for ``sizes = (T, B, n, n_out)`` and returned as a Trace."""
    from neuro.backends import Trace

    T, B, n, n_out = sizes
    spikes = np.zeros((T, B, n), np_dtype)
    y = np.zeros((T, B, n_out), np_dtype)
    empty = np.zeros((0, 0, 0), np_dtype)
    out = {r: (np.zeros((T, B, n), np_dtype) if r in record else empty) for r in ("v", "i", "a")}
    adaptive = cell.name == "alif"
    d = cell.dt
    kernel(*head, _DYNAMICS[cell.dynamics], _RESETS[cell.reset], float(cell.refractory),
           cell.alpha, cell.beta, cell.kappa, d / cell.tau_mem, d / cell.tau_syn, float(cell.v_leak), float(cell.v_th),
           float(cell.v_reset), adaptive, float(cell.beta_a) if adaptive else 0.0,
           cell.rho if adaptive else 0.0, cell.kappa_out, 0.0 if cell.dynamics == "lava" else float(cell.v_leak),
           "v" in record, "i" in record, "a" in record, spikes, out["v"], out["i"], out["a"], y)
    as_t = torch.from_numpy
    extra = {k: as_t(out[k]) for k in ("i", "a") if k in record}
    return Trace(y=as_t(y), spikes=as_t(spikes), v=as_t(out["v"]) if "v" in record else None, extra=extra)


# -- sparse networks and stacks -------------------------------------------------------------------------
class _Table:
    """Synapses by presynaptic unit (:mod:`neuro.backends._sparse`): ``n_pre`` units, ``groups`` slots per unit,
    filled block by block (:meth:`add`, the wiring only); :meth:`arrays` gathers the weights of ``params``."""

    def __init__(self, n_pre: int, groups: int = 1):
        self.n_pre, self.G = n_pre, groups
        self.start = np.zeros(n_pre * groups, np.int64)
        self.cnt = np.zeros(n_pre * groups, np.int64)
        self.lo = np.zeros(n_pre * groups, np.int64)
        self.blocks: list[tuple] = []  # (key, col0, flat, perm, size): where the synapses' weights lie in params[key]
        self.idx_parts: list[np.ndarray | int] = []
        self.size = 0
        self.indexed = False

    def add(self, key: str, shape: tuple[int, int], mask: Tensor | None, col0: int, pre0: int, post0: int,
            g: int = 0, n_cols: int | None = None) -> None:
        """The synapses of ``params[key][:, col0:col0 + n_pre]`` (``shape`` = [post, n_pre], ``n_cols`` the
        columns of ``params[key]``, default n_pre; where ``mask``, all without one) from units ``pre0 + c`` to
        ``post0 + r``, in slot ``g``."""
        n_cols = shape[1] if n_cols is None else n_cols
        n_post, n_pre = shape
        if mask is not None and bool(mask.all()):
            mask = None
        if mask is None:  # dense: every row is one contiguous run
            cnt = np.full(n_pre, n_post, np.int64)
            lo = np.full(n_pre, post0, np.int64)
            self.blocks.append((key, col0, None, None, n_post * n_pre))
            self.idx_parts.append(n_post * n_pre)
        else:
            pre, post = np.nonzero(mask.T.numpy())  # row-major: by presynaptic unit, then by target
            cnt = np.bincount(pre, minlength=n_pre).astype(np.int64)
            ends = np.cumsum(cnt)
            if len(post):
                first = post[np.minimum(ends - cnt, len(post) - 1)]
                last = post[np.maximum(ends - 1, 0)]
            else:
                first = last = np.zeros(n_pre, np.int64)
            contiguous = (cnt == 0) | (last - first + 1 == cnt)
            lo = np.where(contiguous, first + post0, -1).astype(np.int64)
            # the weights are gathered in the order they lie in memory ([post, pre] row-major: sequential reads),
            # then put in the table's order (by presynaptic unit)
            flat = post.astype(np.int64) * n_cols + (pre + col0)
            order = np.argsort(flat, kind="stable")
            perm = np.empty_like(order)
            perm[order] = np.arange(len(order))
            self.blocks.append((key, col0, flat[order], perm, len(post)))
            self.idx_parts.append((post + post0).astype(np.int32))
        rows = (np.arange(n_pre) + pre0) * self.G + g
        self.start[rows] = self.size + np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        self.cnt[rows] = cnt
        self.lo[rows] = lo
        self.indexed = self.indexed or bool((lo < 0).any())
        self.size += int(cnt.sum())

    def finish(self) -> "_Table":
        if self.indexed:  # one index per synapse (contiguous blocks: never read)
            self.idx = np.concatenate([np.zeros(i, np.int32) if isinstance(i, int) else i for i in self.idx_parts])
        else:
            self.idx = np.zeros(0, np.int32)
        del self.idx_parts
        return self

    def arrays(self, params: dict[str, np.ndarray], dtype) -> tuple:
        """The kernel's arguments, with the weights of ``params`` (numpy, [post, pre]) on the synapses."""
        vals = []
        for key, col0, flat, perm, size in self.blocks:
            w = params[key]
            if flat is None:
                vals.append(np.ascontiguousarray(w[:, col0:col0 + size // w.shape[0]].T).reshape(-1))
            else:
                vals.append(w.reshape(-1)[flat][perm])
        val = np.concatenate(vals).astype(dtype, copy=False) if vals else np.zeros(0, dtype)
        return self.G, self.start, self.cnt, self.lo, self.idx, np.ascontiguousarray(val)


@functools.lru_cache(maxsize=8)
def synapse_tables(net: AbstractNetwork) -> dict[str, _Table]:
    """The input (``"in"``, by input channel), feed-forward (``"ff"``, layer ``l`` to ``l + 1`` of a stack, by
    unit) and recurrent (``"rec"``, by unit) synapses of ``net``: only those of its masks (the wiring is part of
    the network's definition, so it is built once per network; the weights are read at each call)."""
    n, masks, shapes = net.n_hidden, net.masks, net.param_shapes()
    if net.name != "stack":
        t_in, t_ff, t_rec = _Table(net.n_in), _Table(n), _Table(n)
        t_in.add("W_in", shapes["W_in"], masks.get("W_in"), 0, 0, 0)
        t_rec.add("W_rec", shapes["W_rec"], masks.get("W_rec"), 0, 0, 0)
        return {"in": t_in.finish(), "ff": t_ff.finish(), "rec": t_rec.finish()}
    sl, L = net.slices, len(net.sizes)
    t_in = _Table(net.n_in, L if net.skip else 1)
    t_ff, t_rec = _Table(n), _Table(n)
    for l in range(L):
        k_in, k_rec = f"{l}.W_in", f"{l}.W_rec"
        m_in = masks.get(k_in)
        t_rec.add(k_rec, shapes[k_rec], masks.get(k_rec), 0, sl[l].start, sl[l].start)
        if l == 0:
            t_in.add(k_in, shapes[k_in], m_in, 0, 0, 0)
            continue
        below, post = net.sizes[l - 1], net.sizes[l]
        cols = shapes[k_in][1]
        t_ff.add(k_in, (post, below), None if m_in is None else m_in[:, :below], 0, sl[l - 1].start, sl[l].start,
                 n_cols=cols)
        if net.skip:
            t_in.add(k_in, (post, net.n_in), None if m_in is None else m_in[:, below:], below, 0, sl[l].start, g=l,
                     n_cols=cols)
    return {"in": t_in.finish(), "ff": t_ff.finish(), "rec": t_rec.finish()}


def _mode(table: tuple) -> int:
    """How the kernel reads a synapse table (:mod:`neuro.backends._sparse`): 3 without synapses, 1 where no segment
    has more than 16, else 0."""
    cnt = table[2]
    if cnt.size == 0 or not cnt.any():
        return 3
    return 1 if cnt.max() <= 16 else 0


def _input_mode(table: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`_mode` for the input table, with mode 2 where every channel has exactly one synapse: ``(2, targets,
    weights)`` (else empty arrays)."""
    G, start, cnt, lo, idx, val = table
    if cnt.size and G == 1 and (cnt == 1).all():
        tgt = lo.copy()
        far = lo < 0
        tgt[far] = idx[start[far]]
        return 2, np.ascontiguousarray(tgt), np.ascontiguousarray(val[start])
    return _mode(table), np.zeros(0, np.int64), val[:0]


def _simulate_sparse(net: AbstractNetwork, params: Params, xs: Tensor, record: tuple[str, ...]) -> Any:
    p = {k: v.detach().numpy() for k, v in params.items()}
    np_dtype = p["W_out"].dtype
    x_np = np.ascontiguousarray(xs.to(dtype=params["W_out"].dtype).numpy())
    T, B, _ = x_np.shape
    n, n_out = net.n_hidden, net.n_out
    cell = net.layers[0] if net.name == "stack" else net
    tables = synapse_tables(net)
    if net.name == "stack":
        b = np.concatenate([p[f"{l}.b"] for l in range(len(net.sizes))])
        r0 = net.readout_units.start
        edges = np.array([0, *(s.stop for s in net.slices)], np.int64)
    else:
        b, r0 = p["b"], 0
        edges = np.array([0, n], np.int64)
    b, W_out, b_out = (np.ascontiguousarray(a, dtype=np_dtype) for a in (b, p["W_out"], p["b_out"]))
    t_in, t_ff, t_rec = (tables[k].arrays(p, np_dtype) for k in ("in", "ff", "rec"))
    head = (x_np, edges, *_input_mode(t_in), _mode(t_ff), _mode(t_rec), *t_in, *t_ff, *t_rec, b, W_out, b_out, r0)
    return _run(_sparse_kernel(), head, cell, record, (T, B, n, n_out), np_dtype)
