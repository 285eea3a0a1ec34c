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

*Run directory.* ``config.json`` (network, rule and task fields, the training arguments, versions),
``metrics.csv`` (rewritten at every log) and ``checkpoint.pt`` (at the first sequence end after every
``checkpoint_every`` steps, and at the end), all written atomically (:mod:`neuro.io`). A checkpoint
holds the parameters, the optimizer and rule state, the stream position, the metrics and the RNG state,
so ``resume=True`` continues a run to the same final parameters and metrics (the wall-clock columns
aside) as an uninterrupted run. Checkpoints are taken at sequence ends because a rule's state there is
free of autograd graphs. The stream is repositioned by regenerating it from its seed.

*Divergence.* A NaN or infinite loss (or parameters, checked before each checkpoint) raises
:class:`TrainingDiverged`; the last good checkpoint is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from neuro import io
from neuro.contract import AbstractNetwork, Params, check_choice, check_positive
from neuro.rules.base import AbstractRule, Needs, add_into, zeros_like_params
from neuro.tasks.base import AbstractTask

__all__ = ["History", "OPTIMIZERS", "TrainingDiverged", "derive_seed", "train"]

OPTIMIZERS = ("adam", "sgd")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"
COLUMNS = ["step", "loss", "loss_counted", "updates", "sequences", "steps_per_s", "elapsed_s"]
#: wall-clock columns: the only ones that differ between two otherwise identical runs
TIMING_COLUMNS = ("steps_per_s", "elapsed_s")
_FORMAT = 1
_DRAIN = 256  # steps between reads of the per-step losses (progress bar, early divergence check)
# train arguments that may change when a run is resumed (the others must match config.json)
_RESUMABLE = {"steps", "progress", "checkpoint_every", "device", "params"}


class TrainingDiverged(RuntimeError):
    """The loss (or the parameters) became NaN or infinite; ``checkpoint`` is the last good one (or None)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None = None,
                 checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step


@dataclasses.dataclass
class History:
    """What :func:`train` returns.

    ``metrics``: one row per ``log_every`` steps (and one at the end): ``step`` (steps done),
    ``loss`` (mean per-step loss over the interval; masked steps count as 0, as in
    :mod:`neuro.losses`), ``loss_counted`` (the interval's loss per step that counts: summed loss over
    the summed fraction of the batch whose mask is on; ``None`` if none did), ``updates`` (optimizer
    steps so far), ``sequences`` (trials or chunks finished), ``steps_per_s`` (over the interval) and
    ``elapsed_s`` (training time so far, excluding time between an interruption and its resume).
    """

    params: Params
    metrics: list[dict[str, Any]]
    run_dir: Path | None
    rule: AbstractRule
    steps: int = 0
    updates: int = 0
    elapsed_s: float = 0.0

    def mean_loss(self, last: int) -> float:
        """Mean per-step loss over (at least) the last ``last`` steps, from whole metric rows."""
        check_positive("last", last, integer=True)
        total, n = 0.0, 0
        for i in range(len(self.metrics) - 1, -1, -1):
            row = self.metrics[i]
            start = self.metrics[i - 1]["step"] if i > 0 else 0
            total += row["loss"] * (row["step"] - start)
            n += row["step"] - start
            if n >= last:
                break
        return total / n if n else math.nan


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (``"task"``, ``"rule"``, ``"torch"``) derived from ``seed`` by SHA-256."""
    digest = hashlib.sha256(f"neuro.train:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_needs(rule: AbstractRule, net: AbstractNetwork, backend: str = "torch") -> None:
    """Raise ``ValueError`` unless ``rule`` can train ``net`` simulated by ``backend``.

    torch gives every rule what it needs (graphs, Jacobians, JVPs, local derivatives); another
    backend (Brian2, Lava) only runs the network forward, which is enough for LOSS rules alone.
    """
    from neuro import backends

    if backend not in backends.available():
        raise ValueError(f"backend={backend!r} is invalid: valid choices are {', '.join(map(repr, backends.available()))}")
    needs = Needs(rule.needs)
    if backend != "torch" and needs != Needs.LOSS:
        raise ValueError(f"rule {rule.name!r} needs {needs.name} but backend {backend!r} runs {net.name!r} forward "
                         f"only: train it with backend 'torch', or use a LOSS rule (perturbation)")


# -- argument checks ---------------------------------------------------------------------------------

def _check_int(name: str, value: Any, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {lowest}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: must be True or False")


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
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
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is invalid: CUDA is not available on this machine; use 'cpu'")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: valid device types are 'cpu', 'cuda'")
    return d


def _describe(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    cls = type(obj)
    fields = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}
    return {"name": getattr(obj, "name", ""), "class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields,
            "repr": repr(obj)}


def _settings(obj: Any) -> str:
    return ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj)) or "its defaults"


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


# -- the prepared run ----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Run:
    """A validated run: everything :func:`train` needs, nothing written yet."""

    net: AbstractNetwork
    rule: AbstractRule
    task: AbstractTask
    steps: int
    seed: int
    params: Params
    optimizer: str
    lr: float
    update_every: int
    batch: int
    run_dir: Path | None
    log_every: int
    checkpoint_every: int | None
    progress: bool
    dtype: torch.dtype
    device: torch.device
    chunk: int
    config: dict[str, Any]
    resume_from: dict[str, Any] | None = None
    probe: Callable[[int, Params], dict[str, Any]] | None = None
    schedule: Any = None  # a neuro.staged.Schedule, or None

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT


def prepare(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int, seed: int = 0,
            params: Params | None = None, optimizer: str = "adam", lr: float = 1e-3, update_every: int = 1,
            batch: int = 1, run_dir: str | Path | None = None, log_every: int = 100,
            checkpoint_every: int | None = None, resume: bool = False, progress: bool = True,
            dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
            chunk: int = 100, probe: Callable[[int, Params], dict[str, Any]] | None = None,
            schedule: str | None = None) -> _Run:
    """Validate every argument of :func:`train` and load the checkpoint to resume; write nothing."""
    if not isinstance(net, AbstractNetwork):
        raise TypeError(f"net={net!r} is invalid: expected a network from models.make")
    if not isinstance(rule, AbstractRule):
        raise TypeError(f"rule={rule!r} is invalid: expected a rule from neuro.rules.make")
    if not isinstance(task, AbstractTask):
        raise TypeError(f"task={task!r} is invalid: expected a task from neuro.tasks.make")
    _check_int("steps", steps, 1)
    _check_int("seed", seed, 0)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_positive("lr", lr)
    _check_int("update_every", update_every, 1)
    _check_int("batch", batch, 1)
    _check_int("log_every", log_every, 1)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, 1)
    _check_int("chunk", chunk, 1)
    _check_bool("resume", resume)
    _check_bool("progress", progress)
    if probe is not None and not callable(probe):
        raise TypeError(f"probe={probe!r} is invalid: expected a function (step, params) -> dict, or None")
    dtype = _resolve_dtype(dtype)
    dev = _resolve_device(device)

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
    _check_needs(rule, net, backend="torch")
    stages = None
    if schedule is not None:  # a constructive network learnt stage by stage (neuro.staged)
        from neuro import staged

        stages = staged.check(net, rule, task, steps, chunk, schedule)
    if task.episodic and steps < task.trial_steps:
        raise ValueError(f"steps={steps} is shorter than one trial of task {task.name!r} ({task.trial_steps} steps "
                         f"with {_settings(task)}): use steps >= {task.trial_steps}")

    if params is None:
        dtype = dtype or torch.float32
        params = net.init_params(seed, dtype=dtype, device=dev)
        source = f"net.init_params(seed={seed})"
    else:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict[str, Tensor] from net.init_params, got {type(params).__name__}")
        net.check_params(params)
        p0 = next(iter(params.values()))
        dtype = dtype or p0.dtype
        _resolve_dtype(dtype)
        dev = dev or p0.device
        params = {k: v.detach().to(dtype=dtype, device=dev).clone() for k, v in params.items()}
        source = "given by the caller"
    dev = dev or torch.device("cpu")
    if lr > torch.finfo(dtype).max:
        raise ValueError(f"lr={lr!r} is invalid: it overflows {str(dtype).replace('torch.', '')} "
                         f"(max {torch.finfo(dtype).max:.3g})")

    run_path = None if run_dir is None else Path(run_dir)
    if run_path is None and (resume or checkpoint_every is not None):
        what = "resume=True" if resume else f"checkpoint_every={checkpoint_every}"
        raise ValueError(f"{what} needs a run_dir to keep the checkpoint in")
    if run_path is not None and run_path.exists() and not run_path.is_dir():
        raise ValueError(f"run_dir={str(run_path)!r} is invalid: it exists and is not a directory")

    import neuro

    config = {
        "format": _FORMAT,
        "net": _describe(net),
        "rule": _describe(rule, skip=("net",)),
        "task": _describe(task),
        "train": {"steps": steps, "seed": seed, "params": source, "optimizer": optimizer, "lr": lr,
                  "update_every": update_every, "batch": batch, "log_every": log_every,
                  "checkpoint_every": checkpoint_every, "progress": progress, "dtype": str(dtype).replace("torch.", ""),
                  "device": str(dev), "chunk": chunk, "episodic": task.episodic,
                  "task_seed": derive_seed(seed, "task"), "rule_seed": derive_seed(seed, "rule"),
                  "torch_seed": derive_seed(seed, "torch"), "schedule": schedule},
        "versions": {"neuro": getattr(neuro, "__version__", "?"), "torch": str(torch.__version__),
                     "python": sys.version.split()[0]},
    }

    resume_from = None
    if resume:
        resume_from = _load_resume(run_path, config, dev)
    elif run_path is not None and any((run_path / f).exists() for f in (CONFIG, CHECKPOINT)):
        raise FileExistsError(f"run_dir={str(run_path)!r} already holds a run ({CONFIG} or {CHECKPOINT}): "
                              f"pass resume=True to continue it, or choose another directory")

    return _Run(net=net, rule=rule, task=task, steps=steps, seed=seed, params=params, optimizer=optimizer, lr=lr,
                update_every=update_every, batch=batch, run_dir=run_path, log_every=log_every,
                checkpoint_every=checkpoint_every, progress=progress, dtype=dtype, device=dev, chunk=chunk,
                config=config, resume_from=resume_from, probe=probe, schedule=stages)


def _load_resume(run_dir: Path, config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint {str(ckpt_path)!r}")
    ckpt = io.load_checkpoint(ckpt_path, map_location=device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{str(ckpt_path)!r} is not a neuro.train checkpoint of format {_FORMAT}")
    saved = ckpt["config"]
    now = _comparable(config)
    then = _comparable(saved)
    diffs = [f"{k}: {then.get(k)!r} (saved) vs {now.get(k)!r} (now)" for k in sorted(set(now) | set(then))
             if now.get(k) != then.get(k)]
    if diffs:
        raise ValueError(f"cannot resume {str(run_dir)!r}: the run was made with other settings: {'; '.join(diffs)}")
    if ckpt["step"] > config["train"]["steps"]:
        raise ValueError(f"steps={config['train']['steps']} is invalid for resuming {str(run_dir)!r}: "
                         f"its checkpoint is already at step {ckpt['step']}")
    return ckpt


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match to resume, flattened, through a JSON round trip."""
    c = json.loads(json.dumps(config))
    flat = {}
    for part in ("net", "rule", "task"):
        flat[f"{part}.name"] = c[part]["name"]
        flat[f"{part}.class"] = c[part]["class"]
        for k, v in c[part]["fields"].items():
            flat[f"{part}.{k}"] = v
    for k, v in c["train"].items():
        if k not in _RESUMABLE:
            flat[f"train.{k}"] = v
    return flat


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    devices = [] if device.type != "cuda" else [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=devices)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _make_optimizer(name: str, params: Params, lr: float) -> torch.optim.Optimizer:
    tensors = list(params.values())
    return torch.optim.Adam(tensors, lr=lr) if name == "adam" else torch.optim.SGD(tensors, lr=lr)


def _progress_bar(run: _Run, initial: int):
    enabled = run.progress and sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    desc = f"{run.net.name}/{run.rule.name}/{run.task.name}"
    return tqdm(total=run.steps, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def _stream(run: _Run, seq_index: int) -> Iterator:
    seed = derive_seed(run.seed, "task")
    it = run.task.stream(seed=seed, batch=run.batch) if run.task.episodic else \
        run.task.stream(seed=seed, batch=run.batch, chunk=run.chunk)
    for _ in range(seq_index):  # reposition a resumed run: regenerate the sequences already consumed
        next(it)
    return it


def _execute(run: _Run) -> History:
    with _fork_rng(run.device):
        return _loop(run)


def _loop(run: _Run) -> History:
    net, rule, params, steps = run.net, run.rule, run.params, run.steps
    ckpt_path = run.checkpoint_path
    ck = run.resume_from

    # -- state: fresh or from the checkpoint -----------------------------------------------------------
    if ck is None:
        torch.default_generator.manual_seed(derive_seed(run.seed, "torch"))
        if run.device.type == "cuda":
            torch.cuda.manual_seed(derive_seed(run.seed, "torch"))
        state = rule.init(params, run.batch, derive_seed(run.seed, "rule"))
        step, seq_index, offset, updates, sequences, elapsed0 = 0, 0, 0, 0, 0, 0.0
        metrics: list[dict[str, Any]] = []
        interval = {"loss_sum": 0.0, "frac_sum": 0.0, "steps": 0, "start_elapsed": 0.0}
        last_ckpt_step = None
    else:
        params = {k: v.to(dtype=run.dtype, device=run.device).contiguous() for k, v in ck["params"].items()}
        run.net.check_params(params)
        state = ck["rule_state"]
        step, (seq_index, offset) = ck["step"], ck["position"]
        updates, sequences, elapsed0 = ck["updates"], ck["sequences"], ck["elapsed_s"]
        metrics, interval = list(ck["metrics"]), dict(ck["interval"])
        _set_rng_state(ck["rng"], run.device)
        last_ckpt_step = step
        if run.schedule is not None:  # the checkpoint's state belongs to the stage it was taken in
            from neuro import staged

            rule = staged.rule_at_stage(rule, net, run.schedule.stage_after(step))
            net = rule.net
    opt = _make_optimizer(run.optimizer, params, run.lr)
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
    acc = zeros_like_params(params)
    acc_full = False

    if run.run_dir is not None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(run.run_dir / CONFIG, run.config)

    t_start = time.perf_counter()
    bar = _progress_bar(run, step)
    bar_step = step
    buf: list[torch.Tensor] = []  # per-step losses not yet read
    buf_frac: list[float] = []  # fraction of the batch that counts, per buffered step
    buf_first = step + 1  # the step of buf[0]
    next_ckpt = None
    if run.checkpoint_every is not None:
        next_ckpt = (step // run.checkpoint_every + 1) * run.checkpoint_every

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def diverged(what: str, at: int) -> TrainingDiverged:
        if ckpt_path is None:
            where = "no checkpoint (no run_dir)"
        elif last_ckpt_step is None:
            where = f"no checkpoint was written before it ({str(ckpt_path)!r} does not exist)"
        else:
            where = f"last good checkpoint: {ckpt_path} (step {last_ckpt_step})"
        return TrainingDiverged(f"{what} at step {at}; {where}", step=at,
                                checkpoint=ckpt_path if last_ckpt_step is not None else None,
                                checkpoint_step=last_ckpt_step)

    def drain() -> None:
        nonlocal buf_first, bar_step
        if buf:
            values = torch.stack(buf).double().tolist()
            for j, (v, f) in enumerate(zip(values, buf_frac)):
                if not math.isfinite(v):
                    raise diverged(f"loss became {v}", buf_first + j)
                interval["loss_sum"] += v
                interval["frac_sum"] += f
            interval["steps"] += len(values)
            buf.clear()
            buf_frac.clear()
        buf_first = step + 1
        if bar is not None:
            bar.update(step - bar_step)
            bar_step = step
            if interval["steps"]:
                bar.set_postfix_str(f"loss={interval['loss_sum'] / interval['steps']:.4f}", refresh=False)

    def log() -> None:
        nonlocal t_start
        drain()
        now = elapsed()
        n = interval["steps"]
        extra: dict[str, Any] = {}
        if run.probe is not None:  # measured on the side: its time is kept off the training clock
            t0 = time.perf_counter()
            with torch.no_grad():
                extra = dict(run.probe(step, {k: v.detach().clone() for k, v in params.items()}))
            t_start += time.perf_counter() - t0
            clash = sorted(set(extra) & set(COLUMNS))
            if clash:
                raise ValueError(f"probe returned the column(s) {clash}, which train writes itself")
        metrics.append({
            "step": step,
            "loss": interval["loss_sum"] / n,
            "loss_counted": interval["loss_sum"] / interval["frac_sum"] if interval["frac_sum"] > 0 else None,
            "updates": updates,
            "sequences": sequences,
            "steps_per_s": n / max(now - interval["start_elapsed"], 1e-9),
            "elapsed_s": now,
            **extra,
        })
        interval.update(loss_sum=0.0, frac_sum=0.0, steps=0, start_elapsed=now)
        if run.run_dir is not None:
            columns = COLUMNS + sorted({k for row in metrics for k in row} - set(COLUMNS))
            io.write_csv(run.run_dir / METRICS, metrics, columns)

    def apply() -> None:
        nonlocal acc_full, updates
        if not acc_full:
            return
        with torch.no_grad():
            for k, p in params.items():
                p.grad = acc[k]
            opt.step()
            for p in params.values():
                p.grad = None
            for a in acc.values():
                a.zero_()
        acc_full = False
        updates += 1

    def checkpoint() -> None:
        nonlocal last_ckpt_step
        drain()
        for k, p in params.items():
            if not bool(torch.isfinite(p).all()):
                raise diverged(f"parameter {k!r} became nan or inf after the update", step)
        io.save_checkpoint(ckpt_path, {
            "format": _FORMAT, "step": step, "position": [seq_index, offset], "params": params,
            "optimizer": opt.state_dict(), "rule_state": state, "updates": updates, "sequences": sequences,
            "interval": dict(interval), "metrics": metrics, "elapsed_s": elapsed(), "rng": _rng_state(run.device),
            "config": run.config,
        })
        last_ckpt_step = step

    # -- the loop -----------------------------------------------------------------------------------------
    try:
        stream = _stream(run, seq_index) if step < steps else iter(())
        first = ck is None
        k_update = run.update_every
        while step < steps:
            seq = next(stream).to(dtype=run.dtype, device=run.device)
            if offset:
                seq = seq[offset:]
            if run.task.episodic and not first and offset == 0:
                state = rule.reset(params, state)
            first = False
            n = min(seq.steps, steps - step)
            xs, ys, mask = seq.xs, seq.ys, seq.mask
            frac = mask[:n].to(torch.float64).mean(1).tolist()
            since = 0
            for t in range(n):
                out = rule.step(params, state, xs[t], ys[t], mask[t])
                state = out.state
                if out.grad is not None:
                    add_into(acc, out.grad)
                    acc_full = True
                buf.append(out.loss)
                buf_frac.append(frac[t])
                step += 1
                since += 1
                if t == n - 1:  # the sequence ends (or the run does): pending estimate, then one update
                    state, g = rule.finish(params, state)
                    if g is not None:
                        add_into(acc, g)
                        acc_full = True
                    apply()
                    if n == seq.steps:
                        seq_index, offset = seq_index + 1, 0
                        sequences += 1
                    else:
                        offset += n
                elif since >= k_update:
                    state, g = rule.flush(params, state)
                    if g is not None:
                        add_into(acc, g)
                        acc_full = True
                    apply()
                    since = 0
                if step % run.log_every == 0 or step == steps:
                    log()
                elif len(buf) >= _DRAIN:
                    drain()
            if run.schedule is not None and n == seq.steps and rule.net.stage < run.schedule.stage_after(step):
                from neuro import staged  # a stage boundary: next stage, fresh traces and optimizer

                rule, state = staged.next_stage(rule, params, state, run.batch,
                                                derive_seed(run.seed, f"rule:{rule.net.stage + 1}"))
                net = rule.net
                opt = staged.fresh_optimizer(opt, _make_optimizer(run.optimizer, params, run.lr), params)
            drain()  # the sequence's losses are checked before any checkpoint
            if ckpt_path is not None and (step == steps or (next_ckpt is not None and step >= next_ckpt)):
                checkpoint()
                if next_ckpt is not None:
                    next_ckpt = (step // run.checkpoint_every + 1) * run.checkpoint_every

        if ckpt_path is None:
            for k, p in params.items():
                if not bool(torch.isfinite(p).all()):
                    raise diverged(f"parameter {k!r} became nan or inf after the update", step)
    finally:
        if bar is not None:
            bar.close()
    return History(params=params, metrics=metrics, run_dir=run.run_dir, rule=rule, steps=step, updates=updates,
                   elapsed_s=metrics[-1]["elapsed_s"] if metrics else elapsed0)


def train(net: AbstractNetwork, rule: AbstractRule, task: AbstractTask, steps: int, seed: int = 0,
          params: Params | None = None, optimizer: str = "adam", lr: float = 1e-3, update_every: int = 1,
          batch: int = 1, run_dir: str | Path | None = None, log_every: int = 100,
          checkpoint_every: int | None = None, resume: bool = False, progress: bool = True,
          dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
          chunk: int = 100, probe: Callable[[int, Params], dict[str, Any]] | None = None,
          schedule: str | None = None) -> History:
    """Train ``net`` online with ``rule`` on ``task`` for ``steps`` steps (see the module docstring).

    Args:
        net, rule, task: from ``models.make``, ``neuro.rules.make`` (on ``net``; ``loss=None`` takes the
            task's loss) and ``neuro.tasks.make`` (its ``n_in``/``n_out`` must be the network's).
        steps: time steps to run (each advances ``batch`` independent streams).
        seed: decides the initial parameters, the task stream, the rule's randomness (``derive_seed``).
        params: initial parameters (copied; the caller's are never changed). Default ``net.init_params(seed)``;
            ignored when resuming (the checkpoint's are used).
        optimizer: ``"adam"`` or ``"sgd"`` (``torch.optim``, learning rate ``lr``).
        update_every: apply the summed estimates every this many steps (1: fully online) and at every
            sequence end.
        batch: independent streams run side by side (the per-step loss is their mean).
        run_dir: where to write config.json, metrics.csv, checkpoint.pt (``None``: nothing is written).
        log_every: steps per metrics row.
        checkpoint_every: steps between checkpoints (taken at the next sequence end); one is always
            written at the end when ``run_dir`` is given.
        resume: continue the run in ``run_dir`` from its checkpoint (the settings must match its config;
            ``steps`` may grow).
        progress: a progress bar on stderr (only when stderr is a terminal).
        dtype, device: of the parameters (default: those of ``params``, else float32 on the CPU).
        chunk: steps per sequence of a continuing task (ignored by episodic tasks).
        probe: called as ``probe(step, params)`` (a detached copy, under ``no_grad``; it may enable grad)
            at every metrics row; the dict it returns is added to the row (e.g. the alignment of the
            rule's estimate with BPTT's gradient, measured on the side). Its time is not counted in
            ``elapsed_s`` / ``steps_per_s``. It must not change the global random state's use by the run
            (it runs inside the run's forked generator: draw from your own ``torch.Generator``).
        schedule: ``"total:per-stage:steps-per-stage"`` (e.g. ``"20:4:10000"``): train a constructive network
            stage by stage in this one run (:mod:`neuro.staged`: ``net`` at stage 0, rule ``constructive``
            or ``td-lambda`` over it; at each boundary the next stage, fresh traces and optimizer state
            (the readout's optimizer state carries on);
            ``History.rule.net`` is the last stage's network). ``None``: no stages.

    Raises:
        ValueError, TypeError: an invalid argument (before anything is written).
        FileNotFoundError: ``resume=True`` without a checkpoint. FileExistsError: ``run_dir`` holds a run.
        TrainingDiverged: the loss or the parameters became NaN or infinite.
    """
    run = prepare(net, rule, task, steps, seed=seed, params=params, optimizer=optimizer, lr=lr,
                  update_every=update_every, batch=batch, run_dir=run_dir, log_every=log_every,
                  checkpoint_every=checkpoint_every, resume=resume, progress=progress, dtype=dtype, device=device,
                  chunk=chunk, probe=probe, schedule=schedule)
    return _execute(run)
