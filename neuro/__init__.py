"""neuro: online and local learning in recurrent networks, spiking and rate.

The public API (how the code is organised and read: ``docs/design.md``)::

    import models, neuro
    net = models.make("lif", n_in=2, n_hidden=64, n_out=1)
    params = net.init_params(seed=0)
    task = neuro.tasks.make("copy", delay=10)
    rule = neuro.rules.make("bptt", net)
    history = neuro.train(net, rule, task, steps=20_000, seed=0)
    trace = neuro.simulate(net, params, xs, backend="torch")
    g = neuro.grad_estimate(net, params, "bptt", xs, ys)
"""

from __future__ import annotations

from . import backends, losses, rules, surrogate, tasks
from .backends import Trace, simulate
from .comparison import Results, compare
from .contract import AbstractNetwork, Params
from .gradients import alignment, grad_estimate, sequence_loss
from .rules import Needs
from .training import History, TrainingDiverged, train

__version__ = "0.1.0"

__all__ = ["AbstractNetwork", "History", "Needs", "Params", "Results", "Trace", "TrainingDiverged", "alignment", "backends",
           "compare", "grad_estimate", "losses", "rules", "sequence_loss", "simulate", "surrogate", "tasks", "train"]
