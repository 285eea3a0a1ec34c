"""numba, imported with its on-disk cache of compiled kernels outside the package.

The kernels are compiled with ``cache=True``; numba's default keeps the cache beside the source
(``__pycache__`` in the package, which may be read-only, shared or under version control). Importing numba
through this module sets ``NUMBA_CACHE_DIR`` first, unless the user set it: ``$XDG_CACHE_HOME/neuro/numba``
(``~/.cache/neuro/numba`` without it). Where that directory cannot be written, a temporary directory of
this process (removed at exit) takes its place: numba still works, compiling afresh in each process.

Only the modules holding compiled kernels import this one, so ``import neuro`` does not import numba.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "numba"]


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        return False
    return True


@functools.cache
def cache_dir() -> str | None:
    """The directory numba caches the kernels in (set in ``NUMBA_CACHE_DIR`` on the first call), or None where
    the user set ``NUMBA_CACHE_DIR`` or no directory can be written (numba's own choice then)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    directory: str | None = os.path.join(base, "neuro", "numba")
    if not os.path.isabs(base) or not _writable(Path(directory)):  # no home directory, or not writable
        try:
            directory = tempfile.mkdtemp(prefix="neuro-numba-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
        except OSError:
            return None
    os.environ["NUMBA_CACHE_DIR"] = directory
    if "numba" in sys.modules:  # imported earlier by someone else: numba read its settings then
        sys.modules["numba"].config.CACHE_DIR = directory
    return directory


cache_dir()

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set)
