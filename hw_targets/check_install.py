"""Check that the whole stack imports: ``python -m hw_targets.check_install`` (run by `make install`).

Imports numpy, torch, brian2, norse, nir, nirtorch, lava (through :func:`hw_targets.lava.ensure_lava`, which
makes lava-nc 0.10.0 importable under Python 3.11), and the external yardsticks' neurobench, tonic, mnist1d,
jitcdde and h5py, and prints their versions. Exits with status 1
and says what failed otherwise.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable

__all__ = ["check", "main"]


def _module_version(module: str, dist: str) -> Callable[[], str]:
    def load() -> str:
        mod = importlib.import_module(module)
        version = getattr(mod, "__version__", None)
        return str(version) if version else importlib.metadata.version(dist)
    return load


def _lava() -> str:
    from hw_targets.lava import ensure_lava
    return ensure_lava()


CHECKS: dict[str, Callable[[], str]] = {
    "numpy": _module_version("numpy", "numpy"),
    "torch": _module_version("torch", "torch"),
    "brian2": _module_version("brian2", "brian2"),
    "norse": _module_version("norse", "norse"),
    "nir": _module_version("nir", "nir"),
    "nirtorch": _module_version("nirtorch", "nirtorch"),
    "lava": _lava,
    "neurobench": _module_version("neurobench", "neurobench"),
    "tonic": _module_version("tonic", "tonic"),
    "mnist1d": _module_version("mnist1d", "mnist1d"),
    "jitcdde": _module_version("jitcdde", "jitcdde"),
    "h5py": _module_version("h5py", "h5py"),
}


def check() -> dict[str, str | Exception]:
    """Import every package of the stack; map its name to its version or to the exception raised."""
    results: dict[str, str | Exception] = {}
    for name, load in CHECKS.items():
        try:
            results[name] = load()
        except Exception as e:  # report every failure, not just the first
            results[name] = e
    return results


def main() -> int:
    results = check()
    print(f"python    {sys.version.split()[0]} ({sys.executable})")
    for name, result in results.items():
        shown = result if isinstance(result, str) else f"FAILED: {type(result).__name__}: {result}"
        print(f"{name:<10} {shown}")
    failed = [name for name, result in results.items() if not isinstance(result, str)]
    if failed:
        print(f"\nThe stack is incomplete: {', '.join(failed)} did not import. Run `make install` "
              "(or `make clean install` to rebuild .venv/ from scratch).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
