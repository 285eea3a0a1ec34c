"""``neuro bench train``: end-to-end training throughput, steps per second of ``neuro.train``.

For each (model, rule) and size n (``--n`` hidden units): the real training loop, ``neuro.train(net, rule,
task, steps, config)`` with batch 1, float32, ``--threads`` torch thread(s), ``update_every`` K
(``--update-every``, default 1) and every other setting at its default (Adam, lr 1e-3, chunks of 100 steps on
a continuing task, no run directory), timed as a whole call (building the initial parameters and checking the run included). Each rule first runs
one short warm-up run (which compiles or loads whatever it needs); then ``--blocks`` timed blocks, each a
fresh run of ``--steps`` steps, alternate over the rules of one (model, n) block by block, so that a change
of load hits them all alike. A row gives the median, min, max and spread ((max - min) / median) of its
blocks' steps/s and the ratio of its median to ``bptt``'s median measured in the same run (above 1: faster
than BPTT). ``bptt`` and ``tbptt`` (k = 20) always run as the references. Rules whose estimate arrives only
at a window or chunk end (bptt, tbptt) update the parameters there, the others every K steps (and at each
chunk end): K = 100, the chunk, is the matched-update comparison, every rule updating once per chunk as BPTT
does; each row gives the optimizer updates of a block. ``--columns`` adds (or, without ``--models``, runs
alone) the columns networks on trace patterning, each held to a goal (:mod:`neuro.bench.train_columns`).
Writes ``OUT/train.json`` and ``OUT/train.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch

from . import _report

__all__ = ["DEFAULT_RULES", "ENGINES", "MAX_N", "TASKS", "has_engine", "main", "measure_group"]

#: model -> the rules of the default set (bptt and tbptt, the references, are added to every model)
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "rate": ("rtrl", "uoro", "rflo", "eprop", "np", "anp", "anp-time", "wp"),
    "lif": ("eprop", "three-factor", "ottt", "sltt", "anp-time"),
}
REFERENCES = ("bptt", "tbptt")
#: model -> the task it trains on (a continuing task: blocks of any length run whole sequences of 100 steps)
TASKS: dict[str, str] = {"rate": "sine", "lif": "add"}
DEFAULT_TASK = "add"
#: rule -> options
OPTIONS: dict[str, dict[str, Any]] = {"tbptt": {"k": 20}}
#: rule -> the largest n it runs at in the default set (RTRL costs O(n^4) per step)
MAX_N: dict[str, int] = {"rtrl": 32}
ENGINES = ("torch", "auto", "compiled", "both")
#: steps of each rule's warm-up run (at most ``--steps``)
WARM_UP = 200
PROG = "neuro bench train"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``neuro bench train: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def has_engine() -> bool:
    """Whether :class:`~neuro.train_config.TrainConfig` has an ``engine`` setting."""
    from neuro.train_config import TrainConfig

    return "engine" in {f.name for f in dataclasses.fields(TrainConfig)}


def _config(engine: str, update_every: int = 1, **settings: Any):
    from neuro.train_config import TrainConfig

    extra = {"engine": engine} if has_engine() else {}
    return TrainConfig(update_every=update_every, batch=1, dtype=torch.float32, progress=False, **extra, **settings)


def _engine_used(history, requested: str) -> str | None:
    """The engine a run used, where the run says (its history or last metrics row); else the requested one
    when there is a choice, ``"torch"`` when ``neuro.train`` has only torch."""
    used = getattr(history, "engine", None)
    if used is None and history.metrics:
        used = history.metrics[-1].get("engine")
    if used is not None:
        return str(used)
    return requested if has_engine() else "torch"


@dataclasses.dataclass
class _Case:
    """One (rule, engine) of a (model, n) group, ready to run."""

    rule: str
    engine: str
    net: Any
    obj: Any
    task: Any
    config: Any
    seconds: list[float] = dataclasses.field(default_factory=list)
    loop_rates: list[float] = dataclasses.field(default_factory=list)
    updates: int = 0
    n_params: int = 0
    engine_used: str | None = None
    #: steps -> the stage schedule of a run of that many steps (a constructive network), or None
    schedule: Callable[[int], str] | None = None

    def config_for(self, steps: int) -> Any:
        return self.config if self.schedule is None else dataclasses.replace(self.config, schedule=self.schedule(steps))

    def run(self, steps: int) -> tuple[float, Any]:
        import neuro

        config = self.config_for(steps)
        gc.collect()
        t0 = time.perf_counter()
        history = neuro.train(self.net, self.obj, self.task, steps, config)
        return time.perf_counter() - t0, history


def _build(model: str, rule: str, n: int, engine: str, steps: int, capped: bool, update_every: int = 1,
           connectivity: Any = None) -> _Case | str:
    """The case, or why it does not run (the rule refuses the network, the run's checks refuse its size); the
    network wired by ``connectivity`` (a network's setting; ``None``: dense)."""
    import models
    from neuro import rules, tasks
    from neuro.training import prepare

    if capped and rule in MAX_N and n > MAX_N[rule]:
        return f"the default set runs {rule} at n <= {MAX_N[rule]} only (name it with --rules to run it here)"
    task = tasks.make(TASKS.get(model, DEFAULT_TASK))
    net = models.make(model, n_in=task.n_in, n_hidden=n, n_out=task.n_out, connectivity=connectivity)
    opts = OPTIONS.get(rule, {})
    why = rules.refusal(rule, net, **opts)
    if why:
        return why
    obj = rules.make(rule, net, **opts)
    config = _config(engine, update_every)
    try:
        prepare(net, obj, task, steps, config)
    except (ValueError, TypeError, MemoryError) as e:
        return f"{type(e).__name__}: {e}"
    return _Case(rule, engine, net, obj, task, config)


def measure_group(model: str, n: int, rule_names: list[str], engines: list[str], steps: int, blocks: int,
                  capped: bool, update_every: int = 1, connectivity: Any = None) -> list[dict[str, Any]]:
    """Rows for every (rule, engine) of ``model`` at size ``n`` (wired by ``connectivity``, :func:`_build`): warm-up
    runs, then alternating timed blocks."""
    task_name = TASKS.get(model, DEFAULT_TASK)
    rows: list[dict[str, Any]] = []
    cases: list[_Case] = []
    base = {"model": model, "task": task_name, "n": n}
    for rule in rule_names:
        mine = engines
        if rule in REFERENCES and not {"torch", "auto"} & set(engines):  # the references also on torch
            mine = [*engines, "torch"]
        for engine in mine:
            head = {**base, "rule": rule, "options": OPTIONS.get(rule, {}), "engine": engine}
            try:
                case = _build(model, rule, n, engine, steps, capped, update_every, connectivity)
            except Exception as e:  # building one rule failing is reported, the others run
                case = f"{type(e).__name__}: {e}"
            if isinstance(case, str):
                rows.append({**head, "skipped": " ".join(case.split())})
            else:
                cases.append(case)
                rows.append(head)
    failed = time_cases(cases, steps, blocks, min(steps, WARM_UP))
    by_key = {(c.rule, c.engine): c for c in cases}
    for row in rows:
        case = by_key.get((row["rule"], row["engine"]))
        if case is not None:
            row.update(measured(case, steps, failed))
    refs = [r for r in rows if r["rule"] == "bptt" and "steps_per_s" in r]
    for r in rows:  # the ratio to bptt of the same model and n: on the same engine, else on torch (or auto)
        if "steps_per_s" in r:
            ref = next((q for q in refs if q["engine"] == r["engine"]), None) or next(
                (q for q in refs if q["engine"] in ("torch", "auto")), None)
            r["vs_bptt"] = r["steps_per_s"]["median"] / ref["steps_per_s"]["median"] if ref else None
            r["vs_bptt_engine"] = ref["engine"] if ref else None
    if "torch" in engines and "compiled" in engines:  # --engine both: compiled against torch
        for r in rows:
            if r["engine"] == "compiled" and "steps_per_s" in r:
                t = next((q for q in rows if q["rule"] == r["rule"] and q["engine"] == "torch" and "steps_per_s" in q),
                         None)
                r["speedup_vs_torch"] = r["steps_per_s"]["median"] / t["steps_per_s"]["median"] if t else None
    return rows


def time_cases(cases: list[_Case], steps: int, blocks: int, warm_up: int) -> dict[int, str]:
    """One warm-up run of ``warm_up`` steps per case, then ``blocks`` timed runs of ``steps`` alternating over the
    cases block by block; returns why a case failed, by its id (a failure is reported, not fatal)."""
    failed: dict[int, str] = {}
    for case in cases:
        try:
            case.run(warm_up)
        except Exception as e:  # e.g. out of memory at a large n
            failed[id(case)] = f"{type(e).__name__}: {e}"
    for _ in range(blocks):
        for case in cases:
            if id(case) in failed:
                continue
            try:
                seconds, history = case.run(steps)
            except Exception as e:
                failed[id(case)] = f"{type(e).__name__}: {e}"
                continue
            case.seconds.append(seconds)
            case.loop_rates.append(history.steps / history.elapsed_s if history.elapsed_s > 0 else float("nan"))
            case.updates, case.n_params = history.updates, case.net.n_params(history.params)
            case.engine_used = _engine_used(history, case.engine)
    return failed


def measured(case: _Case, steps: int, failed: dict[int, str]) -> dict[str, Any]:
    """A row's figures for ``case`` timed by :func:`time_cases` (or its error)."""
    if id(case) in failed:
        return {"error": " ".join(failed[id(case)].split())}
    rates = [steps / s for s in case.seconds]
    return {"engine_used": case.engine_used, "steps": steps, "seconds": case.seconds, "blocks": rates,
            "steps_per_s": _report.summarize(rates), "loop_steps_per_s": _report.summarize(case.loop_rates)["median"],
            "updates_per_block": case.updates, "n_params": case.n_params}


def _cell(r: dict[str, Any]) -> tuple[str, str]:
    if "steps_per_s" in r:
        s = r["steps_per_s"]
        return (f"{_report.fmt_rate(s['median'])} ({_report.fmt_rate(s['min'])}-{_report.fmt_rate(s['max'])})",
                _report.fmt_ratio(r.get("vs_bptt")))
    return ("skipped" if "skipped" in r else "error"), "–"


def _markdown(report: dict[str, Any], command: str) -> str:
    rows, settings = report["rows"], report["settings"]
    ns = settings["n"]
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    parts = [f"# neuro bench train\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\nCommand: `{command}`\n"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        header = ["rule", *(["engine"] if len(engines) > 1 else [])]
        for n in ns:
            header += [f"n={n} steps/s (min-max)", f"n={n} x bptt"]
        if "compiled" in engines and "torch" in engines:
            header += [f"n={n} compiled / torch" for n in ns]
        body = []
        for rule in dict.fromkeys(r["rule"] for r in mine):
            for engine in engines:
                line: list[Any] = [rule, *([engine] if len(engines) > 1 else [])]
                cells = {r["n"]: r for r in mine if r["rule"] == rule and r["engine"] == engine}
                if not any("steps_per_s" in r for r in cells.values()):  # nothing measured: a note below
                    continue
                for n in ns:
                    line += list(_cell(cells[n])) if n in cells else ["–", "–"]
                if "compiled" in engines and "torch" in engines:
                    line += [_report.fmt_ratio(cells[n].get("speedup_vs_torch")) if n in cells and engine == "compiled"
                             else "–" for n in ns]
                body.append(line)
        task = mine[0]["task"]
        parts.append(f"## {model} (task `{task}`)\n\n{_report.md_table(header, body)}\n")
    used = sorted({str(r.get("engine_used")) for r in rows if "steps_per_s" in r})
    updates = sorted({(r["rule"], r["updates_per_block"]) for r in rows if "updates_per_block" in r})
    notes = _notes(rows, len(engines) > 1)
    m = report["machine"]
    text = "\n".join(parts)
    if rows:
        text += (f"\nMeasured: steps/s of whole `neuro.train` calls of {settings['steps']} steps (batch 1, float32, "
                 f"update_every={settings['update_every']}), median (min-max) of {settings['blocks']} alternating "
                 f"blocks per rule after one warm-up run; x bptt: the rule's median over bptt's median, same model "
                 f"and n, on the same engine where bptt runs on it, else on torch (the JSON also has "
                 f"`loop_steps_per_s`, the loop alone from the run's `History.elapsed_s`). Engine(s) requested: "
                 f"{', '.join(settings['engines'])}; used (as the runs report it): {', '.join(used) or '–'}. "
                 f"Optimizer updates per block: {', '.join(sorted({f'{r} {u}' for r, u in updates}))}.\n")
    text += (f"\nMachine: {m['cpu_model']}, {m['cores']} cores shared with other work, {m['threads']} torch "
             f"thread(s); load average (1 min) before/after {report['loadavg_before']}/{report['loadavg_after']}; "
             f"torch {m['torch']}, {m['date']}.\n")
    if notes:
        text += "\nNot measured:\n\n" + "\n".join(notes) + "\n"
    return text


def _notes(rows: list[dict[str, Any]], engines: bool) -> list[str]:
    """One line per (model, rule, engine, reason) not measured, with its sizes; the rules the compiled engine
    does not run, in one line."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    no_compiled: dict[str, list[str]] = {}
    for r in rows:
        why = r.get("skipped") or (f"error: {r['error']}" if "error" in r else None)
        if why is None:
            continue
        if r["engine"] == "compiled" and "engine='compiled' is invalid" in why:
            no_compiled.setdefault(r["model"], [])
            if r["rule"] not in no_compiled[r["model"]]:
                no_compiled[r["model"]].append(r["rule"])
            continue
        groups.setdefault((r["model"], r["rule"], r["engine"], why), []).append(r["n"])
    notes = [f"- {model} {rule}{f' [{engine}]' if engines else ''}, n = {', '.join(map(str, ns))}: {why}"
             for (model, rule, engine, why), ns in groups.items()]
    if no_compiled:
        try:
            from neuro.engine import supported

            runs = f" (the compiled engine runs {supported()})"
        except ImportError:
            runs = ""
        notes.append("- no compiled engine for: " + "; ".join(f"{m} {', '.join(rs)}" for m, rs in no_compiled.items())
                     + runs)
    return notes


def _parse(argv: list[str]) -> argparse.Namespace:
    import models
    from neuro import rules

    from . import train_columns

    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help="models (default: rate lif; none with --columns alone)")
    ap.add_argument("--rules", nargs="+", default=None,
                    help="rules for every model, besides bptt and tbptt (default: a set per model; named rules run "
                         "at every --n the rule accepts)")
    ap.add_argument("--n", nargs="+", type=int, default=[32, 256, 1024], help="hidden units")
    ap.add_argument("--steps", type=int, default=500, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks per rule (alternating)")
    ap.add_argument("--engine", default="auto", help=f"one of {', '.join(ENGINES)} (a TrainConfig engine setting, "
                    "where neuro.train has one; both: torch and compiled side by side)")
    ap.add_argument("--update-every", type=int, default=1, metavar="K",
                    help="every rule's update_every (default 1: the online rules update at every step; 100, the "
                         "chunk: once per chunk, as BPTT does)")
    ap.add_argument("--columns", nargs="*", default=None, metavar="ENTRY",
                    help="the columns networks on trace patterning, each held to a goal: entries "
                         f"{', '.join(train_columns.ENTRIES)} (default: all); without --models, only these")
    ap.add_argument("--columns-steps", type=int, default=None, metavar="N",
                    help="steps per timed block of the columns section (default: --steps); its networks run "
                         "~10^5 steps/s, so blocks of a few thousand steps time mostly the run's setup")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--quick", action="store_true", help="n = 32, 50 steps, 2 blocks (a smoke test)")
    ap.add_argument("--floor", action="store_true",
                    help="also the floor at each n: the rate RNN's compiled step plus one SGD (and, apart, one "
                         "Adam) update of every parameter, no rule (neuro.engine.floor), median steps/s of "
                         "--blocks runs of --steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.blocks = [32], 50, 2
    if min(args.n) < 1 or args.steps < 1 or args.blocks < 1 or args.threads < 1 or args.update_every < 1:
        ap.error(f"--n {' '.join(map(str, args.n))}, --steps {args.steps}, --blocks {args.blocks}, --threads "
                 f"{args.threads}, --update-every {args.update_every}: each must be an integer >= 1")
    if args.columns is not None:
        bad = sorted(set(args.columns) - set(train_columns.ENTRIES))
        if bad:
            ap.error(f"--columns {' '.join(bad)}: unknown; valid entries are {', '.join(train_columns.ENTRIES)}")
        args.columns = list(dict.fromkeys(args.columns or train_columns.ENTRIES))
    if args.columns_steps is None:
        args.columns_steps = args.steps
    elif args.columns_steps < 1:
        ap.error(f"--columns-steps {args.columns_steps}: must be an integer >= 1")
    if args.models is None:
        args.models = [] if args.columns else list(DEFAULT_RULES)
    bad = sorted(set(args.models) - set(models.available()))
    if bad:
        ap.error(f"--models {' '.join(bad)}: unknown; valid choices are {', '.join(models.available())}")
    bad = sorted(set(args.rules or ()) - set(rules.available()))
    if bad:
        ap.error(f"--rules {' '.join(bad)}: unknown; valid choices are {', '.join(rules.available())}")
    if args.engine not in ENGINES:
        ap.error(f"--engine {args.engine!r} is invalid: valid choices are {', '.join(ENGINES)}")
    if args.engine in ("compiled", "both") and not has_engine():
        ap.error(f"--engine {args.engine}: this neuro.train has no engine setting (TrainConfig has no 'engine' "
                 "field): valid choices here are torch, auto")
    args.engines = ["torch", "compiled"] if args.engine == "both" else [args.engine]
    args.n = list(dict.fromkeys(args.n))
    return args


def _floor(args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """The floor's median steps/s at each ``--n`` for each optimizer (:func:`neuro.engine.floor.measure`), the
    two measured in alternating blocks."""
    import statistics

    from neuro.engine import floor

    out: dict[str, dict[int, float]] = {o: {} for o in floor.OPTIMIZERS}
    for n in args.n:
        blocks: dict[str, list[float]] = {o: [] for o in floor.OPTIMIZERS}
        for _ in range(args.blocks):
            for o in floor.OPTIMIZERS:
                blocks[o].append(floor.measure(n, args.steps, optimizer=o))
        for o in floor.OPTIMIZERS:
            out[o][n] = statistics.median(blocks[o])
            print(f"{PROG}: rate n={n} floor with {o} [compiled]: {out[o][n]:.0f} steps/s", file=sys.stderr,
                  flush=True)
    return out


def _floor_text(floor: dict[str, dict[int, float]], rows: list[dict[str, Any]]) -> str:
    """The floor's paragraph: its steps/s with each optimizer and, where measured, compiled rate BPTT's."""
    bptt = {r["n"]: r["steps_per_s"]["median"] for r in rows if r["model"] == "rate" and r["rule"] == "bptt"
            and r.get("engine_used") == "compiled" and r.get("steps_per_s")}
    parts = [f"with {o}: " + ", ".join(f"n={n} {_report.fmt_rate(v)}" for n, v in per_n.items())
             for o, per_n in floor.items()]
    text = ("\nFloor (the rate RNN's compiled step, readout and loss, and one update of every parameter, no "
            "rule; median steps/s, the kernel alone, no Python around it): " + "; ".join(parts) + ".")
    if bptt:
        text += (" Compiled rate BPTT, whole neuro.train calls of this run, updating once per chunk: "
                 + ", ".join(f"n={n} {_report.fmt_rate(v)}" for n, v in bptt.items()) + ". An online rule "
                 "that updates at every step costs at least the floor with its optimizer: where that floor is "
                 "below BPTT, no such rule can match BPTT's throughput.")
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    from . import train_columns

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    command = shlex.join(["neuro", "bench", "train", *argv])
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    load = _report.loadavg()
    rows: list[dict[str, Any]] = []
    try:
        for model in args.models:
            named = args.rules if args.rules is not None else DEFAULT_RULES.get(model, ())
            rule_names = list(dict.fromkeys([*REFERENCES, *named]))
            for n in args.n:
                group = measure_group(model, n, rule_names, args.engines, args.steps, args.blocks,
                                      capped=args.rules is None, update_every=args.update_every)
                rows += group
                for r in group:
                    s = r.get("steps_per_s")
                    print(f"{PROG}: {model} n={n} {r['rule']} [{r['engine']}]: "
                          + (f"{s['median']:.0f} steps/s, {r['vs_bptt']:.2f}x bptt" if s and r.get("vs_bptt")
                             else r.get("skipped") or r.get("error") or "–"), file=sys.stderr, flush=True)
        columns = [] if args.columns is None else train_columns.measure(
            args.columns, args.engines, args.columns_steps, args.blocks, args.update_every, log=f"{PROG}: columns")
        floor = _floor(args) if args.floor else {}
    finally:
        torch.set_num_threads(threads)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(command=command, batch=1, dtype="float32", warm_up_steps=min(args.steps, WARM_UP),
                    engine_setting=has_engine())
    report = {"machine": _report.machine_info(args.threads), "loadavg_before": load,
              "loadavg_after": _report.loadavg(), "settings": settings, "rows": rows,
              **({"floor_steps_per_s": floor["sgd"], "floor_adam_steps_per_s": floor["adam"]} if floor else {}), **({"columns": columns} if columns else {})}
    out = Path(args.out)
    _report.write_json(out / "train.json", report)
    text = _markdown(report, command)
    if columns:
        text += "\n" + train_columns.markdown(columns, settings)
    if floor:
        text += _floor_text(floor, rows)
    _report.write_atomic(out / "train.md", text)
    print(text)
    return 0
