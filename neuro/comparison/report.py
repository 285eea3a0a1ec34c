"""The results of a comparison: a table (mean and standard error across seeds), CSV, Markdown, plots.

Files written by :meth:`Results.write` into a directory:

* ``runs.csv``: one row per run (rule, seed, final and held-out loss, accuracy, mean alignment, time per
  step, peak memory, diverged);
* ``curves.csv``: the learning curves and the alignment along training, one row per (rule, seed, step);
  the plots are drawn from exactly these data;
* ``summary.csv`` and ``summary.md``: one row per rule, mean and standard error across its seeds
  (diverged runs counted, left out of the means);
* ``curves.png`` (loss against step, mean and standard error across seeds), ``alignment.png`` (cosine
  with BPTT's gradient against step), ``cost.png`` (time per step and peak memory by rule).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = ["Results"]

SUMMARY_COLUMNS = ["rule", "runs", "diverged", "final_loss", "final_loss_se", "eval_loss", "eval_loss_se",
                   "eval_accuracy", "eval_accuracy_se", "alignment", "alignment_se", "alignment_last",
                   "alignment_W_rec",
                   "time_per_step_ms", "time_vs_bptt", "peak_mem_mb", "n_params"]


def _mean_se(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else None
    return statistics.fmean(v), se


def _mean_alignment(run: dict[str, Any], key: str | None = None) -> float | None:
    """Mean over training of the overall cosine with BPTT's gradient (or of parameter ``key``'s)."""
    c = [a["cosine"] if key is None else a.get("per_param", {}).get(key) for a in run.get("alignment", [])]
    c = [x for x in c if x is not None]
    return statistics.fmean(c) if c else None


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


@dataclasses.dataclass
class Results:
    """Per run: the dict of :func:`neuro.comparison.worker.run_one` (``spec``, ``curve``, ``alignment``,
    ``final_loss``, ``eval_loss``, ``eval_accuracy``, ``time_per_step_s``, ``peak_mem_bytes``, ...)."""

    runs: list[dict[str, Any]]
    #: the trained parameters by ``(rule, seed)`` (saved as ``runs/<rule>/seed-<seed>.pt`` beside each result)
    params: dict[tuple[str, int], dict[str, Any]] = dataclasses.field(default_factory=dict, repr=False)

    def trained(self, rule: str, seed: int) -> dict[str, Any]:
        """The parameters run ``(rule, seed)`` ended with."""
        if (rule, seed) not in self.params:
            have = ", ".join(f"{r}/{s}" for r, s in sorted(self.params)) or "none"
            raise KeyError(f"no trained parameters for rule {rule!r}, seed {seed}: have {have}")
        return self.params[(rule, seed)]

    def best(self, key: str = "eval_loss") -> tuple[str, int]:
        """``(rule, seed)`` of the run with the lowest ``key`` (highest for ``eval_accuracy``)."""
        ok = [r for r in self.runs if not r.get("diverged") and r.get(key) is not None]
        if not ok:
            raise ValueError(f"no run has a value of {key!r}")
        sign = -1.0 if key == "eval_accuracy" else 1.0
        r = min(ok, key=lambda r: sign * r[key])
        return r["spec"]["rule"], r["spec"]["seed"]

    @property
    def rules(self) -> list[str]:
        out: list[str] = []
        for r in self.runs:
            if r["spec"]["rule"] not in out:
                out.append(r["spec"]["rule"])
        return out

    def of(self, rule: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["spec"]["rule"] == rule]

    def run_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.runs:
            ok = not r.get("diverged")
            rows.append({
                "rule": r["spec"]["rule"], "seed": r["spec"]["seed"],
                "final_loss": r.get("final_loss") if ok else None, "eval_loss": r.get("eval_loss") if ok else None,
                "eval_accuracy": r.get("eval_accuracy") if ok else None,
                "alignment": _mean_alignment(r) if ok else None,
                "time_per_step_ms": 1e3 * r["time_per_step_s"] if ok else None,
                "peak_mem_mb": r["peak_mem_bytes"] / 2**20 if ok else None,
                "diverged": r.get("diverged") or "",
            })
        return rows

    def curve_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.runs:
            align = {a["step"]: a["cosine"] for a in r.get("alignment", [])}
            for c in r.get("curve", []):
                rows.append({"rule": r["spec"]["rule"], "seed": r["spec"]["seed"], "step": c["step"],
                             "loss": c["loss"], "alignment": align.get(c["step"])})
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """One row per rule: means and standard errors across seeds (diverged runs left out)."""
        rows = []
        bptt_time = None
        per_rule = {}
        for rule in self.rules:
            ok = [r for r in self.of(rule) if not r.get("diverged")]
            row: dict[str, Any] = {"rule": rule, "runs": len(self.of(rule)), "diverged": len(self.of(rule)) - len(ok)}
            for key, get in (("final_loss", lambda r: r["final_loss"]), ("eval_loss", lambda r: r["eval_loss"]),
                             ("eval_accuracy", lambda r: r["eval_accuracy"]), ("alignment", _mean_alignment)):
                row[key], row[f"{key}_se"] = _mean_se([get(r) for r in ok])
            last = [r["alignment"][-1]["cosine"] for r in ok if r.get("alignment")]
            row["alignment_last"] = _mean_se(last)[0]
            # the overall cosine is often dominated by the readout, whose gradient most rules get exactly
            row["alignment_W_rec"] = _mean_se([_mean_alignment(r, "W_rec") for r in ok])[0]
            row["time_per_step_ms"] = _mean_se([1e3 * r["time_per_step_s"] for r in ok])[0]
            row["peak_mem_mb"] = _mean_se([r["peak_mem_bytes"] / 2**20 for r in ok])[0]
            row["n_params"] = ok[0]["n_params"] if ok else None
            per_rule[rule] = row
            if rule == "bptt":
                bptt_time = row["time_per_step_ms"]
        for rule in self.rules:
            row = per_rule[rule]
            t = row["time_per_step_ms"]
            row["time_vs_bptt"] = t / bptt_time if t is not None and bptt_time else None
            rows.append(row)
        return rows

    def markdown(self) -> str:
        s = self.runs[0]["spec"] if self.runs else {}
        head = (f"{s.get('task')} / {s.get('model')} (n_hidden={s.get('hidden')}), {s.get('steps')} steps, "
                f"{len({r['spec']['seed'] for r in self.runs})} seed(s); mean ± s.e. across seeds\n\n")
        cols = ["rule", "final loss", "held-out loss", "accuracy", "alignment (mean)", "alignment (last)",
                "W_rec alignment", "ms/step", "x bptt", "peak MB", "diverged"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

        def pm(m, se):
            return "-" if m is None else (_fmt(m) + (f" ± {se:.2g}" if se is not None else ""))
        for r in self.summary():
            lines.append("| " + " | ".join([
                r["rule"], pm(r["final_loss"], r["final_loss_se"]), pm(r["eval_loss"], r["eval_loss_se"]),
                pm(r["eval_accuracy"], r["eval_accuracy_se"]), pm(r["alignment"], r["alignment_se"]),
                _fmt(r["alignment_last"], 3), _fmt(r["alignment_W_rec"], 3), _fmt(r["time_per_step_ms"], 3), _fmt(r["time_vs_bptt"], 3),
                _fmt(r["peak_mem_mb"], 3), f"{r['diverged']}/{r['runs']}"]) + " |")
        return head + "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.markdown()

    def write(self, out: str | Path) -> None:
        """Tables and plots into ``out`` (atomic writes; see the module docstring)."""
        from neuro import io

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        io.write_csv(out / "runs.csv", self.run_rows())
        io.write_csv(out / "curves.csv", self.curve_rows(), ["rule", "seed", "step", "loss", "alignment"])
        io.write_csv(out / "summary.csv", self.summary(), SUMMARY_COLUMNS)
        io.write_text(out / "summary.md", self.markdown())
        self.plot(out)

    def plot(self, out: str | Path) -> list[Path]:
        """``curves.png``, ``alignment.png``, ``cost.png`` from :meth:`curve_rows` / :meth:`summary`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from neuro import io

        out = Path(out)
        rows = self.curve_rows()
        written = []
        for name, key, ylabel, log in (("curves.png", "loss", "loss per step", True),
                                       ("alignment.png", "alignment", "cosine with BPTT's gradient", False)):
            fig, ax = plt.subplots(figsize=(6, 4))
            for rule in self.rules:
                by_step: dict[int, list[float]] = {}
                for r in rows:
                    if r["rule"] == rule and r[key] is not None and math.isfinite(r[key]):
                        by_step.setdefault(r["step"], []).append(r[key])
                if not by_step:
                    continue
                steps = sorted(by_step)
                m = [statistics.fmean(by_step[s]) for s in steps]
                se = [statistics.stdev(by_step[s]) / math.sqrt(len(by_step[s])) if len(by_step[s]) > 1 else 0.0
                      for s in steps]
                ax.plot(steps, m, label=rule, marker="o" if len(steps) < 3 else None)
                ax.fill_between(steps, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)], alpha=0.2)
            if log and ax.lines and all(y > 0 for line in ax.lines for y in line.get_ydata()):
                ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            if ax.lines:
                ax.legend(fontsize=8)
            fig.tight_layout()
            written.append(_save(fig, out / name, io))
            plt.close(fig)
        summ = self.summary()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        names = [r["rule"] for r in summ]
        a1.bar(names, [r["time_per_step_ms"] or 0.0 for r in summ])
        a1.set_ylabel("ms per step")
        a2.bar(names, [r["peak_mem_mb"] or 0.0 for r in summ])
        a2.set_ylabel("peak memory growth (MB)")
        for a in (a1, a2):
            a.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        written.append(_save(fig, out / "cost.png", io))
        plt.close(fig)
        return written


def _save(fig, path: Path, io) -> Path:
    with io.atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=100)
    return path
