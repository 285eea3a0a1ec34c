"""Running the Brian2 network of :mod:`neuro.backends.brian2`: :class:`_Runtime` (the numpy and cython
targets, one Brian2 ``Network`` reused across runs of one structure), :class:`_Standalone` (a cpp_standalone
project built once in a temporary directory, then run with new weights, inputs and initial state as binary
files), and the per-process cache of built networks (least recently used evicted, cleared at exit).
"""

from __future__ import annotations

import atexit
import collections
import gc
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any

import numpy as np

from neuro.backends._brian2_network import (
    _b2,
    _build,
    _build_rate,
    _dt_ms,
    _input_width,
    _Inputs,
    _join,
    _Outputs,
    _spike_matrix,
)
from neuro.contract import AbstractNetwork

#: built networks kept per process (runtime networks and cpp_standalone projects), least recently used evicted
CACHE_SIZE = 8


class _Runtime:
    """A Brian2 network for the runtime targets (numpy, cython), reused across runs of one structure."""

    def __init__(self, net: AbstractNetwork, rows: int, steps: int, record: bool, target: str):
        b2 = _b2()
        self.b2, self.net, self.rows, self.steps, self.record, self.target = b2, net, rows, steps, record, target
        with _runtime_device(b2), _codegen_target(b2, target):
            width = net.n_hidden if net.name == "rate" else _input_width(net)
            self.ta = b2.TimedArray(np.zeros((steps, rows * width)), dt=_dt_ms(net) * b2.ms, name="neuro_I_in")
            self.o = (_build_rate if net.name == "rate" else _build)(b2, net, rows, steps, record, self.ta)
            self.network = b2.Network(*self.o["objs"])
            self.network.store("rest")

    def __call__(self, inp: _Inputs) -> _Outputs:
        b2, o = self.b2, self.o
        with _runtime_device(b2), _codegen_target(b2, self.target):
            self.network.restore("rest")
            self.ta.values[...] = inp.I_in  # read by the generated code at every run
            rate = o.get("rate", False)
            # Variable.set_value writes the arrays directly (G.v[:] = ... would generate code for each)
            for (name, key), value in inp.values.items():
                o["by_name"][name].variables[key].set_value(value)
            # Brian2 runs gc.collect() at every run, which costs ~0.5 s in a process holding torch and sympy:
            # freezing the objects that exist now (Python's gc.freeze) makes it cheap; nothing is leaked
            gc.freeze()
            try:
                self.network.run(self.steps * _dt_ms(self.net) * b2.ms)
            finally:
                gc.unfreeze()
            run_s = getattr(b2.get_device(), "_last_run_time", None)
            if rate:
                G = o["G"]
                h = np.array(o["mons"]["h"].h[:]).T
                return _Outputs(None, None, None, None, {"h": np.array(G.h[:])}, run_s, h)
            rows, dt_s, layers = self.rows, _dt_ms(self.net) * 1e-3, o["layers"]
            spikes = _join([_spike_matrix(L["spikes"].i[:], L["spikes"].t_[:], dt_s, self.steps, L["G"].N)
                            for L in layers], rows)
            final = {k: _join([np.array(getattr(L["G"], k)[:]) for L in layers], rows) for k in ("v", "isyn", "r")}
            final["a"] = _join([np.array(L["G"].a[:]) for L in layers], rows) if o["alif"] else \
                np.zeros_like(final["v"])
            v = i = a = None
            if self.record:
                v = _join([np.array(L["mons"]["end"].v[:]).T for L in layers], rows)
                a = _join([np.array(L["mons"]["end"].a[:]).T for L in layers], rows) if o["alif"] else None
                i = _join([np.array(L["mons"]["i"].isyn[:]).T for L in layers], rows)
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
        self.rate = net.name == "rate"
        width = net.n_hidden if self.rate else _input_width(net)
        set_device("cpp_standalone", directory=self.dir, build_on_run=False)
        dev = get_device()
        try:
            ta = b2.TimedArray(np.zeros((steps, rows * width)), dt=_dt_ms(net) * b2.ms, name="neuro_I_in")
            o = (_build_rate if self.rate else _build)(b2, net, rows, steps, record, ta)
            for name, key in o["settable"]:  # placeholders: real values come on the command line
                if key in ("b", "w"):
                    obj = o["by_name"][name]
                    setattr(obj, key, np.zeros(len(obj)))
            network = b2.Network(*o["objs"])
            network.run(steps * _dt_ms(net) * b2.ms)
            dev.build(directory=self.dir, compile=True, run=False, with_output=False)
            fn = dev.get_array_filename
            run_cmd = b2.prefs.devices.cpp_standalone.run_cmd_unix
            self.cmd = [run_cmd] if isinstance(run_cmd, str) else list(run_cmd)
            self.args = {"I_in": f"{ta.name}.values", **{(name, key): f"{name}.{key}" for name, key in o["settable"]}}
            if self.rate:
                G = o["G"]
                self.N = rows * net.n_hidden
                self.files = {"final_h": fn(G.variables["h"]), "h": fn(o["mons"]["h"].variables["h"])}
                return
            self.layers = []
            for L in o["layers"]:
                G, sp = L["G"], L["spikes"]
                files = {"spike_i": fn(sp.variables["i"]), "spike_t": fn(sp.variables["t"]),
                         **{f"final_{k}": fn(G.variables[k]) for k in ("v", "isyn", "r", "a") if k in G.variables}}
                if record:
                    files["v"] = fn(L["mons"]["end"].variables["v"])
                    files["i"] = fn(L["mons"]["i"].variables["isyn"])
                    if L["alif"]:
                        files["a"] = fn(L["mons"]["end"].variables["a"])
                self.layers.append({"files": files, "N": G.N, "spike_dtype": sp.variables["i"].dtype})
            self.alif = o["alif"]
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        finally:
            dev.reinit()  # the cpp_standalone device forgets this project, so later runtime runs do not see it
            reset_device()  # back to the device active before (the runtime device unless a user set another)

    def __call__(self, inp: _Inputs) -> _Outputs:
        tag = uuid.uuid4().hex[:12]
        res = os.path.join(self.dir, f"results_{tag}")
        os.makedirs(res)
        static = os.path.join(self.dir, "static_arrays")
        written, argv = [], []
        try:
            for i, (key, name) in enumerate(self.args.items()):
                fname = f"neuro_{tag}_{i}.dat"
                value = inp.I_in if key == "I_in" else inp.values[key]
                np.ascontiguousarray(value, dtype=np.float64).tofile(os.path.join(static, fname))
                written.append(os.path.join(static, fname))
                argv.append(f"{name}={os.path.join('static_arrays', fname)}")
            proc = subprocess.run(self.cmd + ["--results_dir", res + os.sep] + argv, cwd=self.dir,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"the cpp_standalone program failed ({proc.returncode}): {proc.stderr[-2000:]}")

            def read(fname, dtype=np.float64):
                return np.fromfile(os.path.join(res, fname), dtype=dtype)

            run_s = None
            info = os.path.join(res, "last_run_info.txt")
            if os.path.isfile(info):
                with open(info) as fh:
                    run_s = float(fh.read().split()[0])
            if self.rate:
                return _Outputs(None, None, None, None, {"h": read(self.files["final_h"])}, run_s,
                                read(self.files["h"]).reshape(self.steps, self.N))
            rows, dt_s = self.rows, _dt_ms(self.net) * 1e-3
            spikes = _join([_spike_matrix(read(L["files"]["spike_i"], L["spike_dtype"]), read(L["files"]["spike_t"]),
                                          dt_s, self.steps, L["N"]) for L in self.layers], rows)
            final = {k: _join([read(L["files"][f"final_{k}"]) for L in self.layers], rows) for k in ("v", "isyn", "r")}
            final["a"] = _join([read(L["files"]["final_a"]) for L in self.layers], rows) if self.alif else \
                np.zeros_like(final["v"])
            v = i = a = None
            if self.record:
                def trace(key):
                    return _join([read(L["files"][key]).reshape(self.steps, L["N"]) for L in self.layers], rows)

                v, i = trace("v"), trace("i")
                a = trace("a") if self.alif else None
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
