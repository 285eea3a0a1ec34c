"""The Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC): Cramer, Stradmann, Schemmel & Zenke
(2022), "The Heidelberg spiking data sets for the systematic evaluation of spiking neural networks", IEEE
TNNLS 33:2744 (arXiv 1910.07407); spoken digits (SHD: 20 classes, 0-9 in English and German) and words (SSC:
35 classes) turned into spikes of 700 cochlea channels. Read from the published HDF5 files, one recording
per trial.

The files (``<dataset>_<split>.h5``: ``shd_train.h5``, ``shd_test.h5``; ``ssc_train.h5``, ``ssc_valid.h5``,
``ssc_test.h5``; the published ``.gz``/``.zip`` must be unpacked first), as the dataset's page describes them
and tonic's ``tonic.datasets.hsd`` reads them::

    spikes/times    one variable-length float array per recording: spike times in seconds
    spikes/units    one variable-length integer array per recording: the channel (0..699) of each spike
    labels          one integer per recording: the class
    extra/...       speaker, keys (class names), meta_info (not read)

``path`` is the directory holding them (``split`` picks the file) or one file (``split`` then unused). A
recording is read from the file when drawn (h5py; the file stays open, once per process), never the whole
file.

Inputs (``n_in = ceil(700 / channel_stride)``): step ``k`` counts the spikes with ``k dt <= t < (k + 1) dt``
(``t`` and ``dt`` in seconds, float64: ``floor(t / dt)``) at input ``unit // channel_stride`` (neighbouring
channels summed); ``binary`` clips the counts to 1. Spikes at or after ``steps * dt`` are dropped
(``overflow="drop"``, as Zenke's SpyTorch SHD tutorial drops those past its ``max_time``) or counted in the
last step (``overflow="last"``). The recordings last up to about 1.4 s: ``dt_ms=10, steps=100`` keeps the
first second, ``steps=140`` all of it.

Target (``n_out`` = 20 or 35, ce): the label, one-hot, on every step (``target="every"``: the per-step loss
that OTTT and SLTT train with and that online e-prop needs to have a learning signal at every step) or on the
last step only (``target="last"``), with ``mask`` marking those steps. Streams draw recordings by epochs
(:func:`neuro.tasks.events.epochs`: a permutation of the file per epoch from the stream's rng).

A recording is checked when read: equal numbers of times and units, times finite, non-negative and sorted,
units below 700; ``ValueError`` names the file, the recording and what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from neuro.contract import check_choice, check_positive

from .base import AbstractTask, Block
from .events import bin_events, check_binning, epochs, trial

__all__ = ["CHANNELS", "SpikingHeidelberg", "data_file", "write_file"]

CHANNELS = 700  #: cochlea channels of SHD and SSC
CLASSES = {"shd": 20, "ssc": 35}
SPLITS = {"shd": ("train", "test"), "ssc": ("train", "valid", "test")}
KEYS = ("spikes/times", "spikes/units", "labels")
LAYOUT = "spikes/times and spikes/units (one variable-length array per recording) and labels"


def data_file(path: str | os.PathLike, dataset: str = "shd", split: str = "train") -> Path:
    """The file ``path`` names: itself, or ``<dataset>_<split>.h5`` in a directory; ``FileNotFoundError`` naming
    what was expected (and a packed copy found instead) otherwise."""
    p = Path(path).expanduser()
    want = f"{dataset}_{split}.h5"
    if p.is_dir():
        f = p / want
        if not f.is_file():
            packed = [q.name for q in (p / f"{want}.gz", p / f"{want}.zip") if q.is_file()]
            hint = f" (found {packed[0]}: unpack it)" if packed else ""
            raise FileNotFoundError(f"path={str(path)!r} is invalid: no {want} in it{hint}; expected the "
                                    f"{dataset.upper()} files {', '.join(f'{dataset}_{s}.h5' for s in SPLITS[dataset])}")
        return f
    if not p.is_file():
        raise FileNotFoundError(f"path={str(path)!r} is invalid: no such file or directory; expected a directory "
                                f"holding {want} or the file itself")
    return p


def write_file(path: str | os.PathLike, times: list[np.ndarray], units: list[np.ndarray], labels: np.ndarray) -> None:
    """Write recordings (``times`` in seconds, sorted; ``units`` 0..699; one label each) as an HDF5 file of
    the published layout (float32 times, uint16 units and labels; no ``extra/``): own data, or small files for
    tests and examples."""
    import h5py

    with h5py.File(path, "w") as f:
        ts = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.dtype(np.float32)))
        us = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.dtype(np.uint16)))
        for i, (t, u) in enumerate(zip(times, units, strict=True)):
            ts[i], us[i] = np.asarray(t, np.float32), np.asarray(u, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint16))


@dataclasses.dataclass(frozen=True)
class SpikingHeidelberg(AbstractTask):
    """SHD (``dataset="shd"``) or SSC (``"ssc"``) recordings of ``split`` from ``path``, binned into ``steps``
    bins of ``dt_ms`` (module docstring)."""

    path: str | None = None
    dataset: str = "shd"
    split: str = "train"
    dt_ms: float = 10.0
    steps: int = 100
    channel_stride: int = 1
    overflow: str = "drop"
    binary: bool = False
    target: str = "every"

    name = "shd"
    loss = "ce"
    episodic = True

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        check_choice("dataset", self.dataset, tuple(CLASSES))
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path={self.path!r} is invalid: give the directory holding "
                             f"{', '.join(f'{self.dataset}_{s}.h5' for s in SPLITS[self.dataset])} or one such file")
        check_choice("split", self.split, SPLITS[self.dataset])
        check_binning(self)
        check_positive("channel_stride", self.channel_stride, integer=True)
        self._labels  # noqa: B018 -- the file's layout and labels checked now, not at the first trial

    @functools.cached_property
    def file(self) -> Path:
        """The HDF5 file read (located once: every recording's check names it)."""
        return data_file(self.path, self.dataset, self.split)

    @property
    def n_in(self) -> int:
        return math.ceil(CHANNELS / self.channel_stride)

    @property
    def n_out(self) -> int:
        return CLASSES[self.dataset]

    @property
    def trial_steps(self) -> int:
        return self.steps

    @property
    def n_samples(self) -> int:
        return len(self._labels)

    def label(self, i: int) -> int:
        """The class of recording ``i``."""
        return int(self._labels[i])

    def _h5(self) -> Any:
        """The open file (opened once per process; ``ValueError`` if it is not HDF5)."""
        pid, handle = self.__dict__.get("_handle", (None, None))
        if pid != os.getpid():
            import h5py

            try:
                handle = h5py.File(self.file, "r")
            except OSError as e:
                raise ValueError(f"{str(self.file)!r} is not a readable HDF5 file ({' '.join(str(e).split())}): "
                                 f"expected {LAYOUT}") from None
            self.__dict__["_handle"] = (os.getpid(), handle)
        return handle

    def _dataset(self, key: str) -> Any:
        f = self._h5()
        if key not in f or not hasattr(f[key], "dtype"):
            found: list[str] = []
            f.visit(found.append)
            raise ValueError(f"{str(self.file)!r} has no dataset {key!r} (found: {', '.join(found) or 'nothing'}): "
                             f"expected {LAYOUT}")
        return f[key]

    @functools.cached_property
    def _labels(self) -> np.ndarray:
        """The labels [n] (read once), checked against the layout and the class count."""
        import h5py

        times, units, labels = (self._dataset(k) for k in KEYS)
        for key, ds in (("spikes/times", times), ("spikes/units", units)):
            if ds.ndim != 1 or h5py.check_vlen_dtype(ds.dtype) is None:
                raise ValueError(f"{str(self.file)!r}: dataset {key!r} has shape {ds.shape} and dtype {ds.dtype}, "
                                 f"not one variable-length array per recording: expected {LAYOUT}")
        y = labels[()]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or not len(times) == len(units) == len(y):
            raise ValueError(f"{str(self.file)!r}: labels {y.shape} {y.dtype}, spikes/times {times.shape}, "
                             f"spikes/units {units.shape}: expected one integer label per recording")
        bad = np.flatnonzero((y < 0) | (y >= self.n_out))
        if bad.size:
            raise ValueError(f"{str(self.file)!r}: label {y[bad[0]]} of recording {bad[0]} is not a class of "
                             f"{self.dataset.upper()} (0..{self.n_out - 1})")
        return y.astype(np.int64)

    def spikes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The spike times (float64, seconds) and units (int64) of recording ``i``, checked (module docstring)."""
        t = np.asarray(self._dataset("spikes/times")[i], np.float64)
        u = np.asarray(self._dataset("spikes/units")[i])
        where = f"{str(self.file)!r}, recording {i}"
        if t.shape != u.shape:
            raise ValueError(f"{where}: {t.size} spike times but {u.size} units; expected one unit per spike time")
        if not np.issubdtype(u.dtype, np.integer):
            raise ValueError(f"{where}: units have dtype {u.dtype}; expected integer channels 0..{CHANNELS - 1}")
        u = u.astype(np.int64)
        if t.size and not (np.isfinite(t).all() and t.min() >= 0):
            raise ValueError(f"{where}: spike time {t[~(np.isfinite(t) & (t >= 0))][0]!r} is invalid: expected "
                             "finite times >= 0 (seconds)")
        if t.size > 1 and (np.diff(t) < 0).any():
            k = int(np.flatnonzero(np.diff(t) < 0)[0])
            raise ValueError(f"{where}: spike times are not sorted ({t[k]!r} then {t[k + 1]!r} at spike {k}); "
                             "expected non-decreasing times")
        if u.size and (u.min() < 0 or u.max() >= CHANNELS):
            raise ValueError(f"{where}: unit {u[(u < 0) | (u >= CHANNELS)][0]} is outside the {CHANNELS} channels "
                             f"(valid 0..{CHANNELS - 1})")
        return t, u

    def inputs(self, i: int) -> np.ndarray:
        """The binned spikes [steps, n_in] (float32) of recording ``i``."""
        t, u = self.spikes(i)
        bins = np.minimum(np.floor(t / (self.dt_ms / 1000.0)), self.steps).astype(np.int64)  # no int64 overflow
        return bin_events(bins, u // self.channel_stride, self.steps, self.n_in, self.overflow, self.binary)

    def __getstate__(self) -> dict:
        """Pickled without the open file (a copy opens its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "_handle"}

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        labels = self._labels
        for idx in epochs(rng, self.n_samples, batch):
            yield trial([self.inputs(int(i)) for i in idx], labels[idx], self.n_out, self.target)
