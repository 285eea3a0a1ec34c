"""``neuro demo`` (``make demo``): a spiking and a rate network trained online on the add task.

The add task of Marschall et al. (2020): ``y_t ~ Bernoulli(1/2 + 1/2 x_{t-6} - 1/4 x_{t-10})``. Its
cross-entropy floors (``task.floors()``) say how much a network remembers: 0.662 nats remembering
nothing, 0.519 remembering ``x_{t-6}``, 0.454 remembering both. Each model is trained with every rule of
:data:`RULES` (extend the tuple as online rules land), and a table gives the loss averaged over the
last :data:`FINAL_WINDOW` steps beside the floors.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

__all__ = ["FINAL_WINDOW", "MODELS", "RULES", "RULE_OPTIONS", "run_demo"]

#: the rules the demo trains with, in table order
RULES: tuple[str, ...] = ("tbptt",)
#: rule hyper-parameters (a rule missing here runs with its defaults)
RULE_OPTIONS: dict[str, dict[str, Any]] = {"tbptt": {"k": 20}}
#: steps over which the final loss is averaged
FINAL_WINDOW = 500
#: a loss counts as below a floor only by more than this (nats): ~1.5 standard errors of a
#: 500-step x batch-4 mean of the per-step cross-entropy (per-step sd ~0.3 nats)
NOISE = 0.01


@dataclasses.dataclass(frozen=True)
class _Setting:
    model: dict[str, Any]  # models.make keywords (n_in / n_out come from the task)
    lr: float
    batch: int
    steps: int
    quick_steps: int


#: per model: the network and its training budget. The LIF's short time constants and strong input
#: and recurrent scales keep it spiking on the 0/1 inputs (with the defaults it stays silent).
MODELS: dict[str, _Setting] = {
    "lif": _Setting(model=dict(n_hidden=64, tau_mem=3.0, tau_syn=1.0, tau_out=1.0, input_scale=5.0,
                               rec_scale=3.0, surrogate_scale=1.0),
                    lr=3e-3, batch=4, steps=40_000, quick_steps=2_000),
    "rate": _Setting(model=dict(n_hidden=32), lr=3e-3, batch=4, steps=20_000, quick_steps=2_000),
}


def run_demo(quick: bool = False, seed: int = 0, file=None) -> list[dict[str, Any]]:
    """Train every model of :data:`MODELS` with every rule of :data:`RULES` on ``add``; print a table.

    Returns one dict per run: ``model``, ``rule``, ``steps``, ``batch``, ``hidden``, ``final_loss`` (mean
    per-step cross-entropy over the last :data:`FINAL_WINDOW` steps, nats), ``floors`` (the task's),
    ``below_no_memory`` (``final_loss`` below the no-memory floor by more than :data:`NOISE`),
    ``time_s``, ``steps_per_s``.
    """
    import models
    import neuro.rules
    import neuro.tasks
    from neuro.training import train

    out = sys.stdout if file is None else file
    task = neuro.tasks.make("add")
    floors = task.floors()
    rows = []
    for name, s in MODELS.items():
        for rule_name in RULES:
            steps = s.quick_steps if quick else s.steps
            net = models.make(name, n_in=task.n_in, n_out=task.n_out, **s.model)
            rule = neuro.rules.make(rule_name, net, **RULE_OPTIONS.get(rule_name, {}))
            t0 = time.perf_counter()
            h = train(net, rule, task, steps=steps, seed=seed, lr=s.lr, batch=s.batch, log_every=100,
                      progress=True)
            dt = time.perf_counter() - t0
            final = h.mean_loss(FINAL_WINDOW)
            rows.append({"model": name, "rule": rule_name, "steps": steps, "batch": s.batch,
                         "hidden": net.n_hidden, "final_loss": final, "floors": floors,
                         "below_no_memory": final < floors["none"] - NOISE, "time_s": dt, "steps_per_s": steps / dt})
            print(f"{name}/{rule_name}: {steps} steps, final loss {final:.3f} nats ({dt:.1f} s)", file=out, flush=True)
    print(file=out)
    print(format_table(rows, quick), file=out, flush=True)
    return rows


def format_table(rows: list[dict[str, Any]], quick: bool = False) -> str:
    """The demo's table (Markdown)."""
    f = rows[0]["floors"] if rows else {"none": float("nan"), "t1": float("nan"), "both": float("nan")}
    lines = [f"add task (Marschall et al. 2020), online, seed 0{' (quick)' if quick else ''}: cross-entropy floors "
             f"{f['none']:.3f} nats (no memory), {f['t1']:.3f} (remembers x[t-6]), {f['both']:.3f} (both); "
             f"final loss = mean over the last {FINAL_WINDOW} steps",
             "",
             "| model | rule | hidden | batch | steps | final loss | memory shown | time (s) | steps/s |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        fl = r["final_loss"]
        shown = ("x[t-6], some of x[t-10]" if fl < r["floors"]["t1"] - NOISE else
                 "some of x[t-6]" if fl < r["floors"]["none"] - NOISE else "none (at the floor)")
        lines.append(f"| {r['model']} | {r['rule']} | {r['hidden']} | {r['batch']} | {r['steps']} | {fl:.3f} | "
                     f"{shown} | {r['time_s']:.1f} | {r['steps_per_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    run_demo(quick="--quick" in sys.argv[1:])
