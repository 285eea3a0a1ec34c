"""What ``import neuro`` costs: compiled kernels (numba) are imported only by the fast paths that use them."""

from __future__ import annotations

import subprocess
import sys

import pytest

PACKAGES = "neuro, neuro.rules, models, neuro.tasks, neuro.backends"


def _imported_after(statement: str) -> set[str]:
    """The top-level packages in ``sys.modules`` of a fresh interpreter after ``statement``."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.slow
def test_importing_the_packages_and_every_rule_does_not_import_numba():
    imported = _imported_after(f"import {PACKAGES}")
    assert {"neuro", "models", "torch"} <= imported  # the probe sees what was imported
    assert "numba" not in imported, "a module imports numba at its top level (find it with python -X importtime)"
