"""Event-camera classification: N-MNIST (Orchard, Jayawant, Cohen & Thakor 2015, "Converting static image
datasets to spiking neuromorphic datasets using saccades", Frontiers in Neuroscience 9:437) read from its
binary files, the events binned into frames, one recording per trial; and the binning and sampling that
:mod:`neuro.tasks.shd` shares.

The files (the dataset's own layout, as unpacked from its ``Train.zip`` / ``Test.zip``)::

    <path>/Train/<digit>/<id>.bin     <path>/Test/<digit>/<id>.bin       (or <path>/NMNIST/Train/..., tonic's)

Each file is a list of 5-byte events (N-MNIST's documentation; ``tonic.io.read_mnist_file``, which reads
them here): bits 39-32 x, 31-24 y, 23 the polarity (1 ON, 0 OFF), 22-0 the timestamp in microseconds. A
record with y = 240 is a timestamp overflow (tonic adds 2**13 us to the later ones), not an event.

Frames (``n_in = 2 * H * W``, ``H = W = ceil(34 / downsample)``): step ``k`` counts the events with
``k dt <= t < (k + 1) dt`` (``t`` from the recording's clock, 0 at its start), at input
``p * H * W + (y // downsample) * W + (x // downsample)`` -- tonic's ``ToFrame`` layout ``[p, y, x]``
flattened. ``binary`` clips the counts to 1. Events at or after ``steps * dt`` are dropped
(``overflow="drop"``) or counted in the last step (``overflow="last"``). N-MNIST's recordings last about
300 ms (three saccades of 100 ms): the defaults ``dt_ms=10, steps=32`` cover them.

Target (``n_out = 10``, ce): the digit, one-hot, on every step (``target="every"``, the per-step loss of
OTTT and SLTT and of online e-prop) or on the last step only (``target="last"``), with ``mask`` marking
those steps.

Each stream draws recordings without replacement: a permutation of the split per epoch, drawn by the
stream's rng, cut into batches (a batch that crosses an epoch's end takes the rest from the next one).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block

__all__ = ["NMNIST", "bin_events", "read_nmnist", "write_nmnist"]

SENSOR = 34  #: N-MNIST's sensor: 34 x 34 pixels
OVERFLOWS = ("drop", "last")
TARGETS = ("every", "last")


def check_binning(task: AbstractTask) -> None:
    """The binning settings every event task shares: ``dt_ms``, ``steps``, ``overflow``, ``binary``, ``target``."""
    check_positive("dt_ms", task.dt_ms)
    check_positive("steps", task.steps, integer=True)
    check_choice("overflow", task.overflow, OVERFLOWS)
    check_choice("target", task.target, TARGETS)
    if not isinstance(task.binary, bool):
        raise ValueError(f"binary={task.binary!r} is invalid: expected True (0/1 per step) or False (counts)")


def bin_events(bins: np.ndarray, inputs: np.ndarray, steps: int, n_in: int, overflow: str = "drop",
               binary: bool = False) -> np.ndarray:
    """Spike counts [steps, n_in] (float32) of the events at time bins ``bins`` and inputs ``inputs`` (integer
    arrays of one length): bins ``>= steps`` dropped (``"drop"``) or put in the last (``"last"``); ``binary``
    clips the counts to 1."""
    bins = np.asarray(bins, np.int64)
    inputs = np.asarray(inputs, np.int64)
    if overflow == "last":
        bins = np.minimum(bins, steps - 1)
    keep = bins < steps
    counts = np.bincount(bins[keep] * n_in + inputs[keep], minlength=steps * n_in).reshape(steps, n_in)
    return (np.minimum(counts, 1) if binary else counts).astype(np.float32)


def epochs(rng: np.random.Generator, n: int, batch: int) -> Iterator[np.ndarray]:
    """Endless batches of sample indices in ``[0, n)``: each epoch a permutation drawn by ``rng``."""
    order, pos = rng.permutation(n), 0
    while True:
        take = []
        while sum(len(t) for t in take) < batch:
            if pos == n:
                order, pos = rng.permutation(n), 0
            k = min(batch - sum(len(t) for t in take), n - pos)
            take.append(order[pos:pos + k])
            pos += k
        yield np.concatenate(take)


def trial(frames: list[np.ndarray], labels: np.ndarray, n_out: int, target: str) -> Block:
    """The block of one trial: inputs [T, B, n_in] from ``frames`` (one [T, n_in] per column), the one-hot
    ``labels`` [B] on every step or the last one (``target``), and the mask of those steps."""
    xs = np.stack(frames, axis=1)
    T, B = xs.shape[:2]
    ys = np.zeros((T, B, n_out), np.float32)
    mask = np.zeros((T, B), bool)
    counted = slice(None) if target == "every" else slice(T - 1, T)
    ys[counted] = np.eye(n_out, dtype=np.float32)[labels]
    mask[counted] = True
    return xs, ys, mask


def read_nmnist(file: str | os.PathLike) -> np.ndarray:
    """The events of one N-MNIST file: a structured array (x, y, t [us], p), read by tonic's
    ``read_mnist_file``; ``ValueError`` naming the file if its size is not a whole number of 5-byte events or
    an event lies outside the 34 x 34 sensor."""
    from tonic.io import read_mnist_file

    size = os.path.getsize(file)
    if size % 5:
        raise ValueError(f"N-MNIST file {str(file)!r} has {size} bytes, not a multiple of 5: expected 5-byte events "
                         "(x, y, polarity bit and 23-bit microsecond timestamp)")
    ev = read_mnist_file(os.fspath(file), dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]))
    bad = np.flatnonzero((ev["x"] >= SENSOR) | (ev["y"] >= SENSOR))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"N-MNIST file {str(file)!r} has event {i} at x={ev['x'][i]}, y={ev['y'][i]}: outside the "
                         f"{SENSOR} x {SENSOR} sensor (valid 0..{SENSOR - 1})")
    return ev


def write_nmnist(file: str | os.PathLike, x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> None:
    """Write events (x, y in 0..33, polarity 0/1, t in microseconds below 2**23) as an N-MNIST file (5 bytes an
    event, module docstring): own recordings, or small files for tests and examples."""
    x, y, p, t = (np.asarray(a, np.int64) for a in (x, y, p, t))
    if x.size and (x.min() < 0 or y.min() < 0 or max(x.max(), y.max()) >= SENSOR or not np.isin(p, (0, 1)).all()
                   or t.min() < 0 or t.max() >= 2**23):
        raise ValueError(f"events are invalid: expected x, y in 0..{SENSOR - 1}, p in (0, 1), 0 <= t < 2**23 us")
    raw = np.stack([x, y, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF], axis=1).astype(np.uint8)
    Path(file).write_bytes(raw.tobytes())


@dataclasses.dataclass(frozen=True)
class NMNIST(AbstractTask):
    """N-MNIST's recordings of ``split`` under ``path``, binned into frames of ``dt_ms`` (module docstring)."""

    path: str | None = None
    split: str = "train"
    dt_ms: float = 10.0
    steps: int = 32
    downsample: int = 1
    overflow: str = "drop"
    binary: bool = False
    target: str = "every"

    name = "nmnist"
    loss = "ce"
    episodic = True

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path={self.path!r} is invalid: give the N-MNIST directory holding Train/<digit>/*.bin "
                             "and Test/<digit>/*.bin")
        check_choice("split", self.split, ("train", "test"))
        check_binning(self)
        check_positive("downsample", self.downsample, integer=True)
        width = self.dt_ms * 1000.0
        if abs(width - round(width)) > 1e-6:
            raise ValueError(f"dt_ms={self.dt_ms!r} is invalid: must be a whole number of microseconds")
        self.files  # noqa: B018 -- the listing's errors now, not at the first trial

    @property
    def side(self) -> int:
        """Frame side after downsampling: ``ceil(34 / downsample)``."""
        return math.ceil(SENSOR / self.downsample)

    @property
    def n_in(self) -> int:
        return 2 * self.side * self.side

    @property
    def n_out(self) -> int:
        return 10

    @property
    def trial_steps(self) -> int:
        return self.steps

    @functools.cached_property
    def files(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The split's files (sorted) and their digits (from the folder names)."""
        root = Path(self.path).expanduser()
        folder = self.split.capitalize()
        where = next((d / folder for d in (root, root / "NMNIST") if (d / folder).is_dir()), None)
        if where is None:
            raise FileNotFoundError(f"path={self.path!r} is invalid: no folder {folder!r} in it (nor in NMNIST/); "
                                    f"expected {folder}/<digit>/*.bin as unpacked from N-MNIST's {folder}.zip")
        files, labels = [], []
        for d in sorted(where.iterdir()):
            if not d.is_dir():
                continue
            if d.name not in "0123456789" or len(d.name) != 1:
                raise ValueError(f"N-MNIST folder {str(d)!r} is not a digit: expected {folder}/0 .. {folder}/9")
            for f in sorted(d.glob("*.bin")):
                files.append(str(f))
                labels.append(int(d.name))
        if not files:
            raise FileNotFoundError(f"path={self.path!r} is invalid: no N-MNIST files {str(where)}/<digit>/*.bin")
        return tuple(files), np.array(labels, np.int64)

    @property
    def n_samples(self) -> int:
        return len(self.files[0])

    def label(self, i: int) -> int:
        """The digit of recording ``i``."""
        return int(self.files[1][i])

    def inputs(self, i: int) -> np.ndarray:
        """The frames [steps, n_in] (float32) of recording ``i`` of the split (files sorted)."""
        ev = read_nmnist(self.files[0][i])
        side, f = self.side, self.downsample
        bins = ev["t"] // round(self.dt_ms * 1000.0)
        inputs = ev["p"] * side * side + (ev["y"] // f) * side + ev["x"] // f
        return bin_events(bins, inputs, self.steps, self.n_in, self.overflow, self.binary)

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        for idx in epochs(rng, self.n_samples, batch):
            yield trial([self.inputs(int(i)) for i in idx], self.files[1][idx], self.n_out, self.target)
