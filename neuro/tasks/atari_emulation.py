"""The Arcade Learning Environment under the Atari prediction benchmark's settings (Javed, Shah, Sutton & White
2023; their ``ProtoPredictionEnvironment``): a policy's action log played frame by frame, each frame's
greyscale screen resized to 16 x 16, and the renderings cached on disk.

Emulator: ``ale_py.ALEInterface`` with ``random_seed`` 1731038949, ``repeat_action_probability`` 0.0 and
``frame_skip`` 1, the game's ROM from ale-py's bundled ROMs. Games are named as the benchmark names them
(``"Pong"``, ``"MsPacman"``): a ROM id of ale-py (``ms_pacman``) in CamelCase.

Action log: one byte per frame, ``R`` (82) = ``reset_game()``, any other byte ``b`` = ``act`` with the action
``b - 97`` of the game's minimal action set (``getMinimalActionSet()``); a log starts with ``R``.

Resize (:func:`resize`): OpenCV's ``INTER_LINEAR`` as ``cv2.resize(image, (16, 16))`` defines it, without
antialiasing: output pixel ``d`` reads the source at ``s = (d + 0.5) * (n_src / n_dst) - 0.5`` (half-pixel
centres), linearly between pixels ``floor(s)`` and ``floor(s) + 1`` with weights ``1 - frac(s)`` and
``frac(s)`` (``s < 0`` clamps to pixel 0), rows then columns, in exact arithmetic, rounded half up to an
integer. From 210 x 160 to 16 x 16 every weight is a multiple of 1/16, so OpenCV's fixed-point arithmetic
(11-bit weights, result rounded half up) gives the same integers; an OpenCV build whose vectorised path
truncates intermediate products may differ by one grey level in some pixels. The integers are stored, so
the benchmark's input ``value / 256`` is exact.

Cache: a rendering is written once per (game, SHA-256 of the log, ale-py version) as an ``.npz`` under the cache
directory (``cache_dir``, else the environment variable ``NEURO_CACHE``, else ``~/.cache/neuro``), in
``atari-prediction/``, atomically, with a checksum of its arrays; a file that cannot be read or whose checksum
or key disagrees is rendered again, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from neuro.io import cache_root

__all__ = ["RESET", "SEED", "Rendering", "cache_path", "emulator", "games", "minimal_action_set", "play",
           "render_cached", "resize", "standin"]

SEED = 1731038949  #: the benchmark's ALE random_seed
RESET = 82  #: ``R``: reset the game
FIRST = 97  #: ``a``: the minimal action set's first action
HOLD = 4  #: frames a stand-in action is held (the agents' frame skip)
SIZE = 16  #: the resized screen's side
FORMAT = 1  #: the cache file's format


class Rendering(NamedTuple):
    """A played log, one entry per frame: ``screens`` [N, 256] uint8 (the resized greyscale screen, row-major),
    ``actions`` [N] int8 (the minimal-set index taken, -1 on a reset frame), ``rewards`` [N] float32 (clipped to
    [-1, 1]; 0 on a reset frame), ``flags`` [N] uint8 (0 on a reset frame, else 1), ``action_set`` [n] int16 (the
    minimal set's actions as ALE's full-set values, 0..17)."""

    screens: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    flags: np.ndarray
    action_set: np.ndarray


@functools.lru_cache(maxsize=1)
def games() -> dict[str, str]:
    """The games ale-py bundles: the benchmark's name (CamelCase) -> ale-py's ROM id."""
    from ale_py import roms

    return {"".join(p.capitalize() for p in rom.split("_")): rom for rom in roms.get_all_rom_ids()}


def check_game(game: object) -> str:
    """``game`` if ale-py bundles it, else a one-line ``ValueError`` listing the valid names."""
    if not isinstance(game, str) or game not in games():
        raise ValueError(f"game={game!r} is invalid: valid games (the ROMs ale-py bundles) are "
                         f"{', '.join(sorted(games()))}")
    return game


def emulator(game: str):  # noqa: ANN201 (ale_py.ALEInterface)
    """A fresh ALE on ``game``'s ROM with the benchmark's settings (not yet reset by a log's first ``R``)."""
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", SEED)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.setInt("frame_skip", 1)
    ale.loadROM(str(roms.get_rom_path(games()[check_game(game)])))
    return ale


@functools.lru_cache(maxsize=None)
def minimal_action_set(game: str) -> tuple[int, ...]:
    """``game``'s minimal action set as ALE's full-set values (``Action.value``, 0..17)."""
    return tuple(int(a.value) for a in emulator(game).getMinimalActionSet())


@functools.lru_cache(maxsize=None)
def _weights(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: the two source pixels and the second one's weight (module docstring)."""
    s = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
    i0 = np.floor(s).astype(np.int64)
    w = s - i0
    low = i0 < 0
    i0[low], w[low] = 0, 0.0
    high = i0 >= n_src - 1
    i0[high], w[high] = n_src - 1, 0.0
    return i0, np.minimum(i0 + 1, n_src - 1), w


def resize(screens: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Bilinear resize of greyscale screens [..., H, W] (uint8) to [..., size, size] uint8 (module docstring)."""
    a = np.asarray(screens)
    r0, r1, wr = _weights(a.shape[-2], size)
    c0, c1, wc = _weights(a.shape[-1], size)
    rows = a[..., r0, :].astype(np.float64) * (1.0 - wr)[:, None] + a[..., r1, :].astype(np.float64) * wr[:, None]
    out = rows[..., c0] * (1.0 - wc) + rows[..., c1] * wc
    return np.floor(out + 0.5).astype(np.uint8)


def play(game: str, frames: int, policy: Callable[[int, bool], int]) -> tuple[Rendering, bytes]:
    """Play ``frames`` frames of ``game`` from a fresh emulator: frame ``i`` takes the byte ``policy(i, over)``
    (``over``: whether the game was over after frame ``i - 1``), resets on ``R``; returns the rendering and the
    bytes played."""
    ale = emulator(game)
    action_set = ale.getMinimalActionSet()
    raw = np.empty((min(frames, 1024), 210, 160), np.uint8)
    screens = np.empty((frames, SIZE * SIZE), np.uint8)
    actions = np.empty(frames, np.int8)
    rewards = np.zeros(frames, np.float32)
    flags = np.ones(frames, np.uint8)
    log = bytearray(frames)
    over = False
    for i in range(frames):
        b = policy(i, over)
        log[i] = b
        if b == RESET:
            ale.reset_game()
            actions[i], flags[i] = -1, 0
        else:
            actions[i] = b - FIRST
            rewards[i] = min(max(ale.act(action_set[b - FIRST]), -1), 1)
        ale.getScreenGrayscale(raw[i % len(raw)])
        if i % len(raw) == len(raw) - 1 or i == frames - 1:
            n = i % len(raw) + 1
            screens[i + 1 - n:i + 1] = resize(raw[:n]).reshape(n, -1)
        over = ale.game_over()
    sets = np.array([a.value for a in action_set], dtype=np.int16)
    return Rendering(screens, actions, rewards, flags, sets), bytes(log)


def standin(game: str, frames: int, seed: int) -> Rendering:
    """The stand-in policy played for ``frames`` frames: a reset, then actions drawn uniformly from the minimal
    set by ``numpy.random.default_rng(seed)``, each held for 4 frames, and a reset on the frame after a game
    over (a hold cut there)."""
    rng = np.random.default_rng(seed)
    n = len(minimal_action_set(game))
    held, left = 0, 0

    def policy(i: int, over: bool) -> int:
        nonlocal held, left
        if i == 0 or over:
            left = 0
            return RESET
        if left == 0:
            held, left = int(rng.integers(n)), HOLD
        left -= 1
        return FIRST + held

    return play(game, frames, policy)[0]


def cache_path(game: str, log: bytes, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the rendering of ``log`` on ``game`` is cached (module docstring)."""
    import ale_py

    digest = hashlib.sha256(log).hexdigest()[:24]
    return cache_root(cache_dir) / "atari-prediction" / f"{game}-{digest}-ale-py{ale_py.__version__}.npz"


def _key(game: str, log: bytes) -> dict:
    import ale_py

    return {"format": FORMAT, "game": game, "log_sha256": hashlib.sha256(log).hexdigest(),
            "frames": len(log), "ale_py": ale_py.__version__}


def _checksum(r: Rendering) -> str:
    h = hashlib.sha256()
    for a in r:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _read(path: Path, key: dict) -> Rendering:
    """The rendering cached at ``path``; ``ValueError`` (or an ``OSError``, a zip or format error) if it is not
    the one ``key`` names, intact."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        r = Rendering(*(z[f] for f in Rendering._fields))
    if meta.get("key") != key:
        raise ValueError(f"it was rendered for {meta.get('key')!r}, not {key!r}")
    if meta.get("sha256") != _checksum(r):
        raise ValueError("its arrays do not match their checksum")
    return r


def render_cached(game: str, log: bytes, cache_dir: str | os.PathLike | None = None) -> tuple[Rendering, bool]:
    """The rendering of ``log`` (a validated action log) on ``game``: read from the cache, or played, written there
    and returned; and whether it was played now."""
    from neuro import io

    path, key = cache_path(game, log, cache_dir), _key(game, log)
    if path.exists():
        try:
            return _read(path, key), False
        except Exception as e:  # a corrupt or foreign file: played again below and replaced
            warnings.warn(f"the cached rendering {str(path)!r} cannot be used ({type(e).__name__}: {e}); "
                          "rendering it again", stacklevel=2)
    r, _ = play(game, len(log), lambda i, over: log[i])
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save_npz(path, meta=np.array(json.dumps({"key": key, "sha256": _checksum(r)})), **r._asdict())
    return r, True
