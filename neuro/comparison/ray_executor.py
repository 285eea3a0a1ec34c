"""The ``ray`` executor of :func:`neuro.compare`: each run is a Ray task on an existing cluster.

``address`` is ``"auto"`` (the cluster this machine belongs to) or ``HOST:PORT`` (its GCS address, as
printed by ``ray start --head``). A ``HOST:PORT`` that does not accept a TCP connection within
``connect_timeout_s`` is reported at once (Ray itself would retry for a minute or more). Each task runs
:func:`neuro.comparison.worker.run_job` (one run, or the seeds of one rule as one ensemble) with one CPU in a fresh worker process (``max_calls=1``), so the
results equal the local executor's for the same seeds.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

__all__ = ["execute"]


def _check_reachable(address: str, timeout_s: float) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address={address!r} is invalid: expected 'auto' or 'HOST:PORT'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at address={address!r} ({e}); start one with "
                              f"'ray start --head' and pass the address it prints, or use executor='local'") from None


def execute(jobs: list[tuple[list[int], Any]], address: str, on_done: Callable[[int, dict], None],
            connect_timeout_s: float = 15.0, on_failed: Callable[[list[int], str], None] | None = None) -> None:
    """Run ``jobs`` on the cluster; each result goes to ``on_done(index, result)``, each failed job to
    ``on_failed(indices, why)`` (one line; the other jobs go on), or raises when ``on_failed`` is None."""
    if address != "auto":
        _check_reachable(address, connect_timeout_s)
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs the ray package: pip install ray "
                          "(or use executor='local')") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as e:
            raise ConnectionError(f"could not connect to a Ray cluster at address={address!r}: {e}") from None
    try:
        from .worker import run_job

        remote = ray.remote(num_cpus=1, max_calls=1)(run_job)
        pending = {remote.remote(payload): idx for idx, payload in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                idx = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as e:
                    if on_failed is None:
                        raise
                    on_failed(idx, _why(e))
                    continue
                for i, result in zip(idx, results):
                    on_done(i, result)
    finally:
        if started_here:
            ray.shutdown()


def _why(e: BaseException) -> str:
    """One line for a failed Ray task: the run's own error where Ray kept it, else the last line of Ray's."""
    from neuro.errors import describe

    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return describe(cause)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
