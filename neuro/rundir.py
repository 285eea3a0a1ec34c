"""The run directory of :func:`neuro.train`: what it holds, and reading it back to resume.

* ``config.json``: the network, rule and task (name, class, fields), the training settings and the seeds
  derived from them, the versions (:func:`describe_run`); written when a run starts or resumes;
* ``metrics.csv``: :attr:`neuro.training.History.metrics`, rewritten at every metrics row;
* ``checkpoint.pt``: everything a resumed run needs to continue bit for bit (parameters, optimizer and
  rule state, stream position, metrics, random state, and the config it was made with); written at the
  end, at the first sequence end after every ``checkpoint_every`` steps, or (by default) after every
  :data:`neuro.train_loop.CHECKPOINT_SECONDS` of wall clock.

Every file is written atomically (:mod:`neuro.io`): a crash or a kill mid-write keeps the previous file.
A directory is never a dead end: with a checkpoint a resume continues from it; with ``config.json`` but
no checkpoint yet (a run killed before its first one) a resume restarts the run from its config
(:meth:`RunDir.load_resume` returns ``None``). To resume, the saved config is compared with the one of the
run being prepared; the differences are named field by field (:func:`differences`), except the settings
that may change (:data:`CHANGEABLE`). :func:`read_config` is the one reader of ``config.json``: it names the
file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from neuro import errors, io
from neuro.contract import AbstractNetwork
from neuro.rules.base import AbstractRule
from neuro.tasks.base import AbstractTask
from neuro.train_config import RESUMABLE, TrainConfig

__all__ = ["CHANGEABLE", "CHECKPOINT", "CHECKPOINT_KEYS", "COLUMNS", "CONFIG", "FORMAT", "METRICS", "RunDir",
           "TIMING_COLUMNS", "check_config", "describe_run", "differences", "read_config", "write_failure"]

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"
FORMAT = 1
COLUMNS = ["step", "loss", "loss_counted", "updates", "sequences", "steps_per_s", "elapsed_s"]
#: wall-clock columns: the only ones that differ between two otherwise identical runs
TIMING_COLUMNS = ("steps_per_s", "elapsed_s")
#: ``train`` entries of config.json that may differ between a run and its resume
CHANGEABLE = ("steps", "params", *RESUMABLE)
#: the entries of a checkpoint (besides ``format``)
CHECKPOINT_KEYS = ("step", "position", "params", "optimizer", "rule_state", "updates", "sequences", "interval",
                   "metrics", "elapsed_s", "rng", "config")
#: the ``train`` entries of config.json a run needs to be rebuilt from it
_TRAIN_KEYS = ("steps", "seed", "optimizer", "lr", "update_every", "batch", "log_every", "dtype", "chunk")


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
                 dtype: torch.dtype, device: torch.device, params_source: str, engine: str = "torch") -> dict[str, Any]:
    """The content of ``config.json`` (also kept in every checkpoint). ``engine``: the one the run uses
    (``"compiled"`` or ``"torch"``, :mod:`neuro.engine`), kept as ``train.engine``."""
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
                  "torch_seed": c.seed_for("torch"), "schedule": c.schedule, "engine": engine,
                  **({"optimizer_options": c.optimizer_options} if c.optimizer_options else {})},
        "versions": {"neuro": getattr(neuro, "__version__", "?"), "torch": str(torch.__version__),
                     "python": sys.version.split()[0]},
    }


def _defaults(qualified: str) -> dict[str, Any]:
    """The JSON form of the dataclass field defaults of the class named ``qualified`` (``module.Class``);
    empty where it cannot be imported."""
    import importlib

    module, _, name = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return {f.name: json.loads(json.dumps(_jsonable(f.default))) for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings of two run configs that must match to resume and differ, one ``"what: saved (saved) vs
    now (now)"`` each. A network, rule or task of another kind is one entry (not each of its fields)."""
    then, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    then["train"].setdefault("engine", "torch")  # a run saved before the compiled engine ran in torch
    out = []
    for part in ("net", "rule", "task"):
        a, b = then[part], now[part]
        if (a["name"], a["class"]) != (b["name"], b["class"]):
            out.append(f"{part}: {a['name']!r} (saved) vs {b['name']!r} (now)")
            continue
        added = _defaults(b["class"])  # a field added since the run was saved, at its default, changes nothing
        for k in sorted(set(a["fields"]) | set(b["fields"])):
            if k not in a["fields"] and k in added and b["fields"].get(k) == added[k]:
                continue
            if a["fields"].get(k) != b["fields"].get(k):
                out.append(f"{part}.{k}: {a['fields'].get(k)!r} (saved) vs {b['fields'].get(k)!r} (now)")
    for k in sorted(set(then["train"]) | set(now["train"])):
        if k not in CHANGEABLE and then["train"].get(k) != now["train"].get(k):
            out.append(f"train.{k}: {then['train'].get(k)!r} (saved) vs {now['train'].get(k)!r} (now)")
    return out


def check_config(config: Any, where: str) -> dict[str, Any]:
    """``config`` if it has the parts of a run config (:func:`describe_run`), else a ``ValueError`` naming
    ``where`` it came from and the missing or malformed entry."""
    tail = "not a run directory written by neuro train"
    if not isinstance(config, dict):
        raise ValueError(f"{where} holds a JSON {type(config).__name__}, not an object: {tail}")
    for part in ("net", "rule", "task", "train"):
        if part not in config:
            raise ValueError(f"{where} has no {part!r} entry: {tail}")
        if not isinstance(config[part], dict):
            raise ValueError(f"{where} has a {part!r} entry that is not an object: {tail}")
    for part in ("net", "rule", "task"):
        for key, kind in (("name", str), ("class", str), ("fields", dict)):
            if not isinstance(config[part].get(key), kind):
                raise ValueError(f"{where} has no valid {part}.{key} entry: {tail}")
    missing = [k for k in _TRAIN_KEYS if k not in config["train"]]
    if missing:
        raise ValueError(f"{where} has no train.{missing[0]} entry: {tail}")
    return config


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir``'s ``config.json``, checked (:func:`check_config`): ``FileNotFoundError`` if absent, a
    ``ValueError`` naming the file if it is not JSON or not a run config."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: not a run directory written by neuro train")
    try:
        config = io.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON (line {e.lineno} column {e.colno}): truncated or not "
                         "written by neuro train") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not valid JSON (not UTF-8 text): not written by neuro train") from None
    return check_config(config, repr(str(path)))


def _shape(t: Any) -> str:
    return f"({', '.join(map(str, t.shape))}) {str(t.dtype).replace('torch.', '')}"


def _check_checkpoint(ckpt: Any, path: Path, params: dict[str, torch.Tensor]) -> None:
    """A ``ValueError`` naming ``path`` and the entry, unless ``ckpt`` has every entry of a checkpoint, and
    parameters (and optimizer state) of the shapes and dtypes of ``params`` (the network's)."""
    where = repr(str(path))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{where} is not a neuro.train checkpoint of format {FORMAT}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{where} has no {missing[0]!r} entry (a checkpoint holds {', '.join(CHECKPOINT_KEYS)}): "
                         "damaged, or not written by this version of neuro train")
    bad = lambda key, what: ValueError(f"{where} has an invalid {key!r} entry: expected {what}")  # noqa: E731
    for key in ("step", "updates", "sequences"):
        if isinstance(ckpt[key], bool) or not isinstance(ckpt[key], int) or ckpt[key] < 0:
            raise bad(key, "an integer >= 0")
    pos = ckpt["position"]
    if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and all(isinstance(x, int) and x >= 0 for x in pos)):
        raise bad("position", "[sequence, offset], two integers >= 0")
    if not isinstance(ckpt["metrics"], list):
        raise bad("metrics", "a list of rows")
    interval = ckpt["interval"]
    if not isinstance(interval, dict) or set(interval) != {"loss_sum", "frac_sum", "steps", "start_elapsed"}:
        raise bad("interval", "loss_sum, frac_sum, steps, start_elapsed")
    rng, now = ckpt["rng"], torch.get_rng_state()
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == now.dtype
            and rng["torch"].shape == now.shape):
        raise bad("rng", f"a dict whose 'torch' entry is a generator state {_shape(now)}")
    got = ckpt["params"]
    if not isinstance(got, dict) or set(got) != set(params) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        names = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise ValueError(f"{where} has parameters {names} but the network has {sorted(params)}")
    for k, want in params.items():
        if got[k].shape != want.shape or got[k].dtype != want.dtype:
            raise ValueError(f"{where} has parameter {k!r} of {_shape(got[k])} but the network needs {_shape(want)}")
    opt = ckpt["optimizer"]
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)
            and isinstance(opt.get("state"), dict)  # one group, or td-rmsprop's columns and readout (neuro.optim)
            and [i for g in groups for i in g.get("params", ())] == list(range(len(params)))):
        raise bad("optimizer", f"a torch.optim state over the {len(params)} parameters")
    shapes = list(params.values())
    for i, entry in opt["state"].items():
        for name, v in entry.items() if isinstance(entry, dict) and isinstance(i, int) and 0 <= i < len(shapes) else ():
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != shapes[i].shape:
                raise ValueError(f"{where} has optimizer state {name!r} of {_shape(v)} for parameter "
                                 f"{list(params)[i]!r}, which needs {_shape(shapes[i])}")
    check_config(ckpt["config"], f"{where} (its 'config' entry)")


def write_failure(e: BaseException, path: Path) -> str:
    """A failed write of ``path`` in one line: the file and the cause (torch's own wording of a failed write
    without its C++ location, and a full disk or a file-size limit where one is found)."""
    name = repr(str(path))
    if isinstance(e, OSError) and (e.errno or e.strerror):
        return f"cannot write {name}: {errors.os_error(OSError(e.errno, e.strerror))}"
    text = " ".join(str(e).split())
    if str(path) in text:  # the error names the file itself
        return errors.describe(e) if isinstance(e, OSError) else text
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text) or type(e).__name__
    hints = []
    with contextlib.suppress(OSError):
        if shutil.disk_usage(path.parent).free < 1 << 20:
            hints.append("the disk is full")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            hints.append(f"files are limited to {errors.format_bytes(soft)} (ulimit -f)")
    except (ImportError, ValueError, OSError):
        pass
    return f"cannot write {name}: {text}{' (' + '; '.join(hints) + ')' if hints else ''}"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of one run directory (nothing is written until a method says so)."""

    path: Path

    def __post_init__(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run directory {str(self.path)!r} is invalid: it exists and is not a directory")

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def check_new(self) -> None:
        """``FileExistsError`` if the directory holds a run already (a fresh run would overwrite it)."""
        if any((self.path / f).exists() for f in (CONFIG, CHECKPOINT)):
            raise FileExistsError(f"run_dir={str(self.path)!r} already holds a run ({CONFIG} or {CHECKPOINT}): "
                                  f"pass resume=True to continue it, or choose another directory")

    def check_writable(self) -> None:
        """An ``OSError`` naming the directory and the cause unless it can be created and written (a probe
        file is written and removed, and the directories created for it removed again)."""
        created: list[Path] = []
        try:
            for d in reversed([self.path, *self.path.parents]):
                if not d.exists():
                    d.mkdir()
                    created.insert(0, d)
            fd, probe = tempfile.mkstemp(prefix=".neuro-probe.", suffix=".tmp", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise type(e)(f"run directory {str(self.path)!r} cannot be created or written: {self._cause(e)}") \
                from None
        finally:
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()

    def _cause(self, e: OSError) -> str:
        if e.errno == errno.ENOTDIR or isinstance(e, NotADirectoryError):
            for d in self.path.parents:
                if d.exists() and not d.is_dir():
                    return f"{str(d)!r} is a file, not a directory"
        if isinstance(e, FileExistsError) and self.path.exists() and not self.path.is_dir():
            return "it is a file, not a directory"
        return errors.os_error(OSError(e.errno, e.strerror)) if e.errno or e.strerror else str(e)

    def load_resume(self, description: dict[str, Any], device: torch.device,
                    params: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """The checkpoint to continue the run described by ``description`` (:func:`describe_run`) from, checked
        against the network's ``params`` (their names, shapes and dtypes); ``None`` when the directory holds
        ``config.json`` but no checkpoint yet (the run restarts from step 0). A ``ValueError`` names the saved
        settings it contradicts, a step count the checkpoint has passed, or what is wrong with the files."""
        if not self.checkpoint.is_file():
            if not (self.path / CONFIG).is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint {str(self.checkpoint)!r} and no {CONFIG}: "
                                        "not a run directory written by neuro train")
            self._check_same(read_config(self.path), description)
            return None
        ckpt = io.load_checkpoint(self.checkpoint, map_location=device)
        _check_checkpoint(ckpt, self.checkpoint, params)
        self._check_same(ckpt["config"], description)
        steps = description["train"]["steps"]
        if ckpt["step"] > steps:
            raise ValueError(f"steps={steps} is invalid for resuming {str(self.path)!r}: its checkpoint is "
                             f"already at step {ckpt['step']}")
        return ckpt

    def _check_same(self, saved: dict[str, Any], description: dict[str, Any]) -> None:
        diffs = differences(saved, description)
        if diffs:
            raise ValueError(f"cannot resume {str(self.path)!r}: the run was made with other settings: "
                             f"{'; '.join(diffs)}")

    def start(self, description: dict[str, Any], fresh: bool) -> None:
        """Create the directory and write ``config.json``; remove what a killed write left (temporary files)
        and, for a ``fresh`` run (or a restart), the metrics of an earlier attempt."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, METRICS, CHECKPOINT, "neuro-probe"):
            for tmp in self.path.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        if fresh:
            with contextlib.suppress(FileNotFoundError):
                (self.path / METRICS).unlink()
        io.write_json(self.path / CONFIG, description)

    def write_metrics(self, metrics: list[dict[str, Any]]) -> None:
        columns = COLUMNS + sorted({k for row in metrics for k in row} - set(COLUMNS))
        io.write_csv(self.path / METRICS, metrics, columns)

    def save_checkpoint(self, content: dict[str, Any]) -> None:
        io.save_checkpoint(self.checkpoint, {"format": FORMAT, **content})
