"""Shared helpers of ``neuro bench``: machine description, statistics, atomic writes, Markdown tables."""

from __future__ import annotations

import concurrent.futures
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["cache_bytes", "device_missing", "device_name", "fmt_rate", "fmt_ratio", "loadavg", "machine_info",
           "md_table", "report_skipped", "summarize", "sync", "write_atomic", "write_json"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache(level_index: int) -> str | None:
    p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{level_index}/size")
    try:
        return p.read_text().strip()
    except OSError:
        return None


def cache_bytes(level_index: int = 3) -> int | None:
    """Size in bytes of the cache at sysfs ``index{level_index}`` of cpu0 (3: the last level here), or None."""
    size = _cache(level_index)
    if not size:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size)
    except ValueError:
        return None


def loadavg() -> float | None:
    """The 1-minute load average (other processes compete for the cores), or None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """The machine and software a benchmark ran on."""
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "l2_cache": _cache(2),
        "l3_cache": _cache(3),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "norse": _version("norse"),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def device_missing(device: str) -> str | None:
    """Why the torch ``device`` cannot run here (``None``: it can); ``ValueError`` naming the value for a device
    that is neither ``cpu`` nor ``cuda[:N]``."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is invalid: expected cpu, cuda or cuda:N ({e})") from None
    if d.type == "cpu":
        return None
    if d.type != "cuda":
        raise ValueError(f"--device {device!r} is invalid: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        return f"no CUDA device here (torch {torch.__version__}: torch.cuda.is_available() is False); nothing was measured"
    if d.index is not None and d.index >= torch.cuda.device_count():
        return f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); nothing was measured"
    return None


def sync(device) -> None:
    """Wait for the work queued on a CUDA ``device`` (a timer around GPU work needs it; nothing on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    """``", GPU <name>"`` for a CUDA device, ``""`` for the CPU (for a results line)."""
    import torch

    d = torch.device(device)
    return f", GPU {torch.cuda.get_device_name(d)}" if d.type == "cuda" else ""


def report_skipped(stem: str, reason: str) -> int:
    """A section that cannot run here (a missing device): the reason on stderr, no file written (a file saying
    only "skipped" would stand where figures are expected), exit status 0 (a skipped section is not a failure)."""
    import sys

    print(f"neuro {stem.replace('_', ' ')}: skipped: {reason}; no file written", file=sys.stderr)
    return 0


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med else 0.0, "n": len(values)}


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (the sample standard deviation over sqrt(n)); the s.e. is None for one value."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return statistics.fmean(values), se


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def fmt_rate(x: float | None) -> str:
    """Steps per second, short: 451k, 11.5k, 368."""
    if x is None:
        return "–"
    if x >= 100_000:
        return f"{x / 1000:.0f}k"
    if x >= 10_000:
        return f"{x / 1000:.1f}k"
    if x >= 1_000:
        return f"{x / 1000:.2f}k"
    return f"{x:.0f}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def accuracy_plot(path: str | os.PathLike, summary: dict[str, dict[str, Any]], *, chance: float, ylabel: str,
                  title: str, lines: Iterable[tuple[str, float]] = (), label=lambda k: k) -> None:
    """One column per entry of ``summary`` that has runs (``test_acc``, fractions): every run's accuracy as a dot,
    the mean with its standard error as a bar; a dashed line at ``chance`` (%) and a dotted, named one per
    ``(name, accuracy %)`` of ``lines``; ``label`` names a column's tick. Nothing is written without runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, v in summary.items() if v["test_acc"]]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(keys)), 3.5))
    for i, k in enumerate(keys):
        v = summary[k]
        ax.scatter([i] * len(v["test_acc"]), [100 * a for a in v["test_acc"]], s=12, color="C0", alpha=0.6)
        ax.errorbar(i, 100 * v["test_acc_mean"], yerr=100 * (v["test_acc_se"] or 0), fmt="_", color="k", ms=14)
    for name, acc in lines:
        ax.axhline(acc, ls=":", lw=0.8, color="gray")
        ax.text(len(keys) - 0.5, acc, name, fontsize=7, va="bottom", ha="right", color="gray")
    ax.axhline(chance, ls="--", lw=0.8, color="gray")
    ax.set_xticks(range(len(keys)), [label(k) for k in keys], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_lrs(items: Iterable[str], prog: str, form: str = "RULE=LR") -> dict[str, float]:
    """``--lr KEY=LR`` items as ``{KEY: LR}``; a bad item exits with one line naming it (``form`` says what is
    valid)."""
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        try:
            lr = float(val)
        except ValueError:
            sep = ""
        if not sep or not lr > 0:
            raise SystemExit(f"{prog}: --lr {item!r} is invalid: expected {form} with LR > 0")
        out[key] = lr
    return out


def run_jobs(pool, run_one, jobs: list[dict[str, Any]], done: dict, key, log, into: list[dict[str, Any]],
             after_each) -> None:
    """A resumable sweep's phase: every job whose ``key(job)`` is in ``done`` is taken from it (and logged), the
    others run on ``pool`` (``run_one(job)``); each result goes ``into`` the list, is logged, and ``after_each()``
    (the atomic rewrite of the report) follows it."""
    todo = [j for j in jobs if key(j) not in done]
    for j in jobs:
        if key(j) in done:
            into.append(done[key(j)])
            log(done[key(j)])
    for r in (f.result() for f in concurrent.futures.as_completed([pool.submit(run_one, j) for j in todo])):
        into.append(r)
        log(r)
        after_each()
