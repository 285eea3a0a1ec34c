"""``neuro bench mnist1d``: online and local learning rules on MNIST-1D read one sample per step.

Task: :class:`neuro.tasks.mnist1d.MNIST1D` (Greydanus & Kobak, ICML 2024; the data from the ``mnist1d``
package's own generator; by default 4000 training and 1000 test signals of 40 samples, ``--num-samples``): one signal per trial, fed one
sample per step, the digit counted at the last step. Networks: ``rate`` and ``lif`` (``models.make``, ``--hidden``
units, one input, ten outputs; the models' defaults but :data:`MODEL_OPTIONS`, the same for every rule on a model:
the rate RNN with Glorot initialisation, ``--rate-init``). Rules (``--rules``): ``bptt``, ``eprop``, ``ottt``, ``sltt``, ``anp-time``, each
on every model ``neuro.rules.make`` accepts it for (ottt and sltt train spiking networks only). Every run trains
``--trials`` trials of ``--batch`` signals drawn from the training split (``neuro.train``, Adam, one update per
trial), then is scored on the whole test split in order (accuracy over all 1000 test signals; the prediction is
the argmax of the output at the last step), for ``--seeds`` seeds.

Measured per run, in a worker process of its own (one torch thread): the test (and training) accuracy, the
training loss (mean cross-entropy at the counted step over the last 20% of trials), the time per training step
(CPU time of the process over the training run, robust to other processes on the cores; the wall time is in the
JSON) and the peak memory the training run added (peak resident set size after a reset, minus the resident size
before it: :mod:`neuro._rss`), after a warm-up run of two trials that compiles what the run needs.

Before the sweep, one short run per (model, rule) is timed and the sweep's projected cost printed. Learning rates:
``--lr MODEL:RULE=LR`` (or ``RULE=LR`` for every model), else a pilot per (model, rule) on a seed that is not
evaluated (:data:`PILOT_SEED`), ``--pilot-trials`` trials per candidate of :data:`GRID`, choosing the lowest
training loss (the test split is not looked at). Writes ``OUT/bench_mnist1d.json`` after every run and
``OUT/bench_mnist1d.md`` / ``.png`` at the end; ``--resume`` keeps the finished runs of the same settings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from typing import Any

from neuro.bench import _report

__all__ = ["BASELINES", "GRID", "MODEL_OPTIONS", "NO_PILOT_LR", "main", "run_one", "valid_pairs"]

MODELS = ("rate", "lif")
RULES = ("bptt", "eprop", "ottt", "sltt", "anp-time")
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # Adam learning rates tried by the pilot
NO_PILOT_LR = 3e-3  # the learning rate without a pilot (--pilot-trials 0)
#: the hyper-parameters given to ``models.make`` for every rule on each model (the models' defaults but these).
#: The rate RNN takes Glorot (xavier) initialisation, as torch's and Keras's recurrent layers scale their input
#: weights by the layer's width: its default ``init="normal"`` draws the one input's weights from N(0, 1), which
#: with MNIST-1D's unit-variance samples drives the tanh units so hard that the gradient from the signal's
#: early samples vanishes (docs/results/mnist1d.md) and the network answers from its last few samples.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {"rate": {"init": "xavier"}, "lif": {}}
PILOT_SEED = 1000
WARM_UP_TRIALS = 2
LAST_FRACTION = 0.2
#: the published test accuracies (%) on MNIST-1D (README of greydanus/mnist1d, "Comparing MNIST and MNIST-1D";
#: Greydanus & Kobak, ICML 2024), default data and with the positions shuffled
BASELINES = {"logistic regression": (32, 32), "MLP": (68, 68), "CNN": (94, 56), "GRU (bidirectional)": (91, 57),
             "human expert": (96, 30)}


def valid_pairs(models: list[str], rules: list[str], hidden: int = 8) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The (model, rule) pairs ``neuro.rules.make`` accepts, and why each other pair is refused."""
    import models as model_zoo
    import neuro

    ok, refused = [], {}
    for m in models:
        net = model_zoo.make(m, n_in=1, n_hidden=hidden, n_out=10)
        for r in rules:
            try:
                neuro.rules.make(r, net)
                ok.append((m, r))
            except (ValueError, TypeError) as e:
                refused[f"{m}:{r}"] = " ".join(str(e).split())[:200]
    return ok, refused


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (model, rule, seed, lr) on the training split and score it on the test split."""
    import torch

    import models
    import neuro
    from neuro import _rss
    from neuro.tasks.mnist1d import MNIST1D

    torch.set_num_threads(1)
    task = MNIST1D(split="train", num_samples=job.get("num_samples", 5000))
    net = models.make(job["model"], n_in=1, n_hidden=job["hidden"], n_out=10, **job.get("model_kw", {}))
    rule = neuro.rules.make(job["rule"], net)
    steps = task.trial_steps * job["trials"]
    kw = {"lr": job["lr"], "batch": job["batch"], "progress": False, "optimizer": "adam"}
    neuro.train(net, rule, task, steps=task.trial_steps * WARM_UP_TRIALS, seed=job["seed"] + 10 ** 5,
                log_every=task.trial_steps, **kw)
    base = _rss.start()
    t0, c0 = time.perf_counter(), time.process_time()
    status = "ok"
    try:
        h = neuro.train(net, rule, task, steps=steps, seed=job["seed"], log_every=max(task.trial_steps, steps // 50),
                        **kw)
    except (neuro.TrainingDiverged, FloatingPointError) as e:
        h, status = None, f"diverged: {' '.join(str(e).split())[:200]}"
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss.growth(base) / float(1 << 20)
    out = {**job, "status": status, "ms_per_step": 1e3 * cpu / steps, "wall_ms_per_step": 1e3 * wall / steps,
           "wall_s": round(wall, 2), "peak_mib": peak, "test_acc": None, "train_acc": None, "final_loss": None}
    if h is None:
        return out
    last = max(task.trial_steps, int(steps * LAST_FRACTION))
    loss = h.mean_loss(last) * task.trial_steps / task.label_steps  # CE per counted step
    accs = {}
    with torch.no_grad():
        for split in ("test", "train") if job["phase"] == "main" else ():
            seq = task.whole(split)
            accs[split] = task.accuracy(neuro.simulate(net, h.params, seq.xs).y, seq)
    if not math.isfinite(loss):
        out["status"] = "diverged"
    return {**out, "final_loss": loss if math.isfinite(loss) else None,
            "test_acc": accs.get("test"), "train_acc": accs.get("train")}


def _key(r: dict[str, Any]) -> tuple:
    """A run's identity for ``--resume``: its settings, the model's hyper-parameters included (a run recorded
    without ``model_kw`` was made with the model's defaults)."""
    return (*(r[k] for k in ("phase", "model", "rule", "seed", "lr", "hidden", "batch", "trials")),
            json.dumps(r.get("model_kw", {}), sort_keys=True))


def _log(r: dict[str, Any]) -> None:
    acc = "" if r["test_acc"] is None else f" test {100 * r['test_acc']:.1f}%"
    loss = "diverged" if r["final_loss"] is None else f"loss {r['final_loss']:.3f}"
    print(f"[{r['phase']}] {r['model']:<4} {r['rule']:<8} seed={r['seed']:<4} lr={r['lr']:<6g} {loss}{acc} "
          f"{r['ms_per_step']:.3f} ms/step {r['peak_mib']:.1f} MiB ({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def _parse_lr(items: list[str]) -> dict[str, float]:
    return _report.parse_lrs(items, "neuro bench mnist1d", "RULE=LR or MODEL:RULE=LR")


def _pool(jobs: int, num_samples: int):
    """A pool of ``jobs`` worker processes forked after the data were made (each inherits them)."""
    from neuro.tasks.mnist1d import MNIST1D

    MNIST1D(num_samples=num_samples).arrays()  # the data, made once here
    return concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))


def summarise(results: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per (model, rule): mean, s.e. and values of the test accuracy, and medians of time and memory."""
    out: dict[str, dict[str, Any]] = {}
    for m, r in pairs:
        rs = [x for x in results if x["model"] == m and x["rule"] == r]
        ok = [x for x in rs if x["test_acc"] is not None]
        accs = [x["test_acc"] for x in ok]
        mean, se = _report.mean_se(accs) if accs else (None, None)
        out[f"{m}:{r}"] = {
            "runs": len(rs), "diverged": len(rs) - len(ok), "test_acc": accs,
            "test_acc_mean": mean, "test_acc_se": se,
            "train_acc_mean": statistics.fmean(x["train_acc"] for x in ok) if ok else None,
            "final_loss_mean": statistics.fmean(x["final_loss"] for x in ok) if ok else None,
            "ms_per_step_median": statistics.median(x["ms_per_step"] for x in rs) if rs else None,
            "peak_mib_median": statistics.median(x["peak_mib"] for x in rs) if rs else None}
    return out


def _pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def _options(model_kw: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{m} " + (", ".join(f"{k}={v}" for k, v in kw.items()) or "none") for m, kw in model_kw.items())


def markdown(report: dict[str, Any]) -> str:
    s, summ = report["settings"], report["summary"]
    rows = []
    for key, v in summ.items():
        m, r = key.split(":")
        rows.append([m, r, s["chosen_lr"].get(key, "–"), _pct(v["test_acc_mean"], v["test_acc_se"]),
                     _pct(v["train_acc_mean"]), "–" if v["final_loss_mean"] is None else f"{v['final_loss_mean']:.3f}",
                     "–" if v["ms_per_step_median"] is None else f"{v['ms_per_step_median']:.3f}",
                     "–" if v["peak_mib_median"] is None else f"{v['peak_mib_median']:.1f}",
                     f"{v['runs'] - v['diverged']}/{v['runs']}"])
    table = _report.md_table(["model", "rule", "lr (Adam)", "test acc % (mean ± s.e.)", "train acc %",
                              "train loss", "ms/step", "peak MiB", "runs ok"], rows)
    base = _report.md_table(["model (Greydanus & Kobak)", "test acc %", "shuffled positions"],
                            [[k, v[0], v[1]] for k, v in BASELINES.items()])
    m = report["machine"]
    lrs = ("fixed" if not s["pilot_trials"] else f"from a pilot of {s['pilot_trials']} trials per candidate on seed "
           f"{PILOT_SEED} (not evaluated), the lowest training loss of {', '.join(map(str, GRID))}")
    return (f"# neuro bench mnist1d\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n"
            f"Settings: {s['hidden']} hidden units, batch {s['batch']}, {s['trials']} trials "
            f"({s['trials'] * s['batch'] / s['n_train']:.1f} epochs of the {s['n_train']} training signals, "
            f"{s['trials'] * s['batch'] * 40} sample-steps), {s['seeds']} seeds (0..{s['seeds'] - 1}); models' "
            f"options (beside their defaults): {_options(s.get('model_options', {}))}; learning "
            f"rates {lrs}.\n\n"
            f"{table}\n\nms/step: CPU time of the worker process per training step (one torch thread, batch "
            f"{s['batch']}), median over seeds; peak MiB: the peak resident memory the training run added, median "
            f"over seeds.\n\nPublished test accuracies (README of greydanus/mnist1d; Greydanus & Kobak, ICML 2024), "
            f"models that see the whole signal at once (the GRU is bidirectional and reads all 40 hidden states):"
            f"\n\n{base}\n\nMachine: {m['cpu_model']}, {m['cores']} cores shared with other work, {s['jobs']} "
            f"worker(s) of one torch thread; torch {m['torch']}, {m['date']}; sweep {report['seconds']:.0f} s.\n\n"
            f"Command: `{report['command']}`\n")


def plot(path: str, report: dict[str, Any]) -> None:
    lines = [(name, acc) for name, (acc, _) in BASELINES.items()
             if name in ("logistic regression", "MLP", "GRU (bidirectional)")]
    _report.accuracy_plot(path, report["summary"], chance=10, ylabel="test accuracy (%)", lines=lines,
                          title=f"MNIST-1D, one sample per step, n={report['settings']['hidden']}",
                          label=lambda k: k.replace(":", "\n"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="neuro bench mnist1d", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="signals per trial (one Adam update per trial)")
    ap.add_argument("--trials", type=int, default=1000, help="training trials per run")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=5000,
                    help="MNIST-1D's num_samples (80%% train, 20%% test; default the paper's 5000)")
    ap.add_argument("--rate-init", default=MODEL_OPTIONS["rate"]["init"], choices=("normal", "xavier"),
                    help="the rate RNN's init (models/rate.py; default %(default)s, see MODEL_OPTIONS)")
    ap.add_argument("--lr", nargs="+", default=[], metavar="[MODEL:]RULE=LR", help="fixed learning rates (no pilot)")
    ap.add_argument("--pilot-trials", type=int, default=200, help=f"trials per pilot run (0: no pilot, lr {NO_PILOT_LR:g})")
    ap.add_argument("--estimate-trials", type=int, default=20, help="trials timed per (model, rule); 0: none")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of OUT/bench_mnist1d.json")
    ap.add_argument("--quick", action="store_true", help="tiny defaults for tests (8 units, batch 4, 3 trials, 2 seeds, "
                    "pilots and estimates of 2 trials); options given explicitly still apply")
    if ap.parse_known_args(argv)[0].quick:  # tiny defaults; options given still apply
        ap.set_defaults(hidden=8, batch=4, trials=3, seeds=2, pilot_trials=2, estimate_trials=2)
    args = ap.parse_args(argv)
    for name in ("hidden", "batch", "trials", "seeds", "jobs", "num_samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 1")
    if args.num_samples < 50:
        ap.error(f"--num-samples={args.num_samples} is invalid: must be >= 50 (num_samples // 10 signals per digit)")
    for name in ("pilot_trials", "estimate_trials"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 0")
    fixed = _parse_lr(args.lr)
    pairs, refused = valid_pairs(args.models, args.rules)
    for key in fixed:
        if key not in args.rules and key not in {f"{m}:{r}" for m, r in pairs}:
            ap.error(f"--lr {key}=...: {key!r} is invalid: expected a rule of --rules or MODEL:RULE of a pair run")
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bench_mnist1d.json")
    cmd = shlex.join(["neuro", "bench", "mnist1d", *argv])
    t_start = time.perf_counter()
    base = {"hidden": args.hidden, "batch": args.batch, "num_samples": args.num_samples}
    model_kw = {**MODEL_OPTIONS, "rate": {**MODEL_OPTIONS["rate"], "init": args.rate_init}}
    done: dict[tuple, dict[str, Any]] = {}
    if args.resume and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        done = {_key(r): r for r in old.get("pilot", []) + old.get("results", [])}
    report: dict[str, Any] = {"benchmark": "mnist1d", "machine": _report.machine_info(1), "command": cmd,
                              "refused": refused, "cost_ms_per_step": {}, "pilot": [], "results": [], "summary": {}}
    chosen: dict[str, float] = {}
    from neuro.tasks.mnist1d import MNIST1D

    n_train = len(MNIST1D(num_samples=args.num_samples).arrays()[1])

    def write() -> None:
        report["settings"] = {**base, "trials": args.trials, "seeds": args.seeds, "pairs": [f"{m}:{r}" for m, r in pairs],
                              "fixed_lr": fixed, "pilot_trials": args.pilot_trials, "pilot_seed": PILOT_SEED,
                              "grid": list(GRID), "chosen_lr": chosen, "optimizer": "adam", "jobs": args.jobs,
                              "n_train": n_train, "quick": args.quick, "label_steps": 1,
                              "model_options": model_kw}
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        _report.write_json(json_path, report)

    with _pool(args.jobs, args.num_samples) as pool:
        def run_all(jobs: list[dict[str, Any]], into: list[dict[str, Any]]) -> None:
            _report.run_jobs(pool, run_one, jobs, done, _key, _log, into, write)

        if args.estimate_trials:
            est: list[dict[str, Any]] = []
            run_all([{**base, "phase": "estimate", "model": m, "model_kw": model_kw[m], "rule": r, "seed": PILOT_SEED,
                      "lr": GRID[0], "trials": args.estimate_trials} for m, r in pairs], est)
            report["cost_ms_per_step"] = {f"{x['model']}:{x['rule']}": x["ms_per_step"] for x in est}
            n_pilot = sum(1 for m, r in pairs if f"{m}:{r}" not in fixed and r not in fixed) * len(GRID)
            total = sum(x["ms_per_step"] for x in est) * 40 / 1e3 * (args.trials * args.seeds)
            pilot = sum(x["ms_per_step"] for x in est) * 40 / 1e3 * args.pilot_trials * len(GRID) * (n_pilot > 0)
            print("estimated cost, ms/step: " + ", ".join(f"{k} {v:.3f}" for k, v in report["cost_ms_per_step"].items())
                  + f"\nprojected: sweep {total / 60:.1f} core-minutes ({len(pairs)} pairs x {args.seeds} seeds x "
                  f"{args.trials} trials of {args.batch}), pilots {pilot / 60:.1f} core-minutes; wall about "
                  f"{(total + pilot) / 60 / args.jobs:.1f} min on {args.jobs} worker(s) (evaluation and set-up not "
                  f"included)", file=sys.stderr, flush=True)
        pilots = [{**base, "phase": "pilot", "model": m, "model_kw": model_kw[m], "rule": r, "seed": PILOT_SEED, "lr": lr,
                   "trials": args.pilot_trials} for m, r in pairs
                  if f"{m}:{r}" not in fixed and r not in fixed and args.pilot_trials for lr in GRID]
        run_all(pilots, report["pilot"])
        for m, r in pairs:
            key = f"{m}:{r}"
            if key in fixed or r in fixed:
                chosen[key] = fixed.get(key, fixed.get(r))
            elif not args.pilot_trials:
                chosen[key] = NO_PILOT_LR
            else:
                ok = [x for x in report["pilot"] if (x["model"], x["rule"]) == (m, r) and x["final_loss"] is not None]
                chosen[key] = min(ok, key=lambda x: x["final_loss"])["lr"] if ok else GRID[0]
        for s in range(args.seeds):  # seed by seed: the report after each holds whole seeds
            run_all([{**base, "phase": "main", "model": m, "model_kw": model_kw[m], "rule": r, "seed": s,
                       "lr": chosen[f"{m}:{r}"],
                      "trials": args.trials} for m, r in pairs], report["results"])
            report["results"].sort(key=lambda x: (x["model"], x["rule"], x["seed"]))
            report["summary"] = summarise(report["results"], pairs)
            write()
            text = markdown(report)
            _report.write_atomic(os.path.join(args.out, "bench_mnist1d.md"), text)
            plot(os.path.join(args.out, "bench_mnist1d.png"), report)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
