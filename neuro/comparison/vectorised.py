"""Vectorised seeds: the seeds of one rule trained as one batched computation (``compare(vectorise=True)``).

The ``S`` runs of a rule (same task, model, budget; seeds ``s_1 .. s_S``) become one run of
:class:`neuro.ensemble.Ensemble` (``S`` independent copies of the network, their parameters stacked, each
step one batched computation: the network's own step on member-major tensors, or its ``vmap``) on a
batch that holds each member's own task stream (``task.stream(derive_seed(s_m, "task"))``, as its own
run would get), from each member's own initial parameters (``init_params(s_m)``). The rule runs on the
ensemble as on any network; its estimate is scaled by ``S`` (the loss is averaged over the ``S B`` rows,
see :mod:`neuro.ensemble`), so each member gets the estimate its own run would get, and Adam / SGD act
elementwise. The result of each member is the result of its own run up to floating-point rounding (a
batched matrix product sums in another order); the test suite checks this.

Only rules whose estimate for one row of the batch depends on that row alone, and that treat the
parameters as opaque tensors, can run this way: :data:`VECTORISABLE`. The others run one process per
seed as usual.

Per member: the learning curve from the per-member losses recorded at every step (the ensemble's own
loss is their mean), the held-out loss and accuracy and the alignment with BPTT computed on the member's
parameters exactly as :func:`~neuro.comparison.worker.run_one` does. Time per step is the ensemble's
time per step divided by ``S`` (the cost of one member-step), peak memory the ensemble's divided by
``S``; both are marked ``vectorised: S`` in the result.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator, NamedTuple

import torch
from torch import Tensor

from neuro import losses
from neuro.contract import Params
from neuro.rules.base import AbstractRule, StepOutput
from neuro.tasks.base import AbstractTask, Sequence

__all__ = ["VECTORISABLE", "run_group"]

#: rules whose seeds can run as one ensemble
VECTORISABLE = ("bptt", "tbptt")


@dataclasses.dataclass(frozen=True)
class _MemberStreams(AbstractTask):
    """The streams of ``task`` for each seed of ``seeds``, side by side in the batch (member-major)."""

    task: AbstractTask = None  # type: ignore[assignment]
    seeds: tuple[int, ...] = ()

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.task.name

    @property
    def loss(self) -> str:  # type: ignore[override]
        return self.task.loss

    @property
    def episodic(self) -> bool:  # type: ignore[override]
        return self.task.episodic

    @property
    def n_in(self) -> int:
        return self.task.n_in

    @property
    def n_out(self) -> int:
        return self.task.n_out

    @property
    def trial_steps(self) -> int | None:
        return self.task.trial_steps

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000, steps: int | None = None) -> Iterator[Sequence]:
        from neuro.training import derive_seed

        S = len(self.seeds)
        kw = {} if self.task.episodic else {"chunk": chunk, "steps": steps}
        its = [self.task.stream(seed=derive_seed(s, "task"), batch=batch // S, **kw) for s in self.seeds]
        while True:
            try:
                parts = [next(it) for it in its]
            except StopIteration:  # the members' streams end together (``steps`` steps in all)
                return
            yield Sequence(torch.cat([p.xs for p in parts], 1), torch.cat([p.ys for p in parts], 1),
                           torch.cat([p.mask for p in parts], 1))


#: steps whose outputs :class:`_PerMember` keeps before it computes their per-member losses in one go
_SETTLE_EVERY = 256


@dataclasses.dataclass(frozen=True)
class _PerMember(AbstractRule):
    """``inner`` on the ensemble, its estimate times ``S``; records each member's loss at every step (the step's
    outputs are kept and their losses computed every :data:`_SETTLE_EVERY` steps as one batched computation,
    which costs less than a handful of tiny operations at every step)."""

    inner: AbstractRule = None  # type: ignore[assignment]
    record: list = dataclasses.field(default_factory=list, compare=False, repr=False)
    pending: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    name = "per-member"

    @property
    def needs(self):  # type: ignore[override]
        return self.inner.needs

    @property
    def _S(self) -> int:
        return self.net.members

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> NamedTuple:
        return self.inner.init(params, batch, seed)

    def reset(self, params: Params, state: NamedTuple) -> NamedTuple:
        return self.inner.reset(params, state)

    def _scale(self, g: Params | None) -> Params | None:
        return None if g is None else {k: v * self._S for k, v in g.items()}

    def step(self, params: Params, state: NamedTuple, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        out = self.inner.step(params, state, x, y, mask)
        self.pending.append((out.y, y, mask))
        if len(self.pending) >= _SETTLE_EVERY:
            self._settle()
        return out if out.grad is None else out._replace(grad=self._scale(out.grad))

    def _settle(self) -> None:
        if not self.pending:
            return
        y_hat, y, mask = (torch.stack(t) for t in zip(*self.pending))  # [K, S B, n_out], ..., [K, S B]
        per = losses.per_sample(self.inner.loss)(y_hat, y) * mask.to(y_hat.dtype)  # [K, S B]
        self.record.append(per.reshape(per.shape[0], self._S, -1).mean(2).detach())
        self.pending.clear()

    def member_losses(self) -> Tensor:
        """The loss of each member at every step so far: ``[steps, S]``."""
        self._settle()
        return torch.cat(self.record) if self.record else torch.zeros(0, self._S)

    def finish(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        state, g = self.inner.finish(params, state)
        return state, self._scale(g)

    def flush(self, params: Params, state: NamedTuple) -> tuple[NamedTuple, Params | None]:
        state, g = self.inner.flush(params, state)
        return state, self._scale(g)


def run_group(specs: list[dict[str, Any]], mode: str = "auto") -> list[dict[str, Any]]:
    """Train the runs ``specs`` (one rule, differing only in ``seed``) as one ensemble (``mode``: how it batches
    the members, see :class:`~neuro.ensemble.Ensemble`); one result per spec, in the format of
    :func:`~neuro.comparison.worker.run_one`."""
    import models
    import neuro
    import neuro.rules
    import neuro.tasks
    from neuro import _rss
    from neuro.ensemble import Ensemble, stack_params, unstack_params
    from neuro.training import History, TrainingDiverged, derive_seed

    from .worker import _alignment, _evaluate

    first = specs[0]
    same = {k: v for k, v in first.items() if k != "seed"}
    for s in specs[1:]:
        if {k: v for k, v in s.items() if k != "seed"} != same:
            raise ValueError("run_group: the specs must differ only in their seed")
    if first["rule"] not in VECTORISABLE:
        raise ValueError(f"rule {first['rule']!r} cannot run as an ensemble: vectorisable rules are "
                         f"{', '.join(VECTORISABLE)}")
    torch.set_num_threads(first.get("threads", 1))
    seeds = [s["seed"] for s in specs]
    S = len(seeds)
    task = neuro.tasks.make(first["task"], **first["task_options"])
    net = models.make(first["model"], n_in=task.n_in, n_hidden=first["hidden"], n_out=task.n_out,
                      **first["model_options"])
    ens = Ensemble(net, S, mode=mode)
    dtype = {"float32": torch.float32, "float64": torch.float64}[first["dtype"]]
    params = stack_params([net.init_params(s, dtype=dtype) for s in seeds])
    inner = neuro.rules.make(first["rule"], ens, loss=task.loss, **first["rule_options"])
    streams = _MemberStreams(task=task, seeds=tuple(seeds))
    kw = dict(optimizer=first["optimizer"], optimizer_options=first.get("optimizer_options", {}), lr=first["lr"], batch=first["batch"] * S, chunk=first["chunk"],
              update_every=first["update_every"], progress=False)

    warm = min(first["steps"], task.trial_steps if task.episodic else first["chunk"])
    try:
        neuro.train(ens, _PerMember(net=ens, loss=task.loss, inner=inner), streams, steps=warm, params=params,
                    log_every=warm, **kw)
    except TrainingDiverged:
        pass
    rule = _PerMember(net=ens, loss=task.loss, inner=inner)
    snapshots: list[Params] = []
    steps_at: list[int] = []

    def keep(step: int, p: Params) -> dict:
        snapshots.append(p)
        steps_at.append(step)
        return {}

    base = _rss.start()
    t0 = time.perf_counter()
    try:
        history = neuro.train(ens, rule, streams, steps=first["steps"], params=params, log_every=first["log_every"],
                              probe=keep if first["align_every"] else None, **kw)
    except TrainingDiverged as e:
        return [{"spec": s, "diverged": f"the ensemble of seeds {seeds} diverged: {e}", "vectorised": S,
                 "wall_s": time.perf_counter() - t0} for s in specs]
    peak = _rss.growth(base) / S
    per_step = rule.member_losses()  # [steps, S]
    members = unstack_params(history.params)
    results = []
    for m, spec in enumerate(specs):
        curve, start = [], 0
        for row in history.metrics:
            seg = per_step[start:row["step"], m]
            curve.append({"step": row["step"], "loss": float(seg.double().mean())})
            start = row["step"]
        h = History(params=members[m], metrics=curve, run_dir=None, rule=inner, steps=history.steps)
        result: dict[str, Any] = {
            "spec": spec, "diverged": None, "vectorised": S, "curve": curve,
            "final_loss": h.mean_loss(max(1, spec["steps"] // 10)),
            "time_per_step_s": history.elapsed_s / max(history.steps, 1) / S,
            "peak_mem_bytes": peak, "n_params": net.n_params(members[m]),
            "params": {k: v.tolist() for k, v in members[m].items()},
        }
        result["eval_loss"], result["eval_accuracy"] = _evaluate(net, members[m], task, spec["eval_steps"],
                                                                 derive_seed(spec["seed"], "eval"))
        result["alignment"] = []
        if spec["align_every"]:  # as run_one: on the member's parameters kept at the chosen metrics rows
            every = spec["align_every"] // spec["log_every"]
            chosen = [i for i in range(len(snapshots)) if (i + 1) % every == 0 or i == 0]
            probe = task.sample(steps=spec["align_steps"], batch=1, seed=derive_seed(spec["seed"], "probe"))
            probe = probe.to(dtype=dtype)
            cos = _alignment(net, spec["rule"], spec["rule_options"], [unstack_params(snapshots[i])[m] for i in chosen],
                             probe, task.loss, derive_seed(spec["seed"], "align") % (2**31))
            result["alignment"] = [{"step": steps_at[i], **c} for i, c in zip(chosen, cos)]
        result["wall_s"] = time.perf_counter() - t0
        results.append(result)
    return results
