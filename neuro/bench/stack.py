"""``neuro bench stack``: a 2-layer sparse recurrent LIF network on cue accumulation, trained by each rule.

Task: :class:`neuro.tasks.cue_accumulation.CueAccumulation` (Bellec et al. 2020, Nature Communications 11:3625,
the e-prop evidence-accumulation task: 40 Poisson inputs in four groups, the side with more cues to be reported
on the recall steps), shortened by default to fit a CPU budget (:data:`TASK_OPTIONS`: 3 cues of 50 ms every
70 ms, a 50 ms delay and a 50 ms recall, 310 steps of 1 ms; the paper's trial has 7 cues and a 1050 ms delay,
2250 steps); ``--task KEY=VALUE`` changes any field. Network: ``models.make("lif", n_in=40, n_hidden=(256, 256),
n_out=2, connectivity=0.1, feedforward_scale=S)`` (``--hidden``, ``--connectivity``, ``--feedforward-scale``): a
stack of two LIF layers, each recurrent matrix random with probability 0.1, layer 2 reading layer 1's spikes of
the same step through its feed-forward matrix scaled by S at initialisation (default :data:`FEEDFORWARD_SCALE`,
chosen so that layer 2 fires at about layer 1's rate on this task's input at initialisation: 5.1 Hz against
5.3 Hz with S = 15, where S = 1 gives 3.0 Hz). Rules (``--rules``, any name of ``neuro.rules``; default
``bptt``, ``eprop``, ``ottt``, ``sltt``, ``anp-time``): a rule that refuses the stack (``neuro.rules.make``
raising ``ValueError``, ``TypeError`` or ``NotImplementedError``) is recorded with its message as the row's
outcome and the sweep goes on.

Every run trains ``--trials`` trials of ``--batch`` trials side by side through ``neuro.train`` (the torch path:
stacks and sparse networks run the rules' definitions; Adam, the estimates summed over the trial and applied
once per trial, e-prop's protocol), then is scored on ``--test-trials`` held-out trials (a seed no training run
draws): a trial is correct when the readout summed over its recall steps (the steps the task's mask counts)
picks the majority side, the score of ``hw_targets.lava.accuracy`` (:func:`recall_accuracy`). Measured per run,
in a fresh worker process of its own (one torch thread), after a warm-up (one trial of the same rule on a stack
of 8 units per layer, batch 1) that loads and compiles what the run needs: the time per training step (CPU time of the process over the training run; the
wall time is in the JSON), the peak memory the training run added to the process (:mod:`neuro._rss`), the
training loss (cross-entropy per recall step over the last 20% of trials) and each layer's firing rate (Hz, on the held-out trials) before and after training.

Learning rates: ``--lr RULE=LR``, else a pilot per rule on a seed that is not evaluated (:data:`PILOT_SEED`),
``--pilot-trials`` trials per candidate of :data:`GRID`, choosing the lowest training loss. Before the sweep one
short run per rule is timed and the projected cost printed. Writes ``OUT/stack.json`` after every run
(atomically) and ``OUT/stack.md`` / ``.png`` after every seed; ``--resume`` keeps the finished runs of the same
settings (a run its rule refused is tried again). The report is regenerable: the hand-written analysis between
:data:`neuro.bench.neurobench.ANALYSIS_BEGIN` and ``ANALYSIS_END`` is kept by every rewrite.
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

__all__ = ["FEEDFORWARD_SCALE", "GRID", "RULES", "TASK_OPTIONS", "main", "recall_accuracy", "run_one"]

RULES = ("bptt", "eprop", "ottt", "sltt", "anp-time")
GRID = (1e-3, 3e-3, 1e-2)  # Adam learning rates tried by the pilot
NO_PILOT_LR = 3e-3  # the learning rate without a pilot (--pilot-trials 0)
#: the cue-accumulation trial (310 steps), shorter than the paper's (2250) to fit a CPU budget
TASK_OPTIONS: dict[str, Any] = dict(n_cues=3, cue_ms=50.0, spacing_ms=20.0, delay_ms=50.0, recall_ms=50.0)
HIDDEN = (256, 256)
CONNECTIVITY = 0.1
#: layer 2's feed-forward scale: its rate at initialisation on this task's input is about layer 1's
FEEDFORWARD_SCALE = 15.0
PILOT_SEED = 1000
TEST_SEED = 10 ** 6  # held-out trials: seed TEST_SEED (no training run draws it)
TEST_CHUNK = 64  # held-out trials simulated at once
WARM_UP_UNITS = 8
LAST_FRACTION = 0.2
REFUSALS = (ValueError, TypeError, NotImplementedError)


def recall_accuracy(y: Any, seq: Any) -> float:
    """Fraction of trials of ``seq`` whose readout ``y`` [T, B, 2] summed over the counted (recall) steps picks
    the class the target picks there (``hw_targets.lava.accuracy.score``; Bellec et al. 2020's decision)."""
    m = seq.mask.to(y.dtype)[..., None]
    pred = (y * m).sum(0).argmax(-1)
    target = (seq.ys.to(y.dtype) * m).sum(0).argmax(-1)
    return float((pred == target).double().mean())


def _net(job: dict[str, Any]):
    import models

    return models.make("lif", n_in=40, n_hidden=tuple(job["hidden"]), n_out=2, connectivity=job["connectivity"],
                       feedforward_scale=job["feedforward_scale"])


def _task(job: dict[str, Any]):
    from neuro import tasks

    return tasks.make("cue-accumulation", **job["task"])


def refusal(rule: str, job: dict[str, Any]) -> str | None:
    """``neuro.rules.make``'s message if it refuses ``rule`` on the job's network, else None."""
    import neuro

    try:
        neuro.rules.make(rule, _net(job))
    except REFUSALS as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return None


def _score(net, params, task, n: int) -> tuple[float, list[float]]:
    """Accuracy on ``n`` held-out trials and each layer's firing rate (Hz) there."""
    import torch

    import neuro

    correct, spikes, seen, steps = 0.0, [0.0] * len(net.slices), 0, task.trial_steps
    with torch.no_grad():
        for k, start in enumerate(range(0, n, TEST_CHUNK)):
            b = min(TEST_CHUNK, n - start)
            seq = task.sample(steps, batch=b, seed=TEST_SEED + k)
            tr = neuro.simulate(net, params, seq.xs)
            correct += recall_accuracy(tr.y, seq) * b
            for i, s in enumerate(net.slices):
                spikes[i] += float(tr.spikes[..., s].double().mean()) * b
            seen += b
    hz = 1000.0 / task.dt_ms
    return correct / seen, [x / seen * hz for x in spikes]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (rule, seed, lr) on the job's stack and task; score it on held-out trials (phase "main")."""
    import torch

    import neuro
    from neuro import _rss

    torch.set_num_threads(1)
    task, net = _task(job), _net(job)
    out = {**job, "status": "ok", "ms_per_step": None, "wall_ms_per_step": None, "wall_s": None, "peak_mib": None,
           "test_acc": None, "final_loss": None, "rate_hz": None, "rate_init_hz": None}
    try:
        rule = neuro.rules.make(job["rule"], net)
    except REFUSALS as e:
        return {**out, "status": f"refused: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    T = task.trial_steps
    steps = T * job["trials"]
    kw = {"lr": job["lr"], "batch": job["batch"], "progress": False, "optimizer": "adam", "update_every": T}
    try:
        # the warm-up (one trial of a stack of WARM_UP_UNITS units per layer, batch 1) loads and compiles what the
        # run needs; the peak is measured from after it, so that it holds what the run allocates (a trial's
        # graph, a rule's traces), not the compilers' own memory, and none of that was allocated before
        small = _net({**job, "hidden": [min(WARM_UP_UNITS, n) for n in job["hidden"]]})
        neuro.train(small, neuro.rules.make(job["rule"], small), task, steps=T, seed=job["seed"] + 10 ** 5,
                    log_every=T, **{**kw, "batch": 1})
        base = _rss.start()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            h = neuro.train(net, rule, task, steps=steps, seed=job["seed"], log_every=T, **kw)
        except (neuro.TrainingDiverged, FloatingPointError) as e:
            h, out["status"] = None, f"diverged: {' '.join(str(e).split())[:200]}"
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    except REFUSALS as e:  # a rule that accepts the stack but fails on it when run
        return {**out, "status": f"refused: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    out.update(ms_per_step=1e3 * cpu / steps, wall_ms_per_step=1e3 * wall / steps, wall_s=round(wall, 2),
               peak_mib=_rss.growth(base) / float(1 << 20))
    if h is None:
        return out
    out["engine"] = h.engine  # compiled or torch: what the time per step was measured on
    loss = h.mean_loss(max(T, int(steps * LAST_FRACTION))) * T / round(task.recall_ms / task.dt_ms)  # per recall step
    if not math.isfinite(loss):
        return {**out, "status": "diverged"}
    out["final_loss"] = loss
    if job["phase"] == "main":
        out["test_acc"], out["rate_hz"] = _score(net, h.params, task, job["test_trials"])
        out["rate_init_hz"] = _score(net, net.init_params(job["seed"]), task, min(job["test_trials"], TEST_CHUNK))[1]
    return out


def _key(r: dict[str, Any]) -> str:
    """A run's identity for ``--resume``: every setting it was made with."""
    keys = ("phase", "rule", "seed", "lr", "hidden", "connectivity", "feedforward_scale", "batch", "trials",
            "test_trials", "task")
    return json.dumps({k: r.get(k) for k in keys}, sort_keys=True)


def _log(r: dict[str, Any]) -> None:
    if r["ms_per_step"] is None:
        print(f"[{r['phase']}] {r['rule']:<8} seed={r['seed']}: {r['status']}", file=sys.stderr, flush=True)
        return
    acc = "" if r["test_acc"] is None else f" test {100 * r['test_acc']:.1f}%"
    rates = "" if r["rate_hz"] is None else " rates " + "/".join(f"{x:.1f}" for x in r["rate_hz"]) + " Hz"
    loss = r["status"] if r["final_loss"] is None else f"loss {r['final_loss']:.3f}"
    print(f"[{r['phase']}] {r['rule']:<8} seed={r['seed']:<4} lr={r['lr']:<6g} {loss}{acc}{rates} "
          f"{r['ms_per_step']:.2f} ms/step {r['peak_mib']:.1f} MiB ({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def _parse_lr(items: list[str]) -> dict[str, float]:
    return _report.parse_lrs(items, "neuro bench stack", "RULE=LR")


def _parse_task(items: list[str]) -> dict[str, Any]:
    """``--task KEY=VALUE`` items over :data:`TASK_OPTIONS`, checked by making the task."""
    import dataclasses

    from neuro.tasks.cue_accumulation import CueAccumulation

    fields = {f.name: f.type for f in dataclasses.fields(CueAccumulation)}
    out = dict(TASK_OPTIONS)
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"neuro bench stack: --task {item!r} is invalid: expected KEY=VALUE with KEY one of "
                             f"{', '.join(fields)}")
        try:
            out[key] = int(val) if key in ("n_cues", "channels") else float(val)
        except ValueError:
            raise SystemExit(f"neuro bench stack: --task {item!r} is invalid: {val!r} is not a number") from None
    if out.get("channels", 10) != 10:
        raise SystemExit(f"neuro bench stack: --task channels={out['channels']} is invalid: the network reads 40 "
                         "inputs (channels=10)")
    try:
        CueAccumulation(**out)
    except ValueError as e:
        raise SystemExit(f"neuro bench stack: --task: {e}") from None
    return out


def summarise(results: list[dict[str, Any]], rules: list[str], refused: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per rule: the outcome, mean, s.e. and values of the test accuracy, medians of time, memory and rates."""
    out: dict[str, dict[str, Any]] = {}
    for r in rules:
        rs = [x for x in results if x["rule"] == r]
        ok = [x for x in rs if x["test_acc"] is not None]
        timed = [x for x in rs if x["ms_per_step"] is not None]
        accs = [x["test_acc"] for x in ok]
        mean, se = _report.mean_se(accs) if accs else (None, None)
        statuses = sorted({x["status"] for x in rs if x["status"] != "ok"})
        outcome = refused.get(r) or ("; ".join(statuses) if statuses and not ok else "ok" if ok else "not run")

        def med(f: str, i: int | None = None, xs: list = ok) -> float | None:
            v = [x[f] if i is None else x[f][i] for x in xs if x[f] is not None]
            return statistics.median(v) if v else None

        out[r] = {"outcome": outcome, "runs": len(rs), "ok": len(ok), "test_acc": accs, "test_acc_mean": mean,
                  "test_acc_se": se,
                  "final_loss_mean": statistics.fmean(x["final_loss"] for x in ok) if ok else None,
                  "ms_per_step_median": med("ms_per_step", xs=timed), "peak_mib_median": med("peak_mib", xs=timed),
                  "engine": "/".join(sorted({x["engine"] for x in timed if x.get("engine")})) or None,
                  "rate_hz_median": [med("rate_hz", i) for i in range(2)] if ok else None,
                  "rate_init_hz_median": [med("rate_init_hz", i) for i in range(2)] if ok else None}
    return out


def _f(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _pct(x: float | None, se: float | None = None) -> str:
    return "–" if x is None else f"{100 * x:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def _rates(v: list[float | None] | None) -> str:
    return "–" if not v else " / ".join(_f(x, ".1f") for x in v)


def markdown(report: dict[str, Any], analysis: str = "") -> str:
    from neuro.bench.neurobench import ANALYSIS_BEGIN, ANALYSIS_END

    s, summ = report["settings"], report["summary"]
    rows = [[r, s["chosen_lr"].get(r, "–"), _pct(v["test_acc_mean"], v["test_acc_se"]),
             _f(v["final_loss_mean"], ".3f"), _rates(v["rate_init_hz_median"]), _rates(v["rate_hz_median"]),
             _f(v["ms_per_step_median"], ".2f"), v.get("engine") or "–", _f(v["peak_mib_median"], ".1f"),
             f"{v['ok']}/{v['runs']}"]
            for r, v in summ.items()]
    table = _report.md_table(["rule", "lr (Adam)", "test acc % (mean ± s.e.)", "train loss",
                              "rate Hz L1 / L2 (init)", "rate Hz L1 / L2 (trained)", "ms/step", "engine", "peak MiB",
                              "runs ok"], rows)
    notes = [f"- **{r}**: {v['outcome']}" for r, v in summ.items() if v["outcome"] != "ok"]
    m, t = report["machine"], s["task"]
    lrs = ("fixed" if not s["pilot_trials"] else f"from a pilot of {s['pilot_trials']} trials per candidate on seed "
           f"{PILOT_SEED} (not evaluated), the lowest training loss of {', '.join(map(str, GRID))}")
    text = (f"# neuro bench stack\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n"
            f"Settings: LIF stack of {' + '.join(map(str, s['hidden']))} units, connectivity {s['connectivity']}, "
            f"feed-forward scale {s['feedforward_scale']:g}; task "
            f"{', '.join(f'{k}={v:g}' for k, v in t.items())} ({s['trial_steps']} steps a trial, chance 50%); "
            f"batch {s['batch']}, {s['trials']} training trials, one Adam update per trial; {s['seeds']} seeds "
            f"(0..{s['seeds'] - 1}); {s['test_trials']} held-out trials; learning rates {lrs}.\n\n{table}\n\n"
            + ("Outcomes other than ok:\n\n" + "\n".join(notes) + "\n\n" if notes else "")
            + f"test acc: the recall decision (readout summed over the recall steps) on the held-out trials; train "
            f"loss: cross-entropy per recall step over the last 20% of training trials (chance ln 2 = 0.693); "
            f"rates: each layer's mean firing rate on the held-out trials at initialisation and after training, "
            f"median over seeds; ms/step: CPU time of the worker process per training step (one torch thread, "
            f"batch {s['batch']}), median over seeds; engine: what the training ran on (the compiled engine or the torch "
            f"path, `TrainConfig.engine` \"auto\"); peak MiB: the peak resident memory the training run added to "
            f"its fresh worker process after a warm-up on a small stack, median over seeds.\n\nMachine: {m['cpu_model']}, {m['cores']} cores shared with other work, "
            f"{s['jobs']} worker(s) of one torch thread; torch {m['torch']}, {m['date']}; sweep "
            f"{report['seconds']:.0f} s.\n\nCommand: `{report['command']}`\n\n")
    return text + f"{ANALYSIS_BEGIN}\n{analysis or '## Analysis' + chr(10) + chr(10) + '(to be written)'}\n{ANALYSIS_END}\n"


def plot(path: str, report: dict[str, Any]) -> None:
    s = report["settings"]
    _report.accuracy_plot(path, report["summary"], chance=50, ylabel="held-out accuracy (%)",
                          title=f"cue accumulation, LIF stack {'+'.join(map(str, s['hidden']))}, p={s['connectivity']}")


def _phase_wall(costs: list[float], jobs: int) -> float:
    """The projected wall time of runs of ``costs`` seconds on ``jobs`` workers: the longer of their share of
    the workers and the longest run (a phase ends when its last run does)."""
    return max(sum(costs) / jobs, max(costs, default=0.0))


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected layer sizes N1,N2,... each >= 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    import neuro

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="neuro bench stack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=neuro.rules.available(), metavar="RULE")
    ap.add_argument("--hidden", type=_hidden, default=HIDDEN, help="layer sizes (default 256,256)")
    ap.add_argument("--connectivity", type=float, default=CONNECTIVITY, help="probability of a recurrent synapse")
    ap.add_argument("--feedforward-scale", type=float, default=FEEDFORWARD_SCALE,
                    help="scale of layer 2's feed-forward matrix at init (default %(default)s)")
    ap.add_argument("--task", nargs="+", default=[], metavar="KEY=VALUE", help="cue-accumulation options over "
                    f"the defaults {TASK_OPTIONS}")
    ap.add_argument("--batch", type=int, default=16, help="trials side by side (one Adam update per trial)")
    ap.add_argument("--trials", type=int, default=120, help="training trials per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-trials", type=int, default=512, help="held-out trials scored per run")
    ap.add_argument("--lr", nargs="+", default=[], metavar="RULE=LR", help="fixed learning rates (no pilot)")
    ap.add_argument("--pilot-trials", type=int, default=30, help=f"trials per pilot run (0: no pilot, lr {NO_PILOT_LR:g})")
    ap.add_argument("--estimate-trials", type=int, default=2, help="trials timed per rule; 0: none")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of OUT/stack.json")
    ap.add_argument("--quick", action="store_true", help="tiny defaults for tests (layers of 8, batch 2, 2 trials, "
                    "2 seeds, 8 held-out trials, no pilot or estimate, a 3-cue trial of 37 steps); options given "
                    "explicitly still apply")
    if ap.parse_known_args(argv)[0].quick:
        ap.set_defaults(hidden=(8, 8), batch=2, trials=2, seeds=2, test_trials=8, pilot_trials=0, estimate_trials=0,
                        task=["cue_ms=5", "spacing_ms=2", "delay_ms=6", "recall_ms=10"])
    args = ap.parse_args(argv)
    for name in ("batch", "trials", "seeds", "jobs", "test_trials"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 1")
    for name in ("pilot_trials", "estimate_trials"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: must be >= 0")
    if not 0 < args.connectivity <= 1:
        ap.error(f"--connectivity={args.connectivity} is invalid: must be in (0, 1]")
    if not args.feedforward_scale > 0:
        ap.error(f"--feedforward-scale={args.feedforward_scale} is invalid: must be > 0")
    fixed = _parse_lr(args.lr)
    for key in fixed:
        if key not in args.rules:
            ap.error(f"--lr {key}=...: {key!r} is invalid: expected a rule of --rules ({', '.join(args.rules)})")
    task_kw = _parse_task(args.task)
    base = {"hidden": list(args.hidden), "connectivity": args.connectivity, "feedforward_scale": args.feedforward_scale,
            "batch": args.batch, "task": task_kw, "test_trials": args.test_trials}
    T = _task(base).trial_steps
    refused = {r: msg for r in args.rules if (msg := refusal(r, base)) is not None}
    for r, msg in refused.items():
        print(f"neuro bench stack: {r} refuses the stack ({msg}); recorded as its outcome", file=sys.stderr)
    rules = [r for r in args.rules if r not in refused]
    os.makedirs(args.out, exist_ok=True)
    json_path, md_path = os.path.join(args.out, "stack.json"), os.path.join(args.out, "stack.md")
    cmd = shlex.join(["neuro", "bench", "stack", *argv])
    t_start = time.perf_counter()
    done: dict[str, dict[str, Any]] = {}
    if args.resume and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        done = {_key(r): r for r in old.get("pilot", []) + old.get("results", [])  # a refusal is tried again
                if not r["status"].startswith("refused")}
    report: dict[str, Any] = {"benchmark": "stack", "machine": _report.machine_info(1), "command": cmd,
                              "refused": refused, "cost_ms_per_step": {}, "projection": {}, "pilot": [],
                              "results": [], "summary": {}}
    chosen: dict[str, float] = {}

    def write() -> None:
        report["settings"] = {**base, "trials": args.trials, "seeds": args.seeds, "rules": list(args.rules),
                              "fixed_lr": fixed, "pilot_trials": args.pilot_trials, "pilot_seed": PILOT_SEED,
                              "grid": list(GRID), "chosen_lr": chosen, "optimizer": "adam", "update_every": T,
                              "jobs": args.jobs, "trial_steps": T, "test_seed": TEST_SEED, "quick": args.quick}
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        _report.write_json(json_path, report)

    # each run in a fresh process: one that ran a job before holds memory a later job reuses unseen by its peak
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                max_tasks_per_child=1) as pool:
        def run_all(jobs: list[dict[str, Any]], into: list[dict[str, Any]]) -> None:
            _report.run_jobs(pool, run_one, jobs, done, _key, _log, into, write)

        pilot_rules = [r for r in rules if r not in fixed and args.pilot_trials]
        if args.estimate_trials and rules:
            est: list[dict[str, Any]] = []
            run_all([{**base, "phase": "estimate", "rule": r, "seed": PILOT_SEED, "lr": GRID[0],
                      "trials": args.estimate_trials} for r in rules], est)
            cost = {x["rule"]: x["ms_per_step"] for x in est if x["ms_per_step"] is not None}
            report["cost_ms_per_step"] = cost
            trial_s = {r: ms * T / 1e3 for r, ms in cost.items()}  # CPU s per training trial of each rule
            pilot_jobs = [trial_s[r] * args.pilot_trials for r in pilot_rules if r in trial_s
                          for _ in GRID]
            seed_jobs = [trial_s[r] * args.trials for r in trial_s]
            main_s, pilot_s = sum(seed_jobs) * args.seeds, sum(pilot_jobs)
            wall = _phase_wall(pilot_jobs, args.jobs) + args.seeds * _phase_wall(seed_jobs, args.jobs)
            report["projection"] = {"main_core_s": main_s, "pilot_core_s": pilot_s, "wall_s": wall}
            print("estimated cost, ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items())
                  + f"\nprojected: sweep {main_s / 60:.1f} core-minutes ({len(trial_s)} rules x {args.seeds} seeds x "
                  f"{args.trials} trials of {args.batch} x {T} steps), pilots {pilot_s / 60:.1f} core-minutes; "
                  f"wall about {wall / 60:.1f} min on {args.jobs} worker(s) (the pilots, then seed by seed: each phase "
                  f"lasts its longest run at least; held-out scoring not included)",
                  file=sys.stderr, flush=True)
            write()
        run_all([{**base, "phase": "pilot", "rule": r, "seed": PILOT_SEED, "lr": lr, "trials": args.pilot_trials}
                 for r in pilot_rules for lr in GRID], report["pilot"])
        for r in rules:
            if r in fixed:
                chosen[r] = fixed[r]
            elif not args.pilot_trials:
                chosen[r] = NO_PILOT_LR
            else:
                ok = [x for x in report["pilot"] if x["rule"] == r and x["final_loss"] is not None]
                chosen[r] = min(ok, key=lambda x: x["final_loss"])["lr"] if ok else GRID[0]
        for s in range(args.seeds):  # seed by seed: the report after each holds whole seeds
            run_all([{**base, "phase": "main", "rule": r, "seed": s, "lr": chosen[r], "trials": args.trials}
                     for r in rules], report["results"])
            report["results"].sort(key=lambda x: (x["rule"], x["seed"]))
            report["summary"] = summarise(report["results"], list(args.rules), refused)
            write()
            old = open(md_path).read() if os.path.exists(md_path) else ""
            from neuro.bench.neurobench import kept_analysis

            text = markdown(report, kept_analysis(old))
            _report.write_atomic(md_path, text)
            plot(os.path.join(args.out, "stack.png"), report)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
