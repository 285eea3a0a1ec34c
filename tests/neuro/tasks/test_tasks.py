"""The task contract, checked on every task: shapes and dtypes, purity in the seed, continuity of streams,
episodic trials, the registry and the validation of settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuro
from neuro import tasks
from neuro.tasks import Sequence

from _helpers import make_task  # dataset tasks read tiny files in their published layouts

NAMES = tasks.available()
RANDOM = ["add", "anbn", "atari-prediction", "brackets", "copy", "cue-accumulation", "mackey-glass", "mnist1d", "nmnist", "shd",
          "trace-patterning"]  # the others are deterministic
CONTINUING = [n for n in NAMES if not make_task(n).episodic]
EPISODIC = [n for n in NAMES if make_task(n).episodic]


def _steps(task, k: int = 1) -> int:
    return k * task.trial_steps if task.episodic else 1500


def _cat(chunks: list[Sequence]) -> Sequence:
    return Sequence(*(torch.cat([getattr(c, f) for c in chunks]) for f in ("xs", "ys", "mask")))


def _equal(a: Sequence, b: Sequence) -> bool:
    return torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys) and torch.equal(a.mask, b.mask)


def test_registry_lists_every_task():
    assert NAMES == sorted(["add", "anbn", "atari-prediction", "brackets", "copy", "cue-accumulation", "influence-balancing", "mackey-glass", "mnist1d",
                            "neurobench-mg", "nmnist", "shd", "sine", "trace-patterning"])
    assert neuro.tasks.make("copy", delay=10).delay == 10


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_declared_sizes(name):
    task = make_task(name)
    assert task.name == name and task.loss in ("mse", "ce") and isinstance(task.episodic, bool)
    assert (task.trial_steps is None) == (not task.episodic)
    T = _steps(task)
    seq = task.sample(T, batch=3, seed=0)
    assert seq.xs.shape == (T, 3, task.n_in) and seq.ys.shape == (T, 3, task.n_out) and seq.mask.shape == (T, 3)
    assert seq.xs.dtype == seq.ys.dtype == torch.float32 and seq.mask.dtype == torch.bool
    assert torch.isfinite(seq.xs).all() and torch.isfinite(seq.ys).all() and seq.mask.any()
    if task.loss == "ce":  # targets are probability vectors where they count
        y = seq.ys[seq.mask]
        assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(len(y)))
        assert neuro.losses.get("ce")(torch.zeros_like(seq.ys[0]), seq.ys[0], seq.mask[0]) >= 0


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_a_pure_function_of_the_seed(name):
    task = make_task(name)
    T = _steps(task)
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    a = task.sample(T, batch=2, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)  # global RNG states untouched ...
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), np_state))
    np.random.seed(123)
    torch.manual_seed(123)
    assert _equal(a, task.sample(T, batch=2, seed=3))  # ... and ignored
    assert _equal(a, make_task(name).sample(T, batch=2, seed=3))


@pytest.mark.parametrize("name", RANDOM)
def test_seeds_and_batch_elements_differ(name):
    task = make_task(name)
    T = _steps(task)
    a, b = task.sample(T, batch=16, seed=0), task.sample(T, batch=16, seed=1)
    assert not torch.equal(a.xs, b.xs) and not torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs[:, 0], a.xs[:, 1])


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(RANDOM)))
def test_deterministic_tasks_ignore_the_seed(name):
    task = make_task(name)
    T = max(700, task.trial_steps or 0)
    a, b = task.sample(T, batch=2, seed=0), task.sample(T, batch=2, seed=5)
    assert _equal(a, b) and torch.equal(a.xs[:, 0], a.xs[:, 1])


@pytest.mark.parametrize("name", CONTINUING)
@pytest.mark.parametrize("chunk", [1, 7, 333, 1000, 2500])
def test_continuing_stream_is_one_realisation(name, chunk):
    task = make_task(name)
    k = max(3, 2600 // chunk) if chunk > 1 else 40
    stream = task.stream(seed=4, batch=2, chunk=chunk)
    chunks = [next(stream) for _ in range(k)]
    assert all(c.steps == chunk for c in chunks)
    assert _equal(_cat(chunks), task.sample(k * chunk, batch=2, seed=4))
    # a shorter sample is a prefix of a longer one
    assert _equal(task.sample(20, batch=2, seed=4), task.sample(k * chunk, batch=2, seed=4)[:20])


@pytest.mark.parametrize("name", EPISODIC)
def test_episodic_stream_yields_one_trial_per_chunk(name):
    task = make_task(name)
    T = task.trial_steps
    stream = task.stream(seed=2, batch=2, chunk=17)  # chunk is ignored: one trial per chunk
    trials = [next(stream) for _ in range(3)]
    assert all(t.steps == T for t in trials)
    assert _equal(_cat(trials), task.sample(3 * T, batch=2, seed=2))
    if name in RANDOM:  # a deterministic episodic task (neurobench-mg) repeats its one trial
        assert not torch.equal(trials[0].xs, trials[1].xs) and not torch.equal(trials[1].ys, trials[2].ys)
    else:
        assert _equal(trials[0], trials[1])
    # every trial has the same layout of steps that count, and targets only there
    assert all(torch.equal(t.mask, trials[0].mask) for t in trials)
    assert all((t.ys[~t.mask] == 0).all() for t in trials)
    # a sample longer than whole trials is cut in the next trial
    assert _equal(task.sample(T + 5, batch=2, seed=2), task.sample(2 * T, batch=2, seed=2)[: T + 5])


@pytest.mark.parametrize("name", EPISODIC)
def test_episodic_sample_shorter_than_a_trial_is_refused(name):
    task = make_task(name)
    with pytest.raises(ValueError, match=rf"steps={task.trial_steps - 1} is shorter than one trial \({task.trial_steps}"):
        task.sample(task.trial_steps - 1)


def test_unknown_task_and_option():
    with pytest.raises(ValueError, match=r"task 'nope' is unknown: valid choices are add, .*atari-prediction, .*copy, .*trace-patterning"):
        tasks.make("nope")
    with pytest.raises(ValueError, match=r"task 'copy' has no option lenght: valid options are delay, fixed, layout, length, symbols"):
        tasks.make("copy", lenght=5)


@pytest.mark.parametrize("name, settings, message", [
    ("copy", {"delay": -1}, r"delay=-1 is invalid: must be >= 0"),
    ("copy", {"length": 0}, r"length=0 is invalid: must be > 0"),
    ("copy", {"symbols": 1}, r"symbols=1 is invalid: must be >= 2"),
    ("copy", {"delay": 2.5}, r"delay=2.5 is invalid: expected an integer"),
    ("add", {"t1": 0}, r"t1=0 is invalid"),
    ("add", {"t2": 6}, r"t2=6 is invalid: must differ from t1=6"),
    ("sine", {"period": 1}, r"period=1 is invalid: must be >= 2"),
    ("sine", {"cue": "ramp"}, r"cue='ramp' is invalid: valid choices are 'pulse', 'constant'"),
    ("mackey-glass", {"tau": 17.05}, r"tau=17.05 is invalid with substeps=10"),
    ("mackey-glass", {"horizon": 1.5}, r"horizon=1.5 is invalid: expected an integer"),
    ("trace-patterning", {"isi": (36, 24)}, r"isi=\(36, 24\) is invalid: must be a pair of integers"),
    ("trace-patterning", {"iti": (80,)}, r"iti=\(80,\) is invalid"),
    ("trace-patterning", {"gamma": 1.5}, r"gamma=1.5 is invalid: must be in \(0, 1\]"),
    ("trace-patterning", {"n_valid": 21}, r"n_valid=21 is invalid: must be <= 20"),
    ("influence-balancing", {"n_positive": 30}, r"n_positive=30 is invalid: must be <= n_units=23"),
    ("cue-accumulation", {"n_cues": 6}, r"n_cues=6 is invalid: must be odd"),
    ("cue-accumulation", {"cue_ms": 100.5}, r"cue_ms=100.5 is invalid: must be a multiple of dt_ms=1.0"),
    ("cue-accumulation", {"p_group": 0.7}, r"p_group=0.7 is invalid: must be in \[0, 0.5\]"),
])
def test_invalid_settings_are_named(name, settings, message):
    with pytest.raises(ValueError, match=message):
        tasks.make(name, **settings)


@pytest.mark.parametrize("call, message", [
    (dict(steps=0), r"steps=0 is invalid: must be > 0"),
    (dict(steps=10, batch=0), r"batch=0 is invalid: must be > 0"),
    (dict(steps=10, seed=-1), r"seed=-1 is invalid: must be >= 0"),
    (dict(steps=10, seed=1.5), r"seed=1.5 is invalid: expected an integer"),
])
def test_invalid_calls_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        tasks.make("add").sample(**call)
    with pytest.raises(ValueError, match=r"chunk=0 is invalid: must be > 0"):
        tasks.make("add").stream(chunk=0)


def test_tasks_are_frozen_and_hashable():
    task = tasks.make("copy")
    with pytest.raises(AttributeError):
        task.delay = 3  # type: ignore[misc]
    assert hash(task) == hash(tasks.make("copy")) and task == tasks.make("copy", length=100)
    assert "delay=10" in repr(task)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk, steps", [(7, 30), (1000, 50), (10 ** 12, 40), (5, 5)])
def test_stream_with_steps_is_the_same_realisation_cut_there(name, chunk, steps):
    """``stream(..., steps=N)`` ends after N steps (its last chunk cut) and is the prefix of the endless stream;
    a chunk far longer than N is never built (10**12 steps would not fit in any memory)."""
    task = make_task(name)
    size = task.trial_steps if task.episodic else chunk
    steps = max(steps, size) if task.episodic else steps
    chunks = list(task.stream(seed=3, batch=2, chunk=chunk, steps=steps))
    assert sum(c.steps for c in chunks) == steps
    assert all(c.steps == size for c in chunks[:-1]) and 0 < chunks[-1].steps <= size
    assert _equal(_cat(chunks), task.sample(steps, batch=2, seed=3))


@pytest.mark.parametrize("kind", [np.int64, np.int32, torch.tensor, int])
def test_numpy_and_torch_integers_are_integers(kind):
    task = tasks.make("add")
    assert _equal(task.sample(kind(12), batch=kind(2), seed=kind(5)), task.sample(12, batch=2, seed=5))
    chunks = task.stream(seed=kind(5), batch=kind(2), chunk=kind(4), steps=kind(12))
    assert _equal(_cat(list(chunks)), task.sample(12, batch=2, seed=5))


@pytest.mark.parametrize("name", ["add", "copy"])
@pytest.mark.parametrize("call, message", [
    (dict(steps=-2), r"^steps=-2 is invalid: must be > 0$"),
    (dict(steps=10, batch=-1), r"^batch=-1 is invalid: must be > 0$"),
    (dict(steps=10.0), r"^steps=10.0 is invalid: expected an integer$"),
    (dict(steps=10, batch=2.0), r"^batch=2.0 is invalid: expected an integer$"),
    (dict(steps=10, batch=True), r"^batch=True is invalid: expected an integer$"),
    (dict(steps=np.float64(10)), r"^steps=.*10.* is invalid: expected an integer$"),
    (dict(steps=10, seed=np.int64(-2)), r"^seed=.*-2.* is invalid: must be >= 0$"),
])
def test_sample_and_stream_refuse_sizes_that_are_not_positive_integers(name, call, message):
    task = make_task(name)
    call = {**call, "steps": call["steps"] if name == "add" or not isinstance(call["steps"], int)
            or call["steps"] < 0 else 10 * task.trial_steps}
    with pytest.raises(ValueError, match=message):
        task.sample(**call)
    stream_call = {k: v for k, v in call.items() if k != "steps"}
    with pytest.raises(ValueError, match=message.replace("steps", "chunk") if name == "add" else message):
        if name == "add":
            task.stream(chunk=call["steps"], **stream_call)
        else:
            task.stream(steps=call["steps"], **stream_call)


def test_a_sample_that_cannot_fit_is_refused_with_the_figure(monkeypatch):
    from neuro import errors

    monkeypatch.setattr(errors, "_available_memory", lambda: 2 ** 30)
    task = tasks.make("add")
    need = errors.format_bytes(task.sequence_bytes(10 ** 9, 1))
    with pytest.raises(errors.SizeError, match=rf"^steps=1000000000 is invalid: it needs {need} of memory and 1.0 GiB"):
        task.sample(10 ** 9)
    with pytest.raises(errors.SizeError, match=r"^batch=100000000 is invalid: .*choose a smaller batch$"):
        task.stream(batch=10 ** 8, chunk=10)
    with pytest.raises(errors.SizeError, match=r"^chunk=1000000000 is invalid"):
        task.stream(chunk=10 ** 9)
    next(task.stream(chunk=10 ** 9, steps=100))  # only 100 steps are made
