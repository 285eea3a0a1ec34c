"""MNIST1D against MNIST-1D's own generator (``mnist1d.data.make_dataset``), called here independently.

Most tests use a small setting (500 signals: 400 train, 100 test; make_dataset takes about a second); the
paper's default (5000) is checked in one slow test. Importing ``mnist1d`` (matplotlib, requests) takes seconds.
"""

from __future__ import annotations

import random
import socket
import urllib.request

import numpy as np
import pytest
import torch

from neuro.tasks import mnist1d as m1d
from neuro.tasks.mnist1d import MNIST1D

SMALL = {"num_samples": 500, "data_seed": 7}


def reference(num_samples: int, seed: int, shuffle_seq: bool = False) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = num_samples, seed, shuffle_seq
    return make_dataset(args)


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference(SMALL["num_samples"], SMALL["data_seed"])


def test_inputs_and_labels_are_mnist1d_arrays(ref):
    task = MNIST1D(**SMALL)
    idx = np.array([0, 5, 399, 5, 123])
    xs, ys, mask = task.trial_of(idx)
    assert xs.shape == (40, 5, 1) and ys.shape == (40, 5, 10) and mask.shape == (40, 5)
    for j, i in enumerate(idx):  # one sample per step, in order
        np.testing.assert_array_equal(xs[:, j, 0], ref["x"][i].astype(np.float32))
        assert ys[-1, j].argmax() == ref["y"][i] and ys[-1, j].sum() == 1
    assert not ys[:-1].any()
    assert mask[-1].all() and not mask[:-1].any()  # the label counts at the last step only


def test_test_split_is_mnist1d_test_split_in_order_and_disjoint(ref):
    task = MNIST1D(split="test", **SMALL)
    seq = task.whole()
    assert seq.xs.shape == (40, 100, 1)
    np.testing.assert_array_equal(seq.xs[:, :, 0].T.numpy(), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(seq.ys[-1].argmax(-1).numpy(), ref["y_test"])
    train = MNIST1D(**SMALL).whole()
    assert train.xs.shape[1] == 400
    seen = {row.tobytes() for row in train.xs[:, :, 0].T.numpy()}
    assert not any(row.tobytes() in seen for row in seq.xs[:, :, 0].T.numpy())
    np.testing.assert_array_equal(MNIST1D(**SMALL).whole("test").xs, seq.xs)


def test_trials_draw_from_the_split_with_the_stream_rng(ref):
    task = MNIST1D(**SMALL)
    seq = task.sample(80, batch=6, seed=3)  # two trials back to back
    rng = np.random.default_rng(3)
    for t in range(2):
        idx = rng.integers(0, 400, size=6)
        np.testing.assert_array_equal(seq.xs[40 * t:40 * (t + 1), :, 0].T.numpy(), ref["x"][idx].astype(np.float32))
    test = MNIST1D(split="test", **SMALL).sample(40, batch=6, seed=3)
    idx = np.random.default_rng(3).integers(0, 100, size=6)
    np.testing.assert_array_equal(test.xs[:, :, 0].T.numpy(), ref["x_test"][idx].astype(np.float32))


def test_shuffled_positions_are_mnist1d_shuffled():
    ref = reference(300, 1, shuffle_seq=True)
    task = MNIST1D(num_samples=300, data_seed=1, shuffle_seq=True)
    np.testing.assert_array_equal(task.whole().xs[:, :, 0].T.numpy(), ref["x"].astype(np.float32))
    assert not np.array_equal(ref["x"], reference(300, 1)["x"])


def test_no_network_access_and_global_random_state_kept(monkeypatch):
    import requests

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    m1d.dataset.cache_clear()
    task = MNIST1D(num_samples=200, data_seed=11)  # a setting made nowhere else: generated here
    assert task.whole().xs.shape == (40, 160, 1)
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)  # make_dataset's set_seed undone
    assert random.getstate() == py_before


def test_label_steps_and_predictions():
    task = MNIST1D(label_steps=3, **SMALL)
    xs, ys, mask = task.trial_of([1, 2])
    assert mask[-3:].all() and not mask[:-3].any()
    assert (ys[-3:] == ys[-1]).all() and not ys[:-3].any()
    y_hat = torch.zeros(40, 2, 10)
    y_hat[-1, 0, 4] = 5.0   # trial 0: class 4 at the last step (mean over the last three 5/3) ...
    y_hat[-3, 0, 7] = 3.0   # ... class 7 on the two before (mean 2): 7 wins over three steps, 4 at the last
    y_hat[-2, 0, 7] = 3.0
    y_hat[-4, 1, 2] = 99.0  # trial 1: before the counted steps, ignored
    y_hat[-1, 1, 9] = 1.0
    assert task.predictions(y_hat).tolist() == [7, 9]
    assert MNIST1D(**SMALL).predictions(y_hat).tolist() == [4, 9]  # last step only


def test_accuracy_counts_matching_labels():
    task = MNIST1D(split="test", **SMALL)
    seq = task.whole()
    y_hat = seq.ys.clone()  # the one-hot labels themselves: every prediction right
    assert task.accuracy(y_hat, seq) == 1.0
    y_hat[-1, :25] = torch.roll(y_hat[-1, :25], 1, dims=-1)  # a quarter wrong
    assert task.accuracy(y_hat, seq) == 0.75


@pytest.mark.parametrize("kw, match", [({"split": "val"}, "split='val'"), ({"label_steps": 41}, "label_steps=41"),
                                       ({"label_steps": 0}, "label_steps=0"), ({"num_samples": 20}, "num_samples=20"),
                                       ({"data_seed": -1}, "data_seed=-1"), ({"shuffle_seq": 1}, "shuffle_seq=1")])
def test_bad_settings_named(kw, match):
    with pytest.raises(ValueError, match=match):
        MNIST1D(**kw)


def test_bad_indices_named():
    with pytest.raises(ValueError, match="indices"):
        MNIST1D(**SMALL).trial_of([400])
    with pytest.raises(ValueError, match="split='val'"):
        MNIST1D(**SMALL).whole("val")


def test_trains_with_neuro_train():
    import models
    import neuro

    task = MNIST1D(**SMALL)
    net = models.make("rate", n_in=task.n_in, n_hidden=8, n_out=task.n_out)
    h = neuro.train(net, neuro.rules.make("bptt", net), task, steps=80, seed=0, batch=4, progress=False)
    assert h.steps == 80 and np.isfinite(h.mean_loss(40))


@pytest.mark.slow
def test_paper_default_split_sizes_and_arrays():
    ref = reference(5000, 42)
    task = MNIST1D()
    x, y = task.arrays("test")
    assert x.shape == (1000, 40) and task.arrays("train")[0].shape == (4000, 40)
    np.testing.assert_array_equal(x, ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y, ref["y_test"])
    np.testing.assert_array_equal(task.arrays()[0], ref["x"].astype(np.float32))
