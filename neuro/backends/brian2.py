"""The Brian2 backend: ``neuro.simulate(net, params, xs, backend="brian2", target=...)`` for ``lif``, ``alif``
and the rate RNN ``rate``.

Brian2 (Stimberg, Brette & Goodman 2019, "Brian 2, an intuitive and efficient neural simulator", eLife
8:e47314) integrates the same equations as :mod:`models.lif` / :mod:`models.alif`, built from the model's own
parameters (time in ms, ``v`` and the synaptic variable ``isyn`` dimensionless)::

    dv/dt    = (v_leak + b - v + isyn) / tau_mem          disyn/dt = -isyn / tau_syn

with ``method="exact"`` for ``dynamics="exact"`` (Brian2 solves the linear system itself, symbolically: an
independent derivation of alpha, beta and kappa) and ``method="euler"`` for ``dynamics="euler"``. One Brian2
time step of ``dt`` runs these slots in order (Brian2's scheduling, all objects on one clock)::

    start             isyn += I_in(t, i)                    the input jump W_in x_t (a TimedArray [T, M n])
    groups            (v, isyn) <- exact or Euler step      v~, i_t = beta j
    before_thresholds ref = r > 0; v = v_reset where ref; r = max(r - 1, 0)          (refractory > 0 only)
    thresholds        z_t = v > v_th (+ beta_a a)  and not ref
    before_resets     a = rho a                                                     (alif only)
    resets            v -= v_th (subtract) or v = v_reset (zero); r = refractory; a += 1
    synapses          isyn_post += W_rec[post, pre] for every spike of this step     (delay 0)

The refractory counter ``r`` is written out rather than taken from Brian2's ``refractory=`` keyword, which
would hold ``v`` at its value after the reset (the model clamps it to ``v_reset``) and would count the
period from the spike time (one step fewer held). With ``tau_syn == tau_mem`` both equations use one symbol,
so that the exact solver sees the repeated eigenvalue. Thresholds are strict (``v > v_th``), as in the model.

So the recurrent spikes of step t-1 are in ``isyn`` when step t adds its input: ``j = i_{t-1} + W_in x_t +
W_rec z_{t-1}``, the one-step synaptic delay of the torch model. The feed-forward current ``W_in x_t`` (real
valued inputs) is computed once in float64 numpy and handed to Brian2 as a TimedArray; the recurrent synapses
(dense, block diagonal over the batch: the ``B`` sequences are ``B`` copies of the network in one group of
``B n`` neurons), the dynamics, spikes, refractoriness, adaptation and reset run in Brian2. ``v`` is recorded
at the end of the step, ``i`` before the synapses (the torch ``i_t``). The leaky readout ``y_t = kappa_out
y_{t-1} + W_out z_t + b_out`` is computed from Brian2's spikes in float64 torch, as in the model.

Targets: ``"numpy"``, ``"cython"`` (compiled code, cached by Brian2 in ``~/.cython``) and ``"cpp_standalone"``
(a C++ project built in a temporary directory, see :class:`_Standalone`: built once per network structure,
key = the model's hyper-parameters, ``n_in``, rows, steps, what is recorded; later calls only write the new
weights, inputs and initial state as binary files and run the compiled program with Brian2's ``run_args``
command line; the directories are removed when the cache is cleared (:func:`clear_cache`), when a structure
is evicted (at most :data:`CACHE_SIZE` kept) or at exit). Brian2 computes in float64; the trace has the dtype of
``params``. :class:`Brian2Forward` is the forward function of the perturbation rules (``neuro.rules.node``)
for the spiking models.

The rate RNN (:mod:`models.rate`) is a discrete map, which Brian2 runs as one group of ``B n`` neurons with
no differential equation (``h``, ``I_rec``, ``b``) on a clock of 1 ms (the model has no time constant, only
``alpha``), and the same dense block-diagonal recurrent synapses carrying a summed variable::

    groups      I_rec = sum_pre w[pre, post] h_pre     (Synapses, ``I_rec_post = w * h_pre : 1 (summed)``)
    before_end  h = (1 - alpha) h + alpha tanh(I_in(t, i) + I_rec + b)      (``run_regularly``)
    end         h recorded (StateMonitor)

The summed variable is computed in the ``groups`` slot, before the update of ``before_end`` overwrites ``h``,
so that every ``h_t`` sees the ``h_{t-1}`` of all neurons: ``i_t = W_in x_t + W_rec h_{t-1} + b``, with
``W_in x_t`` again a TimedArray computed in float64 numpy. ``h`` is always recorded (``record`` is ignored:
the readout needs it), and the linear readout ``y_t = W_out h_t + b_out`` is computed from it in float64 torch.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import functools
import gc
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from neuro.backends import Trace
from neuro.contract import AbstractNetwork, Params, check_choice

__all__ = ["Brian2Forward", "CACHE_SIZE", "MODELS", "TARGETS", "clear_cache", "simulate"]

TARGETS = ("numpy", "cython", "cpp_standalone")
MODELS = ("lif", "alif", "rate")
#: Brian2's clock for the rate RNN, a discrete map with no time constant (ms; any value gives the same map)
RATE_DT = 1.0
DYNAMICS = {"exact": "exact", "euler": "euler"}
#: built networks kept per process (runtime networks and cpp_standalone projects), least recently used evicted
CACHE_SIZE = 8
#: Brian2's own time (seconds) for the network run of the last :func:`simulate` call: no build, no code
#: generation, no input/output files (what ``neuro bench brian2`` reports next to the call's wall time)
last_run_s: float | None = None


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


class _Runtime:
    """A Brian2 network for the runtime targets (numpy, cython), reused across runs of one structure."""

    def __init__(self, net: AbstractNetwork, rows: int, steps: int, record: bool, target: str):
        b2 = _b2()
        self.b2, self.net, self.rows, self.steps, self.record, self.target = b2, net, rows, steps, record, target
        with _runtime_device(b2), _codegen_target(b2, target):
            self.ta = b2.TimedArray(np.zeros((steps, rows * net.n_hidden)), dt=_dt_ms(net) * b2.ms, name="neuro_I_in")
            self.o = (_build_rate if net.name == "rate" else _build)(b2, net, rows, steps, record, self.ta)
            self.network = b2.Network(*self.o["objs"])
            self.network.store("rest")

    def __call__(self, inp: _Inputs) -> _Outputs:
        b2, o = self.b2, self.o
        with _runtime_device(b2), _codegen_target(b2, self.target):
            self.network.restore("rest")
            self.ta.values[...] = inp.I_in  # read by the generated code at every run
            G = o["G"]
            rate = o.get("rate", False)
            # Variable.set_value writes the arrays directly (G.v[:] = ... would generate code for each)
            keys = ("h", "b") if rate else ("v", "isyn", "r", "b") + (("a",) if o["alif"] else ())
            for key in keys:
                G.variables[key].set_value(getattr(inp, key))
            o["S"].variables["w"].set_value(inp.w)
            # Brian2 runs gc.collect() at every run, which costs ~0.5 s in a process holding torch and sympy:
            # freezing the objects that exist now (Python's gc.freeze) makes it cheap; nothing is leaked
            gc.freeze()
            try:
                self.network.run(self.steps * _dt_ms(self.net) * b2.ms)
            finally:
                gc.unfreeze()
            run_s = getattr(b2.get_device(), "_last_run_time", None)
            if rate:
                h = np.array(o["mons"]["h"].h[:]).T
                return _Outputs(None, None, None, None, {"h": np.array(G.h[:])}, run_s, h)
            sp = o["spikes"]
            spikes = _spike_matrix(sp.i[:], sp.t_[:], self.net.dt * 1e-3, self.steps, G.N)
            final = {k: np.array(getattr(G, k)[:]) for k in ("v", "isyn", "r")}
            final["a"] = np.array(G.a[:]) if o["alif"] else np.zeros(G.N)
            v = i = a = None
            if self.record:
                end = o["mons"]["end"]
                v = np.array(end.v[:]).T
                a = np.array(end.a[:]).T if o["alif"] else None
                i = np.array(o["mons"]["i"].isyn[:]).T
        return _Outputs(spikes, v, i, a, final, run_s)

    def close(self) -> None:
        pass


class _Standalone:
    """A cpp_standalone project built once in a temporary directory; each call writes the inputs as binary
    files and runs the compiled program with Brian2's ``run_args`` (``group.var=file``), reading the results
    back from its result files. Independent of Brian2's global device after the build."""

    def __init__(self, net: AbstractNetwork, rows: int, steps: int, record: bool):
        b2 = _b2()
        from brian2.devices.device import get_device, reset_device, set_device

        self.net, self.rows, self.steps, self.record = net, rows, steps, record
        self.dir = tempfile.mkdtemp(prefix="neuro_brian2_")
        N = rows * net.n_hidden
        set_device("cpp_standalone", directory=self.dir, build_on_run=False)
        dev = get_device()
        try:
            ta = b2.TimedArray(np.zeros((steps, N)), dt=_dt_ms(net) * b2.ms, name="neuro_I_in")
            self.rate = net.name == "rate"
            o = (_build_rate if self.rate else _build)(b2, net, rows, steps, record, ta)
            G, S = o["G"], o["S"]
            G.b = np.zeros(N)  # placeholders: real values come on the command line
            S.w = np.zeros(len(S))
            network = b2.Network(*o["objs"])
            network.run(steps * _dt_ms(net) * b2.ms)
            dev.build(directory=self.dir, compile=True, run=False, with_output=False)
            self.N = N
            fn = dev.get_array_filename
            run_cmd = b2.prefs.devices.cpp_standalone.run_cmd_unix
            self.cmd = [run_cmd] if isinstance(run_cmd, str) else list(run_cmd)
            if self.rate:
                self.args = {"I_in": f"{ta.name}.values", "w": f"{S.name}.w", "b": f"{G.name}.b",
                             "h": f"{G.name}.h"}
                self.files = {"final_h": fn(G.variables["h"]), "h": fn(o["mons"]["h"].variables["h"])}
                return
            self.args = {"I_in": f"{ta.name}.values", "w": f"{S.name}.w", "b": f"{G.name}.b", "v": f"{G.name}.v",
                         "isyn": f"{G.name}.isyn", "r": f"{G.name}.r"}
            if o["alif"]:
                self.args["a"] = f"{G.name}.a"
            sp = o["spikes"]
            self.files = {"spike_i": fn(sp.variables["i"]), "spike_t": fn(sp.variables["t"]),
                          **{f"final_{k}": fn(G.variables[k]) for k in ("v", "isyn", "r", "a") if k in G.variables}}
            if record:
                self.files["v"] = fn(o["mons"]["end"].variables["v"])
                self.files["i"] = fn(o["mons"]["i"].variables["isyn"])
                if o["alif"]:
                    self.files["a"] = fn(o["mons"]["end"].variables["a"])
            self.dtypes = {"spike_i": sp.variables["i"].dtype}
            self.alif = o["alif"]
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        finally:
            dev.reinit()  # the cpp_standalone device forgets this project, so later runtime runs do not see it
            reset_device()  # back to the device active before (the runtime device unless a user set another)

    def __call__(self, inp: _Inputs | _RateInputs) -> _Outputs:
        tag = uuid.uuid4().hex[:12]
        res = os.path.join(self.dir, f"results_{tag}")
        os.makedirs(res)
        static = os.path.join(self.dir, "static_arrays")
        written, argv = [], []
        try:
            for key, name in self.args.items():
                fname = f"neuro_{tag}_{key}.dat"
                np.ascontiguousarray(getattr(inp, key), dtype=np.float64).tofile(os.path.join(static, fname))
                written.append(os.path.join(static, fname))
                argv.append(f"{name}={os.path.join('static_arrays', fname)}")
            proc = subprocess.run(self.cmd + ["--results_dir", res + os.sep] + argv, cwd=self.dir,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"the cpp_standalone program failed ({proc.returncode}): {proc.stderr[-2000:]}")

            def read(key, dtype=np.float64):
                return np.fromfile(os.path.join(res, self.files[key]), dtype=dtype)

            run_s = None
            info = os.path.join(res, "last_run_info.txt")
            if os.path.isfile(info):
                with open(info) as fh:
                    run_s = float(fh.read().split()[0])
            if self.rate:
                return _Outputs(None, None, None, None, {"h": read("final_h")}, run_s,
                                read("h").reshape(self.steps, self.N))
            idx = read("spike_i", self.dtypes["spike_i"])
            t = read("spike_t")
            spikes = _spike_matrix(idx, t, self.net.dt * 1e-3, self.steps, self.N)
            final = {k: read(f"final_{k}") for k in ("v", "isyn", "r")}
            final["a"] = read("final_a") if self.alif else np.zeros(self.N)
            v = i = a = None
            if self.record:
                v = read("v").reshape(self.steps, self.N)
                i = read("i").reshape(self.steps, self.N)
                a = read("a").reshape(self.steps, self.N) if self.alif else None
        finally:
            for f in written:
                os.remove(f)
            shutil.rmtree(res, ignore_errors=True)
        return _Outputs(spikes, v, i, a, final, run_s)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _runtime_device:
    """Make Brian2's runtime device the active one for a block (and put back whatever was active)."""

    def __init__(self, b2):
        self.b2 = b2

    def __enter__(self):
        from brian2.devices.device import all_devices, get_device, set_device

        self.switched = get_device() is not all_devices["runtime"]
        if self.switched:
            set_device("runtime")

    def __exit__(self, *exc):
        if self.switched:
            from brian2.devices.device import reset_device
            reset_device()


class _codegen_target:
    """Set ``prefs.codegen.target`` for a block, then put back the previous value."""

    def __init__(self, b2, target: str):
        self.b2, self.target = b2, target

    def __enter__(self):
        self.prev = self.b2.prefs.codegen.target
        self.b2.prefs.codegen.target = self.target

    def __exit__(self, *exc):
        self.b2.prefs.codegen.target = self.prev


# -- the cache of built networks ---------------------------------------------------------------------------
_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()


def _key(net: AbstractNetwork, rows: int, steps: int, record: bool, target: str) -> tuple:
    return (type(net).__name__, repr(net), rows, steps, record, target)


def _get(net: AbstractNetwork, rows: int, steps: int, record: bool, target: str):
    """The built network for this structure (built on first use; least recently used evicted)."""
    record = record or net.name == "rate"  # the rate RNN always records h (its readout needs it)
    key = _key(net, rows, steps, record, target)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    sim = _Standalone(net, rows, steps, record) if target == "cpp_standalone" else _Runtime(net, rows, steps, record,
                                                                                          target)
    _CACHE[key] = sim
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)[1].close()
    return sim


def clear_cache() -> None:
    """Drop every built network and remove the cpp_standalone directories."""
    while _CACHE:
        _CACHE.popitem()[1].close()


atexit.register(clear_cache)


# -- the public functions ------------------------------------------------------------------------------------
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


def simulate(net: AbstractNetwork, params: Params, xs: Tensor, target: str = "numpy", record: bool = True) -> Trace:
    """Run ``net`` from rest on ``xs`` [T, B, n_in] in Brian2 (``target``: numpy, cython or cpp_standalone).

    Returns a :class:`neuro.backends.Trace` like the torch backend's (``spikes``, ``v``, ``y``, ``extra``
    ``i`` and, for alif, ``a``; all [T, B, n]; for the rate RNN ``h`` and ``y``) in the dtype of ``params``.
    ``record=False`` records spikes only (``v`` and ``extra`` are then ``None`` / empty): what a benchmark
    times; the rate RNN records ``h`` either way.
    """
    check_model(net)
    check_target(target)
    _b2()
    global last_run_s
    T, B, _ = xs.shape
    n = net.n_hidden
    I_in = (xs.detach().to("cpu", torch.float64) @ params["W_in"].detach().to("cpu", torch.float64).T)
    sim = _get(net, B, T, bool(record), target)
    I_in = I_in.reshape(T, B * n).numpy()
    out = sim(_rate_inputs(net, params, I_in, B) if net.name == "rate" else _inputs(net, params, I_in, None, B))
    last_run_s = out.run_s
    return _trace(net, params, out, T, B)


def _readout(net: AbstractNetwork, params: Params, z: Tensor, y0: Tensor | None = None) -> Tensor:
    """``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` over ``z`` [T, B, n] in float64."""
    W, b = params["W_out"].detach().cpu().double(), params["b_out"].detach().cpu().double()
    drive = z @ W.T + b
    y = torch.zeros(z.shape[1], W.shape[0], dtype=torch.float64) if y0 is None else y0
    ys = []
    for d in drive:
        y = net.kappa_out * y + d
        ys.append(y)
    return torch.stack(ys)


def _trace(net: AbstractNetwork, params: Params, out: _Outputs, T: int, B: int) -> Trace:
    p = next(iter(params.values()))
    n = net.n_hidden

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(T, B, n)

    cast = lambda u: u.to(dtype=p.dtype, device=p.device)  # noqa: E731
    if out.h is not None:  # the rate RNN: y_t = W_out h_t + b_out in float64
        h = t(out.h)
        y = h @ params["W_out"].detach().cpu().double().T + params["b_out"].detach().cpu().double()
        return Trace(y=cast(y), h=cast(h))
    z = t(out.spikes)
    y = _readout(net, params, z)
    extra = {}
    if out.i is not None:
        extra["i"] = t(out.i).to(p.dtype)
    if out.a is not None:
        extra["a"] = t(out.a).to(p.dtype)
    return Trace(y=cast(y), spikes=cast(z), v=None if out.v is None else cast(t(out.v)),
                 extra={k: cast(v) for k, v in extra.items()})


@dataclasses.dataclass(frozen=True)
class Brian2Forward:
    """The forward function of the perturbation rules (``neuro.rules.node``'s protocol) run in Brian2.

    ``forward(params, state, x, xi_h, xi_y) -> Pass``: one step of ``M`` rows in Brian2 (one run of one
    step of a network built once per ``M``), from ``state`` (a ``net.State``). The state's ``i`` is Brian2's
    synaptic variable at the end of the step, after the synapses delivered this step's spikes, so that the
    next step sees ``W_rec z_t`` through Brian2's own synapses (the torch ``i_t + W_rec z_t``; ``init_state``'s
    zeros are the same in both). ``h = W_in x + W_rec z_{t-1} + xi_h`` and the readout are computed in torch
    float64 as in :class:`neuro.rules.node.TorchForward`. Use as ``neuro.rules.make("np", net,
    forward=Brian2Forward(net))``.
    """

    net: AbstractNetwork
    target: str = "numpy"

    def __post_init__(self) -> None:
        check_model(self.net)
        if not self.net.spiking:
            raise ValueError(f"model {self.net.name!r} is not expressed by Brian2Forward: it covers the spiking "
                             f"models 'lif', 'alif'; use the default forward (backend='torch') for "
                             f"{self.net.name!r}")
        check_target(self.target)

    def __call__(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
                 xi_y: Tensor | None = None):
        from neuro.rules.node import Pass

        net, n = self.net, self.net.n_hidden
        p = next(iter(params.values()))
        M = x.shape[0]
        with torch.no_grad():
            x64 = x.detach().cpu().double()
            I_in = x64 @ params["W_in"].detach().cpu().double().T
            if xi_h is not None:
                I_in = I_in + xi_h.detach().cpu().double()
            h = I_in + state.z.detach().cpu().double() @ params["W_rec"].detach().cpu().double().T
            sim = _get(net, M, 1, False, self.target)
            out = sim(_inputs(net, params, I_in.reshape(1, M * n).numpy(), state, M))
            z = torch.from_numpy(out.spikes).reshape(M, n)
            W_out, b_out = params["W_out"].detach().cpu().double(), params["b_out"].detach().cpu().double()
            a = z @ W_out.T + b_out
            y = net.kappa_out * state.y.detach().cpu().double() + a
            if xi_y is not None:
                a = a + xi_y.detach().cpu().double()
                y = y + xi_y.detach().cpu().double()

            def back(arr):
                return torch.from_numpy(np.ascontiguousarray(arr)).reshape(M, n).to(dtype=p.dtype, device=p.device)

            f = out.final
            fields = {"v": back(f["v"]), "i": back(f["isyn"]), "z": z.to(dtype=p.dtype, device=p.device), "r": back(f["r"]),
                      "y": y.to(dtype=p.dtype, device=p.device)}
            if net.name == "alif":
                fields["a"] = back(f["a"])
            new = type(state)(**fields)
            cast = lambda u: u.to(dtype=p.dtype, device=p.device)  # noqa: E731
            return Pass(new, cast(y), cast(h), cast(a), fields["z"])
