"""The Brian2 network of :mod:`neuro.backends.brian2`: which models, options and targets the backend covers
(the checks), the Brian2 objects built for ``rows`` copies of a model or of a stack's layers (equations, the
slots of one time step, the block-diagonal recurrent and feed-forward synapses that exist in the network's
masks, monitors; see :mod:`neuro.backends.brian2` for the schedule), and the float64 arrays a run takes
(weights, input jumps, initial state, by Brian2 object and variable) and gives back (spikes, recorded traces,
final state, the layers' units side by side as in the torch state).
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from neuro.contract import AbstractNetwork, Params, check_choice

TARGETS = ("numpy", "cython", "cpp_standalone")
MODELS = ("lif", "alif", "rate", "stack")
#: layer models of a stack (:mod:`models.stack`) the backend expresses
STACK_LAYERS = ("lif", "alif")
#: Brian2's clock for the rate RNN, a discrete map with no time constant (ms; any value gives the same map)
RATE_DT = 1.0
DYNAMICS = {"exact": "exact", "euler": "euler"}


# -- availability --------------------------------------------------------------------------------------
def _b2():
    try:
        import brian2
    except ImportError as e:  # pragma: no cover - brian2 is installed here
        raise ImportError("backend='brian2' needs Brian2, which is not installed (pip install 'brian2<3' or "
                          "pip install neuro[brian2]); backend='torch' works without it") from e
    return brian2


@functools.lru_cache(maxsize=None)
def _compiler_problem(target: str) -> str | None:
    """Why ``target`` cannot run here (None when it can)."""
    if target == "numpy":
        return None
    if target == "cython":
        try:
            from brian2.codegen.runtime.cython_rt import CythonCodeObject
            ok = CythonCodeObject.is_available()
        except Exception as e:  # pragma: no cover - depends on the machine
            return f"Cython or a C++ compiler is not usable ({type(e).__name__}: {e})"
        return None if ok else "Cython or a C++ compiler is not usable (Brian2's cython check failed)"
    missing = [tool for tool in ("make",) if shutil.which(tool) is None]
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        missing.append("a C++ compiler (g++, c++ or clang++)")
    return f"{' and '.join(missing)} not found on PATH" if missing else None


def check_target(target: str) -> None:
    """``ValueError`` for an unknown target, ``RuntimeError`` naming the targets that work for a missing compiler."""
    check_choice("target", target, TARGETS)
    problem = _compiler_problem(target)
    if problem is not None:
        others = [t for t in TARGETS if t not in (target, "numpy") and _compiler_problem(t) is None]
        also = f" ({', '.join(map(repr, others))} works here too)" if others else ""
        raise RuntimeError(f"target={target!r} of backend='brian2' cannot run here: {problem}; target='numpy' "
                           f"works instead (it needs no compiler){also}")


def check_model(net: AbstractNetwork) -> None:
    """``ValueError`` unless the Brian2 backend expresses ``net`` (the model and each of its options)."""
    if net.name not in MODELS:
        raise ValueError(f"model {net.name!r} is not expressed by backend='brian2': it covers "
                         f"{', '.join(map(repr, MODELS))}; use backend='torch' for {net.name!r}")
    if net.name == "rate":
        return
    if net.name == "stack":
        if net.layer not in STACK_LAYERS:
            raise ValueError(f"a stack of {net.layer!r} layers is not expressed by backend='brian2': it covers stacks "
                             f"of {', '.join(map(repr, STACK_LAYERS))}; use backend='torch' for layer={net.layer!r}")
        net = net.layers[0]
    if net.dynamics not in DYNAMICS:
        raise ValueError(f"dynamics={net.dynamics!r} of {net.name!r} is not expressed by backend='brian2' (its "
                         f"voltage sees the current after the decay, not an ODE): it covers "
                         f"{', '.join(map(repr, DYNAMICS))}; use backend='torch' for dynamics={net.dynamics!r}")


# -- the layers of a network ---------------------------------------------------------------------------------
class _Layer(NamedTuple):
    """One layer as Brian2 builds it: a single-layer network is the one layer of its own model."""

    net: AbstractNetwork  # the layer's model (its hyper-parameters)
    n: int  # units
    rec: np.ndarray  # bool [n, n]: which recurrent synapses exist (post, pre)
    ff: np.ndarray | None  # bool [n, n_below]: feed-forward synapses from the layer below (None for layer 0)
    x_in: bool  # the layer receives W_in x_t (layer 0; every layer of a stack with skip connections)


def _mask(net: AbstractNetwork, name: str, shape: tuple[int, int]) -> np.ndarray:
    m = net.masks.get(name)
    return np.ones(shape, dtype=bool) if m is None else m.detach().cpu().numpy().astype(bool)


def _layers(net: AbstractNetwork) -> list[_Layer]:
    """The layers of ``net`` with the synapses that exist (a single-layer network: one layer)."""
    if net.name != "stack":
        n = net.n_hidden
        return [_Layer(net, n, _mask(net, "W_rec", (n, n)), None, True)]
    out = []
    for l, (layer, n) in enumerate(zip(net.layers, net.sizes)):
        ff = None if l == 0 else _mask(net, f"{l}.W_in", (n, layer.n_in))[:, :net.sizes[l - 1]]
        out.append(_Layer(layer, n, _mask(net, f"{l}.W_rec", (n, n)), ff, l == 0 or net.skip))
    return out


def _layer_params(net: AbstractNetwork, params: Params) -> list[dict[str, Tensor]]:
    """Each layer's masked ``W_in``, ``W_rec``, ``b`` in float64 on the CPU."""
    if net.name != "stack":
        each = [{k: net.weight(params, k) for k in ("W_in", "W_rec", "b")}]
    else:
        each = [net.layer_params(params, l) for l in range(len(net.sizes))]
    return [{k: v.detach().to("cpu", torch.float64) for k, v in p.items()} for p in each]


def _synapse_index(mask: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Presynaptic and postsynaptic neuron of every synapse of ``mask`` [post, pre] that exists, block diagonal
    over the rows: row by row, sorted by presynaptic neuron, then postsynaptic (``mask.T``'s nonzeros row-major:
    the synapses of one presynaptic neuron are contiguous, which is what a spike reads)."""
    n_post, n_pre = mask.shape
    pre, post = np.nonzero(mask.T)
    off = np.arange(rows)[:, None]
    return (pre[None, :] + off * n_pre).reshape(-1), (post[None, :] + off * n_post).reshape(-1)


def _synapse_weights(W: np.ndarray, mask: np.ndarray, rows: int) -> np.ndarray:
    """``W`` [post, pre] in the order of :func:`_synapse_index`."""
    return np.tile(W.T[mask.T], rows)


def _input_width(net: AbstractNetwork) -> int:
    """Units that receive the input jump ``W_in x_t``, per row."""
    return sum(L.n for L in _layers(net) if L.x_in)


def input_jumps(net: AbstractNetwork, params: Params, xs: Tensor) -> np.ndarray:
    """``W_in x_t`` of every unit that reads ``x`` (layer 0, and with skip connections every layer's ``x``
    columns), [T, B (n of those layers)]: layer by layer, each [T, B n_l] row-major (the TimedArray's layout)."""
    T, B, _ = xs.shape
    x = xs.detach().to("cpu", torch.float64)
    parts = []
    for L, p in zip(_layers(net), _layer_params(net, params)):
        if L.x_in:
            W = p["W_in"] if L.ff is None else p["W_in"][:, L.ff.shape[1]:]
            parts.append((x @ W.T).reshape(T, B * L.n))
    return torch.cat(parts, 1).numpy()


# -- the Brian2 network ----------------------------------------------------------------------------------
class _Inputs(NamedTuple):
    """Everything that changes between runs of one structure (float64 numpy)."""

    I_in: np.ndarray  # [T, M n_x] input jump per step (W_in x_t, + noise): the TimedArray's values
    values: dict[tuple[str, str], np.ndarray]  # (Brian2 object name, variable) -> values: weights, b, initial state


class _Outputs(NamedTuple):
    spikes: np.ndarray  # [T, M N] 0/1 (the layers' units side by side in each row)
    v: np.ndarray | None  # [T, M N] after reset (None unless recorded)
    i: np.ndarray | None  # [T, M N] before the recurrent synapses
    a: np.ndarray | None  # [T, M N]
    final: dict[str, np.ndarray]  # v, isyn, r, a at the end of the run [M N]
    run_s: float | None = None  # Brian2's own time for the network run (no build, no I/O), seconds
    h: np.ndarray | None = None  # [T, M n] the rate RNN's h_t (spikes, v, i, a are None then)


#: slots of one step: every layer's objects run in the ``groups`` slot, layer after layer, in this order
_ORDER = {"feedforward": 0, "update": 1, "refractory": 2, "threshold": 3, "adaptation": 4, "reset": 5}
_LAYER_ORDERS = 10


def _neuron_name(net: AbstractNetwork, l: int) -> str:
    # fixed names: Brian2 names arrays after their owner, and the Cython cache (~/.cython) is keyed by the code
    return "neuro_neurons" if net.name != "stack" else f"neuro_neurons_{l}"


def _build(b2, net: AbstractNetwork, rows: int, steps: int, record: bool, I_in) -> dict[str, Any]:
    """Create the Brian2 objects (on the active device) for ``rows`` copies of ``net`` over ``steps`` steps.

    Returns ``objs`` (for the Network), ``layers`` (per layer: its group ``G``, spike monitor and state
    monitors), ``settable`` (the ``(object, variable)`` pairs a run writes: :attr:`_Inputs.values`) and
    ``by_name`` (those objects)."""
    layers = _layers(net)
    stack = net.name == "stack"
    clock = b2.Clock(dt=_dt_ms(net) * b2.ms)
    objs, out, settable, by_name = [], [], [], {}
    offset = 0
    below = None
    for l, L in enumerate(layers):
        lay = L.net
        alif = lay.name == "alif"
        refr = lay.refractory > 0
        ns = {"tau_mem": lay.tau_mem * b2.ms, "tau_syn": lay.tau_syn * b2.ms, "v_leak": float(lay.v_leak),
              "v_th": float(lay.v_th), "v_reset": float(lay.v_reset), "R": float(lay.refractory), "I_in": I_in}
        # equal time constants: one symbol, so that Brian2's exact solver sees the repeated eigenvalue (with two
        # symbols its general solution divides by tau_mem - tau_syn = 0)
        tau_syn = "tau_mem" if lay.tau_syn == lay.tau_mem else "tau_syn"
        eqs = ["dv/dt = (v_leak + b - v + isyn) / tau_mem : 1", f"disyn/dt = -isyn / {tau_syn} : 1",
               "b : 1 (constant)", "r : 1", "ref : 1"]
        threshold = "v > v_th"
        reset = ["v = v - v_th" if lay.reset == "subtract" else "v = v_reset"]
        if alif:
            eqs.append("a : 1")
            ns.update(beta_a=float(lay.beta_a), rho=float(lay.rho))
            threshold = "v > v_th + beta_a * a"
            reset.append("a += 1")
        if refr:
            threshold += " and ref == 0"
            reset.append("r = R")
        name = _neuron_name(net, l)
        G = b2.NeuronGroup(rows * L.n, "\n".join(eqs), threshold=threshold, reset="\n".join(reset),
                           method=DYNAMICS[lay.dynamics], clock=clock, namespace=ns, name=name)
        base = _LAYER_ORDERS * l
        G.state_updater.order = base + _ORDER["update"]
        G.set_event_schedule("spike", when="groups", order=base + _ORDER["threshold"])
        G.resetter["spike"].when, G.resetter["spike"].order = "groups", base + _ORDER["reset"]
        objs.append(G)
        if L.x_in:
            objs.append(G.run_regularly(f"isyn += I_in(t, i + {offset})" if offset else "isyn += I_in(t, i)",
                                        when="start", order=l, clock=clock, name=f"{name}_input"))
            offset += rows * L.n
        if refr:
            objs.append(G.run_regularly("ref = int(r > 0)\nv = v_reset * ref + v * (1 - ref)\nr = clip(r - 1, 0, R)",
                                        when="groups", order=base + _ORDER["refractory"], clock=clock,
                                        name=f"{name}_refractory"))
        if alif:
            objs.append(G.run_regularly("a = rho * a", when="groups", order=base + _ORDER["adaptation"], clock=clock,
                                        name=f"{name}_adaptation"))
        by_name[name] = G
        settable += [(name, k) for k in ("v", "isyn", "r", "b") + (("a",) if alif else ())]
        for kind, mask, pre_group in (("recurrent", L.rec, G), ("feedforward", L.ff, below)):
            if mask is None or not mask.any():  # no synapse exists (Brian2 refuses a Synapses without any)
                continue
            sname = "neuro_recurrent" if not stack else f"neuro_{kind}_{l}"
            S = b2.Synapses(pre_group, G, "w : 1", on_pre="isyn_post += w", clock=clock, name=sname)
            pre, post = _synapse_index(mask, rows)
            S.connect(i=pre, j=post)
            if kind == "feedforward":  # delay 0, after the layer below's threshold, before this layer's update
                S._pathways[0].when, S._pathways[0].order = "groups", base + _ORDER["feedforward"]
            objs.append(S)
            by_name[sname] = S
            settable.append((sname, "w"))
        spikes = b2.SpikeMonitor(G, record=True, name=f"{name}_spikes")
        objs.append(spikes)
        mons = {}
        if record:
            mons["end"] = b2.StateMonitor(G, ["v", "a"] if alif else ["v"], record=True, when="end", clock=clock,
                                          name=f"{name}_state_end")
            mons["i"] = b2.StateMonitor(G, "isyn", record=True, when="before_synapses", clock=clock,
                                        name=f"{name}_state_i")
            objs += list(mons.values())
        out.append({"G": G, "spikes": spikes, "mons": mons, "alif": alif, "n": L.n})
        below = G
    return {"objs": objs, "layers": out, "settable": settable, "by_name": by_name, "clock": clock,
            "alif": out[0]["alif"]}


def _build_rate(b2, net: AbstractNetwork, rows: int, steps: int, record: bool, I_in) -> dict[str, Any]:
    """The rate RNN's Brian2 objects: the summed recurrent input in ``groups``, the map in ``before_end``."""
    n = net.n_hidden
    clock = b2.Clock(dt=RATE_DT * b2.ms)
    ns = {"alpha": float(net.alpha), "I_in": I_in}
    G = b2.NeuronGroup(rows * n, "h : 1\nI_rec : 1\nb : 1 (constant)", clock=clock, namespace=ns,
                       name="neuro_neurons")
    # alpha = 1 written without the (1 - alpha) h term, as in the model (0 * h would still be exact, but
    # the same expression in both keeps the comparison to the last bit of the update)
    update = ("h = tanh(I_in(t, i) + I_rec + b)" if net.alpha == 1.0
              else "h = (1 - alpha) * h + alpha * tanh(I_in(t, i) + I_rec + b)")
    objs = [G, G.run_regularly(update, when="before_end", clock=clock, name="neuro_rate_update")]
    settable, by_name = [("neuro_neurons", "h"), ("neuro_neurons", "b")], {"neuro_neurons": G}
    mask = _layers(net)[0].rec
    if mask.any():
        S = b2.Synapses(G, G, "w : 1\nI_rec_post = w * h_pre : 1 (summed)", clock=clock, name="neuro_recurrent")
        pre, post = _synapse_index(mask, rows)
        S.connect(i=pre, j=post)
        objs.append(S)
        settable.append(("neuro_recurrent", "w"))
        by_name["neuro_recurrent"] = S
    mons = {"h": b2.StateMonitor(G, "h", record=True, when="end", clock=clock, name="neuro_state_h")}
    objs += list(mons.values())
    return {"G": G, "mons": mons, "objs": objs, "clock": clock, "rate": True, "settable": settable,
            "by_name": by_name}


def _dt_ms(net: AbstractNetwork) -> float:
    if net.name == "stack":
        return net.layers[0].dt
    return RATE_DT if net.name == "rate" else net.dt


def _spike_matrix(idx: np.ndarray, t: np.ndarray, dt_s: float, steps: int, size: int) -> np.ndarray:
    out = np.zeros((steps, size))
    if len(idx):
        out[np.rint(np.asarray(t) / dt_s).astype(np.int64), np.asarray(idx, dtype=np.int64)] = 1.0
    return out


def _join(parts: list[np.ndarray], rows: int) -> np.ndarray:
    """The layers' arrays, each [..., rows n_l], as one [..., rows N] with each row's units side by side."""
    if len(parts) == 1:
        return parts[0]
    lead = parts[0].shape[:-1]
    return np.concatenate([p.reshape(*lead, rows, -1) for p in parts], axis=-1).reshape(*lead, -1)


# -- the arrays of a run ----------------------------------------------------------------------------------
def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _inputs(net: AbstractNetwork, params: Params, I_in: np.ndarray, state: NamedTuple | None, rows: int) -> _Inputs:
    """The weights, biases and initial state (from rest, or from ``state``, a single-layer ``net.State``) of a
    run of ``rows`` copies of ``net``, by Brian2 object and variable."""
    values: dict[tuple[str, str], np.ndarray] = {}
    stack = net.name == "stack"
    for l, (L, p) in enumerate(zip(_layers(net), _layer_params(net, params))):
        name = _neuron_name(net, l)
        zeros = np.zeros(rows * L.n)
        if state is None:
            v0 = np.full(rows * L.n, float(L.net.v_leak))
            isyn, r, a = zeros, zeros, zeros
        else:
            v0, isyn, r = (_np(state.v).reshape(-1), _np(state.i).reshape(-1), _np(state.r).reshape(-1))
            a = _np(state.a).reshape(-1) if L.net.name == "alif" else zeros
        values.update({(name, "v"): v0, (name, "isyn"): isyn, (name, "r"): r, (name, "b"): np.tile(p["b"].numpy(), rows)})
        if L.net.name == "alif":
            values[(name, "a")] = a
        if L.rec.any():
            values[("neuro_recurrent" if not stack else f"neuro_recurrent_{l}", "w")] = \
                _synapse_weights(p["W_rec"].numpy(), L.rec, rows)
        if L.ff is not None and L.ff.any():
            values[(f"neuro_feedforward_{l}", "w")] = _synapse_weights(p["W_in"][:, :L.ff.shape[1]].numpy(), L.ff, rows)
    return _Inputs(I_in=I_in, values=values)


def _rate_inputs(net: AbstractNetwork, params: Params, I_in: np.ndarray, rows: int) -> _Inputs:
    mask = _layers(net)[0].rec
    values = {("neuro_neurons", "h"): np.zeros(rows * net.n_hidden),
              ("neuro_neurons", "b"): np.tile(_np(params["b"]), rows)}
    if mask.any():
        values[("neuro_recurrent", "w")] = _synapse_weights(_np(net.weight(params, "W_rec")), mask, rows)
    return _Inputs(I_in=I_in, values=values)
