"""``python -m neuro.ccn_repro``: run a reproduction's config (pilot, then main runs), resumably, and report it."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from . import config as C
from . import report as R
from . import runs as X

__all__ = ["main"]


def reproduction_parser(prog: str, doc: str | None, groups: str, estimate: str, curves: str) -> argparse.ArgumentParser:
    """The options every reproduction driver takes (``groups``, ``estimate``, ``curves``: what ``--only``,
    ``--estimate`` and ``--plot`` mean for it)."""
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the experiment's TOML config")
    ap.add_argument("--out", required=True, help="the runs' directory (a reproduction resumes from it)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process (0: in this one)")
    ap.add_argument("--only", default=None, help=f"comma-separated {groups} (default all)")
    ap.add_argument("--partial", action="store_true", help="run nothing: report the runs finished so far")
    ap.add_argument("--estimate", action="store_true", help=f"run nothing: {estimate}")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--md", default=None, help="write the results' markdown tables here")
    ap.add_argument("--plot", default=None, help=f"draw {curves} into this PNG")
    return ap


def _parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    ap = reproduction_parser("python -m neuro.ccn_repro", doc, "methods",
                             "time each method and print the config's projected core-hours",
                             "the error curves (mean ± s.e. per method)")
    ap.add_argument("--stage", default="all", choices=("pilot", "main", "all"), help="which runs to run")
    ap.add_argument("--games", default=None, help="comma-separated games of the config's games (default all)")
    ap.add_argument("--estimate-steps", type=int, default=20_000, help="steps timed per method (default 20000)")
    return ap


def _subset(what: str, given: str | None, valid: list[str]) -> list[str]:
    if given is None:
        return valid
    names = [s.strip() for s in given.split(",") if s.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(f"--{what} {bad[0] if bad else given!r} is not in the config: valid are {', '.join(valid)}")
    return names


def _setup(cfg: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, dict[str, Any], dict[str, dict]]]:
    """``(label, task_options, methods)`` per chosen experiment, every method checked."""
    import neuro.tasks

    exps = C.experiments(cfg)
    if args.games is not None and not cfg.get("games"):
        raise ValueError(f"--games {args.games!r} is invalid: the config has no games")
    labels = _subset("games", args.games, [lbl for lbl, _ in exps]) if cfg.get("games") else [""]
    out = []
    for label, opts in exps:
        if label not in labels:
            continue
        task = neuro.tasks.make(cfg["task"], **C.task_options(opts))
        ms = C.methods(cfg, task.n_in, task.n_out)
        names = _subset("only", args.only, list(ms))
        out.append((label, opts, {n: ms[n] for n in names}))
    for name, m in out[0][2].items():
        if len(m["lrs"]) > 1 and not cfg.get("pilot"):
            raise ValueError(f"methods.{name} has lrs={m['lrs']} but the config has no [pilot] to choose one: "
                             "add [pilot] (steps, seeds) or give one lr")
    return out


def _pilot(cfg, exps, out: Path, run: bool, workers: int) -> dict[tuple[str, str], dict[float, dict[int, Any]]]:
    """Pilot results ``{(label, method): {lr: {seed: result}}}`` (finished ones only; the rest run if ``run``)."""
    p = cfg.get("pilot")
    if not p:
        return {}
    jobs = [((label, name, lr, s), X.run_spec(cfg, opts, m, lr, s, p["steps"]),
             X.run_file(out, label, "pilot", name, lr, s))
            for label, opts, ms in exps for name, m in ms.items() for lr in m["lrs"] for s in p["seeds"]]
    done = X.run_all(jobs, workers) if run else X.pending(jobs)[1]
    res: dict = {}
    for (label, name, lr, s), r in done.items():
        res.setdefault((label, name), {}).setdefault(lr, {})[s] = r
    return res


def _choices(cfg, exps, pilot, partial: bool) -> tuple[dict, dict]:
    """The learning rate per (label, method) (None: not known yet) and the pilot's summary per experiment."""
    lrs, info = {}, {}
    p = cfg.get("pilot")
    for label, _, ms in exps:
        e: dict[str, Any] = {"methods": {}, "best_tbptt": None, "complete": True}
        for name, m in ms.items():
            got = pilot.get((label, name), {})
            tail = R.tail_for(p["steps"], cfg["score_tail"]) if p else None
            scores = {lr: [None if math.isnan(v := R.score(r, tail)[0]) else v for r in got[lr].values()]
                      for lr in got}
            complete = p is not None and all(len(got.get(lr, {})) == len(p["seeds"]) for lr in m["lrs"])
            e["complete"] &= complete or not p
            if len(m["lrs"]) == 1:
                chosen = m["lrs"][0]
            elif complete or (partial and scores):
                chosen = X.choose_lr(scores)
            elif partial:
                chosen = None
            else:
                raise ValueError(f"the pilot of methods.{name}{' (' + label + ')' if label else ''} is not finished "
                                 "(run --stage pilot, or all), so its learning rate is not chosen yet")
            lrs[(label, name)] = chosen
            e["methods"][name] = {"lr": chosen, "complete": complete, "scores": {
                f"{lr:g}": {"mean": R.mean_se([x for x in xs if x is not None])[0], "per_seed": xs,
                            "diverged": sum(x is None for x in xs)} for lr, xs in scores.items()}}
        at_chosen = {n: e["methods"][n]["scores"].get(f"{lrs[(label, n)]:g}", {}).get("mean", math.nan)
                     for n, m in ms.items() if m["inner"] == "tbptt" and lrs[(label, n)] is not None}
        tb = [(v, n) for n, v in at_chosen.items() if math.isfinite(v)]  # the pilot's mean at the chosen alpha
        e["best_tbptt"] = min(tb)[1] if tb else None
        info[label] = e
    return lrs, info


def _estimate(cfg, exps, steps: int) -> int:
    label, opts, ms = exps[0]
    p = cfg.get("pilot")
    lines = ["| method | engine | us / step | s / run | pilot steps | main steps | core-hours |",
             "|---|---|---|---|---|---|---|"]
    total = 0.0
    for name, m in ms.items():
        n = steps
        if m.get("schedule"):  # every stage at least one chunk
            total_cols, per = (int(v) for v in str(m["schedule"]).split(":")[:2])
            n = max(n, total_cols // per * cfg["chunk"])
        X.run_one(X.run_spec(cfg, opts, m, m["lrs"][0], m["seeds"][0], n))  # compiles (or loads) the kernels
        # n and 2n steps: the time per step from their difference, the rest is the run's own setup
        r1, r2 = (X.run_one(X.run_spec(cfg, opts, m, m["lrs"][0], m["seeds"][0], k)) for k in (n, 2 * n))
        e1, e2 = ((r["time_per_step_s"] or math.nan) * k for r, k in ((r1, n), (r2, 2 * n)))
        t = (e2 - e1) / n if e2 > e1 else e2 / (2 * n)
        setup = max(0.0, e1 - t * n)
        pilot_runs = len(m["lrs"]) * len(p["seeds"]) if p else 0
        pilot_steps, main_steps = pilot_runs * p["steps"] if p else 0, len(m["seeds"]) * m["steps"]
        h = (t * (pilot_steps + main_steps) + setup * (pilot_runs + len(m["seeds"]))) * len(exps) / 3600
        total += h
        lines.append(f"| {name} | {r2['engine']} | {t * 1e6:.1f} | {setup:.2f} | {pilot_steps} | {main_steps} "
                     f"| {h:.1f} |")
    lines.append(f"| all ({len(exps)} experiment{'s' if len(exps) > 1 else ''}) | | | | | | {total:.1f} |")
    print("\n".join(lines))
    return 0


class _Zero:
    """The ``v = 0`` errors of a config's streams, kept in ``OUT/zero-baseline.json`` once computed."""

    def __init__(self, cfg: dict[str, Any], out: Path) -> None:
        from neuro import io

        self.cfg, self.path = cfg, out / "zero-baseline.json"
        self.cache = io.read_json(self.path) if self.path.is_file() else {}
        self.dirty = False

    def __call__(self, opts: dict[str, Any], seed: int, start: int, end: int) -> float:
        import json

        key = json.dumps([self.cfg["task"], opts, seed, self.cfg["chunk"], start, end], sort_keys=True)
        if key not in self.cache:
            self.cache[key] = X.zero_baseline(self.cfg["task"], opts, seed, self.cfg["chunk"], start, end)
            self.dirty = True
        return self.cache[key]

    def rows(self, opts: dict[str, Any], seed: int, ends: list[int]) -> dict[int, float]:
        """``{row's last step: v = 0's error over the row}`` for metric rows ending at ``ends``."""
        import json

        key = json.dumps([self.cfg["task"], opts, seed, self.cfg["chunk"], "rows", ends], sort_keys=True)
        if key not in self.cache:
            self.cache[key] = X.zero_rows(self.cfg["task"], opts, seed, self.cfg["chunk"], ends)
            self.dirty = True
        return dict(zip(ends, self.cache[key]))

    def save(self) -> None:
        from neuro import io

        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            io.write_json(self.path, self.cache)


def _row(cfg, m, name, lr, runs, zero, opts) -> dict[str, Any]:
    tail = R.tail_for(m["steps"], cfg["score_tail"])
    ok = {s: r for s, r in runs.items() if r["diverged"] is None}
    sc = {s: R.score(r, tail) for s, r in ok.items()}
    mean, se = R.mean_se([e for e, _ in sc.values()])
    ms_step = [r["time_per_step_s"] * 1e3 for r in ok.values() if r["time_per_step_s"]]
    row = {"method": name, "network": R._net({**m, "schedule": C.stage_schedule(m, m["steps"], cfg["chunk"])}),
           "model": m["model"], "hidden": m["hidden"], "inner": m["inner"], "k": m.get("k"), "params": m["params"],
           "compute": m["compute"], "lr": lr, "steps": m["steps"], "tail_steps": tail, "score_mean": mean,
           "score_se": se, "per_seed": {s: e for s, (e, _) in sc.items()}, "seeds_done": len(runs),
           "seeds_planned": len(m["seeds"]), "diverged": len(runs) - len(ok),
           "ms_per_step": sum(ms_step) / len(ms_step) if ms_step else math.nan}
    if zero is not None:  # paired: the same steps of the same stream
        d = [e - zero(opts, s, m["steps"] - n, m["steps"]) for s, (e, n) in sc.items()]
        row["minus_zero_mean"], row["minus_zero_se"] = R.mean_se(d)
    return row


def _results(cfg, exps, lrs, info, out: Path, run: bool, workers: int) -> dict[str, Any]:
    jobs = [((label, name, s), X.run_spec(cfg, opts, m, lrs[(label, name)], s, m["steps"]),
             X.run_file(out, label, "main", name, lrs[(label, name)], s))
            for label, opts, ms in exps for name, m in ms.items() if lrs[(label, name)] is not None
            for s in m["seeds"]]
    jobs.sort(key=lambda j: j[0][2])  # seed by seed: the runs finished at any moment cover every method alike
    done = X.run_all(jobs, workers) if run else X.pending(jobs)[1]
    zero = _Zero(cfg, out) if cfg.get("zero_baseline") else None
    res: dict[str, Any] = {}
    for label, opts, ms in exps:
        runs = {n: {s: r for (lbl, name, s), r in done.items() if lbl == label and name == n} for n in ms}
        rows = [_row(cfg, m, n, lrs[(label, n)], runs[n], zero, opts) for n, m in ms.items()]
        if zero is not None:
            steps, tail = cfg["steps"], R.tail_for(cfg["steps"], cfg["score_tail"])
            mean, se = R.mean_se([zero(opts, s, steps - tail, steps) for s in cfg["seeds"]])
            rows.append({"method": R.ZERO, "network": "-", "params": 0, "compute": 0, "lr": None,
                         "steps": steps, "tail_steps": tail, "score_mean": mean, "score_se": se,
                         "seeds_done": len(cfg["seeds"]), "seeds_planned": len(cfg["seeds"]), "diverged": 0,
                         "minus_zero_mean": 0.0, "minus_zero_se": 0.0})
        best = info[label]["best_tbptt"] if info else None
        pairs = []
        for a, ma in ms.items():
            if ma["inner"] == "tbptt":
                continue
            for b, mb in ms.items():
                if mb["inner"] == "tbptt":
                    pairs.append({"a": a, "b": b, "best": b == best, **R.paired(runs[a], runs[b], cfg["score_tail"])})
        res[label] = {"rows": rows, "paired": pairs, "best_tbptt": best, "runs": runs, "opts": opts}
    if zero is not None:
        zero.save()
    return res, zero


def _run(args: argparse.Namespace) -> int:
    from neuro import io
    from neuro.comparison.harness import _json_roundtrip

    cfg = C.load(args.config)
    exps = _setup(cfg, args)
    if args.estimate:
        return _estimate(cfg, exps, args.estimate_steps)
    if args.jobs < 0:
        raise ValueError(f"--jobs {args.jobs} is invalid: must be >= 0 (0: the runs in this process)")
    out = Path(args.out)
    pilot = _pilot(cfg, exps, out, not args.partial and args.stage != "main", args.jobs)
    lrs, info = _choices(cfg, exps, pilot, args.partial or args.stage == "pilot")
    if cfg.get("pilot") and not args.partial:
        io.write_json(out / "pilot.json", _json_roundtrip(info))
    for label, e in info.items():
        for name, v in e["methods"].items():
            print(f"{label + ' ' if label else ''}{name}: alpha {'-' if v['lr'] is None else format(v['lr'], 'g')}"
                  f"{'' if v['complete'] or not cfg.get('pilot') else ' (pilot not finished)'}")
    if args.stage == "pilot":
        return 0
    res, zero = _results(cfg, exps, lrs, info, out, not args.partial, args.jobs)
    md = [R.tables(label, r["rows"], r["paired"], r["best_tbptt"]) for label, r in res.items()]
    if len(res) > 1:
        md.append("### Across games\n\n" + R.summary({label: r["rows"] for label, r in res.items()}))
    text = "\n\n".join(md) + "\n"
    print(text)
    if args.md:
        io.write_text(args.md, text)
    if args.json:
        io.write_json(args.json, _json_roundtrip({"config": cfg, "pilot": info, "experiments": {
            label: {k: v for k, v in r.items() if k not in ("runs", "opts")} for label, r in res.items()}}))
    if args.plot:
        zrows = None
        if zero is not None:  # v = 0's error over each metric row of the longest run of each seed
            zrows = {}
            for label, r in res.items():
                longest: dict[int, list[int]] = {}
                for runs in r["runs"].values():
                    for s, run in runs.items():
                        ends = [row["step"] for row in run["curve"]]
                        if len(ends) > len(longest.get(s, [])):
                            longest[s] = ends
                zrows[label] = {s: zero.rows(r["opts"], s, ends) for s, ends in longest.items()}
            zero.save()
        R.plot({label: r["runs"] for label, r in res.items()}, args.plot, cfg["task"], zrows,
               window=cfg.get("score_tail", 0))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
