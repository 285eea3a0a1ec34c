"""A reproduction's config (one TOML file per experiment): its keys, checked before anything runs, and the
methods it expands to (network sizes, learnable parameters, compute per step, stage lengths, learning rates).

Every unknown or invalid key is a one-line ``ValueError`` naming it and the valid ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["METHOD_KEYS", "PILOT_KEYS", "TOP_KEYS", "experiments", "learnable_params", "load",
           "lstm_hidden_for", "methods", "stage_schedule", "task_options"]

ROOT = Path(__file__).resolve().parents[2]
#: the keys a config may have at its top level
TOP_KEYS = ("task", "task_options", "valid_patterns", "games", "seeds", "steps", "optimizer", "optimizer_options",
            "lr", "lrs", "chunk", "log_every", "dtype", "engine", "budget_from", "score_tail", "zero_baseline", "td",
            "methods", "pilot")
#: the keys of a ``[methods.X]`` table
METHOD_KEYS = ("model", "hidden", "model_options", "inner", "k", "schedule", "stage_steps", "optimizer_options",
               "steps", "seeds", "lr", "lrs")
PILOT_KEYS = ("steps", "seeds")
VALID_PATTERNS = "per-seed"
DEFAULTS = {"optimizer": "adam", "chunk": 100, "log_every": 1000, "dtype": "float32", "engine": "auto",
            "score_tail": 100_000}


def _unknown(where: str, given: dict, valid: tuple[str, ...]) -> None:
    extra = [k for k in given if k not in valid]
    if extra:
        raise ValueError(f"{where} key {extra[0]!r} is unknown: valid keys are {', '.join(valid)}")


def _seeds(where: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in value) and len(set(value)) == len(value):
        return list(value)
    raise ValueError(f"{where}={value!r} is invalid: expected a count >= 1 or a list of distinct seeds >= 0")


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}={value!r} is invalid: must be an integer >= 1")
    return value


def _lrs(where: str, table: dict, default: list[float] | None) -> list[float]:
    if "lr" in table and "lrs" in table:
        raise ValueError(f"{where} has both 'lr' and 'lrs': give one value (lr) or the pilot's grid (lrs)")
    if "lr" in table:
        vals = [table["lr"]]
    elif "lrs" in table:
        vals = table["lrs"]
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"{where}.lrs={vals!r} is invalid: expected a non-empty list of learning rates")
    elif default is not None:
        return default
    else:
        raise ValueError(f"{where} has no learning rate: give 'lr' (one value) or 'lrs' (the pilot's grid)")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{where} learning rate {v!r} is invalid: must be a finite number > 0")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{where}.lrs={vals!r} names a learning rate twice")
    return [float(v) for v in vals]


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a config file; return it with its defaults filled in and ``seeds``/``lrs`` as lists."""
    import tomllib

    try:
        cfg = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"config={str(path)!r} cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config={str(path)!r} is not valid TOML ({e})") from None
    return check(cfg)


def check(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (a parsed config) checked, defaults filled in (see :func:`load`)."""
    _unknown("config", cfg, TOP_KEYS)
    for key in ("task", "seeds", "steps", "methods"):
        if key not in cfg:
            raise ValueError(f"config has no {key!r}: required keys are task, seeds, steps, methods")
    cfg = {**DEFAULTS, **cfg}
    cfg["task_options"] = dict(cfg.get("task_options", {}))
    vp = cfg.pop("valid_patterns", None)
    if vp is not None:  # TOML has no null: "per-seed" is the task's pattern_seed=None
        if vp == VALID_PATTERNS:
            cfg["task_options"]["pattern_seed"] = None
        elif isinstance(vp, int) and not isinstance(vp, bool) and vp >= 0:
            cfg["task_options"]["pattern_seed"] = vp
        else:
            raise ValueError(f"valid_patterns={vp!r} is invalid: valid are 'per-seed' (drawn from each stream's seed) "
                             "or an integer pattern seed >= 0 (one set for every seed)")
    cfg["seeds"] = _seeds("seeds", cfg["seeds"])
    for key in ("steps", "chunk", "log_every", "score_tail"):
        _positive_int(key, cfg[key])
    cfg["lrs"] = _lrs("config", cfg, None) if ("lr" in cfg or "lrs" in cfg) else None
    cfg.pop("lr", None)
    games = cfg.get("games")
    if games is not None and (not isinstance(games, list) or not games or not all(isinstance(g, str) for g in games)):
        raise ValueError(f"games={games!r} is invalid: expected a non-empty list of game names")
    if not isinstance(cfg.get("zero_baseline", False), bool):
        raise ValueError(f"zero_baseline={cfg['zero_baseline']!r} is invalid: must be true or false")
    if not isinstance(cfg["methods"], dict) or not cfg["methods"]:
        raise ValueError("methods is empty: give at least one [methods.NAME] table")
    for name, m in cfg["methods"].items():
        where = f"methods.{name}"
        if not isinstance(m, dict):
            raise ValueError(f"{where} is not a table: give [methods.{name}] with keys {', '.join(METHOD_KEYS)}")
        _unknown(where, m, METHOD_KEYS)
        for key in ("model", "inner"):
            if key not in m:
                raise ValueError(f"{where} has no {key!r}: required method keys are model, inner")
        if m["inner"] == "tbptt":
            _positive_int(f"{where}.k", m.get("k"))
        m["lrs"] = _lrs(where, m, cfg["lrs"])
        m.pop("lr", None)
        m["seeds"] = _seeds(f"{where}.seeds", m.get("seeds", cfg["seeds"]))
        m["steps"] = _positive_int(f"{where}.steps", m.get("steps", cfg["steps"]))
        if "stage_steps" in m:
            _positive_int(f"{where}.stage_steps", m["stage_steps"])
    pilot = cfg.get("pilot")
    if pilot is not None:
        if not isinstance(pilot, dict):
            raise ValueError(f"pilot={pilot!r} is invalid: expected a table with keys {', '.join(PILOT_KEYS)}")
        _unknown("pilot", pilot, PILOT_KEYS)
        for key in PILOT_KEYS:
            if key not in pilot:
                raise ValueError(f"pilot has no {key!r}: required keys are {', '.join(PILOT_KEYS)}")
        pilot["steps"] = _positive_int("pilot.steps", pilot["steps"])
        pilot["seeds"] = _seeds("pilot.seeds", pilot["seeds"])
    if cfg.get("budget_from") is not None and cfg["budget_from"] not in cfg["methods"]:
        raise ValueError(f"budget_from={cfg['budget_from']!r} is not a method: valid are {', '.join(cfg['methods'])}")
    return cfg


def experiments(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, task_options)`` per experiment: one per game (``task_options.game``), or one labelled ``""``.
    A ``policy`` task option must exist (see :func:`task_options`); it is kept as given, so a run's recorded
    settings do not depend on where the repository is."""
    opts = dict(cfg["task_options"])
    task_options(opts)
    if not cfg.get("games"):
        return [("", opts)]
    return [(g, {**opts, "game": g}) for g in cfg["games"]]


def task_options(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with a relative ``policy`` (the recorded policies' folder) taken from the repository root;
    a ``ValueError`` if that folder does not exist."""
    if not isinstance(opts.get("policy"), str):
        return opts
    p = Path(opts["policy"])
    p = p if p.is_absolute() else ROOT / p
    if not p.exists():
        raise ValueError(f"task option policy={opts['policy']!r} does not exist (looked for {p}): give the folder "
                         "of the recorded policies' action logs, relative to the repository root or absolute")
    return {**opts, "policy": str(p.resolve())}


def learnable_params(model: str, n_in: int, hidden: int, n_out: int, model_options: dict | None = None) -> int:
    """Parameters that can learn (a constructive network's masked-out feed-forward entries excluded)."""
    import models

    net = models.make(model, n_in=n_in, n_hidden=hidden, n_out=n_out, **(model_options or {}))
    n = sum(math.prod(s) for s in net.param_shapes().values())
    if model == "constructive":
        n -= net.n_gates * int((1 - net.ff_mask()).sum())
    return n


def lstm_hidden_for(budget: int, k: int, n_in: int, n_out: int) -> int:
    """The largest dense-LSTM hidden size with ``params x (k + 1) <= budget`` (at least 1)."""
    h = 1
    while learnable_params("lstm", n_in, h + 1, n_out) * (k + 1) <= budget:
        h += 1
    return h


def stage_schedule(m: dict[str, Any], steps: int, chunk: int) -> str | None:
    """The stage schedule ``"total:per-stage:N"`` of method ``m`` for a run of ``steps`` steps: the stage
    length ``stage_steps`` (or the schedule's own third field) is for the method's main budget, scaled in
    proportion to ``steps`` and rounded down to a whole number of chunks (at least one)."""
    spec = m.get("schedule")
    if spec is None:
        return None
    parts = str(spec).split(":")
    if len(parts) == 3 and "stage_steps" not in m:
        stage = int(parts[2])
    elif len(parts) == 2 and "stage_steps" in m:
        stage = m["stage_steps"]
    else:
        raise ValueError(f"schedule={spec!r} is invalid: give 'total:per-stage' with stage_steps, or "
                         "'total:per-stage:steps-per-stage' without it")
    scaled = stage if steps == m["steps"] else stage * steps // m["steps"]
    scaled = max(chunk, scaled - scaled % chunk)
    return f"{parts[0]}:{parts[1]}:{scaled}"


def methods(cfg: dict[str, Any], n_in: int, n_out: int) -> dict[str, dict[str, Any]]:
    """The config's methods with ``hidden`` (a T-BPTT method without one: the largest dense LSTM with
    ``params x (k + 1)`` within the learnable parameter count of ``budget_from``), ``params`` and ``compute``
    (learnable parameters; x (k + 1) for T-BPTT) filled in."""
    ms = {name: dict(m) for name, m in cfg["methods"].items()}
    budget = None
    if cfg.get("budget_from"):
        b = ms[cfg["budget_from"]]
        if "hidden" not in b:
            raise ValueError(f"budget_from={cfg['budget_from']!r} has no hidden size: the budget's method needs one")
        budget = learnable_params(b["model"], n_in, b["hidden"], n_out, b.get("model_options"))
    for name, m in ms.items():
        if "hidden" not in m:
            if m["inner"] != "tbptt" or budget is None:
                raise ValueError(f"methods.{name} has no hidden size (only T-BPTT methods get one, from budget_from)")
            m["hidden"] = lstm_hidden_for(budget, m["k"], n_in, n_out)
        m["params"] = learnable_params(m["model"], n_in, m["hidden"], n_out, m.get("model_options"))
        m["compute"] = m["params"] * (m["k"] + 1) if m["inner"] == "tbptt" else m["params"]
    return ms
