"""The runs of a reproduction: one file per (experiment, stage, method, learning rate, seed), written once it
finishes, so an interrupted reproduction resumes by running only the runs that have no file; and the pilot's
choice of learning rate per method.

A run is :func:`neuro.train` of the rule ``td-lambda`` (the config's ``[td]`` options, the method's ``inner``
rule and T-BPTT's ``k``) on the method's network, with the run's own seed (so every method of a seed sees the
same stream), nothing else written. Its file, ``OUT/[<game>/]<stage>/<method>/lr-<lr>/seed-<s>.json``, holds the
run's ``spec`` (everything it depends on), its metric rows (``curve``: ``step``, ``loss``), ``diverged`` (the
step at which the loss or the parameters stopped being finite, or null) and its time per step. A file is a
finished run only if its ``spec`` is this run's; a file with another spec is refused (one line naming the
differing settings), so one directory never mixes settings.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
from pathlib import Path
from typing import Any, Callable

from . import config as cfgmod

__all__ = ["choose_lr", "finished", "pending", "record", "run_file", "run_one", "run_spec", "run_all", "zero_baseline",
           "zero_rows"]

STAGES = ("pilot", "main")


def run_spec(cfg: dict[str, Any], task_options: dict[str, Any], m: dict[str, Any], lr: float, seed: int,
             steps: int) -> dict[str, Any]:
    """Everything one run depends on (its result is a function of this and nothing else)."""
    td = dict(cfg.get("td", {}), rule=m["inner"])
    if m["inner"] == "tbptt":
        td["rule_options"] = {"k": m["k"]}
    return {"task": cfg["task"], "task_options": task_options, "model": m["model"], "hidden": m["hidden"],
            "model_options": dict(m.get("model_options", {})), "rule": "td-lambda", "rule_options": td,
            "schedule": cfgmod.stage_schedule(m, steps, cfg["chunk"]), "steps": steps, "seed": seed,
            "optimizer": cfg["optimizer"],
            "optimizer_options": {**cfg.get("optimizer_options", {}), **m.get("optimizer_options", {})},
            "lr": lr, "chunk": cfg["chunk"], "log_every": min(cfg["log_every"], steps), "dtype": cfg["dtype"],
            "engine": cfg["engine"]}


def run_file(out: Path, label: str, stage: str, method: str, lr: float, seed: int) -> Path:
    base = out / label if label else out
    return base / stage / method / f"lr-{lr:g}" / f"seed-{seed}.json"


def _roundtrip(obj: Any) -> Any:
    from neuro.comparison.harness import _json_roundtrip

    return _json_roundtrip(obj)


def finished(path: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The run saved at ``path`` if it is ``spec``'s, None if there is none; a ``ValueError`` if it was run
    with other settings."""
    from neuro import io

    if not path.is_file():
        return None
    try:
        saved = io.read_json(path)
        old = saved["spec"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{str(path)!r} is not a finished run's file: remove it to run it again") from None
    now = _roundtrip(spec)
    if old != now:
        diffs = [f"{k}: {old.get(k)!r} saved, {now.get(k)!r} now" for k in sorted(set(old) | set(now))
                 if old.get(k) != now.get(k)]
        raise ValueError(f"{str(path)!r} was run with other settings ({'; '.join(diffs)}): use the same config to "
                         "resume, or another output directory (--out)")
    return saved


def _build(spec: dict[str, Any]):
    import models
    import neuro.rules
    import neuro.tasks

    task = neuro.tasks.make(spec["task"], **cfgmod.task_options(spec["task_options"]))
    net = models.make(spec["model"], n_in=task.n_in, n_hidden=spec["hidden"], n_out=task.n_out,
                      **spec["model_options"])
    return task, net, neuro.rules.make(spec["rule"], net, loss=task.loss, **spec["rule_options"])


def train_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The :func:`neuro.train` settings of a run (``optimizer_options`` only when it has some)."""
    s = {k: spec[k] for k in ("seed", "optimizer", "lr", "chunk", "log_every", "dtype", "engine", "schedule")}
    if spec["optimizer_options"]:
        s["optimizer_options"] = spec["optimizer_options"]
    return s


def check_spec(spec: dict[str, Any]) -> None:
    """Build the run's task, network, rule and training settings (a ``ValueError`` before anything runs)."""
    import neuro.staged
    from neuro.train_config import TrainConfig

    task, net, rule = _build(spec)
    s = train_settings(spec)
    if s.pop("schedule") is not None:
        neuro.staged.check(net, rule, task, spec["steps"], spec["chunk"], spec["schedule"])
    TrainConfig(**s)


def run_one(spec: dict[str, Any], path: str | None = None, threads: int = 1) -> dict[str, Any]:
    """Train one run; write its result to ``path`` (atomically) if given, and return it."""
    import torch

    import neuro

    torch.set_num_threads(threads)
    task, net, rule = _build(spec)
    return record(spec, path, lambda: neuro.train(net, rule, task, spec["steps"], progress=False,
                                                  **train_settings(spec)),
                  lambda h: [{"step": r["step"], "loss": r["loss"]} for r in h.metrics])


def record(spec: dict[str, Any], path: str | None, train: Callable[[], Any],
           rows: Callable[[Any], list[dict[str, Any]]]) -> dict[str, Any]:
    """A run's result: ``train()`` (a :class:`neuro.History`), its curve ``rows(history)``, its time per step and
    engine, or the step at which it diverged; written to ``path`` (atomically) if given."""
    from neuro import io
    from neuro.training import TrainingDiverged

    result: dict[str, Any] = {"spec": spec, "diverged": None, "curve": [], "time_per_step_s": None, "engine": None}
    try:
        h = train()
        result["curve"] = rows(h)
        result["time_per_step_s"] = h.elapsed_s / max(h.steps, 1)
        result["engine"] = h.engine
    except TrainingDiverged as e:
        result["diverged"] = e.step
    result = _roundtrip(result)
    if path is not None:
        io.write_json(path, result)
    return result


def pending(jobs: list[tuple[Any, dict[str, Any], Path]]) -> tuple[list, dict]:
    """Split ``(key, spec, path)`` jobs into those to run and ``{key: result}`` of the finished ones."""
    todo, done = [], {}
    for key, spec, path in jobs:
        r = finished(path, spec)
        if r is None:
            todo.append((key, spec, path))
        else:
            done[key] = r
    return todo, done


def run_all(jobs: list[tuple[Any, dict[str, Any], Path]], workers: int,
            say: Callable[[str], None] = print, fn: Callable[..., dict[str, Any]] | None = None,
            check: Callable[[dict[str, Any]], Any] | None = None) -> dict[Any, dict[str, Any]]:
    """Run the unfinished ``(key, spec, path)`` jobs, ``workers`` at a time in fresh processes (0: here, one
    after the other); return every job's result by key (finished ones read back, not rerun). ``fn(spec, path)``
    runs one (default :func:`run_one`), ``check(spec)`` refuses a bad one before anything runs (default
    :func:`check_spec`)."""
    fn, check = fn or run_one, check or check_spec
    todo, done = pending(jobs)
    if done:
        say(f"resuming: {len(done)} of {len(jobs)} runs already done")
    for _, spec, _ in todo:
        check(spec)
    for _, _, path in todo:
        path.parent.mkdir(parents=True, exist_ok=True)
    if workers == 0:
        for key, spec, path in todo:
            done[key] = fn(spec, str(path))
            say(f"done {key}")
        return done
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = {pool.submit(fn, spec, str(path)): key for key, spec, path in todo}
        for f in concurrent.futures.as_completed(futs):
            done[futs[f]] = f.result()
            say(f"done {futs[f]}")
    return done


def choose_lr(scores: dict[float, list[float | None]]) -> float:
    """The pilot's learning rate for one method from ``{lr: [score per seed; None if diverged]}``: the fewest
    diverged seeds, then the lowest mean score over the others, then the smaller learning rate (a tie)."""
    def key(lr: float) -> tuple[int, float, float]:
        xs = scores[lr]
        ok = [x for x in xs if x is not None and math.isfinite(x)]
        return len(xs) - len(ok), (sum(ok) / len(ok) if ok else math.inf), lr

    if not scores:
        raise ValueError("no pilot runs to choose a learning rate from")
    return min(scores, key=key)


def zero_baseline(task: str, task_options: dict[str, Any], seed: int, chunk: int, start: int, end: int) -> float:
    """``G_t^2`` averaged over the steps ``(start, end]`` of seed ``seed``'s stream (as :func:`neuro.train`
    draws it): the error ``(v - G)^2`` of predicting ``v = 0`` there."""
    import neuro.tasks
    from neuro.train_config import TrainConfig

    t = neuro.tasks.make(task, **cfgmod.task_options(task_options))
    total, n, at = 0.0, 0, 0
    for seq in t.stream(seed=TrainConfig(seed=seed).seed_for("task"), batch=1, chunk=chunk, steps=end):
        g = seq.ys[:, 0, 0].double()
        lo = max(0, start - at)
        if lo < len(g):
            total += float((g[lo:] ** 2).sum())
            n += len(g) - lo
        at += len(g)
    return total / n


def zero_rows(task: str, task_options: dict[str, Any], seed: int, chunk: int, ends: list[int]) -> list[float]:
    """``G_t^2`` averaged over each of the steps ``(ends[i-1], ends[i]]`` (from step 0 for the first) of seed ``seed``'s
    stream, in one pass: the error of predicting ``v = 0`` over each metric row of a run."""
    import numpy as np

    import neuro.tasks
    from neuro.train_config import TrainConfig

    t = neuro.tasks.make(task, **cfgmod.task_options(task_options))
    edges = np.asarray(ends)
    sums, counts, at = np.zeros(len(ends)), np.zeros(len(ends)), 0
    for seq in t.stream(seed=TrainConfig(seed=seed).seed_for("task"), batch=1, chunk=chunk, steps=ends[-1]):
        g2 = seq.ys[:, 0, 0].double().numpy() ** 2
        row = np.searchsorted(edges, np.arange(at + 1, at + 1 + len(g2)), side="left")  # step j in row i: ends[i-1] < j <= ends[i]
        sums += np.bincount(row, weights=g2, minlength=len(ends))
        counts += np.bincount(row, minlength=len(ends))
        at += len(g2)
    return (sums / counts).tolist()
