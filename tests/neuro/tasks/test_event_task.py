"""The N-MNIST task (``nmnist``) on small recordings written here with N-MNIST's documented 5-byte layout
(bits 39-32 x, 31-24 y, 23 polarity, 22-0 microseconds; ``Train/<digit>/*.bin``): the reader against the
events written, the frames against a hand count per event and against tonic's ``ToFrame``, the labels and
targets, the errors, and a few steps of e-prop on a LIF network."""

from __future__ import annotations

import numpy as np
import pytest

from neuro.tasks.events import NMNIST, bin_events, epochs, read_nmnist, write_nmnist

DT_US = 5000


def _encode(x, y, p, t) -> bytes:
    """5 bytes per event, by the documented bit layout (written here byte by byte, not by tonic)."""
    out = bytearray()
    for xi, yi, pi, ti in zip(x, y, p, t):
        assert ti < 2**23
        out += bytes([xi, yi, (pi << 7) | (ti >> 16), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


def _events(rng, n=80, last_bin=8):
    """Events (x, y, p, t [us], bin): times sorted, each inside its drawn bin; the last one in bin 70 (past
    every run's steps, and past 2**16 us so that the timestamp's high bits are used)."""
    k = np.r_[np.sort(rng.integers(0, last_bin, n - 1)), 70]
    t = np.sort(k * DT_US + rng.integers(1, DT_US - 1, n))
    x, y, p = rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n)
    x[:2], y[:2] = (0, 33), (33, 0)  # the corners, always
    return x, y, p, t, k


def _hand(x, y, p, k, steps, f=1, overflow="drop", binary=False):
    side = -(-34 // f)
    out = np.zeros((steps, 2, side, side))
    for i in range(len(x)):
        b = k[i] if k[i] < steps else (steps - 1 if overflow == "last" else None)
        if b is not None:
            out[b, p[i], y[i] // f, x[i] // f] += 1
    out = np.minimum(out, 1) if binary else out
    return out.reshape(steps, -1)


@pytest.fixture(scope="module")
def nmnist(tmp_path_factory):
    """Train/: two recordings of digit 3, one of 7, one of 0 (one of them without events); Test/: one of 9."""
    root = tmp_path_factory.mktemp("nmnist")
    rng = np.random.default_rng(0)
    recs = {}
    for split, digit, name in [("Train", 3, "00002"), ("Train", 3, "00001"), ("Train", 7, "00005"), ("Test", 9, "1")]:
        ev = _events(rng)
        (root / split / str(digit)).mkdir(parents=True, exist_ok=True)
        (root / split / str(digit) / f"{name}.bin").write_bytes(_encode(*ev[:4]))
        recs[(split, digit, name)] = ev
    (root / "Train" / "0").mkdir()
    (root / "Train" / "0" / "00009.bin").write_bytes(b"")
    recs[("Train", 0, "00009")] = tuple(np.zeros(0, int) for _ in range(5))
    return root, recs


def test_the_reader_returns_the_events_written_with_the_documented_bits(nmnist):
    root, recs = nmnist
    x, y, p, t, _ = recs[("Train", 7, "00005")]
    ev = read_nmnist(root / "Train" / "7" / "00005.bin")
    for name, want in zip("xypt", (x, y, p, t)):
        np.testing.assert_array_equal(ev[name], want)
    assert (t >= 2**16).any()


def test_write_nmnist_writes_the_documented_bytes(tmp_path):
    x, y, p, t, _ = _events(np.random.default_rng(5))
    write_nmnist(tmp_path / "a.bin", x, y, p, t)
    assert (tmp_path / "a.bin").read_bytes() == _encode(x, y, p, t)
    with pytest.raises(ValueError, match=r"^events are invalid: expected x, y in 0..33"):
        write_nmnist(tmp_path / "b.bin", [34], [0], [0], [0])


@pytest.mark.parametrize("f,overflow,binary", [(1, "drop", False), (3, "last", False), (4, "drop", True)])
def test_frames_are_the_events_counted_by_hand(nmnist, f, overflow, binary):
    root, recs = nmnist
    task = NMNIST(path=str(root), dt_ms=DT_US / 1000, steps=6, downsample=f, overflow=overflow, binary=binary)
    side = -(-34 // f)
    assert task.n_in == 2 * side * side and task.n_out == 10 and task.trial_steps == 6 and task.n_samples == 4
    order = [("Train", 0, "00009"), ("Train", 3, "00001"), ("Train", 3, "00002"), ("Train", 7, "00005")]  # sorted
    for i, key in enumerate(order):
        x, y, p, _, k = recs[key]
        np.testing.assert_array_equal(task.inputs(i), _hand(x, y, p, k, 6, f, overflow, binary))
        assert task.label(i) == key[1]


def test_frames_match_tonics_to_frame(nmnist):
    from tonic.functional.to_frame import to_frame_numpy

    root, _ = nmnist
    task = NMNIST(path=str(root), split="test", dt_ms=DT_US / 1000, steps=10)
    ev = read_nmnist(root / "Test" / "9" / "1.bin")
    frames = to_frame_numpy(ev, (34, 34, 2), time_window=DT_US, start_time=0, end_time=10 * DT_US)
    np.testing.assert_array_equal(task.inputs(0), frames.reshape(10, -1))
    assert task.inputs(0).sum() == len(ev) - 1 and task.label(0) == 9  # all but the one in bin 70


def test_trials_hold_the_recordings_with_their_digit(nmnist):
    root, recs = nmnist
    task = NMNIST(path=str(root), dt_ms=DT_US / 1000, steps=8, target="last")
    seq = task.sample(8, batch=4, seed=1)  # one epoch: each recording once
    digits = seq.ys[-1].argmax(-1).tolist()
    assert sorted(digits) == [0, 3, 3, 7]
    assert not seq.ys[:-1].any() and seq.mask[-1].all() and not seq.mask[:-1].any()
    for b, d in enumerate(digits):
        if d in (0, 7):
            key = ("Train", d, "00009" if d == 0 else "00005")
            x, y, p, _, k = recs[key]
            np.testing.assert_array_equal(seq.xs[:, b].numpy(), _hand(x, y, p, k, 8))


def test_binning_and_epochs_helpers():
    np.testing.assert_array_equal(bin_events([0, 2, 2, 5], [1, 0, 0, 1], 3, 2), [[0, 1], [0, 0], [2, 0]])
    np.testing.assert_array_equal(bin_events([0, 2, 2, 5], [1, 0, 0, 1], 3, 2, "last", True), [[0, 1], [0, 0], [1, 1]])
    batches = epochs(np.random.default_rng(0), 5, 3)
    got = np.concatenate([next(batches) for _ in range(4)])
    assert sorted(got[:5]) == sorted(got[5:10]) == list(range(5))


def test_missing_and_malformed_files_are_refused_on_one_line(nmnist, tmp_path):
    root, _ = nmnist
    with pytest.raises(FileNotFoundError, match=r"^path=.* is invalid: no folder 'Train' in it \(nor in NMNIST/\); "
                                                r"expected Train/<digit>/\*.bin"):
        NMNIST(path=str(tmp_path))
    (tmp_path / "Test" / "4").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"^path=.* is invalid: no N-MNIST files .*Test/<digit>/\*.bin$"):
        NMNIST(path=str(tmp_path), split="test")
    (tmp_path / "NMNIST" / "Train" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^N-MNIST folder '.*x' is not a digit: expected Train/0 .. Train/9$"):
        NMNIST(path=str(tmp_path))
    with pytest.raises(ValueError, match=r"^path=None is invalid: give the N-MNIST directory"):
        NMNIST()
    bad = tmp_path / "bad"
    (bad / "Train" / "1").mkdir(parents=True)
    (bad / "Train" / "1" / "a.bin").write_bytes(_encode([1], [2], [0], [3]) + b"\x00\x01")
    (bad / "Train" / "1" / "b.bin").write_bytes(_encode([1, 34], [2, 5], [0, 1], [3, 9]))
    task = NMNIST(path=str(bad))
    with pytest.raises(ValueError, match=r"^N-MNIST file '.*a.bin' has 7 bytes, not a multiple of 5"):
        task.inputs(0)
    with pytest.raises(ValueError, match=r"^N-MNIST file '.*b.bin' has event 1 at x=34, y=5: outside the 34 x 34"):
        task.inputs(1)
    for kw, field in [({"dt_ms": 0.0001}, "dt_ms"), ({"steps": 0}, "steps"), ({"downsample": 0}, "downsample"),
                      ({"split": "valid"}, "split"), ({"overflow": "x"}, "overflow"), ({"target": "x"}, "target")]:
        with pytest.raises(ValueError, match=rf"^{field}=.* is invalid"):
            NMNIST(path=str(root), **kw)


def test_eprop_trains_a_lif_network_on_it(nmnist):
    import models
    import neuro
    from neuro import rules

    root, _ = nmnist
    task = NMNIST(path=str(root), dt_ms=10.0, steps=5, downsample=4)
    net = models.make("lif", n_in=task.n_in, n_hidden=16, n_out=task.n_out)
    h = neuro.train(net, rules.make("eprop", net), task, steps=3 * task.trial_steps, batch=2, progress=False,
                    engine="torch")
    assert h.steps == 15 and np.isfinite(h.metrics[-1]["loss"])
