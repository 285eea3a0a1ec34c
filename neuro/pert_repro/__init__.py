"""Reproductions of Garcia Fernandez, Keemink & van Gerven (2024), "Gradient-free training of recurrent neural
networks using random perturbations" (arXiv:2405.08967, code jesusgf96/NP_RNNs): ANP in time, ANP, NP and WP,
each with and without the decorrelation layer, against one-step truncated BPTT (the authors' "BPTT") and
BPTT, on their copy and Mackey-Glass settings.

``python -m neuro.pert_repro --config configs/perturbation_copy.toml --out docs/results/runs/perturbation-copy
[--jobs 2] [--only G,..] [--partial] [--estimate] [--json F] [--md F] [--plot F.png]``

One TOML config per experiment (:mod:`.config`, which also states how the authors' learning rate, loss and
decorrelation rate map onto this library's). Every run is a file of its own, written when it finishes
(:mod:`.runs`): started again, a reproduction runs only what has no file; ``--partial`` runs nothing and
reports what is finished. Reports (:mod:`.report`): the final training and test MSE (and the copy task's error
bits), epochs to a threshold, mean ± s.e. over seeds, the claims' paired differences, learning curves.
"""

from __future__ import annotations

from .cli import main
from .config import library_lr
from .report import final, paired
from .runs import evaluate, run_one

__all__ = ["evaluate", "final", "library_lr", "main", "paired", "run_one"]
