"""Tables, verdicts and learning curves of a perturbation-learning reproduction.

A run's final value of a metric is its mean over the last tenth of its epochs (at least one). Means are over
the seeds finished (± standard error); paired differences are taken seed by seed (same seed: same network
initialisation, training and test sequences), with the number of seeds on which the first is lower, and
decided at two standard errors. The claims:

- *close to BPTT*: ANP in time's median final training MSE over the seeds at most 1.25 times that of BPTT
  (and of the authors' baseline, one-step truncated BPTT), shown with the paired difference (medians: one
  run that blows up without becoming non-finite would decide a ratio of means);
- *ahead of NP and WP*: NP minus ANP in time, and WP minus ANP in time, above zero by two standard errors;
- *decorrelation helps*: each method with the layer minus without it, below zero by two standard errors.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from neuro.ccn_repro.report import mean_se

from . import config as C

__all__ = ["CLOSE", "final", "paired", "summarise", "tables", "plot"]

CLOSE = 1.25


def final(r: dict[str, Any], metric: str) -> float | None:
    """The run's final value of ``metric`` (mean over its last tenth of epochs), None if diverged or missing."""
    if r.get("diverged") is not None or not r.get("curve"):
        return None
    vals = [row[metric] for row in r["curve"] if metric in row]
    if not vals:
        return None
    k = max(1, len(vals) // 10)
    return sum(vals[-k:]) / k


def reached(r: dict[str, Any], threshold: float) -> int | None:
    """The first epoch whose training MSE is at most ``threshold``, None if none."""
    for row in r.get("curve", []) if r.get("diverged") is None else []:
        if row["train_mse"] <= threshold:
            return row["epoch"]
    return None


def paired(a: dict[int, dict], b: dict[int, dict], metric: str = "train_mse") -> dict[str, Any]:
    """``a - b`` seed by seed over the seeds both finished: mean, s.e., seeds."""
    d = [fa - fb for s in sorted(set(a) & set(b))
         if (fa := final(a[s], metric)) is not None and (fb := final(b[s], metric)) is not None]
    m, se = mean_se(d)
    return {"mean": m, "se": se, "seeds": len(d), "lower": sum(x < 0 for x in d)}


def summarise(cfg: dict[str, Any], results: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Per run group (:func:`config.label`): means of the final metrics, epochs to threshold, cost; and the
    claims' paired differences."""
    copy = cfg["experiment"] == "copy"
    metrics = ("train_mse", "test_mse") + (("train_bits", "test_bits") if copy else ())
    rows = {}
    for lbl, runs in results.items():
        row: dict[str, Any] = {"seeds": len(runs), "planned": len(cfg["seeds"]),
                               "diverged": sum(r.get("diverged") is not None for r in runs.values())}
        for m in metrics:
            vals = [v for r in runs.values() if (v := final(r, m)) is not None]
            row[m] = mean_se(vals)
            row[m + "_median"] = statistics.median(vals) if vals else math.nan
        hit = [reached(r, cfg["threshold"]) for r in runs.values()]
        ok = [h for h in hit if h is not None]
        row["to_threshold"] = (mean_se(ok), len(ok))
        times = [r["time_per_step_s"] for r in runs.values() if r.get("time_per_step_s")]
        row["s_per_run"] = sum(times) / len(times) * cfg["epochs"] * cfg["epoch_steps"] if times else math.nan
        row["engine"] = sorted({r.get("engine") for r in runs.values() if r.get("engine")})
        rows[lbl] = row
    claims = []
    for rate in cfg["decorrelation"]:
        lab = lambda m: C.label(m, rate)  # noqa: E731
        anp = results.get(lab("anp-time"), {})
        for base in ("bptt", "tbptt-1"):
            if results.get(lab(base)):
                p = paired(anp, results[lab(base)])
                ratio = rows[lab("anp-time")]["train_mse_median"] / rows[lab(base)]["train_mse_median"] \
                    if lab("anp-time") in rows else math.nan
                claims.append({"claim": "close to BPTT", "a": lab("anp-time"), "b": lab(base), **p, "ratio": ratio,
                               "holds": ratio <= CLOSE if math.isfinite(ratio) else None})
        for other in ("np", "wp"):
            if results.get(lab(other)):
                p = paired(results[lab(other)], anp)
                claims.append({"claim": "ahead of NP and WP", "a": lab(other), "b": lab("anp-time"), **p,
                               "holds": _decided(p, +1)})
    if len(cfg["decorrelation"]) > 1:
        off = min(cfg["decorrelation"])
        for rate in cfg["decorrelation"]:
            if rate == off:
                continue
            for m in cfg["methods"]:
                a, b = results.get(C.label(m, rate)), results.get(C.label(m, off))
                if a and b:
                    p = paired(a, b)
                    claims.append({"claim": "decorrelation helps", "a": C.label(m, rate), "b": C.label(m, off), **p,
                                   "holds": _decided(p, -1)})
    return {"rows": rows, "claims": claims, "zero_mse": zero_mse(cfg)}


def zero_mse(cfg: dict[str, Any]) -> float:
    """The training MSE of the output 0 (the mean of the squared targets over the seeds' training
    sequences): what a network that learnt nothing scores (for the de-meaned Mackey-Glass series, its
    variance)."""
    import neuro.tasks
    from neuro.train_config import TrainConfig

    from .runs import _sequence

    task = neuro.tasks.make(cfg["task"], **cfg["task_options"])
    vals = [float((_sequence(task, TrainConfig(seed=s).seed_for("task")).ys.double() ** 2).mean())
            for s in cfg["seeds"]]
    return sum(vals) / len(vals)


def _decided(p: dict[str, Any], sign: int) -> bool | None:
    """True: the difference has ``sign`` beyond two s.e.; False: the other sign beyond two s.e.; None: neither."""
    if p["seeds"] < 2 or not math.isfinite(p["se"]):
        return None
    if sign * p["mean"] > 2 * p["se"]:
        return True
    if -sign * p["mean"] > 2 * p["se"]:
        return False
    return None


def _ms(v: tuple[float, float], digits: int = 4) -> str:
    m, se = v
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}g} ± {se:.2g}" if math.isfinite(se) else f"{m:.{digits}g}"


def tables(cfg: dict[str, Any], summary: dict[str, Any]) -> str:
    copy = cfg["experiment"] == "copy"
    head = ["method", "seeds", "train MSE", "median", "test MSE", "median"] + \
        (["train error bits", "test error bits"] if copy else []) + \
        [f"epochs to MSE <= {cfg['threshold']:g} (seeds)", "s / run", "engine"]
    lines = [f"Training MSE of the output 0 (a network that learnt nothing): {summary['zero_mse']:.4g}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lbl, r in summary["rows"].items():
        (m, se), n = r["to_threshold"]
        cells = [lbl, f"{r['seeds']}/{r['planned']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
                 _ms(r["train_mse"]), f"{r['train_mse_median']:.4g}", _ms(r["test_mse"]),
                 f"{r['test_mse_median']:.4g}"]
        if copy:
            cells += [_ms(r["train_bits"], 5), _ms(r["test_bits"], 5)]
        cells += [f"{_ms((m, se), 3)} ({n})" if n else "never", f"{r['s_per_run']:.0f}", ", ".join(r["engine"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| claim | a | b | a - b (train MSE) | a lower (seeds) | ratio a/b | holds |",
              "|---|---|---|---|---|---|---|"]
    for c in summary["claims"]:
        ratio = f"{c['ratio']:.2f}" if "ratio" in c and math.isfinite(c["ratio"]) else ""
        holds = {True: "yes", False: "no", None: "undecided"}[c["holds"]]
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {_ms((c['mean'], c['se']), 3)} | {c['lower']}/{c['seeds']} | "
                     f"{ratio} | {holds} |")
    return "\n".join(lines) + "\n"


def plot(cfg: dict[str, Any], results: dict[str, dict[int, dict]], path: str, title: str) -> None:
    """Training MSE per epoch, mean ± s.e. over seeds, one line per run group (dashed: without the layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuro import io

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (lbl, runs) in enumerate(sorted(results.items())):
        curves = [[row["train_mse"] for row in r["curve"]] for r in runs.values() if r.get("diverged") is None and r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        ms = [mean_se([c[e] for c in curves]) for e in range(n)]
        x = list(range(1, n + 1))
        color = f"C{i % 10}"
        ax.plot(x, [m for m, _ in ms], color=color, ls="-" if lbl.endswith("+decor") else "--", lw=1.4, label=lbl)
        if len(curves) > 1:
            ax.fill_between(x, [m - s for m, s in ms], [m + s for m, s in ms], color=color, alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training MSE (the authors' MSELoss)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    io.save_figure(fig, path, dpi=120)
    plt.close(fig)
