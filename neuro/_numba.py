"""numba, imported with its on-disk cache of compiled kernels outside the package.

The kernels are compiled with ``cache=True``; numba's default keeps the cache beside the source
(``__pycache__`` in the package, which may be read-only, shared or under version control). Importing numba
through this module sets ``NUMBA_CACHE_DIR`` first, unless the user set it: ``$XDG_CACHE_HOME/neuro/numba/src-<digest>``
(``~/.cache/neuro/numba/...`` without it), where the digest covers the source of every module with kernels
(numba re-checks only the file of the function it loads, not of the kernels that one calls). Where that directory cannot be written, a temporary directory of
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


def _sources_digest() -> str:
    """A digest of every module of the package that holds compiled kernels. numba re-checks only the file of
    the function it loads from its cache, not the files of the kernels that function calls (a kernel in
    ``neuro/engine/kernels.py`` changed under a cached caller would keep running the old code), so the cache
    directory is keyed by all of them: any change starts a fresh cache."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_bytes()
        except OSError:
            continue
        if b"numba" in text:
            h.update(str(path.relative_to(root)).encode() + b"\0" + text)
    return f"src-{h.hexdigest()[:16]}"


@functools.cache
def cache_dir() -> str | None:
    """The directory numba caches the kernels in (set in ``NUMBA_CACHE_DIR`` on the first call), or None where
    the user set ``NUMBA_CACHE_DIR`` or no directory can be written (numba's own choice then)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    directory: str | None = os.path.join(base, "neuro", "numba", _sources_digest())
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
