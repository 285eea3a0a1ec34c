"""neuro.train (the online loop) and neuro.io (atomic run-directory files).

Oracles: the update schedule is replayed from a log of what the rule saw and returned (SGD: the
parameters at every step must equal p0 - lr * the estimates applied so far); a resumed run must equal
an uninterrupted one bit for bit in float64, with a negative control showing the restored rule state
matters; divergence must leave the last good checkpoint byte-identical.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple

import pytest
import torch

import models
import neuro
from neuro import io
from neuro.errors import RunFailed
from neuro.rules import TBPTT, AbstractRule, Needs, StepOutput
from neuro.rules.bptt import BPTTState
from neuro.tasks.base import AbstractTask, Sequence
from neuro.training import TIMING_COLUMNS, History, TrainingDiverged, derive_seed, train

# -- tiny tasks written here (independent of neuro.tasks) ---------------------------------------------

def _chunks(seed: int, batch: int, chunk: int, n_in: int) -> Iterator[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    t0 = 0
    while True:
        yield torch.randn(chunk, batch, n_in, generator=g), t0
        t0 += chunk


@dataclasses.dataclass(frozen=True)
class EchoTask(AbstractTask):
    """Continuing: x_t ~ N(0, 1)^2, target y_t = x_{t-lag}[0] (mse); ``nan_at``: the target of that
    (1-based) step is NaN."""

    lag: int = 2
    nan_at: int | None = None

    name: ClassVar[str] = "echo"
    loss: ClassVar[str] = "mse"
    episodic: ClassVar[bool] = False

    @property
    def n_in(self) -> int:
        return 2

    @property
    def n_out(self) -> int:
        return 1

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000) -> Iterator[Sequence]:
        past = torch.zeros(self.lag, batch)
        for xs, t0 in _chunks(seed, batch, chunk, 2):
            full = torch.cat([past, xs[:, :, 0]])
            ys = full[:chunk, :, None].clone()
            past = full[-self.lag:]
            if self.nan_at is not None and t0 < self.nan_at <= t0 + chunk:
                ys[self.nan_at - t0 - 1] = float("nan")
            yield Sequence(xs, ys, torch.ones(chunk, batch, dtype=torch.bool))

    def sample(self, steps: int, batch: int = 1, seed: int = 0) -> Sequence:
        return next(self.stream(seed, batch, steps))


@dataclasses.dataclass(frozen=True)
class SumTask(AbstractTask):
    """Episodic: trials of ``length`` steps; the target, on the last two steps only, is the sum of
    the trial's first inputs (mse)."""

    length: int = 5

    name: ClassVar[str] = "sum"
    loss: ClassVar[str] = "mse"
    episodic: ClassVar[bool] = True

    @property
    def n_in(self) -> int:
        return 1

    @property
    def n_out(self) -> int:
        return 1

    @property
    def trial_steps(self) -> int:
        return self.length

    def stream(self, seed: int = 0, batch: int = 1, chunk: int = 1000) -> Iterator[Sequence]:
        for xs, _ in _chunks(seed, batch, self.length, 1):
            ys = xs.cumsum(0)
            mask = torch.zeros(self.length, batch, dtype=torch.bool)
            mask[-2:] = True
            yield Sequence(xs, ys * mask[..., None], mask)

    def sample(self, steps: int, batch: int = 1, seed: int = 0) -> Sequence:
        return next(self.stream(seed, batch))


# -- rules written here -------------------------------------------------------------------------------

def _clone(p: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if p is None else {k: v.detach().clone() for k, v in p.items()}


@dataclasses.dataclass(frozen=True)
class RecordingTBPTT(TBPTT):
    """TBPTT that logs what it sees and returns: ("state", network state in) / ("step", params) /
    ("grad", g) / ("finish", g) / ("reset", state)."""

    log: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def step(self, params, state, x, y, mask):
        self.log.append(("state", state.net))
        self.log.append(("step", _clone(params)))
        out = super().step(params, state, x, y, mask)
        if out.grad is not None:
            self.log.append(("grad", _clone(out.grad)))
        return out

    def finish(self, params, state):
        state, g = super().finish(params, state)
        self.log.append(("finish", _clone(g)))
        return state, g

    def reset(self, params, state):
        state = super().reset(params, state)
        self.log.append(("reset", state))
        return state


class NoisyState(NamedTuple):
    net: Any  # the TBPTT state (whose .net is the network state)
    gen: torch.Generator


@dataclasses.dataclass(frozen=True)
class NoisyTBPTT(AbstractRule):
    """TBPTT(k) plus Gaussian noise sigma * N(0, 1) on every estimate, drawn from a generator in the
    rule state: a stochastic rule whose state (network state, window, generator) all matter."""

    k: int = 7
    sigma: float = 0.05

    name: ClassVar[str] = "noisy-tbptt"
    needs: ClassVar[Needs] = Needs.GRAPH
    stochastic: ClassVar[bool] = True

    def _inner(self) -> TBPTT:
        return TBPTT(net=self.net, loss=self.loss, k=self.k)

    def _noisy(self, g, gen):
        if g is None:
            return None
        return {k: v + self.sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in g.items()}

    def init(self, params, batch=1, seed=0):
        return NoisyState(self._inner().init(params, batch), torch.Generator().manual_seed(seed))

    def step(self, params, state, x, y, mask):
        out = self._inner().step(params, state.net, x, y, mask)
        return StepOutput(NoisyState(out.state, state.gen), out.y, out.loss, self._noisy(out.grad, state.gen))

    def finish(self, params, state):
        inner, g = self._inner().finish(params, state.net)
        return NoisyState(inner, state.gen), self._noisy(g, state.gen)

    def reset(self, params, state):
        return NoisyState(self._inner().init(params, state.net.net[0].shape[0]), state.gen)


def _rate(n_in=2, n_out=1, n_hidden=6):
    return models.make("rate", n_in=n_in, n_hidden=n_hidden, n_out=n_out)


def _lif(n_in=2, n_out=1, n_hidden=8):
    return models.make("lif", n_in=n_in, n_hidden=n_hidden, n_out=n_out, input_scale=6.0, rec_scale=2.0,
                       surrogate_scale=1.0)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in metrics]


KW = dict(progress=False, dtype=torch.float64)


# -- determinism, arguments, the caller's parameters ------------------------------------------------

def test_two_runs_are_identical_and_the_seed_matters():
    net, task = _rate(), EchoTask()
    rule = TBPTT(net, k=5)
    a = train(net, rule, task, steps=120, seed=3, lr=1e-2, log_every=40, **KW)
    b = train(net, rule, task, steps=120, seed=3, lr=1e-2, log_every=40, **KW)
    c = train(net, rule, task, steps=120, seed=4, lr=1e-2, log_every=40, **KW)
    assert _same(a.params, b.params) and _untimed(a.metrics) == _untimed(b.metrics)
    assert not _same(a.params, c.params)
    assert [r["step"] for r in a.metrics] == [40, 80, 120]
    assert a.rule.loss == "mse"
    assert all(r["loss"] > 0 and r["steps_per_s"] > 0 for r in a.metrics)


def test_updates_count_windows_and_sequence_ends():
    net = _rate()
    # tbptt k=5 in chunks of 100: 20 windows per chunk; 120 steps = one chunk + a cut chunk of 20 (4 windows)
    h = train(net, TBPTT(net, k=5), EchoTask(), steps=120, lr=1e-2, **KW)
    assert h.updates == 24
    # k=7 in chunks of 10: windows of 7, then the finish of 3 at each chunk end: 2 updates per chunk
    h = train(net, TBPTT(net, k=7), EchoTask(), steps=30, lr=1e-2, chunk=10, **KW)
    assert h.updates == 6


def test_params_default_to_init_params_of_seed_and_callers_params_are_not_changed():
    net, task = _rate(), EchoTask()
    p0 = net.init_params(seed=5, dtype=torch.float64)
    keep = _clone(p0)
    given = train(net, TBPTT(net, k=5), task, steps=50, seed=5, params=p0, lr=1e-2, **KW)
    default = train(net, TBPTT(net, k=5), task, steps=50, seed=5, lr=1e-2, **KW)
    assert _same(p0, keep)
    assert _same(given.params, default.params)
    assert not _same(given.params, p0)


def test_rule_loss_is_taken_from_the_task_or_must_match():
    net = models.make("rate", n_in=2, n_hidden=4, n_out=1)
    assert train(net, TBPTT(net), EchoTask(), steps=5, **KW).rule.loss == "mse"
    with pytest.raises(ValueError, match="loss='ce'.*'mse'"):
        train(net, TBPTT(net, loss="ce"), EchoTask(), steps=5, **KW)


BAD = [
    (dict(steps=0), "steps=0"), (dict(steps=2.5), "steps=2.5"), (dict(steps=True), "steps=True"),
    (dict(lr=0.0), "lr=0.0"), (dict(lr=-1e-3), "lr=-0.001"), (dict(lr=float("nan")), "lr=nan"),
    (dict(optimizer="foo"), "optimizer='foo'.*'adam', 'sgd', 'rmsprop'"),
    (dict(update_every=0), "update_every=0"), (dict(batch=0), "batch=0"), (dict(seed=-1), "seed=-1"),
    (dict(log_every=0), "log_every=0"), (dict(checkpoint_every=0), "checkpoint_every=0"),
    (dict(chunk=0), "chunk=0"), (dict(dtype=torch.int64), "dtype=torch.int64"),
    (dict(device="tpu"), "device='tpu'"), (dict(progress="yes"), "progress='yes'"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=[b[1].split(".")[0] for b in BAD])
def test_invalid_arguments_raise_before_anything_is_written(tmp_path, kw, match):
    net = _rate()
    args = dict(steps=10, run_dir=tmp_path / "run", progress=False) | kw
    with pytest.raises(ValueError, match=match):
        train(net, TBPTT(net), EchoTask(), **args)
    assert not (tmp_path / "run").exists()


def test_mismatched_network_task_and_rule_are_refused(tmp_path):
    net = _rate()
    with pytest.raises(ValueError, match="n_in=1, n_out=1.*n_in=2, n_out=1"):
        train(net, TBPTT(net), SumTask(), steps=5, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="different network"):
        train(net, TBPTT(_rate(n_hidden=7)), EchoTask(), steps=5, progress=False)
    with pytest.raises(TypeError, match="task="):
        train(net, TBPTT(net), "echo", steps=5, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every=10 needs a run_dir"):
        train(net, TBPTT(net), EchoTask(), steps=5, checkpoint_every=10, progress=False)
    assert not (tmp_path / "r").exists()


def _takes_a_simulator(cls) -> bool:
    return "forward" in {f.name for f in dataclasses.fields(cls)}


def test_only_rules_that_need_the_loss_alone_take_another_simulator():
    """Training runs the network in torch, which gives every rule what it needs; a rule meets another
    simulator (Brian2, Lava) only through its own ``forward`` option, which only LOSS rules may have."""
    from neuro import rules

    takes = [name for name in rules.available() if _takes_a_simulator(rules.get(name))]
    assert {"wp", "np", "anp", "anp-time"} <= set(takes)
    assert all(rules.get(name).needs == Needs.LOSS for name in takes), takes

    @dataclasses.dataclass(frozen=True)
    class GraphWithForward(TBPTT):  # what the invariant forbids: the check above would refuse it
        forward: Any = None

    assert _takes_a_simulator(GraphWithForward) and GraphWithForward.needs != Needs.LOSS


def test_seeds_derive_deterministically_and_differ_by_purpose():
    assert derive_seed(0, "task") == derive_seed(0, "task")
    assert len({derive_seed(0, "task"), derive_seed(0, "rule"), derive_seed(1, "task")}) == 3
    assert 0 <= derive_seed(12345, "rule") < 2**63


def test_global_rng_of_the_caller_is_left_alone():
    net = _rate()
    torch.manual_seed(77)
    expect = torch.rand(3)
    torch.manual_seed(77)
    train(net, TBPTT(net), EchoTask(), steps=20, **KW)
    assert torch.equal(torch.rand(3), expect)


# -- the update schedule -------------------------------------------------------------------------------

def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=0, atol=1e-14) for k in a)


def test_sgd_with_update_every_applies_the_sum_of_k_estimates():
    net = _rate()
    rule = RecordingTBPTT(net, loss="mse", k=1)  # an estimate every step
    lr, k = 0.05, 4
    h = train(net, rule, EchoTask(), steps=20, optimizer="sgd", lr=lr, update_every=k, chunk=10, **KW)
    steps = [v for kind, v in rule.log if kind == "step"]
    grads = [v for kind, v in rule.log if kind == "grad"]
    assert len(steps) == len(grads) == 20
    # updates after steps 4, 8, 10 (chunk end), 14, 18, 20: the parameters change at steps 5, 9, 11, 15, 19
    p = _clone(steps[0])
    applied_after = [4, 8, 10, 14, 18, 20]
    last = 0
    for t in range(1, 21):  # the parameters the rule saw at step t: p0 - lr * the sums applied before t
        assert _close(steps[t - 1], p), t
        if t in applied_after:
            total = {key: sum(g[key] for g in grads[last:t]) for key in p}
            p = {key: p[key] - lr * total[key] for key in p}
            last = t
    assert h.updates == len(applied_after)
    assert _close(h.params, p)
    assert max((h.params[key] - steps[0][key]).abs().max() for key in p) > 1e-3  # it moved
    changed = [t for t in range(2, 21) if not _same(steps[t - 1], steps[t - 2])]
    assert changed == [5, 9, 11, 15, 19]


def test_sequence_end_flushes_the_pending_window():
    net = _rate()
    rule = RecordingTBPTT(net, loss="mse", k=7)
    lr = 0.05
    train(net, rule, EchoTask(), steps=20, optimizer="sgd", lr=lr, chunk=10, **KW)
    log = rule.log
    steps = [v for kind, v in log if kind == "step"]
    finishes = [v for kind, v in log if kind == "finish"]
    assert len(finishes) == 2 and all(f is not None for f in finishes)  # 3 pending steps at each chunk end
    # the finish estimate of chunk 1 is applied before step 11, and nothing else is
    assert _close(steps[10], {key: steps[9][key] - lr * finishes[0][key] for key in steps[9]})
    assert finishes[0]["W_rec"].abs().max() > 0


def test_adam_skips_empty_accumulators():
    net = _rate()
    rule = RecordingTBPTT(net, loss="mse", k=50)  # no estimate for 49 steps out of 50
    h = train(net, rule, EchoTask(), steps=100, lr=1e-2, chunk=100, **KW)
    steps = [v for kind, v in rule.log if kind == "step"]
    changed = [t for t in range(2, 101) if not _same(steps[t - 1], steps[t - 2])]
    assert changed == [51] and h.updates == 2  # Adam moves only when an estimate was accumulated


def test_episodic_tasks_reset_the_rule_between_trials_and_finish_each():
    net = models.make("rate", n_in=1, n_hidden=5, n_out=1)
    rule = RecordingTBPTT(net, loss="mse", k=100)  # only finish gives estimates: one per trial
    h = train(net, rule, SumTask(length=5), steps=23, optimizer="sgd", lr=1e-2, update_every=2, **KW)
    kinds = [kind for kind, _ in rule.log if kind not in ("grad", "state")]
    assert kinds.count("step") == 23 and kinds.count("reset") == 4 and kinds.count("finish") == 5
    # the pattern: 5 steps, finish, reset, ... and the cut last trial of 3 steps is finished too
    assert kinds == (["step"] * 5 + ["finish", "reset"]) * 4 + ["step"] * 3 + ["finish"]
    rest = net.init_state(h.params, 1)
    for kind, state in rule.log:
        if kind == "reset":
            assert torch.equal(state.net.h, rest.h) and state.window is None and state.t == 0
    assert h.metrics[-1]["sequences"] == 4  # the cut trial does not count as finished
    # every trial starts from rest; trials are t = 1, 6, 11, 16, 21 (1-based)
    states = [v for kind, v in rule.log if kind == "state"]
    for t in (1, 6, 11, 16, 21):
        assert torch.equal(states[t - 1].h, torch.zeros_like(states[t - 1].h))
    assert states[1].h.abs().sum() > 0 and states[6].h.abs().sum() > 0
    # only the last 2 of every 5 steps count (the cut trial of 3 has none): loss_counted = loss * 23 / 8
    row = h.metrics[-1]
    assert row["loss_counted"] == pytest.approx(row["loss"] * 23 / 8, rel=1e-12)


def test_loss_counted_divides_by_the_steps_that_count():
    net = models.make("rate", n_in=1, n_hidden=5, n_out=1)
    h = train(net, TBPTT(net), SumTask(length=5), steps=20, log_every=20, **KW)
    row = h.metrics[0]
    assert row["loss_counted"] == pytest.approx(row["loss"] * 20 / 8, rel=1e-12)  # 2 of every 5 steps count


def test_continuing_tasks_carry_the_state_across_chunks():
    net = _rate()
    rule = RecordingTBPTT(net, loss="mse", k=5)
    train(net, rule, EchoTask(), steps=30, chunk=10, **KW)
    assert not any(kind == "reset" for kind, _ in rule.log)
    states = [v for kind, v in rule.log if kind == "state"]
    assert torch.equal(states[0].h, torch.zeros_like(states[0].h))
    for t in (11, 21):  # the first step of a chunk starts from where the last one ended, not from rest
        assert states[t - 1].h.abs().sum() > 0


# -- run directory, resume, divergence ------------------------------------------------------------------

def test_run_dir_holds_config_metrics_and_checkpoint(tmp_path):
    import neuro.rules

    net = _lif()
    rule = TBPTT(net, k=4)
    h = train(net, rule, EchoTask(lag=3), steps=60, lr=1e-2, run_dir=tmp_path, log_every=25,
              checkpoint_every=20, chunk=20, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
    cfg = io.read_json(tmp_path / "config.json")
    # the config rebuilds the network and the rule
    assert models.make(cfg["net"]["name"], **cfg["net"]["fields"]) == net
    assert neuro.rules.make(cfg["rule"]["name"], net, **cfg["rule"]["fields"]) == h.rule
    assert cfg["task"]["fields"] == {"lag": 3, "nan_at": None}
    assert cfg["train"]["steps"] == 60 and cfg["train"]["dtype"] == "float64" and cfg["train"]["lr"] == 1e-2
    assert cfg["train"]["task_seed"] == derive_seed(0, "task")
    # metrics.csv holds history.metrics exactly
    assert io.read_csv(tmp_path / "metrics.csv") == h.metrics
    assert [r["step"] for r in h.metrics] == [25, 50, 60]
    ck = io.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 60 and ck["position"] == [3, 0] and _same(ck["params"], h.params)
    assert isinstance(ck["rule_state"], BPTTState) and ck["rule_state"].window is None


def test_an_existing_run_is_not_overwritten(tmp_path):
    net = _rate()
    train(net, TBPTT(net), EchoTask(), steps=10, run_dir=tmp_path, **KW)
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(net, TBPTT(net), EchoTask(), steps=10, run_dir=tmp_path, **KW)
    assert (tmp_path / "config.json").read_bytes() == before


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    net = _rate()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(net, TBPTT(net), EchoTask(), steps=10, run_dir=tmp_path / "none", resume=True, **KW)
    assert not (tmp_path / "none").exists()
    train(net, TBPTT(net), EchoTask(), steps=10, run_dir=tmp_path / "r", **KW)
    with pytest.raises(ValueError, match=r"train.lr: 0.001 \(saved\) vs 0.01 \(now\)"):
        train(net, TBPTT(net), EchoTask(), steps=20, run_dir=tmp_path / "r", resume=True, lr=1e-2, **KW)
    with pytest.raises(ValueError, match=r"rule.k: 10 \(saved\) vs 3 \(now\)"):
        train(net, TBPTT(net, k=3), EchoTask(), steps=20, run_dir=tmp_path / "r", resume=True, **KW)
    with pytest.raises(ValueError, match="already at step 10"):
        train(net, TBPTT(net), EchoTask(), steps=5, run_dir=tmp_path / "r", resume=True, **KW)


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, cls, calls: int) -> None:
    """Make ``cls.step`` raise on its ``calls + 1``-th call (a process dying mid-run)."""
    original, count = cls.step, [0]

    def step(self, *args):
        count[0] += 1
        if count[0] > calls:
            raise _Crash
        return original(self, *args)

    monkeypatch.setattr(cls, "step", step)


RESUME = dict(steps=100, seed=2, lr=5e-3, update_every=3, chunk=20, log_every=25, checkpoint_every=30, **KW)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, optimizer):
    net = _lif()
    rule = NoisyTBPTT(net, k=7)  # windows of 7 in chunks of 20: the state crosses checkpoints at 40 and 60
    task = EchoTask(lag=3)
    full = train(net, rule, task, run_dir=tmp_path / "full", optimizer=optimizer, **RESUME)

    with monkeypatch.context() as m:
        _crash_after(m, NoisyTBPTT, 73)
        with pytest.raises(RunFailed, match=r"at step 73: .*_Crash.*checkpoint.pt \(step 60\)") as e:
            train(net, rule, task, run_dir=tmp_path / "cut", optimizer=optimizer, **RESUME)
        assert isinstance(e.value.__cause__, _Crash) and e.value.last_good == tmp_path / "cut" / "checkpoint.pt"
    ck = io.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ck["step"] == 60 and ck["position"] == [3, 0]
    assert ck["interval"]["steps"] == 10  # the checkpoint falls inside a metrics interval (50, 75]
    assert isinstance(ck["rule_state"].gen, torch.Generator)
    assert ck["rule_state"].net.net.v.abs().sum() > 0  # the network state carried across the checkpoint

    resumed = train(net, rule, task, run_dir=tmp_path / "cut", resume=True, optimizer=optimizer, **RESUME)
    assert _same(resumed.params, full.params)
    assert _untimed(resumed.metrics) == _untimed(full.metrics)
    assert [r["step"] for r in resumed.metrics] == [25, 50, 75, 100]
    assert resumed.updates == full.updates
    assert _untimed(io.read_csv(tmp_path / "cut" / "metrics.csv")) == _untimed(full.metrics)
    assert not _same(full.params, net.init_params(2, dtype=torch.float64))
    xs = task.sample(100, 1, seed=0).xs.double()
    assert neuro.simulate(net, full.params, xs).spikes.sum() > 0  # the spiking network spiked

    # negative control: the restored rule state matters (a fresh one gives other numbers)
    ck["rule_state"] = rule.init(ck["params"], 1, seed=derive_seed(2, "rule"))
    io.save_checkpoint(tmp_path / "cut" / "checkpoint.pt", ck)
    other = train(net, rule, task, run_dir=tmp_path / "cut", resume=True, optimizer=optimizer, **RESUME)
    assert not _same(other.params, full.params)


def test_resume_of_an_episodic_run_and_extension_of_a_finished_run(tmp_path, monkeypatch):
    net = models.make("rate", n_in=1, n_hidden=5, n_out=1)
    rule = NoisyTBPTT(net, k=3)
    task = SumTask(length=6)
    kw = dict(seed=1, lr=1e-2, log_every=12, checkpoint_every=10, **KW)
    full = train(net, rule, task, steps=48, run_dir=tmp_path / "full", **kw)
    with monkeypatch.context() as m:
        _crash_after(m, NoisyTBPTT, 40)
        with pytest.raises(RunFailed):
            train(net, rule, task, steps=48, run_dir=tmp_path / "cut", **kw)
    resumed = train(net, rule, task, steps=48, run_dir=tmp_path / "cut", resume=True, **kw)
    assert _same(resumed.params, full.params) and _untimed(resumed.metrics) == _untimed(full.metrics)
    # a finished run of 24 steps (a trial and a log boundary) extended to 48 equals the 48-step run
    train(net, rule, task, steps=24, run_dir=tmp_path / "ext", **kw)
    extended = train(net, rule, task, steps=48, run_dir=tmp_path / "ext", resume=True, **kw)
    assert _same(extended.params, full.params) and _untimed(extended.metrics) == _untimed(full.metrics)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    net = _rate()
    task = EchoTask(nan_at=57)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 57; last good checkpoint: .*checkpoint.pt "
                                               r"\(step 40\)") as e:
        train(net, TBPTT(net, k=5), task, steps=100, chunk=20, checkpoint_every=20, log_every=20, run_dir=tmp_path,
              **KW)
    assert e.value.step == 57 and e.value.checkpoint_step == 40
    assert e.value.checkpoint == tmp_path / "checkpoint.pt"
    before = (tmp_path / "checkpoint.pt").read_bytes()
    ck = io.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 40 and all(torch.isfinite(p).all() for p in ck["params"].values())
    assert [r["step"] for r in io.read_csv(tmp_path / "metrics.csv")] == [20, 40]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the good checkpoint resumes, and hits the same wall at the same step
    with pytest.raises(TrainingDiverged, match="nan at step 57"):
        train(net, TBPTT(net, k=5), task, steps=100, chunk=20, checkpoint_every=20, log_every=20, run_dir=tmp_path,
              resume=True, **KW)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # without a run directory the message says there is no checkpoint
    with pytest.raises(TrainingDiverged, match="nan at step 57; no checkpoint"):
        train(net, TBPTT(net, k=5), task, steps=100, chunk=20, **KW)


@dataclasses.dataclass(frozen=True)
class InfAtFinish(TBPTT):
    """TBPTT whose estimate at the end of chunk ``bad`` (1-based) is infinite: the loss stays finite."""

    bad: int = 2
    count: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def finish(self, params, state):
        state, g = super().finish(params, state)
        self.count.append(1)
        if len(self.count) == self.bad:
            g = {k: torch.full_like(v, float("inf")) for k, v in params.items()}
        return state, g


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_non_finite_parameters_are_never_checkpointed(tmp_path, optimizer):
    net = _rate()
    rule = InfAtFinish(net, loss="mse", k=5, bad=2)
    with pytest.raises(TrainingDiverged, match=r"parameter 'W_in' became nan or inf after the update at step 40; "
                                               r"last good checkpoint: .* \(step 20\)") as e:
        train(net, rule, EchoTask(), steps=100, chunk=20, checkpoint_every=20, run_dir=tmp_path,
              optimizer=optimizer, **KW)
    assert e.value.checkpoint_step == 20
    ck = io.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 20 and all(torch.isfinite(p).all() for p in ck["params"].values())


def test_metrics_mean_loss_weights_rows_by_their_steps():
    h = History(params={}, metrics=[{"step": 100, "loss": 1.0}, {"step": 200, "loss": 2.0},
                                    {"step": 250, "loss": 4.0}], run_dir=None, rule=None)
    assert h.mean_loss(50) == 4.0
    assert h.mean_loss(100) == pytest.approx((2.0 * 100 + 4.0 * 50) / 150)
    assert h.mean_loss(10_000) == pytest.approx((100 + 200 + 200) / 250)


def test_progress_bar_stays_off_when_stderr_is_not_a_terminal(capsys):
    net = _rate()
    train(net, TBPTT(net), EchoTask(), steps=30, progress=True, dtype=torch.float64)
    assert capsys.readouterr().err == ""


# -- neuro.io ---------------------------------------------------------------------------------------------

def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_failing_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    io.write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with io.atomic_open(target) as f:
            f.write("new and partial")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []
    absent = tmp_path / "never.json"
    with pytest.raises(ValueError):
        io.write_json(absent, {"x": float("nan")})  # not JSON
    assert not absent.exists() and _leftovers(tmp_path) == []


def test_checkpoint_write_failing_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="no space"):
        io.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert io.load_checkpoint(path)["step"] == 1

    def replace_fails(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="rename failed"):
        io.save_checkpoint(path, {"step": 3})
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_checkpoint_round_trips_generators_namedtuples_and_refuses_graphs(tmp_path):
    g = torch.Generator().manual_seed(5)
    torch.rand(4, generator=g)
    net = _rate()
    state = NoisyState(net=BPTTState(net=net.init_state(net.init_params()), window=None, total=None, t=3), gen=g)
    io.save_checkpoint(tmp_path / "c.pt", {"state": state, "pair": (1, 2.5), "rows": [{"a": None}]})
    back = io.load_checkpoint(tmp_path / "c.pt")
    assert isinstance(back["state"], NoisyState) and isinstance(back["state"].net, BPTTState)
    assert back["state"].net.t == 3 and back["pair"] == (1, 2.5) and back["rows"] == [{"a": None}]
    assert torch.equal(torch.rand(5, generator=back["state"].gen), torch.rand(5, generator=g))
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="autograd graph"):
        io.save_checkpoint(tmp_path / "g.pt", {"x": w * 2})
    assert not (tmp_path / "g.pt").exists()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        io.load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.pt")


def test_csv_round_trips_floats_exactly(tmp_path):
    rows = [{"step": 1, "loss": 0.1 + 0.2, "x": None}, {"step": 2, "loss": 1e-300, "x": "a"}]
    io.write_csv(tmp_path / "m.csv", rows)
    assert io.read_csv(tmp_path / "m.csv") == rows
