"""The config of a perturbation-learning reproduction (one TOML file per experiment) and the runs it plans.

Top level: ``experiment`` (``"copy"`` or ``"mackey-glass"``: what is measured each epoch), ``task``,
``task_options``, ``hidden``, ``model_options`` (the rate network's: ``init``, ``bias``), ``epochs``,
``epoch_steps`` (the steps of one epoch: one pass over the training sequence), ``update`` (``"epoch"``: one
update per epoch, the estimates of its steps summed, as the authors' copy task; ``"step"``: an update every
step), ``seeds``, ``sigma`` (the noise of every perturbation rule), ``lr`` (the authors' learning rate),
``decorrelation`` (a list of the decorrelation layer's rates per update to run, 0 = without the layer),
``threshold`` (the training MSE whose first crossing is reported as epochs to threshold), ``dtype``, ``engine``,
and ``[methods.NAME]`` with ``rule``, ``optimizer`` and ``rule_options``.

The authors' updates in this library's normalisation (:func:`library_lr`): their loss is torch's
``MSELoss``, the mean over the ``n_out`` outputs, where this library's ``mse`` is half the sum, so their
``L`` is ``2 / n_out`` times ours; NP and WP divide by ``sigma`` where ours divide by ``sigma^2``; ANP's
estimate has no sigma. So their ``lr`` is ours at ``lr 2 sigma / n_out`` (np, wp), ``lr 2 / n_out`` (anp,
anp-time); Adam (their BP) steps by the estimate's direction, whatever its scale: ``lr`` unchanged. Their
decorrelation update is the mean over a sequence's steps where this library sums the estimates of an
update's steps: with ``update = "epoch"`` the rate is divided by ``epoch_steps``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENTS", "check", "library_lr", "load", "runs", "spec"]

EXPERIMENTS = ("copy", "mackey-glass")
TOP = ("experiment", "task", "task_options", "hidden", "model_options", "epochs", "epoch_steps", "update", "seeds",
       "sigma", "lr", "decorrelation", "threshold", "dtype", "engine", "methods")
METHOD = ("rule", "optimizer", "rule_options")
SIGMA_RULES = ("np", "wp")
ACTIVITY_RULES = ("anp", "anp-time")
PERTURBATION = SIGMA_RULES + ACTIVITY_RULES


def library_lr(rule: str, optimizer: str, lr: float, sigma: float, n_out: int) -> float:
    """The learning rate of this library's ``rule`` that makes the update the authors' at their ``lr``
    (module docstring)."""
    if optimizer != "sgd":
        return lr
    if rule in SIGMA_RULES:
        return lr * 2.0 * sigma / n_out
    if rule in ACTIVITY_RULES:
        return lr * 2.0 / n_out
    return lr


def load(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"--config {str(path)!r} cannot be read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {str(path)!r} is not valid TOML: {e}") from None
    return check(cfg, str(path))


def _bad(where: str, key: str, value: Any, what: str) -> ValueError:
    return ValueError(f"{where}: {key}={value!r} is invalid: {what}")


def check(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """The config with its values checked (one-line ``ValueError`` naming the first bad key)."""
    unknown = sorted(set(cfg) - set(TOP))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}: valid keys are {', '.join(TOP)}")
    missing = [k for k in TOP if k not in cfg and k not in ("dtype", "engine", "model_options", "task_options")]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    if cfg["experiment"] not in EXPERIMENTS:
        raise _bad(where, "experiment", cfg["experiment"], f"valid are {', '.join(EXPERIMENTS)}")
    for k in ("hidden", "epochs", "epoch_steps"):
        if isinstance(cfg[k], bool) or not isinstance(cfg[k], int) or cfg[k] < 1:
            raise _bad(where, k, cfg[k], "expected an integer >= 1")
    if cfg["update"] not in ("epoch", "step"):
        raise _bad(where, "update", cfg["update"], "valid are 'epoch', 'step'")
    for k in ("sigma", "lr", "threshold"):
        if isinstance(cfg[k], bool) or not isinstance(cfg[k], (int, float)) or not cfg[k] > 0:
            raise _bad(where, k, cfg[k], "expected a number > 0")
    if not (isinstance(cfg["seeds"], list) and cfg["seeds"] and all(isinstance(s, int) and not isinstance(s, bool)
                                                                   and s >= 0 for s in cfg["seeds"])):
        raise _bad(where, "seeds", cfg["seeds"], "expected a list of integers >= 0")
    dec = cfg["decorrelation"]
    if not (isinstance(dec, list) and dec and all(isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0
                                                 for d in dec)):
        raise _bad(where, "decorrelation", dec, "expected a list of rates >= 0 (0: without the layer)")
    if not isinstance(cfg["methods"], dict) or not cfg["methods"]:
        raise _bad(where, "methods", cfg.get("methods"), "expected tables [methods.NAME]")
    for name, m in cfg["methods"].items():
        bad = sorted(set(m) - set(METHOD))
        if bad or "rule" not in m or "optimizer" not in m:
            raise ValueError(f"{where}: methods.{name} needs rule and optimizer (and may give rule_options): "
                             f"{'unknown key ' + repr(bad[0]) if bad else 'missing one'}")
    out = {"dtype": "float32", "engine": "auto", "model_options": {}, "task_options": {}, **cfg}
    for n in out["methods"]:
        for d in dec:
            _build(spec(out, n, d, out["seeds"][0]))  # every method builds (a ValueError names what is wrong)
    return out


def label(method: str, rate: float) -> str:
    """A run group's name: the method, ``+decor`` where the decorrelation layer is on."""
    return method if not rate else f"{method}+decor"


def spec(cfg: dict[str, Any], method: str, rate: float, seed: int) -> dict[str, Any]:
    """Everything one run depends on (its result is a function of this and nothing else)."""
    import neuro.tasks

    m = cfg["methods"][method]
    task = neuro.tasks.make(cfg["task"], **cfg["task_options"])
    opts = dict(m.get("rule_options", {}))
    if m["rule"] in PERTURBATION:
        opts.setdefault("sigma", cfg["sigma"])
    per_update = cfg["epoch_steps"] if cfg["update"] == "epoch" else 1
    model_options = dict(cfg["model_options"])
    if rate:
        model_options["decorrelation"] = rate / per_update  # the authors' mean over the steps, summed here
    return {"experiment": cfg["experiment"], "task": cfg["task"], "task_options": dict(cfg["task_options"]),
            "model": "rate", "hidden": cfg["hidden"], "model_options": model_options, "method": method,
            "rule": m["rule"], "rule_options": opts, "optimizer": m["optimizer"],
            "lr": library_lr(m["rule"], m["optimizer"], cfg["lr"], cfg["sigma"], task.n_out), "lr_authors": cfg["lr"],
            "decorrelation": rate, "update_every": per_update, "epochs": cfg["epochs"],
            "epoch_steps": cfg["epoch_steps"], "steps": cfg["epochs"] * cfg["epoch_steps"], "seed": seed,
            "dtype": cfg["dtype"], "engine": cfg["engine"]}


def runs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the config, seed-major (all methods of a seed before the next seed), so that an
    interrupted reproduction has whole seeds to compare."""
    return [spec(cfg, n, d, s) for s in cfg["seeds"] for n in cfg["methods"] for d in cfg["decorrelation"]]


def _build(s: dict[str, Any]):
    import models
    import neuro.rules
    import neuro.tasks

    task = neuro.tasks.make(s["task"], **s["task_options"])
    if not task.episodic or task.trial_steps != s["epoch_steps"]:
        raise ValueError(f"epoch_steps={s['epoch_steps']} is invalid for task {s['task']!r} with options "
                         f"{s['task_options']}: an epoch is one of its trials ({task.trial_steps} steps)")
    net = models.make(s["model"], n_in=task.n_in, n_hidden=s["hidden"], n_out=task.n_out, **s["model_options"])
    return task, net, neuro.rules.make(s["rule"], net, loss=task.loss, **s["rule_options"])
