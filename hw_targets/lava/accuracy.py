"""Does a trained spiking network keep its accuracy on Lava? ``python -m hw_targets.lava.accuracy [options]``.

Trains a ``lif`` network in Lava's form (``dynamics="lava"``, ``reset="zero"``) with BPTT on a short
evidence-accumulation task (``cue-accumulation`` with 3 cues; the e-prop task of Bellec et al. 2020,
shortened so that the run takes a few minutes on two cores), then scores held-out trials on four
simulators: torch (float), Lava floating point, torch on the quantized integer network (``lif-loihi``)
and Lava fixed point. A trial is correct when the readout summed over the recall steps picks the
majority side. Prints a table and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

__all__ = ["main", "score"]

TASK = dict(n_cues=3, cue_ms=50.0, spacing_ms=20.0, delay_ms=50.0, recall_ms=50.0)


def score(trace_y: torch.Tensor, ys: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of trials whose readout summed over the masked steps picks the target's class."""
    m = mask.to(trace_y.dtype)[..., None]
    pred = (trace_y * m).sum(0).argmax(-1)
    target = (ys.to(trace_y.dtype) * m).sum(0).argmax(-1)
    return float((pred == target).to(torch.float64).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_targets.lava.accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=300, help="training trials (default 300)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=200, help="held-out trials to score (default 200)")
    ap.add_argument("--vth", type=int, default=4096, help="fixed point: threshold mantissa")
    ap.add_argument("--tau-mem", type=float, default=100.0, help="membrane time constant, ms (default 100)")
    ap.add_argument("--skip-lava", action="store_true", help="score on the torch simulators only")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import hw_targets.lava as hl
    import models
    import neuro

    task = neuro.tasks.make("cue-accumulation", **TASK)
    net = models.make("lif", n_in=task.n_in, n_hidden=args.hidden, n_out=task.n_out, dynamics="lava", reset="zero",
                      tau_mem=args.tau_mem)
    rule = neuro.rules.make("bptt", net)
    t0 = time.time()
    history = neuro.train(net, rule, task, steps=args.trials * task.trial_steps, seed=args.seed, lr=args.lr,
                          batch=args.batch, progress=False, dtype="float64")
    train_s = time.time() - t0
    params = history.params
    test = task.sample(task.trial_steps, batch=args.test, seed=10_000 + args.seed)
    xs = test.xs.to(torch.float64)
    qnet, qparams, report = hl.quantize(net, params, vth=args.vth, report=True)
    results, traces = {}, {}
    for label, (n, p, backend) in {"torch float": (net, params, "torch"), "Lava floating_pt": (net, params, "lava"),
                                   "torch integer (lif-loihi)": (qnet, qparams, "torch"),
                                   "Lava fixed_pt": (qnet, qparams, "lava-fixed")}.items():
        if args.skip_lava and backend != "torch":
            continue
        t0 = time.time()
        tr = neuro.simulate(n, p, xs, backend=backend)
        traces[label] = tr
        results[label] = {"accuracy": score(tr.y, test.ys, test.mask), "rate_hz": float(tr.spikes.mean()) * 1000,
                          "seconds": time.time() - t0}
    if args.skip_lava:
        for label, r in results.items():
            print(f"{label:<28} {r['accuracy']:>8.3f} {r['rate_hz']:>8.2f}")
        return 0
    same_float = bool(torch.equal(traces["Lava floating_pt"].spikes, traces["torch float"].spikes))
    same_fixed = bool(torch.equal(traces["Lava fixed_pt"].spikes, traces["torch integer (lif-loihi)"].spikes)
                      and torch.equal(traces["Lava fixed_pt"].v, traces["torch integer (lif-loihi)"].v))
    agree = float((traces["torch integer (lif-loihi)"].spikes == traces["torch float"].spikes).to(torch.float64).mean())
    print(f"cue accumulation {TASK}, {net.n_hidden} LIF, BPTT {args.trials} trials x {args.batch} "
          f"({train_s:.0f} s), {args.test} held-out trials")
    print(f"{'simulator':<28} {'accuracy':>8} {'rate Hz':>8} {'seconds':>8}")
    for label, r in results.items():
        print(f"{label:<28} {r['accuracy']:>8.3f} {r['rate_hz']:>8.2f} {r['seconds']:>8.1f}")
    print(f"Lava float spikes == torch float: {same_float}; Lava fixed spikes and v == torch integer: {same_fixed}; "
          f"float vs integer spike agreement {agree:.4f}")
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": {**vars(args), "task": TASK, "train_seconds": train_s}, "results": results,
                       "lava_float_identical": same_float, "lava_fixed_identical": same_fixed,
                       "float_integer_spike_agreement": agree, "quantization": str(report)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
