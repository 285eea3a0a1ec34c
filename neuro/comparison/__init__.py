"""Compare rules against BPTT: :func:`compare` (``neuro compare`` on the command line), :class:`Results`.

See :mod:`neuro.comparison.harness` (the sweep, executors, resume), :mod:`neuro.comparison.worker` (one
run: training, alignment with BPTT along training, time, memory) and :mod:`neuro.comparison.report`
(tables and plots).
"""

from __future__ import annotations

from .harness import EXECUTORS, RunSpec, compare, plan
from .report import Results
from .sweep import SweepFailed

__all__ = ["EXECUTORS", "Results", "RunSpec", "SweepFailed", "compare", "plan"]
