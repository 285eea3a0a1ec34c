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

``--sparse`` measures sparse networks instead (:func:`neuro.bench._sim_measure.run_sparse`, results in
``OUT/bench_sim_sparse.json`` and ``.md``): (a) the network above at N = 4096 with recurrent connection
probability 1%, 10% and 100% (and each neuron hearing its 10 input channels only), ``backend="compiled"`` on the
sparse network (synapses stored by presynaptic unit: a spike costs its fan-out) against the same network written
dense (today's dense kernel: a spike costs N) and against Brian2 cpp_standalone on the same synapses; (b) the
network a Brian2 user writes first, N LIF neurons each with its own Poisson source through a one-to-one synapse
and dense random recurrence, ``backend="compiled"`` against Brian2 cpp_standalone (and against the same input
written as a dense ``W_in``). Brian2 is built here (code generation and a C++ compile per network, about a
minute each on a loaded machine) and timed by its own clock around the network run.

The code: the network, its settings and one runner per variant in :mod:`neuro.bench._sim_network`, the
measurements and :func:`run` in :mod:`neuro.bench._sim_measure`, the report and the command line here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import _report
from ._sim_measure import count_ops as count_ops
from ._sim_measure import measure_bandwidth as measure_bandwidth
from ._sim_measure import measure_op_overhead as measure_op_overhead
from ._sim_measure import run
from ._sim_network import BRIAN2_CPP_REF, BRIAN2_LABEL, BRIAN2_NOTE, LABELS, ORDER
from ._sim_network import DT as DT
from ._sim_network import K_IN as K_IN
from ._sim_network import N_IN as N_IN
from ._sim_network import P_IN as P_IN
from ._sim_network import REC_SCALE as REC_SCALE
from ._sim_network import SEED as SEED
from ._sim_network import TARGET_HZ as TARGET_HZ
from ._sim_network import TAU_MEM as TAU_MEM
from ._sim_network import TAU_SYN as TAU_SYN
from ._sim_network import W_IN as W_IN
from ._sim_network import Runner as Runner
from ._sim_network import build_lif as build_lif

__all__ = ["main", "run", "BRIAN2_CPP_REF"]
# the benchmark's settings and functions imported "as" themselves above are re-exported under their names


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


def sparse_to_markdown(res: dict[str, Any]) -> str:
    """The report of ``neuro bench sim --sparse``."""
    m, s = res["machine"], res["settings"]
    rate, ratio = _report.fmt_rate, _report.fmt_ratio

    def cell(r):
        if r is None:
            return "–"
        return f"{rate(r['steps_per_s']['median'])} ±{100 * r['steps_per_s']['spread']:.0f}% ({r['rate_hz']:.1f} Hz)"

    out = ["# neuro bench sim --sparse", "",
           f"{m['date']} · {m['cpu_model']} · {m['cores']} cores · numpy {m['numpy']} · load average (1 min) "
           f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end (the cores are shared: see spreads)",
           f"Recurrent LIF, batch 1, T = {s['steps']}, dt = {s['dt_ms']} ms; {s['dtype']}; steps/s median of "
           f"{s['repeats']} ± relative spread (max-min)/median, firing rate in brackets; ratios: median of the "
           "per-repeat ratios (one run of each variant after the other per repeat). Ours: whole "
           "`neuro.simulate(..., backend=\"compiled\")` calls; Brian2 cpp_standalone: its own timer around the "
           "network run (build and compile excluded).", ""]
    a = [r for r in res["results"] if r["part"] == "a"]
    if a:
        out += [f"## (a) N = {a[0]['n']}: sparse against dense recurrence", "", s["a"], ""]
        out.append(_report.md_table(
            ["p", "recurrent synapses", "compiled, sparse", "compiled, same network dense", "Brian2 cpp_standalone",
             "sparse / dense", "sparse / Brian2", "call overhead sparse / dense"],
            [[f"{100 * r['p']:g}%", r["recurrent_synapses"], cell(r["compiled_sparse"]), cell(r["compiled_dense"]),
              cell(r["brian2"]), ratio(r["sparse_vs_dense"]), ratio(r["sparse_vs_brian2"]),
              f"{r['compiled_sparse']['call_overhead_ms']:.1f} / {r['compiled_dense']['call_overhead_ms']:.1f} ms"]
             for r in a]))
    b = [r for r in res["results"] if r["part"] == "b"]
    if b:
        out += ["", "## (b) one Poisson source per neuron (one-to-one), dense recurrence", "", s["b"], ""]
        out.append(_report.md_table(
            ["N", "compiled, one-to-one W_in", "compiled, the same W_in dense", "Brian2 cpp_standalone",
             "compiled / Brian2", "compiled / Brian2, loops only", "one-to-one / dense W_in"],
            [[r["n"], cell(r["compiled_sparse"]), cell(r["compiled_dense"]), cell(r["brian2"]),
              ratio(r["sparse_vs_brian2"]), ratio(r.get("sparse_vs_brian2_run")), ratio(r["sparse_vs_dense"])]
             for r in b]))
    out += ["", "Ratios: our steps/s divided by the other's (> 1: ours faster). Call overhead: a one-step call "
            "(building the kernel's arrays from the parameters; the dense kernel copies W_rec transposed). Loops "
            "only: our whole calls less that overhead, against Brian2's timer, which leaves out its own set-up."]
    goals = []
    for r in a:
        if r["p"] == 0.01:
            goals.append(f"- 1% connectivity at N = {r['n']}: sparse {ratio(r['sparse_vs_dense'])} the dense kernel "
                         f"(goal >= 10x): {'met' if r['sparse_vs_dense'] >= 10 else 'not met'}.")
    for r in b:
        if r["sparse_vs_brian2"] is not None:
            run = r.get("sparse_vs_brian2_run")
            goals.append(f"- one-to-one input at N = {r['n']}: compiled {ratio(r['sparse_vs_brian2'])} Brian2 "
                         f"cpp_standalone (goal >= 2x): {'met' if r['sparse_vs_brian2'] >= 2 else 'not met'}"
                         + ("." if run is None else f"; loops only {ratio(run)}."))
    if goals:
        out += ["", "## Goals", "", *goals]
    if res.get("command"):
        out += ["", f"Reproduce: `{' '.join(res['command'])}`"]
    if res["errors"]:
        out += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


def main_sparse(a: argparse.Namespace, argv: list[str] | None) -> int:
    from ._sim_measure import run_sparse

    quick = a.quick
    res = run_sparse(n_sparse=a.n_sparse or (256 if quick else 4096),
                     connectivity=a.connectivity or ((0.1, 1.0) if quick else (0.01, 0.1, 1.0)),
                     sizes_one=a.sizes or ([64] if quick else [1024, 4096]),
                     steps=a.steps or (100 if quick else 1000), repeats=a.repeats or (1 if quick else 5),
                     brian2=not (a.no_brian2 or quick),
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    res["command"] = ["neuro", "bench", "sim", *(argv if argv is not None else sys.argv[1:])]
    md = sparse_to_markdown(res)
    out = Path(a.out)
    _report.write_json(out / "bench_sim_sparse.json", res)
    _report.write_atomic(out / "bench_sim_sparse.md", md)
    print(md)
    print(f"wrote {out / 'bench_sim_sparse.json'} and {out / 'bench_sim_sparse.md'}")
    return 0


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
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests: sizes 64 128, 200 steps, 1 repeat "
                    "(--sparse: N 256 at p 0.1 and 1, one-to-one N 64, 100 steps, no Brian2)")
    ap.add_argument("--sparse", action="store_true",
                    help="sparse networks instead: compiled sparse vs dense vs Brian2 cpp_standalone "
                         "(bench_sim_sparse.json/.md; --sizes: the one-to-one network's N, default 1024 4096)")
    ap.add_argument("--n-sparse", type=int, default=None, help="--sparse: N of part (a) (default 4096)")
    ap.add_argument("--connectivity", type=float, nargs="+", default=None,
                    help="--sparse: recurrent connection probabilities of part (a) (default 0.01 0.1 1)")
    ap.add_argument("--no-brian2", action="store_true", help="--sparse: without the Brian2 cpp_standalone runs")
    a = ap.parse_args(argv)
    for p in a.connectivity or ():
        if not 0 < p <= 1:
            ap.error(f"--connectivity must be in (0, 1], got {p}")
    if a.n_sparse is not None and a.n_sparse <= 0:
        ap.error(f"--n-sparse must be positive, got {a.n_sparse}")
    if a.sparse:
        for name, v in (("steps", a.steps), ("repeats", a.repeats), *(("sizes", n) for n in a.sizes or ())):
            if v is not None and v <= 0:
                ap.error(f"--{name} must be positive, got {v}")
        return main_sparse(a, argv)
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
