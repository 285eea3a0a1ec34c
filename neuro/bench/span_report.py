"""The summaries, tables and plot of ``neuro bench span`` (:mod:`neuro.bench.span`)."""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

from neuro.bench import _report

LAST_FRACTION = 0.2  # the final loss: mean over the last 20% of steps


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return m, se


def summarise(results: list[dict[str, Any]], blocks: list[tuple[int, str]], methods: list[str],
              gaps: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Per (size, condition, method): runs, diverged, mean ± s.e. of the final loss and the fraction of the
    gap ``(baseline - loss) / (baseline - target)`` captured (``gaps[condition] = (baseline, target)``)."""
    out: dict[str, Any] = {}
    for size, cond in blocks:
        for m in methods:
            rs = [r for r in results if (r["hidden"], r["condition"], r["method"]) == (size, cond, m)]
            if not rs:
                continue
            xs = [r["final_loss"] for r in rs if r["final_loss"] is not None]
            mean, se = mean_se(xs) if xs else (math.nan, math.nan)
            base, target = gaps[cond]
            out.setdefault(str(size), {}).setdefault(cond, {})[m] = {
                "n": len(xs), "diverged": len(rs) - len(xs), "steps": rs[0]["steps"], "lr": rs[0]["lr"],
                "mean": mean if xs else None, "se": se if len(xs) > 1 else None,
                "gap_captured": (base - mean) / (base - target) if xs else None}
    return out


def paired(results: list[dict[str, Any]], size: int, cond: str, a: str = "nobacktrack-kalman",
           b: str = "tbptt") -> dict[str, Any] | None:
    """``a`` minus ``b`` over the seeds both finished: mean and s.e. of the per-seed differences, decided
    at 2 s.e."""
    loss = {(r["method"], r["seed"]): r["final_loss"] for r in results
            if r["hidden"] == size and r["condition"] == cond and r["final_loss"] is not None}
    seeds = sorted({s for (m, s) in loss if m == a} & {s for (m, s) in loss if m == b})
    if not seeds:
        return None
    d = [loss[a, s] - loss[b, s] for s in seeds]
    mean, se = mean_se(d)
    decided = len(d) > 1 and abs(mean) > 2 * se
    return {"hidden": size, "condition": cond, "seeds": len(d), "difference": mean,
            "se": se if len(d) > 1 else None,
            "better": ("Kalman NBT" if mean < 0 else "TBPTT") if decided else "neither (within 2 s.e.)"}


def _cell(s: dict[str, Any] | None, key: str) -> str:
    if s is None:
        return "—"
    if not s["n"]:
        return f"diverged ({s['diverged']})"
    if key == "mean":
        txt = f"{s['mean']:.4f}" + (f" ± {s['se']:.4f}" if s["se"] is not None else "")
    else:
        txt = f"{s['gap_captured']:+.2f}"
    return txt + (f" ({s['diverged']} div.)" if s["diverged"] else "")


def markdown(head: str, summary: dict[str, Any], verdict: list[dict[str, Any]], sizes: list[int],
             conds: list[str], methods: list[str], beyond: dict[str, bool], gaps: dict[str, tuple[float, float]],
             image: str, tail: str) -> str:
    parts = [head]
    for size in sizes:
        if str(size) not in summary:
            continue
        got = summary[str(size)]
        cs = [c for c in conds if c in got]
        ms = [m for m in methods if any(m in got[c] for c in cs)]
        steps = sorted({got[c][m]["steps"] for c in cs for m in got[c]})
        parts.append(f"## n = {size} ({', '.join(map(str, steps))} steps)\n\nFinal loss (nats), mean ± s.e. over seeds:\n")
        rows = [[m] + [_cell(got[c].get(m), "mean") for c in cs] for m in ms]
        parts.append(_report.md_table(["method"] + cs, rows))
        parts.append("\nFraction of the gap captured, (baseline - loss) / (baseline - target):\n")
        rows = [[m] + [_cell(got[c].get(m), "gap") for c in cs] for m in ms]
        parts.append(_report.md_table(["method"] + [f"{c} ({gaps[c][0]:.3f} → {gaps[c][1]:.3f})" for c in cs], rows))
        parts.append("")
    vrows = [[v["hidden"], v["condition"], "yes" if beyond[v["condition"]] else "no", v["seeds"],
              f"{v['difference']:+.4f}" + (f" ± {v['se']:.4f}" if v["se"] is not None else ""), v["better"]]
             for v in verdict]
    if vrows:
        parts.append("## Kalman-like NoBackTrack minus TBPTT, paired by seed (negative: Kalman better; "
                     "decided at 2 s.e.)\n")
        parts.append(_report.md_table(["n", "condition", "span >= k", "seeds", "difference", "better"], vrows))
    parts.append(f"\n![final loss per condition and size]({image})\n")
    parts.append(tail)
    return "\n".join(parts) + "\n"


def plot(path: str, summary: dict[str, Any], sizes: list[int], conds: list[str], methods: list[str],
         gaps: dict[str, tuple[float, float]]) -> None:
    """One panel per condition: the fraction of the gap captured against the hidden size, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in conds if any(c in summary.get(str(s), {}) for s in sizes)]
    if not conds:
        return
    fig, axes = plt.subplots(1, len(conds), figsize=(3.2 * len(conds), 3.4), squeeze=False, sharey=True)
    for ax, cond in zip(axes[0], conds):
        for i, m in enumerate(methods):
            xs, ys, es = [], [], []
            for s in sizes:
                v = summary.get(str(s), {}).get(cond, {}).get(m)
                if v and v["n"]:
                    base, target = gaps[cond]
                    xs.append(s * (1 + 0.04 * (i - 2)))
                    ys.append(v["gap_captured"])
                    es.append((v["se"] or 0.0) / abs(base - target))
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("hidden units n")
    axes[0][0].set_ylabel("fraction of the gap captured")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
