"""Suite-wide settings.

The tensors in the tests are small: on a 2-core machine a second OpenMP thread spinning for each of
thousands of tiny ops makes the suite several times slower (and much slower when the machine is
shared), so every test runs on one intra-op thread. Benchmarks set their own thread count.

This folder goes on ``sys.path`` so that test files can import the shared helpers (``tests/_helpers.py``) as
``_helpers``: pytest imports test files with ``--import-mode=importlib``, which adds nothing to ``sys.path``.

The suite never reads or writes the user's cache: ``NEURO_CACHE`` points at a temporary folder for the whole
session (:func:`_helpers.hermetic_cache`), which holds a stand-in for NeuroBench's tau = 17 Mackey-Glass series
(its regeneration takes minutes; the tests of the series itself regenerate it in folders of their own).

Tests that take more than a few seconds (compiling, Lava, Brian2, the notebooks, Ray, subprocesses of the CLI)
are marked ``slow``: ``make test-fast`` leaves them out, ``make test`` runs them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _helpers  # noqa: E402 - needs the line above

torch.set_num_threads(1)
_helpers.hermetic_cache()


def pytest_report_header(config) -> str:
    return f"test helpers: {_helpers.__file__}"
