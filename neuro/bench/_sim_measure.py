"""The measurements of ``neuro bench sim`` (:mod:`neuro.bench.sim`): memory bandwidth, the cost of one small
torch op, aten ops per step, and :func:`run`, which times every variant at every size (interleaved repeats)
and returns the results as a JSON-ready dict.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from typing import Any, Callable

import torch

from . import _report
from ._sim_network import (
    BRIAN2_CPP_REF,
    BRIAN2_LABEL,
    BRIAN2_NOTE,
    DT,
    K_IN,
    LABELS,
    N_IN,
    ORDER,
    P_IN,
    REC_SCALE,
    SEED,
    TARGET_HZ,
    TAU_MEM,
    TAU_SYN,
    W_IN,
    Runner,
    _compiled_runner,
    _matvec_runner,
    _norse_runner,
    _plain_runner,
    _simulate_runner,
    _step_runner,
    build_lif,
)


# -- machine-level measurements ----------------------------------------------------------------------
def measure_bandwidth(nbytes: int, repeats: int = 10) -> dict[str, float]:
    """Memory bandwidth in GB/s over a float32 tensor of ``nbytes`` (much larger than the last-level cache).

    ``read``: ``torch.sum`` (bytes / time); ``copy``: ``Tensor.copy_`` (2 * bytes / time), at the current
    thread count and, for reference, on one thread. ``limit_GBps`` (used for "fraction of the limit") is the
    best read figure of the repeats: other processes only ever lower a bandwidth measurement.
    """
    a = torch.ones(nbytes // 4)
    b = torch.empty_like(a)

    def measure():
        a.sum()
        b.copy_(a)
        reads, copies = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a.sum()
            reads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.copy_(a)
            copies.append(time.perf_counter() - t0)
        return reads, copies

    reads, copies = measure()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reads1, _ = measure()
    finally:
        torch.set_num_threads(threads)
    return {"limit_GBps": nbytes / min(reads) / 1e9,
            "read_GBps": nbytes / statistics.median(reads) / 1e9,
            "copy_GBps": 2 * nbytes / statistics.median(copies) / 1e9,
            "read_GBps_1thread": nbytes / statistics.median(reads1) / 1e9,
            "bytes": nbytes, "repeats": repeats,
            "method": "torch.sum (read) and Tensor.copy_ (read + write) over a float32 tensor of 'bytes'; "
                      "read/copy: median of repeats; limit: best read of repeats"}


def measure_op_overhead(n: int = 256, calls: int = 2000, repeats: int = 5) -> float:
    """Microseconds per call of a tiny element-wise op (``a * 0.5`` on [1, n]): the fixed cost of one torch op."""
    a = torch.zeros(1, n)
    with torch.no_grad():
        for _ in range(200):
            a * 0.5
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                a * 0.5
            ts.append((time.perf_counter() - t0) / calls)
    return statistics.median(ts) * 1e6


def count_ops(runner: Runner, xs: torch.Tensor) -> float | None:
    """Aten ops per step of ``runner`` on ``xs`` (counted with a TorchDispatchMode), or None if unavailable."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # pragma: no cover - private API
        return None

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    try:
        mode = _Count()
        with mode:
            runner(xs)
        return mode.n / len(xs)
    except Exception:  # pragma: no cover - counting is a diagnostic, never fatal
        return None


def _spike_rate_hz(out) -> float | None:
    if out is None:
        return None
    s = torch.stack(out) if isinstance(out, list) else out
    return float(s.float().mean()) / (DT * 1e-3)


def _time_once(runner: Runner, xs: torch.Tensor) -> tuple[float, Any]:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = runner(xs)
        dt = time.perf_counter() - t0
    finally:
        gc.enable()
    return dt, out


# -- the benchmark -----------------------------------------------------------------------------------
def run(sizes=(256, 1024, 4096), steps: int = 1000, threads: int = 2, repeats: int = 3,
        bandwidth_bytes: int = 512 << 20,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return the results as a JSON-ready dict (see :mod:`neuro.bench.sim`)."""
    log = log or (lambda s: None)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(list(sizes), steps, threads, repeats, bandwidth_bytes, log)
    finally:
        torch.set_num_threads(prev_threads)


def _run(sizes, steps, threads, repeats, bandwidth_bytes, log) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = _report.loadavg()
    errors: dict[str, str] = {}
    try:
        with warnings.catch_warnings():  # norse 1.1 calls torch.jit.script at import (deprecated in torch 2.13)
            warnings.simplefilter("ignore", DeprecationWarning)
            import norse.torch  # noqa: F401
    except Exception as e:  # peers are optional: record why, keep going
        errors["norse"] = f"{type(e).__name__}: {e}"

    bw = measure_bandwidth(bandwidth_bytes)
    op_us = measure_op_overhead()
    log(f"bandwidth: limit {bw['limit_GBps']:.1f} GB/s (read median {bw['read_GBps']:.1f}, 1 thread "
        f"{bw['read_GBps_1thread']:.1f}); one small torch op: {op_us:.2f} us")

    import models

    l3 = _report.cache_bytes(3)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        net, params, xs = build_lif(n, steps)
        rnet = models.make("rate", n_in=N_IN, n_hidden=n, n_out=1)
        rparams = rnet.init_params(seed=SEED)
        runners: dict[str, Runner] = {
            "lif_compiled": _compiled_runner(net, params),
            "lif_simulate": _simulate_runner(net, params),
            "lif_step": _step_runner(net, params),
            "rate_simulate": _simulate_runner(rnet, rparams),
            "rate_step": _step_runner(rnet, rparams),
        }
        if "norse" not in errors:
            try:
                runners["norse"] = _norse_runner(net, params)
            except Exception as e:
                errors["norse"] = f"{type(e).__name__}: {e}"
        runners["plain"] = _plain_runner(net, params)
        runners["matvec"] = _matvec_runner(params)

        warm = xs[: min(50, steps)]
        ops: dict[str, float | None] = {}
        for key, r in list(runners.items()):
            try:
                r(warm)
            except Exception as e:
                if key != "norse":
                    raise
                errors["norse"] = f"{type(e).__name__}: {e}"
                del runners[key]
                continue
            ops[key] = count_ops(r, warm)

        times: dict[str, list[float]] = {k: [] for k in runners}
        rates: dict[str, float | None] = {}
        for rep in range(repeats):
            for key, r in runners.items():
                dt, out = _time_once(r, xs)
                times[key].append(dt)
                if rep == 0:
                    rates[key] = _spike_rate_hz(out)
                del out

        size_rows = {}
        for key in ORDER:
            if key not in runners:
                continue
            sps = _report.summarize([steps / t for t in times[key]])
            t_step = 1.0 / sps["median"]
            if key == "lif_compiled" and rates[key] is not None:
                # event-driven: per step it reads the rows of the neurons and inputs that spiked
                events = rates[key] * DT * 1e-3 * n + P_IN * N_IN
                nbytes = int(events * n * 4)
            else:
                nbytes = n * n * 4
            t_limit = nbytes / (bw["limit_GBps"] * 1e9)
            size_rows[key] = {
                "key": key, "label": LABELS[key], "n": n, "steps": steps, "batch": 1,
                "steps_per_s": sps,
                "time_per_step_us": t_step * 1e6,
                "rate_hz": rates[key],
                "ops_per_step": ops.get(key),
                "est_op_overhead_us": None if ops.get(key) is None else ops[key] * op_us,
                "bytes_per_step": nbytes,
                "limit_time_per_step_us": t_limit * 1e6,
                "fraction_of_limit": t_limit / t_step,
                "w_rec_in_cache": l3 is not None and nbytes <= l3,
            }
        for key, row in size_rows.items():
            med = row["steps_per_s"]["median"]
            row["vs_norse"] = med / size_rows["norse"]["steps_per_s"]["median"] if "norse" in size_rows else None
            row["vs_plain"] = med / size_rows["plain"]["steps_per_s"]["median"]
            row["vs_brian2_ref"] = med / BRIAN2_CPP_REF[n] if n in BRIAN2_CPP_REF else None
        rows.extend(size_rows.values())
        log(f"N={n}: " + ", ".join(f"{k} {_report.fmt_rate(r['steps_per_s']['median'])}/s"
                                   for k, r in size_rows.items()))

    bw_end = measure_bandwidth(bandwidth_bytes)
    bw["limit_GBps_end"] = bw_end["limit_GBps"]
    bw["read_GBps_end"] = bw_end["read_GBps"]
    log(f"bandwidth at the end: limit {bw_end['limit_GBps']:.1f} GB/s (read median {bw_end['read_GBps']:.1f})")
    if bw_end["limit_GBps"] > bw["limit_GBps"]:  # the limit is the best seen; re-derive the fractions
        bw["limit_GBps"] = bw_end["limit_GBps"]
        for row in rows:
            row["limit_time_per_step_us"] = row["bytes_per_step"] / (bw["limit_GBps"] * 1e9) * 1e6
            row["fraction_of_limit"] = row["limit_time_per_step_us"] / row["time_per_step_us"]
    bw["method"] += "; measured at the start and at the end of the run, limit: the best of both"

    gap = {}
    for n in sizes:
        if n in BRIAN2_CPP_REF:
            gap[str(n)] = {r["key"]: BRIAN2_CPP_REF[n] / r["steps_per_s"]["median"]
                           for r in rows if r["n"] == n and r["key"] in ("lif_compiled", "lif_simulate", "lif_step")}

    return {
        "benchmark": "sim",
        "machine": {**_report.machine_info(threads), "loadavg_start": load_start, "loadavg_end": _report.loadavg()},
        "settings": {
            "sizes": sizes, "steps": steps, "threads": threads, "repeats": repeats, "batch": 1, "dtype": "float32",
            "dt_ms": DT, "tau_mem_ms": TAU_MEM, "tau_syn_ms": TAU_SYN, "n_in": N_IN,
            "input_rate_hz": P_IN / (DT * 1e-3), "inputs_per_neuron": K_IN, "w_in": W_IN, "rec_scale": REC_SCALE,
            "seed": SEED, "target_rate_hz": list(TARGET_HZ),
            "lif": "models.make('lif') defaults: exact dynamics, subtractive reset, n_out=1 leaky readout",
            "norse": "LIFRecurrentCell: forward Euler, reset to 0, same weights and input, autapses=True",
            "plain": "recurrent LIF, exact dynamics, subtractive reset: ~10 torch ops per step",
            "timing": "steps/s = steps / wall time of one run of T steps; median over repeats interleaved across "
                      "variants; gc disabled while timing; one 50-step warm-up each",
        },
        "bandwidth": bw,
        "op_overhead_us": op_us,
        "results": rows,
        "reference": {"brian2_cpp_standalone": {"label": BRIAN2_LABEL, "note": BRIAN2_NOTE,
                                                "steps_per_s": {str(k): v for k, v in BRIAN2_CPP_REF.items()}}},
        "gap_to_brian2_ref": gap,
        "errors": errors,
        "wall_s": time.perf_counter() - t_start,
    }


# -- sparse networks: ``neuro bench sim --sparse`` ------------------------------------------------------------
def _compiled_calls(net, params, xs) -> Runner:
    import neuro

    def run(x):
        return neuro.simulate(net, params, x, backend="compiled", record=("spikes", "y")).spikes

    return run


def _time_variants(runners: dict[str, Runner], xs: torch.Tensor, repeats: int, brian2=None) -> dict[str, Any]:
    """Steps/s of every runner and of ``brian2`` (a :class:`neuro.bench.brian2.StandaloneLIF`, or None): one run
    of each after the other per repeat (after a warm-up), so that the load of other processes hits them alike;
    the firing rate; the fixed cost of one of our calls (a one-step call, median of 5: building the kernel's
    arrays, dispatch); the ratios sparse / dense and sparse / brian2, each the median of the per-repeat ratios."""
    steps = len(xs)
    times: dict[str, list[float]] = {k: [] for k in runners}
    if brian2 is not None:
        times["brian2"] = []
    rates: dict[str, float | None] = {}
    setup: dict[str, float] = {}
    for key, r in runners.items():
        r(xs[: min(20, steps)])
        setup[key] = statistics.median(_time_once(r, xs[:1])[0] for _ in range(5))
    for rep in range(repeats):
        for key, r in runners.items():
            dt, out = _time_once(r, xs)
            times[key].append(dt)
            if rep == 0:
                rates[key] = _spike_rate_hz(out)
            del out
        if brian2 is not None:
            times["brian2"].append(brian2())
    res: dict[str, Any] = {k: {"steps_per_s": _report.summarize([steps / t for t in times[k]]), "rate_hz": rates[k],
                               "call_overhead_ms": 1e3 * setup[k]} for k in runners}
    if brian2 is not None:
        res["brian2"] = {"steps_per_s": _report.summarize([steps / t for t in times["brian2"]]),
                         "rate_hz": brian2.rate_hz, "first_s": brian2.first_s, "synapses": brian2.synapses,
                         "run_s": times["brian2"]}
    res["ratios"] = {f"sparse_vs_{k}": statistics.median(b / a for a, b in zip(times["sparse"], times[k]))
                     for k in times if k != "sparse"}
    # the same with our call overhead (building the kernel's arrays) taken out, as Brian2's timer leaves out its own
    # set-up: the simulation loops against each other
    fixed = {k: setup.get(k, 0.0) for k in times}
    res["ratios_run"] = {f"sparse_vs_{k}": statistics.median((b - fixed[k]) / max(a - fixed["sparse"], 1e-12)
                                                              for a, b in zip(times["sparse"], times[k]))
                         for k in times if k != "sparse"}
    return res


def run_sparse(n_sparse: int = 4096, connectivity=(0.01, 0.1, 1.0), sizes_one=(1024, 4096), steps: int = 1000,
               repeats: int = 5, brian2: bool = True,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``neuro bench sim --sparse`` (:mod:`neuro.bench.sim`): (a) the network of :func:`build_lif_sparse` at
    ``n_sparse`` neurons for each recurrent connection probability in ``connectivity``: backend='compiled' on the
    sparse network (synapses by presynaptic unit) and on the same network written dense, and Brian2
    cpp_standalone on the same synapses; (b) the one-to-one network of :func:`build_one_to_one` at each of
    ``sizes_one``: backend='compiled' with the one-to-one input, with the same input written as a dense ``W_in``,
    and Brian2 cpp_standalone. float32 for ours (batch 1, one thread: the kernels are single-threaded), float64 in
    Brian2 (its only type). Returns a JSON-ready dict."""
    from ._sim_network import P_ONE, build_lif_sparse, build_one_to_one

    log = log or (lambda s: None)
    t_start = time.perf_counter()
    load_start = _report.loadavg()
    errors: dict[str, str] = {}
    rows: list[dict[str, Any]] = []

    def measure(tag, net, dense, params, xs, rate_in) -> dict[str, Any]:
        b2 = None
        if brian2:
            from .brian2 import StandaloneLIF

            try:
                b2 = StandaloneLIF(net, net.weight(params, "W_in").double().numpy(),
                                   net.weight(params, "W_rec").double().numpy(), rate_in, steps)
                log(f"{tag}: Brian2 cpp_standalone built (code generation, compile, first run: {b2.first_s:.0f} s)")
            except Exception as e:  # a peer that cannot run here is recorded, not fatal
                errors[f"brian2 {tag}"] = f"{type(e).__name__}: {e}"
                log(f"{tag} brian2: {type(e).__name__}: {e}")
        try:
            t = _time_variants({"sparse": _compiled_calls(net, params, xs), "dense": _compiled_calls(dense, params, xs)},
                               xs, repeats, b2)
        finally:
            if b2 is not None:
                b2.close()
        med = {k: t[k]["steps_per_s"]["median"] for k in ("sparse", "dense", "brian2") if k in t}
        log(f"{tag}: " + ", ".join(f"{k} {_report.fmt_rate(v)}/s" for k, v in med.items())
            + "; " + ", ".join(f"{k} {v:.2f}" for k, v in t["ratios"].items()))
        return {"compiled_sparse": t["sparse"], "compiled_dense": t["dense"], "brian2": t.get("brian2"),
                "sparse_vs_dense": t["ratios"]["sparse_vs_dense"],
                "sparse_vs_brian2": t["ratios"].get("sparse_vs_brian2"),
                "sparse_vs_brian2_run": t["ratios_run"].get("sparse_vs_brian2")}

    for p in connectivity:
        net, dense, params, xs = build_lif_sparse(n_sparse, steps, p)
        syn = int(net.masks["W_rec"].sum())
        rows.append({"part": "a", "n": n_sparse, "p": p, "recurrent_synapses": syn,
                     **measure(f"N={n_sparse} p={p}", net, dense, params, xs, P_IN / (DT * 1e-3))})
    for n in sizes_one:
        net, dense, params, xs = build_one_to_one(n, steps)
        rows.append({"part": "b", "n": n, "p": 1.0, "recurrent_synapses": n * n,
                     **measure(f"N={n} one-to-one", net, dense, params, xs, P_ONE / (DT * 1e-3))})
    return {
        "benchmark": "sim_sparse",
        "machine": {**_report.machine_info(1), "loadavg_start": load_start, "loadavg_end": _report.loadavg()},
        "settings": {
            "n_sparse": n_sparse, "connectivity": list(connectivity), "sizes_one_to_one": list(sizes_one),
            "steps": steps, "repeats": repeats, "batch": 1,
            "dtype": "float32 (ours), float64 (Brian2)", "dt_ms": DT, "tau_mem_ms": TAU_MEM, "tau_syn_ms": TAU_SYN,
            "a": f"{N_IN} Poisson inputs at {P_IN / (DT * 1e-3):.0f} Hz, each neuron hears {K_IN} (fan-in), input "
                 f"weight {W_IN} v_th/gain, recurrent random:p with std {REC_SCALE}/sqrt(pN) v_th/gain",
            "b": f"each neuron its own Poisson source at {P_ONE / (DT * 1e-3):.0f} Hz through one synapse "
                 f"(one-to-one) of weight {W_IN} v_th/gain, dense random recurrence std {REC_SCALE}/sqrt(N)",
            "seed": SEED,
            "timing": "ours: steps / wall time of a whole neuro.simulate call (arrays built, kernel, trace), gc off; "
                      "call overhead: a one-step call. Brian2: its own timer around the network run of the compiled "
                      "program (last_run_info.txt; build excluded). Per repeat one run of each variant after the "
                      "other (sparse, dense, Brian2), after a warm-up; steps/s: median over repeats; ratios: median "
                      "of the per-repeat ratios (each from runs seconds apart, so that the load of other processes "
                      "hits both sides alike)",
        },
        "results": rows,
        "errors": errors,
        "wall_s": time.perf_counter() - t_start,
    }
