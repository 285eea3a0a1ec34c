"""``neuro demo`` (``make demo``): online rules compared against BPTT, then the best spiking network on Lava.

1. **Rate network** (leaky tanh RNN, 32 units) on the add task of Marschall et al. (2020), ``y_t ~
   Bernoulli(1/2 + 1/2 x_{t-6} - 1/4 x_{t-10})``: cross-entropy floors 0.662 nats (no memory), 0.519
   (remembers ``x_{t-6}``), 0.454 (both). Rules: ``bptt`` (over chunks of 100 steps), ``tbptt`` (k = 10),
   ``rtrl``, ``uoro``, ``rflo``, ``anp-time``; 10,000 steps, 3 seeds. What it shows: BPTT, truncated BPTT and
   RTRL (exact online) go below the one-memory floor; UORO's unbiased but noisy estimate and RFLO's
   approximate one learn more slowly, between the floors; ANP in time (one noisy copy, a scalar loss
   difference) only just goes below the no-memory floor at this budget. Learning rate 3e-3, except ANP in
   time 1e-3: its estimate's variance makes larger steps end above the no-memory floor.
2. **Spiking network** (32 LIF in Lava's form: ``dynamics="lava"``, ``reset="zero"``) on a short evidence
   accumulation task (e-prop's cue accumulation with 3 cues, 310-step trials). Rules: ``bptt``,
   ``tbptt`` (k = 20), ``eprop``, ``ottt``, ``sltt``, ``anp-time``; 120 trials, 3 seeds. What it shows: the
   loss arrives only at the recall, 50 or more steps after the last cue. Rules that carry credit that far
   (BPTT; e-prop's and OTTT's eligibility traces through the membrane's 100 ms decay) can learn it; truncated
   BPTT with a 20-step window and SLTT (which drops the temporal part of the gradient altogether) cannot reach
   the cue inputs at any budget, so they learn only the readout's prior and end at chance, both at the same
   loss (the cross-entropy of a 50/50 answer on the recall steps, ln 2 x 50/310 = 0.112 per step). ANP in time
   also ends at chance at this budget: its estimate's alignment with BPTT's gradient is about 0.1 here.
3. **Deployment**: the spiking run with the lowest held-out loss is exported to Lava and run on held-out
   trials in floating point and in Loihi's fixed point (:func:`hw_targets.lava.quantize`); its accuracy
   there (a trial is correct when the readout summed over the recall steps picks the majority side) is
   printed beside torch's.

Each comparison is :func:`neuro.compare` (every rule and seed on the same budget and the same update
schedule, trained by the compiled engine, :mod:`neuro.engine`; the alignment of each rule's estimate with
BPTT's gradient measured on the side at the first, middle and last metrics rows). The estimates are summed
and applied every 10 steps on the add task (tbptt's window) and once per trial on cue accumulation (e-prop's
protocol): with Adam, a rule that gives an estimate every step and is updated every step takes 310 times as
many optimizer steps per trial as BPTT at the same learning rate, which is a different (and here unstable)
algorithm, not a comparison of gradient estimates; the tables are printed and the runs, CSV, Markdown and
plots written to ``runs/demo/rate`` and ``runs/demo/lif``. ``--quick`` runs a few hundred steps and one seed
(a smoke test of the whole path, not a result).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["COMPARISONS", "DEPLOY_TRIALS", "run_demo"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    task: str
    model: str
    rules: tuple[str, ...]
    steps: int
    quick_steps: int
    settings: dict[str, Any]
    seeds: int = 3


#: the cue-accumulation trial of the spiking comparison (3 cues, 310 steps)
CUE = dict(n_cues=3, cue_ms=50.0, spacing_ms=20.0, delay_ms=50.0, recall_ms=50.0)

COMPARISONS: dict[str, Comparison] = {
    "rate": Comparison(
        task="add", model="rate", rules=("bptt", "tbptt", "rtrl", "uoro", "rflo", "anp-time"),
        steps=10_000, quick_steps=400,
        settings=dict(hidden=32, lr={**dict.fromkeys(("bptt", "tbptt", "rtrl", "uoro", "rflo"), 3e-3), "anp-time": 1e-3},
                      batch=4, update_every=10, rule_options={"tbptt": {"k": 10}})),
    "lif": Comparison(
        task="cue-accumulation", model="lif", rules=("bptt", "tbptt", "eprop", "ottt", "sltt", "anp-time"),
        steps=310 * 120, quick_steps=310 * 2,
        settings=dict(hidden=32, lr=2e-3, batch=8, update_every=310, task_options=CUE,
                      model_options=dict(dynamics="lava", reset="zero", tau_mem=100.0),
                      rule_options={"tbptt": {"k": 20}})),
}
#: held-out trials scored on Lava (and on torch, for the comparison)
DEPLOY_TRIALS = 32


def _deploy(results, comparison: Comparison, quick: bool, out) -> dict[str, Any]:
    """Export the best spiking run to Lava (float and fixed point) and score held-out trials on each."""
    import torch

    import models
    import neuro
    from neuro.training import derive_seed

    rule, seed = results.best("eval_loss")
    task = neuro.tasks.make(comparison.task, **comparison.settings["task_options"])
    net = models.make("lif", n_in=task.n_in, n_hidden=comparison.settings["hidden"], n_out=task.n_out,
                      **comparison.settings["model_options"])
    params = {k: v.to(torch.float64) for k, v in results.trained(rule, seed).items()}
    trials = 4 if quick else DEPLOY_TRIALS
    test = task.sample(task.trial_steps, batch=trials, seed=derive_seed(seed, "deploy")).to(dtype=torch.float64)
    row: dict[str, Any] = {"rule": rule, "seed": seed, "trials": trials}
    try:
        from hw_targets.lava.accuracy import score

        for name, backend in (("torch", "torch"), ("lava", "lava"), ("lava_fixed", "lava-fixed")):
            t0 = time.perf_counter()
            tr = neuro.simulate(net, params, test.xs, backend=backend)
            row[name] = score(tr.y, test.ys, test.mask)
            row[f"{name}_s"] = time.perf_counter() - t0
            if tr.spikes is not None:
                row[f"{name}_rate_hz"] = float(tr.spikes.mean()) * 1000.0 / net.dt
    except Exception as e:  # Lava is optional for the rest of the demo: say why it did not run
        row["error"] = f"{type(e).__name__}: {e}"
    print(_deploy_line(row), file=out, flush=True)
    return row


def _deploy_line(row: dict[str, Any]) -> str:
    head = (f"Best spiking network ({row['rule']}, seed {row['seed']}) deployed to Lava, "
            f"{row['trials']} held-out trials: ")
    if "error" in row and "lava" not in row:
        return head + f"not run ({row['error']})"
    parts = [f"torch accuracy {row['torch']:.3f}", f"Lava floating point {row['lava']:.3f} ({row['lava_s']:.1f} s)"]
    if "lava_fixed" in row:
        parts.append(f"Lava fixed point (Loihi integers) {row['lava_fixed']:.3f} ({row['lava_fixed_s']:.1f} s)")
    else:
        parts.append(f"fixed point not run ({row.get('error')})")
    return head + "; ".join(parts)


def run_demo(quick: bool = False, out_dir: str | Path = "runs/demo", file=None, workers: int | None = None,
             deploy: bool = True) -> dict[str, Any]:
    """Run both comparisons and the deployment; print the tables. Returns ``{"rate": Results, "lif":
    Results, "deploy": dict}``."""
    import neuro

    out = sys.stdout if file is None else file
    report: dict[str, Any] = {}
    for name, c in COMPARISONS.items():
        steps = c.quick_steps if quick else c.steps
        seeds = 1 if quick else c.seeds
        print(f"== {name}: {c.model} on {c.task}, rules {', '.join(c.rules)}; {steps} steps x {seeds} seed(s)",
              file=out, flush=True)
        t0 = time.perf_counter()
        settings = dict(c.settings)
        settings["log_every"] = max(1, steps // (4 if quick else 10))
        if c.task == "cue-accumulation":
            settings["log_every"] = max(310, settings["log_every"] // 310 * 310)
            settings["eval_steps"] = 310 * (4 if quick else 20)
        settings["align_every"] = settings["log_every"] * 5  # at the first, the middle and the last metrics row
        res = neuro.compare(c.task, list(c.rules), seeds=seeds, steps=steps, model=c.model, out=Path(out_dir) / name,
                            progress=False, workers=workers, **settings)
        if c.task == "add":
            f = neuro.tasks.make("add").floors()
            print(f"add task floors: {f['none']:.3f} nats (no memory), {f['t1']:.3f} (remembers x[t-6]), "
                  f"{f['both']:.3f} (both)", file=out)
        print(res.markdown(), file=out)
        print(f"({time.perf_counter() - t0:.0f} s; tables and plots in {Path(out_dir) / name})\n", file=out, flush=True)
        report[name] = res
    if deploy:
        report["deploy"] = _deploy(report["lif"], COMPARISONS["lif"], quick, out)
    return report


if __name__ == "__main__":  # pragma: no cover
    run_demo(quick="--quick" in sys.argv[1:])
