"""The trace-patterning reproduction of Javed, Shah, Sutton & White (2023), "Scalable real-time recurrent
learning using columnar-constructive networks", JMLR 24: columnar, CCN and constructive networks (exact
RTRL) against T-BPTT on a dense LSTM at matched compute, all learning the value prediction by TD(lambda).

``python -m neuro.ccn_repro --config configs/ccn_trace_patterning.toml --out runs/ccn [--jobs 2] [--json F]``

Each method of the config (``[methods.X]``: ``model``, ``hidden``, ``model_options``, ``inner`` (the rule
under ``td-lambda``), ``k`` (T-BPTT's truncation), ``schedule`` (:mod:`neuro.staged`)) is trained, seed by
seed, by :func:`neuro.compare` with the rule ``td-lambda`` (its options from ``[td]``), each (method, seed)
into its own ``OUT/<method>/seed-<s>`` (so an interrupted reproduction resumes; ``--jobs`` of them at once).
A T-BPTT method without ``hidden`` gets the largest LSTM with ``params x (k + 1) <= budget``, the budget
being the learnable parameter count of the method named by ``budget_from``.

The score is the paper's: the squared return error ``(v_t - G_t)^2`` (twice the task's ``mse`` loss, which
``td-lambda`` with ``cumulant_input`` reports against the return target), averaged over the last 100k
steps of each run, or over the last 20% when runs are shorter than 500k steps; mean and standard error
across seeds, and the same minus the error of predicting ``v = 0`` on the same stream (paired: every
method of a seed sees the same stream). The table is printed, and written with the rows to ``--json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import sys
from pathlib import Path
from typing import Any

__all__ = ["learnable_params", "lstm_hidden_for", "main", "score"]

_SHARED = ("task", "seeds", "steps", "optimizer", "lr", "chunk", "log_every", "align_every", "eval_steps", "dtype")


def learnable_params(model: str, n_in: int, hidden: int, n_out: int, model_options: dict | None = None) -> int:
    """Parameters that can learn (a constructive network's masked-out feed-forward entries excluded)."""
    import models

    net = models.make(model, n_in=n_in, n_hidden=hidden, n_out=n_out, **(model_options or {}))
    n = sum(math.prod(s) for s in net.param_shapes().values())
    if model == "constructive":
        n -= net.n_gates * int((1 - net.ff_mask()).sum())
    return n


def lstm_hidden_for(budget: int, k: int, n_in: int, n_out: int) -> int:
    """The largest dense-LSTM hidden size with ``params x (k + 1) <= budget`` (at least 1)."""
    h = 1
    while learnable_params("lstm", n_in, h + 1, n_out) * (k + 1) <= budget:
        h += 1
    return h


def _methods(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import neuro.tasks

    task = neuro.tasks.make(cfg["task"], **cfg.get("task_options", {}))
    methods = {name: dict(m) for name, m in cfg["methods"].items()}
    budget = None
    if cfg.get("budget_from"):
        b = methods[cfg["budget_from"]]
        budget = learnable_params(b["model"], task.n_in, b["hidden"], task.n_out, b.get("model_options"))
    for m in methods.values():
        if "hidden" not in m:
            if m.get("inner") != "tbptt" or budget is None:
                raise ValueError(f"method {m} has no hidden size (only T-BPTT methods get one from the budget)")
            m["hidden"] = lstm_hidden_for(budget, m["k"], task.n_in, task.n_out)
        m["params"] = learnable_params(m["model"], task.n_in, m["hidden"], task.n_out, m.get("model_options"))
        m["compute"] = m["params"] * (m["k"] + 1) if m.get("inner") == "tbptt" else m["params"]
    return methods


def _run(cfg: dict[str, Any], name: str, m: dict[str, Any], seed: int, out: Path) -> Path:
    from neuro.comparison import compare

    td = dict(cfg.get("td", {}), rule=m["inner"])
    if m["inner"] == "tbptt":
        td["rule_options"] = {"k": m["k"]}
    settings = {k: cfg[k] for k in _SHARED if k in cfg and k not in ("task", "seeds")}
    d = out / name / f"seed-{seed}"
    compare(cfg["task"], ["td-lambda"], seeds=[seed], model=m["model"], hidden=m["hidden"],
            model_options=m.get("model_options", {}), rule_options={"td-lambda": td},
            schedule=m.get("schedule"), task_options=cfg.get("task_options", {}), workers=1, out=d,
            progress=False, **settings)
    return d / "runs" / "td-lambda" / f"seed-{seed}.json"


def score(result: dict[str, Any], steps: int) -> tuple[float, int]:
    """``(mean (v - G)^2 over the scored tail, tail length)`` from a run's curve (whole metric rows)."""
    tail = 100_000 if steps >= 500_000 else steps // 5
    curve = result["curve"]
    total, n = 0.0, 0
    for i in range(len(curve) - 1, -1, -1):
        if n >= tail:
            break
        start = curve[i - 1]["step"] if i > 0 else 0
        total += curve[i]["loss"] * (curve[i]["step"] - start)
        n += curve[i]["step"] - start
    return 2.0 * total / n, n


def _returns(cfg: dict[str, Any], seed: int):
    """The return targets ``G_t`` [steps] of seed ``seed``'s stream (as ``neuro.train`` draws it)."""
    import torch

    import neuro.tasks
    from neuro.training import derive_seed

    task = neuro.tasks.make(cfg["task"], **cfg.get("task_options", {}))
    steps, chunk = cfg["steps"], cfg["chunk"]
    it = task.stream(seed=derive_seed(seed, "task"), batch=1, chunk=chunk)
    return torch.cat([next(it).ys[:, 0, 0] for _ in range(-(-steps // chunk))])[:steps].double()


def zero_baseline(cfg: dict[str, Any], seed: int) -> float:
    """``G_t^2`` averaged over the scored tail of seed ``seed``'s stream: the error of predicting ``v = 0``."""
    steps = cfg["steps"]
    tail = 100_000 if steps >= 500_000 else steps // 5
    return float((_returns(cfg, seed)[steps - tail:] ** 2).mean())


def plot(cfg: dict[str, Any], methods: list[str], seeds: list[int], out: Path, path: str, window: int = 5) -> None:
    """Error minus ``v = 0``'s on the same steps (paired), per metrics row, mean over seeds, smoothed over
    ``window`` rows, against the step: one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    g2 = {s: _returns(cfg, s) ** 2 for s in seeds}
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in methods:
        curves = []
        for s in seeds:
            r = json.loads((out / name / f"seed-{s}" / "runs" / "td-lambda" / f"seed-{s}.json").read_text())
            if r.get("diverged"):
                continue
            steps = [row["step"] for row in r["curve"]]
            starts = [0] + steps[:-1]
            curves.append(torch.tensor([2 * row["loss"] - float(g2[s][a:b].mean())
                                        for row, a, b in zip(r["curve"], starts, steps)]))
        c = torch.stack(curves).mean(0)
        k = torch.ones(window) / window
        sm = torch.nn.functional.conv1d(c[None, None], k[None, None]).flatten()
        ax.plot(steps[window - 1:], sm.tolist(), label=name)
    ax.axhline(0.0, color="k", lw=0.8, ls="--", label="v = 0")
    ax.set_xlabel("step")
    ax.set_ylabel("(v - G)^2 minus v=0's (paired)")
    ax.set_title(f"trace patterning, TD(lambda); mean of {len(seeds)} seeds, {window}-row moving average")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    import tomllib

    ap = argparse.ArgumentParser(prog="python -m neuro.ccn_repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    ap.add_argument("--json", default=None, help="write the rows (and the config) here as JSON")
    ap.add_argument("--plot", default=None, help="draw the paired error curves into this PNG")
    ap.add_argument("--only", default=None, help="comma-separated methods to run (default all)")
    args = ap.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    methods = _methods(cfg)
    chosen = list(methods) if not args.only else [s.strip() for s in args.only.split(",")]
    seeds = list(range(cfg["seeds"])) if isinstance(cfg["seeds"], int) else list(cfg["seeds"])
    out = Path(args.out)
    jobs = [(name, s) for s in seeds for name in chosen]
    paths: dict[tuple[str, int], Path] = {}
    ctx = multiprocessing.get_context("spawn")  # one process per run (matplotlib's plots are not thread-safe)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = {pool.submit(_run, cfg, name, methods[name], s, out): (name, s) for name, s in jobs}
        for f in concurrent.futures.as_completed(futs):
            paths[futs[f]] = f.result()
            print(f"done {futs[f]}", flush=True)
    base = {s: zero_baseline(cfg, s) for s in seeds}

    def mean_se(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs) if xs else math.nan
        se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan
        return m, se

    rows = []
    for name in chosen:
        errs, diffs, ms, div = [], [], [], 0
        for s in seeds:
            r = json.loads(paths[(name, s)].read_text())
            if r.get("diverged"):
                div += 1
                continue
            e, tail = score(r, cfg["steps"])
            errs.append(e)
            diffs.append(e - base[s])  # paired: every method sees the same stream for a seed
            ms.append(r["time_per_step_s"] * 1e3)
        mean, se = mean_se(errs)
        dm, dse = mean_se(diffs)
        m = methods[name]
        rows.append({"method": name, "model": m["model"], "hidden": m["hidden"], "inner": m["inner"],
                     "k": m.get("k"), "schedule": m.get("schedule"), "params": m["params"], "compute": m["compute"],
                     "error_mean": mean, "error_se": se, "per_seed": errs, "minus_zero_mean": dm, "minus_zero_se": dse, "diverged": div, "seeds": len(seeds),
                     "tail_steps": tail, "ms_per_step": sum(ms) / len(ms) if ms else math.nan})
    bm, bse = mean_se(list(base.values()))
    rows.append({"method": "v = 0 (no learning)", "model": "-", "hidden": 0, "inner": None, "k": None, "schedule": None,
                 "params": 0, "compute": 0, "error_mean": bm, "error_se": bse, "per_seed": list(base.values()),
                 "minus_zero_mean": 0.0, "minus_zero_se": 0.0, "diverged": 0,
                 "seeds": len(seeds), "tail_steps": tail, "ms_per_step": math.nan})
    lines = ["| method | network | params | compute / step (params x (k+1)) | (v - G)^2, mean ± s.e. "
             "| minus v = 0's, paired, mean ± s.e. | ms/step | diverged |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["error_mean"]):
        net = "-" if not r["hidden"] else f"{r['model']} {r['hidden']}" + (
            f", {r['schedule']}" if r["schedule"] else "") + (f", T-BPTT k={r['k']}" if r["k"] else "")
        lines.append(f"| {r['method']} | {net} | {r['params']} | {r['compute']} | {r['error_mean']:.5f} ± {r['error_se']:.5f} "
                     f"| {r['minus_zero_mean']:+.5f} ± {r['minus_zero_se']:.5f} | {r['ms_per_step']:.2f} "
                     f"| {r['diverged']}/{r['seeds']} |")
    table = "\n".join(lines)
    print(table)
    if args.plot:
        plot(cfg, chosen, seeds, out, args.plot)
    if args.json:
        from neuro import io
        from neuro.comparison.harness import _json_roundtrip  # NaN (one seed: no s.e.) -> null

        io.write_json(args.json, _json_roundtrip({"config": cfg, "rows": rows, "table": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
