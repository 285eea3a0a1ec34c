"""One run of a comparison: train one rule with one seed, then measure it. Runs in a worker process.

:func:`run_one` takes a plain dict (a :class:`~neuro.comparison.harness.RunSpec` as ``asdict``) and returns
a plain dict (JSON-able), so any executor (a local process pool, Ray) can carry it. In order:

1. Build the task, the network (``n_in``/``n_out`` from the task) and the rule; ``params =
   net.init_params(seed)``.
2. Train with :func:`neuro.train` for ``steps`` steps, nothing written to disk. At every metrics row
   (``log_every``) a copy of the parameters is kept (the training hook ``probe``; its time is off the
   training clock). Peak memory: the growth of the process's peak resident set (``VmHWM``, :mod:`neuro._rss`) over
   training, above what it held after building everything and a warm-up of one sequence on a throwaway
   copy (the process is fresh for each run under the local and Ray executors, so the figure is the run's
   own; it is coarse: page-granular, and memory the allocator reuses does not show); time per step from
   the training clock.
3. Alignment along training, on the side: for each kept copy of the parameters, the rule's estimate and
   BPTT's gradient (:func:`neuro.grad_estimate`, parameters frozen) on one fixed probe sequence of
   ``align_steps`` steps, and their cosine (:func:`neuro.alignment`). Not used for learning.
4. Final figures: the training loss over the last 10% of steps (``final_loss``), and the loss and, for a
   classification task (``ce``), the accuracy of the trained network on a held-out sequence of
   ``eval_steps`` steps (``eval_loss``, ``eval_accuracy``: argmax of the output against the target on
   the steps whose mask is on).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

__all__ = ["run_job", "run_one"]


def _build(spec: dict[str, Any]):
    import models
    import neuro.rules
    import neuro.tasks

    task = neuro.tasks.make(spec["task"], **spec["task_options"])
    net = models.make(spec["model"], n_in=task.n_in, n_hidden=spec["hidden"], n_out=task.n_out,
                      **spec["model_options"])
    rule = neuro.rules.make(spec["rule"], net, loss=task.loss, **spec["rule_options"])
    return task, net, rule


def _evaluate(net, params, task, steps: int, seed: int) -> tuple[float, float | None]:
    """Mean per-step loss on a held-out sequence, and the accuracy for a ``ce`` task."""
    import torch

    from neuro import losses

    p = next(iter(params.values()))
    seq = task.sample(steps=steps, batch=1, seed=seed).to(dtype=p.dtype, device=p.device)
    fn = losses.get(task.loss)
    state = net.init_state(params, seq.batch)
    total, hits, counted = 0.0, 0, 0
    with torch.no_grad():
        for x, y, m in zip(seq.xs, seq.ys, seq.mask):
            state, y_hat = net.step(params, state, x)
            total += float(fn(y_hat, y, m))
            if task.loss == "ce" and bool(m.any()):
                hits += int((y_hat.argmax(-1) == y.argmax(-1))[m].sum())
                counted += int(m.sum())
    accuracy = hits / counted if task.loss == "ce" and counted else None
    return total / seq.steps, accuracy


def _alignment(net, rule_name: str, rule_options: dict, snapshots, probe, loss: str,
               seed: int) -> list[dict[str, Any]]:
    """Per snapshot: ``{"cosine": overall, "per_param": {key: cosine}}`` (``None`` where a norm is 0)."""
    import neuro

    def finite(c: float) -> float | None:
        return c if math.isfinite(c) else None

    out: list[dict[str, Any]] = []
    for i, params in enumerate(snapshots):
        if rule_name == "bptt":
            out.append({"cosine": 1.0, "per_param": {k: 1.0 for k in sorted(params)}})
            continue
        g_true = neuro.grad_estimate(net, params, "bptt", probe.xs, probe.ys, loss=loss, mask=probe.mask)
        g = neuro.grad_estimate(net, params, rule_name, probe.xs, probe.ys, seed=seed + i, loss=loss,
                                mask=probe.mask, **rule_options)
        cos = neuro.alignment(g, g_true)
        out.append({"cosine": finite(cos.pop("overall")), "per_param": {k: finite(v) for k, v in cos.items()}})
    return out


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one (rule, seed) run of a comparison; see the module docstring."""
    import torch

    import neuro
    from neuro.training import TrainingDiverged, derive_seed

    torch.set_num_threads(spec.get("threads", 1))
    task, net, rule = _build(spec)
    seed = spec["seed"]
    dtype = {"float32": torch.float32, "float64": torch.float64}[spec["dtype"]]
    params = net.init_params(seed, dtype=dtype)
    snapshots: list[dict] = []
    steps_at: list[int] = []

    def keep(step: int, p: dict) -> dict:
        snapshots.append(p)
        steps_at.append(step)
        return {}

    result: dict[str, Any] = {"spec": spec, "diverged": None}
    # warm-up on a throwaway copy (one sequence): lazy initialisations (autograd engine, allocator arenas,
    # the optimizer) are not the rule's memory
    warm = min(spec["steps"], task.trial_steps if task.episodic else spec["chunk"])
    try:
        neuro.train(net, rule, task, steps=warm, seed=seed, params=params, optimizer=spec["optimizer"],
                    optimizer_options=spec.get("optimizer_options", {}), lr=spec["lr"], batch=spec["batch"], chunk=spec["chunk"], progress=False, log_every=warm)
    except TrainingDiverged:
        pass
    from neuro import _rss

    base = _rss.start()
    t0 = time.perf_counter()
    try:
        history = neuro.train(net, rule, task, steps=spec["steps"], seed=seed, params=params,
                              optimizer=spec["optimizer"], lr=spec["lr"], batch=spec["batch"],
                              chunk=spec["chunk"], log_every=spec["log_every"], progress=False,
                              update_every=spec["update_every"], probe=keep if spec["align_every"] else None,
                              schedule=spec.get("schedule"), optimizer_options=spec.get("optimizer_options", {}))
    except TrainingDiverged as e:
        result.update(diverged=str(e), wall_s=time.perf_counter() - t0)
        return result
    peak = _rss.growth(base)
    result.update(
        curve=[{"step": r["step"], "loss": r["loss"]} for r in history.metrics],
        final_loss=history.mean_loss(max(1, spec["steps"] // 10)),
        time_per_step_s=history.elapsed_s / max(history.steps, 1),
        peak_mem_bytes=peak,
        n_params=net.n_params(history.params),
        params={k: v.tolist() for k, v in history.params.items()},  # the harness stores them apart (.pt)
    )
    # history.rule.net: a staged run (schedule) is evaluated with its last stage's network
    eval_loss, eval_acc = _evaluate(history.rule.net, history.params, task, spec["eval_steps"], derive_seed(seed, "eval"))
    result.update(eval_loss=eval_loss, eval_accuracy=eval_acc)
    if spec["align_every"]:
        every = spec["align_every"] // spec["log_every"]
        chosen = [i for i in range(len(snapshots)) if (i + 1) % every == 0 or i == 0]
        probe = task.sample(steps=spec["align_steps"], batch=1, seed=derive_seed(seed, "probe"))
        p = next(iter(history.params.values()))
        probe = probe.to(dtype=p.dtype, device=p.device)
        cos = _alignment(net, spec["rule"], spec["rule_options"], [snapshots[i] for i in chosen], probe, task.loss,
                         derive_seed(seed, "align") % (2**31))
        result["alignment"] = [{"step": steps_at[i], **c} for i, c in zip(chosen, cos)]
    else:
        result["alignment"] = []
    result["wall_s"] = time.perf_counter() - t0
    return result


def run_job(payload: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One job of an executor: a spec (one run) or a list of specs (seeds of one rule run as one ensemble,
    :func:`neuro.comparison.vectorised.run_group`); the list of results, in order."""
    if isinstance(payload, list):
        from .vectorised import run_group

        return run_group(payload)
    return [run_one(payload)]


def serve(result_path: str, text: str | bytes) -> int:
    """Run the job ``text`` (JSON: a spec, or a list of specs) and write the list of results to
    ``result_path`` (atomically); a run that fails writes ``{"error": "<one line>"}`` there instead (its
    traceback goes to stderr) and returns 1."""
    import json
    import traceback

    from neuro import io
    from neuro.errors import describe

    payload = json.loads(text)
    try:
        results = run_job(payload)
    except Exception as e:  # noqa: BLE001 -- reported to the caller on one line
        traceback.print_exc()
        io.write_json(result_path, {"error": describe(e)})
        return 1
    from .harness import _json_roundtrip

    io.write_json(result_path, _json_roundtrip(results))
    return 0


def _main(argv: list[str]) -> int:
    """``python -m neuro.comparison.worker RESULT.json < job.json``: :func:`serve` (the local executor starts
    its workers with :mod:`neuro.comparison._boot`, which then calls :func:`serve`)."""
    if len(argv) != 1:
        print("usage: python -m neuro.comparison.worker RESULT.json < spec.json", file=sys.stderr)
        return 2
    return serve(argv[0], sys.stdin.read())


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
