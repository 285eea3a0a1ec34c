"""One run of a perturbation-learning reproduction: :func:`neuro.train` of one method on the rate network for
``epochs`` passes over the task's fixed training sequence, measured after every epoch.

Per epoch (one metrics row, ``curve``): ``train_mse``, the authors' training loss (torch's ``MSELoss``, the mean
over outputs and steps, of the epoch's clean pass: this library's per-step ``mse`` is half the sum, so it is the
row's loss times ``2 / n_out``), and, measured after the epoch's update by a clean pass from rest, ``test_mse``
on a test sequence (another draw of the task: the authors' test sample) and, for the copy task,
``train_bits`` / ``test_bits``, the authors' error bits (outputs thresholded at 0.5 that differ from the target,
of ``steps x n_out``). The file (``OUT/<method>[+decor]/seed-<s>.json``) holds the run's ``spec``, the curve,
``diverged`` (the step, or null) and its time per step; it is written once the run ends, so a reproduction
resumes by running the runs without a file (:func:`neuro.ccn_repro.runs.pending`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import config as C

__all__ = ["TEST_SEED_OFFSET", "evaluate", "run_file", "run_one"]

#: the test sequence is the task's trial at the run's task seed plus this (a draw the training never sees)
TEST_SEED_OFFSET = 7919


def run_file(out: Path, s: dict[str, Any]) -> Path:
    return out / C.label(s["method"], s["decorrelation"]) / f"seed-{s['seed']}.json"


def _sequence(task, seed: int):
    return next(iter(task.stream(seed=seed, batch=1)))


def evaluate(net, params, seq, bits: bool) -> dict[str, float]:
    """A clean pass over ``seq`` from rest: the authors' MSE (mean over outputs and steps) and, if ``bits``,
    their error bits."""
    import torch

    from neuro.tasks.copy import error_bits

    with torch.no_grad():
        s, ys = net.init_state(params, 1), []
        dtype = next(iter(params.values())).dtype
        for x in seq.xs.to(dtype):
            s, y = net.step(params, s, x)
            ys.append(y)
        y_hat = torch.stack(ys)
        target = seq.ys.to(dtype)
        out = {"mse": float(((y_hat - target) ** 2).mean())}
        if bits:
            out["bits"] = int(error_bits(y_hat, target))
    return out


def run_one(spec: dict[str, Any], path: str | None = None, threads: int = 1) -> dict[str, Any]:
    """Train one run; write its result to ``path`` (atomically) if given, and return it."""
    import torch

    import neuro
    from neuro.ccn_repro.runs import record
    from neuro.train_config import TrainConfig

    torch.set_num_threads(threads)
    task, net, rule = C._build(spec)
    task_seed = TrainConfig(seed=spec["seed"]).seed_for("task")
    train_seq, test_seq = _sequence(task, task_seed), _sequence(task, task_seed + TEST_SEED_OFFSET)
    copy = spec["experiment"] == "copy"

    def probe(step: int, params: dict) -> dict[str, float]:
        row = {}
        if copy:
            tr = evaluate(net, params, train_seq, True)
            row["train_bits"] = tr["bits"]
        te = evaluate(net, params, test_seq, copy)
        row["test_mse"] = te["mse"]
        if copy:
            row["test_bits"] = te["bits"]
        return row

    def train():
        return neuro.train(net, rule, task, spec["steps"], progress=False, seed=spec["seed"],
                           optimizer=spec["optimizer"], lr=spec["lr"], update_every=spec["update_every"],
                           log_every=spec["epoch_steps"], dtype=spec["dtype"], engine=spec["engine"], probe=probe)

    scale = 2.0 / task.n_out  # this library's mse is half the sum over the outputs; theirs the mean
    return record(spec, path, train, lambda h: [
        {"epoch": r["step"] // spec["epoch_steps"], "train_mse": r["loss"] * scale,
         **{k: r[k] for k in ("train_bits", "test_mse", "test_bits") if k in r}} for r in h.metrics])
