"""``neuro bench``: benchmarks that write a JSON and a Markdown table (machine, versions, every figure).

Sections: ``sim`` (forward simulation speed, with peers; :mod:`neuro.bench.sim`), ``influence`` (the
UORO paper's truncation-bias test; :mod:`neuro.bench.influence`), ``span`` (NoBackTrack against T-BPTT
as the dependency length grows; :mod:`neuro.bench.span`), ``cost`` (time per step against n for the
RTRL family and BPTT, fitted exponents; :mod:`neuro.bench.cost`), ``gpu`` (a 16k-neuron LIF layer's forward and
backward pass and the rules on a CUDA device, skipped with a note without one; :mod:`neuro.bench.gpu`),
``neurobench`` (NeuroBench's Mackey-Glass protocol with its own metrics; :mod:`neuro.bench.neurobench`) and
``mnist1d`` (sequential MNIST-1D classification by the online rules; :mod:`neuro.bench.mnist1d`).
``main(["sim", ...])`` runs a section with its own options; nothing here is a timed test.

Two aliases: ``batch`` is ``seeds`` and ``rtrl`` is ``cost``. ``neuro bench all --quick [--out DIR]`` runs
the six performance sections (sim, rules, memory, batch, rtrl, train) on tiny settings, one after the other, and
checks only that each wrote its figures (a smoke test for CI, well under a minute).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

__all__ = ["SECTIONS", "main"]

SECTIONS = {"sim": "neuro.bench.sim", "influence": "neuro.bench.influence", "span": "neuro.bench.span",
            "cost": "neuro.bench.cost", "seeds": "neuro.bench.seeds",
            "memory": "neuro.bench.memory",
            "local": "neuro.bench.local",
            "patterns": "neuro.bench.patterns",
            "perturbation": "neuro.bench.perturbation",
            "brian2": "neuro.bench.brian2", "rules": "neuro.bench.rules",
            "gpu": "neuro.bench.gpu", "train": "neuro.bench.train",
            "neurobench": "neuro.bench.neurobench", "mnist1d": "neuro.bench.mnist1d", "stack": "neuro.bench.stack",
            "train_sparse": "neuro.bench.train_sparse",
            }
ALIASES = {"batch": "seeds", "rtrl": "cost"}
#: ``neuro bench all --quick``: section -> (tiny options, the JSON file it writes)
QUICK = {
    "sim": (["--quick"], "bench_sim.json"),
    "rules": (["--quick"], "bench_rules.json"),
    "memory": (["--ts", "50", "100", "--n", "16", "--seeds", "0", "--rules", "eprop"], "bench_memory.json"),
    "batch": (["--quick"], "bench_seeds.json"),
    "rtrl": (["--quick"], "bench_cost.json"),
    "train": (["--quick", "--models", "rate", "--rules", "rflo"], "train.json"),
}


def _numbers(obj) -> int:
    """How many finite numbers a JSON result holds."""
    if isinstance(obj, bool):
        return 0
    if isinstance(obj, (int, float)):
        return int(obj == obj and abs(obj) != float("inf"))
    if isinstance(obj, dict):
        return sum(_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_numbers(v) for v in obj)
    return 0


def run_all(argv: list[str]) -> int:
    """``neuro bench all --quick [--out DIR]``: every performance section on tiny settings."""
    import argparse

    ap = argparse.ArgumentParser(prog="neuro bench all", description=run_all.__doc__)
    ap.add_argument("--quick", action="store_true", required=True, help="tiny settings (the only mode)")
    ap.add_argument("--out", default="runs/bench-quick")
    args = ap.parse_args(argv)
    failed = []
    for name, (opts, fname) in QUICK.items():
        out = Path(args.out) / name
        t0 = time.perf_counter()
        try:
            rc = main([name, *opts, "--out", str(out)])
            n = _numbers(json.loads((out / fname).read_text())) if rc == 0 else 0
        except (Exception, SystemExit) as e:  # a section that fails (or rejects its options) is reported; the rest run
            rc, n = f"{type(e).__name__}: {e}", 0
        ok = rc == 0 and n > 0
        print(f"neuro bench all: {name}: {'ok' if ok else 'FAILED'} ({n} numbers, {time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
        if not ok:
            failed.append(name)
    if failed:
        print(f"neuro bench all: sections without figures: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``neuro bench SECTION [options]``: run one benchmark section (``--help`` after it for its options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: neuro bench {{{','.join([*SECTIONS, *ALIASES, 'all'])}}} [options]\n\n{__doc__}")
        return 0 if argv else 2
    section, rest = argv[0], argv[1:]
    if section == "all":
        return run_all(rest)
    section = ALIASES.get(section, section)
    if section not in SECTIONS:
        valid = [*SECTIONS, *ALIASES, "all"]
        print(f"neuro bench: section {section!r} is unknown: valid choices are {', '.join(map(repr, valid))}",
              file=sys.stderr)
        return 2
    return importlib.import_module(SECTIONS[section]).main(rest)
