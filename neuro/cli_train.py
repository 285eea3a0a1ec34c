"""``neuro train``: its flags, and the run they describe.

A fresh run takes every setting from the flags (their defaults where not given). ``--resume --run-dir D``
takes every setting from ``D/config.json`` (model, rule, task and their options, training settings), so
``neuro train --run-dir D --resume --steps N`` continues the run to step ``N``. A flag given on resume
must agree with the saved run, or it is refused naming it; the flags that may change on resume are
``--steps``, ``--checkpoint-every``, ``--device`` and ``--no-progress``. Every flag's default is ``None``
here, so that a flag the user gave is told apart from a default.

A run directory is never a dead end. It gets a checkpoint at the end, at the first sequence end after every
``--checkpoint-every`` steps, or (without that flag) after every minute of wall clock; a run killed before
its first checkpoint leaves ``config.json``, and ``--resume`` restarts it from step 0 (saying so on
stderr). The directory is checked to be writable before the run starts (exit 2 if not). A failure after
the run started (a full disk, a file-size limit, memory, an error inside the loop) exits 1 with one line
naming the cause, the last good checkpoint (step and path) and the command that continues the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["DEFAULTS", "Spec", "add_arguments", "main", "spec_from_flags", "spec_from_run"]

#: the flags' defaults for a fresh run
DEFAULTS: dict[str, Any] = {"model": "lif", "task": "add", "rule": "tbptt", "steps": 2000, "hidden": 32,
                            "optimizer": "adam", "lr": 1e-3, "seed": 0, "batch": 1, "update_every": 1, "chunk": 100,
                            "dtype": "float32", "device": None, "log_every": 100, "checkpoint_every": None,
                            "schedule": None, "engine": "auto"}
#: training settings that are flags of the same name (``--update-every`` is ``update_every``)
_SETTINGS = ("seed", "optimizer", "lr", "update_every", "batch", "log_every", "checkpoint_every", "dtype",
             "device", "chunk", "schedule", "engine")
#: flags that may differ from the saved run on resume
_CHANGEABLE = ("steps", "checkpoint_every", "device")


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The flags of ``neuro train`` (every default ``None``: :data:`DEFAULTS` fills them for a fresh run)."""
    d = DEFAULTS
    t.add_argument("--model", help=f"models.available() (default {d['model']})")
    t.add_argument("--task", help=f"neuro.tasks.available() (default {d['task']})")
    t.add_argument("--rule", help=f"neuro.rules.available() (default {d['rule']})")
    t.add_argument("--steps", type=int, help=f"steps to run in all (default {d['steps']}; on --resume the saved run's)")
    from neuro.cli import connectivity_rule, hidden_sizes

    t.add_argument("--hidden", type=hidden_sizes, help=f"hidden units (n_hidden; default {d['hidden']}), or units "
                                                      "per layer of a stack of --model layers (64,64)")
    t.add_argument("--connectivity", type=connectivity_rule, help="connection probability of the recurrent and "
                   "between-layer synapses (default 1: dense), or a rule such as fan-in:16 (neuro.connectivity)")
    t.add_argument("--optimizer", help=f"adam, sgd, rmsprop or td-rmsprop (default {d['optimizer']})")
    t.add_argument("--optimizer-opt", action="append", metavar="KEY=VALUE",
                   help="an option of the optimizer (repeatable; td-rmsprop: beta2, eps, init, readout_scale=none|fan-in)")
    t.add_argument("--lr", type=float, help=f"learning rate (default {d['lr']})")
    t.add_argument("--seed", type=int, help=f"default {d['seed']}")
    t.add_argument("--batch", type=int, help=f"default {d['batch']}")
    t.add_argument("--update-every", type=int, help=f"default {d['update_every']}")
    t.add_argument("--chunk", type=int, help=f"steps per sequence of a continuing task (default {d['chunk']})")
    t.add_argument("--dtype", help=f"float32 or float64 (default {d['dtype']})")
    t.add_argument("--device", help="cpu (default) or cuda[:i]")
    t.add_argument("--engine", help="auto (default: compiled where the model, rule, optimizer, loss, device and dtype "
                                    "have a compiled engine, else torch), compiled (refuse a run without one) or torch "
                                    "(every step in torch); see neuro.engine")
    t.add_argument("--log-every", type=int, help=f"default {d['log_every']}")
    t.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints, each at the next sequence end (default: one every minute of "
                        "wall clock); one is always written at the end")
    t.add_argument("--run-dir", help="write config.json, metrics.csv, checkpoint.pt here")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its checkpoint, with the settings of its config.json "
                        "(a run without a checkpoint yet restarts from step 0)")
    for what in ("model", "task", "rule"):
        t.add_argument(f"--{what}-opt", action="append", metavar="KEY=VALUE",
                       help=f"a {what} option (repeatable); values parse as int, float, bool, none, "
                            "str, or a tuple when comma-separated")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--schedule", metavar="TOTAL:PER-STAGE:STEPS",
                   help="train a constructive network stage by stage (e.g. 20:4:10000; --model constructive, "
                        "--hidden TOTAL, --model-opt per_stage=PER-STAGE; see neuro.staged)")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A run to build: the network, task and rule by name with their options (``net`` holds every model
    field but the sizes the task gives), the step count and the :class:`~neuro.train_config.TrainConfig`
    settings."""

    model: str
    net: dict[str, Any]
    task: str
    task_opt: dict[str, Any]
    rule: str
    rule_opt: dict[str, Any]
    steps: int
    settings: dict[str, Any]

    def build(self):
        """``(net, rule, task, config)``; ``ValueError`` names an invalid name, option or setting."""
        import models
        import neuro.rules
        import neuro.tasks
        from neuro.train_config import TrainConfig

        task = neuro.tasks.make(self.task, **self.task_opt)
        net = models.make(self.model, **{**self.net, "n_in": task.n_in, "n_out": task.n_out})
        rule = neuro.rules.make(self.rule, net, **self.rule_opt)
        return net, rule, task, TrainConfig(**self.settings)


def _flag_options(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    from neuro.cli import _options

    model_opt = _options("--model-opt", args.model_opt)
    for key in ("n_in", "n_out", "n_hidden"):
        if key in model_opt:
            why = "use --hidden" if key == "n_hidden" else "it comes from the task"
            raise ValueError(f"--model-opt {key} is not allowed: {why}")
    if isinstance(args.hidden, int) and args.hidden <= 0:
        raise ValueError(f"--hidden {args.hidden} is invalid: must be a positive integer")
    if getattr(args, "connectivity", None) is not None:
        if "connectivity" in model_opt:
            raise ValueError("--connectivity and --model-opt connectivity= are both given: give one")
        model_opt["connectivity"] = args.connectivity
    return model_opt, _options("--task-opt", args.task_opt), _options("--rule-opt", args.rule_opt)


def _optimizer_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--optimizer-opt`` as a dict (``readout_scale=none`` is the name ``"none"``, not ``None``)."""
    from neuro.cli import _options

    opts = _options("--optimizer-opt", args.optimizer_opt)
    if "readout_scale" in opts and opts["readout_scale"] is None:
        opts["readout_scale"] = "none"
    return opts


def spec_from_flags(args: argparse.Namespace) -> Spec:
    """A fresh run: the flags, :data:`DEFAULTS` where not given."""
    model_opt, task_opt, rule_opt = _flag_options(args)
    get = lambda k: DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)  # noqa: E731
    settings = {k: get(k) for k in _SETTINGS}
    settings["optimizer_options"] = _optimizer_options(args)
    return Spec(model=get("model"), net={**model_opt, "n_hidden": get("hidden")}, task=get("task"), task_opt=task_opt,
                rule=get("rule"), rule_opt=rule_opt, steps=get("steps"),
                settings={**settings, "run_dir": args.run_dir, "resume": args.resume, "progress": not args.no_progress})


def _tuples(v: Any) -> Any:
    """JSON's lists back to the tuples the options were given as."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _same(given: Any, saved: Any) -> bool:
    return json.loads(json.dumps(given, default=repr)) == saved


def _saved_connectivity(net: dict[str, Any], value: Any) -> Any:
    """``value`` of ``--connectivity`` in the canonical form the saved network ``net`` would hold (JSON's)."""
    import models

    fields = {k: _tuples(v) for k, v in net["fields"].items()}
    try:
        built = models.make(net["name"], **{**fields, "connectivity": value})
    except ValueError:
        return value
    return json.loads(json.dumps(built.connectivity))


def _clashes(args: argparse.Namespace, saved: dict[str, Any]) -> list[str]:
    """One phrase per flag the user gave that contradicts the saved run (``--steps``, ``--checkpoint-every``,
    ``--device``, ``--no-progress`` may change)."""
    net, task, rule, train = (saved[k] for k in ("net", "task", "rule", "train"))
    stack = net["name"] == "stack" and args.model != "stack"  # a stack saved from --model M --hidden a,b
    model, hidden = ((net["fields"]["layer"], net["fields"]["sizes"]) if stack
                     else (net["name"], net["fields"]["n_hidden"]))
    given = [("--model", args.model, "model", model), ("--task", args.task, "task", task["name"]),
             ("--rule", args.rule, "rule", rule["name"]), ("--hidden", args.hidden, "n_hidden", hidden)]
    given += [(f"--{k.replace('_', '-')}", getattr(args, k), k, train.get(k)) for k in _SETTINGS if k not in _CHANGEABLE]
    out = [f"{flag} {value} contradicts the saved {what}={was!r}"
           for flag, value, what, was in given if value is not None and not _same(value, was)]
    saved_opts = train.get("optimizer_options") or {}
    for k, v in _optimizer_options(args).items():
        if k not in saved_opts or not _same(v, saved_opts[k]):
            out.append(f"--optimizer-opt {k}={v} contradicts the saved optimizer_options={saved_opts!r}")
    for what, opts, part in zip(("model", "task", "rule"), _flag_options(args), (net, task, rule)):
        for k, v in opts.items():
            if what == "model" and k == "connectivity" and k in part["fields"]:
                v = _saved_connectivity(net, v)  # the canonical form the saved network holds
            if k not in part["fields"]:
                out.append(f"--{what}-opt {k}={v} is not an option of the saved {what} {part['name']!r}")
            elif not _same(v, part["fields"][k]):
                out.append(f"--{what}-opt {k}={v} contradicts the saved {what} option {k}={part['fields'][k]!r}")
    return out


def spec_from_run(args: argparse.Namespace) -> Spec:
    """A resumed run (or a restart, where the directory has no checkpoint yet): every setting from
    ``--run-dir``'s config.json; a ``ValueError`` names each flag the user gave that contradicts it."""
    from neuro.rundir import CHECKPOINT, CONFIG, read_config

    run_dir = Path(args.run_dir)
    if not (run_dir / CHECKPOINT).is_file() and not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"cannot resume --run-dir {str(run_dir)!r}: it holds no run (no checkpoint "
                                f"{str(run_dir / CHECKPOINT)!r}, no {CONFIG}); start one without --resume")
    saved = read_config(run_dir)
    clashes = _clashes(args, saved)
    if clashes:
        raise ValueError(f"cannot resume {str(run_dir)!r}: {'; '.join(clashes)}: drop the flag(s); --resume takes every "
                         f"setting from its config.json (only --steps, --checkpoint-every, --device, --no-progress "
                         f"may change)")
    net, task, rule, train = (saved[k] for k in ("net", "task", "rule", "train"))
    fields = lambda part: {k: _tuples(v) for k, v in part["fields"].items()}  # noqa: E731
    settings = {k: train.get(k) for k in _SETTINGS}
    settings["engine"] = train.get("engine", "torch")  # a run saved before the engine was recorded ran in torch
    settings["optimizer_options"] = train.get("optimizer_options") or {}
    for k in ("checkpoint_every", "device"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    return Spec(model=net["name"], net=fields(net), task=task["name"], task_opt=fields(task), rule=rule["name"],
                rule_opt=fields(rule), steps=train["steps"] if args.steps is None else args.steps,
                settings={**settings, "run_dir": run_dir, "resume": True, "progress": not args.no_progress})


def _check_flags(args: argparse.Namespace) -> None:
    """The flag combinations that need ``--run-dir``, and a fresh run into a directory that holds one."""
    from neuro.rundir import CHECKPOINT, CONFIG

    if args.run_dir is None:
        for flag, given in (("--resume", args.resume), ("--checkpoint-every", args.checkpoint_every is not None)):
            if given:
                raise ValueError(f"{flag} needs --run-dir (the directory that keeps the checkpoint)")
    elif not args.resume and any((Path(args.run_dir) / f).exists() for f in (CONFIG, CHECKPOINT)):
        raise FileExistsError(f"--run-dir {args.run_dir} already holds a run ({CONFIG} or {CHECKPOINT}): continue it "
                              "with --resume, or choose another --run-dir")


def main(args: argparse.Namespace) -> int:
    """Build and run the training ``args`` describe; the exit status 0. A failure raises (:func:`neuro.cli.main`
    prints one line): before the run starts the error itself (exit 2), after it :class:`~neuro.errors.RunFailed`
    or :class:`~neuro.training.TrainingDiverged` naming the last good checkpoint (exit 1)."""
    from neuro.cli import PROG
    from neuro.errors import RunFailed, describe
    from neuro.rundir import CHECKPOINT, CONFIG
    from neuro.training import TrainingDiverged, prepare

    _check_flags(args)
    spec = spec_from_run(args) if args.resume else spec_from_flags(args)
    net, rule, task, config = spec.build()
    run = prepare(net, rule, task, spec.steps, config)
    again = None if config.run_dir is None else f"neuro train --resume --run-dir {shlex.quote(str(config.run_dir))}"
    if run.restarts:
        print(f"{PROG}: {str(config.run_dir)!r} holds no checkpoint yet: restarting the run from step 0 with its "
              f"{CONFIG}", file=sys.stderr)
    try:
        history = run.execute(continue_with=again)
    except KeyboardInterrupt:
        where = ""
        if again is not None and (config.run_dir / CHECKPOINT).is_file():
            where = f"; continue from its last checkpoint with: {again}"
        elif again is not None and (config.run_dir / CONFIG).is_file():
            where = f"; no checkpoint yet: {again} restarts it"
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    except (TrainingDiverged, RunFailed):
        raise
    except Exception as e:
        if config.run_dir is not None:  # the run directory was not written: nothing started
            raise
        raise RunFailed(f"the run failed: {describe(e)}; without --run-dir nothing was kept: run it again, with "
                        "--run-dir DIR to keep checkpoints") from e
    last = history.metrics[-1]
    msg = f"{net.name}/{rule.name}/{task.name}: {history.steps} steps, loss {last['loss']:.4f} over the last " \
          f"{last['step'] - (history.metrics[-2]['step'] if len(history.metrics) > 1 else 0)} steps, " \
          f"{history.updates} updates, {last['elapsed_s']:.1f} s"
    if history.run_dir is not None:
        msg += f"; run directory {history.run_dir}"
    print(msg)
    return 0
