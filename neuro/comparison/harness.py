"""``neuro.compare``: every rule x seed trained on the same task, with the same model and budget.

Each (rule, seed) is one :class:`RunSpec`, run by :func:`neuro.comparison.worker.run_one` under an
executor (with ``vectorise=True``, the seeds of a rule that allows it run together as one ensemble,
:mod:`neuro.comparison.vectorised`):

* ``"local"`` (default): a pool of ``workers`` processes on this machine (default: the number of CPU
  cores, at most the number of runs), one fresh process per run (so its peak memory is its own), no
  server. ``workers=0`` runs everything in this process, one after the other (no isolation: peak
  memory then includes earlier runs').
* ``"ray"``: the same runs as Ray tasks on the cluster at ``address`` (``"auto"`` or ``HOST:PORT``);
  each task runs the same function on the same spec, so the results equal the local ones for the
  same seeds (wall-clock figures aside).

With ``out`` given, each finished run is written at once (atomically) to
``out/runs/<rule>/seed-<seed>.json``; a sweep started again with the same ``out`` loads the runs whose
spec matches and runs only the rest, so an interrupted sweep resumes and no finished run is redone or
lost. The summary (``summary.csv``, ``summary.md``, ``runs.csv``, ``curves.csv``) and the plots
(``curves.png``, ``alignment.png``, ``cost.png``) are written into ``out`` at the end (see
:mod:`neuro.comparison.report`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from neuro.contract import check_choice, check_positive

from .report import Results
from .vectorised import VECTORISABLE
from .worker import run_job

__all__ = ["EXECUTORS", "RunSpec", "compare", "plan"]

EXECUTORS = ("local", "ray")
DTYPES = ("float32", "float64")
OPTIMIZERS = ("adam", "sgd")


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

    def asdict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["schedule"] is None:  # absent, as in the specs written before it existed (they still resume)
            del d["schedule"]
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
         schedule: str | dict[str, str] | None = None) -> list[RunSpec]:
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
    if not seed_list:
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
    for name, value, check in (("steps", steps, dict(integer=True)), ("hidden", hidden, dict(integer=True)),
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
                    rule_options=dict(rule_options.get(r, {})), schedule=schedules.get(r))
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


def _load_done(specs: list[RunSpec], out: Path | None) -> dict[int, dict[str, Any]]:
    from neuro import io

    done: dict[int, dict[str, Any]] = {}
    if out is None:
        return done
    for i, spec in enumerate(specs):
        path = spec.path(out)
        if path.is_file():
            try:
                result = io.read_json(path)
            except ValueError:  # unreadable: run it again (atomic writes make this unlikely)
                continue
            if result.get("spec") == _json_roundtrip(spec.asdict()):
                done[i] = result
    return done


Job = tuple[list[int], Any]  # (indices of the runs, a spec dict or a list of spec dicts)


def _execute_local(jobs: list[Job], workers: int, on_done: Callable[[int, dict], None]) -> None:
    """Each job in a fresh ``python -m neuro.comparison.worker`` process, ``workers`` at a time (0: in this
    process). A subprocess rather than a multiprocessing pool: nothing of the caller's ``__main__`` is
    re-imported (scripts need no ``if __name__ == "__main__"`` guard), and every run's memory is its own."""
    if workers == 0:
        for idx, payload in jobs:
            for i, result in zip(idx, run_job(payload)):
                on_done(i, result)
        return
    import json
    import subprocess
    import sys
    import tempfile

    queue = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, Path, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="neuro-compare-") as tmp:
        try:
            n = 0
            while queue or running:
                while queue and len(running) < workers:
                    job = queue.pop(0)
                    n += 1
                    result_path = Path(tmp) / f"job-{n}.json"
                    log = open(Path(tmp) / f"job-{n}.log", "w+b")
                    proc = subprocess.Popen([sys.executable, "-m", "neuro.comparison.worker", str(result_path)],
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
                    proc.stdin.write(json.dumps(job[1]).encode())
                    proc.stdin.close()
                    running[proc] = (job, result_path, log)
                done = _wait_any(list(running))
                job, result_path, log = running.pop(done)
                log.seek(0)
                text = log.read().decode(errors="replace")
                log.close()
                if done.returncode != 0 or not result_path.is_file():
                    tail = "\n".join(text.strip().splitlines()[-15:])
                    raise RuntimeError(f"{_label(job)} failed with exit status {done.returncode}:\n{tail}")
                for i, result in zip(job[0], json.loads(result_path.read_text())):
                    on_done(i, result)
        finally:
            for proc, (_job, _path, log) in running.items():
                proc.kill()
                proc.wait()
                log.close()


def _label(job: Job) -> str:
    specs = job[1] if isinstance(job[1], list) else [job[1]]
    return f"the run of rule {specs[0]['rule']!r}, seed(s) {', '.join(str(s['seed']) for s in specs)}"


def _wait_any(procs: list) -> Any:
    """The first of ``procs`` to finish (polled: portable, and a finished run is seen within 50 ms)."""
    import time

    while True:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.05)


def _jobs(specs: list[RunSpec], todo: list[int], vectorise: bool) -> list[Job]:
    """One job per run, except (``vectorise``) the pending seeds of a vectorisable rule: one job together."""
    jobs: list[Job] = []
    groups: dict[str, list[int]] = {}
    for i in todo:
        if vectorise and specs[i].rule in VECTORISABLE:
            groups.setdefault(specs[i].rule, []).append(i)
        else:
            jobs.append(([i], specs[i].asdict()))
    for idx in groups.values():
        jobs.append((idx, [specs[i].asdict() for i in idx]) if len(idx) > 1 else (idx, specs[idx[0]].asdict()))
    return jobs


def _execute_ray(jobs: list[Job], address: str, on_done: Callable[[int, dict], None],
                 connect_timeout_s: float) -> None:
    from . import ray_executor

    ray_executor.execute(jobs, address, on_done, connect_timeout_s)


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
    from neuro import io

    check_choice("executor", executor, EXECUTORS)
    if executor == "ray" and not address:
        raise ValueError("executor='ray' needs address='auto' or 'HOST:PORT' (the cluster to run on)")
    if executor == "local" and address is not None:
        raise ValueError(f"address={address!r} is only for executor='ray'")
    specs = plan(task, rules, seeds, steps, model, hidden, **settings)
    out_path = None if out is None else Path(out)
    if out_path is not None and out_path.exists() and not out_path.is_dir():
        raise ValueError(f"out={str(out_path)!r} is invalid: it exists and is not a directory")
    results: dict[int, dict[str, Any]] = _load_done(specs, out_path)
    if not isinstance(vectorise, bool):
        raise ValueError(f"vectorise={vectorise!r} is invalid: expected True or False")
    jobs = _jobs(specs, [i for i in range(len(specs)) if i not in results], vectorise)
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(jobs)))
    check_positive("workers", workers, integer=True, allow_zero=True)

    trained: dict[int, dict[str, Any]] = {}

    def on_done(i: int, result: dict[str, Any]) -> None:
        import torch

        params = result.pop("params", None)
        dtype = torch.float64 if specs[i].dtype == "float64" else torch.float32
        if params is not None:
            trained[i] = {k: torch.as_tensor(v, dtype=dtype) for k, v in params.items()}
        result = _json_roundtrip(result)  # what a resumed sweep would read back
        results[i] = result
        if out_path is not None:
            path = specs[i].path(out_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if i in trained:  # first the parameters, then the result that marks the run done
                io.save_checkpoint(path.with_suffix(".pt"), trained[i])
            io.write_json(path, result)
        if progress:
            s = specs[i]
            what = "diverged" if result.get("diverged") else f"final loss {result['final_loss']:.4g}"
            print(f"[{len(results)}/{len(specs)}] {s.rule} seed {s.seed}: {what}", flush=True)

    if progress and len(results):
        print(f"resuming: {len(results)} of {len(specs)} runs already done in {out_path}", flush=True)
    if jobs:
        if executor == "local":
            _execute_local(jobs, workers, on_done)
        else:
            _execute_ray(jobs, address, on_done, connect_timeout_s)
    for i in range(len(specs)):
        if i not in trained and out_path is not None and specs[i].path(out_path).with_suffix(".pt").is_file():
            trained[i] = io.load_checkpoint(specs[i].path(out_path).with_suffix(".pt"))
    res = Results(runs=[results[i] for i in range(len(specs))],
                  params={(specs[i].rule, specs[i].seed): trained[i] for i in trained})
    if out_path is not None:
        res.write(out_path)
    return res
