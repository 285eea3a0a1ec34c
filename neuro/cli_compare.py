"""``neuro compare``: a sweep of rules x seeds on one task (:func:`neuro.comparison.compare`)."""

from __future__ import annotations

import argparse
import sys

from neuro.cli import PROG, _options

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    """Errors go to :func:`neuro.cli.main` (one line each); a sweep some of whose runs failed prints the table
    of the runs that finished first."""
    from neuro.comparison import SweepFailed, compare
    from neuro.comparison.config import load, validate

    cfg = load(args.config) if args.config else {}
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} is invalid: must be an integer >= 1 (the number of seeds)")
    flags = {k: getattr(args, k) for k in ("task", "seeds", "steps", "model", "hidden", "lr", "optimizer", "batch",
                                           "chunk", "update_every", "log_every", "align_every", "align_steps", "eval_steps",
                                           "dtype", "executor", "address", "workers", "out", "vectorise",
                                           "schedule")}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if args.rules is not None:
        cfg["rules"] = [r.strip() for r in args.rules.split(",") if r.strip()]
    if getattr(args, "connectivity", None) is not None:
        cfg["model_options"] = {**cfg.get("model_options", {}), "connectivity": args.connectivity}
    for what in ("model", "task"):
        opts = _options(f"--{what}-opt", getattr(args, f"{what}_opt"))
        if opts:
            cfg[f"{what}_options"] = {**cfg.get(f"{what}_options", {}), **opts}
    opts = _options("--optimizer-opt", getattr(args, "optimizer_opt", None))
    if opts:
        if "readout_scale" in opts and opts["readout_scale"] is None:  # the name "none", not None
            opts["readout_scale"] = "none"
        cfg["optimizer_options"] = {**cfg.get("optimizer_options", {}), **opts}
    for item in args.rule_opt or []:
        rule, sep, rest = item.partition(":")
        if not sep or not rule.strip():
            raise ValueError(f"--rule-opt {item!r} is invalid: expected RULE:KEY=VALUE (e.g. tbptt:k=10)")
        opts = cfg.setdefault("rule_options", {}).setdefault(rule.strip(), {})
        opts.update(_options("--rule-opt", [rest]))
    cfg = validate(cfg, "settings")
    cfg.setdefault("task", "add")
    cfg.setdefault("rules", ["bptt", "tbptt"])
    task, rules = cfg.pop("task"), cfg.pop("rules")
    try:
        results = compare(task, rules, **cfg)
    except SweepFailed as e:
        if e.results.runs:
            print("the runs that finished:")
            print(e.results.markdown())
        raise
    except KeyboardInterrupt:
        where = f"; run the same command again to resume (finished runs are kept in {cfg.get('out')})" \
            if cfg.get("out") else ""
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    print(results.markdown())
    if cfg.get("out"):
        print(f"tables and plots in {cfg['out']}")
    return 0
