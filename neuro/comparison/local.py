"""The ``local`` executor of :func:`neuro.compare`: each job in a fresh worker process on this machine.

A job is one run, or the seeds of one rule run as one ensemble (:mod:`neuro.comparison.vectorised`).
Each runs as ``python neuro/comparison/_boot.py RESULT.json`` (:mod:`neuro.comparison._boot`, then
:func:`neuro.comparison.worker.serve`), ``workers`` at a time (0: in this process, one after the
other). A subprocess rather than a multiprocessing pool: nothing of the caller's ``__main__`` is
re-imported (scripts need no ``if __name__ == "__main__"`` guard), and every run's memory is its own.

Nothing is left behind: the job goes to the worker as one line on its standard input, which this process
keeps open while it lives; a worker whose standard input closes (this process ended, even by SIGKILL)
removes its files and exits at once, from its first moments on. A job that fails (an error in the run,
or a worker that died) is reported to ``on_failed`` with one line saying why, and the other jobs go on;
the worker's traceback stays in its log.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from neuro.errors import describe

__all__ = ["execute"]

Job = tuple[list[int], Any]  # (indices of the runs, a spec dict or a list of spec dicts)
OnDone = Callable[[int, dict], None]
OnFailed = Callable[[list[int], str], None]
_BOOT = Path(__file__).with_name("_boot.py")


def execute(jobs: list[Job], workers: int, on_done: OnDone, on_failed: OnFailed,
            stop: Callable[[], bool] = lambda: False, work: Path | None = None) -> None:
    """Run ``jobs``; each result goes to ``on_done(index, result)``, each failed job to ``on_failed(indices,
    why)``. Once ``stop()`` is true no job starts (those running finish). ``work``: the directory for the
    workers' files (default a temporary directory, removed at the end)."""
    if workers == 0:
        from .worker import run_job

        for idx, payload in jobs:
            if stop():
                return
            try:
                results = run_job(payload)
            except Exception as e:  # noqa: BLE001 -- one run failed: the others go on
                on_failed(idx, describe(e))
                continue
            for i, result in zip(idx, results):
                on_done(i, result)
        return
    with (contextlib.nullcontext(str(work)) if work is not None
          else tempfile.TemporaryDirectory(prefix="neuro-compare-")) as tmp:
        _execute(jobs, workers, on_done, on_failed, stop, Path(tmp))


def _execute(jobs: list[Job], workers: int, on_done: OnDone, on_failed: OnFailed, stop: Callable[[], bool],
             tmp: Path) -> None:
    queue = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, Path, Any]] = {}
    try:
        n = 0
        while running or (queue and not stop()):
            while queue and len(running) < workers and not stop():
                job = queue.pop(0)
                n += 1
                result_path = tmp / f"job-{n}.json"
                log = open(result_path.with_suffix(".log"), "w+b")
                proc = subprocess.Popen([sys.executable, str(_BOOT), str(result_path)], stdin=subprocess.PIPE,
                                        stdout=log, stderr=subprocess.STDOUT)
                running[proc] = (job, result_path, log)
                try:  # one line; the pipe stays open while this process lives
                    proc.stdin.write(json.dumps(job[1]).encode() + b"\n")
                    proc.stdin.flush()
                except OSError:  # the worker is already gone: _outcome says why
                    pass
            done = _wait_any(list(running))
            job, result_path, log = running.pop(done)
            with contextlib.suppress(OSError):
                done.stdin.close()
            outcome = _outcome(done.returncode, result_path, log)
            log.close()
            for p in (result_path, result_path.with_suffix(".log")):
                p.unlink(missing_ok=True)
            if isinstance(outcome, str):
                on_failed(job[0], outcome)
            else:
                for i, result in zip(job[0], outcome):
                    on_done(i, result)
    finally:
        for proc, (_job, result_path, log) in running.items():
            proc.kill()
            proc.wait()
            log.close()
            for p in (result_path, result_path.with_suffix(".log")):
                p.unlink(missing_ok=True)


def _outcome(status: int, result_path: Path, log: Any) -> list[dict] | str:
    """The job's results, or one line saying why it failed."""
    content = None
    if result_path.is_file():
        try:
            content = json.loads(result_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            content = None
    if status == 0 and isinstance(content, list):
        return content
    if isinstance(content, dict) and content.get("error"):
        return str(content["error"])
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        why = f"the worker process was killed by {name}"
        if -status == getattr(signal, "SIGKILL", 9):
            why += " (the system may have run out of memory)"
    else:
        why = f"the worker process exited with status {status}"
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    if lines:
        why += f"; its last output: {lines[-1][:300]}"
    return why


def _wait_any(procs: list) -> Any:
    """The first of ``procs`` to finish (polled: portable, and a finished run is seen within 50 ms)."""
    while True:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.05)
