"""``neuro bench seeds``: seeds trained as one batched computation against the same seeds run one by one.

The goal: 16 small networks (n = 64) trained as one batched computation at least 8x the
throughput of 16 sequential runs. Each case trains ``--members`` seeds of ``bptt`` on the add task (BPTT
over chunks of 100 steps, Adam) for ``--steps`` steps, once as an :class:`neuro.ensemble.Ensemble`
(:func:`neuro.comparison.vectorised.run_group`) and once as separate runs
(:func:`neuro.comparison.worker.run_one`, one after the other in this process), on ``--threads`` threads,
alternating ``--repeats`` times. ``--mode`` is how the ensemble batches its members (``direct``: the
network's own step on member-major tensors; ``vmap``; ``auto``, the default: direct where it agrees with
vmap; the table says which ran). Figures: training time per member-step (the run's training clock; no
alignment probe), the speed-up (sequential / vectorised), and the largest difference of final loss
between a member and its own run (they must agree to rounding). Writes ``OUT/bench_seeds.json`` and
``OUT/bench_seeds.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from neuro.ensemble import MODES

from . import _report

__all__ = ["main"]


def _case(model: str, members: int, hidden: int, steps: int, model_options: dict, mode: str) -> dict[str, Any]:
    from neuro.comparison.harness import plan
    from neuro.comparison.vectorised import run_group
    from neuro.comparison.worker import run_one

    specs = [s.asdict() for s in plan("add", ["bptt"], seeds=members, steps=steps, model=model, hidden=hidden,
                                      log_every=steps, align_every=0, eval_steps=100, model_options=model_options,
                                      lr=3e-3)]
    t0 = time.perf_counter()
    vec = run_group(specs, mode=mode)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq = [run_one(s) for s in specs]
    t_seq = time.perf_counter() - t0
    vec_ms = 1e3 * vec[0]["time_per_step_s"]
    seq_ms = 1e3 * statistics.fmean(r["time_per_step_s"] for r in seq)
    return {"vectorised_ms_per_member_step": vec_ms, "sequential_ms_per_step": seq_ms, "speedup": seq_ms / vec_ms,
            "wall_vectorised_s": t_vec, "wall_sequential_s": t_seq,
            "max_final_loss_diff": max(abs(a["final_loss"] - b["final_loss"]) for a, b in zip(vec, seq))}


def _direct(model: str, hidden: int, model_options: dict, mode: str) -> bool:
    """Whether the ensemble of ``model`` runs in the direct mode (what ``mode`` resolves to)."""
    import models
    import neuro.tasks
    from neuro.ensemble import Ensemble

    task = neuro.tasks.make("add")
    net = models.make(model, n_in=task.n_in, n_hidden=hidden, n_out=task.n_out, **model_options)
    return Ensemble(net, 2, mode=mode).direct


#: the LIF of the demo (it spikes on the add task's 0/1 inputs)
LIF_OPTIONS = dict(tau_mem=3.0, tau_syn=1.0, tau_out=1.0, input_scale=5.0, rec_scale=3.0, surrogate_scale=1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["rate", "lif"])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default="auto", choices=MODES,
                    help="how the ensemble batches its members (neuro.ensemble); auto: direct where it equals vmap")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true", help="2 members, 8 units, 100 steps, 1 repeat (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.members, args.hidden, args.steps, args.repeats = 2, 8, 100, 1
    for name in ("members", "hidden", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)} is invalid: must be >= 1")
    bad = [m for m in args.models if m not in ("rate", "lif", "alif", "lstm")]
    if bad:
        ap.error(f"--models {' '.join(bad)}: valid choices are rate, lif, alif, lstm")
    torch.set_num_threads(args.threads)
    load = _report.loadavg()
    rows = []
    for model in args.models:
        opts = LIF_OPTIONS if model in ("lif", "alif") else {}
        runs = [_case(model, args.members, args.hidden, args.steps, opts, args.mode) for _ in range(args.repeats)]
        batched = "direct" if _direct(model, args.hidden, opts, args.mode) else "vmap"
        rows.append({"model": model, "members": args.members, "hidden": args.hidden, "steps": args.steps,
                     "batched": batched,
                     "repeats": runs,
                     "speedup": _report.summarize([r["speedup"] for r in runs]),
                     "vectorised_ms_per_member_step": statistics.median(r["vectorised_ms_per_member_step"] for r in runs),
                     "sequential_ms_per_step": statistics.median(r["sequential_ms_per_step"] for r in runs),
                     "max_final_loss_diff": max(r["max_final_loss_diff"] for r in runs)})
    report = {"machine": _report.machine_info(args.threads), "loadavg_before": load, "loadavg_after": _report.loadavg(),
              "settings": vars(args), "rows": rows}
    out = Path(args.out)
    _report.write_json(out / "bench_seeds.json", report)
    table = _report.md_table(
        ["model", "members x n", "batched", "steps", "sequential ms/step", "vectorised ms/member-step",
         "speed-up (median, min-max)", "max |final loss diff|"],
        [[r["model"], f"{r['members']} x {r['hidden']}", r["batched"], r["steps"], f"{r['sequential_ms_per_step']:.3f}",
          f"{r['vectorised_ms_per_member_step']:.3f}",
          f"{r['speedup']['median']:.1f}x ({r['speedup']['min']:.1f}-{r['speedup']['max']:.1f})",
          f"{r['max_final_loss_diff']:.1e}"] for r in rows])
    text = (f"# neuro bench seeds\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{table}\n\n"
            f"Machine: {report['machine']['cpu_model']}, {args.threads} thread(s), load average before/after "
            f"{load}/{report['loadavg_after']}; torch {report['machine']['torch']}.\n")
    _report.write_atomic(out / "bench_seeds.md", text)
    print(table)
    return 0
