"""The Atari prediction task (``atari-prediction``): the resize against a hand computation, a cached log's stream
against live emulation, the realised return's recursion cut at resets, the stand-in's seeding, the cache's
recovery from a corrupt file, the pre-render helper and the errors. Logs are short ones written here."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

from neuro import tasks
from neuro.tasks import atari_emulation as E
from neuro.tasks import atari_prediction as A

FRAMES = 10_000


def _log(frames: int, seed: int = 0, resets: tuple[int, ...] = ()) -> bytes:
    """'R', then Pong's actions (a..f) in runs of 4, with 'R' at the frames ``resets``."""
    rng = np.random.default_rng(seed)
    b = bytearray(np.repeat(rng.integers(97, 103, size=frames // 4 + 1), 4)[:frames].astype(np.uint8).tobytes())
    for i in (0, *resets):
        b[i] = ord("R")
    return bytes(b)


def _live(log: bytes, gamma: float = 0.98) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [N, 276] and returns [N] of ``log`` on Pong, emulated here frame by frame (the definition)."""
    ale = E.emulator("Pong")
    acts = ale.getMinimalActionSet()
    x = np.zeros((len(log), 276), np.float32)
    screens = np.empty((1000, 210, 160), np.uint8)
    for i, b in enumerate(log):
        if b == ord("R"):
            ale.reset_game()
        else:
            a = acts[b - 97]
            x[i, 256 + int(a.value)] = 1.0
            x[i, 274] = np.clip(ale.act(a), -1, 1)
            x[i, 275] = 1.0
        ale.getScreenGrayscale(screens[i % 1000])
        if i % 1000 == 999 or i == len(log) - 1:
            x[i - i % 1000:i + 1, :256] = E.resize(screens[:i % 1000 + 1]).reshape(-1, 256) / 256.0
    g = np.zeros(len(log))
    for t in range(len(log) - 2, -1, -1):  # the log's last return: its next frame is the loop's reset, c = 0
        g[t] = x[t + 1, 274] + gamma * x[t + 1, 275] * g[t + 1]
    return x, g


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    """A 10,000-frame Pong log with a reset inside, in a directory as the benchmark names it; its task and cache."""
    d = tmp_path_factory.mktemp("policies")
    log = _log(FRAMES, resets=(6001,))
    (d / "PongNoFrameskip-v4.txt").write_bytes(log)
    return log, tasks.make("atari-prediction", game="Pong", policy=str(d), cache_dir=str(d / "cache"))


def test_resize_is_opencv_bilinear_by_hand():
    img = np.random.default_rng(0).integers(0, 256, size=(210, 160)).astype(np.uint8)
    out = E.resize(img)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    i = img.astype(np.float64)
    # output (1, 2): source row (1 + 0.5) * 210 / 16 - 0.5 = 19.1875, column (2 + 0.5) * 10 - 0.5 = 24.5
    want = 0.8125 * (0.5 * i[19, 24] + 0.5 * i[19, 25]) + 0.1875 * (0.5 * i[20, 24] + 0.5 * i[20, 25])
    assert out[1, 2] == np.floor(want + 0.5)
    # output (15, 15): row 202.9375, column 154.5
    want = 0.0625 * (0.5 * i[202, 154] + 0.5 * i[202, 155]) + 0.9375 * (0.5 * i[203, 154] + 0.5 * i[203, 155])
    assert out[15, 15] == np.floor(want + 0.5)
    # a value half-way between integers rounds up: output (0, 0) reads rows 6, 7 (0.9375, 0.0625), columns 4, 5
    img[6:8, 4], img[6:8, 5] = 10, 11
    assert E.resize(img)[0, 0] == 11
    # upsampling clamps at the borders: [0, 4] -> [0, 1, 3, 4] (cv2.resize(np.uint8([[0, 4]]), (4, 1)))
    assert E.resize(np.array([[0, 4], [0, 4]], np.uint8), 4)[0].tolist() == [0, 1, 3, 4]
    assert (E.resize(np.full((210, 160), 77, np.uint8)) == 77).all()


def test_the_cached_stream_is_live_emulation_looped(pong, monkeypatch):
    log, task = pong
    seq = task.sample(FRAMES + 50, batch=2, seed=0)
    assert E.cache_path("Pong", log, task.cache_dir).is_file()
    x, g = _live(log)
    assert torch.equal(seq.xs[:FRAMES, 0], torch.from_numpy(x)) and torch.equal(seq.xs[:, 0], seq.xs[:, 1])
    torch.testing.assert_close(seq.ys[:FRAMES, 0, 0], torch.from_numpy(g).float(), rtol=0, atol=0)
    assert torch.equal(seq.xs[FRAMES:], seq.xs[:50]) and torch.equal(seq.ys[FRAMES:], seq.ys[:50])  # it loops
    monkeypatch.setattr(E, "play", lambda *a: pytest.fail("replayed from the cache, not emulated"))
    again = tasks.make("atari-prediction", game="Pong", policy=task.policy, cache_dir=task.cache_dir)
    assert torch.equal(again.sample(FRAMES, seed=7).xs[:, 0], seq.xs[:FRAMES, 0])  # every seed the same stream


def test_the_return_satisfies_its_recursion_and_is_cut_at_resets(pong):
    _, task = pong
    s = task.sample(FRAMES + 1)
    x, y = s.xs[:, 0].double(), s.ys[:, 0, 0].double()
    c, f = x[1:, A.CUMULANT], x[1:, A.FLAG]
    torch.testing.assert_close(y[:-1], c + 0.98 * f * y[1:], rtol=1e-6, atol=1e-6)
    resets = torch.nonzero(x[:, A.FLAG] == 0).flatten().tolist()
    assert resets == [0, 6001, FRAMES] and (x[resets, 256:275] == 0).all()
    assert float(y[6000]) == 0.0 and float(y[FRAMES - 1]) == 0.0  # the episode's last frame: nothing follows
    assert (c != 0).sum() >= 5 and (y != 0).float().mean() > 0.5  # points were scored


def test_the_stand_in_is_seeded_and_says_so():
    task = tasks.make("atari-prediction", game="Breakout", standin_frames=300)
    a, b, c = (task.sample(400, batch=2, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs[:, 0], a.xs[:, 1])  # the columns start at different frames of the loop ...
    assert torch.equal(a.xs[:100, 1], a.xs[300:, 1])  # ... of 300 frames
    # another seed plays another game: its loop is no rotation of this one's
    assert not any(torch.equal(torch.roll(a.xs[:300, 0], k, 0), c.xs[:300, 0]) for k in range(300))
    assert "stand-in policy" in repr(task) and "stand-in policy" in task.description
    assert "stand-in" in A.AtariPrediction.__doc__
    slots = a.xs[:, :, 256:274].sum((0, 1))  # Breakout's minimal set: NOOP, FIRE, RIGHT, LEFT = full-set 0, 1, 3, 4
    assert (slots[[0, 1, 3, 4]] > 0).all() and slots.sum() == slots[[0, 1, 3, 4]].sum()


def test_a_corrupt_cache_file_is_rendered_again_with_a_warning(tmp_path):
    (tmp_path / "Pong.txt").write_bytes(_log(120))
    kw = {"game": "Pong", "policy": str(tmp_path / "Pong.txt"), "cache_dir": str(tmp_path / "c")}
    want = tasks.make("atari-prediction", **kw).sample(120)
    path = next((tmp_path / "c").rglob("*.npz"))
    for garbage in (b"not a zip", path.read_bytes()[:-100]):
        path.write_bytes(garbage)
        with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*rendering it again"):
            got = tasks.make("atari-prediction", **kw).sample(120)
        assert torch.equal(got.xs, want.xs) and torch.equal(got.ys, want.ys)
    assert not list((tmp_path / "c").rglob("*.tmp"))
    task = tasks.make("atari-prediction", **kw)
    task.sample(10)
    copy = pickle.loads(pickle.dumps(task))  # without the rendering in memory: it is read again
    assert "_rendered" in vars(task) and "_rendered" not in vars(copy) and copy == task
    assert torch.equal(copy.sample(120).xs, want.xs)


def test_the_pre_render_helper_prints_frames_per_second(tmp_path, capsys):
    (tmp_path / "PongNoFrameskip-v4.txt").write_bytes(_log(100))
    args = ["--games", "Pong", "--policy", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    assert A.main(args) == 0 and re.match(r"Pong: 100 frames rendered in .* frames/s\)", capsys.readouterr().out)
    assert A.main(args) == 0 and "already cached" in capsys.readouterr().out
    assert A.main(["--games", "Pong,Breakout", "--policy", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "BreakoutNoFrameskip-v4.txt" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content,message", [
    (b"", r"is empty: expected 'R' then one byte per frame"),
    (b"aR", r"starts with byte 97 \('a'\) at offset 0: a log must start with 'R' \(82\)"),
    (b"Raaaag", r"has byte 103 \('g'\) at offset 5: valid are 'R' \(82\) or 97\.\.102 \('a'\.\.'f', Pong's 6 "
                r"minimal-set actions\)"),
    (b"Ra\n", r"has byte 10 \('\\n'\) at offset 2"),
])
def test_a_malformed_log_is_refused_naming_what_is_wrong(tmp_path, content, message):
    (tmp_path / "log.txt").write_bytes(content)
    with pytest.raises(ValueError, match=rf"^action log '.*log\.txt' {message}"):
        tasks.make("atari-prediction", game="Pong", policy=str(tmp_path / "log.txt"))


def test_bad_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^game='Pongg' is invalid: valid games \(the ROMs ale-py bundles\) are "
                                         r"Adventure, AirRaid, .*Pong, .*Zaxxon$") as e:
        tasks.make("atari-prediction", game="Pongg")
    assert "\n" not in str(e.value)
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(ValueError, match=rf"^policy='{re.escape(str(missing))}' is invalid: no action log"):
        tasks.make("atari-prediction", policy=str(missing))
    with pytest.raises(ValueError, match=rf"no action log '{re.escape(str(tmp_path / 'SeaquestNoFrameskip-v4.txt'))}'"):
        tasks.make("atari-prediction", game="Seaquest", policy=str(tmp_path))
    for kw, name in [({"gamma": 1.5}, "gamma"), ({"standin_frames": 0}, "standin_frames"), ({"policy": 3}, "policy")]:
        with pytest.raises(ValueError, match=rf"^{name}="):
            tasks.make("atari-prediction", **kw)


def test_td_lambda_learns_it_with_the_cumulant_and_the_discount_inputs(pong):
    """The task's return is the value TD(lambda) with cumulant_input=274, discount_input=275 estimates; a short
    run over T-BPTT on an LSTM reports the squared return error."""
    import models
    import neuro
    from neuro import rules

    _, task = pong
    net = models.make("lstm", n_in=task.n_in, n_hidden=4, n_out=1)
    rule = rules.make("td-lambda", net, rule="tbptt", rule_options={"k": 2}, cumulant_input=A.CUMULANT,
                      discount_input=A.FLAG, gamma=0.98)
    h = neuro.train(net, rule, task, 20, chunk=10, progress=False, engine="torch")
    assert h.steps == 20 and np.isfinite(h.metrics[-1]["loss"])


def test_the_cache_directory_is_the_setting_else_neuro_cache_else_the_home_cache(tmp_path, monkeypatch):
    log = _log(8)
    monkeypatch.setenv("NEURO_CACHE", str(tmp_path / "env"))
    assert E.cache_path("Pong", log, tmp_path / "given").parent == tmp_path / "given" / "atari-prediction"
    assert E.cache_path("Pong", log).parent == tmp_path / "env" / "atari-prediction"
    monkeypatch.delenv("NEURO_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert E.cache_path("Pong", log).parent == tmp_path / "home" / ".cache" / "neuro" / "atari-prediction"
    assert E.cache_path("Pong", log) != E.cache_path("Pong", _log(8, seed=1))  # keyed by the log's content
