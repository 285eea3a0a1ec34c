"""Resident memory of this process, for the memory figures of ``neuro compare`` and ``neuro bench memory``.

``peak_rss()`` is the high-water mark of the *current* address space (``VmHWM`` of ``/proc/self/status``),
not ``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` across ``fork`` and ``execve``, so a worker
started by a large process (a test runner, a notebook kernel) would report its parent's peak.
``reset_peak()`` sets the mark to the current resident size (``/proc/self/clear_refs``, Linux >= 4.0),
so that ``peak_rss() - current_rss()`` measured around a piece of work is that work's peak growth.
Elsewhere both fall back to ``ru_maxrss`` (then the figure is an upper bound's growth, coarser).
"""

from __future__ import annotations

import os
import resource
import sys

__all__ = ["current_rss", "growth", "peak_rss", "reset_peak", "start"]


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident bytes now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """Peak resident bytes of this address space (since ``reset_peak``)."""
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak() -> bool:
    """Set the peak to the current resident size; False where the system does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def start() -> int:
    """Begin measuring a piece of work's peak growth: reset the peak and return the baseline (the current
    resident size, or the peak so far where the peak cannot be reset)."""
    return current_rss() if reset_peak() else peak_rss()


def growth(base: int) -> int:
    """Bytes by which the peak rose above ``base`` (from :func:`start`)."""
    return max(0, peak_rss() - base)
