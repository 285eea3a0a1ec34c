"""Atari prediction: the value of a fixed policy's play of an Atari game, the ALE benchmark of Javed, Shah,
Sutton & White (2023), "Scalable real-time recurrent learning using sparse connections and selective
learning", arXiv 2302.05326 (their ``ProtoPredictionEnvironment`` and ``atari_experiment.cpp``).

The stream is a policy's action log played in the Arcade Learning Environment under the benchmark's settings
(:mod:`neuro.tasks.atari_emulation`: the emulator, the log's format, the resize and the cache), one input per
emulator frame (``n_in = 276``)::

    x[0:256]    the greyscale 210 x 160 screen after the frame, resized to 16 x 16 (bilinear), row-major, / 256
    x[256:274]  one-hot of the action taken at the frame, in the slot of its value in ALE's full action set
                of 18 (``Action.value`` of the minimal set's action ``b - 97``); all 18 zero on a reset frame
    x[274]      the frame's reward clipped to [-1, 1] (0 on a reset frame): the cumulant
    x[275]      1, or 0 on the frame a reset produced: the continuation flag

Target (``n_out = 1``, mse, every step counts): the realised return ``G_t = c_{t+1} + gamma_{t+1} G_{t+1}``
with ``c = x[274]`` and ``gamma_{t+1} = gamma x_{t+1}[275]`` (``gamma = 0.98``): the discounted clipped
rewards up to the end of the episode, cut at the next reset. It is the value TD(lambda) learns with
``cumulant_input=274, discount_input=275`` (:mod:`neuro.rules.td`), so the reported ``(v_t - G_t)^2`` is the
benchmark's error.

``policy``: an action log (a file) or a directory holding ``<game>NoFrameskip-v4.txt`` (the benchmark's
logs: ``R`` = reset, byte ``b`` = the minimal set's action ``b - 97``). A log starts with ``R``, so after its
last frame the stream continues with its first: the stream is the log's rendering (cached on disk) looped,
as long as asked, the same for every seed and in every column of a batch (the policy is deterministic; the
seeds of a run differ in the network's initialisation). ``policy=None``: a stand-in policy, not a trained
agent -- actions drawn uniformly from the minimal set, each held for 4 frames, and a reset after a game over,
``standin_frames`` frames of it looped, played (not cached on disk) per stream seed from the seed, each batch
column starting at its own frame of the loop, drawn from the seed too.

Against the authors' code: their first step is the log's second byte (the emulator reset once before it),
here the first frame is the reset of the log's ``R``; their one-hot uses slot ``b - 97`` (the minimal set's
index), here the full set's value (a relabelling of input units, immaterial to a network whose input weights
are drawn independently); their logs were as long as the run, these loop.

``python -m neuro.tasks.atari_prediction --games Pong,Breakout --policy DIR`` renders the games' caches ahead
of a run, printing frames per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from neuro.contract import check_positive

from . import atari_emulation as E
from .base import AbstractTask, Block

__all__ = ["AtariPrediction", "main"]

N_ACTIONS = 18  #: ALE's full action set
CUMULANT, FLAG = 274, 275  #: the inputs of the clipped reward and of the continuation flag
_BLOCK = 2048  # steps per internal block


def log_path(policy: str | os.PathLike, game: str) -> Path:
    """The action log ``policy`` names for ``game``: the file itself, or ``<game>NoFrameskip-v4.txt`` in a
    directory; ``ValueError`` naming the path if there is none."""
    p = Path(policy).expanduser()
    if p.is_dir():
        p = p / f"{game}NoFrameskip-v4.txt"
    if not p.is_file():
        raise ValueError(f"policy={str(policy)!r} is invalid: no action log {str(p)!r}")
    return p


def read_log(path: Path, game: str) -> bytes:
    """The action log at ``path``, checked: not empty, starts with ``R``, every other byte an action of
    ``game``'s minimal set (``ValueError`` naming the byte, its offset and the valid range)."""
    log = path.read_bytes()
    n = len(E.minimal_action_set(game))
    valid = f"'R' (82) or {E.FIRST}..{E.FIRST + n - 1} ('a'..'{chr(E.FIRST + n - 1)}', {game}'s {n} minimal-set actions)"
    if not log:
        raise ValueError(f"action log {str(path)!r} is empty: expected 'R' then one byte per frame")
    if log[0] != E.RESET:
        raise ValueError(f"action log {str(path)!r} starts with byte {log[0]} ({chr(log[0])!r}) at offset 0: "
                         "a log must start with 'R' (82)")
    a = np.frombuffer(log, np.uint8)
    bad = np.flatnonzero((a != E.RESET) & ((a < E.FIRST) | (a >= E.FIRST + n)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"action log {str(path)!r} has byte {log[i]} ({chr(log[i])!r}) at offset {i}: valid are {valid}")
    return log


def returns(rewards: np.ndarray, flags: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = c_{t+1} + gamma flag_{t+1} G_{t+1}`` [N] of a looped rendering (frame ``N`` is frame 0, a reset)."""
    n = len(rewards)
    g = np.zeros(n, np.float64)
    nxt = 0.0  # G_0 times flag_0 = 0: the loop's first frame is a reset
    for t in range(n - 1, -1, -1):
        u = (t + 1) % n
        nxt = g[t] = float(rewards[u]) + gamma * float(flags[u]) * (nxt if u else 0.0)
    return g


@dataclasses.dataclass(frozen=True)
class AtariPrediction(AbstractTask):
    """The value of ``policy``'s play of ``game`` (module docstring): a recorded action log, or with
    ``policy=None`` a stand-in policy (random actions; not a trained agent)."""

    game: str = "Pong"
    policy: str | None = None
    cache_dir: str | None = None
    gamma: float = 0.98
    standin_frames: int = 2_000

    name = "atari-prediction"
    loss = "mse"
    episodic = False

    def __post_init__(self) -> None:
        E.check_game(self.game)
        if isinstance(self.policy, os.PathLike):
            object.__setattr__(self, "policy", os.fspath(self.policy))
        if isinstance(self.cache_dir, os.PathLike):
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.policy is not None and not isinstance(self.policy, str):
            raise ValueError(f"policy={self.policy!r} is invalid: expected a path (a log or a directory of logs) or None")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma={self.gamma!r} is invalid: must be a number in [0, 1]")
        check_positive("standin_frames", self.standin_frames, integer=True)
        if self.policy is not None:
            read_log(log_path(self.policy, self.game), self.game)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        who = "" if self.policy is not None else (" [stand-in policy: uniform random minimal-set actions held for "
                                                  "4 frames, reset on game over; not a trained agent]")
        return f"{type(self).__name__}({fields}){who}"

    @property
    def description(self) -> str:
        """What the stream plays, in words."""
        if self.policy is None:
            return (f"{self.game}, a stand-in policy (uniform random minimal-set actions held for 4 frames, reset on "
                    f"game over; {self.standin_frames} frames looped, drawn per stream seed)")
        return f"{self.game}, the action log {str(log_path(self.policy, self.game))!r} looped"

    @property
    def n_in(self) -> int:
        return 256 + N_ACTIONS + 2

    @property
    def n_out(self) -> int:
        return 1

    def rendering(self) -> E.Rendering:
        """The rendering of the policy's log (``policy`` set): from the cache, or played and cached now."""
        if self.policy is None:
            raise ValueError("policy=None plays a stand-in per stream seed: there is no single rendering")
        return self._rendered[0]

    @functools.cached_property
    def _rendered(self) -> tuple[E.Rendering, np.ndarray]:
        log = read_log(log_path(self.policy, self.game), self.game)
        r, _ = E.render_cached(self.game, log, self.cache_dir)
        return r, returns(r.rewards, r.flags, self.gamma)

    def __getstate__(self) -> dict:
        """Pickled without the rendering held in memory (a copy sent to a worker reads the cache again)."""
        return {k: v for k, v in self.__dict__.items() if k != "_rendered"}

    def _inputs(self, r: E.Rendering, idx: np.ndarray) -> np.ndarray:
        """The inputs [len(idx), 276] of the rendering's frames ``idx``."""
        x = np.zeros((len(idx), self.n_in), np.float32)
        x[:, :256] = r.screens[idx] / np.float32(256)
        a = r.actions[idx].astype(np.int64)
        on = np.flatnonzero(a >= 0)
        x[on, 256 + r.action_set[a[on]].astype(np.int64)] = 1.0
        x[:, CUMULANT] = r.rewards[idx]
        x[:, FLAG] = r.flags[idx]
        return x

    def _blocks(self, rng: np.random.Generator, batch: int) -> Iterator[Block]:
        if self.policy is None:  # one stand-in play per seed; each column from its own frame of the loop
            r, g = _standin(self.game, self.standin_frames, int(rng.integers(2**63)), self.gamma)
            starts = rng.integers(len(g), size=batch)
        else:
            (r, g), starts = self._rendered, np.zeros(batch, np.int64)
        t = 0
        while True:
            xs = np.empty((_BLOCK, batch, self.n_in), np.float32)
            ys = np.empty((_BLOCK, batch, 1), np.float32)
            done: dict[int, int] = {}  # columns at the same frame: copied
            for b, start in enumerate(starts.tolist()):
                if start in done:
                    xs[:, b], ys[:, b] = xs[:, done[start]], ys[:, done[start]]
                    continue
                idx = (t + start + np.arange(_BLOCK)) % len(g)
                xs[:, b], ys[:, b, 0], done[start] = self._inputs(r, idx), g[idx], b
            t += _BLOCK
            yield xs, ys, np.ones((_BLOCK, batch), dtype=bool)


@functools.lru_cache(maxsize=4)
def _standin(game: str, frames: int, seed: int, gamma: float) -> tuple[E.Rendering, np.ndarray]:
    r = E.standin(game, frames, seed)
    return r, returns(r.rewards, r.flags, gamma)


def main(argv: Sequence[str] | None = None) -> int:
    """Render (and cache) the games' logs ahead of a run, printing frames per second."""
    p = argparse.ArgumentParser(prog="python -m neuro.tasks.atari_prediction",
                                description="Render the Atari prediction caches of the games' action logs.")
    p.add_argument("--games", required=True, help="comma-separated game names, e.g. Pong,Breakout")
    p.add_argument("--policy", required=True, help="a directory holding <Game>NoFrameskip-v4.txt (or one log)")
    p.add_argument("--cache-dir", default=None, help="the cache's directory (default: $NEURO_CACHE or ~/.cache/neuro)")
    args = p.parse_args(argv)
    try:
        names = [g.strip() for g in args.games.split(",") if g.strip()]
        logs = {g: read_log(log_path(args.policy, E.check_game(g)), g) for g in names}
        for g, log in logs.items():
            t = time.perf_counter()
            r, played = E.render_cached(g, log, args.cache_dir)
            s = time.perf_counter() - t
            how = f"rendered in {s:.1f} s ({len(log) / s:,.0f} frames/s)" if played else "already cached"
            print(f"{g}: {len(log):,} frames {how}: {E.cache_path(g, log, args.cache_dir)}", flush=True)
    except (ValueError, OSError) as e:
        print(f"atari_prediction: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
