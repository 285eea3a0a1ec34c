"""The compiled engine on networks with parameters outside the loss's reach, against the torch path: fixed
parameters (``net.fixed_params``: the rate RNN built with ``bias=False``, its ``b`` and ``b_out`` held at 0), to
which the torch path gives no gradient, so that ``torch.optim`` neither steps them nor makes state for them; and
the parameters a network learns by its own rule (``net.local_params``: the rate RNN's decorrelation layer ``D``,
stepped by plain SGD at its rate on ``net.local_estimate`` summed since the last update).

Oracle (``tests/neuro/test_engine.py``'s runs and tolerances): for every combination of
``neuro.engine.HOLDS_FIXED`` (with a decorrelation layer: ``HOLDS_LOCAL``), training with ``engine="compiled"``
gives, in float64, the parameters, the optimizer state, the rule state, the loop's sums and the per-step losses
and metrics of ``engine="torch"`` to 1e-10 relative, the fixed parameters still 0 and without optimizer state,
``D`` learnt. A combination the engines do not run so falls back to torch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import models
from neuro import rules, tasks
from neuro.engine import HOLDS_FIXED, HOLDS_LOCAL, REGISTRY, select

# the oracle's helpers (test files are imported by path, --import-mode=importlib: no package to import from)
_spec = importlib.util.spec_from_file_location("_engine_oracle", Path(__file__).with_name("test_engine.py"))
E = sys.modules.setdefault("_engine_oracle", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(E)
RUNS = E.RUNS

#: the bias-free networks each combination is run with: the paper's (vanilla, Xavier) on every run, and a leaky
#: one on the continuing run
VARIANTS = (({"bias": False, "init": "xavier"}, tuple(RUNS)), ({"bias": False, "alpha": 0.5}, ("continuing",)))
#: the networks with a decorrelation layer each combination of HOLDS_LOCAL is run with (the paper's: bias-free,
#: Xavier; and with biases), with the runs
DECORRELATED = (({"bias": False, "init": "xavier", "decorrelation": 0.1}, (("continuing", 1), ("continuing", 2),
                                                                          ("episodic", 1))),
                ({"decorrelation": 0.1}, (("continuing", 1),)))
#: the perturbation rules at sigma = 0.1 (anp-time 0.2): a loss difference over sigma^2 amplifies rounding, and under
#: RMSprop (each update applies the estimate whole) the Xavier network's runs differ after 60 steps by 2e-10 at the
#: oracle's 0.05 (np), and by 5e-9 at 0.1 (anp-time, with biases or without: the torch path's own sensitivity)
RULE_OPTIONS = {**{r: {"sigma": 0.1} for r in ("np", "anp", "wp")}, "anp-time": {"sigma": 0.2}}


def _cases() -> list[Any]:
    out = []
    for c in REGISTRY:
        if (c.model, c.rule) not in HOLDS_FIXED:
            continue
        for variant, runs in VARIANTS:
            for run in runs:
                if E.RUN_LOSSES.get(run, tasks.make(RUNS[run][0], **RUNS[run][1]).loss) not in c.losses:
                    continue
                for opt, batch in E._optimizer_batches(c.optimizers, run):
                    name = f"{c.model}-{c.rule}-{'-'.join(f'{k}{v}' for k, v in variant.items())}-{run}-{opt}-b{batch}"
                    out.append(pytest.param(c, variant, run, opt, batch, id=name))
    return out


@pytest.mark.parametrize("c,variant,run,opt,batch", _cases())
def test_compiled_holds_fixed_params_as_torch(tmp_path, c, variant, run, opt, batch):
    _check(tmp_path, c, variant, run, opt, batch)


def _decorrelated_cases() -> list[Any]:
    out = []
    for model, rule, opt in HOLDS_LOCAL:
        c = next(c for c in REGISTRY if (c.model, c.rule) == (model, rule))
        for variant, runs in DECORRELATED:
            for run, batch in runs:
                name = f"{model}-{rule}-{'-'.join(f'{k}{v}' for k, v in variant.items())}-{run}-{opt}-b{batch}"
                out.append(pytest.param(c, variant, run, opt, batch, id=name))
    return out


@pytest.mark.parametrize("c,variant,run,opt,batch", _decorrelated_cases())
def test_compiled_learns_the_decorrelation_layer_as_torch(tmp_path, c, variant, run, opt, batch):
    _check(tmp_path, c, variant, run, opt, batch)


@pytest.mark.parametrize("opt", ["adam", "rmsprop"])  # (SGD at the oracle's rate diverges on these estimates)
def test_wp_drawing_every_step_leaves_fixed_params_undrawn_as_torch(tmp_path, opt):
    """WP with a new perturbation every step: the engine draws none for the fixed parameters, as the rule."""
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("rate", "wp"))
    _check(tmp_path, c, VARIANTS[0][0], "continuing", opt, 1, resample="step")


def _check(tmp_path: Path, c: Any, variant: dict[str, Any], run: str, opt: str, batch: int, **rule_opts: Any) -> None:
    """The oracle (module docstring) on one case."""
    net, rule, task, settings = E._setup(c, variant, run, **{**RULE_OPTIONS.get(c.rule, {}), **rule_opts})
    fixed = net.fixed_params
    assert fixed == (() if variant.get("bias", True) else ("b", "b_out"))
    assert bool(net.local_params) == ("decorrelation" in variant)
    got = {}
    for engine in ("torch", "compiled"):
        got[engine] = E._train(net, rule, task, tmp_path / engine, optimizer=opt, batch=batch, engine=engine,
                             checkpoint_every=20, **settings)
        assert got[engine][0].engine == engine
    (h_t, loop_t, ck_t), (h_c, loop_c, ck_c) = got["torch"], got["compiled"]
    assert h_c.steps == h_t.steps == settings["steps"] and h_c.updates == h_t.updates >= 3
    E._same((h_t, loop_t, ck_t), (h_c, loop_c, ck_c), loop_state=True)
    E._close(loop_t.opt.state_dict(), loop_c.opt.state_dict(), "the loop's optimizer")
    E._close(E._metrics(ck_t["metrics"]), E._metrics(ck_c["metrics"]), "checkpoint metrics")
    E._close(loop_t.acc, loop_c.acc, "the loop's summed estimates")
    E._close(loop_t.acc_local, loop_c.acc_local, "the loop's own sums")
    held = (*fixed, *net.local_params)
    for loop in (loop_t, loop_c):
        assert all(float(loop.params[k].abs().max()) == 0.0 for k in fixed)
        assert not any(loop.params[k] in loop.opt.state for k in held)
        assert len(loop.opt.state) == (0 if opt == "sgd" else len(loop.params) - len(held))
    init = net.init_params(0, torch.float64)
    for k in ("W_in", *net.local_params):  # learnt
        assert float(loop_c.params[k].sub(init[k]).abs().max()) > 1e-3


@pytest.mark.parametrize("rule_name", ["rflo", "eprop"])
def test_fixed_params_elsewhere_fall_back_to_torch(rule_name):
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1, bias=False)
    rule = rules.make(rule_name, net, loss="mse")
    assert (net.name, rule_name) not in HOLDS_FIXED
    assert select(net, rule, "auto", "adam", torch.float64, torch.device("cpu")) == ("torch", None)
    with pytest.raises(ValueError, match="engine='compiled' is invalid"):
        select(net, rule, "compiled", "adam", torch.float64, torch.device("cpu"))
    assert select(net, rules.make("np", net, loss="mse"), "auto", "adam", torch.float64, torch.device("cpu"))[0] == "compiled"


@pytest.mark.parametrize("rule_name,opt", [("bptt", "sgd"), ("np", "adam")])
def test_decorrelation_elsewhere_falls_back_to_torch(rule_name, opt):
    net = models.make("rate", n_in=1, n_hidden=4, n_out=1, bias=False, decorrelation=1e-3)
    rule = rules.make(rule_name, net, loss="mse")
    assert (net.name, rule_name, opt) not in HOLDS_LOCAL
    assert select(net, rule, "auto", opt, torch.float64, torch.device("cpu")) == ("torch", None)
    assert select(net, rules.make("np", net, loss="mse"), "auto", "sgd", torch.float64, torch.device("cpu"))[0] == "compiled"


@pytest.mark.parametrize("variant", [VARIANTS[0][0], DECORRELATED[0][0]], ids=["bias-free", "decorrelated"])
def test_wp_range_in_parts_is_the_range(tmp_path, monkeypatch, variant):
    """A WP range whose perturbations would exceed ``MAX_DRAWN`` runs as consecutive parts of 3 steps (its noise
    drawn part by part): the same run as torch's."""
    from neuro.engine.perturb import WPEngine

    net = models.make("rate", n_in=1, n_hidden=4, n_out=1, **variant)
    per_step = sum(v.numel() for k, v in net.init_params(0).items() if k not in net.local_params)
    monkeypatch.setattr(WPEngine, "MAX_DRAWN", 3 * per_step)
    c = next(c for c in REGISTRY if (c.model, c.rule) == ("rate", "wp"))
    # (with D: SGD, the one optimizer the engine holds it under, on which a new perturbation every step diverges at
    # the oracle's rate: the perturbation held per sequence there; the parts still split the range and D's sum)
    dec = "decorrelation" in variant
    _check(tmp_path, c, variant, "continuing", "sgd" if dec else "adam", 1, resample="sequence" if dec else "step")
