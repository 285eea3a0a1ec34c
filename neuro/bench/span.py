"""``neuro bench span``: dependency span against truncation span, a test of NoBackTrack's claim.

The claim tested (Ollivier, Tallec & Charpiat 2015, arXiv:1507.07680): "The Kalman-like version of
NoBackTrack is superior to BPTT when the time span of dependencies in the data is longer than the
truncation span".

Tasks (``--tasks``), each a condition of its own:

- ``add``: the Add task of Marschall et al. (:mod:`neuro.tasks.add`) with ``t1 = L``, ``t2 = L + 2``, one
  condition per lag ``L`` of ``--lags``: the label depends on ``x_{t-L}`` (0.143 nats) and ``x_{t-L-2}``
  (0.065 nats). Baseline: the predictor that remembers nothing (0.662); target: the one that remembers
  ``x_{t-L}`` (0.519). Truncated BPTT with windows of ``k`` steps sees the lag only when ``L <= k - 1``.
- ``anbn``: UORO's anbn(1, 32) (:mod:`neuro.tasks.anbn`), dependencies up to 33 steps back.
- ``brackets``: the distant brackets of the NoBackTrack/UORO papers (:mod:`neuro.tasks.brackets`), a letter
  recalled 8 steps later.

For ``anbn`` and ``brackets`` the baseline is the best predictor given the current symbol only (what a network
without memory reaches) and the target is the ideal predictor's loss (the task's floor).

Network: ``models.make("rate", n_hidden=n)`` for every ``n`` of ``--sizes``, trained online (one optimizer step
per estimate: every step, every ``k`` steps for ``tbptt``) on ``--batch`` independent streams, chunks of 100
steps. Methods: ``tbptt`` (``k``), ``nobacktrack-kalman`` (plain SGD: its output is the filter's
preconditioned direction), ``nobacktrack``, ``uoro`` and ``rtrl`` (the exact online gradient, O(n^4) per
step: run only up to ``--rtrl-max``) with Adam. Learning rates: ``--lr METHOD=LR``, or a pilot per size on
one seed that is not evaluated, on the first condition at or beyond the truncation, ``--pilot-steps``
steps, three candidates per method (:data:`GRID`).

Before running, the cost of each (method, size) is measured (``--estimate-steps`` steps) and the planned
sweep's cost printed. Final loss: the mean cross-entropy per step over the last 20% of steps; a run whose
loss or parameters became non-finite is marked diverged and left out of the means. The verdict per size and
condition: Kalman-minus-TBPTT differences paired by seed, mean ± s.e., decided at 2 s.e. Writes
``OUT/bench_span.json`` after every run and ``OUT/bench_span.md`` and ``OUT/bench_span.png`` after every
(size, task) block; ``--resume`` keeps the finished runs of the same settings found in ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import torch

from neuro.bench import _report, span_report

#: method -> (optimizer, candidate learning rates for the pilot): three candidates each
GRID: dict[str, tuple[str, tuple[float, ...]]] = {
    "tbptt": ("adam", (1e-3, 3e-3, 1e-2)),
    "rtrl": ("adam", (1e-3, 3e-3, 1e-2)),
    "uoro": ("adam", (1e-3, 3e-3, 1e-2)),
    "nobacktrack": ("adam", (1e-3, 3e-3, 1e-2)),
    "nobacktrack-kalman": ("sgd", (0.03, 0.1, 0.3)),
}
METHODS = tuple(GRID)
TASKS = ("add", "anbn", "brackets")
T2_OFFSET = 2      # add: t2 = L + T2_OFFSET
CHUNK = 100        # steps per sequence of the continuing task (a multiple of k)
PILOT_SEED = 1000  # the pilot's seed: not one of the evaluated seeds 0 .. seeds-1
SPAN = {"anbn": 33, "brackets": 8}  # the longest dependency, in steps


def condition_names(tasks: list[str], lags: list[int]) -> list[str]:
    return [f"add L={lag}" if t == "add" else t for t in tasks for lag in (lags if t == "add" else [None])]


def make_task(cond: str):
    from neuro.tasks import make

    if cond.startswith("add L="):
        lag = int(cond.split("=")[1])
        return make("add", t1=lag, t2=lag + T2_OFFSET)
    return make(cond)


def gap(cond: str) -> tuple[float, float]:
    """(baseline, target) losses of the condition."""
    f = make_task(cond).floors()
    return (f["none"], f["t1"]) if cond.startswith("add") else (f["markov"], f["floor"])


def span_of(cond: str) -> int:
    return int(cond.split("=")[1]) if cond.startswith("add") else SPAN[cond]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (size, condition, method, seed, lr) online; the mean loss over the last 20% of steps."""
    import models
    import neuro

    torch.set_num_threads(1)
    method, steps = job["method"], job["steps"]
    task = make_task(job["condition"])
    net = models.make("rate", n_in=task.n_in, n_hidden=job["hidden"], n_out=task.n_out)
    opts = {"k": job["k"]} if method == "tbptt" else {}
    rule = neuro.rules.make(method, net, **opts)
    t0 = time.perf_counter()
    try:
        h = neuro.train(net, rule, task, steps=steps, seed=job["seed"], optimizer=GRID[method][0], lr=job["lr"],
                        batch=job["batch"], chunk=CHUNK, progress=False, log_every=max(1, steps // 50))
        last = h.mean_loss(max(1, int(steps * span_report.LAST_FRACTION)))
        status = "ok" if math.isfinite(last) else "diverged"
    except neuro.TrainingDiverged as e:
        last, status = math.nan, f"diverged at step {e.step}"
    except FloatingPointError as e:  # a rule's non-finite estimate
        last, status = math.nan, f"diverged: {e}"
    return {**job, "optimizer": GRID[method][0], "options": opts,
            "final_loss": last if math.isfinite(last) else None, "status": status,
            "seconds": round(time.perf_counter() - t0, 2)}


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r[k] for k in ("phase", "hidden", "condition", "method", "seed", "lr", "steps", "k", "batch"))


def _log(r: dict[str, Any]) -> None:
    loss = "diverged" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
    print(f"[{r['phase']}] n={r['hidden']:<4} {r['condition']:<9} {r['method']:<19} seed={r['seed']:<5} "
          f"lr={r['lr']:<6g} {loss} ({r['seconds']:.1f}s)", file=sys.stderr, flush=True)


def estimate(sizes: list[int], methods: list[str], cond: str, steps: int, args) -> dict[str, dict[str, float]]:
    """Seconds per step of each (size, method), timed over ``steps`` steps after a warm-up run."""
    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        for m in methods:
            if m == "rtrl" and n > args.rtrl_max:
                continue
            job = {"phase": "estimate", "hidden": n, "condition": cond, "method": m, "seed": PILOT_SEED,
                   "lr": GRID[m][1][0], "k": args.k, "batch": args.batch}
            run_one({**job, "steps": min(steps, 50)})  # warm-up: compilation
            t0 = time.perf_counter()
            run_one({**job, "steps": steps})
            out.setdefault(str(n), {})[m] = (time.perf_counter() - t0) / steps
    return out


def _parse_pairs(items: list[str], what: str, cast) -> dict:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        try:
            out[cast[0](key)] = cast[1](val)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"neuro bench span: {what}={item!r} is invalid: expected KEY=VALUE")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench span", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50000, help="online steps per run")
    ap.add_argument("--steps-at", nargs="+", default=[], metavar="N=STEPS", help="steps at a size (overrides --steps)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256], help="hidden sizes n")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--lags", type=int, nargs="+", default=[2, 3, 6, 10], help="add: dependency lags L (t1 = L)")
    ap.add_argument("--k", type=int, default=4, help="TBPTT truncation")
    ap.add_argument("--batch", type=int, default=4, help="independent streams per step")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--methods-at", nargs="+", default=[], metavar="N=M1,M2",
                    help="the methods run at a size (default: --methods)")
    ap.add_argument("--rtrl-max", type=int, default=64, help="largest size RTRL (O(n^4) per step) runs at")
    ap.add_argument("--lr", nargs="+", default=[], metavar="METHOD=LR", help="fixed learning rates (no pilot)")
    ap.add_argument("--pilot-steps", type=int, default=3000, help="steps of each pilot run (0: no pilot, middle lr)")
    ap.add_argument("--estimate-steps", type=int, default=200, help="steps timed per (method, size); 0: none")
    ap.add_argument("--jobs", type=int, default=1, help="must be 1: runs are sequential (one torch thread)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of OUT/bench_span.json")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.sizes, args.lags, args.pilot_steps = 100, 2, [8], [6], 50
        args.estimate_steps = 10
    for name in ("steps", "seeds", "k", "batch", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)} is invalid: must be >= 1")
    if args.jobs != 1:
        ap.error(f"--jobs={args.jobs} is invalid: runs are sequential, must be 1")
    for name in ("pilot_steps", "estimate_steps"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 0")
    for name, vals in (("lags", args.lags), ("sizes", args.sizes)):
        if any(v < 1 for v in vals):
            ap.error(f"--{name}={vals} is invalid: every value must be >= 1")
    steps_at = {n: args.steps for n in args.sizes} | _parse_pairs(args.steps_at, "--steps-at", (int, int))
    methods_at = {n: list(args.methods) for n in args.sizes} | {
        n: ms.split(",") for n, ms in _parse_pairs(args.methods_at, "--methods-at", (int, str)).items()}
    fixed_lr = _parse_pairs(args.lr, "--lr", (str, float))
    for m in list(fixed_lr) + [m for ms in methods_at.values() for m in ms]:
        if m not in GRID:
            ap.error(f"method {m!r} is invalid: expected one of {', '.join(METHODS)}")
    for n in args.sizes:
        if steps_at[n] < 1:
            ap.error(f"--steps-at {n}={steps_at[n]} is invalid: must be >= 1")
        methods_at[n] = [m for m in methods_at[n] if m != "rtrl" or n <= args.rtrl_max]
    sizes = list(dict.fromkeys(args.sizes))
    conds = condition_names(args.tasks, sorted(set(args.lags)))
    gaps = {c: gap(c) for c in conds}
    beyond = {c: span_of(c) >= args.k for c in conds}
    all_methods = [m for m in METHODS if any(m in methods_at[n] for n in sizes)]
    base = {"k": args.k, "batch": args.batch}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bench_span.json")
    t_start = time.perf_counter()

    done: dict[tuple, dict[str, Any]] = {}
    if args.resume and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        done = {_key(r): r for r in old.get("pilot", []) + old.get("results", [])}
    cost: dict[str, dict[str, float]] = {}
    if args.estimate_steps:
        timed = [m for m in METHODS if m in args.methods or any(m in ms for ms in methods_at.values())]
        cost = estimate(sizes, timed, conds[0], args.estimate_steps, args)
        print(f"estimated cost, ms/step (RTRL, O(n^4) per step, only up to n = {args.rtrl_max}); seconds per "
              f"block of {args.seeds} seeds, planned and with every method at {args.steps} steps:", file=sys.stderr)
        planned = full = 0.0
        for n in sizes:
            c = cost[str(n)]
            block = sum(c[m] for m in methods_at[n]) * steps_at[n] * args.seeds
            every = sum(c[m] for m in args.methods if m in c) * args.steps * args.seeds
            planned, full = planned + block * len(conds), full + every * len(conds)
            print(f"  n={n}: " + ", ".join(f"{m} {v * 1e3:.3f}" for m, v in c.items()) +
                  f"; planned {block:.0f} s ({steps_at[n]} steps: {', '.join(methods_at[n])}), every method "
                  f"{every:.0f} s", file=sys.stderr)
        print(f"  {len(conds)} blocks per size: planned {planned / 3600:.2f} core-hours, every method at "
              f"{args.steps} steps {full / 3600:.2f} (pilots and per-run set-up not included)",
              file=sys.stderr, flush=True)

    pilot: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, float]] = {}
    pilot_cond = next((c for c in conds if beyond[c]), conds[0])

    def run(job: dict[str, Any], into: list[dict[str, Any]]) -> None:
        r = done.get(_key(job)) or run_one(job)
        into.append(r)
        _log(r)
        write_json()

    def settings() -> dict[str, Any]:
        return {"steps": steps_at, "seeds": args.seeds, "sizes": sizes, "conditions": conds, "k": args.k,
                "batch": args.batch, "chunk": CHUNK, "methods": methods_at, "rtrl_max": args.rtrl_max,
                "fixed_lr": fixed_lr, "pilot_steps": args.pilot_steps, "pilot_condition": pilot_cond,
                "pilot_seed": PILOT_SEED, "grid": {m: list(GRID[m][1]) for m in all_methods},
                "optimizers": {m: GRID[m][0] for m in all_methods}, "chosen_lr": chosen,
                "final_loss": f"mean CE over the last {span_report.LAST_FRACTION:.0%} of steps", "quick": args.quick}

    cmd = "python -m neuro.bench span " + " ".join(argv if argv is not None else sys.argv[1:])
    verdict: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}

    def write_json() -> None:
        _report.write_json(json_path, {
            "benchmark": "span", "claim": __doc__.split("\n\n")[1], "machine": _report.machine_info(1),
            "settings": settings(), "gaps": {c: {"baseline": b, "target": t} for c, (b, t) in gaps.items()},
            "cost_s_per_step": cost, "pilot": pilot, "results": results, "summary": summary, "verdict": verdict,
            "seconds": round(time.perf_counter() - t_start, 1), "command": cmd})

    for n in sizes:
        chosen[str(n)] = {}
        for m in methods_at[n]:
            if m in fixed_lr:
                chosen[str(n)][m] = fixed_lr[m]
            elif not args.pilot_steps:
                chosen[str(n)][m] = GRID[m][1][1]
            else:
                rs: list[dict[str, Any]] = []
                for lr in GRID[m][1]:
                    run({**base, "phase": "pilot", "hidden": n, "condition": pilot_cond, "method": m,
                         "seed": PILOT_SEED, "lr": lr, "steps": min(args.pilot_steps, steps_at[n])}, rs)
                pilot.extend(rs)
                ok = [r for r in rs if r["final_loss"] is not None]
                chosen[str(n)][m] = min(ok, key=lambda r: r["final_loss"])["lr"] if ok else GRID[m][1][0]
        for cond in conds:
            for s in range(args.seeds):
                for m in methods_at[n]:
                    run({**base, "phase": "main", "hidden": n, "condition": cond, "method": m, "seed": s,
                         "lr": chosen[str(n)][m], "steps": steps_at[n]}, results)
            blocks = [(sz, c) for sz in sizes for c in conds]
            summary.clear()
            summary.update(span_report.summarise(results, blocks, all_methods, gaps))
            verdict[:] = [v for v in (span_report.paired(results, sz, c) for sz, c in blocks) if v]
            write_json()
            report(args, summary, verdict, sizes, conds, all_methods, beyond, gaps, steps_at, chosen, cmd)
    return 0


def report(args, summary, verdict, sizes, conds, methods, beyond, gaps, steps_at, chosen, cmd) -> None:
    lrs = "; ".join(f"n={n}: " + ", ".join(f"{m} {GRID[m][0]} {lr:g}" for m, lr in chosen[str(n)].items())
                    for n in sizes if str(n) in chosen)
    head = (f"# neuro bench span\n\nRate RNN trained online, batch {args.batch}, {args.seeds} seeds; TBPTT "
            f"k = {args.k}. Conditions: {', '.join(conds)} (span >= k: "
            f"{', '.join(c for c in conds if beyond[c]) or 'none'}). Final loss = mean CE (nats) over the last "
            f"{span_report.LAST_FRACTION:.0%} of steps. Learning rates: {lrs}.\n")
    md = span_report.markdown(head, summary, verdict, sizes, conds, methods, beyond, gaps, "bench_span.png",
                              f"Command: `{cmd}`")
    span_report.plot(os.path.join(args.out, "bench_span.png"), summary, sizes, conds, methods, gaps)
    _report.write_atomic(os.path.join(args.out, "bench_span.md"), md)
    print(md, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
