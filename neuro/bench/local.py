"""``neuro bench local``: the local rules against BPTT: gradient alignment, and RFLO's own example.

**(1) Alignment.** For every rule in ``neuro.rules.available()`` whose ``needs`` is ``Needs.LOCAL`` and that
supports the model (found through the registry; absent rules are skipped), the cosine of its summed estimate
over one sequence with the BPTT gradient, parameters frozen (``neuro.alignment(neuro.grad_estimate(...))``),
at fresh parameters (``net.init_params(seed)``) on a fresh sequence (``task.sample(seed=seed)``), over
``--seeds`` seeds: mean, standard deviation, min and max. Cases: the cue-accumulation task of e-prop
(:mod:`neuro.tasks.cue_accumulation`, 2250-step trials, recall-only cross-entropy) on ``lif`` and ``alif``
(``--hidden`` units, ``detach_reset=True`` as in e-prop, ``input_scale=--input-scale`` so that the cue spikes
drive the units: about 19 Hz for LIF at 60 with the default resting offset ``bias_mean``, 8.5 Hz without it,
as in the runs of ``docs/results/local.md``, made before that default existed), and the
sine task of RFLO (:mod:`neuro.tasks.sine`, ``--sine-steps`` steps) on the leaky rate RNN (alpha 0.1,
g 1.5). Rules with a ``feedback`` option run with symmetric feedback (``readout``/``symmetric``) and with
random feedback. ``three-factor`` runs in its e-prop form on spiking models (presynaptic traces from the
membrane and synaptic decays) and its RFLO form on the rate RNN (``eligibility_decay = 1 - alpha``);
``sltt-k`` with ``T`` the sequence length and ``k = T / 5``. Baseline: truncated BPTT with ``k = 1``
(``tbptt``) where the model supports it.

**(2) RFLO reproduction** (Murray 2019, eLife 8:e43299, notebook ``RFLO_Example.ipynb`` of
murray-lab/rflo-learning): 50 rate units, tau = 10 steps (alpha 0.1), no input, every trial of 100 steps
from ``h_0 = 0.1``, target ``sin + 1/2 sin 2 + 1/4 sin 4`` of period 100, ``W_rec ~ N(0, 1.5^2/n)``, ``W_out
~ 0.1 U(-1, 1)/sqrt(n)``, feedback ``B ~ N(0, 1/n_out)``; after each trial plain gradient descent
``W -= (eta / T) sum_t g_t`` with ``eta = 0.03`` on ``W_rec`` and ``W_out`` only (the notebook's rates;
``W_in`` and the biases are not trained), the same for ``rflo`` and ``bptt`` (equal budget: the same trials).
Loss of a trial: ``1/2 mean_t (y_t - y*_t)^2`` (the notebook's). The notebook's figures after 10,000 trials:
RFLO 1.5e-4, BPTT 2.3e-4 (one run each, unseeded). ``--trials`` sets our budget; the table also shows the
notebook's own code re-run here with ``np.random.seed(0)`` at the same number of trials (:data:`NOTEBOOK_RERUN`,
measured once, outside this package).

Writes ``OUT/bench_local.json`` and ``OUT/bench_local.md`` (atomically).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import torch

from neuro.bench import _report

READOUT = ("W_out", "b_out")  # exact in every local rule: "hidden" is the cosine over the other parameters
PARTS = ("overall", "hidden", "W_rec")
REPRO = {"n": 50, "alpha": 0.1, "g": 1.5, "period": 100, "h0": 0.1, "eta": 0.03, "w_out_scale": 0.1}
NOTEBOOK = {"trials": 10_000, "rflo": 1.5e-4, "bptt": 2.3e-4}
#: the notebook's own code re-run on this machine (numpy 2.4, np.random.seed(0), its settings): loss by trial
NOTEBOOK_RERUN = {"rflo": {1: 0.337, 10: 0.216, 100: 0.0836, 1000: 0.0136, 2000: 0.0105, 5000: 0.00337,
                           10000: 9.33e-4},
                  "bptt": {1: 0.337, 10: 0.183, 100: 0.167, 1000: 0.00935, 2000: 0.00523, 5000: 0.00119,
                           10000: 2.46e-4}}


# -- (1) alignment -----------------------------------------------------------------------------------------
def _cases(args) -> list[tuple[str, str, Any]]:
    from neuro.tasks.cue_accumulation import CueAccumulation
    from neuro.tasks.sine import SineTask

    cue = CueAccumulation(n_cues=1, cue_ms=10.0, spacing_ms=5.0, delay_ms=10.0, recall_ms=10.0) if args.quick \
        else CueAccumulation()
    return [("cue-accumulation", "lif", cue), ("cue-accumulation", "alif", cue), ("sine", "rate", SineTask())]


def _net(model: str, task, hidden: int, input_scale: float = 1.0):
    import models

    if model == "rate":
        return models.make("rate", n_in=task.n_in, n_hidden=hidden, n_out=task.n_out, alpha=REPRO["alpha"],
                           g=REPRO["g"])
    return models.make(model, n_in=task.n_in, n_hidden=hidden, n_out=task.n_out, detach_reset=True,
                       input_scale=input_scale)


def _variants(rule: str, net, T: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, options) for one rule on ``net``: its form for the model, and each kind of feedback it has."""
    from neuro import rules

    base: dict[str, Any] = {}
    if rule == "three-factor":
        if net.spiking:
            a, b = net.alpha, net.beta
            base = {"pre_decay": (a, b), "pre_impulse": (a / (a - b), -b / (a - b)), "bias_pre_decay": a}
        else:
            base = {"eligibility_decay": 1.0 - net.alpha}
    elif rule == "sltt-k":
        base = {"T": T, "k": max(1, T // 5)}
    elif rule == "tbptt":
        base = {"k": 1}
    fields = {f.name for f in dataclasses.fields(rules.get(rule))}
    if "feedback" not in fields:
        return [(rule, base)]
    out = []
    for fb in ("readout", "symmetric", "random"):
        try:
            rules.make(rule, net, feedback=fb, **base)
        except ValueError:
            continue
        out.append((f"{rule} ({'symmetric' if fb == 'readout' else fb})", {**base, "feedback": fb}))
    return out


def _stats(xs: list[float]) -> dict[str, Any]:
    ok = [x for x in xs if math.isfinite(x)]
    if not ok:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(ok), "mean": statistics.fmean(ok), "sd": statistics.stdev(ok) if len(ok) > 1 else 0.0,
            "min": min(ok), "max": max(ok)}


def alignment(args) -> list[dict[str, Any]]:
    import neuro
    from neuro import rules
    from neuro.rules import Needs

    local = [r for r in rules.available() if rules.get(r).needs == Needs.LOCAL]
    out = []
    for task_name, model, task in _cases(args):
        net = _net(model, task, args.hidden, args.input_scale)
        T = task.trial_steps if task.episodic else args.sine_steps
        names = [r for r in local + ["tbptt"] if rules.refusal(r, net) is None]
        variants = [v for r in names for v in _variants(r, net, T)]
        cos: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in variants}
        secs: dict[str, float] = {label: 0.0 for label, _ in variants}
        rates = []
        for seed in range(args.seeds):
            params = net.init_params(seed=seed)
            seq = task.sample(steps=T, batch=args.batch, seed=seed)
            if net.spiking:
                rates.append(neuro.simulate(net, params, seq.xs).spikes.mean().item() * 1000.0 / net.dt)
            g_true = neuro.grad_estimate(net, params, "bptt", seq.xs, seq.ys, loss=task.loss, mask=seq.mask)
            for label, opts in variants:
                rule_name = label.split(" ")[0]
                t0 = time.perf_counter()
                g = neuro.grad_estimate(net, params, rule_name, seq.xs, seq.ys, seed=seed, loss=task.loss,
                                        mask=seq.mask, **opts)
                secs[label] += time.perf_counter() - t0
                a = neuro.alignment(g, g_true)
                hidden = [k for k in sorted(g) if k not in READOUT]
                h = neuro.alignment({k: g[k] for k in hidden}, {k: g_true[k] for k in hidden})["overall"]
                cos[label].append((a["overall"], h, a.get("W_rec", math.nan)))
        for label, opts in variants:
            row = {"task": task_name, "model": model, "rule": label.split(" ")[0], "variant": label,
                   "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
                   **{f"{part}_cosines": [c[j] if math.isfinite(c[j]) else None for c in cos[label]]
                      for j, part in enumerate(PARTS)},
                   **{part: _stats([c[j] for c in cos[label]]) for j, part in enumerate(PARTS)},
                   "ms_per_step": 1000.0 * secs[label] / (args.seeds * T)}
            if rates:
                row["rate_hz"] = statistics.fmean(rates)
            out.append(row)
            print(f"[align] {task_name:<16} {model:<5} {label:<28} overall {_fmt(row['overall']['mean'])} "
                  f"hidden {_fmt(row['hidden']['mean'])} ± {_fmt(row['hidden']['sd'])}", file=sys.stderr, flush=True)
    return out


# -- (2) RFLO reproduction ---------------------------------------------------------------------------------
def reproduce(method: str, trials: int, seed: int) -> dict[str, Any]:
    """Murray's notebook (module docstring) with ``method`` ("rflo" or "bptt"): the loss of every trial."""
    import models
    from neuro import rules
    from neuro.tasks.sine import SineTask

    n, P = REPRO["n"], REPRO["period"]
    net = models.make("rate", n_in=1, n_hidden=n, n_out=1, alpha=REPRO["alpha"], g=REPRO["g"])
    params = net.init_params(seed=seed)  # W_rec ~ N(0, g^2/n): the notebook's 1.5 randn / sqrt(n)
    gen = torch.Generator().manual_seed(seed + 7919)
    params["W_out"] = REPRO["w_out_scale"] * (2 * torch.rand(1, n, generator=gen) - 1) / math.sqrt(n)
    xs = torch.zeros(P, 1, 1)
    ys = torch.tensor(SineTask(period=P).target(torch.arange(1, P + 1).numpy()), dtype=torch.float32)[:, None, None]
    mask = torch.ones(P, 1, dtype=torch.bool)
    rule = rules.make(method, net)
    state = rule.init(params, 1, seed)
    lr = REPRO["eta"] / P
    losses = []
    t0 = time.perf_counter()
    for trial in range(trials):
        if trial:
            state = rule.reset(params, state)  # RFLO's feedback B survives reset
        state = state._replace(net=state.net._replace(h=torch.full((1, n), REPRO["h0"])))
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        loss = 0.0
        for t in range(P):
            out = rule.step(params, state, xs[t], ys[t], mask[t])
            state = out.state
            loss += out.loss.item()
            rules.add_into(total, out.grad)
        state, g = rule.finish(params, state)
        rules.add_into(total, g)
        losses.append(loss / P)
        if not math.isfinite(losses[-1]):
            break
        for k in ("W_rec", "W_out"):  # the notebook trains W_rec and W_out (eta_in = 0, no biases)
            params[k] = params[k] - lr * total[k]
    return {"method": method, "seed": seed, "trials": len(losses), "final_loss": losses[-1],
            "last10_mean": statistics.fmean(losses[-10:]), "seconds": round(time.perf_counter() - t0, 1),
            "curve": {str(k): losses[k - 1] for k in _checkpoints(len(losses))}}


def _repro_job(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    r = reproduce(job["method"], job["trials"], job["seed"])
    print(f"[repro] {r['method']:<5} seed {r['seed']}: final {r['final_loss']:.3g} ({r['seconds']:.0f}s)",
          file=sys.stderr, flush=True)
    return r


def _checkpoints(trials: int) -> list[int]:
    ks = {1, trials}
    k = 10
    while k < trials:
        ks.add(k)
        k *= 10
    for frac in (0.25, 0.5, 0.75):
        ks.add(max(1, int(trials * frac)))
    return sorted(ks)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench local", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the alignment part")
    ap.add_argument("--hidden", type=int, default=50, help="units of the alignment networks")
    ap.add_argument("--input-scale", type=float, default=60.0,
                    help="input weights of the spiking nets, in units of v_th (60: ~10 Hz LIF on the cue task)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per alignment sample")
    ap.add_argument("--sine-steps", type=int, default=200, help="steps of the sine sequence (rate)")
    ap.add_argument("--trials", type=int, default=2000, help="trials of the RFLO reproduction (notebook: 10000)")
    ap.add_argument("--repro-seeds", type=int, default=1, help="seeds of the RFLO reproduction")
    ap.add_argument("--jobs", type=int, default=1,
                    help="processes (1 torch thread each): with 2 or more the reproduction runs beside the alignment")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--quick", action="store_true", help="tiny settings for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.hidden, args.sine_steps, args.trials, args.repro_seeds = 2, 8, 30, 3, 1
    for name in ("seeds", "hidden", "batch", "sine_steps", "trials", "repro_seeds", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load_start = _report.loadavg()
    jobs = [{"method": m, "trials": args.trials, "seed": s} for m in ("rflo", "bptt") for s in range(args.repro_seeds)]
    if args.jobs > 1:  # the reproduction runs in worker processes while the alignment runs here
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs - 1, mp_context=ctx) as pool:
            futures = [pool.submit(_repro_job, j) for j in jobs]
            align = alignment(args)
            repro = [f.result() for f in futures]
    else:
        align = alignment(args)
        repro = [_repro_job(j) for j in jobs]

    machine = _report.machine_info(1)
    cmd = "python -m neuro.bench local " + " ".join(argv if argv is not None else sys.argv[1:])
    def cell(st: dict[str, Any]) -> str:
        return f"{_fmt(st['mean'])} ± {_fmt(st['sd'])}" + ("" if st["n"] == args.seeds else f" ({st['n']} finite)")

    rows = [[r["task"], r["model"], r["variant"], cell(r["overall"]), cell(r["hidden"]),
             f"[{_fmt(r['hidden']['min'])}, {_fmt(r['hidden']['max'])}]", cell(r["W_rec"]),
             _fmt(r.get("rate_hz"), ".1f"), _fmt(r["ms_per_step"], ".2f")] for r in align]
    rrows = [[r["method"], r["seed"], r["trials"], f"{r['final_loss']:.3g}", f"{r['last10_mean']:.3g}",
              _fmt(NOTEBOOK_RERUN[r["method"]].get(r["trials"]), ".3g"), f"{NOTEBOOK[r['method']]:.2g}",
              r["seconds"]] for r in repro]
    marks = sorted({int(k) for r in repro for k in r["curve"]})
    crows = [[r["method"], r["seed"]] + [_fmt(r["curve"].get(str(k)), ".3g") for k in marks] for r in repro]
    md = (f"# neuro bench local\n\n## Alignment with BPTT (cosine of the summed estimate, params frozen)\n\n"
          f"{args.seeds} seeds (fresh parameters and sequence each); mean ± sd. *overall*: every parameter; "
          "*hidden*: every parameter but the readout (W_out, b_out, whose gradient every local rule computes "
          "exactly and which dominates the overall cosine), with its [min, max]; *W_rec*: the recurrent weights. "
          f"Spiking nets: {args.hidden} units, detach_reset, input_scale {args.input_scale:g}; rate: "
          f"{args.hidden} units, alpha "
          f"{REPRO['alpha']}, sine {args.sine_steps} steps. Rate = mean firing rate (Hz). Time = ms per step of the "
          "rule's own loop (1 thread, machine shared).\n\n" +
          _report.md_table(["task", "model", "rule", "overall", "hidden", "hidden range", "W_rec", "rate Hz",
                            "ms/step"], rows) +
          f"\n\n## RFLO reproduction (Murray 2019 notebook), {args.trials} trials each\n\n"
          "Loss of a trial = 1/2 mean_t (y - y*)^2. Equal budget: the same trials and learning rates for both. "
          "*notebook re-run*: the notebook's own code run here (np.random.seed(0)) at the same number of trials "
          "(– where not recorded); *notebook 10k*: its published output after 10,000 trials (one unseeded run; "
          "the seed-0 re-run gives RFLO 9.3e-4, BPTT 2.5e-4 at 10,000).\n\n" +
          _report.md_table(["method", "seed", "trials", "final loss", "mean last 10", "notebook re-run",
                            "notebook 10k", "seconds"], rrows) +
          "\n\nLoss by trial:\n\n" + _report.md_table(["method", "seed"] + [str(k) for k in marks], crows) +
          f"\n\nMachine: {machine['cpu_model']}, {machine['cores']} cores ({args.jobs} process(es) of 1 thread; load "
          f"average {load_start} at the start, {_report.loadavg()} at the end), torch {machine['torch']}, "
          f"{machine['date']}. Whole run {time.perf_counter() - t_start:.0f} s.\n\nCommand: `{cmd}`\n")
    os.makedirs(args.out, exist_ok=True)
    _report.write_json(os.path.join(args.out, "bench_local.json"),
                       {"benchmark": "local", "machine": machine, "load_average_start": load_start,
                        "settings": {"seeds": args.seeds, "hidden": args.hidden, "batch": args.batch,
                                     "sine_steps": args.sine_steps, "input_scale": args.input_scale,
                                     "trials": args.trials,
                                     "repro_seeds": args.repro_seeds, "repro": REPRO, "notebook": NOTEBOOK,
                                     "notebook_rerun": NOTEBOOK_RERUN,
                                     "quick": args.quick},
                        "alignment": align, "reproduction": repro,
                        "seconds": round(time.perf_counter() - t_start, 1), "command": cmd})
    _report.write_atomic(os.path.join(args.out, "bench_local.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
