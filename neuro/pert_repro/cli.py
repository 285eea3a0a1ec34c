"""``python -m neuro.pert_repro``: run (or resume) a perturbation-learning reproduction and report it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from . import config as C
from . import report as R
from . import runs as RU

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from neuro.ccn_repro.cli import reproduction_parser

    from . import __doc__ as doc

    return reproduction_parser("python -m neuro.pert_repro", doc, "run groups, e.g. anp-time,bptt+decor",
                               "time one epoch of each run group and print the config's projected core-hours",
                               "the learning curves (mean ± s.e.)")


def _jobs(cfg: dict[str, Any], out: Path, only: str | None) -> list[tuple[Any, dict[str, Any], Path]]:
    specs = C.runs(cfg)
    labels = list(dict.fromkeys(C.label(s["method"], s["decorrelation"]) for s in specs))
    chosen = labels
    if only is not None:
        chosen = [x.strip() for x in only.split(",") if x.strip()]
        bad = [x for x in chosen if x not in labels]
        if bad or not chosen:
            raise ValueError(f"--only {bad[0] if bad else only!r} is not a run group of the config: valid are "
                             f"{', '.join(labels)}")
    return [((C.label(s["method"], s["decorrelation"]), s["seed"]), s, RU.run_file(out, s)) for s in specs
            if C.label(s["method"], s["decorrelation"]) in chosen]


def _estimate(cfg: dict[str, Any], jobs: list) -> int:
    seen: dict[str, dict] = {}
    for (lbl, _), s, _ in jobs:
        seen.setdefault(lbl, s)
    total = 0.0
    print("| run group | s / epoch | s / run | runs | core-hours |\n|---|---|---|---|---|")
    for lbl, s in seen.items():
        one = {**s, "epochs": 1, "steps": s["epoch_steps"]}
        t = time.perf_counter()
        RU.run_one(one)
        sec = time.perf_counter() - t
        n = sum(1 for (g, _), _, _ in jobs if g == lbl)
        total += sec * s["epochs"] * n
        print(f"| {lbl} | {sec:.2f} | {sec * s['epochs']:.0f} | {n} | {sec * s['epochs'] * n / 3600:.2f} |")
    print(f"| all | | | {len(jobs)} | {total / 3600:.2f} |")
    return 0


def _run(args: argparse.Namespace) -> int:
    from neuro import io
    from neuro.ccn_repro.runs import _roundtrip, pending, run_all

    cfg = C.load(args.config)
    if isinstance(args.jobs, bool) or args.jobs < 0:
        raise ValueError(f"--jobs {args.jobs} is invalid: expected an integer >= 0")
    out = Path(args.out)
    jobs = _jobs(cfg, out, args.only)
    if args.estimate:
        return _estimate(cfg, jobs)
    if args.partial:
        _, results = pending(jobs)
    else:
        results = run_all(jobs, args.jobs, fn=RU.run_one, check=C._build)
    grouped: dict[str, dict[int, dict]] = {}
    for (lbl, seed), _, _ in jobs:
        if (lbl, seed) in results:
            grouped.setdefault(lbl, {})[seed] = results[(lbl, seed)]
    summary = R.summarise(cfg, grouped)
    text = R.tables(cfg, summary)
    print(text)
    if args.md:
        io.write_text(args.md, text)
    if args.json:
        io.write_json(args.json, _roundtrip({"config": cfg, "summary": summary}))
    if args.plot:
        R.plot(cfg, grouped, args.plot, f"{cfg['experiment']} ({Path(args.config).name}): training MSE per epoch")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:
        print(f"python -m neuro.pert_repro: error: {e}", file=sys.stderr)
        return 2
