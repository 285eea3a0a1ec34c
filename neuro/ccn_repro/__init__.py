"""Reproductions of Javed, Shah, Sutton & White (2023), "Scalable real-time recurrent learning using
columnar-constructive networks", JMLR 24: columnar, CCN and constructive networks (exact RTRL) against T-BPTT
on a dense LSTM, all learning a value prediction by TD(lambda), on trace patterning and on Atari prediction.

``python -m neuro.ccn_repro --config configs/ccn_protocol.toml --out runs/ccn [--jobs 2] [--stage pilot|main|all]
[--only M,..] [--games G,..] [--partial] [--estimate] [--json F] [--md F] [--plot F.png]``

One TOML config per experiment (:mod:`.config`). Top level: ``task``, ``task_options``, ``valid_patterns``
(``"per-seed"``: the task option ``pattern_seed=None``, each seed's stream draws its own valid patterns; TOML
has no null), ``games`` (one experiment per game, as the task option ``game``), ``seeds``, ``steps``,
``optimizer``, ``optimizer_options``, ``lr`` or ``lrs``, ``chunk``, ``log_every``, ``dtype``, ``engine``,
``budget_from``, ``score_tail``, ``[td]`` (the options of ``td-lambda``), ``[pilot]`` (``steps``, ``seeds``)
and ``[methods.NAME]``: ``model``, ``hidden``, ``model_options``, ``inner`` (the rule under ``td-lambda``),
``k`` (T-BPTT's truncation), ``schedule`` (``"total:per-stage"`` with ``stage_steps``, the stage length at the
method's ``steps``, scaled in proportion for a run of another length, e.g. the pilot's), and the
per-method overrides ``optimizer_options``, ``steps``, ``seeds``, ``lr`` / ``lrs``. A T-BPTT method without
``hidden`` gets the largest dense LSTM with ``params x (k + 1)`` within ``budget_from``'s learnable parameters.

Stages (:mod:`.runs`): the pilot runs every (method, learning rate) of ``lrs`` on the pilot's seeds and
steps; each method's learning rate is the one with the fewest diverged seeds, then the lowest mean score
(``OUT/pilot.json``), and the best T-BPTT method is chosen on the pilot too; the main runs train each method
at its chosen rate on its seeds and steps. Every run is a file of its own, written when it finishes: a
reproduction started again runs only what has no file. ``--partial`` runs nothing and reports what is
finished (seeds done / planned shown); ``--estimate`` times ``--estimate-steps`` steps of each method and
prints the config's projected core-hours.

Scores and reports (:mod:`.report`): the mean squared return error over the last ``score_tail`` steps
(mean ± s.e. over seeds), paired differences of each RTRL method against each T-BPTT method and against the
pilot's best (same seed: same stream; over the same steps), one table per experiment and, for several games,
one across games; the curves, mean ± s.e., into ``--plot``.
"""

from __future__ import annotations

from .cli import main
from .config import learnable_params, lstm_hidden_for
from .report import mean_se, paired, score, tail_for
from .runs import choose_lr, run_one

__all__ = ["choose_lr", "learnable_params", "lstm_hidden_for", "main", "mean_se", "paired", "run_one", "score",
           "tail_for"]
