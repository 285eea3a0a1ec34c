"""The settings of a training run: :class:`TrainConfig`, validated when it is built, and the seeds it derives.

``neuro.train(net, rule, task, steps, config)`` takes one (or the same settings as keywords, which build
one). Every invalid value raises a one-line ``ValueError`` naming the value and what is valid, before
anything runs or is written::

    config = TrainConfig(seed=0, optimizer="sgd", lr=1e-2, run_dir="runs/x", checkpoint_every=1000)
    dataclasses.replace(config, resume=True)     # a changed copy is validated again
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
from pathlib import Path
from typing import Any, Callable

import torch

from neuro.contract import Params, check_choice, check_positive
from neuro.optim import check_options

__all__ = ["DTYPES", "ENGINES", "OPTIMIZERS", "RESUMABLE", "TrainConfig", "derive_seed", "fork_rng", "rng_state", "set_rng_state"]

OPTIMIZERS = ("adam", "sgd", "rmsprop", "td-rmsprop")
#: how the steps run (:mod:`neuro.engine`): compiled where the run has a compiled engine, compiled, or torch
ENGINES = ("auto", "compiled", "torch")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: settings that may change when a run is resumed (every other one must equal the saved run's)
RESUMABLE = ("progress", "checkpoint_every", "device")


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (``"task"``, ``"rule"``, ``"torch"``) derived from ``seed`` by SHA-256."""
    digest = hashlib.sha256(f"neuro.train:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_int(name: str, value: Any, lowest: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= lowest`` (a Python, numpy or 0-d torch integer; not a
    bool), else a ``ValueError`` naming it (and its type, when that is what is wrong)."""
    is_tensor = isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
        and not value.is_complex() and value.dtype != torch.bool
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral) or is_tensor):
        cls = type(value)
        kind = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {lowest}, not a {kind}")
    if int(value) < lowest:
        raise ValueError(f"{name}={int(value)} is invalid: must be an integer >= {lowest}")
    return int(value)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: must be True or False")


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """``None``, ``torch.float32``/``float64`` or their names -> the torch dtype (``ValueError`` otherwise)."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is invalid: valid choices are torch.float32, torch.float64 ('float32', 'float64')")


def _resolve_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is invalid: expected e.g. 'cpu' or 'cuda:0'") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: valid device types are 'cpu', 'cuda'")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is invalid: CUDA is not available on this machine; use 'cpu'")
    return d


def _check_schedule(spec: Any) -> None:
    if spec is not None:
        from neuro.rules.constructive import schedule as parse  # its format; neuro.staged checks it against the run

        parse(spec)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of :func:`neuro.train` but the network, rule, task, step count and initial parameters.

    Attributes:
        seed: decides the initial parameters, the task stream, the rule's randomness (:func:`derive_seed`).
        optimizer: ``"adam"``, ``"sgd"`` or ``"rmsprop"`` (``torch.optim``, learning rate ``lr`` > 0, every other
            setting torch's default: RMSprop's ``alpha=0.99``, ``eps=1e-8``, no momentum, not centered), or
            ``"td-rmsprop"`` (:class:`neuro.optim.TDRMSprop`, the RMSProp-normalised TD step of Javed et al. 2023).
        optimizer_options: the optimizer's options (only ``"td-rmsprop"`` takes any: ``beta2`` 0.9999, ``eps``
            1e-8, ``init`` 1.0, ``readout_scale`` ``"none"`` or ``"fan-in"``; :mod:`neuro.optim`); held with the
            defaults filled in.
        update_every: apply the summed estimates every this many steps (1: fully online) and at every
            sequence end.
        batch: independent streams run side by side (the per-step loss is their mean).
        run_dir: where to write config.json, metrics.csv, checkpoint.pt (``None``: nothing is written).
        log_every: steps per metrics row.
        checkpoint_every: steps between checkpoints (taken at the next sequence end); ``None``: one at the
            first sequence end after every :data:`neuro.train_loop.CHECKPOINT_SECONDS` (60) of wall clock.
            One is always written at the end when ``run_dir`` is given. Needs ``run_dir``.
        resume: continue the run in ``run_dir`` from its checkpoint, or restart it from step 0 if it has a
            config but no checkpoint yet (the settings must match its config but for :data:`RESUMABLE`
            ones; the step count may grow).
        progress: a progress bar on stderr (only when stderr is a terminal).
        dtype, device: of the parameters (``None``: those of the given parameters, else float32 on the
            CPU); held as ``torch.dtype`` / ``torch.device``.
        chunk: steps per sequence of a continuing task (ignored by episodic tasks).
        schedule: ``"total:per-stage:steps-per-stage"``: train a constructive network stage by stage
            (:mod:`neuro.staged`); ``None``: no stages.
        probe: ``probe(step, params) -> dict`` at every metrics row (see :func:`neuro.train`), or ``None``.
        engine: ``"auto"`` (the compiled engine of :mod:`neuro.engine` where the run's network, rule, optimizer,
            loss, device and dtype have one, else the torch path), ``"compiled"`` (refuse a run without one) or
            ``"torch"`` (every step in torch). The engine used is recorded in config.json; a resume uses the
            saved run's.
    """

    seed: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    update_every: int = 1
    batch: int = 1
    run_dir: Path | None = None
    log_every: int = 100
    checkpoint_every: int | None = None
    resume: bool = False
    progress: bool = True
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    chunk: int = 100
    schedule: str | None = None
    probe: Callable[[int, Params], dict[str, Any]] | None = None
    engine: str = "auto"
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("engine", self.engine, ENGINES)
        object.__setattr__(self, "optimizer_options", check_options(self.optimizer, self.optimizer_options))
        check_positive("lr", self.lr)
        for name in ("update_every", "batch", "log_every", "chunk"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        if self.checkpoint_every is not None:
            object.__setattr__(self, "checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, 1))
        _check_bool("resume", self.resume)
        _check_bool("progress", self.progress)
        if self.probe is not None and not callable(self.probe):
            raise ValueError(f"probe={self.probe!r} is invalid: expected a function (step, params) -> dict, or None")
        _check_schedule(self.schedule)
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
        object.__setattr__(self, "device", _resolve_device(self.device))
        if self.run_dir is not None:
            if not isinstance(self.run_dir, (str, Path)):
                raise ValueError(f"run_dir={self.run_dir!r} is invalid: expected a path (str or Path) or None")
            object.__setattr__(self, "run_dir", Path(self.run_dir))
        elif self.resume or self.checkpoint_every is not None:
            what = "resume=True" if self.resume else f"checkpoint_every={self.checkpoint_every}"
            raise ValueError(f"{what} needs a run_dir to keep the checkpoint in")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, config: TrainConfig | None = None, **settings: Any) -> TrainConfig:
        """``config`` (default: the defaults) with ``settings`` replaced; ``TypeError`` names an unknown one."""
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config={config!r} is invalid: expected a TrainConfig or None")
        unknown = sorted(set(settings) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown training setting(s) {', '.join(unknown)}: valid settings are "
                            f"{', '.join(cls.names())}")
        if config is None:
            return cls(**settings)
        return dataclasses.replace(config, **settings) if settings else config

    def seed_for(self, purpose: str) -> int:
        """:func:`derive_seed` of this run's seed."""
        return derive_seed(self.seed, purpose)


def fork_rng(device: torch.device):
    """``torch.random.fork_rng`` over the CPU generator and ``device``'s (a CUDA device)."""
    devices = [] if device.type != "cuda" else [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=devices)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch generators' states (CPU, and ``device``'s where it is a CUDA device), as a checkpoint keeps them."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """The inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
