"""Stage schedules for constructive and columnar-constructive networks (Javed, Shah, Sutton & White 2023,
"Scalable real-time recurrent learning using columnar-constructive networks", JMLR 24, Sec. 5-6), run by
:func:`neuro.train` as ONE run (``neuro.train(..., schedule="20:4:10000")``, ``neuro train --schedule``).

The schedule ``"total:per-stage:steps-per-stage"`` (CCN ``20:4:N``, constructive ``10:1:N``, columnar
``7:7:N``) names a network of ``total`` columns (``models.make("constructive", n_hidden=total,
per_stage=per-stage)``) learnt ``per-stage`` columns at a time, ``steps-per-stage`` steps each::

    stage j = 0 .. S-1 (S = total / per-stage) learns during steps [j N, (j + 1) N)   (N = steps-per-stage)
    the last stage goes on learning until the run's ``steps`` end

One run: the task stream and the network state (``h``, ``c``) continue across the stage boundaries and
the parameters are those learnt so far. At a boundary (a sequence end: ``N`` must be a multiple of the
sequence length, ``chunk`` or the trial), after the update that ends the sequence:

* the network becomes ``net.next_stage()`` (the same parameters; the stage just learnt is frozen) and
  the rule is rebuilt on it (``dataclasses.replace(rule, net=...)``): a fresh trace state for the new
  stage (its ``init``, seeded ``derive_seed(seed, "rule:<j>")``), the network state carried over;
* the optimizer state of the column parameters (``W_in``, ``W_ff``, ``w_rec``, ``b``: the tensors that
  hold the stages) starts afresh, so the new stage's parameters get fresh moments and step count; the
  readout's (``W_out``, ``b_out``, learnt at every stage) carries on (:func:`fresh_optimizer`). The frozen
  stages' estimates are exactly 0 from then on, so with fresh (zero) moments Adam and SGD leave them
  exactly unchanged.

The loop meets a schedule only through :class:`StageHook`, a :class:`neuro.train_loop.Hook`: at the start of a
run (or of its resume) it builds the rule of the stage the step count is in, and after each whole sequence it
switches to the next stage when one is due. With a compiled engine (:mod:`neuro.engine`: ``constructive`` and
``td-lambda`` over it have one) the loop rebuilds the engine for each new stage's rule, so every stage runs
compiled.

Only rules that learn one stage alone may run a schedule: ``constructive`` and ``td-lambda`` over it
(``rule="constructive"``); any other rule would also train the frozen stages. The checkpoint of a run
holds the state of the stage it was taken in; ``resume`` rebuilds that stage's network and rule from the
step count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from neuro.contract import AbstractNetwork, Params
from neuro.optim import READOUT  # learnt at every stage: their optimizer state carries across stage boundaries
from neuro.rules.base import AbstractRule
from neuro.rules.constructive import schedule as parse
from neuro.train_loop import Hook, Loop

__all__ = ["READOUT", "STAGED_RULES", "Schedule", "StageHook", "carry_net_state", "check", "fresh_optimizer",
           "next_stage", "rule_at_stage"]


#: rules that learn only ``net.stage`` (the others would train frozen stages too)
STAGED_RULES = ("constructive", "td-lambda over constructive")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed ``"total:per-stage:steps-per-stage"`` schedule."""

    spec: str
    total: int
    per_stage: int
    steps_per_stage: int

    @property
    def n_stages(self) -> int:
        return self.total // self.per_stage

    def stage_after(self, step: int) -> int:
        """The stage that learns once ``step`` steps are done and a sequence has just ended."""
        return min(step // self.steps_per_stage, self.n_stages - 1)


def _is_staged_rule(rule: AbstractRule) -> bool:
    return rule.name == "constructive" or (rule.name == "td-lambda" and getattr(rule, "rule", None) == "constructive")


def check(net: AbstractNetwork, rule: AbstractRule, task: Any, steps: int, chunk: int, spec: Any) -> Schedule:
    """Parse ``spec`` and check it against the run; a ``ValueError`` names what does not fit."""
    total, per_stage, n_steps = parse(spec)
    if net.name != "constructive":
        raise ValueError(f"schedule={spec!r} needs a constructive network, but model {net.name!r} has no stages: build "
                         f"models.make('constructive', n_hidden={total}, per_stage={per_stage}) (per_stage=n_hidden "
                         f"is the columnar network), or drop the schedule")
    if (net.n_hidden, net.per_stage) != (total, per_stage):
        raise ValueError(f"schedule={spec!r} asks for {total} columns in stages of {per_stage}, but the network has "
                         f"n_hidden={net.n_hidden}, per_stage={net.per_stage}: build it with n_hidden={total}, "
                         f"per_stage={per_stage}")
    if net.stage != 0:
        raise ValueError(f"schedule={spec!r} starts at stage 0, but the network is at stage={net.stage}: "
                         f"build it with stage=0")
    if not _is_staged_rule(rule):
        inner = f" over {rule.rule!r}" if rule.name == "td-lambda" else ""
        raise ValueError(f"schedule={spec!r} is invalid with rule {rule.name!r}{inner}: it would train the frozen stages "
                         f"too; use rule 'constructive' or 'td-lambda' with rule='constructive'")
    s = Schedule(spec=spec, total=total, per_stage=per_stage, steps_per_stage=n_steps)
    seq = task.trial_steps if task.episodic else chunk
    what = f"one trial of {task.name!r}" if task.episodic else "chunk"
    if n_steps % seq:
        raise ValueError(f"schedule={spec!r} is invalid: steps-per-stage={n_steps} is not a multiple of {what}={seq} "
                         f"(stages switch at sequence ends); use a multiple of {seq}")
    first_of_last = (s.n_stages - 1) * n_steps
    if steps <= first_of_last:
        raise ValueError(f"steps={steps} is invalid for schedule={spec!r}: the last of its {s.n_stages} stages starts at "
                         f"step {first_of_last}; use steps >= {s.n_stages * n_steps} (every stage {n_steps} steps)")
    return s


def rule_at_stage(rule: AbstractRule, net: AbstractNetwork, stage: int) -> AbstractRule:
    """``rule`` rebuilt on ``net`` advanced to ``stage`` (same hyper-parameters)."""
    while net.stage < stage:
        net = net.next_stage()
    return rule if rule.net == net else dataclasses.replace(rule, net=net)


def carry_net_state(fresh: NamedTuple, old: NamedTuple) -> NamedTuple:
    """``fresh`` (a rule's new state) with the network state of ``old``: the ``net`` field, and the ``net``
    fields of nested per-sample states (``inner``, as :class:`~neuro.rules.td.TDLambda` keeps them)."""
    out = fresh._replace(net=old.net)
    if "inner" in fresh._fields:
        out = out._replace(inner=tuple(carry_net_state(f, o) for f, o in zip(fresh.inner, old.inner)))
    return out


def next_stage(rule: AbstractRule, params: Params, state: NamedTuple, batch: int, seed: int) -> tuple[AbstractRule, NamedTuple]:
    """The rule of the next stage and its fresh state (traces cleared, the network state carried)."""
    new = rule_at_stage(rule, rule.net, rule.net.stage + 1)
    return new, carry_net_state(new.init(params, batch, seed), state)


def fresh_optimizer(opt: Any, new: Any, params: Params) -> Any:
    """``new`` (a fresh optimizer over ``params``, its settings those of the new stage: with ``"td-rmsprop"``'s
    ``readout_scale="fan-in"`` the readout's step follows the new stage's ``readout_fan_in``) with ``opt``'s state
    for the readout (:data:`READOUT`). The column parameters' state is made afresh at their next step, as the
    optimizer makes it (zero moments; ``"td-rmsprop"``'s ``square_avg`` = ``init``): a frozen column's
    estimate is 0, so its update is ``0 / (sqrt(v) + eps)`` = 0 and it stays exactly unchanged."""
    for k in READOUT:
        if params[k] in opt.state:
            new.state[params[k]] = opt.state[params[k]]
    return new


@dataclasses.dataclass(frozen=True)
class StageHook(Hook):
    """The training loop's side of a :class:`Schedule` (see the module docstring)."""

    schedule: Schedule

    def start(self, loop: Loop) -> None:
        """A resumed checkpoint's state belongs to the stage it was taken in: rebuild that stage's rule."""
        loop.rule = rule_at_stage(loop.rule, loop.rule.net, self.schedule.stage_after(loop.counters.step))

    def sequence_end(self, loop: Loop) -> None:
        """At a stage boundary: the next stage, fresh traces, a fresh optimizer but for the readout's state."""
        if loop.rule.net.stage < self.schedule.stage_after(loop.counters.step):
            seed = loop.config.seed_for(f"rule:{loop.rule.net.stage + 1}")
            loop.rule, loop.state = next_stage(loop.rule, loop.params, loop.state, loop.config.batch, seed)
            loop.opt = fresh_optimizer(loop.opt, loop.new_optimizer(), loop.params)
