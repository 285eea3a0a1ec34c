"""Evidence (cue) accumulation: the e-prop task of Bellec et al. (2020), "A solution to the learning
dilemma for recurrent networks of spiking neurons", Nature Communications 11:3625, Methods and Fig. 3
(code IGITUGraz/eligibility_propagation, ``generate_click_task_data``: 40 inputs, 7 cues of 100 ms every
150 ms, 2250 ms trials, 40 Hz cues, 10 Hz noise, ``p_group = 0.3``).

``n_in = 4 * channels`` (= 40) Poisson spike trains at ``dt`` = 1 ms, in four groups of ``channels``::

    x[0:10]    left cues:   40 Hz during a left cue, silent otherwise
    x[10:20]   right cues:  40 Hz during a right cue
    x[20:30]   recall cue:  40 Hz during the recall period
    x[30:40]   background:  10 Hz throughout

A trial (2250 ms by default): ``n_cues`` cues, each ``spacing_ms`` of silence then ``cue_ms`` of cue (cue
k occupies [50 + 150 k, 150 + 150 k) ms), a delay of ``delay_ms`` (1050), then ``recall_ms`` (150) of
recall cue. Each trial picks a majority side at random; each cue is on that side with probability
``1 - p_group`` (0.7). Target (``n_out = 2``, ce): the side with more cues (0 left, 1 right; ``n_cues`` is
odd, so there is no tie), one-hot, on the recall steps only (``mask``; ``ys`` is zero elsewhere).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neuro.contract import check_positive

from .base import AbstractTask, Block

__all__ = ["CueAccumulation"]


@dataclasses.dataclass(frozen=True)
class CueAccumulation(AbstractTask):
    n_cues: int = 7
    cue_ms: float = 100.0
    spacing_ms: float = 50.0
    delay_ms: float = 1050.0
    recall_ms: float = 150.0
    rate_hz: float = 40.0
    noise_hz: float = 10.0
    p_group: float = 0.3
    channels: int = 10
    dt_ms: float = 1.0

    name = "cue-accumulation"
    loss = "ce"
    episodic = True

    def __post_init__(self) -> None:
        check_positive("n_cues", self.n_cues, integer=True)
        if self.n_cues % 2 == 0:
            raise ValueError(f"n_cues={self.n_cues!r} is invalid: must be odd, so that one side has more cues")
        check_positive("dt_ms", self.dt_ms)
        for f in ("cue_ms", "recall_ms", "spacing_ms", "delay_ms"):
            check_positive(f, getattr(self, f), allow_zero=f in ("spacing_ms", "delay_ms"))
            steps = getattr(self, f) / self.dt_ms
            if abs(steps - round(steps)) > 1e-9:
                raise ValueError(f"{f}={getattr(self, f)!r} is invalid: must be a multiple of dt_ms={self.dt_ms!r}")
        for f in ("rate_hz", "noise_hz"):
            check_positive(f, getattr(self, f), allow_zero=True)
            if getattr(self, f) * self.dt_ms / 1000.0 > 1:
                raise ValueError(f"{f}={getattr(self, f)!r} is invalid: must be <= 1000 / dt_ms "
                                 f"(one spike per step)")
        check_positive("p_group", self.p_group, allow_zero=True)
        if self.p_group > 0.5:
            raise ValueError(f"p_group={self.p_group!r} is invalid: must be in [0, 0.5] (the minority's share)")
        check_positive("channels", self.channels, integer=True)

    def _steps(self, ms: float) -> int:
        return round(ms / self.dt_ms)

    @property
    def n_in(self) -> int:
        return 4 * self.channels

    @property
    def n_out(self) -> int:
        return 2

    @property
    def trial_steps(self) -> int:
        cue_period = self.n_cues * self._steps(self.spacing_ms + self.cue_ms)
        return cue_period + self._steps(self.delay_ms) + self._steps(self.recall_ms)

    def cue_windows(self) -> list[tuple[int, int]]:
        """The steps ``[start, stop)`` of each cue."""
        every, silence = self._steps(self.spacing_ms + self.cue_ms), self._steps(self.spacing_ms)
        return [(k * every + silence, (k + 1) * every) for k in range(self.n_cues)]

    def _trial(self, rng: np.random.Generator, batch: int) -> Block:
        T, C = self.trial_steps, self.channels
        majority = rng.random(batch) < 0.5                                     # True: right is the majority
        right = (rng.random((self.n_cues, batch)) >= self.p_group) == majority  # side of each cue [n_cues, B]
        label = (right.sum(0) > self.n_cues // 2).astype(np.int64)             # [B]
        rate = np.zeros((T, batch, 4), dtype=np.float32)                       # spikes/step per group
        p_cue, p_noise = self.rate_hz * self.dt_ms / 1000.0, self.noise_hz * self.dt_ms / 1000.0
        for k, (start, stop) in enumerate(self.cue_windows()):
            rate[start:stop, np.arange(batch), right[k].astype(np.int64)] = p_cue
        recall = T - self._steps(self.recall_ms)
        rate[recall:, :, 2] = p_cue
        rate[:, :, 3] = p_noise
        xs = (rng.random((T, batch, 4, C), dtype=np.float32) < rate[..., None]).reshape(T, batch, 4 * C).astype(np.float32)
        ys = np.zeros((T, batch, 2), dtype=np.float32)
        ys[recall:] = np.eye(2, dtype=np.float32)[label]
        mask = np.zeros((T, batch), dtype=bool)
        mask[recall:] = True
        return xs, ys, mask
