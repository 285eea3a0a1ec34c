"""Suite-wide settings.

The tensors in the tests are small: on a 2-core machine a second OpenMP thread spinning for each of
thousands of tiny ops makes the suite several times slower (and much slower when the machine is
shared), so every test runs on one intra-op thread. Benchmarks set their own thread count.

This folder goes on ``sys.path`` so that test files can import the shared helpers (``tests/_helpers.py``) as
``_helpers``: pytest imports test files with ``--import-mode=importlib``, which adds nothing to ``sys.path``.

Tests that take more than a few seconds (compiling, Lava, Brian2, the notebooks, Ray, subprocesses of the CLI)
are marked ``slow``: ``make test-fast`` leaves them out, ``make test`` runs them.

``make test`` runs the tests in worker processes (pytest-xdist, ``--dist loadgroup``): a module- or class-scoped
fixture is built once per worker that runs a test using it, so the tests of a file that uses one (a sweep, a
bench run, a trained run directory) are put in one ``xdist_group``, which one worker runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _helpers  # noqa: E402 - needs the line above

torch.set_num_threads(1)


def pytest_report_header(config) -> str:
    return f"test helpers: {_helpers.__file__}"


def _uses_a_shared_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture built once per module or class (False where pytest does not say)."""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(d and d[-1].scope in ("module", "class") for d in defs.values())


def pytest_collection_modifyitems(config, items) -> None:
    """Put the tests of each file that uses a module- or class-scoped fixture in one xdist group (its path)."""
    shared = {item.path for item in items if _uses_a_shared_fixture(item)}
    for item in items:
        if item.path in shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
