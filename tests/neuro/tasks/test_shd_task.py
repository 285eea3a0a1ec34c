"""The SHD/SSC task (``shd``) on small files written here in the published layout (HDF5: ``spikes/times`` and
``spikes/units`` variable-length per recording, ``labels``, ``extra/...``): the binned inputs against the
bins the spikes were drawn in (counted by hand) and against tonic's own SHD reader and ``ToFrame``, the
labels and targets, the epoch sampling, the errors, and a few steps of e-prop on a LIF network."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from neuro.tasks.shd import SpikingHeidelberg, write_file

DT = 10.0  # ms


def _recording(rng, label, n_spikes=60, last_bin=12):
    """Spikes drawn bin by bin: (times [s], units, the bin of each), times inside their bin (never on an edge,
    so float16's rounding keeps them there), sorted."""
    k = np.sort(rng.integers(0, last_bin, n_spikes))
    t = np.sort(k + rng.uniform(0.2, 0.8, n_spikes)) * DT / 1000.0  # bins disjoint: k stays each one's bin
    u = rng.integers(0, 700, n_spikes)
    u[:3] = (0, 699, 350 + label)  # the edge channels, always
    return t, u, k


def _write(path, recs, labels, times_dtype=np.float16, skip=(), units_dtype=np.uint16):
    """An SHD file as published: vlen times (seconds) and units (uint16), uint16 labels, extra/ metadata."""
    with h5py.File(path, "w") as f:
        if "spikes/times" not in skip:
            ts = f.create_dataset("spikes/times", (len(recs),), dtype=h5py.vlen_dtype(np.dtype(times_dtype)))
            for i, r in enumerate(recs):
                ts[i] = np.asarray(r[0], times_dtype)
        if "spikes/units" not in skip:
            us = f.create_dataset("spikes/units", (len(recs),), dtype=h5py.vlen_dtype(np.dtype(units_dtype)))
            for i, r in enumerate(recs):
                us[i] = np.asarray(r[1], units_dtype)
        if "labels" not in skip:
            f.create_dataset("labels", data=np.asarray(labels, np.uint16))
        f.create_dataset("extra/speaker", data=np.zeros(len(recs), np.uint16))
        f.create_dataset("extra/keys", data=np.array([b"english-zero", b"english-one"]))
        f.create_dataset("extra/meta_info/gender", data=np.array([b"female"]))


def _hand(t, u, steps, stride=1, overflow="drop", binary=False, bins=None):
    """Counts [steps, ceil(700/stride)] by a loop over spikes, each in its drawn bin ``bins`` (or floor(t/dt))."""
    out = np.zeros((steps, -(-700 // stride)))
    for i in range(len(t)):
        k = int(bins[i]) if bins is not None else int(t[i] * 1000 // DT)
        if k >= steps:
            if overflow == "drop":
                continue
            k = steps - 1
        out[k, u[i] // stride] += 1
    return np.minimum(out, 1) if binary else out


@pytest.fixture(scope="module")
def shd(tmp_path_factory):
    """A directory with shd_train.h5 (6 recordings, labels 0..5, one of them empty) and shd_test.h5 (2)."""
    d = tmp_path_factory.mktemp("shd")
    rng = np.random.default_rng(0)
    train = [_recording(rng, c) for c in range(5)] + [(np.zeros(0), np.zeros(0, int), np.zeros(0, int))]
    _write(d / "shd_train.h5", train, [0, 1, 2, 3, 4, 5])
    test = [_recording(rng, c, n_spikes=20) for c in (7, 19)]
    _write(d / "shd_test.h5", test, [7, 19])
    return d, train, test


@pytest.mark.parametrize("stride,overflow,binary", [(1, "drop", False), (3, "last", False), (7, "drop", True)])
def test_inputs_are_the_spikes_counted_in_the_bins_they_were_drawn_in(shd, stride, overflow, binary):
    d, train, _ = shd
    task = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=9, channel_stride=stride, overflow=overflow, binary=binary)
    assert task.n_in == -(-700 // stride) and task.n_out == 20 and task.trial_steps == 9 and task.n_samples == 6
    for i, (t, u, k) in enumerate(train):
        x = task.inputs(i)
        assert x.shape == (9, task.n_in) and x.dtype == np.float32
        np.testing.assert_array_equal(x, _hand(t, u, 9, stride, overflow, binary, bins=k))
        assert task.label(i) == i
    full = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=12)
    assert all(full.inputs(i).sum() == len(r[0]) for i, r in enumerate(train))  # every spike, once


def test_inputs_match_tonics_shd_reader_and_to_frame(shd):
    """tonic's HSD reader (times to microseconds, units as x) binned by tonic's ToFrame from t = 0."""
    from tonic.datasets.hsd import HSD
    from tonic.functional.to_frame import to_frame_numpy

    d, _, _ = shd
    reader = HSD.__new__(HSD)
    reader.location_on_system, reader.data_filename = str(d), "shd_train.h5"
    reader.transform = reader.target_transform = None
    task = SpikingHeidelberg(path=str(d / "shd_train.h5"), dt_ms=DT, steps=10)
    for i in range(5):
        events, label = reader[i]
        frames = to_frame_numpy(events, (700, 1, 1), time_window=DT * 1000, start_time=0, end_time=10 * DT * 1000)
        np.testing.assert_array_equal(task.inputs(i), frames[:, 0, :])
        assert label == task.label(i)


def test_trials_hold_each_recording_with_its_label_on_the_counted_steps(shd):
    d, train, _ = shd
    for target in ("every", "last"):
        task = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=8, target=target)
        seq = task.sample(8, batch=4, seed=3)
        assert seq.xs.shape == (8, 4, 700) and seq.ys.shape == (8, 4, 20)
        counted = np.ones(8, bool) if target == "every" else np.arange(8) == 7
        for b in range(4):
            label = int(seq.ys[-1, b].argmax())
            np.testing.assert_array_equal(seq.mask[:, b].numpy(), counted)
            np.testing.assert_array_equal(seq.ys[:, b].numpy(), np.outer(counted, np.eye(20)[label]))
            t, u, k = train[label]  # recording i has label i
            np.testing.assert_array_equal(seq.xs[:, b].numpy(), _hand(t, u, 8, bins=k))


def test_streams_draw_the_recordings_by_epochs_from_the_seed(shd):
    d, _, test = shd
    task = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=4)
    labels = lambda seed, n: [int(s.ys[-1, 0].argmax()) for s in task.stream(seed=seed, batch=1, steps=4 * n)]  # noqa: E731
    first = labels(0, 12)
    assert sorted(first[:6]) == sorted(first[6:]) == list(range(6))  # each recording once per epoch
    assert first == labels(0, 12) and first != labels(1, 12)
    assert labels(5, 6) == [int(s.ys[-1, 0].argmax()) for s in [task.sample(24, 1, seed=5)[4 * j:4 * j + 4]
                                                                for j in range(6)]]
    big = task.sample(4, batch=8, seed=0)  # a batch past an epoch's end continues in the next
    assert sorted(big.ys[-1].argmax(-1).tolist()[:6]) == list(range(6))
    assert SpikingHeidelberg(path=str(d), split="test", dt_ms=DT, steps=4).n_samples == len(test)


def test_ssc_is_the_same_layout_with_35_classes_and_a_valid_split(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "ssc_valid.h5", [_recording(rng, 0), _recording(rng, 1)], [34, 0])
    task = SpikingHeidelberg(path=str(tmp_path), dataset="ssc", split="valid", dt_ms=DT, steps=5)
    assert task.n_out == 35 and task.label(0) == 34
    assert task.sample(5, 2, seed=0).ys.shape == (5, 2, 35)
    with pytest.raises(ValueError, match=r"^split='valid' is invalid: valid choices are 'train', 'test'$"):
        SpikingHeidelberg(path=str(tmp_path), split="valid")


def test_pickled_copies_read_the_file_again(shd):
    d, _, _ = shd
    task = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=6)
    x = task.inputs(2)
    copy = pickle.loads(pickle.dumps(task))
    assert copy == task
    np.testing.assert_array_equal(copy.inputs(2), x)


def test_missing_files_and_settings_are_refused_on_one_line(shd, tmp_path):
    d, _, _ = shd
    with pytest.raises(FileNotFoundError, match=r"^path=.* is invalid: no shd_train.h5 in it; expected the SHD files "
                                                r"shd_train.h5, shd_test.h5$"):
        SpikingHeidelberg(path=str(tmp_path))
    (tmp_path / "shd_train.h5.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no shd_train.h5 in it \(found shd_train.h5.gz: unpack it\)"):
        SpikingHeidelberg(path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^path=.* is invalid: no such file or directory"):
        SpikingHeidelberg(path=str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match=r"^path=None is invalid: give the directory holding shd_train.h5, shd_test.h5"):
        SpikingHeidelberg()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"junk.h5' is not a readable HDF5 file .*: expected spikes/times and"):
        SpikingHeidelberg(path=str(tmp_path / "junk.h5"))
    for kw, field in [({"dt_ms": 0}, "dt_ms"), ({"steps": 2.5}, "steps"), ({"channel_stride": 0}, "channel_stride"),
                      ({"overflow": "clip"}, "overflow"), ({"target": "max"}, "target"), ({"binary": 1}, "binary"),
                      ({"dataset": "tidigits"}, "dataset"), ({"split": "valid"}, "split")]:
        with pytest.raises(ValueError, match=rf"^{field}=.* is invalid"):
            SpikingHeidelberg(path=str(d), **kw)


@pytest.mark.parametrize("key", ["spikes/times", "spikes/units", "labels"])
def test_a_missing_dataset_is_named_with_the_keys_found(tmp_path, key):
    _write(tmp_path / "shd_train.h5", [_recording(np.random.default_rng(0), 0)], [0], skip=(key,))
    with pytest.raises(ValueError, match=rf"^'.*shd_train.h5' has no dataset '{key}' \(found: extra, .*\): expected "
                                         r"spikes/times and spikes/units .* and labels$"):
        SpikingHeidelberg(path=str(tmp_path))


def test_malformed_files_are_refused_on_one_line(tmp_path):
    rng = np.random.default_rng(2)
    good = _recording(rng, 0)

    def refused(recs, labels, match, **kw):
        f = tmp_path / f"case{len(list(tmp_path.iterdir()))}.h5"  # a file of its own: a task keeps its file open
        _write(f, recs, labels, **kw)
        with pytest.raises(ValueError, match=match) as e:
            SpikingHeidelberg(path=str(f)).inputs(len(recs) - 1)
        assert "\n" not in str(e.value)

    t, u, _ = good
    refused([good, (t, np.where(u == 699, 700, u))], [0, 1], r"recording 1: unit 700 is outside the 700 channels "
                                                         r"\(valid 0..699\)$")
    refused([(t[::-1], u[::-1])], [0], r"recording 0: spike times are not sorted .*expected non-decreasing times$")
    refused([(np.r_[-0.5, t], np.r_[1, u])], [0], r"recording 0: spike time -0.5 is invalid: expected finite times >= 0")
    refused([(np.r_[t, np.inf], np.r_[u, 1])], [0], r"spike time inf is invalid")
    refused([(t, u[:-1])], [0], r"recording 0: 60 spike times but 59 units")
    refused([good], [20], r"label 20 of recording 0 is not a class of SHD \(0..19\)$")
    f = tmp_path / "flat.h5"
    with h5py.File(f, "w") as h:
        h["spikes/times"], h["spikes/units"], h["labels"] = np.zeros((1, 3)), np.zeros((1, 3), int), [0]
    with pytest.raises(ValueError, match=r"dataset 'spikes/times' has shape \(1, 3\) and dtype float64, not one "
                                         r"variable-length array per recording"):
        SpikingHeidelberg(path=str(f))


def test_eprop_trains_a_lif_network_on_it(shd):
    import models
    import neuro
    from neuro import rules

    d, _, _ = shd
    task = SpikingHeidelberg(path=str(d), dt_ms=DT, steps=10, channel_stride=10)
    net = models.make("lif", n_in=task.n_in, n_hidden=16, n_out=task.n_out)
    h = neuro.train(net, rules.make("eprop", net), task, steps=3 * task.trial_steps, batch=2, progress=False,
                    engine="torch")
    assert h.steps == 30 and np.isfinite(h.metrics[-1]["loss"])


def test_write_file_writes_what_tonics_reader_reads(tmp_path):
    from tonic.datasets.hsd import HSD

    rng = np.random.default_rng(4)
    recs = [_recording(rng, c) for c in range(3)]
    write_file(tmp_path / "shd_test.h5", [r[0] for r in recs], [r[1] for r in recs], [2, 0, 1])
    reader = HSD.__new__(HSD)
    reader.location_on_system, reader.data_filename = str(tmp_path), "shd_test.h5"
    reader.transform = reader.target_transform = None
    for i, (t, u, _) in enumerate(recs):
        events, label = reader[i]
        np.testing.assert_array_equal(events["t"], np.floor(np.float32(t).astype(np.float64) * 1e6))  # tonic: int us
        np.testing.assert_array_equal(events["x"], u)
        assert label == [2, 0, 1][i]
    task = SpikingHeidelberg(path=str(tmp_path), split="test", dt_ms=DT, steps=12)
    np.testing.assert_array_equal(task.inputs(1), _hand(*recs[1][:2], 12, bins=recs[1][2]))
