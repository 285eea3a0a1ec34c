"""``neuro bench cost``: time per step against the network size n for exact and approximate online
gradients, and the fitted scaling exponents.

Cases (batch 1, ``n_in`` inputs, one output, float32, one thread unless ``--threads``):

- ``rtrl``           exact RTRL on the rate RNN (closed-form fast path): O(n^2 p) = O(n^4) per step, p ~ n^2
- ``snap1``          SnAp-1 on the rate RNN (sparse path): O(p) = O(n^2) traces, plus O(n^2) for dl/dh
- ``bptt``           BPTT on the rate RNN over a window of T = ``--steps`` steps: (T forward steps + one
                     backward over the window) / T, O(n^2) = O(p) per step
- ``columnar``       columnar RTRL on the columnar network (LSTM columns): O(p) = O(n) per step
- ``rtrl-columnar``  exact (generic) RTRL on the same columnar network: the dense influence matrix
                     ignores the block structure, O(S^2 P) = O(n^3) per step

For each size: median over ``--repeats`` of (wall time of ``--steps`` steps) / steps, after warm-up
steps. The exponent ``a`` of ``time ~ n^a`` (and of ``time ~ p^a``) is the least-squares slope of
log(time) against log(n) (log(p)) over the larger sizes: the smallest ones are dominated by fixed
per-call overhead (Python, dispatch) and are excluded (listed in the report as ``excluded``).
``state numel`` counts the numbers held by the rule's state (network state, traces, influence
matrices; per field in ``state_fields``); for BPTT, plus the numbers the autograd graph of one window
saves (distinct tensors). ``init`` is the time of ``rule.init`` (not in the time per step): SnAp's
``init`` derives its pattern from dense one-step Jacobians, and the state keeps that pattern ``P``
[S, P] dense, so SnAp-1's state is O(n p) even on its sparse path (which bounds its default sizes).

Writes ``OUT/bench_cost.json`` and ``OUT/bench_cost.md`` atomically.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any, NamedTuple

import torch

from neuro.bench import _report

__all__ = ["CASES", "fit_exponent", "main", "measure", "state_numel"]


class Case(NamedTuple):
    rule: str
    model: str
    model_opts: dict[str, Any]
    rule_opts: dict[str, Any]
    sizes: tuple[int, ...]  # default sizes
    quick: tuple[int, ...]
    expect: str  # the expected exponent against n, in words


CASES: dict[str, Case] = {
    "rtrl": Case("rtrl", "rate", {}, {"fast": True, "max_bytes": 2 ** 33}, (8, 16, 32, 64, 128, 256),
                 (4, 8, 16), "n^4 (p^2)"),
    "snap1": Case("snap1", "rate", {}, {"sparse": True}, (16, 32, 64, 128, 256), (4, 8, 16), "n^2 (p)"),
    "bptt": Case("bptt", "rate", {}, {}, (64, 128, 256, 512, 1024, 2048, 4096), (4, 8, 16), "n^2 (p)"),
    "columnar": Case("columnar", "columnar", {"cell": "lstm"}, {}, (64, 256, 1024, 4096, 16384, 65536),
                     (4, 8, 16), "n (p)"),
    "rtrl-columnar": Case("rtrl", "columnar", {"cell": "lstm"}, {"max_bytes": 2 ** 33},
                          (8, 16, 32, 64, 128, 256), (4, 8, 16), "n^3 (p^3)"),
}


def state_numel(obj: Any) -> int:
    """Numbers held by the tensors of a (nested) state: NamedTuples, tuples, lists, dicts, tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(state_numel(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(state_numel(v) for v in obj)
    return 0


def _setup(case: Case, n: int, n_in: int, seed: int = 0):
    import models
    import neuro

    net = models.make(case.model, n_in=n_in, n_hidden=n, n_out=1, **case.model_opts)
    params = net.init_params(seed=seed, dtype=torch.float32)
    rule = neuro.rules.make(case.rule, net, **case.rule_opts)
    return net, params, rule


def measure(case: Case, n: int, *, steps: int, repeats: int, n_in: int = 4, warmup: int = 3) -> dict[str, Any]:
    """Time per step (seconds; median and every repeat), p, and the state's numel for one size."""
    net, params, rule = _setup(case, n, n_in)
    p = net.n_params(params)
    g = torch.Generator().manual_seed(n)
    xs = torch.randn(steps, 1, n_in, generator=g)
    ys = torch.randn(steps, 1, 1, generator=g)
    mask = torch.ones(1)
    is_bptt = case.rule == "bptt"

    def window(state):
        for t in range(steps):
            state = rule.step(params, state, xs[t], ys[t], mask).state
        if is_bptt:
            state, grad = rule.finish(params, state)
            assert grad is not None
        return state

    with torch.no_grad() if not is_bptt else torch.enable_grad():
        t0 = time.perf_counter()
        state = rule.init(params, 1, 0)
        init_seconds = time.perf_counter() - t0
        for t in range(min(warmup, steps)):  # warm-up: caches (FlatStep), allocator, dispatch
            state = rule.step(params, state, xs[t], ys[t], mask).state
        if is_bptt:
            state, _ = rule.finish(params, state)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state = window(state)
            times.append((time.perf_counter() - t0) / steps)

    numel = state_numel(state)
    fields = {f: state_numel(v) for f, v in state._asdict().items()} if hasattr(state, "_asdict") else {}
    graph_numel = None
    if is_bptt:  # the numbers saved by the graph of one window (distinct tensors)
        seen: dict[tuple[int, int], int] = {}

        def pack(t: torch.Tensor):
            seen[(t.untyped_storage().data_ptr(), t.numel())] = t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            s = state
            for t in range(steps):
                s = rule.step(params, s, xs[t], ys[t], mask).state
        graph_numel = sum(seen.values())
        rule.finish(params, s)
        numel += graph_numel
    summ = _report.summarize(times)
    return {"case": None, "n": n, "p": p, "seconds_per_step": summ["median"], "min": summ["min"], "max": summ["max"],
            "spread": summ["spread"], "repeats": times, "state_numel": numel, "state_fields": fields, "graph_numel": graph_numel,
            "init_seconds": init_seconds}


def _lstsq(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return a, my - a * mx


def fit_exponent(rows: list[dict[str, Any]], fit_min: int | None = None) -> dict[str, Any]:
    """Least-squares slopes of log(time) on log(n) and on log(p) over the sizes used for the fit.

    ``fit_min``: the smallest n used; by default the largest half of the sizes (at least 3, or all when
    fewer), the rest being the overhead-dominated ones (reported as ``excluded``). Also the local slope
    between consecutive sizes (against n)."""
    rows = sorted(rows, key=lambda r: r["n"])
    if fit_min is None:
        k = max(3, math.ceil(len(rows) / 2))
        used = rows[-k:] if len(rows) >= k else rows
    else:
        used = [r for r in rows if r["n"] >= fit_min]
    excluded = [r["n"] for r in rows if r not in used]
    local = [{"from": a["n"], "to": b["n"],
              "slope": math.log(b["seconds_per_step"] / a["seconds_per_step"]) / math.log(b["n"] / a["n"])}
             for a, b in zip(rows, rows[1:])]
    out: dict[str, Any] = {"used": [r["n"] for r in used], "excluded": excluded, "local_slopes": local,
                           "exponent_n": None, "exponent_p": None, "exponent_numel_n": None}
    if len(used) >= 2:
        ln = [math.log(r["n"]) for r in used]
        lt = [math.log(r["seconds_per_step"]) for r in used]
        out["exponent_n"], out["intercept_n"] = _lstsq(ln, lt)
        out["exponent_p"], _ = _lstsq([math.log(r["p"]) for r in used], lt)
        out["exponent_numel_n"], _ = _lstsq(ln, [math.log(r["state_numel"]) for r in used])
    return out


def _fmt_t(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _fmt_e(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {', '.join(CASES)}")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="n for every case (overrides the defaults)")
    for name in CASES:
        ap.add_argument(f"--{name}-sizes", dest=f"sizes_{name.replace('-', '_')}", type=int, nargs="*", default=None,
                        help=f"n for {name} (default {' '.join(map(str, CASES[name].sizes))})")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per measurement (BPTT's window T)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-in", type=int, default=4)
    ap.add_argument("--fit-min", type=int, default=None,
                    help="smallest n used in the fits (default: the largest half of each case's sizes, >= 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 3 steps, 1 repeat (a smoke test)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"--cases {' '.join(unknown)}: unknown; valid choices are {', '.join(CASES)}")
    if args.quick:
        args.steps, args.repeats = min(args.steps, 3), 1
    if args.steps < 1 or args.repeats < 1 or args.n_in < 1 or args.threads < 1:
        ap.error("--steps, --repeats, --n-in and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    sizes: dict[str, list[int]] = {}
    for name in args.cases:
        own = getattr(args, f"sizes_{name.replace('-', '_')}")
        s = own if own else (args.sizes if args.sizes else (CASES[name].quick if args.quick else CASES[name].sizes))
        if any(v < 1 for v in s):
            ap.error(f"sizes of {name} must be >= 1: {s}")
        sizes[name] = sorted(set(s))

    load_before = _report.loadavg()
    t_start = time.perf_counter()
    results: list[dict[str, Any]] = []
    fits: dict[str, Any] = {}
    for name in args.cases:
        case = CASES[name]
        rows = []
        for n in sizes[name]:
            r = measure(case, n, steps=args.steps, repeats=args.repeats, n_in=args.n_in)
            r["case"] = name
            rows.append(r)
            print(f"{name:>14} n={n:<5} p={r['p']:<8} {_fmt_t(r['seconds_per_step']):>10}/step "
                  f"(spread {r['spread']:.0%})  state numel {r['state_numel']}", flush=True)
        results.extend(rows)
        fits[name] = {"rule": case.rule, "model": case.model, "model_options": case.model_opts,
                      "rule_options": case.rule_opts, "expected": case.expect,
                      **fit_exponent(rows, args.fit_min)}

    cmd = "python -m neuro bench cost " + " ".join(sys.argv[1:] if argv is None else argv)
    header = ["case", "n", "p", "time/step (median)", "spread", "state numel", "by field", "init"]
    table = [[r["case"], r["n"], r["p"], _fmt_t(r["seconds_per_step"]), f"{r['spread']:.0%}", r["state_numel"],
              " ".join(f"{k}={v}" for k, v in r["state_fields"].items() if v)
              + (f" graph={r['graph_numel']}" if r["graph_numel"] is not None else ""), _fmt_t(r["init_seconds"])]
             for r in results]
    fhead = ["case", "expected", "exponent vs n", "exponent vs p", "state numel vs n", "fit sizes", "excluded",
             "local slopes vs n"]
    ftable = [[k, f["expected"], _fmt_e(f["exponent_n"]), _fmt_e(f["exponent_p"]), _fmt_e(f["exponent_numel_n"]),
               " ".join(map(str, f["used"])), " ".join(map(str, f["excluded"])) or "–",
               " ".join(f"{s['slope']:.2f}" for s in f["local_slopes"]) or "–"] for k, f in fits.items()]
    elapsed = time.perf_counter() - t_start
    md = (f"# neuro bench cost\n\nTime per step against n (batch 1, n_in={args.n_in}, n_out=1, float32, "
          f"{args.threads} thread(s)); median of {args.repeats} repeats of {args.steps} steps "
          f"(BPTT: {args.steps} forward steps + one backward over the window, divided by {args.steps}). "
          "Exponent = least-squares slope of log(time) on log(n) (log(p)) over the fit sizes; the excluded "
          "(smallest) sizes are dominated by fixed per-step overhead. State numel: numbers held by the rule "
          "state (BPTT: plus the tensors its graph saves over one window).\n\n"
          "## Fitted exponents\n\n" + _report.md_table(fhead, ftable) + "\n\n## Measurements\n\n"
          + _report.md_table(header, table) + f"\n\nLoad average before: {load_before}, after: "
          f"{_report.loadavg()}; {elapsed:.0f} s in all.\n\nReproduce: `{cmd}`\n")
    _report.write_json(f"{args.out}/bench_cost.json",
                       {"benchmark": "cost", "machine": _report.machine_info(torch.get_num_threads()),
                        "settings": {"steps": args.steps, "repeats": args.repeats, "n_in": args.n_in,
                                     "threads": args.threads, "quick": args.quick, "fit_min": args.fit_min,
                                     "sizes": sizes},
                        "loadavg": {"before": load_before, "after": _report.loadavg()},
                        "results": results, "fits": fits, "seconds": elapsed, "command": cmd})
    _report.write_atomic(f"{args.out}/bench_cost.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
