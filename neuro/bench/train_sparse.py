"""``neuro bench train_sparse``: online training of a sparse recurrent LIF network, compiled against dense.

For each rule (``--rules``, default the spiking rules the compiled engine runs on sparse networks) and each
connection probability (``--connectivity``, default 1, 0.1 and 0.01; 1 is the dense network; the recurrent
matrix, and in a stack the matrices between layers too): the real training loop, ``neuro.train`` on a LIF network
of ``--hidden`` units (default 1024; ``256,256`` a stack of two layers) on the adding task, batch 1,
float32, one torch thread, ``update_every`` K (``--update-every``, default 1: the online rules update at every
step, BPTT at each sequence's end), every other setting at its default, on the compiled engine and on the torch
path (which reads ``W * mask``: what a sparse network ran on before the compiled engines took it). Each case runs
one warm-up run, then ``--blocks`` timed blocks of ``--steps`` steps alternate over all the cases, so that a
change of load hits them all alike. A row gives the median (min-max) steps/s, the ratio to the same rule's dense
network on the same engine, compiled over torch at the same connectivity, and the compiled runs' training loops
alone (without the call's set-up, which draws dense initial weights whatever the connectivity) with their ratio
to the dense network's. Writes ``OUT/train_sparse.json`` and ``OUT/train_sparse.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from . import _report
from .train import WARM_UP, _build, _Parser, measured, time_cases

__all__ = ["DEFAULT_RULES", "main"]

PROG = "neuro bench train_sparse"
DEFAULT_RULES = ("eprop", "ottt", "sltt", "anp-time", "three-factor", "bptt")
ENGINES = ("compiled", "torch")
MODEL, TASK = "lif", "add"


def _wiring(p: float) -> Any:
    """The network's connectivity setting for a connection probability ``p`` (1: dense)."""
    return None if p == 1 else p


def _hidden(text: str) -> int | tuple[int, ...]:
    """``--hidden``: a size, or sizes joined by commas (a stack)."""
    sizes = tuple(int(v) for v in text.split(","))
    if min(sizes) < 1:
        raise ValueError
    return sizes[0] if len(sizes) == 1 else sizes


def _parse(argv: list[str]) -> argparse.Namespace:
    from neuro import engine, rules

    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES))
    ap.add_argument("--connectivity", nargs="+", type=float, default=[1.0, 0.1, 0.01], metavar="P",
                    help="recurrent connection probabilities (1: dense)")
    ap.add_argument("--hidden", default="1024", help="hidden units, or layer sizes joined by commas (a stack)")
    ap.add_argument("--steps", type=int, default=1000, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per case (alternating)")
    ap.add_argument("--update-every", type=int, default=1, metavar="K")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), help=f"any of {', '.join(ENGINES)}")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--quick", action="store_true", help="n = 64, 30 steps, 1 block (a smoke test)")
    args = ap.parse_args(argv)
    try:
        args.n = _hidden(args.hidden)
    except ValueError:
        ap.error(f"--hidden {args.hidden!r} is invalid: expected a size or sizes joined by commas, each >= 1")
    if args.quick:
        args.n, args.steps, args.blocks = (64 if isinstance(args.n, int) else (32, 32)), 30, 1
    if min(args.steps, args.blocks, args.update_every) < 1:
        ap.error(f"--steps {args.steps}, --blocks {args.blocks}, --update-every {args.update_every}: each must be "
                 "an integer >= 1")
    bad = [p for p in args.connectivity if not 0 < p <= 1]
    if bad:
        ap.error(f"--connectivity {' '.join(map(str, bad))}: each must be a probability in (0, 1]")
    bad = sorted(set(args.rules) - set(rules.available()))
    if bad:
        ap.error(f"--rules {' '.join(bad)}: unknown; valid choices are {', '.join(rules.available())}")
    bad = sorted(set(args.engines) - set(ENGINES))
    if bad:
        ap.error(f"--engines {' '.join(bad)}: unknown; valid choices are {', '.join(ENGINES)}")
    kind = MODEL if isinstance(args.n, int) else "stack"
    sparse = {c.rule for c in engine.REGISTRY if c.sparse and c.model == kind}
    if "compiled" in args.engines and set(args.rules) - sparse:
        ap.error(f"--rules {' '.join(sorted(set(args.rules) - sparse))}: no compiled engine runs a sparse {kind} "
                 f"network with it; valid choices are {', '.join(sorted(sparse))}")
    args.connectivity = list(dict.fromkeys(args.connectivity))
    return args


def _synapses(net: Any) -> int:
    """The synapses of the network's recurrent and between-layer matrices (a stack's ``l.W_rec``, ``l.W_in`` for
    l > 0; a layer's ``W_rec``)."""
    shapes, masks = net.param_shapes(), net.masks
    names = [k for k in shapes if k.endswith("W_rec") or (k.endswith("W_in") and not k.startswith("0.") and "." in k)]
    return sum(int(masks[k].sum()) if k in masks else shapes[k][0] * shapes[k][1] for k in names)


def _markdown(report: dict[str, Any], command: str) -> str:
    rows, st = report["rows"], report["settings"]
    speed = {(r["rule"], r["connectivity"], r["engine"]): r["steps_per_s"]["median"] for r in rows
             if "steps_per_s" in r}
    loop = {(r["rule"], r["connectivity"], r["engine"]): r["loop_steps_per_s"] for r in rows if "steps_per_s" in r}
    header = ["rule", "connectivity", "synapses", *(f"{e} steps/s (min-max)" for e in st["engines"]),
              *(f"{e} x dense" for e in st["engines"]), *(["compiled / torch"] if len(st["engines"]) == 2 else []),
              *(["compiled loop steps/s", "loop x dense"] if "compiled" in st["engines"] else [])]
    body = []
    for rule in st["rules"]:
        for p in st["connectivity"]:
            mine = {r["engine"]: r for r in rows if r["rule"] == rule and r["connectivity"] == p}
            if not mine:
                continue
            line: list[Any] = [rule, f"{p:g}", next(iter(mine.values())).get("synapses", "–")]
            for e in st["engines"]:
                r = mine.get(e, {})
                s = r.get("steps_per_s")
                line.append(f"{_report.fmt_rate(s['median'])} ({_report.fmt_rate(s['min'])}-"
                            f"{_report.fmt_rate(s['max'])})" if s else r.get("skipped") or r.get("error") or "–")
            for e in st["engines"]:
                here, dense = speed.get((rule, p, e)), speed.get((rule, 1.0, e))
                line.append(_report.fmt_ratio(here / dense) if here and dense and p != 1 else "–")
            if len(st["engines"]) == 2:
                c, t = speed.get((rule, p, "compiled")), speed.get((rule, p, "torch"))
                line.append(_report.fmt_ratio(c / t) if c and t else "–")
            if "compiled" in st["engines"]:
                here, dense = loop.get((rule, p, "compiled")), loop.get((rule, 1.0, "compiled"))
                line += [_report.fmt_rate(here) if here else "–",
                         _report.fmt_ratio(here / dense) if here and dense and p != 1 else "–"]
            body.append(line)
    m = report["machine"]
    return (f"# neuro bench train_sparse\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\nCommand: `{command}`\n\n"
            f"{_report.md_table(header, body)}\n\nMeasured: steps/s of whole `neuro.train` calls of {st['steps']} "
            f"steps ({MODEL}, hidden {st['hidden']}, task `{TASK}`, batch 1, float32, update_every={st['update_every']}), "
            f"median (min-max) of {st['blocks']} blocks alternating over every case, after one warm-up run each (a "
            f"call includes its set-up: drawing the dense initial weights, masking them, building the engine); "
            f"compiled loop steps/s: the median of the same runs' training loops alone (`History.elapsed_s`); "
            f"engines used as the runs report them: {', '.join(sorted({str(r.get('engine_used')) for r in rows if 'steps_per_s' in r}))}.\n\n"
            f"Machine: {m['cpu_model']}, {m['cores']} cores shared with other work, {m['threads']} torch thread(s); "
            f"load average (1 min) before/after {report['loadavg_before']}/{report['loadavg_after']}; torch "
            f"{m['torch']}, {m['date']}.\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    command = shlex.join(["neuro", "bench", "train_sparse", *argv])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load = _report.loadavg()
    rows: list[dict[str, Any]] = []
    try:
        cases, heads = [], []
        for rule in args.rules:
            for p in args.connectivity:
                for engine in args.engines:
                    head = {"model": MODEL, "task": TASK, "n": args.n, "rule": rule, "connectivity": p,
                            "engine": engine}
                    case = _build(MODEL, rule, args.n, engine, args.steps, False, args.update_every, _wiring(p))
                    if isinstance(case, str):
                        rows.append({**head, "skipped": " ".join(case.split())})
                        continue
                    head["synapses"] = _synapses(case.net)
                    cases.append(case)
                    heads.append(head)
        failed = time_cases(cases, args.steps, args.blocks, min(args.steps, WARM_UP))
        for case, head in zip(cases, heads):
            row = {**head, **measured(case, args.steps, failed)}
            rows.append(row)
            s = row.get("steps_per_s")
            print(f"{PROG}: {row['rule']} p={row['connectivity']:g} [{row['engine']}]: "
                  + (f"{s['median']:.0f} steps/s" if s else row.get("error", "–")), file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    settings = {**vars(args), "command": command, "batch": 1, "dtype": "float32", "model": MODEL, "task": TASK}
    report = {"machine": _report.machine_info(1), "loadavg_before": load, "loadavg_after": _report.loadavg(),
              "settings": settings, "rows": rows}
    out = Path(args.out)
    _report.write_json(out / "train_sparse.json", report)
    text = _markdown(report, command)
    _report.write_atomic(out / "train_sparse.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
