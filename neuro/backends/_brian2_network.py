"""The Brian2 network of :mod:`neuro.backends.brian2`: which models, options and targets the backend covers
(the checks), the Brian2 objects built for ``rows`` copies of a model (equations, the slots of one time step,
the block-diagonal recurrent synapses, monitors; see :mod:`neuro.backends.brian2` for the schedule), and the
float64 arrays a run takes (weights, input jumps, initial state) and gives back (spikes, recorded traces,
final state).
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
MODELS = ("lif", "alif", "rate")
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
    if net.dynamics not in DYNAMICS:
        raise ValueError(f"dynamics={net.dynamics!r} of {net.name!r} is not expressed by backend='brian2' (its "
                         f"voltage sees the current after the decay, not an ODE): it covers "
                         f"{', '.join(map(repr, DYNAMICS))}; use backend='torch' for dynamics={net.dynamics!r}")


# -- the Brian2 network ----------------------------------------------------------------------------------
class _Inputs(NamedTuple):
    """Everything that changes between runs of one structure (float64 numpy)."""

    I_in: np.ndarray  # [T, M n] input jump per step (W_in x_t, + noise)
    w: np.ndarray  # [M n n] recurrent weights in synapse order
    b: np.ndarray  # [M n]
    v: np.ndarray  # [M n] initial state
    isyn: np.ndarray  # [M n]
    r: np.ndarray  # [M n]
    a: np.ndarray  # [M n] (alif; zeros otherwise)


class _RateInputs(NamedTuple):
    """The rate RNN's inputs (float64 numpy)."""

    I_in: np.ndarray  # [T, M n] W_in x_t
    w: np.ndarray  # [M n n] recurrent weights in synapse order
    b: np.ndarray  # [M n]
    h: np.ndarray  # [M n] initial state


class _Outputs(NamedTuple):
    spikes: np.ndarray  # [T, M n] 0/1
    v: np.ndarray | None  # [T, M n] after reset (None unless recorded)
    i: np.ndarray | None  # [T, M n] before the synapses
    a: np.ndarray | None  # [T, M n]
    final: dict[str, np.ndarray]  # v, isyn, r, a at the end of the run [M n]
    run_s: float | None = None  # Brian2's own time for the network run (no build, no I/O), seconds
    h: np.ndarray | None = None  # [T, M n] the rate RNN's h_t (spikes, v, i, a are None then)


def _synapse_index(n: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Presynaptic and postsynaptic neuron of every recurrent synapse, block diagonal over the rows: synapse
    ``(row, pre, post)`` at position ``row n n + pre n + post`` (``W_rec.T`` flattened row-major per row: the
    synapses of one presynaptic neuron are contiguous, which is what a spike reads)."""
    pre = np.repeat(np.arange(n), n)
    post = np.tile(np.arange(n), n)
    off = np.repeat(np.arange(rows) * n, n * n)
    return np.tile(pre, rows) + off, np.tile(post, rows) + off


def _build(b2, net: AbstractNetwork, rows: int, steps: int, record: bool, I_in) -> dict[str, Any]:
    """Create the Brian2 objects (on the active device) for ``rows`` copies of ``net`` over ``steps`` steps."""
    n = net.n_hidden
    alif = net.name == "alif"
    refr = net.refractory > 0
    ns = {"tau_mem": net.tau_mem * b2.ms, "tau_syn": net.tau_syn * b2.ms, "v_leak": float(net.v_leak),
          "v_th": float(net.v_th), "v_reset": float(net.v_reset), "R": float(net.refractory), "I_in": I_in}
    # equal time constants: one symbol, so that Brian2's exact solver sees the repeated eigenvalue (with two
    # symbols its general solution divides by tau_mem - tau_syn = 0)
    tau_syn = "tau_mem" if net.tau_syn == net.tau_mem else "tau_syn"
    eqs = ["dv/dt = (v_leak + b - v + isyn) / tau_mem : 1", f"disyn/dt = -isyn / {tau_syn} : 1", "b : 1 (constant)",
           "r : 1", "ref : 1"]
    threshold = "v > v_th"
    reset = ["v = v - v_th" if net.reset == "subtract" else "v = v_reset"]
    if alif:
        eqs.append("a : 1")
        ns.update(beta_a=float(net.beta_a), rho=float(net.rho))
        threshold = "v > v_th + beta_a * a"
        reset.append("a += 1")
    if refr:
        threshold += " and ref == 0"
        reset.append("r = R")
    clock = b2.Clock(dt=net.dt * b2.ms)
    # fixed names: Brian2 names arrays after their owner, and the Cython cache (~/.cython) is keyed by the code
    G = b2.NeuronGroup(rows * n, "\n".join(eqs), threshold=threshold, reset="\n".join(reset),
                       method=DYNAMICS[net.dynamics], clock=clock, namespace=ns, name="neuro_neurons")
    objs = [G, G.run_regularly("isyn += I_in(t, i)", when="start", clock=clock, name="neuro_input")]
    if refr:
        objs.append(G.run_regularly("ref = int(r > 0)\nv = v_reset * ref + v * (1 - ref)\nr = clip(r - 1, 0, R)",
                                    when="before_thresholds", clock=clock, name="neuro_refractory"))
    if alif:
        objs.append(G.run_regularly("a = rho * a", when="before_resets", clock=clock, name="neuro_adaptation"))
    S = b2.Synapses(G, G, "w : 1", on_pre="isyn_post += w", clock=clock, name="neuro_recurrent")
    pre, post = _synapse_index(n, rows)
    S.connect(i=pre, j=post)
    spikes = b2.SpikeMonitor(G, record=True, name="neuro_spikes")
    objs += [S, spikes]
    mons = {}
    if record:
        mons["end"] = b2.StateMonitor(G, ["v", "a"] if alif else ["v"], record=True, when="end", clock=clock,
                                      name="neuro_state_end")
        mons["i"] = b2.StateMonitor(G, "isyn", record=True, when="before_synapses", clock=clock,
                                    name="neuro_state_i")
        objs += list(mons.values())
    return {"G": G, "S": S, "spikes": spikes, "mons": mons, "objs": objs, "clock": clock, "alif": alif}


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
    S = b2.Synapses(G, G, "w : 1\nI_rec_post = w * h_pre : 1 (summed)", clock=clock, name="neuro_recurrent")
    pre, post = _synapse_index(n, rows)
    S.connect(i=pre, j=post)
    objs = [G, S, G.run_regularly(update, when="before_end", clock=clock, name="neuro_rate_update")]
    mons = {"h": b2.StateMonitor(G, "h", record=True, when="end", clock=clock, name="neuro_state_h")}
    objs += list(mons.values())
    return {"G": G, "S": S, "mons": mons, "objs": objs, "clock": clock, "rate": True}


def _dt_ms(net: AbstractNetwork) -> float:
    return RATE_DT if net.name == "rate" else net.dt


def _spike_matrix(idx: np.ndarray, t: np.ndarray, dt_s: float, steps: int, size: int) -> np.ndarray:
    out = np.zeros((steps, size))
    if len(idx):
        out[np.rint(np.asarray(t) / dt_s).astype(np.int64), np.asarray(idx, dtype=np.int64)] = 1.0
    return out


# -- the arrays of a run ----------------------------------------------------------------------------------
def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _inputs(net: AbstractNetwork, params: Params, I_in: np.ndarray, state: NamedTuple | None, rows: int) -> _Inputs:
    n = net.n_hidden
    W = _np(params["W_rec"])
    zeros = np.zeros(rows * n)
    if state is None:
        v0 = np.full(rows * n, float(net.v_leak))
        isyn, r, a = zeros, zeros, zeros
    else:
        v0, isyn, r = (_np(state.v).reshape(-1), _np(state.i).reshape(-1), _np(state.r).reshape(-1))
        a = _np(state.a).reshape(-1) if net.name == "alif" else zeros
    return _Inputs(I_in=I_in, w=np.tile(W.T.reshape(-1), rows), b=np.tile(_np(params["b"]), rows), v=v0, isyn=isyn,
                   r=r, a=a)


def _rate_inputs(net: AbstractNetwork, params: Params, I_in: np.ndarray, rows: int) -> _RateInputs:
    W = _np(params["W_rec"])
    return _RateInputs(I_in=I_in, w=np.tile(W.T.reshape(-1), rows), b=np.tile(_np(params["b"]), rows),
                       h=np.zeros(rows * net.n_hidden))
