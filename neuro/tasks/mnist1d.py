"""MNIST-1D as a sequential classification task: Greydanus & Kobak, "Scaling down deep learning with MNIST-1D",
ICML 2024 (arXiv:2011.14439; code and data generator ``greydanus/mnist1d``, the ``mnist1d`` package).

The data are MNIST-1D's own: ``mnist1d.data.make_dataset(args)`` with ``get_dataset_args()`` (5000 signals of
40 samples made procedurally from 10 hard-coded digit templates by padding, translation, shear, scaling,
correlated and i.i.d. noise; shuffled; the first 80% the training split, the rest the test split; seed 42),
generated once per process and setting (:func:`dataset`), never downloaded (``get_dataset`` may fetch a pickle
from GitHub; ``make_dataset`` does not). Only ``num_samples``, ``seed`` (``data_seed``) and ``shuffle_seq``
(the paper's "shuffled" variant: one fixed permutation of the 40 positions) are changed from the defaults.

A trial is one signal fed one sample per step (``n_in = 1``, ``trial_steps = 40``), as the paper's GRU reads it.
Target (``n_out = 10``, loss ``ce``): the digit, one-hot, on the last ``label_steps`` steps (``mask``; ``ys``
is zero elsewhere). The default, ``label_steps = 1``, counts only the last step: the network must have read
the whole signal before it answers, and its prediction is its output there. With ``label_steps = k`` the loss
and the prediction (:meth:`MNIST1D.accuracy`: the argmax of the mean output over the counted steps) use the
last ``k`` steps. (The paper's GRU is bidirectional and reads its answer off all 40 hidden states at once;
a causal network answering at the end is the online-learning form of the same task.)

Trials draw signals uniformly with replacement from ``split`` with the stream's random generator (training).
:meth:`MNIST1D.whole` gives a whole split in order as one batch (evaluation: the 1000 test signals), and
:meth:`MNIST1D.accuracy` scores a network's outputs on it.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block, Sequence

__all__ = ["MNIST1D", "SPLITS", "dataset"]

SPLITS = ("train", "test")
N_CLASSES = 10


@functools.cache
def dataset(num_samples: int = 5000, data_seed: int = 42, shuffle_seq: bool = False) -> dict[str, np.ndarray]:
    """MNIST-1D made by its own generator (``mnist1d.data.make_dataset``; no download) with the default
    arguments but these three: ``{"x": [n_train, 40] float32, "y": [n_train] int64, "x_test", "y_test"}``
    (read-only arrays; cached per process). The generator seeds Python's and numpy's global random state
    (``mnist1d.utils.set_seed``): both are restored afterwards, so making the data changes no caller's draws."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = num_samples, data_seed, shuffle_seq
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
           "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}
    for a in out.values():
        a.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class MNIST1D(AbstractTask):
    """MNIST-1D, one signal per trial, one sample per step (see the module docstring)."""

    split: str = "train"
    num_samples: int = 5000
    data_seed: int = 42
    shuffle_seq: bool = False
    label_steps: int = 1

    name = "mnist1d"
    loss = "ce"
    episodic = True

    def __post_init__(self) -> None:
        check_choice("split", self.split, SPLITS)
        check_positive("num_samples", self.num_samples, integer=True)
        if self.num_samples < 5 * N_CLASSES:  # make_dataset makes num_samples // 10 per class; both splits non-empty
            raise ValueError(f"num_samples={self.num_samples!r} is invalid: must be >= {5 * N_CLASSES} "
                             f"(num_samples // 10 signals per digit, 80% train / 20% test)")
        check_positive("data_seed", self.data_seed, allow_zero=True, integer=True)
        if self.data_seed >= 2 ** 32:
            raise ValueError(f"data_seed={self.data_seed!r} is invalid: must be < 2**32 (numpy's global seed)")
        if not isinstance(self.shuffle_seq, bool):
            raise ValueError(f"shuffle_seq={self.shuffle_seq!r} is invalid: expected True or False")
        check_positive("label_steps", self.label_steps, integer=True)
        if self.label_steps > self.trial_steps:
            raise ValueError(f"label_steps={self.label_steps!r} is invalid: must be <= {self.trial_steps} "
                             f"(the signal's length)")

    @property
    def n_in(self) -> int:
        return 1

    @property
    def n_out(self) -> int:
        return N_CLASSES

    @property
    def trial_steps(self) -> int:
        return 40  # get_dataset_args()["final_seq_length"]

    def arrays(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x [N, 40], y [N])`` of ``split`` (default this task's), as ``mnist1d`` makes them."""
        split = self.split if split is None else split
        check_choice("split", split, SPLITS)
        d = dataset(self.num_samples, self.data_seed, self.shuffle_seq)
        return (d["x"], d["y"]) if split == "train" else (d["x_test"], d["y_test"])

    def trial_of(self, indices: Any, split: str | None = None) -> Block:
        """The trial of the signals ``indices`` (integers into ``split``): ``xs [40, B, 1]``, ``ys [40, B, 10]``
        (the one-hot digit on the last ``label_steps`` steps), ``mask [40, B]``."""
        x, y = self.arrays(split)
        idx = np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx.size and not
                                                                       (0 <= idx.min() and idx.max() < len(y))):
            raise ValueError(f"indices={indices!r} is invalid: expected a 1-D array of integers in [0, {len(y)})")
        T, k = self.trial_steps, self.label_steps
        xs = np.ascontiguousarray(x[idx].T[:, :, None])
        ys = np.zeros((T, idx.size, N_CLASSES), dtype=np.float32)
        ys[T - k:] = np.eye(N_CLASSES, dtype=np.float32)[y[idx]]
        mask = np.zeros((T, idx.size), dtype=bool)
        mask[T - k:] = True
        return xs, ys, mask

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        n = len(self.arrays()[1])
        return self.trial_of(rng.integers(0, n, size=batch))

    def whole(self, split: str | None = None) -> Sequence:
        """Every signal of ``split`` (default this task's) in order, as one batch: ``xs [40, N, 1]`` etc."""
        xs, ys, mask = self.trial_of(np.arange(len(self.arrays(split)[1])), split)
        return Sequence(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(mask))

    def predictions(self, y_hat: Tensor) -> Tensor:
        """The predicted digits [B] of outputs ``y_hat`` [40, B, 10]: the argmax of the mean output over the
        last ``label_steps`` steps."""
        if y_hat.ndim != 3 or y_hat.shape[0] != self.trial_steps or y_hat.shape[-1] != N_CLASSES:
            raise ValueError(f"y_hat of shape {tuple(y_hat.shape)} is invalid: expected "
                             f"[{self.trial_steps}, batch, {N_CLASSES}]")
        return y_hat[self.trial_steps - self.label_steps:].mean(0).argmax(-1)

    def accuracy(self, y_hat: Tensor, seq: Sequence) -> float:
        """The fraction of trials of ``seq`` whose prediction (:meth:`predictions` of ``y_hat``) is its label."""
        label = seq.ys[-1].argmax(-1)
        return float((self.predictions(y_hat) == label.to(y_hat.device)).double().mean())
