"""The ``neuro`` command line (``python -m neuro`` too)::

    neuro train --model lif --task add --rule tbptt --steps 2000 --hidden 32 --lr 1e-3 --seed 0 \\
                --run-dir runs/x [--resume] [--model-opt key=value ...] [--task-opt ...] [--rule-opt ...]
    neuro compare --task add --rules bptt,tbptt,uoro --seeds 3 --steps 5000 [--config sweep.toml] \
                  [--out runs/cmp] [--executor local|ray --address auto|HOST:PORT] [--rule-opt tbptt:k=10]
    neuro demo [--quick]
    neuro bench NAME [args ...]        # neuro.bench.NAME.main(args)

Usage errors (a wrong name, an invalid size or option, a missing checkpoint) print one line
``neuro: error: ...`` naming the value and the valid choices, exit with status 2 and write nothing.
A run that diverges exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Any, NoReturn, Sequence

__all__ = ["main"]

PROG = "neuro"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (``neuro: error: ...``) and never exit the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _error(message: object) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 2


def _value(text: str) -> Any:
    """``key=value`` values: int, then float, then bool (true/false), none, else the string;
    comma-separated values make a tuple (``isi=24,36``)."""
    if "," in text:
        return tuple(_value(part.strip()) for part in text.split(","))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return text


def _options(flag: str, items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} {item!r} is invalid: expected key=value")
        if key in out:
            raise ValueError(f"{flag} {key} is given twice")
        out[key] = _value(value.strip())
    return out


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Online learning in recurrent spiking and rate networks.")
    sub = p.add_subparsers(dest="command", metavar="{train,compare,demo,bench}", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a network online on a task with a rule",
                       description="Train a network online; n_in / n_out come from the task.")
    t.add_argument("--model", default="lif", help="models.available() (default lif)")
    t.add_argument("--task", default="add", help="neuro.tasks.available() (default add)")
    t.add_argument("--rule", default="tbptt", help="neuro.rules.available() (default tbptt)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--hidden", type=int, default=32, help="hidden units (n_hidden)")
    t.add_argument("--optimizer", default="adam", help="adam or sgd")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--update-every", type=int, default=1)
    t.add_argument("--chunk", type=int, default=100, help="steps per sequence of a continuing task")
    t.add_argument("--dtype", default="float32", help="float32 or float64")
    t.add_argument("--device", default=None, help="cpu (default) or cuda[:i]")
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--run-dir", default=None, help="write config.json, metrics.csv, checkpoint.pt here")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    for what in ("model", "task", "rule"):
        t.add_argument(f"--{what}-opt", action="append", metavar="KEY=VALUE", default=None,
                       help=f"a {what} option (repeatable); values parse as int, float, bool, none, "
                            "str, or a tuple when comma-separated")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("compare", help="train several rules x seeds on one task and compare them with BPTT",
                       description="Every rule x seed trained on the same task, model and budget; a table "
                                   "(mean and standard error across seeds) printed and, with --out, CSV, "
                                   "Markdown and plots written. Values of --config are overridden by flags.")
    c.add_argument("--config", default=None, help="a TOML (or YAML) file with the sweep's settings")
    c.add_argument("--task", default=None, help="neuro.tasks.available() (default add)")
    c.add_argument("--rules", default=None, help="comma-separated rule names (default bptt,tbptt)")
    c.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1; default 3)")
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--model", default=None, help="models.available() (default rate)")
    c.add_argument("--hidden", type=int, default=None)
    c.add_argument("--lr", type=float, default=None, help="one learning rate for every rule")
    c.add_argument("--optimizer", default=None)
    c.add_argument("--batch", type=int, default=None)
    c.add_argument("--chunk", type=int, default=None)
    c.add_argument("--log-every", type=int, default=None)
    c.add_argument("--align-every", type=int, default=None, help="steps between alignment probes (0: none)")
    c.add_argument("--align-steps", type=int, default=None, help="length of the probe sequence")
    c.add_argument("--eval-steps", type=int, default=None)
    c.add_argument("--dtype", default=None)
    c.add_argument("--executor", default=None, help="local (default) or ray")
    c.add_argument("--address", default=None, help="the Ray cluster: auto or HOST:PORT")
    c.add_argument("--workers", type=int, default=None, help="local processes (0: run in this process)")
    c.add_argument("--out", default=None, help="directory for the runs, tables and plots (resumes a sweep)")
    c.add_argument("--vectorise", action="store_true", default=None,
                   help="run the seeds of bptt/tbptt as one batched computation")
    for what in ("model", "task"):
        c.add_argument(f"--{what}-opt", action="append", metavar="KEY=VALUE", default=None)
    c.add_argument("--rule-opt", action="append", metavar="RULE:KEY=VALUE", default=None,
                   help="an option of one rule (repeatable), e.g. tbptt:k=10")

    d = sub.add_parser("demo", help="train a spiking and a rate network on the add task and print a table")
    d.add_argument("--quick", action="store_true", help="a short run (~20 s)")

    b = sub.add_parser("bench", help="run a benchmark: neuro.bench.NAME")
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _train(args: argparse.Namespace) -> int:
    import models
    import neuro.rules
    import neuro.tasks
    from neuro.training import TrainingDiverged, _execute, prepare

    try:
        model_opt = _options("--model-opt", args.model_opt)
        task_opt = _options("--task-opt", args.task_opt)
        rule_opt = _options("--rule-opt", args.rule_opt)
        for key in ("n_in", "n_out", "n_hidden"):
            if key in model_opt:
                why = "use --hidden" if key == "n_hidden" else "it comes from the task"
                raise ValueError(f"--model-opt {key} is not allowed: {why}")
        if args.hidden <= 0:
            raise ValueError(f"--hidden {args.hidden} is invalid: must be a positive integer")
        task = neuro.tasks.make(args.task, **task_opt)
        net = models.make(args.model, n_in=task.n_in, n_hidden=args.hidden, n_out=task.n_out, **model_opt)
        rule = neuro.rules.make(args.rule, net, **rule_opt)
        run = prepare(net, rule, task, args.steps, seed=args.seed, optimizer=args.optimizer, lr=args.lr,
                      update_every=args.update_every, batch=args.batch, run_dir=args.run_dir,
                      log_every=args.log_every, checkpoint_every=args.checkpoint_every, resume=args.resume,
                      progress=not args.no_progress, dtype=args.dtype, device=args.device, chunk=args.chunk)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        return _error(e)
    try:
        history = _execute(run)
    except TrainingDiverged as e:
        _error(e)
        return 1
    except KeyboardInterrupt:
        ckpt = run.checkpoint_path
        where = (f"; continue from its last checkpoint with --resume --run-dir {run.run_dir}"
                 if ckpt is not None and ckpt.is_file() else "")
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    last = history.metrics[-1]
    msg = f"{net.name}/{rule.name}/{task.name}: {history.steps} steps, loss {last['loss']:.4f} over the last " \
          f"{last['step'] - (history.metrics[-2]['step'] if len(history.metrics) > 1 else 0)} steps, " \
          f"{history.updates} updates, {last['elapsed_s']:.1f} s"
    if history.run_dir is not None:
        msg += f"; run directory {history.run_dir}"
    print(msg)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from neuro.comparison import compare
    from neuro.comparison.config import load, validate

    try:
        cfg = load(args.config) if args.config else {}
        flags = {k: getattr(args, k) for k in ("task", "seeds", "steps", "model", "hidden", "lr", "optimizer", "batch",
                                               "chunk", "log_every", "align_every", "align_steps", "eval_steps",
                                               "dtype", "executor", "address", "workers", "out", "vectorise")}
        cfg.update({k: v for k, v in flags.items() if v is not None})
        if args.rules is not None:
            cfg["rules"] = [r.strip() for r in args.rules.split(",") if r.strip()]
        for what in ("model", "task"):
            opts = _options(f"--{what}-opt", getattr(args, f"{what}_opt"))
            if opts:
                cfg[f"{what}_options"] = {**cfg.get(f"{what}_options", {}), **opts}
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
        results = compare(task, rules, **cfg)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError, ImportError) as e:
        return _error(e)
    except KeyboardInterrupt:
        where = f"; run the same command again to resume (finished runs are kept in {cfg.get('out')})" \
            if cfg.get("out") else ""
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    print(results.markdown())
    if cfg.get("out"):
        print(f"tables and plots in {cfg['out']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from neuro.demo import run_demo

    run_demo(quick=args.quick)
    return 0


def _bench_names() -> list[str]:
    try:
        import neuro.bench as bench
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def _bench(args: argparse.Namespace) -> int:
    name = args.name
    names = _bench_names()
    if not name.isidentifier() or name not in names:
        return _error(f"bench {name!r} is unknown: valid choices are {', '.join(names) or '(none installed)'}")
    module = importlib.import_module(f"neuro.bench.{name}")
    if not callable(getattr(module, "main", None)):
        return _error(f"bench {name!r} has no main(argv) function")
    return int(module.main(list(args.args)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``neuro`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        return _error(e)
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return {"train": _train, "compare": _compare, "demo": _demo, "bench": _bench}[args.command](args)
