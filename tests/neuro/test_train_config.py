"""The parts of neuro.train: TrainConfig's validation, the config and keyword forms giving the same run,
resume errors naming only the settings that differ, and the loop's hooks called at their points."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import models
from neuro.rules import TBPTT
from neuro.tasks import make as make_task
from neuro.train_config import TrainConfig
from neuro.train_loop import Hook
from neuro.training import TIMING_COLUMNS, prepare, train

KW = dict(progress=False, dtype=torch.float64)
TASK = make_task("sine")


def _rate(n_hidden: int = 5):
    return models.make("rate", n_in=TASK.n_in, n_hidden=n_hidden, n_out=TASK.n_out)


def _untimed(metrics):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in metrics]


BAD = [
    (dict(seed=-1), "seed=-1"), (dict(seed=1.5), "seed=1.5"), (dict(optimizer="foo"), "optimizer='foo'.*'adam', 'sgd', 'rmsprop'"),
    (dict(lr=0), "lr=0"), (dict(lr=float("inf")), "lr=inf"), (dict(lr="1e-3"), "lr='1e-3'"),
    (dict(update_every=0), "update_every=0"), (dict(batch=True), "batch=True"), (dict(log_every=-2), "log_every=-2"),
    (dict(checkpoint_every=0, run_dir="r"), "checkpoint_every=0"), (dict(chunk=2.0), "chunk=2.0"),
    (dict(resume=1, run_dir="r"), "resume=1"), (dict(progress=None), "progress=None"),
    (dict(dtype="float16"), "dtype='float16'.*float32.*float64"), (dict(device="tpu"), "device='tpu'"),
    (dict(schedule="4:2"), "schedule spec='4:2'.*three integers"), (dict(probe=3), "probe=3"),
    (dict(run_dir=5), "run_dir=5"), (dict(resume=True), "resume=True needs a run_dir"),
    (dict(checkpoint_every=10), "checkpoint_every=10 needs a run_dir"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=[m.split("=")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_config_refuses_an_invalid_setting_in_one_line_naming_it(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        TrainConfig(**kw)
    assert "\n" not in str(e.value)


def test_config_normalises_is_frozen_and_revalidates_a_changed_copy():
    c = TrainConfig(dtype="float64", device="cpu", run_dir="runs/x", checkpoint_every=5)
    assert c.dtype is torch.float64 and c.device == torch.device("cpu") and c.run_dir == Path("runs/x")
    assert c == TrainConfig(dtype=torch.float64, device=torch.device("cpu"), run_dir=Path("runs/x"), checkpoint_every=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    with pytest.raises(ValueError, match="lr=-1"):
        dataclasses.replace(c, lr=-1)
    assert TrainConfig.build(c, lr=0.5) == dataclasses.replace(c, lr=0.5)
    with pytest.raises(TypeError, match="unknown training setting.*learning_rate.*valid settings are seed"):
        TrainConfig.build(learning_rate=0.1)
    with pytest.raises(TypeError, match="config=.*TrainConfig"):
        TrainConfig.build({"lr": 0.1})


def test_a_config_and_keyword_settings_give_the_same_run():
    net = _rate()
    rule = TBPTT(net, k=4)
    kw = dict(seed=3, optimizer="sgd", lr=2e-2, chunk=20, log_every=30, **KW)
    by_keywords = train(net, rule, TASK, 60, **kw)
    by_config = train(net, rule, TASK, 60, TrainConfig(**kw))
    assert all(torch.equal(by_config.params[k], by_keywords.params[k]) for k in by_keywords.params)
    assert _untimed(by_config.metrics) == _untimed(by_keywords.metrics)
    other_seed = train(net, rule, TASK, 60, TrainConfig(**kw), seed=4)  # keywords replace the config's settings
    assert not torch.equal(other_seed.params["W_rec"], by_config.params["W_rec"])
    assert torch.equal(other_seed.params["W_rec"], train(net, rule, TASK, 60, **{**kw, "seed": 4}).params["W_rec"])
    with pytest.raises(TypeError, match="unknown training setting.*stepz"):
        train(net, rule, TASK, 60, stepz=3)


def test_resume_names_only_the_settings_that_differ(tmp_path):
    net = _rate()
    run = dict(run_dir=tmp_path, chunk=10, engine="torch", **KW)  # one engine whatever the network
    train(net, TBPTT(net, k=5), TASK, 20, lr=1e-2, **run)
    with pytest.raises(ValueError) as e:  # two settings differ: two entries, nothing else
        train(net, TBPTT(net, k=3), TASK, 40, lr=2e-2, resume=True, **run)
    assert str(e.value).count("(saved)") == 2
    assert "rule.k: 5 (saved) vs 3 (now)" in str(e.value) and "train.lr: 0.01 (saved) vs 0.02 (now)" in str(e.value)
    lif = models.make("lif", n_in=TASK.n_in, n_hidden=5, n_out=TASK.n_out)
    with pytest.raises(ValueError) as e:  # another kind of network: one entry, not its every field
        train(lif, TBPTT(lif, k=5), TASK, 40, lr=1e-2, resume=True, **run)
    assert str(e.value).count("(saved)") == 1 and "net: 'rate' (saved) vs 'lif' (now)" in str(e.value)
    # the settings that may change on resume are not compared
    h = train(net, TBPTT(net, k=5), TASK, 40, lr=1e-2, resume=True, **{**run, "checkpoint_every": 10, "progress": True})
    assert h.steps == 40


@dataclasses.dataclass
class Recorder(Hook):
    seen: list = dataclasses.field(default_factory=list)

    def start(self, loop) -> None:
        self.seen.append(("start", loop.counters.step))

    def sequence_end(self, loop) -> None:
        self.seen.append(("end", loop.counters.step, loop.counters.sequences))


def test_hooks_are_called_at_the_start_and_after_each_whole_sequence(tmp_path):
    net = _rate()
    rec = Recorder()
    run = prepare(net, TBPTT(net, k=4), TASK, 35, chunk=10, run_dir=tmp_path, checkpoint_every=10, **KW)
    dataclasses.replace(run, hooks=(rec,)).execute()
    # the cut last sequence (steps 31..35) is not whole: no sequence_end for it
    assert rec.seen == [("start", 0), ("end", 10, 1), ("end", 20, 2), ("end", 30, 3)]
    rec = Recorder()
    run = prepare(net, TBPTT(net, k=4), TASK, 50, chunk=10, run_dir=tmp_path, resume=True, **KW)
    dataclasses.replace(run, hooks=(rec,)).execute()
    # resumed at step 35, 5 steps into sequence 4: that sequence ends at 40
    assert rec.seen == [("start", 35), ("end", 40, 4), ("end", 50, 5)]


def test_numpy_and_torch_integers_are_integers_and_a_wrong_type_is_named(tmp_path):
    import numpy as np

    c = TrainConfig(seed=np.int64(3), batch=np.int32(2), log_every=torch.tensor(5), chunk=np.uint8(7),
                    checkpoint_every=np.int64(4), run_dir=tmp_path)
    assert (c.seed, c.batch, c.log_every, c.chunk, c.checkpoint_every) == (3, 2, 5, 7, 4)
    assert all(type(v) is int for v in (c.seed, c.batch, c.log_every, c.chunk, c.checkpoint_every))
    net = _rate()
    a = train(net, TBPTT(net), TASK, np.int64(20), chunk=np.int64(10), run_dir=tmp_path / "a", **KW)
    b = train(net, TBPTT(net), TASK, 20, chunk=10, **KW)
    assert _untimed(a.metrics) == _untimed(b.metrics) and all(torch.equal(a.params[k], b.params[k]) for k in b.params)
    assert (tmp_path / "a" / "config.json").read_text().count('"steps": 20') == 1  # stored as a JSON number
    for value, match in [(np.float64(2.0), r"steps=(np.float64\()?2.0\)? is invalid: must be an integer >= 1, not a "
                                           r"numpy.float64"), ("20", "steps='20' is invalid: .*, not a str"),
                         (np.int64(0), "steps=0 is invalid: must be an integer >= 1$"), (True, "not a bool"),
                         (torch.tensor(2.0), "not a torch.Tensor")]:
        with pytest.raises(ValueError, match=match):
            train(net, TBPTT(net), TASK, value, **KW)
