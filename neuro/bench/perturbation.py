"""``neuro bench perturbation``: perturbation learning against BPTT, a reproduction of ANP in time's claim.

The claim tested (Garcia Fernandez, Keemink & van Gerven 2024, arXiv:2405.08967): activity-based node
perturbation in time (``anp-time``) has "similar performance, convergence time and scalability compared
to BPTT, strongly outperforming standard node and weight perturbation methods".

Tasks (the paper's settings, :mod:`neuro.tasks`): ``copy`` (10 symbols, sequences of 100, delay 10:
trials of 210 steps, cross-entropy on the 100 recall steps; chance = ln 10 = 2.303 nats) and
``mackey-glass`` (tau 17, predict 15 steps ahead, mse = 1/2 squared error, continuing stream cut into
sequences of 100 steps). Network: ``models.make("rate", n_hidden=--hidden)`` (one tanh hidden layer; the
paper used 500 units). Methods: ``bptt`` (genuine BPTT over each trial / 100-step sequence, one update per
sequence), ``tbptt`` with ``k=1`` (1-step truncated: what the paper's public code calls BPTT, since it
detaches the hidden state), ``anp-time``, ``anp``, ``np``, ``wp`` (sigma 1e-3, one noisy copy; ``wp``
holds its perturbation for a sequence), all updated online every step (bptt: at sequence ends) with Adam.
Learning rates: Adam makes the rules' normalisations irrelevant, so the paper's SGD rates do not transfer;
each method gets the candidate of :data:`GRID` (5 per method, the same for all) with the lowest final loss
in a pilot run on seed :data:`PILOT_SEED` (not an evaluated seed) of half the steps.

Final loss: the mean over the last 20% of steps of the per-step loss (copy: per recall step, nats;
Mackey-Glass: 1/2 squared error), mean ± s.e. over seeds. Also: the cosine between each rule's
estimate (parameters frozen) and BPTT's gradient on a small rate net as the number of noise samples grows.
Writes ``OUT/perturbation.json``, ``OUT/perturbation.md`` (atomically) and ``OUT/perturbation.png``.
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

METHODS = ("bptt", "tbptt", "anp-time", "anp", "np", "wp")
RULES = ("anp-time", "anp", "np", "wp")
OPTIONS: dict[str, dict[str, Any]] = {"tbptt": {"k": 1}, "anp-time": {"sigma": 1e-3}, "anp": {"sigma": 1e-3},
                                      "np": {"sigma": 1e-3}, "wp": {"sigma": 1e-3}}
#: candidate Adam learning rates, the same five for every method
GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
TASKS: dict[str, dict[str, Any]] = {"copy": {"delay": 10, "symbols": 10, "length": 100},
                                    "mackey-glass": {"tau": 17, "horizon": 15}}
CHUNK = 100
#: the shortest run of each task (one copy trial: 2 length + delay steps)
TRIAL = {"copy": 2 * TASKS["copy"]["length"] + TASKS["copy"]["delay"]}
PILOT_SEED = 1000
LAST_FRACTION = 0.2
SAMPLES = (1, 10, 100, 1000)


def _label(method: str) -> str:
    return "tbptt (k=1)" if method == "tbptt" else method


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (task, method, seed, lr); the curve and the final loss."""
    import models
    import neuro

    torch.set_num_threads(1)
    task = neuro.tasks.make(job["task"], **TASKS[job["task"]])
    net = models.make("rate", n_in=task.n_in, n_hidden=job["hidden"], n_out=task.n_out)
    rule = neuro.rules.make(job["method"], net, **OPTIONS.get(job["method"], {}))
    steps = job["steps"]
    key = "loss_counted" if job["task"] == "copy" else "loss"
    t0 = time.perf_counter()
    curve: list[tuple[int, float]] = []
    try:
        h = neuro.train(net, rule, task, steps=steps, seed=job["seed"], optimizer="adam", lr=job["lr"],
                        batch=job["batch"], chunk=CHUNK, progress=False, log_every=max(1, steps // 40))
        curve = [(r["step"], r[key]) for r in h.metrics if r[key] is not None]
        last = [v for s, v in curve if s > steps * (1 - LAST_FRACTION)] or [curve[-1][1]]
        final = statistics.fmean(last)
        status = "ok" if math.isfinite(final) else "diverged"
    except neuro.TrainingDiverged as e:
        final, status = math.nan, f"diverged at step {e.step}"
    return {**{k: job[k] for k in ("phase", "task", "method", "seed", "lr", "steps", "batch")},
            "final_loss": final if math.isfinite(final) else None, "status": status, "curve": curve,
            "seconds": round(time.perf_counter() - t0, 2)}


def _run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    def log(r: dict[str, Any]) -> None:
        loss = "diverged" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        print(f"[{r['phase']}] {r['task']:<12} {r['method']:<9} seed={r['seed']:<5} lr={r['lr']:<6g} {loss} "
              f"({r['seconds']:.1f}s)", file=sys.stderr, flush=True)

    out = []
    if workers <= 1:
        for j in jobs:
            out.append(run_one(j))
            log(out[-1])
        return out
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for r in pool.imap(run_one, jobs):
            out.append(r)
            log(r)
    return out


def alignment(samples: tuple[int, ...], seeds: int, hidden: int = 16, T: int = 20) -> dict[str, dict[int, float]]:
    """Mean cosine (over ``seeds`` noise seeds) of each rule's summed estimate with BPTT's gradient, frozen
    parameters, a rate net (3 inputs, ``hidden`` units, 2 outputs, float64) on one random sequence."""
    import models
    import neuro

    torch.set_num_threads(1)
    net = models.make("rate", n_in=3, n_hidden=hidden, n_out=2)
    params = net.init_params(seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(T, 2, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(T, 2, 2, generator=g, dtype=torch.float64)
    flat = lambda d: torch.cat([v.reshape(-1) for v in d.values()])  # noqa: E731
    true = flat(neuro.grad_estimate(net, params, "bptt", xs, ys))
    out: dict[str, dict[int, float]] = {}
    for rule in RULES:
        out[rule] = {}
        for K in samples:
            cs = []
            for s in range(seeds):
                est = flat(neuro.grad_estimate(net, params, rule, xs, ys, seed=s, samples=K, sigma=1e-4))
                cs.append(float(est @ true / (est.norm() * true.norm())))
            out[rule][K] = statistics.fmean(cs)
    k1 = flat(neuro.grad_estimate(net, params, "tbptt", xs, ys, k=1))
    out["tbptt (k=1)"] = {K: float(k1 @ true / (k1.norm() * true.norm())) for K in samples}
    return out


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan)


def _plot(path: str, tasks: list[str], methods: list[str], results: list[dict[str, Any]],
          refs: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.9), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in methods:
            runs = [r["curve"] for r in results
                    if r["task"] == task and r["method"] == m and r["final_loss"] is not None]
            if not runs:
                continue
            n = min(len(c) for c in runs)
            steps = [runs[0][i][0] for i in range(n)]
            mean = [statistics.fmean(c[i][1] for c in runs) for i in range(n)]
            ax.plot(steps, mean, label=_label(m), lw=1.4 if m in ("anp-time", "bptt") else 1.0)
        for name, v in refs[task].items():
            ax.axhline(v, color="grey", ls=":", lw=0.8)
            ax.text(ax.get_xlim()[1], v, f"{name} ", va="bottom", ha="right", fontsize=7, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("online step")
        ax.set_ylabel("CE per recall step (nats)" if task == "copy" else "1/2 squared error")
        ax.set_title(f"{task}: mean over seeds", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _references(hidden: int) -> dict[str, dict[str, float]]:
    """Loss levels for context: copy at chance; Mackey-Glass predicting the mean or the current input."""
    import neuro

    seq = neuro.tasks.make("mackey-glass", **TASKS["mackey-glass"]).sample(steps=5000, batch=1, seed=0)
    y, x = seq.ys[:, 0, 0].double(), seq.xs[:, 0, 0].double()
    return {"copy": {"chance": math.log(TASKS["copy"]["symbols"])},
            "mackey-glass": {"mean": float(0.5 * y.var(unbiased=False)), "y=x_t": float(0.5 * ((y - x) ** 2).mean())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench perturbation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--copy-steps", type=int, default=8400, help="online steps on copy (40 trials of 210)")
    ap.add_argument("--copy-batch", type=int, default=16, help="trials run side by side on copy")
    ap.add_argument("--mg-steps", type=int, default=15000, help="online steps on Mackey-Glass (batch 1)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--pilot", type=float, default=0.5, help="pilot length as a fraction of the steps (0: none)")
    ap.add_argument("--align-seeds", type=int, default=3, help="noise seeds of the alignment table (0: none)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1 torch thread each)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests")
    args = ap.parse_args(argv)
    samples, grid = SAMPLES, GRID
    if args.quick:
        args.copy_steps, args.copy_batch, args.mg_steps, args.seeds, args.hidden = 420, 2, 200, 1, 8
        args.align_seeds, samples, grid = 1, (1, 10), GRID[2:4]
    for name in ("copy_steps", "copy_batch", "mg_steps", "seeds", "hidden", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if not 0 <= args.pilot <= 1 or args.align_seeds < 0:
        ap.error("--pilot must be in [0, 1] and --align-seeds >= 0")
    t_start = time.perf_counter()
    steps = {"copy": args.copy_steps, "mackey-glass": args.mg_steps}
    batch = {"copy": args.copy_batch, "mackey-glass": 1}
    base = {"hidden": args.hidden}

    chosen: dict[str, dict[str, float]] = {t: {} for t in args.tasks}
    pilot: list[dict[str, Any]] = []
    if args.pilot > 0:
        jobs = [{**base, "phase": "pilot", "task": t, "method": m, "seed": PILOT_SEED, "lr": lr,
                 "steps": max(TRIAL.get(t, 1), int(steps[t] * args.pilot)), "batch": batch[t]}
                for t in args.tasks for m in args.methods for lr in grid]
        pilot = _run_all(jobs, args.jobs)
        for t in args.tasks:
            for m in args.methods:
                ok = [r for r in pilot if r["task"] == t and r["method"] == m and r["final_loss"] is not None]
                chosen[t][m] = min(ok, key=lambda r: r["final_loss"])["lr"] if ok else grid[0]
    else:
        chosen = {t: {m: grid[len(grid) // 2] for m in args.methods} for t in args.tasks}
    jobs = [{**base, "phase": "main", "task": t, "method": m, "seed": s, "lr": chosen[t][m], "steps": steps[t],
             "batch": batch[t]} for t in args.tasks for m in args.methods for s in range(args.seeds)]
    results = _run_all(jobs, args.jobs)
    train_s = round(time.perf_counter() - t_start, 1)

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for t in args.tasks:
        summary[t] = {}
        for m in args.methods:
            rs = [r for r in results if r["task"] == t and r["method"] == m]
            xs = [r["final_loss"] for r in rs if r["final_loss"] is not None]
            mean, se = _mean_se(xs) if xs else (math.nan, math.nan)
            summary[t][m] = {"n": len(xs), "diverged": len(rs) - len(xs), "mean": mean, "se": se,
                             "seconds": statistics.fmean(r["seconds"] for r in rs)}
    refs = _references(args.hidden)
    align = alignment(samples, args.align_seeds) if args.align_seeds else {}

    # the claim, measured: anp-time's distance to BPTT, and its lead over np and wp, on each task
    verdict = {}
    for t in args.tasks:
        s = summary[t]
        if all(m in s and s[m]["n"] for m in ("bptt", "anp-time", "np", "wp")):
            b, a = s["bptt"]["mean"], s["anp-time"]["mean"]
            level = min(refs[t].values())  # chance (copy), the better of mean / y = x_t (Mackey-Glass)
            k1 = s["tbptt"]["mean"] if "tbptt" in s and s["tbptt"]["n"] else math.nan
            verdict[t] = {"anp_time_over_bptt": a / b, "anp_time_over_tbptt_k1": a / k1,
                          "np_over_anp_time": s["np"]["mean"] / a,
                          "wp_over_anp_time": s["wp"]["mean"] / a,
                          "informative": b < 0.95 * level,
                          "close_to_bptt": a <= 1.25 * b,
                          "far_ahead_of_np_and_wp": min(s["np"]["mean"], s["wp"]["mean"]) >= 1.5 * a}

    def cell(x: dict[str, Any]) -> str:
        if not x["n"]:
            return f"diverged ({x['diverged']})"
        return f"{x['mean']:.4f} ± {x['se']:.4f}" + (f" ({x['diverged']} div.)" if x["diverged"] else "")

    header = ["method"] + [f"{t}: final loss" for t in args.tasks] + [f"{t}: Adam lr" for t in args.tasks] + \
             [f"{t}: s/run" for t in args.tasks]
    rows = [[_label(m)] + [cell(summary[t][m]) for t in args.tasks] + [f"{chosen[t][m]:g}" for t in args.tasks]
            + [f"{summary[t][m]['seconds']:.0f}" for t in args.tasks] for m in args.methods]
    yn = lambda v, k: ("yes" if v[k] else "no") if v["informative"] else "undecided"  # noqa: E731
    vrows = [[t, f"{v['anp_time_over_bptt']:.2f}", f"{v['anp_time_over_tbptt_k1']:.2f}",
              f"{v['np_over_anp_time']:.2f}", f"{v['wp_over_anp_time']:.2f}",
              yn(v, "close_to_bptt"), yn(v, "far_ahead_of_np_and_wp")] for t, v in verdict.items()]
    arows = [[r] + [f"{align[r][K]:.3f}" for K in samples] for r in align]
    cmd = "python -m neuro.bench perturbation " + " ".join(argv if argv is not None else sys.argv[1:])
    ref_txt = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.4f}" for k, v in refs[t].items()) for t in args.tasks)
    md = (f"# neuro bench perturbation\n\nRate RNN, one hidden layer of {args.hidden} tanh units (the paper: 500); "
          f"{args.seeds} seeds; copy: {args.copy_steps} online steps x batch {args.copy_batch} "
          f"({args.copy_steps * args.copy_batch // 210} trials); Mackey-Glass: {args.mg_steps} online steps, batch 1. "
          "Every method uses Adam at the pilot's best of "
          f"{', '.join(map(str, grid))} (pilot: seed {PILOT_SEED}, {args.pilot:.0%} of the steps). `tbptt (k=1)` is "
          "1-step truncated BPTT, the paper's public code's 'BPTT'; `bptt` is genuine BPTT over each trial "
          f"(copy) or {CHUNK}-step sequence (Mackey-Glass). Final loss: mean over the last {LAST_FRACTION:.0%} of steps "
          f"(copy: CE per recall step, nats; Mackey-Glass: 1/2 squared error), mean ± s.e. over seeds. "
          f"Reference levels: {ref_txt}.\n\n## Final loss\n\n" + _report.md_table(header, rows) +
          "\n\n## The claim: ANP in time close to BPTT, far ahead of NP and WP\n\n"
          "Ratios of final losses (close: anp-time <= 1.25 x bptt; far ahead: np and wp >= 1.5 x anp-time). "
          "'undecided': BPTT itself did not get 5% below the reference level (chance; the better of the "
          "Mackey-Glass baselines), so the task was not learned at this budget and says nothing.\n\n" +
          _report.md_table(["task", "anp-time / bptt", "anp-time / tbptt (k=1)", "np / anp-time", "wp / anp-time",
                            "close to BPTT",
                            "far ahead of NP and WP"], vrows) +
          ("\n\n## Alignment with BPTT's gradient against the number of noise samples\n\n"
           "Cosine between the summed estimate (parameters frozen, sigma 1e-4) and BPTT's gradient; rate net "
           f"3-16-2, one random sequence of 20 steps, batch 2, mean over {args.align_seeds} noise seeds. The "
           "tbptt (k=1) row is the deterministic 1-step truncated gradient, the limit of np's mean.\n\n" +
           _report.md_table(["rule"] + [f"samples={K}" for K in samples], arows) if align else "") +
          f"\n\n![convergence curves](perturbation.png)\n\nTraining time: {train_s:.0f} s "
          f"(jobs={args.jobs}).\n\nCommand: `{cmd}`\n")
    settings = {"tasks": {t: TASKS[t] for t in args.tasks}, "steps": steps, "batch": batch, "seeds": args.seeds,
                "hidden": args.hidden, "chunk": CHUNK, "options": OPTIONS, "grid": list(grid), "optimizer": "adam",
                "pilot_fraction": args.pilot, "pilot_seed": PILOT_SEED, "chosen_lr": chosen,
                "final_loss": f"mean over the last {LAST_FRACTION:.0%} of steps", "quick": args.quick}
    clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731
    os.makedirs(args.out, exist_ok=True)
    _plot(os.path.join(args.out, "perturbation.png"), args.tasks, args.methods, results, refs)
    _report.write_json(os.path.join(args.out, "perturbation.json"),
                       {"benchmark": "perturbation", "claim": __doc__.split("\n\n")[1],
                        "machine": _report.machine_info(1), "settings": settings, "references": refs,
                        "pilot": pilot, "results": results,
                        "summary": {t: {m: {k: clean(v) for k, v in d.items()} for m, d in s.items()}
                                    for t, s in summary.items()},
                        "verdict": verdict, "alignment": {r: {str(K): v for K, v in d.items()} for r, d in align.items()},
                        "seconds": round(time.perf_counter() - t_start, 1), "command": cmd})
    _report.write_atomic(os.path.join(args.out, "perturbation.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
