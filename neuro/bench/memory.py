"""``neuro bench memory``: peak memory and time per step of the local rules against BPTT as the sequence
length T grows, and OTTT / SLTT against BPTT on cue accumulation.

The claim tested: the local rules (every rule of ``neuro.rules.available()`` that needs LOCAL
information: eprop, ottt, sltt, sltt-k, rflo, three-factor, those present) and the other O(p) online
rules (uoro, np, anp-time on ``rate``; columnar RTRL on ``columnar``) keep O(1)
memory in T while BPTT's grows linearly. SLTT's paper (Meng et al. 2023, ICCV) reports > 70% less memory and > 50% less
training time than BPTT on ImageNet (GPU, deep convolutional SNNs, T = 6); here we measure a single
recurrent layer on one CPU thread, batch 1, float32, which is a different regime (see the report).

*Memory.* Each (rule, T) runs in a fresh Python process (one torch thread): it builds the network
(``lif`` when the rule supports it, else ``rate``; ``bptt`` runs on every model used), runs 50 warm-up
steps and ``finish``, then reads its resident set size (RSS, ``/proc/self/statm``) as the baseline,
runs T steps (inputs cycled from a pool of 1000 steps, so the data does not grow with T) and
``finish``, and reports the peak RSS (``VmHWM``, reset before the run: :mod:`neuro._rss`) minus the baseline: the
memory the T steps added, graph and traces included (the resolution is a 4 KiB page: the traces of
the local rules, a few KiB, hardly show). Time per step is the CPU time of the process (``time.process_time``,
robust to other processes sharing the cores; the wall time is in the JSON) of those T steps and
``finish``, over T. ``sltt-k`` runs with ``k = max(1, T // 4)`` of ``T`` steps. ``bptt (compiled)`` is BPTT
on ``rate`` run by the compiled engine (:mod:`neuro.engine.bptt`: the T steps as one sequence in one call, the
optimizer SGD, its inputs, T steps of the pool, made before the baseline): its peak RSS growth, measured as
above, and the bytes per step of the window it stores (``stored B/step``, from the shapes of the arrays the
engine allocates). A run predicted to take
longer than ``--max-run-s`` (the rule's wall ms/step at the previous T times T) is skipped and listed.

*Cue accumulation.* ``ottt``, ``sltt`` and ``bptt`` train an ALIF network (``--hidden`` units,
``input_scale=48`` so that the sparse cue spikes make it fire) with Adam on a *shortened* cue-accumulation
task (3 cues of 50 ms every 75 ms, a 50 ms delay, 50 ms recall: 325 steps instead of the paper's 2250),
``--trials`` trials of batch ``--batch``, for ``--seeds`` seeds, each run in a fresh process; the accuracy
is measured on 256 fresh trials (the side of the mean output over the recall steps), and the peak RSS
added by the training run is reported. This is far smaller than e-prop's setting (thousands of trials
of batch 64): it compares the rules at equal, small budgets, it does not reproduce the task's accuracy.

Writes ``OUT/bench_memory.json`` and ``OUT/bench_memory.md`` atomically.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from typing import Any

from neuro import _rss
from neuro.bench import _report

__all__ = ["local_rules", "main", "measure", "train_cue"]

N_IN, N_OUT, POOL, WARMUP = 16, 2, 1000, 50
CUE_TASK = {"n_cues": 3, "cue_ms": 50.0, "spacing_ms": 25.0, "delay_ms": 50.0, "recall_ms": 50.0}
CUE_RULES = ("bptt", "ottt", "sltt")
MIB = float(1 << 20)
COMPILED = "bptt (compiled)"  # BPTT on rate run by the compiled engine
#: O(p) online rules that are not LOCAL (they need the loss, or the columns' Jacobians) -> their model
OTHER_ONLINE = {"uoro": "rate", "np": "rate", "anp-time": "rate", "columnar": "columnar"}


def local_rules(only: list[str] | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(rule, model) for every registered LOCAL rule (on ``lif`` if supported, else ``rate``) and the
    :data:`OTHER_ONLINE` rules on their model, and the
    rules left out with the reason."""
    import models
    from neuro import rules
    from neuro.rules import Needs

    chosen, skipped = [], {}
    for name in rules.available():
        if only is not None and name not in only:
            continue
        try:
            cls = rules.get(name)
        except Exception as e:  # a rule being written elsewhere: absent or broken now
            skipped[name] = f"cannot be loaded: {type(e).__name__}: {e}"
            continue
        if name in OTHER_ONLINE:
            chosen.append((name, OTHER_ONLINE[name]))
            continue
        if cls.needs != Needs.LOCAL:
            continue
        refusals = {m: rules.refusal(name, models.make(m, n_in=N_IN, n_hidden=4, n_out=N_OUT)) for m in ("lif", "rate")}
        model = next((m for m, why in refusals.items() if why is None), None)
        if model is None:
            skipped[name] = f"runs on neither lif nor rate ({refusals['rate']})"
            continue
        chosen.append((name, model))
    return chosen, skipped


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """In this process: the memory added and the time per step of ``job["rule"]`` over ``job["T"]`` steps."""
    import torch

    import models
    from neuro import rules

    torch.set_num_threads(1)
    if job.get("engine") == "compiled":
        return _measure_compiled(job)
    T, n, model = job["T"], job["n"], job["model"]
    net = models.make(model, n_in=N_IN, n_hidden=n, n_out=N_OUT)
    params = net.init_params(seed=0)
    opts = {"k": max(1, T // 4), "T": T} if job["rule"] == "sltt-k" else {}
    rule = rules.make(job["rule"], net, **opts)
    g = torch.Generator().manual_seed(0)
    if net.spiking:
        xs = 2.0 * (torch.rand(POOL, 1, N_IN, generator=g) < 0.1).float()
    else:
        xs = torch.randn(POOL, 1, N_IN, generator=g)
    ys = torch.randn(POOL, 1, N_OUT, generator=g)
    mask = torch.ones(1, dtype=torch.bool)
    acc = rules.zeros_like_params(params)
    state = rule.init(params, 1, 0)
    for t in range(WARMUP):
        out = rule.step(params, state, xs[t], ys[t], mask)
        state = out.state
        rules.add_into(acc, out.grad)
    state, last = rule.finish(params, state)
    rules.add_into(acc, last)
    state = rule.init(params, 1, 1)
    base = _rss.start()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(T):
        i = t % POOL
        out = rule.step(params, state, xs[i], ys[i], mask)
        state = out.state
        rules.add_into(acc, out.grad)
    state, last = rule.finish(params, state)
    rules.add_into(acc, last)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**job, "peak_mib": _rss.growth(base) / MIB, "base_mib": base / MIB, "ms_per_step": 1e3 * cpu / T,
            "wall_ms_per_step": 1e3 * wall / T, "wall_s": wall,
            "finite": bool(all(torch.isfinite(v).all() for v in acc.values()))}


def _measure_compiled(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure` of BPTT on ``rate`` run by the compiled engine: the T steps as one sequence, one call."""
    import numpy as np
    import torch

    import models
    from neuro import rules
    from neuro.engine import bptt
    from neuro.engine.base import SequenceArrays

    T, n = job["T"], job["n"]
    net = models.make("rate", n_in=N_IN, n_hidden=n, n_out=N_OUT)
    params = net.init_params(seed=0)
    rule = rules.make("bptt", net, loss="mse")
    engine = bptt.build(net, rule)
    opt = torch.optim.SGD(list(params.values()), lr=1e-3)
    acc = rules.zeros_like_params(params)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(POOL, 1, N_IN, generator=g), torch.randn(POOL, 1, N_OUT, generator=g)

    def run(steps: int) -> None:
        engine.run(params, rule.init(params, 1, 0), acc, opt, data, 0, steps, steps, steps)

    def sequence(steps: int) -> SequenceArrays:
        i = torch.arange(steps) % POOL
        return SequenceArrays(xs[i].numpy(), ys[i].numpy(), np.ones((steps, 1), np.float32))

    data = sequence(WARMUP)
    run(WARMUP)  # compiles or loads the kernels
    data = sequence(T)
    base = _rss.start()
    t0, c0 = time.perf_counter(), time.process_time()
    run(T)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**job, "peak_mib": _rss.growth(base) / MIB, "base_mib": base / MIB, "ms_per_step": 1e3 * cpu / T,
            "wall_ms_per_step": 1e3 * wall / T, "wall_s": wall, "stored_bytes_per_step": engine.stored_bytes(T, 1, 4) / T,
            "finite": bool(all(torch.isfinite(v).all() for v in params.values()))}


def train_cue(job: dict[str, Any]) -> dict[str, Any]:
    """In this process: train on the short cue-accumulation task; accuracy, peak memory, time."""
    import torch

    import models
    import neuro
    from neuro import rules, tasks

    torch.set_num_threads(1)
    task = tasks.make("cue-accumulation", **CUE_TASK)
    net = models.make("alif", n_in=task.n_in, n_hidden=job["hidden"], n_out=task.n_out, input_scale=48.0)
    rule = rules.make(job["rule"], net)
    steps = task.trial_steps * job["trials"]
    # warm-up: one trial, so that lazy initialisation (imports, allocator pools) is not counted
    neuro.train(net, rule, task, steps=task.trial_steps, seed=job["seed"] + 10 ** 5, lr=job["lr"],
                batch=job["batch"], progress=False, log_every=task.trial_steps)
    base = _rss.start()
    t0, c0 = time.perf_counter(), time.process_time()
    h = neuro.train(net, rule, task, steps=steps, seed=job["seed"], lr=job["lr"], batch=job["batch"],
                    progress=False, log_every=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss.growth(base) / MIB
    test = task.sample(task.trial_steps, batch=256, seed=10 ** 6 + job["seed"])
    with torch.no_grad():
        y = neuro.simulate(net, h.params, test.xs).y
    recall = test.mask[:, 0]
    pred, label = y[recall].mean(0).argmax(-1), test.ys[recall][0].argmax(-1)
    return {**job, "accuracy": float((pred == label).float().mean()), "final_loss": h.metrics[-1]["loss_counted"],
            "peak_mib": peak, "ms_per_step": 1e3 * cpu / steps, "wall_ms_per_step": 1e3 * wall / steps,
            "wall_s": wall, "trial_steps": task.trial_steps}


def _spawn(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter (its own peak RSS); an error is reported, not raised."""
    cmd = [sys.executable, "-m", "neuro.bench.memory", "--worker", json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {**job, "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def _log(r: dict[str, Any]) -> None:
    what = f"T={r['T']}" if r["kind"] == "memory" else f"seed={r['seed']}"
    print(f"  {r['kind']} {r['rule']} ({r.get('model', 'alif')}) {what}: "
          + (r["error"] if "error" in r else f"{r['peak_mib']:.1f} MiB, {r['ms_per_step']:.3f} ms/step"),
          file=sys.stderr, flush=True)


def _chain(jobs: list[dict[str, Any]], max_run_s: float) -> list[dict[str, Any]]:
    """One rule's runs in increasing T; a run whose predicted time (wall ms/step of the previous run times T)
    exceeds ``max_run_s`` is not started (reported as skipped)."""
    out: list[dict[str, Any]] = []
    for job in jobs:
        prev = next((r for r in reversed(out) if "error" not in r), None)
        ms = None if prev is None else prev.get("wall_ms_per_step", prev["ms_per_step"])
        if ms is not None and ms * job["T"] / 1e3 > max_run_s:
            r = {**job, "error": f"skipped: {ms:.2f} ms/step (wall) predicts {ms * job['T'] / 1e3:.0f} s "
                                 f"> --max-run-s {max_run_s:g}"}
        else:
            r = _spawn(job)
        _log(r)
        out.append(r)
    return out


def _run_all(chains: list[list[dict[str, Any]]], workers: int, max_run_s: float) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return [r for rs in ex.map(lambda c: _chain(c, max_run_s), chains) for r in rs]


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def _pct(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(100 * x, fmt) + "%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ts", type=int, nargs="+", default=[1000, 10000, 100000], help="sequence lengths T")
    ap.add_argument("--n", type=int, default=128, help="hidden units of the memory runs")
    ap.add_argument("--rules", nargs="+", default=None, help="only these online rules (default: every LOCAL rule plus uoro, np, anp-time, columnar)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the cue-accumulation runs (0: none)")
    ap.add_argument("--trials", type=int, default=50, help="training trials per cue-accumulation run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=32, help="ALIF units of the cue-accumulation runs")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--jobs", type=int, default=1, help="processes at once (1: timings on one core)")
    ap.add_argument("--max-run-s", type=float, default=300.0,
                    help="skip a run predicted (from the rule's previous T) to take longer than this")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(measure(job) if job["kind"] == "memory" else train_cue(job)))
        return 0
    for name in ("n", "trials", "batch", "hidden", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)} must be >= 1")
    if args.seeds < 0 or any(t < 1 for t in args.ts):
        ap.error("--seeds must be >= 0 and every T >= 1")
    ts = sorted(set(args.ts))
    t_start = time.perf_counter()
    load_before = _report.loadavg()
    pairs, skipped = local_rules(args.rules)
    models_used = sorted({m for _, m in pairs} or {"lif"})
    pairs = [("bptt", m) for m in models_used] + ([(COMPILED, "rate")] if "rate" in models_used else []) + pairs
    chains = [[{"kind": "memory", "rule": r, "model": m, "T": T, "n": args.n,
                **({"engine": "compiled"} if r == COMPILED else {})} for T in ts] for r, m in pairs]
    print(f"memory: {len(pairs) * len(ts)} runs ({', '.join(r for r, _ in pairs)}; T = {ts})", file=sys.stderr)
    mem = _run_all(chains, args.jobs, args.max_run_s)
    cue_jobs = [[{"kind": "cue", "rule": r, "seed": s, "trials": args.trials, "batch": args.batch,
                  "hidden": args.hidden, "lr": args.lr}] for r in CUE_RULES for s in range(args.seeds)]
    cue = _run_all(cue_jobs, args.jobs, float("inf")) if cue_jobs else []

    def get(rule: str, model: str, T: int) -> dict[str, Any] | None:
        return next((r for r in mem if (r["rule"], r["model"], r["T"]) == (rule, model, T) and "error" not in r),
                    None)

    tmax = ts[-1]
    rows, summary = [], {}
    for rule, model in pairs:
        cells = [get(rule, model, T) for T in ts]
        b, r = get("bptt", model, tmax), get(rule, model, tmax)
        mem_saving = (1 - r["peak_mib"] / b["peak_mib"]) if b and r and b["peak_mib"] > 0 else None
        time_saving = (1 - r["ms_per_step"] / b["ms_per_step"]) if b and r else None
        growth = None
        if cells[0] and cells[-1] and len(ts) > 1:  # KiB per extra step between the shortest and longest T
            growth = 1024 * (cells[-1]["peak_mib"] - cells[0]["peak_mib"]) / (ts[-1] - ts[0])
        summary[f"{rule}/{model}"] = {"peak_mib": {T: (c["peak_mib"] if c else None) for T, c in zip(ts, cells)},
                                      "ms_per_step": {T: (c["ms_per_step"] if c else None) for T, c in zip(ts, cells)},
                                      "kib_per_step": growth, "memory_saving_vs_bptt": mem_saving,
                                      "time_saving_vs_bptt": time_saving,
                                      **({"stored_bytes_per_step": r["stored_bytes_per_step"]} if rule == COMPILED and r
                                         else {})}
        rows.append([rule, model] + [_f(c["peak_mib"] if c else None) for c in cells]
                    + [_f(growth, ".3f"), _f(r["ms_per_step"] if r else None, ".3f"),
                       _pct(mem_saving, ".1f"), _pct(time_saving, ".0f")])
    claims = []
    for rule in ("sltt", "sltt-k", "ottt"):
        r, b = get(rule, "lif", tmax), get("bptt", "lif", tmax)
        if r and b and b["peak_mib"] > 0:
            claims.append(f"{rule}: {r['peak_mib']:.1f} MiB against bptt's {b['peak_mib']:.1f} MiB at T = {tmax:g} "
                          f"({100 * (1 - r['peak_mib'] / b['peak_mib']):.1f}% less), {r['ms_per_step']:.3f} against "
                          f"{b['ms_per_step']:.3f} CPU ms per step "
                          f"({100 * (1 - r['ms_per_step'] / b['ms_per_step']):.0f}% less; negative: more)")
    header = ["rule", "model"] + [f"MiB at T={T:g}" for T in ts] + [
        "KiB/step", f"CPU ms/step (T={tmax:g})", "memory saved vs bptt", "CPU time saved vs bptt"]
    cue_rows, cue_summary = [], {}
    for rule in CUE_RULES:
        rs = [r for r in cue if r["rule"] == rule and "error" not in r]
        if not rs:
            continue
        accs = [r["accuracy"] for r in rs]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        cue_summary[rule] = {"accuracy": accs, "accuracy_mean": sum(accs) / len(accs),
                             "peak_mib_mean": mean("peak_mib"),
                             "ms_per_step_mean": mean("ms_per_step")}
        cue_rows.append([rule, len(rs), " ".join(f"{a:.2f}" for a in accs), f"{sum(accs) / len(accs):.3f}",
                         f"{mean('peak_mib'):.1f}", f"{mean('ms_per_step'):.3f}"])
    errors = [r for r in mem + cue if "error" in r]
    took = time.perf_counter() - t_start
    claim = __doc__.split("\n\n")[1]
    md = (f"# neuro bench memory\n\n{claim}\n\n"
          f"## Peak memory added by a sequence of T steps (RSS, MiB) and time per step\n\n"
          f"n = {args.n} hidden units, batch 1, float32, one thread, each run in a fresh process. "
          f"\"KiB/step\": the growth between T = {ts[0]:g} and T = {tmax:g}. Savings are at T = {tmax:g} "
          f"against bptt on the same model.\n\n" + _report.md_table(header, rows) + "\n\n")
    c, b = get(COMPILED, "rate", tmax), get("bptt", "rate", tmax)
    if c and b:
        kib = {k: summary[f"{k}/rate"]["kib_per_step"] for k in (COMPILED, "bptt")}
        md += (f"BPTT on rate run by the compiled engine stores {c['stored_bytes_per_step']:.0f} B per step (the "
               f"window's arrays: h, and dh/du where alpha != 1); its peak RSS grows by {_f(kib[COMPILED], '.3f')} "
               f"KiB per step against the torch path's {_f(kib['bptt'], '.3f')} KiB ({c['peak_mib']:.1f} against "
               f"{b['peak_mib']:.1f} MiB at T = {tmax:g}), at {c['ms_per_step']:.3f} against {b['ms_per_step']:.3f} "
               "CPU ms per step.\n\n")
    if claims:
        md += ("SLTT's claim (> 70% less memory, > 50% less time than BPTT), as measured here: "
               + "; ".join(claims) + ".\n\n")
    if cue_rows:
        md += (f"## Cue accumulation (shortened task, {args.trials} trials of batch {args.batch}, "
               f"ALIF n = {args.hidden}, "
               f"Adam lr {args.lr})\n\nAccuracy on 256 fresh trials (chance 0.5); peak RSS added by the training "
               f"run.\n\n" + _report.md_table(["rule", "seeds", "accuracy per seed", "mean accuracy",
                                                 "peak MiB", "CPU ms/step"], cue_rows) + "\n\n")
    if skipped:
        md += "Rules left out: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n\n"
    if errors:
        md += "Runs skipped or failed: " + "; ".join(
            f"{r['rule']} {'T=' + str(r['T']) if 'T' in r else 'seed ' + str(r['seed'])}: {r['error']}"
            for r in errors) + "\n\n"
    load = f"1-minute load average {load_before} at the start, {_report.loadavg()} at the end ({os.cpu_count()} cores)"
    shown = [a for i, a in enumerate(argv or []) if a != "--out" and (i == 0 or (argv or [])[i - 1] != "--out")]
    md += f"Took {took:.0f} s; {load}. Command: `neuro bench memory {' '.join(shown)}` (output folder aside)\n"
    _report.write_json(os.path.join(args.out, "bench_memory.json"),
                       {"benchmark": "memory", "claim": claim, "machine": _report.machine_info(1),
                        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
                        "summary": summary,
                        "cue": cue_summary, "runs": mem + cue, "skipped": skipped, "took_s": took,
                        "loadavg": [load_before, _report.loadavg()]})
    _report.write_atomic(os.path.join(args.out, "bench_memory.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
