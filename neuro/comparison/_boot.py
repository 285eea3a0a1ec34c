"""The start of a worker of the local executor, run as a script: ``python .../_boot.py RESULT.json``.

Standard library only, and run by path (not ``-m``, which would import the ``neuro`` package and torch
first, seconds): it reads the job (the first line of standard input), starts watching standard input,
which the process that started it keeps open while it lives, and only then imports the worker and runs
the job (:func:`neuro.comparison.worker.serve`). When standard input closes (that process ended, even
by SIGKILL, so nobody would read the result), the worker removes its files (its result, its log, their
directory when empty) and exits at once, importing or training alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _first_line() -> bytes:
    """The first line of standard input, read from its file descriptor (nothing past it is consumed)."""
    parts = []
    while True:
        b = os.read(0, 1)
        if not b or b == b"\n":
            return b"".join(parts)
        parts.append(b)


def _watch(result_path: Path) -> None:
    try:  # the file descriptor itself: a lock of sys.stdin held here would stop the interpreter from exiting
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    for p in (result_path, result_path.with_suffix(".log"), *result_path.parent.glob(f".{result_path.name}.*.tmp")):
        try:
            p.unlink()
        except OSError:
            pass
    try:
        result_path.parent.rmdir()
    except OSError:
        pass
    os._exit(1)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python _boot.py RESULT.json  (the job as one line of JSON on stdin, kept open)", file=sys.stderr)
        return 2
    result_path = Path(argv[0])
    line = _first_line()
    threading.Thread(target=_watch, args=(result_path,), name="parent-pipe", daemon=True).start()
    if not line.strip():  # the caller is already gone: the watch ends this process
        time.sleep(60)
        return 1
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the neuro that started this worker
    from neuro.comparison.worker import serve

    return serve(argv[0], line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
