"""``neuro bench span``: dependency length against truncation span, a reproduction of NoBackTrack's claim.

The claim tested (Ollivier, Tallec & Charpiat 2015, arXiv:1507.07680): "The Kalman-like version of
NoBackTrack is superior to BPTT when the time span of dependencies in the data is longer than the
truncation span".

Task: the Add task of Marschall et al. (:mod:`neuro.tasks.add`) with ``t1 = L`` and ``t2 = L + 2``: the
label's bias depends on ``x_{t-L}`` (the main dependency, worth 0.143 nats) and on ``x_{t-L-2}`` (a
second, weaker one, worth 0.065 nats), so the whole span of the dependencies is ``[L, L + 2]`` and grows
with ``L``. The floors do not depend on the lags: a predictor that remembers nothing has cross-entropy
0.662 nats, one that remembers ``x_{t-L}`` 0.519, one that remembers both 0.454 (``AddTask.floors()``).
Truncated BPTT with windows of ``k`` steps (non-overlapping, the state carried across) backpropagates a
loss at window position ``j`` (1..k) over ``j - 1`` steps, so it can see the lag-L dependency only when
``L <= k - 1`` (and then only from the last ``k - L`` positions of each window).

Network: ``models.make("rate", n_in=2, n_hidden=--hidden, n_out=2)``, trained online (one optimizer step per
estimate: every step, every ``k`` steps for ``tbptt``) on ``--batch`` independent streams, chunks of 100 steps
(a multiple of ``k``). Methods: ``tbptt`` (``k``), ``nobacktrack-kalman`` (plain SGD: its output is the
filter's preconditioned direction and ``lr`` the filter's step size), ``nobacktrack``, ``uoro`` and ``rtrl``
(the exact online gradient, the reference) with Adam. The learning rate of each method is chosen by a
pilot on one seed (not one of the evaluated seeds) at one lag (``--pilot-lag``), ``--pilot-steps`` steps,
the same number of candidates for every method (:data:`GRID`): the one with the lowest final loss.

Final loss: the mean cross-entropy per step over the last 20% of steps (nats). A run whose loss or
parameters became non-finite is marked ``diverged`` (its loss ``null`` in the JSON) and left out of the
means (the count is shown). Writes ``OUT/bench_span.json``, ``OUT/bench_span.md`` (atomically) and
``OUT/bench_span.png``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import torch

from neuro.bench import _report

#: method -> (optimizer, candidate learning rates for the pilot): three candidates each
GRID: dict[str, tuple[str, tuple[float, ...]]] = {
    "tbptt": ("adam", (1e-3, 3e-3, 1e-2)),
    "rtrl": ("adam", (1e-3, 3e-3, 1e-2)),
    "uoro": ("adam", (1e-3, 3e-3, 1e-2)),
    "nobacktrack": ("adam", (1e-3, 3e-3, 1e-2)),
    "nobacktrack-kalman": ("sgd", (0.03, 0.1, 0.3)),
}
METHODS = tuple(GRID)
T2_OFFSET = 2     # t2 = L + T2_OFFSET
CHUNK = 100       # steps per sequence of the continuing task (a multiple of k)
PILOT_SEED = 1000  # the pilot's seed: not one of the evaluated seeds 0 .. seeds-1
LAST_FRACTION = 0.2


def _task(lag: int):
    from neuro.tasks.add import AddTask

    return AddTask(t1=lag, t2=lag + T2_OFFSET)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, lag, seed, lr) online on Add; the mean loss over the last 20% of steps."""
    import models
    import neuro

    torch.set_num_threads(1)
    method, lag, seed, lr, steps = job["method"], job["lag"], job["seed"], job["lr"], job["steps"]
    task = _task(lag)
    net = models.make("rate", n_in=task.n_in, n_hidden=job["hidden"], n_out=task.n_out)
    opts = {"k": job["k"]} if method == "tbptt" else {}
    rule = neuro.rules.make(method, net, **opts)
    optimizer = GRID[method][0]
    t0 = time.perf_counter()
    try:
        h = neuro.train(net, rule, task, steps=steps, seed=seed, optimizer=optimizer, lr=lr,
                        batch=job["batch"], chunk=CHUNK, progress=False, log_every=max(1, steps // 50))
        last = h.mean_loss(max(1, int(steps * LAST_FRACTION)))
        status = "ok" if math.isfinite(last) else "diverged"
    except neuro.TrainingDiverged as e:
        last, status = math.nan, f"diverged at step {e.step}"
    return {**{k: job[k] for k in ("phase", "method", "lag", "seed", "lr", "steps")}, "optimizer": optimizer,
            "options": opts, "final_loss": last if math.isfinite(last) else None, "status": status,
            "seconds": round(time.perf_counter() - t0, 2)}


def _run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        out = []
        for j in jobs:
            out.append(run_one(j))
            _log(out[-1])
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        out = []
        for r in pool.imap(run_one, jobs):
            out.append(r)
            _log(r)
        return out


def _log(r: dict[str, Any]) -> None:
    loss = "diverged" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
    print(f"[{r['phase']}] {r['method']:<19} L={r['lag']:<3} seed={r['seed']:<5} lr={r['lr']:<6g} {loss} "
          f"({r['seconds']:.1f}s)", file=sys.stderr, flush=True)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return m, se


def _plot(path: str, lags: list[int], k: int, summary: dict[str, dict[int, dict[str, Any]]],
          floors: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, method in enumerate(summary):
        xs, ms, ses = [], [], []
        for lag in lags:
            s = summary[method][lag]
            if s["n"]:
                xs.append(lag + (i - 2) * 0.06 * (lags[-1] - lags[0]) / max(1, len(lags)))
                ms.append(s["mean"])
                ses.append(0.0 if math.isnan(s["se"]) else s["se"])
        ax.errorbar(xs, ms, yerr=ses, marker="o", capsize=3, label=method)
    for name, style in (("none", ":"), ("t1", "--"), ("both", "-.")):
        ax.axhline(floors[name], color="grey", ls=style, lw=0.8)
        ax.text(lags[-1], floors[name], f" floor '{name}'", va="bottom", ha="right", fontsize=7, color="grey")
    ax.axvline(k - 0.5, color="k", lw=0.8, alpha=0.5)
    ax.text(k - 0.5, ax.get_ylim()[1], f" TBPTT k={k}", va="top", fontsize=7)
    ax.set_xlabel("dependency lag L (t1 = L, t2 = L + 2)")
    ax.set_ylabel(f"final loss (CE, nats; mean of last {LAST_FRACTION:.0%} of steps)")
    ax.set_title("Add task: final loss vs dependency length (mean ± s.e. over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench span", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6000, help="online steps per run")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lags", type=int, nargs="+", default=[2, 3, 6, 10], help="dependency lags L (t1 = L)")
    ap.add_argument("--k", type=int, default=4, help="TBPTT truncation")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="independent streams per step")
    ap.add_argument("--pilot-steps", type=int, default=3000, help="steps of each pilot run (0: no pilot, middle lr)")
    ap.add_argument("--pilot-lag", type=int, default=None, help="lag of the pilot (default: the first lag >= k)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.lags, args.pilot_steps = 200, 2, [2, 6], 100
    for name in ("steps", "seeds", "k", "hidden", "batch", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)} must be >= 1")
    if args.pilot_steps < 0 or any(lag < 1 for lag in args.lags):
        ap.error("--pilot-steps must be >= 0 and every lag >= 1")
    lags = sorted(set(args.lags))
    pilot_lag = args.pilot_lag or next((lag for lag in lags if lag >= args.k), lags[-1])
    base = {"k": args.k, "hidden": args.hidden, "batch": args.batch}
    t_start = time.perf_counter()

    # pilot: one seed, one lag, every candidate learning rate; keep the lowest final loss
    chosen: dict[str, float] = {}
    pilot: list[dict[str, Any]] = []
    if args.pilot_steps:
        jobs = [{**base, "phase": "pilot", "method": m, "lag": pilot_lag, "seed": PILOT_SEED, "lr": lr,
                 "steps": args.pilot_steps} for m in args.methods for lr in GRID[m][1]]
        pilot = _run_all(jobs, args.jobs)
        for m in args.methods:
            ok = [r for r in pilot if r["method"] == m and r["final_loss"] is not None]
            chosen[m] = min(ok, key=lambda r: r["final_loss"])["lr"] if ok else GRID[m][1][0]
    else:
        chosen = {m: GRID[m][1][1] for m in args.methods}

    jobs = [{**base, "phase": "main", "method": m, "lag": lag, "seed": s, "lr": chosen[m], "steps": args.steps}
            for lag in reversed(lags) for m in args.methods for s in range(args.seeds)]
    results = _run_all(jobs, args.jobs)

    floors = _task(lags[0]).floors()
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for m in args.methods:
        summary[m] = {}
        for lag in lags:
            rs = [r for r in results if r["method"] == m and r["lag"] == lag]
            xs = [r["final_loss"] for r in rs if r["final_loss"] is not None]
            mean, se = _mean_se(xs) if xs else (math.nan, math.nan)
            summary[m][lag] = {"n": len(xs), "diverged": len(rs) - len(xs), "mean": mean, "se": se,
                               "gap_closed": (floors["none"] - mean) / (floors["none"] - floors["t1"]) if xs else None}

    def cell(s: dict[str, Any], key: str = "mean") -> str:
        if not s["n"]:
            return f"diverged ({s['diverged']})"
        txt = f"{s['mean']:.4f} ± {s['se']:.4f}" if key == "mean" else f"{s['gap_closed']:+.2f}"
        return txt + (f" ({s['diverged']} div.)" if s["diverged"] else "")

    header = ["method", "optimizer, lr"] + [f"L={lag}" for lag in lags]
    rows = [[m, f"{GRID[m][0]} {chosen[m]:g}"] + [cell(summary[m][lag]) for lag in lags] for m in args.methods]
    rows_gap = [[m, f"{GRID[m][0]} {chosen[m]:g}"] + [cell(summary[m][lag], "gap") for lag in lags]
                for m in args.methods]
    verdict = []
    if "tbptt" in args.methods and "nobacktrack-kalman" in args.methods:
        for lag in lags:
            a, b = summary["nobacktrack-kalman"][lag], summary["tbptt"][lag]
            if a["n"] and b["n"]:
                d = a["mean"] - b["mean"]
                se = math.sqrt((0 if math.isnan(a["se"]) else a["se"]) ** 2 + (0 if math.isnan(b["se"]) else b["se"]) ** 2)
                verdict.append({"lag": lag, "beyond_truncation": lag >= args.k, "kalman_minus_tbptt": d, "se": se,
                                "kalman_better": d < -2 * se, "tbptt_better": d > 2 * se})
    vrows = [[v["lag"], "yes" if v["beyond_truncation"] else "no", f"{v['kalman_minus_tbptt']:+.4f} ± {v['se']:.4f}",
              "Kalman NBT" if v["kalman_better"] else ("TBPTT" if v["tbptt_better"] else "neither (within 2 s.e.)")]
             for v in verdict]
    cmd = "python -m neuro.bench span " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"steps": args.steps, "seeds": args.seeds, "lags": lags, "t2": f"L + {T2_OFFSET}", "k": args.k,
                "hidden": args.hidden, "batch": args.batch, "chunk": CHUNK, "pilot_steps": args.pilot_steps,
                "pilot_lag": pilot_lag, "pilot_seed": PILOT_SEED, "grid": {m: list(GRID[m][1]) for m in args.methods},
                "optimizers": {m: GRID[m][0] for m in args.methods}, "chosen_lr": chosen,
                "final_loss": f"mean CE over the last {LAST_FRACTION:.0%} of steps", "quick": args.quick}
    md = (f"# neuro bench span\n\nAdd task, t1 = L, t2 = L + {T2_OFFSET}; rate RNN n={args.hidden}; {args.steps} online "
          f"steps x batch {args.batch}; {args.seeds} seeds; TBPTT k = {args.k} (it sees lags <= {args.k - 1}). "
          f"Final loss = mean CE (nats) over the last {LAST_FRACTION:.0%} of steps, mean ± s.e. over seeds. "
          f"Floors: none {floors['none']:.3f}, t1 {floors['t1']:.3f}, both {floors['both']:.3f}. Learning rates: "
          f"pilot on seed {PILOT_SEED}, L = {pilot_lag}, {args.pilot_steps} steps, 3 candidates per method.\n\n"
          "## Final loss\n\n" + _report.md_table(header, rows) +
          "\n\n## Fraction of the x_{t-L} gain captured: (0.662 - loss) / (0.662 - 0.519) (above 1: x_{t-L-2} used too)\n\n" +
          _report.md_table(header, rows_gap) +
          "\n\n## Kalman-like NoBackTrack minus TBPTT (negative: Kalman better; decided at 2 s.e.)\n\n" +
          _report.md_table(["L", "L >= k", "difference", "better"], vrows) +
          f"\n\n![final loss vs L](bench_span.png)\n\nCommand: `{cmd}`\n")
    os.makedirs(args.out, exist_ok=True)
    _plot(os.path.join(args.out, "bench_span.png"), lags, args.k, summary, floors)
    _report.write_json(os.path.join(args.out, "bench_span.json"),
                       {"benchmark": "span", "claim": __doc__.split("\n\n")[1], "machine": _report.machine_info(1),
                        "settings": settings, "floors": floors, "pilot": pilot, "results": results,
                        "summary": {m: {str(lag): {key: (None if isinstance(x, float) and not math.isfinite(x) else x)
                                                   for key, x in v.items()} for lag, v in d.items()}
                                    for m, d in summary.items()},
                        "verdict": verdict, "seconds": round(time.perf_counter() - t_start, 1), "command": cmd})
    _report.write_atomic(os.path.join(args.out, "bench_span.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
