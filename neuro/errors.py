"""What the ``neuro`` command line tells a user when something fails, and with which exit status.

Two kinds of failure, told apart by type:

* a *usage or data error* (a bad name, size, option, file, directory, or a size that cannot fit in
  memory) is found before anything is written, or leaves what was written intact: one line
  ``neuro: error: ...`` naming the value and what is valid, exit status 2 (:data:`USAGE`);
* a *run that failed after it started* (it diverged, the disk filled, the process ran out of memory)
  raises :class:`RunFailed` (or :class:`neuro.training.TrainingDiverged`), whose message says where the
  last good state is: one line, exit status 1 (:data:`FAILED`).

:func:`describe` turns any exception into that one line; :func:`exit_status` gives its status. An
interrupted command (Ctrl-C, SIGTERM) exits with 130. An exception of a type not listed here is a
defect of ``neuro`` itself: it is reported on one line as an internal error with exit status 1, and
``NEURO_TRACEBACK=1`` prints its traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["FAILED", "INTERRUPTED", "RunFailed", "SizeError", "USAGE", "check_fits", "describe", "exit_status",
           "format_bytes", "os_error"]

USAGE, FAILED, INTERRUPTED = 2, 1, 130


class RunFailed(RuntimeError):
    """A run that started and then failed; ``last_good`` is the file (or directory) holding its last good
    state, or ``None`` when nothing was kept."""

    def __init__(self, message: str, last_good: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.last_good = None if last_good is None else Path(last_good)


class SizeError(ValueError, MemoryError):
    """A size whose memory cannot be had (checked before allocating it)."""


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``'59.8 GiB'``)."""
    for unit, size in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _available_memory() -> int | None:
    """Bytes the process may still allocate: MemAvailable, capped by an address-space limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            avail = min(avail, soft)
    except (ImportError, ValueError, OSError):
        pass
    return avail


def check_fits(what: str, nbytes: float, hint: str = "", fraction: float = 0.8) -> None:
    """Raise :class:`SizeError` if ``nbytes`` exceed ``fraction`` of the memory still available, naming
    ``what`` (e.g. ``"--batch 100000000"``), the figure, and ``hint`` (what to do instead)."""
    avail = _available_memory()
    if avail is None or nbytes <= fraction * avail:
        return
    tail = f": {hint}" if hint else ""
    raise SizeError(f"{what} is invalid: it needs {format_bytes(nbytes)} of memory and "
                    f"{format_bytes(avail)} is available{tail}")


def os_error(e: OSError) -> str:
    """An ``OSError`` as one line naming the file and the cause in words (``cannot write 'D/x': No space left
    on device``)."""
    name = e.filename if e.filename is not None else None
    cause = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e)
    if e.errno == errno.ENOSPC:
        cause = "no space left on device"
    elif e.errno == errno.EFBIG:
        cause = "file too large (a file-size limit or the file system's)"
    elif e.errno == errno.EROFS:
        cause = "read-only file system"
    where = f" {str(name)!r}" if name is not None else ""
    return f"{where.strip() + ': ' if where else ''}{cause[0].lower() + cause[1:] if cause else type(e).__name__}"


#: exception types that are usage or data errors (exit 2)
_USAGE_TYPES: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, OSError, MemoryError,
                                                  ImportError, ConnectionError, UnicodeError)


def _is_allocation_failure(e: BaseException) -> bool:
    """torch's allocators report an allocation that failed as a RuntimeError (``DefaultCPUAllocator: can't
    allocate memory``, ``CUDA out of memory``): that is a size that does not fit, not a defect."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "Cannot allocate memory", "out of memory"))


def exit_status(e: BaseException) -> int:
    """The exit status for ``e``: 130 interrupted, 1 a failed run or an internal error, 2 a usage or data error."""
    from neuro.train_loop import TrainingDiverged

    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(e, (RunFailed, TrainingDiverged)):
        return FAILED
    if isinstance(e, (SizeError, *_USAGE_TYPES)) or _is_allocation_failure(e):
        return USAGE
    return FAILED


def describe(e: BaseException) -> str:
    """``e`` as the one line the command line prints (no traceback)."""
    from neuro.train_loop import TrainingDiverged

    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, (RunFailed, TrainingDiverged, SizeError)):
        text = str(e)
    elif isinstance(e, KeyError):  # str(KeyError('net')) is "'net'"
        text = f"missing entry {e.args[0]!r}" if e.args else "missing entry"
    elif isinstance(e, OSError) and (e.strerror or e.errno):
        text = os_error(e)
    elif _is_allocation_failure(e):
        detail = str(e).split("DefaultCPUAllocator:")[-1].strip() if not isinstance(e, MemoryError) else str(e)
        text = f"out of memory{': ' + detail if detail else ''}: choose smaller sizes"
    elif isinstance(e, _USAGE_TYPES):
        text = str(e) or type(e).__name__
    else:
        text = (f"internal error ({type(e).__name__}: {e}); this is a defect of neuro, please report it "
                "(NEURO_TRACEBACK=1 prints the traceback)")
    return " ".join(text.split())
