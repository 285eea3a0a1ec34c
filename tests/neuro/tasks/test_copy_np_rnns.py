"""The copy task in the perturbation paper's own layout (jesusgf96/NP_RNNs ``generate_copy_data``), fixed
trials, and the authors' error-bit count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuro import tasks
from neuro.tasks.copy import error_bits


def test_np_rnns_layout_of_a_small_trial():
    task = tasks.make("copy", length=5, delay=2, symbols=10, layout="np-rnns")
    assert (task.n_in, task.n_out, task.trial_steps, task.loss, task.episodic) == (10, 10, 12, "mse", True)
    seq = task.sample(12, batch=3, seed=0)
    xs, ys, mask = seq.xs.numpy(), seq.ys.numpy(), seq.mask.numpy()
    assert xs.shape == ys.shape == (12, 3, 10) and mask.shape == (12, 3) and mask.all()
    assert (xs.sum(-1) == 1).all() and (ys.sum(-1) == 1).all()  # one-hot everywhere
    a = xs[:5].argmax(-1)
    assert (xs.argmax(-1)[5:7] == 0).all() and (xs.argmax(-1)[7:] == 9).all()  # delay class 0, markers S - 1
    assert (ys.argmax(-1)[:7] == 0).all()                                      # class 0 until the recall
    np.testing.assert_array_equal(ys.argmax(-1)[7:], a)                        # then the symbols in order


def test_np_rnns_symbols_are_1_to_symbols_minus_2_uniformly():
    xs = tasks.make("copy", layout="np-rnns").sample(210, batch=64, seed=1).xs.numpy()
    a = xs[:100].argmax(-1)
    assert a.min() == 1 and a.max() == 8
    counts = np.bincount(a.ravel(), minlength=10)[1:9]
    assert np.allclose(counts / counts.sum(), 1 / 8, atol=0.01)  # 6400 draws


@pytest.mark.parametrize("layout", ["markers", "np-rnns"])
def test_fixed_repeats_the_first_trial(layout):
    fixed = tasks.make("copy", length=6, delay=3, layout=layout, fixed=True)
    T = fixed.trial_steps
    stream = fixed.stream(seed=4, batch=3)
    trials = [next(stream) for _ in range(3)]
    assert all(torch.equal(t.xs, trials[0].xs) and torch.equal(t.ys, trials[0].ys) for t in trials)
    assert not torch.equal(trials[0].xs[:, 0], trials[0].xs[:, 1])             # the rows still differ
    fresh = tasks.make("copy", length=6, delay=3, layout=layout).sample(3 * T, batch=3, seed=4)
    assert torch.equal(trials[0].xs, fresh.xs[:T])                              # the seed's first trial ...
    assert not torch.equal(fresh.xs[:T], fresh.xs[T:2 * T])                     # ... which otherwise changes
    assert not torch.equal(trials[0].xs, fixed.sample(T, batch=3, seed=5).xs)


def test_error_bits_counts_thresholded_mismatches():
    y = np.array([[0, 1, 0], [1, 0, 0]])
    y_hat = np.array([[0.2, 0.5, 0.7], [0.49, -1.0, 0.1]])  # wrong: 0.7 (-> 1), 0.49 (-> 0)
    assert error_bits(y_hat, y) == 2
    assert error_bits(torch.tensor(y_hat), torch.tensor(y, dtype=torch.float32)) == 2
    assert error_bits(y_hat, y, threshold=0.0) == 3  # all but -1.0 -> 1: three entries of y are 0 there
    assert error_bits(y, y) == 0 and isinstance(error_bits(y, y), int)


@pytest.mark.parametrize("settings, message", [
    ({"layout": "authors"}, r"^layout='authors' is invalid: valid choices are 'markers', 'np-rnns'$"),
    ({"layout": "np-rnns", "symbols": 2}, r"^symbols=2 is invalid: must be >= 3"),
    ({"fixed": 1}, r"^fixed=1 is invalid: must be True or False$"),
])
def test_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        tasks.make("copy", **settings)
    tasks.make("copy", symbols=2)  # the markers layout keeps its own bound
