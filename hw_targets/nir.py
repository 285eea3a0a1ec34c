"""NIR (the Neuromorphic Intermediate Representation, Pedersen et al. 2024, Nat. Commun. 15:8122) for ``lif``.

``export(net, params, path=None) -> nir.NIRGraph`` writes the recurrent network as::

    input -> fc_in (Affine W_in) -> lif (CubaLIF) -> fc_rec (Affine W_rec) -> lif      (the recurrent loop)
                                    lif -> fc_out (Affine W_out, b_out) -> readout (LI) -> output

NIR's ``CubaLIF`` is continuous (``tau_syn dI/dt = -I + w_in S``, ``tau_mem dv/dt = v_leak - v + r I``,
spike when ``v > v_threshold``, then ``v = v_reset``) and leaves the discretisation to the reader. Times
are written in seconds (``tau_ms * 1e-3``), as norse and snnTorch read them. The parameters are chosen so
that a reader that takes one forward-Euler step of ``dt`` per input step, counting a spike as an input
of 1 for that step (norse's ``from_nir``: ``i += dt/tau_syn (w_in x - i)``, then
``v += dt/tau_mem (v_leak - v + r i)``), reproduces this network:

* ``dynamics="euler"`` (norse's ``lif_step`` order): the time constants as they are, ``w_in = tau_syn/dt``,
  ``r = 1``, ``v_leak = v_leak + b``: exactly (norse's CubaLIF is our ``euler``; ``i`` there is
  ``(dt/tau_syn) w_in`` times ours before its decay, the same spikes and v);
* ``dynamics="lava"``: Lava's own reading, ``tau = dt / du`` with ``du = 1 - beta``, ``dv = 1 - alpha``,
  ``w_in = 1/du``, ``r = 1/dv``, ``v_leak = b/dv``: exactly;
* ``dynamics="exact"``: the ODE's own constants (``w_in = tau_syn/dt``, ``r = 1``): an Euler reader gets
  the ``euler`` discretisation of the same ODE, not ours (our import restores ``exact``).

The readout ``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` is an ``LI`` written in the same Euler
reading (``tau = dt/(1 - kappa_out)``, ``r = 1/(1 - kappa_out)``). norse 1.1's ``from_nir`` has no ``LI``:
export with ``readout=False`` for it (the graph's output is then the spikes). norse's CubaLIF also lets
the synaptic current leak toward ``v_leak``; with ``b != 0`` its reading differs from ours.

*Stacks* (:class:`models.stack.Stack` of ``lif`` layers, no skip connections) become the graph of their layers,
layer ``l`` the nodes ``fc_in_l`` (Affine ``W^l_in``), ``lif_l`` (CubaLIF) and ``fc_rec_l`` (Affine ``W^l_rec``,
the loop), chained by the edges ``lif_{l-1} -> fc_in_l`` (``input -> fc_in_0``), the readout read from the last
layer::

    input -> fc_in_0 -> lif_0 <-> fc_rec_0;  lif_0 -> fc_in_1 -> lif_1 <-> fc_rec_1;  ...  lif_{L-1} -> fc_out -> readout -> output

NIR's graphs have no step semantics of their own for a feed-forward edge; ours has none (layer l reads layer
l-1's spikes of the same step, as norse and snnTorch run a chain of NIR nodes), the recurrent edge one step.
A one-layer stack exports as a stack (``lif_0``; its metadata names the model ``stack``).

*Sparse matrices* (a ``connectivity``, :mod:`neuro.connectivity`) are written dense with zeros off the mask
(``W * mask``): NIR has no masks. :func:`import_` gives back the masks of the exported network when the graph
carries our metadata (its connectivity rules, which draw the same masks), and none for a graph from elsewhere;
``mask_from_zeros=True`` instead takes every weight matrix's mask from its nonzero entries (a given mask,
:func:`neuro.connectivity.given`): a weight that is 0 on the mask then loses its synapse (the same outputs,
since it is 0).

The graph's ``metadata["neuro"]`` (JSON) keeps what NIR has no field for (``dynamics``, ``dt``,
``v_leak``, the surrogate); :func:`import_` reads the numbers from the nodes and uses it for the rest
(a graph from elsewhere is read with ``dynamics="euler"``, ``dt = 1 ms``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from neuro.contract import AbstractNetwork, Params

__all__ = ["export", "import_", "write"]

_MS = 1e-3  # NIR times in seconds, ours in ms


def _check_lif(net: AbstractNetwork) -> None:
    from models.lif import LIF

    if type(net) is not LIF:
        raise ValueError(f"model {getattr(net, 'name', type(net).__name__)!r} cannot be exported to NIR: only 'lif' "
                         "(NIR's CubaLIF) can")
    bad = []
    if net.reset != "zero":
        bad.append((f"reset={net.reset!r} cannot be exported to NIR: CubaLIF resets v to v_reset", "reset='zero'"))
    if net.refractory != 0:
        bad.append((f"refractory={net.refractory!r} cannot be exported to NIR: CubaLIF has no refractory period",
                    "refractory=0"))
    if bad:
        raise ValueError(f"{'; '.join(b for b, _ in bad)}; use {', '.join(u for _, u in bad)}")


def _check(net: AbstractNetwork, params: Params) -> None:
    """Raise ``ValueError`` naming every option of ``net`` (or non-finite parameter) that NIR cannot hold."""
    from hw_targets.lava._check import check_finite
    from models.stack import Stack

    if isinstance(net, Stack):
        if net.layer != "lif":
            raise ValueError(f"a stack of {net.layer!r} layers cannot be exported to NIR: only stacks of 'lif' "
                             "(NIR's CubaLIF) can")
        if net.skip:
            raise ValueError("skip=True cannot be exported to NIR: only stacks without skip connections (each layer "
                             "reads the layer below) are")
        _check_lif(net.layers[0])
    else:
        _check_lif(net)
    net.check_params(params)
    check_finite(params, "NIR")


def _coefficients(net) -> dict[str, float]:
    """tau_syn, tau_mem (ms), w_in, r of the Euler reading that reproduces ``net.dynamics``."""
    dt = net.dt
    if net.dynamics == "lava":
        du, dv = 1.0 - net.beta, 1.0 - net.alpha
        return {"tau_syn": dt / du, "tau_mem": dt / dv, "w_in": 1.0 / du, "r": 1.0 / dv, "leak_gain": 1.0 / dv}
    return {"tau_syn": net.tau_syn, "tau_mem": net.tau_mem, "w_in": net.tau_syn / dt, "r": 1.0, "leak_gain": 1.0}


def _layer_nodes(net, p: dict[str, np.ndarray]) -> tuple:
    """One ``lif`` layer's nodes: Affine ``W_in``, CubaLIF, Affine ``W_rec`` (``p``: its masked W_in, W_rec, b)."""
    import nir

    n, c = net.n_hidden, _coefficients(net)

    def full(x: float) -> np.ndarray:
        return np.full(n, float(x))

    v_leak = p["b"] * c["leak_gain"] if net.dynamics == "lava" else net.v_leak + p["b"]
    return (nir.Affine(weight=p["W_in"], bias=np.zeros(n)),
            nir.CubaLIF(tau_syn=full(c["tau_syn"] * _MS), tau_mem=full(c["tau_mem"] * _MS), r=full(c["r"]),
                        v_leak=v_leak, v_threshold=full(net.v_th), v_reset=full(net.v_reset), w_in=full(c["w_in"])),
            nir.Affine(weight=p["W_rec"], bias=np.zeros(n)))


def export(net: AbstractNetwork, params: Params, path: str | Path | None = None, readout: bool = True):
    """``net`` (a ``lif`` network or a stack of ``lif`` layers) and ``params`` as a ``nir.NIRGraph`` (written to
    ``path`` too when given: :func:`write`); sparse matrices written dense, zeros off the mask."""
    import nir

    from models.stack import Stack

    _check(net, params)
    p = {k: v.detach().to(device="cpu", dtype=torch.float64) for k, v in params.items()}
    stack = isinstance(net, Stack)
    if stack:
        layers = [(net.layers[l], net.layer_params(p, l), (f"fc_in_{l}", f"lif_{l}", f"fc_rec_{l}"))
                  for l in range(len(net.sizes))]
        read_net = net._readout_net
    else:
        layers = [(net, {k: net.weight(p, k) for k in ("W_in", "W_rec", "b")}, ("fc_in", "lif", "fc_rec"))]
        read_net = net
    nodes = {"input": nir.Input(input_type={"input": np.array([net.n_in])})}
    edges, below = [], "input"
    for layer, lp, names in layers:
        nodes.update(zip(names, _layer_nodes(layer, {k: v.numpy() for k, v in lp.items()})))
        fc_in, lif, fc_rec = names
        edges += [(below, fc_in), (fc_in, lif), (lif, fc_rec), (fc_rec, lif)]
        below = lif
    if readout:
        k = read_net.kappa_out
        m = net.n_out
        nodes["fc_out"] = nir.Affine(weight=p["W_out"].numpy(), bias=p["b_out"].numpy())
        nodes["readout"] = nir.LI(tau=np.full(m, read_net.dt / (1.0 - k) * _MS), r=np.full(m, 1.0 / (1.0 - k)),
                                  v_leak=np.zeros(m))
        nodes["output"] = nir.Output(output_type={"output": np.array([m])})
        edges += [(below, "fc_out"), ("fc_out", "readout"), ("readout", "output")]
    else:
        nodes["output"] = nir.Output(output_type={"output": np.array([layers[-1][0].n_hidden])})
        edges.append((below, "output"))
    fields = {f.name: getattr(net, f.name) for f in dataclasses.fields(net)}
    meta = {"neuro": json.dumps({"model": net.name, "fields": fields})}
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    if path is not None:
        write(graph, path)
    return graph


def write(graph, path: str | Path) -> Path:
    """``nir.write`` of ``graph`` to ``path``, atomically: a failed write keeps the previous file."""
    import io

    import nir

    from neuro.io import atomic_open

    # HDF5 is written in memory, then the bytes by Python: HDF5 writing to a file that hits a file-size limit
    # (EFBIG) crashed the process (a segmentation fault, h5py 3.16 / HDF5 2.0), where Python raises OSError
    buf = io.BytesIO()
    nir.write(buf, graph)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _uniform(node, field: str) -> float:
    a = np.asarray(getattr(node, field), dtype=np.float64).ravel()
    if a.size == 0 or not np.all(a == a[0]):
        raise ValueError(f"CubaLIF {field} varies across neurons ({a.min():.6g} to {a.max():.6g}): "
                         f"the 'lif' model has one {field} for all neurons")
    return float(a[0])


def _affine(node) -> tuple[np.ndarray, np.ndarray]:
    import nir

    if isinstance(node, nir.Affine):
        return np.asarray(node.weight, np.float64), np.asarray(node.bias, np.float64)
    if isinstance(node, nir.Linear):
        w = np.asarray(node.weight, np.float64)
        return w, np.zeros(w.shape[0])
    raise ValueError(f"expected an Affine or Linear node, found {type(node).__name__}")


def _read_lif(lif, dynamics: str, dt: float, fields: dict) -> tuple[dict, float, np.ndarray]:
    """A CubaLIF node's ``lif`` fields (tau_syn, tau_mem, v_leak, v_th, v_reset), the gain its ``w_in`` and ``r``
    put on the weights, and the bias ``b``."""
    tau_syn, tau_mem = _uniform(lif, "tau_syn") / _MS, _uniform(lif, "tau_mem") / _MS
    w_in, r, v_th, v_reset = (_uniform(lif, f) for f in ("w_in", "r", "v_threshold", "v_reset"))
    v_leak_arr = np.asarray(lif.v_leak, np.float64)
    if dynamics == "lava":
        du, dv = dt / tau_syn, dt / tau_mem
        gain = w_in * du * r * dv  # 1 when written by export
        out = {"tau_syn": -dt / math.log(1.0 - du), "tau_mem": -dt / math.log(1.0 - dv), "v_leak": 0.0}
        b = v_leak_arr * dv
    else:
        gain = w_in * r * dt / tau_syn
        v_leak = float(fields.get("v_leak", 0.0))
        out = {"tau_syn": tau_syn, "tau_mem": tau_mem, "v_leak": v_leak}
        b = v_leak_arr - v_leak
    gain = 1.0 if abs(gain - 1.0) < 1e-12 else gain  # as written by export, up to rounding
    for k in ("tau_syn", "tau_mem"):  # our own export: the exact values, when the nodes agree
        if isinstance(fields.get(k), (int, float)) and math.isclose(out[k], fields[k], rel_tol=1e-12):
            out[k] = fields[k]
    return {**out, "v_th": v_th, "v_reset": v_reset}, gain, b


def import_(graph, dt: float | None = None, mask_from_zeros: bool = False) -> tuple[AbstractNetwork, Params]:
    """A ``lif`` network, or a stack of ``lif`` layers, and its float64 params from a NIR graph (or a path to
    one) of the shape :func:`export` writes: Input -> Affine -> CubaLIF (<-> Affine) [-> Affine -> CubaLIF
    (<-> Affine)] ... [-> Affine -> LI] -> Output (several CubaLIF in a chain: a stack). The masks: those of
    the metadata's connectivity; ``mask_from_zeros=True``: every weight matrix's nonzero entries (module
    docstring)."""
    import nir

    import models
    from neuro import connectivity

    if isinstance(graph, (str, Path)):
        graph = nir.read(str(graph))
    meta = graph.metadata.get("neuro") if isinstance(graph.metadata, dict) else None
    if isinstance(meta, bytes):
        meta = meta.decode()
    meta = json.loads(meta) if meta else {}
    fields = dict(meta.get("fields", {}))
    is_stack = meta.get("model") == "stack"
    opts = dict(fields.get("options", ())) if is_stack else {}
    if is_stack:  # every field of its layers: the options it was built with and the layer model's defaults
        layer0 = models.make("lif", n_in=1, n_hidden=1, n_out=1, **opts)
        layer_fields = {f.name: getattr(layer0, f.name) for f in dataclasses.fields(layer0)}
    else:
        layer_fields = fields
    dynamics = layer_fields.get("dynamics", "euler")
    dt = float(dt if dt is not None else layer_fields.get("dt", 1.0))
    nodes, edges = graph.nodes, list(graph.edges)
    out_of = {}
    for a, b in edges:
        out_of.setdefault(a, []).append(b)
    lifs = [k for k, v in nodes.items() if isinstance(v, nir.CubaLIF)]
    if not lifs:
        raise ValueError("expected at least one CubaLIF node, found none")
    inputs = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1 or len(out_of.get(inputs[0], [])) != 1:
        raise ValueError("expected one Input node feeding one Affine/Linear node")
    chain, fc_in = [], out_of[inputs[0]][0]  # (W_in, W_rec, CubaLIF node) per layer, bottom-up
    while True:
        targets = out_of.get(fc_in, [])
        if len(targets) != 1 or not isinstance(nodes[targets[0]], nir.CubaLIF):
            raise ValueError(f"expected Affine -> CubaLIF, found {fc_in!r} -> {', '.join(map(repr, targets)) or 'nothing'}")
        lif_name = targets[0]
        if any(lif_name == name for name, _, _, _ in chain):
            raise ValueError(f"CubaLIF {lif_name!r} is reached twice: expected a chain of layers")
        rec = [a for a in out_of.get(lif_name, []) if lif_name in out_of.get(a, [])]
        if len(rec) > 1:
            raise ValueError(f"expected at most one recurrent Affine on CubaLIF {lif_name!r} (CubaLIF -> Affine -> "
                             f"CubaLIF), found {len(rec)}")
        W_in, b_in = _affine(nodes[fc_in])
        if np.any(b_in != 0):
            raise ValueError(f"the Affine {fc_in!r} into {lif_name!r} has a bias: the 'lif' model has none there "
                             "(its bias is CubaLIF's v_leak)")
        n = W_in.shape[0]
        W_rec = _affine(nodes[rec[0]])[0] if rec else np.zeros((n, n))
        chain.append((lif_name, W_in, W_rec, nodes[lif_name]))
        following = [a for a in out_of.get(lif_name, []) if a not in rec]
        up = [a for a in following if any(isinstance(nodes[t], nir.CubaLIF) for t in out_of.get(a, []))]
        if not up:
            break
        if len(up) > 1 or len(following) > 1:
            raise ValueError(f"CubaLIF {lif_name!r} feeds {', '.join(map(repr, following))}: expected one layer above "
                             "it and nothing else (a stack without skip connections)")
        fc_in = up[0]
    if len(chain) != len(lifs):
        raise ValueError(f"found {len(lifs)} CubaLIF nodes, {len(chain)} of them in the chain from the input: "
                         "expected a chain of layers")

    layers = [_read_lif(node, dynamics, dt, layer_fields) for _, _, _, node in chain]
    lif_fields = layers[0][0]
    for l, (f, _, _) in enumerate(layers[1:], 1):
        for k, v in f.items():
            if not math.isclose(v, lif_fields[k], rel_tol=1e-12, abs_tol=1e-15):
                raise ValueError(f"CubaLIF {chain[l][0]!r} has {k}={v:.6g}, layer 0 {lif_fields[k]:.6g}: a stack's "
                                 "layers share their neuron parameters")
    last = chain[-1][0]
    following = [a for a in out_of.get(last, []) if last not in out_of.get(a, [])]
    readout = [a for a in following if not isinstance(nodes[a], nir.Output)]
    n_last = chain[-1][1].shape[0]
    if readout:
        fc_out = readout[0]
        W_out, b_out = _affine(nodes[fc_out])
        li = nodes[out_of[fc_out][0]]
        if not isinstance(li, nir.LI):
            raise ValueError(f"expected CubaLIF -> Affine -> LI for the readout, found {type(li).__name__}")
        tau_li = float(np.asarray(li.tau, np.float64).ravel()[0]) / _MS
        kappa = 1.0 - dt / tau_li
        g_out = float(np.asarray(li.r, np.float64).ravel()[0]) * dt / tau_li
        g_out = 1.0 if abs(g_out - 1.0) < 1e-12 else g_out
        W_out, b_out = W_out * g_out, b_out * g_out
        tau_out = -dt / math.log(kappa)
    else:  # spikes out: a readout of one unit per neuron with no leak to speak of
        W_out, b_out, tau_out = np.eye(n_last), np.zeros(n_last), float(layer_fields.get("tau_out", 20.0))
    if isinstance(layer_fields.get("tau_out"), (int, float)) and math.isclose(tau_out, layer_fields["tau_out"],
                                                                               rel_tol=1e-12):
        tau_out = layer_fields["tau_out"]
    keep = {k: v for k, v in layer_fields.items() if k not in ("n_in", "n_hidden", "n_out", "connectivity")}
    keep.update(lif_fields, dynamics=dynamics, dt=dt, tau_out=tau_out, reset="zero", refractory=0)
    weights = {}
    for l, ((_, W_in, W_rec, _), (_, gain, b)) in enumerate(zip(chain, layers)):
        pre = f"{l}." if (is_stack or len(chain) > 1) else ""
        weights.update({pre + "W_in": W_in * gain, pre + "W_rec": W_rec * gain, pre + "b": b})
    weights.update(W_out=W_out, b_out=b_out)
    params = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in weights.items()}
    if mask_from_zeros:
        conn = {k: connectivity.given(params[k] != 0) for k in params
                if k.rsplit(".", 1)[-1] in ("W_in", "W_rec") and bool((params[k] == 0).any())}
    else:
        conn = fields.get("connectivity", ())
        conn = {k: tuple(map(tuple, r)) if isinstance(r, list) else r for k, r in conn} if conn else {}
    n_in = chain[0][1].shape[1]
    if is_stack or len(chain) > 1:
        from models.lif import LIF
        from models.stack import Stack

        def same(a, b) -> bool:  # b read back from the nodes: equal up to rounding
            if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
                return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
            return a == b

        # a stack's options: those it was built with, and any other value that differs from the layer's default
        default = {f.name: f.default for f in dataclasses.fields(LIF)}
        keep = {k: v for k, v in keep.items() if k in opts or not same(default.get(k), v)}
        own = {f.name for f in dataclasses.fields(Stack)} - {"n_in", "n_hidden", "n_out", "layer", "sizes", "options",
                                                             "connectivity"}
        stack_kw = {k: v for k, v in fields.items() if k in own} if is_stack else {}  # skip, init scales, ...
        sizes = tuple(W_in.shape[0] for _, W_in, _, _ in chain)
        net = Stack(n_in=n_in, n_out=W_out.shape[0], layer="lif", sizes=sizes, options=tuple(sorted(keep.items())),
                    connectivity=conn, **stack_kw)
    else:
        net = models.make("lif", n_in=n_in, n_hidden=n_last, n_out=W_out.shape[0], connectivity=conn, **keep)
    net.check_params(params)
    return net, params
