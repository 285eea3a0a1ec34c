"""``neuro bench patterns``: e-prop's pattern-generation task (Bellec et al. 2020, Nature Communications
11:3625, Fig. 3 and Supplementary; code IGITUGraz/eligibility_propagation,
``Figure_3_and_S7_e_prop_tutorials/tutorial_pattern_generation.py``), e-prop against BPTT on the same budget.

Setting (the paper's tutorial, written here from its description):

* 100 input channels of frozen Poisson spikes at 50 Hz (one sequence, drawn once), ``dt`` = 1 ms,
  1000 ms; 100 recurrent LIF neurons, ``tau_m`` = 30 ms, a leaky readout with ``tau_out`` = 30 ms.
* Target: a sum of 4 sines of periods 1000, 500, 333 and 200 ms (1, 2, 3 and 5 cycles in 1000 ms), random
  amplitudes U(0.5, 2) and phases U(0, 2 pi), shifted to start at 0 and scaled to a maximum |value| of 1
  (their ``sum_of_sines_target``).
* Loss: ``1/2 sum_t (y_t - y*_t)^2`` over the sequence; one parameter update per sequence (an iteration).

Differences, stated: the network is ``models.make("lif", dynamics="lava", tau_syn=0.01)`` (no synaptic
filter, as their ``LightLIF``; ``v_th`` = 1 with weights in units of it; ``detach_reset=True`` as their
``stop_z_gradients``; self-connections are not removed); the paper's tutorial also adds a firing-rate
regulariser (10 Hz target) and uses random feedback and plain gradient descent (lr 1e-4) for 2000
iterations. Here: no regulariser, symmetric feedback (``--feedback``), Adam for both rules, with a larger
learning rate and far fewer iterations (``--iters``) so that a run fits in minutes on one CPU core.
BPTT is the true gradient of the same network (its recurrent path kept; only the reset is detached).

Figures: final MSE (mean over the 1000 steps of ``(y_t - y*_t)^2``), normalised MSE (MSE / variance of the
target), the MSE at a few iterations, the cosine of e-prop's estimate with BPTT's gradient at the initial
parameters, seconds per iteration. Writes ``OUT/bench_patterns.json`` and ``OUT/bench_patterns.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch

from neuro.bench import _report

PERIODS_MS = (1000, 500, 333, 200)


def sum_of_sines(steps: int, rng: np.random.Generator) -> np.ndarray:
    """The target: 4 sines of ``steps // period`` cycles each, amplitudes U(0.5, 2), phases U(0, 2 pi),
    shifted to start at 0 and scaled to max |y| = 1."""
    amps = rng.uniform(0.5, 2.0, size=len(PERIODS_MS))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(PERIODS_MS))
    y = np.zeros(steps)
    for a, ph, period in zip(amps, phases, PERIODS_MS):
        cycles = steps // period
        y += a * np.sin(np.linspace(ph, 2.0 * np.pi * cycles + ph, steps))
    y = y - y[0]
    return y / max(np.abs(y).max(), 1e-6)


def build(args: argparse.Namespace):
    import models

    net = models.make("lif", n_in=args.inputs, n_hidden=args.hidden, n_out=1, dt=1.0, tau_mem=30.0,
                      tau_syn=0.01, tau_out=30.0, dynamics="lava", detach_reset=True,
                      input_scale=args.input_scale, rec_scale=args.rec_scale)
    rng = np.random.default_rng(args.seed)
    xs = torch.from_numpy(rng.random((args.steps, 1, args.inputs)) < args.rate_hz * 1e-3).float()
    ys = torch.from_numpy(sum_of_sines(args.steps, rng)).float().reshape(args.steps, 1, 1)
    return net, xs, ys


def train_one(net, rule: str, xs, ys, args: argparse.Namespace) -> dict[str, Any]:
    import neuro

    params = {k: v.clone().requires_grad_(True) for k, v in net.init_params(args.seed).items()}
    opt = torch.optim.Adam(params.values(), lr=args.lr)
    kw = {"feedback": args.feedback} if rule == "eprop" else {}
    var = float(ys.var(unbiased=False))
    curve, t_total = [], 0.0
    rate0 = None
    every = max(1, args.iters // 10)
    for it in range(args.iters + 1):
        if it % every == 0 or it == args.iters:  # evaluated on the side, off the training clock
            with torch.no_grad():
                tr = neuro.simulate(net, {k: v.detach() for k, v in params.items()}, xs)
                mse = float(((tr.y - ys) ** 2).mean())
                rate = float(tr.spikes.mean()) * 1000.0
            rate0 = rate if rate0 is None else rate0
            curve.append({"iteration": it, "mse": mse, "rate_hz": rate})
        if it == args.iters or not math.isfinite(mse):
            break
        t0 = time.perf_counter()
        g = neuro.grad_estimate(net, {k: v.detach() for k, v in params.items()}, rule, xs, ys, **kw)
        for k, v in params.items():
            v.grad = g[k].clone()
        opt.step()
        t_total += time.perf_counter() - t0
    return {"rule": rule, "final_mse": mse, "final_nmse": mse / var if var > 0 else math.nan,
            "initial_mse": curve[0]["mse"],
            "initial_rate_hz": rate0, "final_rate_hz": rate, "iterations": it, "train_s": t_total,
            "s_per_iter": t_total / max(it, 1), "curve": curve, "diverged": not math.isfinite(mse)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench patterns", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=60, help="parameter updates per rule (the paper: 2000)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, both rules (the paper: SGD 1e-4)")
    ap.add_argument("--steps", type=int, default=1000, help="steps of 1 ms per sequence")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--rate-hz", type=float, default=50.0, help="input Poisson rate")
    ap.add_argument("--input-scale", type=float, default=25.0, help="models.lif input_scale (units of v_th)")
    ap.add_argument("--rec-scale", type=float, default=1.0)
    ap.add_argument("--feedback", default="symmetric", choices=("symmetric", "random"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.steps, args.inputs, args.hidden = 3, 200, 20, 10
    for name in ("iters", "steps", "inputs", "hidden"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)} must be >= 1")
    if args.lr <= 0 or args.rate_hz <= 0:
        ap.error("--lr and --rate-hz must be > 0")
    import neuro

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    net, xs, ys = build(args)
    p0 = net.init_params(args.seed)
    kw = {"feedback": args.feedback}
    cos0 = neuro.alignment(neuro.grad_estimate(net, p0, "eprop", xs, ys, **kw),
                           neuro.grad_estimate(net, p0, "bptt", xs, ys))
    results = [train_one(net, rule, xs, ys, args) for rule in ("eprop", "bptt")]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick")}
    settings.update(quick=args.quick, optimizer="adam", tau_m_ms=30.0, tau_out_ms=30.0, dt_ms=1.0,
                    target_periods_ms=list(PERIODS_MS), target_variance=float(ys.var(unbiased=False)))
    res = {"benchmark": "patterns", "machine": _report.machine_info(1), "loadavg": _report.loadavg(),
           "settings": settings, "alignment_at_init": cos0, "results": results,
           "paper": {"iterations": 2000, "optimizer": "SGD", "lr": 1e-4, "rate_regulariser": "10 Hz, coefficient 300",
                     "feedback": "random",
                     "source": "IGITUGraz/eligibility_propagation tutorial_pattern_generation.py"},
           "wall_s": time.perf_counter() - t_start,
           "command": "neuro bench patterns " + " ".join(argv or [])}
    _report.write_json(f"{args.out}/bench_patterns.json", res)
    _report.write_atomic(f"{args.out}/bench_patterns.md", markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict[str, Any]) -> str:
    st, m = res["settings"], res["machine"]
    rows = [(r["rule"], r["iterations"], f"{r['initial_mse']:.4f}", f"{r['final_mse']:.4f}", f"{r['final_nmse']:.3f}",
             f"{r['initial_rate_hz']:.1f} → {r['final_rate_hz']:.1f}", f"{r['s_per_iter']:.2f}",
             f"{r['train_s']:.0f}")
            for r in res["results"]]
    iters = [c["iteration"] for c in res["results"][0]["curve"]]
    curve_rows = [(it, *(f"{next(c['mse'] for c in r['curve'] if c['iteration'] == it):.4f}"
                         if any(c["iteration"] == it for c in r["curve"]) else "–" for r in res["results"]))
                  for it in iters]
    cos = res["alignment_at_init"]
    lines = [
        "# e-prop pattern generation (Bellec et al. 2020): e-prop vs BPTT",
        "",
        f"{st['inputs']} frozen Poisson inputs at {st['rate_hz']:.0f} Hz, {st['hidden']} LIF (tau_m 30 ms, "
        f"readout tau 30 ms), {st['steps']} steps of 1 ms, target: sum of 4 sines (periods 1000/500/333/200 ms). "
        f"Adam, lr {st['lr']:g}, {st['iters']} iterations per rule (the paper: 2000 iterations of SGD at lr 1e-4 "
        f"with a firing-rate regulariser and random feedback; here symmetric feedback (`{st['feedback']}`), "
        "no regulariser, and a budget reduced to run on one CPU core). MSE: mean over the sequence of "
        "(y - y*)^2; normalised MSE: MSE / var(target).",
        "",
        _report.md_table(["rule", "iterations", "MSE at start", "final MSE", "final normalised MSE",
                          "rate (Hz) start → end", "s / iteration", "train s"], rows),
        "",
        "MSE during training:",
        "",
        _report.md_table(["iteration"] + [r["rule"] for r in res["results"]], curve_rows),
        "",
        f"Cosine of e-prop's estimate with BPTT's gradient at the initial parameters: overall "
        f"{cos['overall']:.4f} (W_in {cos['W_in']:.4f}, W_rec {cos['W_rec']:.4f}, W_out {cos['W_out']:.4f}).",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores (1 thread used; load average {res['loadavg']}), "
        f"torch {m['torch']}, {m['date']}. Whole run {res['wall_s']:.0f} s. Command: `{res['command']}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
