"""``neuro bench influence``: the influence-balancing test of truncation bias (Tallec & Ollivier 2018,
"Unbiased Online Recurrent Optimization", section 5.1; REFERENCES.md "Reproducible settings").

A linear system of n = 23 units, ``s_{t+1} = A s_t + theta u`` with ``A = 0.5 I + 0.5 superdiagonal``,
``u = (+1 x10, -1 x13)``, ``s_0 = 1``, ``theta_0 = 0.5``, loss ``1/2 (s[0] - 1)^2``, trained online by
SGD (one update per step) for 3000 steps: the parameter's short-term effect on the loss has the
opposite sign to its long-term effect, so truncated BPTT with a short window pushes ``theta`` the
wrong way and diverges; RTRL and the unbiased online estimates (UORO, NoBackTrack) converge to the
optimum ``theta* = -1/6`` (where s[0] stays at 1).

Writes ``OUT/bench_influence.json`` and ``OUT/bench_influence.md`` atomically.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from neuro.bench import _report

# (rule, options, SGD learning rate): the UORO paper's rates (1e-5 for UORO, 1e-4 otherwise)
RUNS: list[tuple[str, dict[str, Any], float]] = [
    ("tbptt", {"k": 1}, 1e-4),
    ("tbptt", {"k": 10}, 1e-4),
    ("tbptt", {"k": 100}, 1e-4),
    ("rtrl", {}, 1e-4),
    ("uoro", {}, 1e-5),
    ("nobacktrack", {}, 1e-5),
]

THETA_STAR = -1.0 / 6.0  # the fixed point s = (I - A)^-1 theta u has s[0] = 1 at theta = -1/6


def run_one(rule: str, opts: dict[str, Any], lr: float, steps: int, seed: int) -> dict[str, Any]:
    """Train online on influence-balancing; the final theta and the mean loss of the last 10% of steps."""
    import models
    import neuro

    task = neuro.tasks.make("influence-balancing")
    net = models.make(task.model, **task.model_options())
    r = neuro.rules.make(rule, net, **opts)
    t0 = time.perf_counter()
    try:
        h = neuro.train(net, r, task, steps=steps, seed=seed, optimizer="sgd", lr=lr, progress=False,
                        chunk=100, log_every=max(1, steps // 10), dtype=torch.float64)
        theta = h.params["theta"].item()
        last = h.mean_loss(max(1, steps // 10))
        status = "converged" if last < 1e-3 else ("diverged" if not math.isfinite(last) or last > 1.0 else "stalled")
    except neuro.TrainingDiverged as e:  # the loss overflowed: the clearest divergence
        theta, last, status = math.nan, math.inf, f"diverged ({e.step})"
    return {"rule": rule, "options": opts, "lr": lr, "seed": seed, "theta": theta, "final_loss": last,
            "status": status, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench influence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the stochastic rules (deterministic: 1)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--rules", nargs="*", default=None, help="subset of rule names")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        ap.error(f"--steps={args.steps} and --seeds={args.seeds} must be >= 1")
    import neuro
    rows, results = [], []
    for rule, opts, lr in RUNS:
        if rule not in neuro.rules.available() or (args.rules and rule not in args.rules):
            continue
        stochastic = neuro.rules.get(rule).stochastic
        runs = [run_one(rule, opts, lr, args.steps, s) for s in range(args.seeds if stochastic else 1)]
        results.extend(runs)
        losses = [r["final_loss"] for r in runs]
        thetas = [r["theta"] for r in runs]
        label = rule + "".join(f" {k}={v}" for k, v in opts.items())
        statuses = sorted({r["status"].split(" ")[0] for r in runs})
        rows.append([label, lr, len(runs), f"{statistics.median(losses):.3g}", f"{statistics.median(thetas):.4g}",
                     "/".join(statuses), f"{sum(r['seconds'] for r in runs) / len(runs):.1f}"])
        print(f"{label}: median final loss {statistics.median(losses):.3g}, theta {statistics.median(thetas):.4g}"
              f" ({'/'.join(statuses)})", flush=True)
    header = ["rule", "SGD lr", "runs", "final loss (median)", "theta (median)", "outcome", "s/run"]
    md = (f"# neuro bench influence\n\n{args.steps} online SGD steps, float64; optimum theta* = {THETA_STAR:.4f}; "
          "final loss = mean over the last 10% of steps.\n\n" + _report.md_table(header, rows) + "\n")
    _report.write_json(f"{args.out}/bench_influence.json",
                       {"machine": _report.machine_info(torch.get_num_threads()), "steps": args.steps,
                        "results": results})
    _report.write_atomic(f"{args.out}/bench_influence.md", md)
    print(md)
    return 0
