"""The run directory of :func:`neuro.train`: what it holds, and reading it back to resume.

* ``config.json``: the network, rule and task (name, class, fields), the training settings and the seeds
  derived from them, the versions (:func:`describe_run`); written when a run starts or resumes;
* ``metrics.csv``: :attr:`neuro.training.History.metrics`, rewritten at every metrics row;
* ``checkpoint.pt``: everything a resumed run needs to continue bit for bit (parameters, optimizer and
  rule state, stream position, metrics, random state, and the config it was made with).

Every file is written atomically (:mod:`neuro.io`): a crash mid-write keeps the previous file. To
resume, the saved config is compared with the one of the run being prepared; the differences are
named field by field (:func:`differences`), except the settings that may change (:data:`CHANGEABLE`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from neuro import io
from neuro.contract import AbstractNetwork
from neuro.rules.base import AbstractRule
from neuro.tasks.base import AbstractTask
from neuro.train_config import RESUMABLE, TrainConfig

__all__ = ["CHANGEABLE", "CHECKPOINT", "COLUMNS", "CONFIG", "FORMAT", "METRICS", "RunDir", "TIMING_COLUMNS",
           "describe_run", "differences", "read_config"]

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"
FORMAT = 1
COLUMNS = ["step", "loss", "loss_counted", "updates", "sequences", "steps_per_s", "elapsed_s"]
#: wall-clock columns: the only ones that differ between two otherwise identical runs
TIMING_COLUMNS = ("steps_per_s", "elapsed_s")
#: ``train`` entries of config.json that may differ between a run and its resume
CHANGEABLE = ("steps", "params", *RESUMABLE)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _describe(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    cls = type(obj)
    fields = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}
    return {"name": getattr(obj, "name", ""), "class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields,
            "repr": repr(obj)}


def describe_run(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int, config: TrainConfig,
                 dtype: torch.dtype, device: torch.device, params_source: str) -> dict[str, Any]:
    """The content of ``config.json`` (also kept in every checkpoint)."""
    import neuro

    c = config
    return {
        "format": FORMAT,
        "net": _describe(net),
        "rule": _describe(rule, skip=("net",)),
        "task": _describe(task),
        "train": {"steps": steps, "seed": c.seed, "params": params_source, "optimizer": c.optimizer, "lr": c.lr,
                  "update_every": c.update_every, "batch": c.batch, "log_every": c.log_every,
                  "checkpoint_every": c.checkpoint_every, "progress": c.progress,
                  "dtype": str(dtype).replace("torch.", ""), "device": str(device), "chunk": c.chunk,
                  "episodic": task.episodic, "task_seed": c.seed_for("task"), "rule_seed": c.seed_for("rule"),
                  "torch_seed": c.seed_for("torch"), "schedule": c.schedule},
        "versions": {"neuro": getattr(neuro, "__version__", "?"), "torch": str(torch.__version__),
                     "python": sys.version.split()[0]},
    }


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings of two run configs that must match to resume and differ, one ``"what: saved (saved) vs
    now (now)"`` each. A network, rule or task of another kind is one entry (not each of its fields)."""
    then, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    out = []
    for part in ("net", "rule", "task"):
        a, b = then[part], now[part]
        if (a["name"], a["class"]) != (b["name"], b["class"]):
            out.append(f"{part}: {a['name']!r} (saved) vs {b['name']!r} (now)")
            continue
        for k in sorted(set(a["fields"]) | set(b["fields"])):
            if a["fields"].get(k) != b["fields"].get(k):
                out.append(f"{part}.{k}: {a['fields'].get(k)!r} (saved) vs {b['fields'].get(k)!r} (now)")
    for k in sorted(set(then["train"]) | set(now["train"])):
        if k not in CHANGEABLE and then["train"].get(k) != now["train"].get(k):
            out.append(f"train.{k}: {then['train'].get(k)!r} (saved) vs {now['train'].get(k)!r} (now)")
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir``'s ``config.json`` (``FileNotFoundError`` naming it if absent)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: not a run directory written by neuro train")
    return io.read_json(path)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of one run directory (nothing is written until a method says so)."""

    path: Path

    def __post_init__(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run_dir={str(self.path)!r} is invalid: it exists and is not a directory")

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def check_new(self) -> None:
        """``FileExistsError`` if the directory holds a run already (a fresh run would overwrite it)."""
        if any((self.path / f).exists() for f in (CONFIG, CHECKPOINT)):
            raise FileExistsError(f"run_dir={str(self.path)!r} already holds a run ({CONFIG} or {CHECKPOINT}): "
                                  f"pass resume=True to continue it, or choose another directory")

    def load_resume(self, description: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """The checkpoint to continue the run described by ``description`` (:func:`describe_run`) from; a
        ``ValueError`` names the saved settings it contradicts, or a step count the checkpoint has passed."""
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint {str(self.checkpoint)!r}")
        ckpt = io.load_checkpoint(self.checkpoint, map_location=device)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"{str(self.checkpoint)!r} is not a neuro.train checkpoint of format {FORMAT}")
        diffs = differences(ckpt["config"], description)
        if diffs:
            raise ValueError(f"cannot resume {str(self.path)!r}: the run was made with other settings: "
                             f"{'; '.join(diffs)}")
        steps = description["train"]["steps"]
        if ckpt["step"] > steps:
            raise ValueError(f"steps={steps} is invalid for resuming {str(self.path)!r}: its checkpoint is "
                             f"already at step {ckpt['step']}")
        return ckpt

    def start(self, description: dict[str, Any]) -> None:
        """Create the directory and write ``config.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        io.write_json(self.path / CONFIG, description)

    def write_metrics(self, metrics: list[dict[str, Any]]) -> None:
        columns = COLUMNS + sorted({k for row in metrics for k in row} - set(COLUMNS))
        io.write_csv(self.path / METRICS, metrics, columns)

    def save_checkpoint(self, content: dict[str, Any]) -> None:
        io.save_checkpoint(self.checkpoint, {"format": FORMAT, **content})
