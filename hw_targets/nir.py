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


def _check(net: AbstractNetwork, params: Params) -> None:
    """Raise ``ValueError`` naming every option of ``net`` (or non-finite parameter) that NIR cannot hold."""
    from hw_targets.lava._check import check_finite
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
    net.check_params(params)
    check_finite(params, "NIR")


def _coefficients(net) -> dict[str, float]:
    """tau_syn, tau_mem (ms), w_in, r of the Euler reading that reproduces ``net.dynamics``."""
    dt = net.dt
    if net.dynamics == "lava":
        du, dv = 1.0 - net.beta, 1.0 - net.alpha
        return {"tau_syn": dt / du, "tau_mem": dt / dv, "w_in": 1.0 / du, "r": 1.0 / dv, "leak_gain": 1.0 / dv}
    return {"tau_syn": net.tau_syn, "tau_mem": net.tau_mem, "w_in": net.tau_syn / dt, "r": 1.0, "leak_gain": 1.0}


def export(net: AbstractNetwork, params: Params, path: str | Path | None = None, readout: bool = True):
    """``net`` and ``params`` as a ``nir.NIRGraph`` (written to ``path`` too when given: :func:`write`)."""
    import nir

    _check(net, params)
    p = {k: v.detach().to(device="cpu", dtype=torch.float64).numpy() for k, v in params.items()}
    n, c = net.n_hidden, _coefficients(net)

    def full(x: float) -> np.ndarray:
        return np.full(n, float(x))

    if net.dynamics == "lava":
        v_leak = p["b"] * c["leak_gain"]
    else:
        v_leak = net.v_leak + p["b"]
    nodes = {
        "input": nir.Input(input_type={"input": np.array([net.n_in])}),
        "fc_in": nir.Affine(weight=p["W_in"], bias=np.zeros(n)),
        "lif": nir.CubaLIF(tau_syn=full(c["tau_syn"] * _MS), tau_mem=full(c["tau_mem"] * _MS), r=full(c["r"]),
                           v_leak=v_leak, v_threshold=full(net.v_th), v_reset=full(net.v_reset), w_in=full(c["w_in"])),
        "fc_rec": nir.Affine(weight=p["W_rec"], bias=np.zeros(n)),
    }
    edges = [("input", "fc_in"), ("fc_in", "lif"), ("lif", "fc_rec"), ("fc_rec", "lif")]
    if readout:
        k = net.kappa_out
        m = net.n_out
        nodes["fc_out"] = nir.Affine(weight=p["W_out"], bias=p["b_out"])
        nodes["readout"] = nir.LI(tau=np.full(m, net.dt / (1.0 - k) * _MS), r=np.full(m, 1.0 / (1.0 - k)),
                                  v_leak=np.zeros(m))
        nodes["output"] = nir.Output(output_type={"output": np.array([m])})
        edges += [("lif", "fc_out"), ("fc_out", "readout"), ("readout", "output")]
    else:
        nodes["output"] = nir.Output(output_type={"output": np.array([n])})
        edges.append(("lif", "output"))
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


def import_(graph, dt: float | None = None) -> tuple[AbstractNetwork, Params]:
    """A ``lif`` network and its float64 params from a NIR graph (or a path to one) of the shape
    :func:`export` writes: Input -> Affine -> CubaLIF (<-> Affine) [-> Affine -> LI] -> Output."""
    import nir

    import models

    if isinstance(graph, (str, Path)):
        graph = nir.read(str(graph))
    meta = graph.metadata.get("neuro") if isinstance(graph.metadata, dict) else None
    if isinstance(meta, bytes):
        meta = meta.decode()
    fields = dict(json.loads(meta)["fields"]) if meta else {}
    dynamics = fields.get("dynamics", "euler")
    dt = float(dt if dt is not None else fields.get("dt", 1.0))
    nodes, edges = graph.nodes, list(graph.edges)
    out_of = {}
    for a, b in edges:
        out_of.setdefault(a, []).append(b)
    lifs = [k for k, v in nodes.items() if isinstance(v, nir.CubaLIF)]
    if len(lifs) != 1:
        raise ValueError(f"expected one CubaLIF node, found {len(lifs)} ({', '.join(lifs) or 'none'})")
    lif_name = lifs[0]
    lif = nodes[lif_name]
    inputs = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1 or len(out_of.get(inputs[0], [])) != 1:
        raise ValueError("expected one Input node feeding one Affine/Linear node")
    fc_in = out_of[inputs[0]][0]
    rec = [a for a in out_of.get(lif_name, []) if lif_name in out_of.get(a, [])]
    if out_of.get(fc_in) != [lif_name] or len(rec) > 1:
        raise ValueError("expected Input -> Affine -> CubaLIF with at most one recurrent Affine "
                         "(CubaLIF -> Affine -> CubaLIF)")
    W_in, b_in = _affine(nodes[fc_in])
    if np.any(b_in != 0):
        raise ValueError("the input Affine has a bias: the 'lif' model has none there (its bias is CubaLIF's v_leak)")
    n = W_in.shape[0]
    W_rec = _affine(nodes[rec[0]])[0] if rec else np.zeros((n, n))

    tau_syn, tau_mem = _uniform(lif, "tau_syn") / _MS, _uniform(lif, "tau_mem") / _MS
    w_in, r, v_th, v_reset = (_uniform(lif, f) for f in ("w_in", "r", "v_threshold", "v_reset"))
    v_leak_arr = np.asarray(lif.v_leak, np.float64)
    if dynamics == "lava":
        du, dv = dt / tau_syn, dt / tau_mem
        gain = w_in * du * r * dv  # 1 when written by export
        lif_fields = {"tau_syn": -dt / math.log(1.0 - du), "tau_mem": -dt / math.log(1.0 - dv), "v_leak": 0.0}
        b = v_leak_arr * dv
    else:
        gain = w_in * r * dt / tau_syn
        v_leak = float(fields.get("v_leak", 0.0))
        lif_fields = {"tau_syn": tau_syn, "tau_mem": tau_mem, "v_leak": v_leak}
        b = v_leak_arr - v_leak
    gain = 1.0 if abs(gain - 1.0) < 1e-12 else gain  # as written by export, up to rounding
    W_in, W_rec = W_in * gain, W_rec * gain

    following = [a for a in out_of.get(lif_name, []) if a not in rec]
    readout = [a for a in following if not isinstance(nodes[a], nir.Output)]
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
        W_out, b_out, tau_out = np.eye(n), np.zeros(n), float(fields.get("tau_out", 20.0))
    derived = {**lif_fields, "tau_out": tau_out}
    for k in ("tau_syn", "tau_mem", "tau_out"):  # our own export: the exact values, when the nodes agree
        if isinstance(fields.get(k), (int, float)) and math.isclose(derived[k], fields[k], rel_tol=1e-12):
            derived[k] = fields[k]
    lif_fields, tau_out = {k: derived[k] for k in lif_fields}, derived["tau_out"]
    keep = {k: v for k, v in fields.items() if k not in ("n_in", "n_hidden", "n_out")}
    keep.update(lif_fields, dynamics=dynamics, dt=dt, tau_out=tau_out, v_th=v_th, v_reset=v_reset, reset="zero",
                refractory=0)
    net = models.make("lif", n_in=W_in.shape[1], n_hidden=n, n_out=W_out.shape[0], **keep)
    params = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
              for k, v in (("W_in", W_in), ("W_rec", W_rec), ("b", b), ("W_out", W_out), ("b_out", b_out))}
    net.check_params(params)
    return net, params
