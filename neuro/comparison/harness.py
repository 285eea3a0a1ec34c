"""``neuro.compare``: every rule x seed trained on the same task, with the same model and budget.

Each (rule, seed) is one :class:`RunSpec`, run by :func:`neuro.comparison.worker.run_one` under an
executor (with ``vectorise=True``, the seeds of a rule that allows it run together as one ensemble,
:mod:`neuro.comparison.vectorised`):

* ``"local"`` (default): a pool of ``workers`` processes on this machine (default: the number of CPU
  cores, at most the number of runs), one fresh process per run (so its peak memory is its own), no
  server; a worker exits as soon as the process that started it ends (:mod:`neuro.comparison.local`).
  ``workers=0`` runs everything in this process, one after the other (no isolation: peak memory then
  includes earlier runs').
* ``"ray"``: the same runs as Ray tasks on the cluster at ``address`` (``"auto"`` or ``HOST:PORT``);
  each task runs the same function on the same spec, so the results equal the local ones for the
  same seeds (wall-clock figures aside).

Before any run starts, every run is checked (:func:`neuro.preflight.check_run`: the memory it needs,
the sequence lengths its rule requires) and, with ``out``, the directory is checked against the settings
saved there and for being writable (:mod:`neuro.comparison.outdir`); each refusal is a ``ValueError``
and nothing is written.

With ``out`` given, the sweep's settings are saved in ``out/sweep.json`` and each finished run is
written at once (atomically) to ``out/runs/<rule>/seed-<seed>.json``; a sweep started again with the same
``out`` and settings (rules and seeds may be added) loads the finished runs and runs only the rest, so
an interrupted sweep resumes and no finished run is redone or lost. A run that fails does not stop the
others: they finish and are saved, and :class:`~neuro.comparison.sweep.SweepFailed` (a
:class:`neuro.errors.RunFailed`) names each failed run and where the finished ones are kept. The summary
(``summary.csv``, ``summary.md``, ``runs.csv``, ``curves.csv``) and the plots (``curves.png``,
``alignment.png``, ``cost.png``) are written into ``out`` at the end (see :mod:`neuro.comparison.report`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from neuro.contract import check_choice, check_positive
from neuro.optim import check_options
from neuro.train_config import OPTIMIZERS

from . import outdir
from .report import Results
from .sweep import Sweep, SweepFailed
from .vectorised import VECTORISABLE

__all__ = ["EXECUTORS", "RunSpec", "SweepFailed", "compare", "plan"]

EXECUTORS = ("local", "ray")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on (its result is a function of this and nothing else)."""

    task: str
    model: str
    rule: str
    seed: int
    steps: int
    hidden: int
    lr: float
    optimizer: str = "adam"
    batch: int = 1
    chunk: int = 100
    update_every: int = 1
    log_every: int = 100
    align_every: int = 0  # 0: no alignment measured
    align_steps: int = 100
    eval_steps: int = 1000
    dtype: str = "float32"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    rule_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    schedule: str | None = None  # a stage schedule (neuro.staged), passed to neuro.train
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # neuro.optim, passed to neuro.train

    def asdict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("schedule", "optimizer_options"):
            if not d[k]:  # absent, as in the specs written before it existed (they still resume)
                del d[k]
        return d

    def path(self, out: Path) -> Path:
        return out / "runs" / self.rule / f"seed-{self.seed}.json"


def _names_error(kind: str, given: Iterable[str], valid: Sequence[str]) -> str | None:
    unknown = [g for g in given if g not in valid]
    if unknown:
        return f"{kind} {', '.join(map(repr, unknown))} unknown: valid choices are {', '.join(valid)}"
    return None


def plan(task: str, rules: Sequence[str], seeds: int | Sequence[int] = 3, steps: int = 2000, model: str = "rate",
         hidden: int = 32, *, lr: float | dict[str, float] = 1e-3, optimizer: str = "adam", batch: int = 1,
         chunk: int = 100, update_every: int = 1, log_every: int | None = None, align_every: int | None = None,
         align_steps: int | None = None, eval_steps: int | None = None, dtype: str = "float32",
         task_options: dict[str, Any] | None = None, model_options: dict[str, Any] | None = None,
         rule_options: dict[str, dict[str, Any]] | None = None,
         schedule: str | dict[str, str] | None = None, optimizer_options: dict[str, Any] | None = None
         ) -> list[RunSpec]:
    """Validate a sweep and return its runs (rules outer, seeds inner). Every problem found is reported
    at once, in one ``ValueError``, before anything runs."""
    import models
    import neuro.rules
    import neuro.tasks

    problems: list[str] = []
    if isinstance(rules, str) or not isinstance(rules, Sequence) or not rules:
        raise ValueError(f"rules={rules!r} is invalid: expected a non-empty list of rule names "
                         f"(valid: {', '.join(neuro.rules.available())})")
    if len(set(rules)) != len(rules):
        problems.append(f"rules={list(rules)!r} names a rule twice")
    if isinstance(seeds, bool):
        raise ValueError(f"seeds={seeds!r} is invalid: expected a count or a list of seeds")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if isinstance(seeds, int) and seeds < 1:
        problems.append(f"seeds={seeds!r} is invalid: must be an integer >= 1 (the number of seeds) or a list of seeds")
    elif not seed_list:
        problems.append(f"seeds={seeds!r} is empty: give a positive count or a non-empty list")
    elif any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list) or len(set(seed_list)) != len(seed_list):
        problems.append(f"seeds={seeds!r} is invalid: expected distinct non-negative integers")
    for msg in (_names_error("task", [task], neuro.tasks.available()),
                _names_error("rule(s)", rules, neuro.rules.available()),
                _names_error("model", [model], models.available())):
        if msg:
            problems.append(msg)
    rule_options = dict(rule_options or {})
    extra = sorted(set(rule_options) - set(rules))
    if extra:
        problems.append(f"rule_options for {', '.join(map(repr, extra))}, which is not in rules={list(rules)!r}")
    lrs = lr if isinstance(lr, dict) else {r: lr for r in rules}
    missing = [r for r in rules if r not in lrs]
    if missing:
        problems.append(f"lr has no value for rule(s) {', '.join(map(repr, missing))}")
    if isinstance(hidden, (list, tuple)):  # units per layer of a stack (models.stack)
        hidden = tuple(hidden)
        sizes = hidden or (0,)
    else:
        sizes = (hidden,)
    for name, value, check in (*(("hidden", k, dict(integer=True)) for k in sizes), ("steps", steps, dict(integer=True)),
                               ("batch", batch, dict(integer=True)), ("chunk", chunk, dict(integer=True)),
                               ("update_every", update_every, dict(integer=True))):
        try:
            check_positive(name, value, **check)
        except ValueError as e:
            problems.append(str(e))
    for name, value, choices in (("optimizer", optimizer, OPTIMIZERS), ("dtype", dtype, DTYPES)):
        try:
            check_choice(name, value, choices)
        except ValueError as e:
            problems.append(str(e))
    try:
        optimizer_options = check_options(optimizer, optimizer_options or {}) if optimizer in OPTIMIZERS else {}
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))

    # what can only be checked on built objects: the task and model options, each rule on the model
    t = neuro.tasks.make(task, **(task_options or {}))
    net = models.make(model, n_in=t.n_in, n_hidden=hidden, n_out=t.n_out, **(model_options or {}))
    for r in rules:
        try:
            neuro.rules.make(r, net, loss=t.loss, **rule_options.get(r, {}))
        except (ValueError, TypeError) as e:
            problems.append(str(e))
        try:
            check_positive(f"lr[{r!r}]", lrs.get(r))
        except ValueError as e:
            problems.append(str(e))
    log_every = log_every if log_every is not None else max(1, steps // 20)
    check_positive("log_every", log_every, integer=True)
    align_every = log_every if align_every is None else align_every
    check_positive("align_every", align_every, integer=True, allow_zero=True)
    if align_every % log_every:
        problems.append(f"align_every={align_every} is invalid: must be a multiple of log_every={log_every} "
                        "(or 0 for no alignment)")
    trial = t.trial_steps if t.episodic else None
    align_steps = align_steps if align_steps is not None else (trial or 100)
    eval_steps = eval_steps if eval_steps is not None else (10 * trial if trial else 1000)
    for name, value in (("align_steps", align_steps), ("eval_steps", eval_steps)):
        if trial and value < trial:
            problems.append(f"{name}={value} is shorter than one trial of {task!r} ({trial} steps)")
        elif value < 1:
            problems.append(f"{name}={value} is invalid: must be >= 1")
    if t.episodic and steps < t.trial_steps:
        problems.append(f"steps={steps} is shorter than one trial of {task!r} ({t.trial_steps} steps)")
    schedules = schedule if isinstance(schedule, dict) else {r: schedule for r in rules}
    extra = sorted(set(schedules) - set(rules))
    if extra:
        problems.append(f"schedule for {', '.join(map(repr, extra))}, which is not in rules={list(rules)!r}")
    for r in rules:
        if schedules.get(r) is not None:
            from neuro import staged

            try:
                staged.check(net, neuro.rules.make(r, net, loss=t.loss, **rule_options.get(r, {})), t, steps, chunk,
                             schedules[r])
            except (ValueError, TypeError) as e:
                problems.append(f"rule {r!r}: {e}")
    if problems:
        raise ValueError("; ".join(problems))
    return [RunSpec(task=task, model=model, rule=r, seed=s, steps=steps, hidden=hidden, lr=float(lrs[r]),
                    optimizer=optimizer, batch=batch, chunk=chunk, update_every=update_every, log_every=log_every,
                    align_every=align_every, align_steps=align_steps, eval_steps=eval_steps, dtype=dtype,
                    task_options=dict(task_options or {}), model_options=dict(model_options or {}),
                    rule_options=dict(rule_options.get(r, {})), schedule=schedules.get(r),
                    optimizer_options=dict(optimizer_options))
            for r in rules for s in seed_list]


def _json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists; non-finite floats become ``None``)."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.loads(json.dumps(clean(obj)))


Job = tuple[list[int], Any]  # (indices of the runs, a spec dict or a list of spec dicts)


def _label(specs: list[RunSpec], idx: list[int]) -> str:
    return f"rule {specs[idx[0]].rule!r}, seed{'s' if len(idx) > 1 else ''} {', '.join(str(specs[i].seed) for i in idx)}"


def _held(spec: RunSpec) -> bool:
    """Whether the run's network has parameters held fixed or learnt by its own rule (:mod:`neuro.contract`)."""
    import models
    import neuro.tasks

    t = neuro.tasks.make(spec.task, **spec.task_options)
    net = models.make(spec.model, n_in=t.n_in, n_hidden=spec.hidden, n_out=t.n_out, **spec.model_options)
    return bool(net.held_params)


def _jobs(specs: list[RunSpec], todo: list[int], vectorise: bool) -> list[Job]:
    """One job per run, except (``vectorise``) the pending seeds of a vectorisable rule: one job together."""
    jobs: list[Job] = []
    groups: dict[str, list[int]] = {}
    for i in todo:
        # an ensemble's readout reads every member's features: a step scaled by its fan-in runs seed by seed; so
        # does a network with parameters held fixed or learnt by its own rule (the members would share them)
        if vectorise and specs[i].rule in VECTORISABLE and specs[i].optimizer_options.get("readout_scale") != "fan-in" \
                and not _held(specs[i]):
            groups.setdefault(specs[i].rule, []).append(i)
        else:
            jobs.append(([i], specs[i].asdict()))
    for idx in groups.values():
        jobs.append((idx, [specs[i].asdict() for i in idx]) if len(idx) > 1 else (idx, specs[idx[0]].asdict()))
    return jobs


def _execute_ray(jobs: list[Job], address: str, on_done: Callable[[int, dict], None],
                 on_failed: Callable[[list[int], str], None], connect_timeout_s: float) -> None:
    from . import ray_executor

    ray_executor.execute(jobs, address, on_done, connect_timeout_s, on_failed=on_failed)


def compare(task: str, rules: Sequence[str], seeds: int | Sequence[int] = 3, steps: int = 2000, model: str = "rate",
            hidden: int = 32, *, executor: str = "local", workers: int | None = None, address: str | None = None,
            out: str | os.PathLike | None = None, progress: bool = True, connect_timeout_s: float = 15.0,
            vectorise: bool = False, **settings: Any) -> Results:
    """Train every rule x seed on ``task`` with the same ``model`` and budget; return the :class:`Results`.

    ``settings`` are those of :func:`plan` (``lr`` (one value or one per rule), ``optimizer``, ``batch``,
    ``chunk``, ``update_every``, ``log_every``, ``align_every`` (0: no alignment), ``align_steps``,
    ``eval_steps``, ``dtype``, ``task_options``, ``model_options``, ``rule_options`` (per rule), ``schedule``
    (a stage schedule ``"total:per-stage:steps"`` for every rule, or one per rule: :mod:`neuro.staged`)). See
    the module docstring for the executors and for resuming with ``out``. ``vectorise``: the seeds of each
    rule of :data:`~neuro.comparison.vectorised.VECTORISABLE` run as one batched computation
    (:mod:`neuro.comparison.vectorised`); the others as usual.
    """
    check_choice("executor", executor, EXECUTORS)
    if executor == "ray" and not address:
        raise ValueError("executor='ray' needs address='auto' or 'HOST:PORT' (the cluster to run on)")
    if executor == "local" and address is not None:
        raise ValueError(f"address={address!r} is only for executor='ray'")
    if not isinstance(vectorise, bool):
        raise ValueError(f"vectorise={vectorise!r} is invalid: expected True or False")
    if workers is not None:
        check_positive("workers", workers, integer=True, allow_zero=True)
    specs = plan(task, rules, seeds, steps, model, hidden, **settings)
    _preflight(specs)
    out_path = None if out is None else Path(out)
    done: dict[int, dict[str, Any]] = {}
    if out_path is not None:  # every check before anything is written; then the settings, before any run
        if out_path.exists() and not out_path.is_dir():
            raise ValueError(f"out={str(out_path)!r} is invalid: it exists and is not a directory")
        saved = outdir.check_settings(out_path, specs) if out_path.is_dir() else None
        done = outdir.load_done(out_path, specs) if out_path.is_dir() else {}
        outdir.check_writable(out_path)
        outdir.write_settings(out_path, specs, saved)
    jobs = _jobs(specs, [i for i in range(len(specs)) if i not in done], vectorise)
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(jobs)))
    sweep = Sweep(specs, out_path, done, progress)
    if progress and done:
        print(f"resuming: {len(done)} of {len(specs)} runs already done in {out_path}", flush=True)
    try:
        if jobs and executor == "local":
            from . import local

            work = None if out_path is None or workers == 0 else outdir.work_dir(out_path)
            local.execute(jobs, workers, sweep.on_done, sweep.on_failed, sweep.stopping, work)
        elif jobs:
            _execute_ray(jobs, address, sweep.on_done, sweep.on_failed, connect_timeout_s)
    finally:
        if out_path is not None:  # the workers' files, and what a killed sweep left there
            shutil.rmtree(out_path / outdir.WORK, ignore_errors=True)
    return sweep.finish()


def _preflight(specs: list[RunSpec]) -> None:
    """Check every run before any starts (the memory it needs, the sequence lengths its rule requires:
    :func:`neuro.preflight.check_run`); every problem at once, in one ``ValueError`` (a ``SizeError`` when
    a run cannot fit in memory)."""
    from neuro.errors import SizeError
    from neuro.preflight import check_run

    from .worker import _build

    problems: list[str] = []
    size = False
    for s in specs:
        task, net, rule = _build(s.asdict())
        try:
            check_run(net, rule, task, s.steps, dict(seed=s.seed, optimizer=s.optimizer, lr=s.lr, batch=s.batch,
                                                     chunk=s.chunk, update_every=s.update_every, dtype=s.dtype,
                                                     schedule=s.schedule, optimizer_options=s.optimizer_options))
        except ValueError as e:
            size = size or isinstance(e, SizeError)
            msg = str(e) if repr(s.rule) in str(e) else f"rule {s.rule!r}: {e}"
            if msg not in problems:
                problems.append(msg)
    if problems:
        raise (SizeError if size else ValueError)("; ".join(problems))
