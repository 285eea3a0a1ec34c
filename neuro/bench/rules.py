"""``neuro bench rules``: time per step of each online rule against the forward step of the same network.

The goal: the O(p) online rules (rflo, eprop, ottt, sltt, uoro, np, anp-time, columnar)
at most 3x the forward step of the same network at N = 1024. For each rule, on its model (``lif`` for
the spiking rules, ``rate`` for the others, ``columnar`` for columnar RTRL; ``--n`` units, batch 1,
float32, ``--threads`` threads): the mean time of ``rule.step`` over ``--steps`` steps (after a
warm-up, parameters frozen, inputs from a pool; a mean, so that the steps where a rule computes a window
of held-back outer products in bulk count in full) plus the time of ``finish`` spread over the sequence
(BPTT's backward pass), against the mean time of a bare
``net.step`` under ``no_grad`` on the same inputs, in ``--repeats`` alternating blocks (forward, rule,
forward, ...); the figure of the goal is the median of the blocks' ratios, with their range. The spiking
network is driven to fire (``input_scale``) and its rate is reported. Writes ``OUT/bench_rules.json`` and
``OUT/bench_rules.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from pathlib import Path
from typing import Any

import torch

from . import _report

__all__ = ["CASES", "main"]

#: rule -> (model, rule options)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "rflo": ("rate", {}), "eprop": ("lif", {}), "ottt": ("lif", {}), "sltt": ("lif", {}),
    "three-factor": ("lif", {}), "uoro": ("rate", {}), "np": ("rate", {}), "anp-time": ("rate", {}),
    "columnar": ("columnar", {}), "bptt": ("rate", {}), "bptt-lif": ("lif", {}),
}
N_IN, N_OUT = 16, 2
#: steps run before each timed block of a rule (two windows of the default 64, and a few)
WARM_UP = 131


def _net(model: str, n: int):
    import models

    if model == "lif":
        return models.make("lif", n_in=N_IN, n_hidden=n, n_out=N_OUT, input_scale=8.0)
    return models.make(model, n_in=N_IN, n_hidden=n, n_out=N_OUT)


def _time(fn, steps: int, device: str = "cpu") -> float:
    """Mean seconds per call over ``steps`` calls (the whole loop timed once, after a full garbage collection,
    as ``timeit`` does, so a collection deferred from the imports does not land on one rule's loop; on a GPU
    the queued work is waited for before and after)."""
    gc.collect()
    _report.sync(device)
    t0 = time.perf_counter()
    for t in range(steps):
        fn(t)
    _report.sync(device)
    return (time.perf_counter() - t0) / steps


def measure(rule_name: str, n: int, steps: int, repeats: int = 3, device: str = "cpu") -> dict[str, Any]:
    from neuro import rules

    model, opts = CASES[rule_name]
    name = "bptt" if rule_name.startswith("bptt") else rule_name
    net = _net(model, n)
    params = {k: v.to(device) for k, v in net.init_params(seed=0).items()}
    g = torch.Generator().manual_seed(0)
    pool = 64
    if net.spiking:
        xs = (torch.rand(pool, 1, N_IN, generator=g) < 0.2).float()
    else:
        xs = torch.randn(pool, 1, N_IN, generator=g)
    ys = torch.randn(pool, 1, N_OUT, generator=g)
    xs, ys, mask = xs.to(device), ys.to(device), torch.ones(1, dtype=torch.bool, device=device)

    state = net.init_state(params, 1)
    spikes = []  # summed on the device (no transfer per step)

    def fwd(t):
        nonlocal state
        with torch.no_grad():
            state, _ = net.step(params, state, xs[t % pool])
            if net.spiking:
                spikes.append(state.z.mean())

    rule = rules.make(name, net, **opts)

    def step(t):
        nonlocal rstate
        out = rule.step(params, rstate, xs[t % pool], ys[t % pool], mask)
        rstate = out.state

    for t in range(5):
        fwd(t)
    spikes.clear()
    timed = functools.partial(_time, device=device)
    reps = []
    for _ in range(repeats):  # forward and rule blocks alternate, so a change of load hits both
        t_fwd = timed(fwd, steps)
        rstate = rule.init(params, 1, 0)
        for t in range(WARM_UP):  # two windows of the windowed rules: their kernels are compiled or loaded
            step(t)
        t_rule = timed(step, steps)
        t0 = time.perf_counter()
        rule.finish(params, rstate)
        _report.sync(device)
        t_finish = time.perf_counter() - t0
        per_step = t_rule + t_finish / (steps + WARM_UP)  # BPTT's backward pass is in finish: over the sequence
        reps.append((per_step / t_fwd, t_fwd, per_step, t_rule, t_finish))
    reps.sort()
    ratio, t_fwd, per_step, t_rule, t_finish = reps[len(reps) // 2]  # the repeat with the median ratio
    return {"rule": name, "model": model, "n": n, "steps": steps, "repeats": repeats, "forward_ms": 1e3 * t_fwd,
            "rule_ms": 1e3 * per_step, "step_ms": 1e3 * t_rule, "finish_ms": 1e3 * t_finish, "ratio": ratio,
            "ratio_range": [reps[0][0], reps[-1][0]],
            "rate_per_step": float(torch.stack(spikes).mean()) if spikes else None, "n_params": net.n_params(params),
            "device": str(device)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench rules", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="*", default=list(CASES), help=f"subset of {', '.join(CASES)}")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="alternating forward / rule blocks; the median ratio")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device (cuda: a GPU; skipped with a note where none)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true", help="n = 32, 5 steps (a smoke test)")
    args = ap.parse_args(argv)
    bad = sorted(set(args.rules) - set(CASES))
    if bad:
        ap.error(f"--rules {' '.join(bad)}: unknown; valid choices are {', '.join(CASES)}")
    if args.quick:
        args.n, args.steps, args.repeats = 32, 5, 1
    if args.n < 1 or args.steps < 1 or args.threads < 1 or args.repeats < 1:
        ap.error("--n, --steps, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        skipped = _report.device_missing(args.device)
    except ValueError as e:
        ap.error(str(e))
    if skipped:
        return _report.report_skipped("bench_rules", skipped)
    load = _report.loadavg()
    rows = []
    for r in args.rules:
        try:
            rows.append(measure(r, args.n, args.steps, args.repeats, args.device))
        except Exception as e:  # one rule failing (e.g. out of memory at a large n) is reported, not fatal
            rows.append({"rule": r, "model": CASES[r][0], "n": args.n, "error": f"{type(e).__name__}: {e}"})
        print(rows[-1], flush=True)
    report = {"machine": _report.machine_info(args.threads), "loadavg_before": load,
              "loadavg_after": _report.loadavg(), "settings": vars(args), "rows": rows}
    out = Path(args.out)
    _report.write_json(out / "bench_rules.json", report)
    table = _report.md_table(
        ["rule", "model", "n", "params", "forward ms/step", "rule ms/step", "rule / forward (median, min-max)", "goal (<= 3x)",
         "spikes/neuron/step"],
        [[r["rule"], r["model"], r["n"], r.get("n_params", "–"), f"{r['forward_ms']:.3f}" if "forward_ms" in r else "–",
          f"{r['rule_ms']:.3f}" if "rule_ms" in r else r.get("error", "–"),
          f"{r['ratio']:.1f}x ({r['ratio_range'][0]:.1f}-{r['ratio_range'][1]:.1f})" if "ratio" in r else "–",
          ("met" if r["ratio"] <= 3 else "not met") if "ratio" in r else "–",
          f"{r['rate_per_step']:.3f}" if r.get("rate_per_step") is not None else "–"] for r in rows])
    text = (f"# neuro bench rules\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{table}\n\n"
            f"Machine: {report['machine']['cpu_model']}{_report.device_name(args.device)}, {args.threads} thread(s), load average before/after "
            f"{load}/{report['loadavg_after']}; torch {report['machine']['torch']}. Means over blocks of {args.steps} steps; {args.repeats} alternating forward / rule blocks per rule, the median ratio (and its block's times) shown.\n")
    _report.write_atomic(out / "bench_rules.md", text)
    print(table)
    return 0
