"""Make lava-nc 0.10.0 importable under Python 3.11 without editing site-packages.

lava-nc 0.10.0 declares ``python <3.11``. Under 3.11 exactly one module fails to define:
``lava/magma/compiler/var_model.py`` decorates ``ByteEncoder`` with a bare ``@dataclass`` (so
``__eq__`` is generated and ``__hash__`` is set to None) and then uses ``ByteEncoder()`` as the
default of fields of ``CoreEncoder``, ``ChipEncoder`` and ``AxonEncoder``. Since 3.11,
``dataclasses`` rejects any default whose class is unhashable::

    ValueError: mutable default <class '...ByteEncoder'> for field x is not allowed

The fix is one decorator: ``@dataclass(frozen=True)`` on ``ByteEncoder``. A frozen dataclass is
hashable, so the defaults are accepted, and since nothing in lava 0.10.0 assigns to a
``ByteEncoder``'s fields (it is referenced only inside ``var_model.py``, as a default and as a type),
freezing changes no behaviour. It also makes the default instance, shared by every encoder exactly
as under 3.10, safe to share.

:func:`install` puts a :class:`importlib.abc.MetaPathFinder` at the front of ``sys.meta_path``. It
answers for that one module name only: it locates the file with the ordinary path finder, reads the
source, rewrites the decorator and compiles the result. Its loader is a
:class:`importlib.abc.SourceLoader` without ``path_stats``, so the stale ``__pycache__`` bytecode
(compiled from the unpatched source) is never read, and nothing is ever written to site-packages.
Line numbers are unchanged, so tracebacks point at the right lines of the real file.

The finder does nothing on Python < 3.11, or when the source no longer uses an unhashable
``ByteEncoder`` default (a fixed lava). For a source that still uses the default but not in the form
this module knows how to fix, importing the module raises an :class:`ImportError` that names the
version found and the version supported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MP_MODULE", "SUPPORTED_VERSION", "TARGET_MODULE", "LavaCompatError", "install", "installed",
           "uninstall", "lava_version", "patch_source", "ensure_lava"]

SUPPORTED_VERSION = "0.10.0"
TARGET_MODULE = "lava.magma.compiler.var_model"

# The one decorator to rewrite: a bare @dataclass directly above `class ByteEncoder`.
_BROKEN = re.compile(r"^@dataclass[ \t]*(\r?\n)(class ByteEncoder\b)", re.MULTILINE)
_FIXED = r"@dataclass(frozen=True)\1\2"
# A dataclass field whose default is a ByteEncoder instance: the thing 3.11 rejects when unhashable.
_USES_DEFAULT = re.compile(r"^\s+\w+\s*:\s*ByteEncoder\s*=\s*ByteEncoder\(\)", re.MULTILINE)
# ByteEncoder declared hashable upstream: frozen=True, unsafe_hash=True or eq=False.
_HASHABLE = re.compile(
    r"^@dataclass\((?=[^)]*(?:frozen\s*=\s*True|unsafe_hash\s*=\s*True|eq\s*=\s*False))[^)]*\)"
    r"\s*\r?\nclass ByteEncoder\b", re.MULTILINE)

_LOCK = threading.Lock()
_MARK = "_neuro_lava_compat"  # attribute that identifies our finder, even across reloads


class LavaCompatError(ImportError):
    """lava-nc is missing, or is a version whose source this patch does not recognise."""


def lava_version() -> str | None:
    """Installed lava-nc distribution version, or None when lava-nc is not installed."""
    try:
        return importlib.metadata.version("lava-nc")
    except importlib.metadata.PackageNotFoundError:
        return None


def patch_source(source: str, origin: str = TARGET_MODULE) -> str | None:
    """Return ``source`` with ``ByteEncoder`` made hashable, or None when no patch is needed.

    Raises :class:`LavaCompatError` when the source still uses a ``ByteEncoder()`` default but not in
    the form lava-nc 0.10.0 has (so this module cannot tell whether its fix is right).
    """
    patched, count = _BROKEN.subn(_FIXED, source)
    if count == 1:
        return patched
    if count == 0 and (not _USES_DEFAULT.search(source) or _HASHABLE.search(source)):
        return None  # upstream has no unhashable default: import it unchanged
    raise LavaCompatError(
        f"cannot apply the Python 3.11 fix to {origin}: expected exactly one bare '@dataclass' "
        f"directly above 'class ByteEncoder', found {count}. lava-nc {lava_version() or 'unknown'} "
        f"is installed; hw_targets.lava supports lava-nc {SUPPORTED_VERSION} "
        f"(run `make install`, which pins it).")


class _PatchedSourceLoader(importlib.abc.SourceLoader):
    """Loads one .py file from its patched source text.

    SourceLoader consults bytecode only when ``path_stats`` is implemented; it is not, so the
    ``__pycache__`` file is neither read nor written and the code always comes from ``source``.
    """

    def __init__(self, fullname: str, path: str, source: str) -> None:
        self.name = fullname
        self.path = path
        self._source = source.encode("utf-8")

    def get_filename(self, fullname: str | None = None) -> str:
        return self.path

    def exec_module(self, module: ModuleType) -> None:
        module.__cached__ = None  # compiled from the patched source, not from __pycache__
        super().exec_module(module)

    def get_data(self, path: str) -> bytes:
        if path != self.path:  # SourceLoader asks for bytecode only after path_stats, which is absent
            raise OSError(f"{type(self).__name__} serves only {self.path}, not {path}")
        return self._source


class _VarModelFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that answers for ``lava.magma.compiler.var_model`` only."""

    _neuro_lava_compat = True

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None  # not found, or not plain source: leave it to the normal machinery
        with open(spec.origin, encoding="utf-8") as f:
            patched = patch_source(f.read(), spec.origin)
        if patched is None:
            return None
        loader = _PatchedSourceLoader(fullname, spec.origin, patched)
        return importlib.util.spec_from_file_location(fullname, spec.origin, loader=loader)


def installed() -> bool:
    """Whether the finder is on ``sys.meta_path``."""
    return any(getattr(f, _MARK, False) for f in sys.meta_path)


def install() -> bool:
    """Put the finder at the front of ``sys.meta_path``; idempotent and cheap; imports no lava.

    Returns True when the finder is (now or already) installed, False on Python < 3.11 where lava
    imports unchanged.
    """
    if sys.version_info < (3, 11):
        return False
    with _LOCK:
        if not installed():
            sys.meta_path.insert(0, _VarModelFinder())
    return True


def uninstall() -> None:
    """Remove the finder (for tests); modules already imported stay imported."""
    with _LOCK:
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, _MARK, False)]


def ensure_lava() -> str:
    """Install the finder, import lava's compiler data model, and return the lava-nc version.

    Raises :class:`LavaCompatError` (an ImportError) when lava-nc is not installed or its source is
    not the one this patch knows.
    """
    version = lava_version()
    if version is None:
        raise LavaCompatError("lava-nc is not installed: run `make install` (it installs "
                              f"lava-nc=={SUPPORTED_VERSION} into .venv/)")
    install()
    try:
        importlib.import_module(TARGET_MODULE)
        _import_multiprocessing_infrastructure()
    except ModuleNotFoundError as e:
        # lava-nc is installed with --no-deps, so its own dependencies can be the missing piece.
        raise LavaCompatError(
            f"lava-nc {version} is installed but importing {TARGET_MODULE} needs the missing "
            f"module {e.name!r}: run `make install`") from e
    return version


#: lava's message infrastructure: importing it calls ``multiprocessing.set_start_method('fork')``
MP_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"


def _import_multiprocessing_infrastructure() -> None:
    """Import :data:`MP_MODULE` in a process whose multiprocessing context is already fixed.

    lava-nc 0.10.0 calls ``mp.set_start_method('fork')`` (without ``force``) when that module is imported,
    which raises ``RuntimeError: context has already been set`` once anything in the process has used the
    default context: a ``multiprocessing`` lock, queue or pool, e.g. the lock tqdm makes for its first
    progress bar (NeuroBench's ``Benchmark.run`` shows one). Where the method already fixed is ``'fork'``,
    lava's call asks for what is in place, so it is let through as a no-op during the import; any other
    method is refused with the reason, since lava's runtime needs ``fork``.
    """
    import multiprocessing

    if MP_MODULE in sys.modules:
        return
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None:
        importlib.import_module(MP_MODULE)
        return
    if current != "fork":
        raise LavaCompatError(f"lava-nc's runtime needs the 'fork' start method, but this process already uses "
                              f"{current!r}: import hw_targets.lava before starting processes, or run it in a "
                              "fresh process")
    original = multiprocessing.set_start_method

    def already(method, force=False):
        if method != current:
            original(method, force)

    with _LOCK:
        multiprocessing.set_start_method = already
        try:
            importlib.import_module(MP_MODULE)
        finally:
            multiprocessing.set_start_method = original
