"""The one online training loop: ``neuro.train(net, rule, task, steps, ...) -> History``.

Each step the rule advances the network on one input and gives a gradient estimate (or none); the
estimates are *summed* into an accumulator and a ``torch.optim`` optimizer applies the sum (optax's
split: the rule estimates, the optimizer applies)::

    for each sequence s of the stream:            # a trial (episodic task) or a chunk (continuing task)
        state <- rule.reset(params, state)        # episodic tasks, every trial but the first
        for each step t of s:
            out  <- rule.step(params, state, x_t, y_t, mask_t);   acc += out.grad
            every `update_every` steps:           state, g <- rule.flush(params, state);   acc += g
                                                  params <- opt(params, acc);   acc <- 0
        state, g <- rule.finish(params, state);   acc += g
        params <- opt(params, acc);   acc <- 0   # at every sequence end (if anything was accumulated)

*Sequences.* An episodic task (``task.episodic``) streams one trial per sequence and the rule is reset
between trials. A continuing task streams consecutive chunks of ``chunk`` steps and the network state
runs on across them; ``rule.finish`` is still called at each chunk end, so ``bptt`` on a continuing task
is BPTT over each chunk with the state carried across (truncated BPTT with non-overlapping windows of
``chunk`` steps), and ``tbptt``'s windows restart at chunk boundaries (choose ``chunk`` a multiple of its
``k``). The update schedule restarts at every sequence end too. The run stops after exactly ``steps``
steps; a sequence cut there ends there (``finish``, update).

*Seeds.* ``params = net.init_params(seed)`` (unless given), the task stream is ``task.stream(seed=
derive_seed(seed, "task"))``, the rule state ``rule.init(params, batch, seed=derive_seed(seed, "rule"))``,
and the global torch generator is forked and seeded ``derive_seed(seed, "torch")`` for the run (the
caller's generator is left as it was). ``derive_seed`` hashes ``(seed, purpose)`` with SHA-256 to a
63-bit integer. Two runs with the same arguments give bit-identical parameters and metrics.

*Run directory* (:mod:`neuro.rundir`). ``config.json`` (network, rule and task fields, the training
settings, versions; written when the run starts), ``metrics.csv`` (rewritten at every log) and
``checkpoint.pt`` (at the end, and periodically: at the first sequence end after every
``checkpoint_every`` steps, or by default after every
:data:`~neuro.train_loop.CHECKPOINT_SECONDS` of wall clock), all written atomically (:mod:`neuro.io`).
Before anything runs, the directory is checked to be creatable and writable. A checkpoint holds the
parameters, the optimizer and rule state, the stream position, the metrics and the RNG state, so
``resume=True`` continues a run to the same final parameters and metrics (the wall-clock columns aside) as
an uninterrupted run, whichever sequence ends its checkpoints fell on. Checkpoints are taken at sequence
ends because a rule's state there is free of autograd graphs. The stream is repositioned by regenerating it
from its seed. A run killed before its first checkpoint leaves ``config.json`` alone: ``resume=True``
restarts it from step 0 (and says so in a log line).

*Failures.* A NaN or infinite loss (or parameters, checked before each checkpoint) raises
:class:`TrainingDiverged`. With a run directory, any other failure once the run started (a full disk, a
file-size limit, memory, a rule's error) raises :class:`neuro.errors.RunFailed` naming the cause, the last
good checkpoint (step and path) and how to continue. The last good checkpoint is never overwritten by a
bad one.

*Parts.* The settings are a :class:`~neuro.train_config.TrainConfig`; :func:`prepare` checks them against
the network, rule and task and loads the checkpoint to resume (writing nothing), and
:meth:`Run.execute` runs the loop (:mod:`neuro.train_loop`). A stage schedule (:mod:`neuro.staged`) enters
the loop as a hook. The network runs in torch here, which gives every rule what its ``needs``
declares, or, for the combinations of :data:`neuro.engine.REGISTRY` (``engine="auto"`` or ``"compiled"``), in
a compiled engine that runs a range of steps (network, rule, loss, updates) in one call, to the same numbers
(``tests/neuro/test_engine.py``); config.json's ``train.engine`` says which ran. Only rules that need no more than the loss take another simulator (the perturbation rules'
``forward=`` option, e.g. :class:`neuro.backends.brian2.Brian2Forward`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from neuro import engine as engines
from neuro import optim, preflight, staged
from neuro.contract import AbstractNetwork, Params
from neuro.rules.base import AbstractRule
from neuro.rundir import TIMING_COLUMNS, RunDir, describe_run, read_config
from neuro.tasks.base import AbstractTask
from neuro.train_config import OPTIMIZERS, TrainConfig, check_int, derive_seed, fork_rng, resolve_dtype
from neuro.train_loop import History, Hook, Loop, TrainingDiverged

__all__ = ["History", "Hook", "OPTIMIZERS", "Run", "TIMING_COLUMNS", "TrainConfig", "TrainingDiverged", "derive_seed",
           "prepare", "train"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
    """A validated run (:func:`prepare`): everything :meth:`execute` needs, nothing written yet.

    ``params`` are the initial parameters (a copy; replaced by the checkpoint's when resuming),
    ``dtype``/``device`` theirs, ``description`` the content of ``config.json``, ``resume_from`` the
    checkpoint to continue (or ``None``), ``hooks`` what the loop calls at its fixed points, ``engine`` the
    compiled engine that runs the steps (:mod:`neuro.engine`; ``None``: the torch path)."""

    net: AbstractNetwork
    rule: AbstractRule
    task: AbstractTask
    steps: int
    config: TrainConfig
    params: Params
    dtype: torch.dtype
    device: torch.device
    description: dict[str, Any]
    run_dir: RunDir | None = None
    resume_from: dict[str, Any] | None = None
    hooks: tuple[Hook, ...] = ()
    engine: Any = None

    @property
    def checkpoint_path(self) -> Path | None:
        """Where the run's checkpoint is kept (``None`` without a run directory)."""
        return None if self.run_dir is None else self.run_dir.checkpoint

    @property
    def restarts(self) -> bool:
        """``resume=True`` on a directory with a config but no checkpoint yet: the run starts from step 0."""
        return self.config.resume and self.resume_from is None

    def execute(self, continue_with: str | None = None) -> History:
        """Run it (with the global random state forked: the caller's is left as it was). ``continue_with``
        is how a :class:`~neuro.errors.RunFailed` tells to continue (default ``train(..., resume=True)``)."""
        with fork_rng(self.device):
            return Loop(self, continue_with).execute()


def _check_parts(net: Any, rule: Any, task: Any, steps: Any) -> AbstractRule:
    """The rule to train (its loss taken from the task when ``None``) once the three fit together."""
    if not isinstance(net, AbstractNetwork):
        raise TypeError(f"net={net!r} is invalid: expected a network from models.make")
    if not isinstance(rule, AbstractRule):
        raise TypeError(f"rule={rule!r} is invalid: expected a rule from neuro.rules.make")
    if not isinstance(task, AbstractTask):
        raise TypeError(f"task={task!r} is invalid: expected a task from neuro.tasks.make")
    if rule.net != net:
        raise ValueError(f"the rule was built on a different network ({rule.net!r}) than the one to train ({net!r})")
    if (task.n_in, task.n_out) != (net.n_in, net.n_out):
        raise ValueError(f"task {task.name!r} has n_in={task.n_in}, n_out={task.n_out} but the network has "
                         f"n_in={net.n_in}, n_out={net.n_out}: build the network with the task's sizes")
    if rule.loss is None:
        rule = dataclasses.replace(rule, loss=task.loss)
    elif rule.loss != task.loss:
        raise ValueError(f"rule loss={rule.loss!r} differs from task {task.name!r}'s loss {task.loss!r}: "
                         f"build the rule with loss=None or loss={task.loss!r}")
    if task.episodic and steps < task.trial_steps:
        settings = ", ".join(f"{f.name}={getattr(task, f.name)!r}" for f in dataclasses.fields(task)) or "its defaults"
        raise ValueError(f"steps={steps} is shorter than one trial of task {task.name!r} ({task.trial_steps} steps "
                         f"with {settings}): use steps >= {task.trial_steps}")
    return rule


def _initial_params(net: AbstractNetwork, params: Params | None, c: TrainConfig
                    ) -> tuple[Params, torch.dtype, torch.device, str]:
    """The initial parameters (a copy), their dtype and device, and where they came from."""
    if params is None:
        dtype = c.dtype or torch.float32
        params = net.init_params(c.seed, dtype=dtype, device=c.device)
        return params, dtype, c.device or torch.device("cpu"), f"net.init_params(seed={c.seed})"
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict[str, Tensor] from net.init_params, got {type(params).__name__}")
    net.check_params(params)
    p0 = next(iter(params.values()))
    dtype, device = c.dtype or resolve_dtype(p0.dtype), c.device or p0.device
    params = {k: v.detach().to(dtype=dtype, device=device).clone() for k, v in params.items()}
    return params, dtype, device, "given by the caller"


def prepare(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int, config: TrainConfig | None = None,
            *, params: Params | None = None, **settings: Any) -> Run:
    """Check a run of :func:`train` (same arguments) and load the checkpoint to resume; write nothing (a probe
    file, removed again, checks that the run directory can be created and written)."""
    c = TrainConfig.build(config, **settings)
    steps = check_int("steps", steps, 1)
    rule = _check_parts(net, rule, task, steps)
    preflight.check_run(net, rule, task, steps, c, params=params)  # sizes and the rule's limits, nothing allocated
    hooks: tuple[Hook, ...] = ()
    if c.schedule is not None:  # a constructive network learnt stage by stage
        hooks = (staged.StageHook(staged.check(net, rule, task, steps, c.chunk, c.schedule)),)
    params, dtype, device, source = _initial_params(net, params, c)
    optim.check_readout(net, params, c.optimizer_options)  # readout_scale="fan-in" needs W_out, b_out
    if c.lr > torch.finfo(dtype).max:
        raise ValueError(f"lr={c.lr!r} is invalid: it overflows {str(dtype).replace('torch.', '')} "
                         f"(max {torch.finfo(dtype).max:.3g})")
    run_dir = None if c.run_dir is None else RunDir(c.run_dir)
    setting = c.engine
    if c.resume and setting == "auto" and _saved_engine(c.run_dir) == "torch":
        setting = "torch"  # a resume runs on the engine of the saved run
    engine_name, engine = engines.select(net, rule, setting, c.optimizer, dtype, device, c.schedule)
    description = describe_run(net, rule, task, steps, c, dtype, device, source, engine=engine_name)
    resume_from = None
    if c.resume:
        resume_from = run_dir.load_resume(description, device, params)
    elif run_dir is not None:
        run_dir.check_new()
    if run_dir is not None:
        run_dir.check_writable()
    return Run(net=net, rule=rule, task=task, steps=steps, config=c, params=params, dtype=dtype, device=device,
               description=description, run_dir=run_dir, resume_from=resume_from, hooks=hooks, engine=engine)


def _saved_engine(run_dir: Path) -> str | None:
    """The engine recorded in ``run_dir``'s config.json (``"torch"`` for a run saved before it was recorded), or
    ``None`` where none can be read (:meth:`RunDir.load_resume` then says what is wrong)."""
    try:
        return read_config(run_dir)["train"].get("engine", "torch")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def train(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int, config: TrainConfig | None = None,
          *, params: Params | None = None, **settings: Any) -> History:
    """Train ``net`` online with ``rule`` on ``task`` for ``steps`` steps (see the module docstring).

    Args:
        net, rule, task: from ``models.make``, ``neuro.rules.make`` (on ``net``; ``loss=None`` takes the
            task's loss) and ``neuro.tasks.make`` (its ``n_in``/``n_out`` must be the network's).
        steps: time steps to run (each advances ``batch`` independent streams).
        config: the settings (:class:`~neuro.train_config.TrainConfig`; default its defaults).
        params: initial parameters (copied; the caller's are never changed). Default ``net.init_params(seed)``;
            ignored when resuming (the checkpoint's are used).
        **settings: fields of :class:`~neuro.train_config.TrainConfig` (``seed``, ``optimizer``, ``lr``,
            ``update_every``, ``batch``, ``run_dir``, ``log_every``, ``checkpoint_every``, ``resume``,
            ``progress``, ``dtype``, ``device``, ``chunk``, ``schedule``, ``probe``, ``engine``), replacing
            ``config``'s.
            ``resume=True`` continues the run in ``run_dir`` from its checkpoint (or restarts it from step 0
            when it has a config but no checkpoint yet): every setting but ``steps`` (which may grow),
            ``progress``, ``checkpoint_every`` and ``device`` must match its config, and a mismatch is
            named field by field.
            ``probe`` is called as ``probe(step, params)`` (a detached copy, under ``no_grad``; it may enable
            grad) at every metrics row; the dict it returns is added to the row (e.g. the alignment of the
            rule's estimate with BPTT's gradient, measured on the side). Its time is not counted in
            ``elapsed_s`` / ``steps_per_s``. It must not change the global random state's use by the run
            (it runs inside the run's forked generator: draw from your own ``torch.Generator``).
            ``schedule`` (``"total:per-stage:steps-per-stage"``, e.g. ``"20:4:10000"``) trains a
            constructive network stage by stage in this one run (:mod:`neuro.staged`: ``net`` at stage 0,
            rule ``constructive`` or ``td-lambda`` over it; at each boundary the next stage, fresh traces
            and optimizer state (the readout's optimizer state carries on); ``History.rule.net`` is the
            last stage's network).

    Raises:
        ValueError, TypeError: an invalid argument, or a damaged run directory (before anything is written).
        OSError: ``run_dir`` cannot be created or written (checked before anything runs).
        FileNotFoundError: ``resume=True`` on a directory with neither a checkpoint nor a config.
        FileExistsError: ``run_dir`` holds a run (and ``resume`` is not set).
        TrainingDiverged: the loss or the parameters became NaN or infinite.
        RunFailed: with a ``run_dir``, any other failure after the run started (its ``__cause__``); the
            message names the last good checkpoint.
    """
    run = prepare(net, rule, task, steps, config, params=params, **settings)
    if run.restarts:
        log.warning("run directory %r holds no checkpoint yet: the run restarts from step 0 with its config",
                    str(run.run_dir.path))
    return run.execute()
