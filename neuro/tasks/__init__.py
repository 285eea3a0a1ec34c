"""Tasks: seeded, streaming sources of inputs, targets and masks (see :mod:`neuro.tasks.base`).

``neuro.tasks.make(name, **settings)`` builds one; ``neuro.tasks.available()`` lists the names::

    task = neuro.tasks.make("copy", delay=10)
    seq = task.sample(steps=task.trial_steps, batch=4, seed=0)   # xs [T, B, n_in], ys [T, B, n_out], mask [T, B]
    for chunk in task.stream(seed=0, batch=4): ...                # endless, one realisation per seed
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .add import AddTask
from .base import AbstractTask, Sequence
from .copy import CopyTask
from .cue_accumulation import CueAccumulation
from .influence_balancing import InfluenceBalancingTask
from .mackey_glass import MackeyGlass
from .sine import SineTask
from .trace_patterning import TracePatterning

__all__ = ["AbstractTask", "AddTask", "CopyTask", "CueAccumulation", "InfluenceBalancingTask", "MackeyGlass",
           "Sequence", "SineTask", "TracePatterning", "available", "make"]

_REGISTRY: dict[str, type[AbstractTask]] = {
    cls.name: cls for cls in (CopyTask, AddTask, SineTask, MackeyGlass, TracePatterning,
                              InfluenceBalancingTask, CueAccumulation)
}


def available() -> list[str]:
    """The names ``make`` accepts."""
    return sorted(_REGISTRY)


def make(name: str, **settings: Any) -> AbstractTask:
    """Build the task ``name`` with ``settings`` (its dataclass fields; the rest keep the paper's defaults)."""
    if name not in _REGISTRY:
        raise ValueError(f"task {name!r} is unknown: valid choices are {', '.join(available())}")
    cls = _REGISTRY[name]
    fields = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"task {name!r} has no option {', '.join(unknown)}: "
                         f"valid options are {', '.join(fields) or '(none)'}")
    return cls(**settings)
