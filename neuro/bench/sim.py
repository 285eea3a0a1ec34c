"""``neuro bench sim``: forward simulation speed of recurrent networks, with peers, in one run.

Measures forward steps per second (batch 1, float32, ``torch.set_num_threads(threads)``) of

* ``lif`` (``models.make("lif")``, exact dynamics) through ``neuro.simulate`` (the torch backend, which
  records spikes, v, i and y every step) and through a bare ``net.step`` loop under ``torch.no_grad()``
  (no recording: the difference is the recording overhead);
* ``rate`` (``models.make("rate")``), the same two ways;
* norse 1.1's ``LIFRecurrentCell`` (forward Euler, reset to zero) on the same weights and input;
* a plain torch loop of the same recurrent LIF (a few tensor ops per step, no framework);
* the dense recurrent matvec alone (``F.linear(z, W_rec)`` in a loop): what one op per step costs.

Every spiking network is driven by the same Poisson input (``N_IN`` channels at ``P_IN`` spikes per step,
each neuron listening to ``K_IN`` of them with weight ``W_IN`` in units of ``v_th`` / gain) and
has a dense random recurrent matrix (std ``REC_SCALE`` / sqrt(N) in the same units), which puts the
network at about 13 Hz (0.013 spikes per step per neuron at dt = 1 ms); the measured rate is reported.

Derived figures: time per step, ratios against norse and the plain loop (> 1: we are faster), and the
fraction of the memory-bandwidth limit, ``(N*N*4 bytes of W_rec read per step / bandwidth) / time per step``,
with the bandwidth measured in the same run (best of repeated ``sum`` over a tensor much larger than the
last-level cache). Brian2 cpp_standalone figures measured earlier on this machine (REFERENCES.md) are shown as a
constant reference row, clearly labelled, with the gap of our ``lif`` to them.

Results go to ``OUT/bench_sim.json`` and ``OUT/bench_sim.md`` (written atomically); the table is printed.
Timings are medians over ``--repeats`` runs, interleaved across variants so that load from other
processes hits all of them alike. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import _report

__all__ = ["main", "run", "BRIAN2_CPP_REF"]

# -- the benchmark network -----------------------------------------------------------------------------
DT = 1.0  # ms
TAU_MEM = 20.0  # ms
TAU_SYN = 5.0  # ms
N_IN = 100  # Poisson input channels
P_IN = 0.05  # input spikes per channel per step (50 Hz)
K_IN = 10  # input channels per neuron (fixed in-degree, chosen at random)
W_IN = 1.95  # input weight, in v_th per unit of steady-state gain
REC_SCALE = 1.0  # recurrent std * sqrt(N), same units
SEED = 0
TARGET_HZ = (10.0, 20.0)

#: Brian2 cpp_standalone, recurrent LIF at ~13.6 Hz, T = 1000, batch 1, 1 thread (+4.3 s compile), steps/s.
#: Measured earlier on this machine (REFERENCES.md, "Peers measured on this machine"), NOT in this run.
BRIAN2_CPP_REF = {256: 451_000.0, 1024: 48_000.0, 4096: 2_900.0}
BRIAN2_LABEL = "Brian2 cpp_standalone (reference, measured earlier, not in this run)"
BRIAN2_NOTE = ("REFERENCES.md 'Peers measured on this machine': recurrent LIF ~13.6 Hz, T = 1000, batch 1, "
               "1 thread, plus 4.3 s compile; measured earlier, not in this run")

LABELS = {
    "lif_compiled": "lif (neuro.simulate backend='compiled': event-driven numba loop, records spikes/y)",
    "lif_simulate": "lif (neuro.simulate, records v/i/spikes/y)",
    "lif_step": "lif (net.step loop, no recording)",
    "rate_simulate": "rate (neuro.simulate, records h/y)",
    "rate_step": "rate (net.step loop, no recording)",
    "norse": "norse 1.1 LIFRecurrentCell",
    "plain": "plain torch loop (recurrent LIF)",
    "matvec": "dense matvec alone (F.linear(z, W_rec))",
}
ORDER = list(LABELS)

Runner = Callable[[torch.Tensor], Any]  # xs [T, 1, N_IN] -> spikes ([T, 1, N] tensor or list of [1, N]) or None


# -- building the networks -----------------------------------------------------------------------------
def build_lif(n: int, steps: int, seed: int = SEED):
    """The ``lif`` network, its parameters (benchmark weights) and the Poisson input ``xs`` [T, 1, N_IN]."""
    import models

    net = models.make("lif", n_in=N_IN, n_hidden=n, n_out=1, dt=DT, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                      bias_mean=0.0, bias_std=0.0)  # b = 0: the benchmark sets its own weights below
    g = torch.Generator().manual_seed(seed)
    unit = net.v_th / net.gain()
    params = net.init_params(seed=seed)
    idx = torch.rand(n, N_IN, generator=g).argsort(dim=1)[:, :K_IN]  # exactly K_IN input channels per neuron
    mask = torch.zeros(n, N_IN, dtype=torch.float64).scatter_(1, idx, 1.0)
    params["W_in"] = (unit * W_IN * mask).float()
    params["W_rec"] = (unit * REC_SCALE / math.sqrt(n) * torch.randn(n, n, generator=g, dtype=torch.float64)).float()
    g_in = torch.Generator().manual_seed(seed + 1)  # the same input at every N
    xs = (torch.rand(steps, 1, N_IN, generator=g_in) < P_IN).float()
    return net, params, xs


def _simulate_runner(net, params) -> Runner:
    import neuro

    def run(xs):
        tr = neuro.simulate(net, params, xs)
        return tr.spikes

    return run


def _compiled_runner(net, params) -> Runner:
    import neuro

    def run(xs):
        return neuro.simulate(net, params, xs, backend="compiled", record=("spikes", "y")).spikes

    return run


def _step_runner(net, params) -> Runner:
    spiking = net.spiking

    def run(xs):
        zs = []
        with torch.no_grad():
            state = net.init_state(params, xs.shape[1])
            step = net.step
            for x in xs:
                state, _ = step(params, state, x)
                if spiking:
                    zs.append(state.z)
        return zs if spiking else None

    return run


def _plain_runner(net, params) -> Runner:
    """The recurrent LIF of ``net`` (exact dynamics, subtractive reset, v_leak = b = 0) in a few torch ops."""
    W_in, W_rec = params["W_in"], params["W_rec"]
    alpha, beta, kappa, v_th = net.alpha, net.beta, net.kappa, net.v_th

    def run(xs):
        zs = []
        with torch.no_grad():
            n = W_rec.shape[0]
            v = torch.zeros(xs.shape[1], n)
            i = torch.zeros_like(v)
            z = torch.zeros_like(v)
            for x in xs:
                i = i + F.linear(x, W_in) + F.linear(z, W_rec)
                v = alpha * v + kappa * i
                z = (v > v_th).float()
                v = v - v_th * z
                i = beta * i
                zs.append(z)
        return zs

    return run


def _norse_runner(net, params) -> Runner:
    from norse.torch import LIFParameters, LIFRecurrentCell

    p = LIFParameters(tau_syn_inv=torch.as_tensor(1.0 / (TAU_SYN * 1e-3)),
                      tau_mem_inv=torch.as_tensor(1.0 / (TAU_MEM * 1e-3)),
                      v_leak=torch.as_tensor(0.0), v_th=torch.as_tensor(net.v_th), v_reset=torch.as_tensor(0.0))
    cell = LIFRecurrentCell(N_IN, net.n_hidden, p=p, input_weights=params["W_in"].clone(),
                            recurrent_weights=params["W_rec"].clone(), autapses=True, dt=DT * 1e-3)

    def run(xs):
        zs = []
        with torch.no_grad():
            state = None
            for x in xs:
                z, state = cell(x, state)
                zs.append(z)
        return zs

    return run


def _matvec_runner(params) -> Runner:
    W_rec = params["W_rec"]
    g = torch.Generator().manual_seed(SEED + 2)
    z = (torch.rand(1, W_rec.shape[0], generator=g) < 0.013).float()

    def run(xs):
        with torch.no_grad():
            for _ in xs:
                F.linear(z, W_rec)
        return None

    return run


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
    """Run the benchmark and return the results as a JSON-ready dict (see the module docstring)."""
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


# -- report ---------------------------------------------------------------------------------------
def _hz(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} Hz"


def to_markdown(res: dict[str, Any]) -> str:
    m, s, bw = res["machine"], res["settings"], res["bandwidth"]
    sizes = s["sizes"]
    by = {(r["key"], r["n"]): r for r in res["results"]}
    rate, ratio = _report.fmt_rate, _report.fmt_ratio
    out = [
        "# neuro bench sim",
        "",
        f"{m['date']} · {m['cpu_model']} · {m['cores']} cores (L3 {m['l3_cache']}) · {s['threads']} threads · "
        f"torch {m['torch']} · norse {m['norse']} · numpy {m['numpy']} · load average (1 min) "
        f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end (other processes: see spreads)",
        f"Recurrent LIF, batch 1, T = {s['steps']}, float32, dt = {s['dt_ms']} ms, {s['n_in']} Poisson inputs at "
        f"{s['input_rate_hz']:.0f} Hz; steps/s median of {s['repeats']} (± relative spread (max-min)/median).",
        f"Memory bandwidth (this run, {bw['bytes'] >> 20} MiB tensor): limit {bw['limit_GBps']:.1f} GB/s "
        f"(best read of {bw['repeats']} at the start and {bw['repeats']} at the end; median read "
        f"{bw['read_GBps']:.1f}, copy {bw['copy_GBps']:.1f}, read on 1 thread {bw['read_GBps_1thread']:.1f}); "
        f"one small torch op: {res['op_overhead_us']:.2f} us.",
        "",
        "## Steps per second (firing rate)",
        "",
    ]
    rows = []
    for key in ORDER:
        cells = []
        for n in sizes:
            r = by.get((key, n))
            if r is None:
                cells.append("–")
                continue
            c = f"{rate(r['steps_per_s']['median'])} ±{100 * r['steps_per_s']['spread']:.0f}%"
            if r["rate_hz"] is not None:
                c += f" ({r['rate_hz']:.1f} Hz)"
            cells.append(c)
        if any(c != "–" for c in cells):
            rows.append([LABELS[key], *cells])
    rows.append([f"*{BRIAN2_LABEL}*",
                 *[rate(BRIAN2_CPP_REF[n]) + " (~13.6 Hz)" if n in BRIAN2_CPP_REF else "–" for n in sizes]])
    out.append(_report.md_table(["variant", *[f"N = {n}" for n in sizes]], rows))
    out += ["", "## Details", ""]
    rows = []
    for n in sizes:
        for key in ORDER:
            r = by.get((key, n))
            if r is None:
                continue
            frac = f"{100 * r['fraction_of_limit']:.1f}%" + (" (W_rec in L3)" if r["w_rec_in_cache"] else "")
            ops = "–" if r["ops_per_step"] is None else f"{r['ops_per_step']:.0f}"
            rows.append([LABELS[key], n, rate(r["steps_per_s"]["median"]), f"{100 * r['steps_per_s']['spread']:.0f}%",
                         f"{r['time_per_step_us']:.1f}", _hz(r["rate_hz"]), ops, ratio(r["vs_norse"]),
                         ratio(r["vs_plain"]), frac])
    out.append(_report.md_table(["variant", "N", "steps/s", "spread", "us/step", "rate", "ops/step", "vs norse",
                                 "vs plain", "fraction of limit"], rows))
    out += ["", "vs norse / vs plain: our steps/s divided by theirs (> 1: faster). Fraction of limit: time to read "
            "W_rec (N*N*4 bytes; for the event-driven compiled loop only the rows of the neurons and inputs that "
            "spiked, (spikes + input spikes per step) * N * 4 bytes) at the measured bandwidth limit, divided by the "
            "measured time per step; where W_rec fits in the last-level cache DRAM bandwidth is not the bound and "
            "the figure can pass 100%. ops/step: "
            "aten ops per step (TorchDispatchMode count, recording included)."]
    if res["gap_to_brian2_ref"]:
        out += ["", f"## Gap to Brian2 cpp_standalone ({BRIAN2_NOTE})", ""]
        rows = []
        for n, g in res["gap_to_brian2_ref"].items():
            def gap(k):
                if k not in g:
                    return "–"
                return ratio(g[k]) + " slower" if g[k] >= 1 else ratio(1 / g[k]) + " faster"
            rows.append([n, rate(BRIAN2_CPP_REF[int(n)]), *[gap(k) for k in ("lif_compiled", "lif_simulate", "lif_step")]])
        out.append(_report.md_table(["N", "Brian2 cpp (ref)", "lif backend='compiled'", "lif neuro.simulate",
                                     "lif net.step loop"], rows))
    if res["errors"]:
        out += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench sim", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of neurons N (default 256 1024 4096)")
    ap.add_argument("--steps", type=int, default=None, help="time steps T per run (default 1000)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per variant; the median is reported (default 5)")
    ap.add_argument("--out", default="runs/bench",
                    help="output folder for bench_sim.json / bench_sim.md (default runs/bench)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests: sizes 64 128, 200 steps, 1 repeat")
    a = ap.parse_args(argv)
    sizes = a.sizes if a.sizes is not None else ([64, 128] if a.quick else [256, 1024, 4096])
    steps = a.steps if a.steps is not None else (200 if a.quick else 1000)
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 5)
    for name, v in (("steps", steps), ("threads", a.threads), ("repeats", repeats), *(("sizes", n) for n in sizes)):
        if v <= 0:
            ap.error(f"--{name} must be positive, got {v}")
    res = run(sizes=sizes, steps=steps, threads=a.threads, repeats=repeats,
              bandwidth_bytes=(128 << 20) if a.quick else (512 << 20),
              log=lambda s: print(s, file=sys.stderr, flush=True))
    res["command"] = ["neuro", "bench", "sim", *(argv if argv is not None else sys.argv[1:])]
    md = to_markdown(res)
    out = Path(a.out)
    _report.write_json(out / "bench_sim.json", res)
    _report.write_atomic(out / "bench_sim.md", md)
    print(md)
    print(f"wrote {out / 'bench_sim.json'} and {out / 'bench_sim.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
