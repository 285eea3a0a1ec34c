"""Scores of a reproduction's runs, their summaries and paired differences, and its tables and figure.

The score is the paper's: the squared return error ``(v_t - G_t)^2`` averaged over the last ``score_tail``
steps of a run (trace patterning 100,000 steps; Atari 500,000), or over the last 20% when a run is shorter
than five tails. The task's ``mse`` loss against the return target is half of it (``1/2 (v - G)^2``), so
the score is twice the mean loss of the metric rows that cover the tail (whole rows).

Paired differences: every method of a seed sees the same stream, so a difference between two methods is
taken seed by seed, over the same steps (the tail ending at the shorter of the two runs' lengths), on the
seeds both finished without diverging; mean ± standard error (``sd / sqrt(n)``) and the number of seeds.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["mean_se", "paired", "score", "tail_for"]


#: the method name of the reference row: the error of predicting v = 0 on the same steps
ZERO = "v = 0 (no learning)"

def tail_for(steps: int, score_tail: int) -> int:
    """The scored tail of a run of ``steps`` steps: ``score_tail``, or ``steps // 5`` below five tails."""
    return score_tail if steps >= 5 * score_tail else max(1, steps // 5)


def score(result: dict[str, Any], tail: int, end: int | None = None) -> tuple[float, int]:
    """``(mean (v - G)^2 over the tail, steps covered)``: twice the loss of the whole metric rows that cover
    the last ``tail`` steps up to step ``end`` (default the run's end). NaN for a diverged run."""
    curve = [r for r in result["curve"] if end is None or r["step"] <= end]
    if result.get("diverged") is not None or not curve:
        return math.nan, 0
    total, n = 0.0, 0
    for i in range(len(curve) - 1, -1, -1):
        if n >= tail:
            break
        start = curve[i - 1]["step"] if i > 0 else 0
        total += curve[i]["loss"] * (curve[i]["step"] - start)
        n += curve[i]["step"] - start
    return 2.0 * total / n, n


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error (``sd / sqrt(n)``, sd with ``n - 1``); NaN where undefined."""
    m = sum(xs) / len(xs) if xs else math.nan
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan
    return m, se


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], score_tail: int) -> dict[str, Any]:
    """``a - b`` seed by seed (``{seed: run result}`` each), over the same steps: mean, s.e., seeds, step."""
    diffs, end = [], None
    for s in sorted(set(a) & set(b)):
        ra, rb = a[s], b[s]
        if ra.get("diverged") is not None or rb.get("diverged") is not None:
            continue
        end = min(ra["spec"]["steps"], rb["spec"]["steps"])
        tail = tail_for(end, score_tail)
        diffs.append(score(ra, tail, end)[0] - score(rb, tail, end)[0])
    m, se = mean_se(diffs)
    return {"mean": m, "se": se, "seeds": len(diffs), "per_seed": diffs, "end": end}


def _fmt(m: float, se: float, digits: int = 5) -> str:
    if m is None or not math.isfinite(m):
        return "-"
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")


def _net(m: dict[str, Any]) -> str:
    s = f"{m['model']} {m['hidden']}"
    if m.get("schedule"):
        s += f", {m['schedule']}"
    if m["inner"] == "tbptt":
        s += f", T-BPTT k={m['k']}"
    return s


def tables(label: str, rows: list[dict[str, Any]], pairs: list[dict[str, Any]], best: str | None) -> str:
    """Markdown: the methods' table and the paired differences' table of one experiment."""
    head = f"### {label}\n\n" if label else ""
    zero = any("minus_zero_mean" in r for r in rows)
    lines = [head + "| method | network | params | compute / step | alpha | (v - G)^2, mean ± s.e. "
             + ("| minus v = 0's, paired, mean ± s.e. " if zero else "") + "| seeds done / planned | diverged |",
             "|---" * (8 + zero) + "|"]
    for r in sorted(rows, key=lambda r: (not math.isfinite(r["score_mean"]), r["score_mean"])):
        alpha = "-" if r["lr"] is None else f"{r['lr']:g}"
        z = f"| {_fmt(r.get('minus_zero_mean', math.nan), r.get('minus_zero_se', math.nan))} " if zero else ""
        lines.append(f"| {r['method']} | {r['network']} | {r['params']} | {r['compute']} | {alpha} "
                     f"| {_fmt(r['score_mean'], r['score_se'])} {z}| {r['seeds_done']} / {r['seeds_planned']} "
                     f"| {r['diverged']} |")
    if pairs:
        lines += ["", "Paired differences (same seed, same steps; negative: the first method's error is lower)"
                  + (f"; best T-BPTT on the pilot: {best}" if best else "") + ":", "",
                  "| difference | mean ± s.e. | seeds | over the tail ending at step |", "|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['a']} - {p['b']}{' (best T-BPTT)' if p.get('best') else ''} "
                         f"| {_fmt(p['mean'], p['se'])} | {p['seeds']} | {p['end'] if p['end'] else '-'} |")
    return "\n".join(lines)


def summary(per_game: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: each method's score per game and its mean rank across games (1 = lowest error), ranked over
    the games where every learning method has a score (the ``v = 0`` reference row is not ranked)."""
    games = list(per_game)
    names = list(dict.fromkeys(r["method"] for rows in per_game.values() for r in rows))
    ranks: dict[str, list[int]] = {n: [] for n in names}
    cell: dict[tuple[str, str], str] = {}
    for g, rows in per_game.items():
        learners = [r for r in rows if r["method"] != ZERO]
        if all(math.isfinite(r["score_mean"]) for r in learners):
            for i, r in enumerate(sorted(learners, key=lambda r: r["score_mean"])):
                ranks[r["method"]].append(i + 1)
        for r in rows:
            cell[(g, r["method"])] = _fmt(r["score_mean"], r["score_se"])
    lines = ["| method | " + " | ".join(games) + " | mean rank |", "|---" * (len(games) + 2) + "|"]
    for n in names:
        rk = f"{sum(ranks[n]) / len(ranks[n]):.2f} ({len(ranks[n])} games)" if ranks[n] else "-"
        lines.append(f"| {n} | " + " | ".join(cell.get((g, n), "-") for g in games) + f" | {rk} |")
    return "\n".join(lines)


def _band(ax, steps: list[int], vals: list[list[float]], label: str, style: dict[str, Any]) -> tuple[float, float]:
    """Mean over seeds (``vals[i]``: row ``i``'s per-seed values) with a band of one standard error."""
    stats = [mean_se(v) for v in vals]
    mean = [m for m, _ in stats]
    se = [0.0 if not math.isfinite(s) else s for _, s in stats]
    line, = ax.plot(steps, mean, label=label, **style)
    ax.fill_between(steps, [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                    color=line.get_color(), alpha=0.2, lw=0)
    return min(mean), max(mean)


def running(steps: list[int], values: list[float], window: int) -> list[float]:
    """The running mean over the last ``window`` steps at each row's end (the authors' metric as a curve):
    ``values[i]`` is the mean over the steps ``(steps[i-1], steps[i]]``; rows count by the steps they span, the
    first rows over what there is (a row is never split)."""
    out, acc, n, lo = [], 0.0, 0, 0
    spans = [b - a for a, b in zip([0] + steps[:-1], steps)]
    for i, (v, w) in enumerate(zip(values, spans)):
        acc, n = acc + v * w, n + w
        while lo < i and n - spans[lo] >= window:
            acc, n, lo = acc - values[lo] * spans[lo], n - spans[lo], lo + 1
        out.append(acc / n)
    return out


def plot(curves: dict[str, dict[str, dict[int, dict[str, Any]]]], path: str, title: str,
         zero: dict[str, dict[int, dict[int, float]]] | None = None, window: int = 0) -> None:
    """Error ``(v - G)^2`` against the step, one panel per experiment, one line per method (the columns
    networks thick, T-BPTT thin and dashed): each seed's running mean over the last ``window`` steps (the
    authors' metric as a curve; 0: each metric row alone), then the mean over the finished seeds with a band
    of one standard error (log y when the errors span more than a factor 10). ``curves``: ``{experiment: {method: {seed: run result}}}``. With ``zero`` (``{experiment:
    {seed: {row's last step: v = 0's error over the row}}}``), a second panel per experiment: each row's
    error minus v = 0's on the same steps (paired, so the stream's own ups and downs cancel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuro import io

    panels = [(label, kind) for label in curves for kind in (("error", "paired") if zero else ("error",))]
    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (label, kind) in zip(axes.flat, panels):
        lo, hi = math.inf, 0.0
        names = list(curves[label])
        tb = [n for n in names if n.startswith("tbptt")]
        others = [n for n in names if n not in tb]
        colour = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(others)}  # the columns networks: strong
        colour |= {n: plt.get_cmap("viridis")(i / max(len(tb) - 1, 1) * 0.9) for i, n in enumerate(tb)}
        for name, runs in curves[label].items():
            rs = {s: r for s, r in runs.items() if r.get("diverged") is None and r["curve"]}
            if not rs:
                continue
            rows = min(len(r["curve"]) for r in rs.values())
            steps = [row["step"] for row in next(iter(rs.values()))["curve"][:rows]]
            base = {s: (zero[label][s] if kind == "paired" else {}) for s in rs}
            per_seed = [[2 * r["curve"][i]["loss"] - base[s].get(steps[i], 0.0) for i in range(rows)]
                        for s, r in rs.items()]
            if window:
                per_seed = [running(steps, v, window) for v in per_seed]
            vals = [list(col) for col in zip(*per_seed)]
            style = ({"lw": 0.9, "ls": "--"} if name.startswith("tbptt") else {"lw": 1.8})  | {"color": colour[name]}
            a, b = _band(ax, steps, vals, f"{name} ({len(rs)} seeds)", style)
            lo, hi = min(lo, a), max(hi, b)
        if kind == "error" and 0 < lo and hi > 10 * lo:
            ax.set_yscale("log")
        if kind == "paired":
            ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("step")
        what = f"(v - G)^2, running mean over {window:,} steps" if window else "(v - G)^2 per metric row"
        ax.set_ylabel(what + (" minus v = 0's (paired)" if kind == "paired" else ""), fontsize=8)
        ax.set_title(f"{title}{': ' + label if label else ''}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    io.save_figure(fig, path, dpi=110)
    plt.close(fig)
