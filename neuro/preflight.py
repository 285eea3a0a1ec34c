"""Checks of a training run made before it starts: sizes, lengths and the rules' own limits.

:func:`check_run` is called by :func:`neuro.training.prepare` before any parameter is drawn or any file
written, and by ``neuro compare`` for every run before the first one starts. It allocates nothing large:
the parameters, the network state and the rule's state are measured on shape-only (``meta``) tensors. It
refuses, each with one line naming the setting, the figure and what to do instead:

* a network whose parameters (with the summed estimate and the optimizer's state) cannot fit
  (``n_hidden=...``), a network state that cannot (``batch=...``), a sequence of the task that cannot
  (``chunk=...``, ``steps=...`` or ``batch=...``; only ``min(chunk, steps)`` steps of a continuing task are
  ever generated at once), a rule whose state cannot (``rule 'eprop' with ...``), and all of them together:
  :class:`neuro.errors.SizeError` (:func:`neuro.errors.check_fits`);
* what the rule itself cannot run (:meth:`neuro.rules.base.AbstractRule.check_run`): RTRL's and SnAp's
  ``max_bytes`` guard, SLTT-K's ``T`` shorter than the sequences, BPTT's graph of a sequence that cannot fit;
* arguments of the wrong type (a name where a network is expected, parameters that are not tensors):
  ``TypeError``.

The sequences of a run are one trial (``task.trial_steps``) of an episodic task and ``min(chunk, steps)``
steps of a continuing one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from neuro.contract import AbstractNetwork, Params
from neuro.errors import SizeError, check_fits, format_bytes
from neuro.rules.base import AbstractRule
from neuro.tasks.base import AbstractTask, as_count
from neuro.train_config import TrainConfig

__all__ = ["RunSize", "check_run", "sequence_length", "shape_params"]

#: per-parameter buffers the optimizer keeps (moment estimates), besides the parameters and the summed estimate
_MOMENTS = {"adam": 2, "sgd": 0}
#: a network step's intermediate values, in units of the state it carries
_STEP_COPIES = 4


@dataclasses.dataclass(frozen=True)
class RunSize:
    """What :func:`check_run` measured, in bytes: the parameters with the summed estimate and the optimizer's
    state, the network state, one sequence of the task, the rule's own state and working memory; and the
    sequence length."""

    params: int
    state: int
    sequence: int
    rule: int
    steps_per_sequence: int

    @property
    def total(self) -> int:
        return self.params + self.state + self.sequence + self.rule


def _fits(device: torch.device, what: str, nbytes: float, hint: str) -> None:
    """:func:`neuro.errors.check_fits` for memory on ``device``: the host's, or a CUDA device's free memory."""
    if device.type != "cuda":
        check_fits(what, nbytes, hint)
        return
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > 0.8 * free:
        raise SizeError(f"{what} is invalid: it needs {format_bytes(nbytes)} of memory on {device} and "
                        f"{format_bytes(free)} is free there: {hint}")


def _check_types(net: Any, rule: Any, task: Any) -> None:
    for name, value, cls, where in (("net", net, AbstractNetwork, "a network from models.make"),
                                    ("rule", rule, AbstractRule, "a rule from neuro.rules.make"),
                                    ("task", task, AbstractTask, "a task from neuro.tasks.make")):
        if not isinstance(value, cls):
            raise TypeError(f"{name}={value!r} is invalid: expected {where}, not a {type(value).__name__}")


def _config(config: TrainConfig | Mapping[str, Any] | None, settings: dict[str, Any]) -> TrainConfig:
    if config is None or isinstance(config, TrainConfig):
        return TrainConfig.build(config, **settings)
    if isinstance(config, Mapping):
        return TrainConfig.build(None, **{**config, **settings})
    raise TypeError(f"config={config!r} is invalid: expected a TrainConfig, a dict of its settings, or None")


def shape_params(net: AbstractNetwork, dtype: torch.dtype) -> Params:
    """``net``'s parameters as shape-only (``meta``) tensors of ``dtype``: nothing is allocated."""
    return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in net.param_shapes().items()}


def sequence_length(task: AbstractTask, steps: int, chunk: int) -> tuple[int, str]:
    """The longest sequence a run of ``steps`` steps gives the rule, and what sets it (for messages)."""
    if task.episodic:
        return task.trial_steps, f"one trial of task {task.name!r}"
    if steps < chunk:
        return steps, f"steps={steps}, shorter than chunk={chunk}"
    return chunk, f"chunk={chunk}"


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state; a tensor seen twice counts once."""
    seen: dict[int, int] = {}

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            seen[id(o)] = o.numel() * o.element_size()
        elif isinstance(o, (tuple, list)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)

    walk(obj)
    return sum(seen.values())


def _rule_bytes(rule: AbstractRule, meta: Params, batch: int, sequence: int) -> int:
    """The rule's own memory: its :meth:`~AbstractRule.run_bytes`, else its ``init`` state on shape-only tensors
    (0 where that state cannot be built without values: the estimate is then left out)."""
    stated = rule.run_bytes(meta, batch, sequence)
    if stated is not None:
        return stated
    try:
        state = rule.init(meta, batch, 0)
    except (RuntimeError, NotImplementedError):  # an init that computes on values (e.g. a sparsity pattern)
        return 0
    return max(0, _nbytes(state) - _nbytes(state[0]))  # the network state is counted on its own


def check_run(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int,
              config: TrainConfig | Mapping[str, Any] | None = None, *, params: Params | None = None,
              **settings: Any) -> RunSize:
    """Check that a run of :func:`neuro.train` with these arguments can start and fit in memory; write nothing.

    ``config`` is a :class:`~neuro.train_config.TrainConfig`, a dict of its settings or ``None`` (the defaults),
    ``settings`` replace its fields, ``params`` are the caller's initial parameters (checked for type and
    shape). Returns the sizes measured (:class:`RunSize`).

    Raises:
        TypeError: ``net``, ``rule``, ``task`` or ``params`` of the wrong type.
        ValueError: an invalid setting, or one the rule cannot run (its :meth:`~AbstractRule.check_run`).
        neuro.errors.SizeError: a size whose memory cannot be had (a ValueError and a MemoryError).
    """
    _check_types(net, rule, task)
    steps = as_count("steps", steps)
    c = _config(config, settings)
    dtype, device = c.dtype, c.device
    if params is not None:
        net.check_params(params)
        p0 = next(iter(params.values()))
        dtype, device = dtype or p0.dtype, device or p0.device
    dtype, device = dtype or torch.float32, device or torch.device("cpu")
    size = torch.empty((), dtype=dtype).element_size()
    batch, kind = c.batch, str(dtype).replace("torch.", "")

    meta = shape_params(net, dtype)
    n_params = sum(p.numel() for p in meta.values())
    p_bytes = n_params * size * (2 + _MOMENTS.get(c.optimizer, 2))
    _fits(device, f"n_hidden={net.n_hidden}", p_bytes,
          f"the {n_params:,} parameters of model {net.name!r} ({kind}) with the summed estimate and the "
          f"{c.optimizer} optimizer's state; choose a smaller n_hidden")

    state_bytes = _nbytes(net.init_state(meta, batch))  # shape-only: nothing allocated (an ensemble needs its batch)
    per_sample = state_bytes / batch
    s_bytes = state_bytes * _STEP_COPIES
    _fits(device, f"batch={batch}" if batch > 1 else f"n_hidden={net.n_hidden}", s_bytes,
          f"the state of model {net.name!r} ({format_bytes(per_sample)} per stream) and a step's intermediate "
          f"values for {batch} streams; choose a smaller {'batch' if batch > 1 else 'n_hidden'}")

    T, where = sequence_length(task, steps, c.chunk)
    seq_bytes = task.sequence_bytes(T, batch)
    name = "batch" if batch > T else ("chunk" if where.startswith("chunk") else "steps")
    value = {"batch": batch, "chunk": c.chunk, "steps": steps}[name]
    if task.episodic and name != "batch":
        check_fits(f"task {task.name!r} (trials of {T} steps) with batch={batch}", seq_bytes,
                   f"a trial of {T} steps x {batch} streams x {task.n_in + task.n_out} values; choose a smaller "
                   "batch or a shorter trial")
    else:
        check_fits(f"{name}={value}", seq_bytes,
                   f"a sequence of {T} steps x {batch} streams x {task.n_in + task.n_out} values of task "
                   f"{task.name!r}; choose a smaller {name}")

    rule.check_run(meta, batch, T, where)
    r_bytes = _rule_bytes(rule, meta, batch, T)
    _fits(device, f"rule {rule.name!r} with n_hidden={net.n_hidden}, batch={batch}", r_bytes,
          f"its state and working memory for {batch} streams of model {net.name!r}; choose a smaller "
          "n_hidden or batch, or another rule")

    sizes = RunSize(params=p_bytes, state=s_bytes, sequence=seq_bytes, rule=r_bytes, steps_per_sequence=T)
    on_device = sizes.total  # on a GPU: the sequence is generated on the host and moved there in the run's dtype
    if device.type == "cuda":
        on_device += T * batch * (task.n_in + task.n_out + 1) * size - seq_bytes
    _fits(device, f"n_hidden={net.n_hidden}, batch={batch}, sequences of {T} steps ({where}) with rule {rule.name!r}",
          on_device, f"together: parameters {format_bytes(p_bytes)}, network state {format_bytes(s_bytes)}, task "
          f"sequence {format_bytes(seq_bytes)}, rule {format_bytes(r_bytes)}; choose smaller sizes")
    return sizes
