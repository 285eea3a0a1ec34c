"""``neuro bench gpu``: a 16k-neuron LIF layer, and the online rules, on a CUDA device (never in CI; where no
CUDA device is present it prints why it skips, writes nothing and exits with status 0).

1. *LIF layer*, the Open Neuromorphic SNN library benchmark's setting (Lenz et al., "SNN library
   benchmarks", open-neuromorphic.org 2023/2024): one fully connected layer and one layer of LIF neurons,
   ``--n`` of each (16384), batch ``--batch`` (16), ``--steps`` time steps (500); the time of a forward and a
   backward pass (the loss is the sum of the output spikes). The neurons are :class:`models.lif.LIF`'s own
   (``neuron``: exact integration, subtractive reset, the triangle surrogate), the layer's weights those of
   ``torch.nn.Linear`` (uniform in +-1/sqrt(n)), the input normal with standard deviation 3 (the neurons
fire: a few percent of them per step); the product with the weights is
   one matrix product over all steps, then the neuron steps run in a loop (``eager``) or as a step function
   compiled by ``torch.compile`` (``compiled``, with ``--compile``). Reported: the median time of
   ``--repeats`` passes after a warm-up, the spikes per neuron and step, and the peak memory. The published
   figures of that benchmark (16k neurons, a consumer GPU): Spyx (JAX, float16) 47 ms, Norse with
   ``torch.compile`` 110 ms, SpikingJelly (CuPy) 118 ms, Lava-DL 171 ms, snnTorch 0.7 3078 ms.
2. *Rules* (``--rules``): ``neuro bench rules`` on the same device (``--rules-n`` units): the online
   rules' time per step against the forward step. The compiled CPU kernels of some rules (numba) do not
   run there: those rules take their torch paths.

Writes ``OUT/bench_gpu.json`` and ``OUT/bench_gpu.md`` (the rules section also its own
``bench_rules.*`` under ``OUT/rules``) when it ran; a skipped run writes no file (a file saying only
"skipped" would stand where figures are expected). ``--device cpu`` runs the same code on the CPU (small ``--n``: the
tests do).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import _report

#: the published figures of the Open Neuromorphic benchmark at 16k neurons, ms per forward + backward pass
PUBLISHED_MS = {"Spyx (float16)": 47.0, "Norse + torch.compile": 110.0, "SpikingJelly (CuPy)": 118.0,
                "Lava-DL": 171.0, "snnTorch 0.7": 3078.0}


def layer_spikes(net, params: dict, W: Tensor, b_lin: Tensor, xs: Tensor, step=None) -> Tensor:
    """The layer's loss: the sum of the output spikes over ``xs`` [T, B, n] (the product with ``W`` for all
    steps at once, then ``step(state, I_t)``, default ``net.neuron``)."""
    step = step or (lambda state, I: net.neuron(params, state, I))
    I = torch.nn.functional.linear(xs, W, b_lin)  # [T, B, n]
    state = net.init_state(params, xs.shape[1])
    total = xs.new_zeros(())
    for t in range(xs.shape[0]):
        state, z = step(state, I[t])
        total = total + z.sum()
    return total


def layer(n: int, batch: int, steps: int, device: str, repeats: int = 5, compile: bool = False,
          seed: int = 0, input_scale: float = 3.0) -> dict[str, Any]:
    """Forward + backward of one Linear + LIF layer (module docstring): median ms per pass, spikes per neuron and
    step, peak memory (GPU: ``torch.cuda.max_memory_allocated``)."""
    import models

    dev = torch.device(device)
    net = models.make("lif", n_in=n, n_hidden=n, n_out=1)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / n ** 0.5
    W = ((torch.rand(n, n, generator=g) * 2 - 1) * bound).to(dev).requires_grad_()
    b_lin = ((torch.rand(n, generator=g) * 2 - 1) * bound).to(dev).requires_grad_()
    params = {"b": torch.zeros(n, device=dev), "W_out": torch.zeros(1, n, device=dev)}  # the neuron's own bias: 0
    xs = (input_scale * torch.randn(steps, batch, n, generator=g)).to(dev)

    def neuron_step(state, I):
        return net.neuron(params, state, I)

    step = torch.compile(neuron_step, dynamic=False) if compile else neuron_step

    def one_pass() -> Tensor:
        total = layer_spikes(net, params, W, b_lin, xs, step)
        total.backward()
        return total

    for _ in range(2):  # warm-up (and compilation)
        W.grad = b_lin.grad = None
        one_pass()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, spikes = [], 0.0
    for _ in range(repeats):
        W.grad = b_lin.grad = None
        gc.collect()
        _report.sync(dev)
        t0 = time.perf_counter()
        total = one_pass()
        _report.sync(dev)
        times.append(time.perf_counter() - t0)
        spikes = float(total.detach()) / (steps * batch * n)
    if W.grad is None or not bool(torch.isfinite(W.grad).all()):
        raise RuntimeError("the backward pass gave no finite gradient for the layer's weights")
    return {"n": n, "batch": batch, "steps": steps, "device": str(dev), "compiled": compile,
            "ms": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times), "ms_max": 1e3 * max(times),
            "repeats": repeats, "spikes_per_neuron_step": spikes,
            "peak_mib": torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else None}


def to_markdown(res: dict[str, Any]) -> str:
    rows = [[r["n"], r["batch"], r["steps"], "compiled" if r["compiled"] else "eager",
             f"{r['ms']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f})", f"{r['spikes_per_neuron_step']:.3f}",
             f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "–"] if "ms" in r else
            [r["n"], r["batch"], r["steps"], "compiled" if r["compiled"] else "eager", r["error"], "–", "–"]
            for r in res["layer"]]
    table = _report.md_table(["neurons", "batch", "steps", "mode", "ms per forward + backward (median, min-max)",
                              "spikes/neuron/step", "peak MiB"], rows)
    pub = ", ".join(f"{k} {v:g} ms" for k, v in PUBLISHED_MS.items())
    m = res["machine"]
    text = (f"# neuro bench gpu\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{table}\n\nPublished at 16k neurons on a "
            f"consumer GPU: {pub}.\n\nDevice: {res['settings']['device']}{_report.device_name(res['settings']['device'])}; "
            f"CPU {m['cpu_model']}; torch {m['torch']}; {m['date']}.\n")
    if res.get("rules"):
        text += f"\nRules on this device: `{res['rules']}` (its own table).\n"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu runs the same code)")
    ap.add_argument("--n", type=int, nargs="+", default=[16384], help="neurons in the layer (default 16384)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time the neuron step compiled by torch.compile")
    ap.add_argument("--rules", action="store_true", help="also run `neuro bench rules` on the device")
    ap.add_argument("--rules-n", type=int, default=1024)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args(argv)
    if min(args.n) < 1 or args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.rules_n < 1:
        ap.error("--n, --batch, --steps, --repeats and --rules-n must be >= 1")
    try:
        skipped = _report.device_missing(args.device)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    if skipped:  # nothing measured, nothing written
        return _report.report_skipped("bench_gpu", skipped)
    rows = []
    for n in args.n:
        for comp in ([False, True] if args.compile else [False]):
            try:
                rows.append(layer(n, args.batch, args.steps, args.device, args.repeats, comp))
            except Exception as e:  # out of memory at a large n, a compiler missing: reported, not fatal
                rows.append({"n": n, "batch": args.batch, "steps": args.steps, "compiled": comp,
                             "error": f"{type(e).__name__}: {e}"})
            print(rows[-1], flush=True)
    res = {"machine": _report.machine_info(torch.get_num_threads()), "settings": vars(args), "layer": rows,
           "published_ms_16k": PUBLISHED_MS, "rules": None}
    if args.rules:
        from . import rules

        rules.main(["--device", args.device, "--n", str(args.rules_n), "--out", str(out / "rules")])
        res["rules"] = str(out / "rules" / "bench_rules.md")
    _report.write_json(out / "bench_gpu.json", res)
    text = to_markdown(res)
    _report.write_atomic(out / "bench_gpu.md", text)
    print(text)
    return 0
