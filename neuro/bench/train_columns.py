"""``neuro bench train --columns``: steps/s of ``neuro.train`` for the columns networks of Javed, Shah, Sutton
& White (2023) on trace patterning, each held to a goal.

Every entry learns the value prediction by TD(lambda) (``td-lambda``: gamma 0.9, lambda 0.99, the cumulant
``x_t[6]``, as ``configs/ccn_trace_patterning.toml`` sets it) with the gradient of ``v_t`` from its inner rule,
batch 1, float32, every other setting at its default (Adam, lr 1e-3, chunks of 100 steps, ``update_every``
from ``--update-every``):

- ``columnar``: columnar 7:7 (7 LSTM columns in one stage), exact columnar RTRL; goal 250,000 steps/s.
- ``ccn``: CCN 20:4 (20 LSTM columns, stages of 4), constructive RTRL with its stage schedule: a block's
  steps in five equal stages (rounded down to a whole number of chunks), so that every block runs the whole
  schedule; goal 150,000 steps/s.
- ``lstm-td``: a dense 5-unit LSTM, T-BPTT of ``v_t`` over a sliding window of k = 3 steps (the compute-matched
  baseline); goal 100,000 steps/s.

Timed as the other rows (:func:`neuro.bench.train.time_cases`): one warm-up run, then alternating blocks of
whole ``neuro.train`` calls, median (min-max) of the blocks' steps/s.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from . import _report
from .train import _Case, _config, measured, time_cases

__all__ = ["ENTRIES", "Entry", "markdown", "measure"]

TASK = "trace-patterning"
#: td-lambda's options for every entry (the inner rule and its options are the entry's)
TD_OPTIONS: dict[str, Any] = {"cumulant_input": 6, "gamma": 0.9, "lam": 0.99}
CHUNK = 100  # TrainConfig's default chunk: stages switch at chunk ends


@dataclasses.dataclass(frozen=True)
class Entry:
    """One network and inner rule of the section, and the steps/s it is held to."""

    label: str
    model: str
    n_hidden: int
    inner: str
    goal: float
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    inner_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: int = 0  # stages of the schedule (0: none)

    def rule_options(self) -> dict[str, Any]:
        return {"rule": self.inner, **({"rule_options": self.inner_options} if self.inner_options else {}),
                **TD_OPTIONS}

    def schedule(self, steps: int) -> str:
        """The stage schedule of a run of ``steps`` steps: ``stages`` equal stages of whole chunks."""
        per_stage = max(CHUNK, steps // self.stages // CHUNK * CHUNK)
        return f"{self.n_hidden}:{self.model_options['per_stage']}:{per_stage}"


ENTRIES: dict[str, Entry] = {
    "columnar": Entry("columnar 7:7", "columnar", 7, "columnar", 250_000),
    "ccn": Entry("CCN 20:4", "constructive", 20, "constructive", 150_000, model_options={"per_stage": 4}, stages=5),
    "lstm-td": Entry("dense LSTM 5, T-BPTT k = 3", "lstm", 5, "tbptt", 100_000, inner_options={"k": 3}),
}


def _build(entry: Entry, engine: str, steps: int, update_every: int) -> _Case | str:
    """The case, or why it does not run (a run of ``steps`` refused by the training's checks)."""
    import models
    from neuro import rules, tasks
    from neuro.training import prepare

    task = tasks.make(TASK)
    net = models.make(entry.model, n_in=task.n_in, n_hidden=entry.n_hidden, n_out=task.n_out, **entry.model_options)
    obj = rules.make("td-lambda", net, **entry.rule_options())
    case = _Case("td-lambda", engine, net, obj, task, _config(engine, update_every),
                 schedule=entry.schedule if entry.stages else None)
    try:
        prepare(net, obj, task, steps, case.config_for(steps))
    except (ValueError, TypeError, MemoryError) as e:
        return f"{type(e).__name__}: {e}"
    return case


def measure(names: list[str], engines: list[str], steps: int, blocks: int, update_every: int = 1,
            log: str | None = None) -> list[dict]:
    """A row per (entry, engine): warm-up runs, then alternating timed blocks; each row printed to stderr after
    ``log`` where given."""
    rows: list[dict[str, Any]] = []
    cases: list[tuple[dict[str, Any], _Case]] = []
    for name in names:
        entry = ENTRIES[name]
        for engine in engines:
            row = {"section": "columns", "entry": name, "label": entry.label, "model": entry.model, "task": TASK,
                   "n": entry.n_hidden, "model_options": entry.model_options, "rule": "td-lambda",
                   "options": entry.rule_options(), "engine": engine, "goal_steps_per_s": entry.goal}
            if entry.stages:
                row["schedule"] = entry.schedule(steps)
            try:
                case = _build(entry, engine, steps, update_every)
            except Exception as e:  # building one entry failing is reported, the others run
                case = f"{type(e).__name__}: {e}"
            if isinstance(case, str):
                row["skipped"] = " ".join(case.split())
            else:
                cases.append((row, case))
            rows.append(row)
    # the warm-up runs every stage of a schedule at its shortest (stages of one chunk)
    warm_up = min(steps, max([CHUNK * ENTRIES[r["entry"]].stages for r, _ in cases] + [200]))
    failed = time_cases([c for _, c in cases], steps, blocks, warm_up)
    for row, case in cases:
        row.update(measured(case, steps, failed))
        if "steps_per_s" in row:
            row["meets_goal"] = row["steps_per_s"]["median"] >= row["goal_steps_per_s"]
    if "torch" in engines and "compiled" in engines:
        for r in rows:
            t = next((q for q in rows if q["entry"] == r["entry"] and q["engine"] == "torch" and "steps_per_s" in q),
                     None)
            if r["engine"] == "compiled" and "steps_per_s" in r and t is not None:
                r["speedup_vs_torch"] = r["steps_per_s"]["median"] / t["steps_per_s"]["median"]
    for r in rows if log else ():
        s = r.get("steps_per_s")
        print(f"{log} {r['entry']} [{r['engine']}]: " + (f"{s['median']:.0f} steps/s (goal {r['goal_steps_per_s']:.0f})"
              if s else r.get("skipped") or r.get("error") or "–"), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The section's table and what it measured."""
    both = any("speedup_vs_torch" in r for r in rows)
    header = ["entry", "network", "inner rule", "engine", "steps/s (min-max)", "goal", "met",
              *(["compiled / torch"] if both else []), "updates per block"]
    body, notes = [], []
    for r in rows:
        if "steps_per_s" not in r:
            notes.append(f"- {r['entry']} [{r['engine']}]: {r.get('skipped') or 'error: ' + r.get('error', '')}")
            continue
        s = r["steps_per_s"]
        inner = r["options"]["rule"] + "".join(f" {k}={v}" for k, v in r["options"].get("rule_options", {}).items())
        network = r["label"] + (f", schedule {r['schedule']}" if "schedule" in r else "")
        body.append([r["entry"], network, inner, r["engine"],
                     f"{_report.fmt_rate(s['median'])} ({_report.fmt_rate(s['min'])}-{_report.fmt_rate(s['max'])})",
                     _report.fmt_rate(r["goal_steps_per_s"]), "yes" if r["meets_goal"] else "no",
                     *([_report.fmt_ratio(r.get("speedup_vs_torch"))] if both else []), r["updates_per_block"]])
    text = (f"## Columns networks on trace patterning (TD(lambda))\n\n{_report.md_table(header, body)}\n\n"
            f"Measured: steps/s of whole `neuro.train` calls of {settings['columns_steps']} steps of `td-lambda` (gamma 0.9, "
            f"lambda 0.99, cumulant x[6]) over the inner rule, batch 1, float32, update_every="
            f"{settings['update_every']}, median (min-max) of {settings['blocks']} alternating blocks after one "
            "warm-up run; goal: the steps/s the entry is held to. The CCN's stage schedule puts a block's steps in "
            "five equal stages.\n")
    if notes:
        text += "\nNot measured:\n\n" + "\n".join(notes) + "\n"
    return text
