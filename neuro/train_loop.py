"""The body of :func:`neuro.train`: one prepared run (:class:`neuro.training.Run`) executed step by step.

:class:`Loop` holds what changes during a run (the rule and its state, the parameters, the optimizer, the
summed estimates, the :class:`Counters`, the losses not yet read) and does one thing per method: a
sequence, a step, an update, a metrics row, a checkpoint. :class:`Hook` objects are called at fixed points
(a run's start, a whole sequence's end) and may replace the rule, its state and the optimizer there
(:class:`neuro.staged.StageHook` switches stages so). The schedule itself is described in
:mod:`neuro.training`.

Checkpoints (with a run directory) are taken at sequence ends: at the run's end, at the first sequence end
after every ``checkpoint_every`` steps when that is given, else at the first one after every
:data:`CHECKPOINT_SECONDS` of wall clock. Which sequence end a checkpoint lands on changes nothing a resume
computes (every sequence end holds the whole state), so a resumed run is bit-identical either way. Once the
run directory is written, any failure (a file that cannot be written, memory, a rule's error) raises
:class:`neuro.errors.RunFailed` naming the cause, the last good checkpoint and how to continue; the
checkpoint on disk is always the last good one.

With a compiled engine (``run.engine``, :mod:`neuro.engine`), :meth:`Loop.sequence` runs the steps in ranges
that end at the log points and the sequence's end, one engine call each, in place of its step-by-step loop:
the same schedule, accumulator, optimizer (its state changed in place) and losses, so everything else here
(metrics, checkpoints, the divergence check naming the step) is shared.

Parameters outside the loss's reach (:mod:`neuro.contract`): the optimizer never steps the network's
``fixed_params``; its ``local_params`` (a decorrelation layer's ``D``) are learnt by the network's own rule,
not the rule's estimate: after every step the loop adds ``net.local_estimate(params, state.net)`` (every rule
state holds the network's state after the step in its ``net`` field) to their own sum, and an update steps
them by plain SGD at their rate, beside the optimizer, which never sees them (plain SGD keeps no state).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from neuro import errors, optim
from neuro.contract import Params
from neuro.engine.base import Engine, SequenceArrays
from neuro.errors import RunFailed
from neuro.rules.base import add_into, zeros_like_params
from neuro.rundir import COLUMNS, CONFIG, write_failure
from neuro.tasks.base import Sequence
from neuro.train_config import rng_state, set_rng_state
from neuro.train_result import History, TrainingDiverged

if TYPE_CHECKING:
    from neuro.training import Run

__all__ = ["CHECKPOINT_SECONDS", "Counters", "History", "Hook", "Loop", "TrainingDiverged"]

DRAIN = 256  # steps between reads of the per-step losses (progress bar, early divergence check)
#: the ``torch.optim`` class of each :data:`~neuro.train_config.OPTIMIZERS` name (torch's defaults but ``lr``) but
#: ``"td-rmsprop"`` (:func:`neuro.optim.make`)
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
#: without ``checkpoint_every``, a checkpoint at the first sequence end after this many seconds of wall clock
CHECKPOINT_SECONDS = 60.0


class Hook:
    """Called by :class:`Loop` at fixed points; a method may replace ``loop.rule``, ``loop.state`` (the rule
    state) and ``loop.opt`` (``loop.new_optimizer()`` builds a fresh one). The base does nothing."""

    def start(self, loop: Loop) -> None:
        """Before the first step of a run, or of its resume (``loop.counters.step`` steps are done)."""

    def sequence_end(self, loop: Loop) -> None:
        """After the update that ends a whole sequence, before its losses are checked and its checkpoint."""


@dataclasses.dataclass
class Counters:
    """Where a run stands (saved in every checkpoint): ``step`` steps done, the stream at sequence
    ``seq_index`` (``offset`` steps into it), ``updates`` applied, ``sequences`` finished, ``elapsed0``
    seconds of training before this process."""

    step: int = 0
    seq_index: int = 0
    offset: int = 0
    updates: int = 0
    sequences: int = 0
    elapsed0: float = 0.0


def _progress_bar(run: Run, initial: int):
    if not (run.config.progress and sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=run.steps, initial=initial, desc=f"{run.net.name}/{run.rule.name}/{run.task.name}", unit="step",
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


class Loop:
    """One execution of a prepared run, fresh or resumed from ``run.resume_from`` (see the module docstring)."""

    def __init__(self, run: Run, continue_with: str | None = None) -> None:
        self.run, self.config = run, run.config
        self.continue_with = continue_with or f"train(..., run_dir={str(run.config.run_dir)!r}, resume=True)"
        self.writing: Path | None = None  # the file being written, while it is
        self.rule, ck = run.rule, run.resume_from
        self.engine: Engine | None = run.engine  # rebuilt when a hook puts in a new rule
        if ck is None:
            torch.default_generator.manual_seed(self.config.seed_for("torch"))
            if run.device.type == "cuda":
                torch.cuda.manual_seed(self.config.seed_for("torch"))
            self.params = run.params
            self.state = self.rule.init(self.params, self.config.batch, self.config.seed_for("rule"))
            self.counters = Counters()
            self.metrics: list[dict[str, Any]] = []
            self.interval = {"loss_sum": 0.0, "frac_sum": 0.0, "steps": 0, "start_elapsed": 0.0}
            self.last_ckpt_step: int | None = None
        else:
            self.params = {k: v.to(dtype=run.dtype, device=run.device).contiguous() for k, v in ck["params"].items()}
            run.net.check_params(self.params)
            self.state = ck["rule_state"]
            (seq_index, offset) = ck["position"]
            self.counters = Counters(ck["step"], seq_index, offset, ck["updates"], ck["sequences"], ck["elapsed_s"])
            self.metrics, self.interval = list(ck["metrics"]), dict(ck["interval"])
            set_rng_state(ck["rng"], run.device)
            self.last_ckpt_step = ck["step"]
        self.opt = self.new_optimizer()
        if ck is not None:
            self.opt.load_state_dict(ck["optimizer"])
        self.acc, self.acc_full = zeros_like_params(self.params), False
        own = self.rule.net.local_params
        self.acc_local = {k: torch.zeros_like(self.params[k]) for k in own}  # the network's own estimates
        self.local_full = False
        if run.run_dir is not None:
            run.run_dir.start(run.description, fresh=ck is None)
        step = self.counters.step
        self.t_start = time.perf_counter()
        self.ckpt_time = time.monotonic()
        self.bar, self.bar_step = _progress_bar(run, step), step
        self.losses: list[torch.Tensor] = []  # per-step losses not yet read
        self.fracs: list[float] = []  # the fraction of the batch that counts, per unread step
        self.losses_first = step + 1  # the step of losses[0]
        every = self.config.checkpoint_every
        self.next_ckpt = None if every is None else (step // every + 1) * every

    def new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh ``torch.optim`` optimizer of the run's kind over the parameters (``"td-rmsprop"``: for the
        rule's network as it is now, :func:`neuro.optim.make`)."""
        tensors, lr = list(self.params.values()), self.config.lr
        if self.config.optimizer == "td-rmsprop":
            return optim.make(self.params, lr, self.rule.net, self.config.optimizer_options)
        return OPTIMIZER_CLASSES[self.config.optimizer](tensors, lr=lr)

    # -- the run --------------------------------------------------------------------------------------

    def execute(self) -> History:
        """The run; with a run directory, a failure (but a divergence) raises :class:`RunFailed` (from it)."""
        try:
            return self._execute()
        except (TrainingDiverged, RunFailed):
            raise
        except Exception as e:
            if self.run.run_dir is None:
                raise
            raise self.failed(e) from e

    def _execute(self) -> History:
        c, steps = self.counters, self.run.steps
        try:
            t0 = time.perf_counter()
            for hook in self.run.hooks:
                hook.start(self)
            self.t_start += time.perf_counter() - t0
            stream = self._stream() if c.step < steps else iter(())
            first = self.run.resume_from is None
            while c.step < steps:
                seq = next(stream)
                if not _has(seq, self.run.dtype, self.run.device):
                    seq = seq.to(dtype=self.run.dtype, device=self.run.device)
                self.sequence(seq, reset=self.run.task.episodic and not first and c.offset == 0)
                first = False
            if self.run.run_dir is None:
                self._check_params()
        finally:
            if self.bar is not None:
                self.bar.close()
        return History(params=self.params, metrics=self.metrics, run_dir=self.config.run_dir, rule=self.rule,
                       steps=c.step, updates=c.updates,
                       elapsed_s=self.metrics[-1]["elapsed_s"] if self.metrics else c.elapsed0,
                       engine=self.run.description["train"]["engine"])

    def _stream(self) -> Iterator[Sequence]:
        run, seed = self.run, self.config.seed_for("task")
        it = run.task.stream(seed=seed, batch=self.config.batch) if run.task.episodic else \
            run.task.stream(seed=seed, batch=self.config.batch, chunk=self.config.chunk, steps=run.steps)
        for _ in range(self.counters.seq_index):  # reposition a resumed run: regenerate the sequences consumed
            next(it)
        return it

    def sequence(self, seq: Sequence, reset: bool) -> None:
        """The rest of ``seq`` (from ``counters.offset``), up to the run's last step; then the hooks, the loss
        check and the checkpoint that fall due."""
        c, k = self.counters, self.config.update_every
        if c.offset:
            seq = seq[c.offset:]
        if reset:
            self.state = self.rule.reset(self.params, self.state)
        n = min(seq.steps, self.run.steps - c.step)
        # the sequence's whole length (the stream cuts its last chunk at the run's end: nothing more is generated)
        whole = c.offset + n == (self.run.task.trial_steps if self.run.task.episodic else self.config.chunk)
        xs, ys, mask = seq.xs, seq.ys, seq.mask
        if self.engine is not None and self.rule is not self.engine.rule:  # a hook (a stage schedule) put in a new rule
            rebuild = getattr(self.engine, "rebuild", None)  # its combination's builder (neuro.engine.Combination)
            self.engine = None if rebuild is None else rebuild(self.rule.net, self.rule)
        engine = self.engine
        arrays = None if engine is None else SequenceArrays.of(seq, self.run.dtype)
        # the fraction of the batch that counts, per step (its mask's 0/1 summed exactly, then divided: as torch's mean)
        frac = mask[:n].to(torch.float64).mean(1).cpu().numpy() if arrays is None else \
            np.add.reduce(arrays.mask[:n], axis=1, dtype=np.float64) / arrays.mask.shape[1]
        t = 0
        while t < n:
            if engine is not None:  # steps t .. b - 1 in one compiled call, up to the next log point or the end
                b = min(n, t + self.config.log_every - c.step % self.config.log_every)
                self._compiled(engine, arrays, t, b, n, frac)
                t = b
                if t == n:
                    self._advance(n, whole)
            else:
                self.step(xs[t], ys[t], mask[t], frac[t])
                if t == n - 1:  # the sequence ends (or the run does): pending estimate, then one update
                    self._end_sequence(n, whole=whole)
                elif (t + 1) % k == 0:
                    self.state, g = self.rule.flush(self.params, self.state)
                    self._accumulate(g)
                    self.apply()
                t += 1
            if c.step % self.config.log_every == 0 or c.step == self.run.steps:
                self.log()
            elif len(self.losses) >= DRAIN:
                self.drain()
        if whole:
            for hook in self.run.hooks:
                hook.sequence_end(self)
        self.drain()  # the sequence's losses are checked before any checkpoint
        due = c.step == self.run.steps or (self.next_ckpt is not None and c.step >= self.next_ckpt) or \
            (self.next_ckpt is None and time.monotonic() - self.ckpt_time >= CHECKPOINT_SECONDS)
        if self.run.run_dir is not None and due:
            self.checkpoint()
            if self.next_ckpt is not None:
                every = self.config.checkpoint_every
                self.next_ckpt = (c.step // every + 1) * every

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, frac: float) -> None:
        """One step of the rule; its estimate is added to the sum, its loss kept to be read."""
        out = self.rule.step(self.params, self.state, x, y, mask)
        self.state = out.state
        self._accumulate(out.grad)
        if self.acc_local:  # the network's own rule, read from its state after the step
            add_into(self.acc_local, self.rule.net.local_estimate(self.params, out.state.net))
            self.local_full = True
        self.losses.append(out.loss)
        self.fracs.append(frac)
        self.counters.step += 1

    def _compiled(self, engine: Engine, arrays: SequenceArrays, t0: int, t1: int, n: int, frac: np.ndarray) -> None:
        """Steps ``t0 .. t1 - 1`` of the sequence (``n`` steps) in one call of the compiled ``engine``: the same
        steps, updates (:meth:`Engine.run`) and losses as :meth:`step`, :meth:`apply` and the schedule make."""
        self.drain()
        c, first = self.counters, self.counters.step + 1
        r = engine.run(self.params, self.state, self.acc, self.opt, arrays, t0, t1, n, self.config.update_every)
        self.state, self.acc_full = r.state, r.pending
        c.step += t1 - t0
        c.updates += r.updates
        self._count(r.losses, frac[t0:t1], first)
        self.drain()

    def _end_sequence(self, n: int, whole: bool) -> None:
        self.state, g = self.rule.finish(self.params, self.state)
        self._accumulate(g)
        self.apply()
        self._advance(n, whole)

    def _advance(self, n: int, whole: bool) -> None:
        """The stream's position after ``n`` more steps of the sequence, which ended if ``whole``."""
        c = self.counters
        if whole:
            c.seq_index, c.offset = c.seq_index + 1, 0
            c.sequences += 1
        else:
            c.offset += n

    def _accumulate(self, g: Params | None) -> None:
        if g is not None:
            add_into(self.acc, g)
            self.acc_full = True

    def apply(self) -> None:
        """One optimizer step with the summed estimates, if any were given since the last one; and the
        network's own rule's step, if it gave any."""
        net = self.rule.net
        with torch.no_grad():
            if self.local_full:
                for k, rate in net.local_params.items():  # plain SGD at the network's own rate
                    self.params[k].sub_(self.acc_local[k], alpha=rate)
                    self.acc_local[k].zero_()
                self.local_full = False
            if not self.acc_full:
                return
            held = net.held_params
            for k, p in self.params.items():
                p.grad = None if k in held else self.acc[k]  # a parameter without a grad is not stepped
            self.opt.step()
            for p in self.params.values():
                p.grad = None
            for a in self.acc.values():
                a.zero_()
        self.acc_full = False
        self.counters.updates += 1

    # -- reading the losses, metrics, checkpoints ------------------------------------------------------

    def elapsed(self) -> float:
        return self.counters.elapsed0 + time.perf_counter() - self.t_start

    def drain(self) -> None:
        """Read the losses not yet read into the interval's sums (``TrainingDiverged`` at a non-finite one)."""
        step, iv = self.counters.step, self.interval
        if self.losses:
            self._count(torch.stack(self.losses).double().cpu().numpy(), self.fracs, self.losses_first)
            self.losses.clear()
            self.fracs.clear()
        self.losses_first = step + 1
        if self.bar is not None:
            self.bar.update(step - self.bar_step)
            self.bar_step = step
            if iv["steps"]:
                self.bar.set_postfix_str(f"loss={iv['loss_sum'] / iv['steps']:.4f}", refresh=False)

    def _count(self, values: np.ndarray, fracs: np.ndarray | list[float], first: int) -> None:
        """Add the per-step losses of steps ``first, first + 1, ...`` to the interval's sums (in step order, as
        one float64 addition each)."""
        iv, n = self.interval, len(values)
        if not n:
            return
        sums = np.empty((2, n + 1))  # each row summed left to right by one cumsum
        sums[0, 0], sums[1, 0] = iv["loss_sum"], iv["frac_sum"]
        sums[0, 1:], sums[1, 1:] = values, fracs
        loss_sum, frac_sum = sums.cumsum(axis=1)[:, n].tolist()
        if not math.isfinite(loss_sum):  # a sum with a nan or inf among its terms is not finite
            finite = np.isfinite(sums[0, 1:])
            if not finite.all():
                j = int(np.argmin(finite))
                raise self._diverged(f"loss became {float(sums[0, 1 + j])}", first + j)
        iv["loss_sum"], iv["frac_sum"] = loss_sum, frac_sum
        iv["steps"] += n

    def log(self) -> None:
        """A metrics row for the interval since the last (and ``metrics.csv`` rewritten)."""
        self.drain()
        now, iv, c = self.elapsed(), self.interval, self.counters
        extra: dict[str, Any] = {}
        if self.config.probe is not None:  # measured on the side: its time is kept off the training clock
            t0 = time.perf_counter()
            with torch.no_grad():
                extra = dict(self.config.probe(c.step, {k: v.detach().clone() for k, v in self.params.items()}))
            self.t_start += time.perf_counter() - t0
            clash = sorted(set(extra) & set(COLUMNS))
            if clash:
                raise ValueError(f"probe returned the column(s) {clash}, which train writes itself")
        self.metrics.append({
            "step": c.step,
            "loss": iv["loss_sum"] / iv["steps"],
            "loss_counted": iv["loss_sum"] / iv["frac_sum"] if iv["frac_sum"] > 0 else None,
            "updates": c.updates,
            "sequences": c.sequences,
            "steps_per_s": iv["steps"] / max(now - iv["start_elapsed"], 1e-9),
            "elapsed_s": now,
            **extra,
        })
        iv.update(loss_sum=0.0, frac_sum=0.0, steps=0, start_elapsed=now)
        if self.run.run_dir is not None:
            self.writing = self.run.run_dir.path / "metrics.csv"
            self.run.run_dir.write_metrics(self.metrics)
            self.writing = None

    def checkpoint(self) -> None:
        """Save everything a resume needs, once the losses and the parameters are checked finite."""
        self.drain()
        self._check_params()
        c = self.counters
        self.writing = self.run.run_dir.checkpoint
        from neuro.connectivity import compact

        masks = self.run.net.masks  # sparse matrices: only their synapses (neuro.connectivity.compact)
        opt = self.opt.state_dict()
        if masks:  # the optimizer's per-parameter state (Adam's moments) has the parameters' shapes
            names = list(self.params)
            opt = {**opt, "state": {i: {f: compact({names[i]: t}, masks)[names[i]] for f, t in entry.items()}
                                    for i, entry in opt["state"].items()}}
        self.run.run_dir.save_checkpoint({
            "step": c.step, "position": [c.seq_index, c.offset], "params": compact(self.params, masks),
            "optimizer": opt, "rule_state": self.state, "updates": c.updates,
            "sequences": c.sequences, "interval": dict(self.interval), "metrics": self.metrics,
            "elapsed_s": self.elapsed(), "rng": rng_state(self.run.device), "config": self.run.description,
        })
        self.writing = None
        self.last_ckpt_step, self.ckpt_time = c.step, time.monotonic()

    def _check_params(self) -> None:
        for k, p in self.params.items():
            if not bool(torch.isfinite(p).all()):
                raise self._diverged(f"parameter {k!r} became nan or inf after the update", self.counters.step)

    def _diverged(self, what: str, at: int) -> TrainingDiverged:
        path = None if self.run.run_dir is None else self.run.run_dir.checkpoint
        if path is None:
            where = "no checkpoint (no run_dir)"
        elif self.last_ckpt_step is None:
            where = f"no checkpoint was written before it ({str(path)!r} does not exist)"
        else:
            where = f"last good checkpoint: {path} (step {self.last_ckpt_step})"
        return TrainingDiverged(f"{what} at step {at}; {where}", step=at,
                                checkpoint=path if self.last_ckpt_step is not None else None,
                                checkpoint_step=self.last_ckpt_step)

    # -- failures --------------------------------------------------------------------------------------

    def failed(self, e: Exception) -> RunFailed:
        """``e``, raised after the run directory was written, as a :class:`RunFailed` naming its cause, the
        last good checkpoint (the one on disk) and how to continue."""
        rd = self.run.run_dir
        if self.last_ckpt_step is None:
            kept, last_good = f"no checkpoint was written before it (resuming restarts the run from its {CONFIG})", rd.path
        else:
            kept, last_good = f"last good checkpoint: {rd.checkpoint} (step {self.last_ckpt_step})", rd.checkpoint
        return RunFailed(f"the run failed at step {self.counters.step}: {_cause(e, self.writing)}; {kept}; "
                         f"continue with: {self.continue_with}", last_good)


def _has(seq: Sequence, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``seq`` is already what ``seq.to(dtype=dtype, device=device)`` gives (its inputs and targets of
    ``dtype``, all on ``device``)."""
    return seq.xs.dtype == dtype and seq.ys.dtype == dtype and seq.xs.device == device and \
        seq.ys.device == device and seq.mask.device == device


def _cause(e: BaseException, writing: Path | None) -> str:
    """``e`` in one line; a failed write names the file (:func:`neuro.rundir.write_failure`)."""
    return errors.describe(e) if writing is None else write_failure(e, writing)
