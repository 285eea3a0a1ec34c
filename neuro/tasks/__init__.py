"""Tasks: seeded, streaming sources of inputs, targets and masks (see :mod:`neuro.tasks.base`).

``neuro.tasks.make(name, **settings)`` builds one; ``neuro.tasks.available()`` lists the names::

    task = neuro.tasks.make("copy", delay=10)
    seq = task.sample(steps=task.trial_steps, batch=4, seed=0)   # xs [T, B, n_in], ys [T, B, n_out], mask [T, B]
    for chunk in task.stream(seed=0, batch=4): ...                # endless, one realisation per seed
"""

from __future__ import annotations

from typing import Any

from neuro.registry import Registry

from .add import AddTask
from .anbn import AnbnTask
from .base import AbstractTask, Sequence
from .brackets import BracketsTask
from .copy import CopyTask
from .cue_accumulation import CueAccumulation
from .influence_balancing import InfluenceBalancingTask
from .mackey_glass import MackeyGlass
from .mnist1d import MNIST1D
from .neurobench_mg import NeuroBenchMG
from .sine import SineTask
from .trace_patterning import TracePatterning

__all__ = ["AbstractTask", "AddTask", "AnbnTask", "AtariPrediction", "BracketsTask", "CopyTask", "CueAccumulation",
           "InfluenceBalancingTask", "MNIST1D", "MackeyGlass", "NMNIST", "NeuroBenchMG", "Sequence", "SineTask",
           "SpikingHeidelberg", "TracePatterning", "available", "get", "make",
           "register"]

_TASKS: Registry[type[AbstractTask]] = Registry("task")
register = _TASKS.register
available = _TASKS.available
get = _TASKS.get

for _cls in (CopyTask, AddTask, SineTask, MackeyGlass, TracePatterning, InfluenceBalancingTask, CueAccumulation,
             AnbnTask, BracketsTask, MNIST1D, NeuroBenchMG):
    register(_cls)
# by path: imported on first use, so that `python -m neuro.tasks.atari_prediction` runs the module it names
register("neuro.tasks.atari_prediction:AtariPrediction", name="atari-prediction")
# datasets read from files a user gives (h5py and tonic imported on first use): the Spiking Heidelberg Digits
# (dataset="ssc": the Spiking Speech Commands) and N-MNIST
register("neuro.tasks.shd:SpikingHeidelberg", name="shd")
register("neuro.tasks.events:NMNIST", name="nmnist")


#: the classes registered by path, as attributes of this module (imported on first use)
_BY_PATH = {"AtariPrediction": "atari-prediction", "SpikingHeidelberg": "shd", "NMNIST": "nmnist"}


def __getattr__(name: str) -> Any:
    if name in _BY_PATH:
        return get(_BY_PATH[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make(name: str, **settings: Any) -> AbstractTask:
    """Build the task ``name`` with ``settings`` (its dataclass fields; the rest keep the paper's defaults)."""
    return _TASKS.make(name, **settings)
