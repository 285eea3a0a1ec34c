"""Sweep configuration files for ``neuro compare --config FILE`` (TOML, or YAML when PyYAML is installed).

The keys are the arguments of :func:`neuro.compare`; an unknown key, or a value of the wrong type, is an
error that names it and lists the valid keys. Command-line flags override the file's values. Example::

    task = "add"
    rules = ["bptt", "tbptt", "uoro"]
    seeds = 3
    steps = 5000
    model = "rate"
    hidden = 32
    lr = 3e-3                      # or a table, one per rule: [lr] bptt = 1e-3 ...
    [rule_options.tbptt]
    k = 10
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["KEYS", "load", "validate"]

#: key -> accepted types (int accepts no bool)
KEYS: dict[str, tuple[type, ...]] = {
    "task": (str,), "rules": (list,), "seeds": (int, list), "steps": (int,), "model": (str,), "hidden": (int, list, tuple),
    "lr": (float, int, dict), "optimizer": (str,), "batch": (int,), "chunk": (int,), "update_every": (int,),
    "log_every": (int,), "align_every": (int,), "align_steps": (int,), "eval_steps": (int,), "dtype": (str,),
    "task_options": (dict,), "model_options": (dict,), "rule_options": (dict,), "executor": (str,),
    "workers": (int,), "address": (str,), "out": (str,), "vectorise": (bool,),
    "schedule": (str, dict),  # one stage schedule, or one per rule (neuro.staged)
    "optimizer_options": (dict,),  # the optimizer's options (neuro.optim)
}


def validate(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check keys and types; every problem is reported at once in one ``ValueError``."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a table of settings, got {type(cfg).__name__}")
    problems = []
    unknown = sorted(set(cfg) - set(KEYS), key=str)
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            str(k).replace("-", "_"), KEYS, n=1)) else repr(k) for k in unknown]
        problems.append(f"unknown key(s) {', '.join(hints)}: valid keys are {', '.join(KEYS)}")
    for k, v in cfg.items():
        types = KEYS.get(k)
        if types is None:
            continue
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            names = " or ".join(t.__name__ for t in types)
            problems.append(f"{k}={v!r} is invalid: expected {names}")
    if isinstance(cfg.get("rules"), list) and not all(isinstance(r, str) for r in cfg["rules"]):
        problems.append(f"rules={cfg['rules']!r} is invalid: expected a list of rule names")
    if isinstance(cfg.get("seeds"), list) and not all(isinstance(x, int) and not isinstance(x, bool)
                                                     for x in cfg["seeds"]):
        problems.append(f"seeds={cfg['seeds']!r} is invalid: expected a list of integers")
    for key, types, what in (("lr", (int, float), "a number"), ("schedule", (str,), "a schedule string")):
        if isinstance(cfg.get(key), dict):
            for r, v in cfg[key].items():
                if isinstance(v, bool) or not isinstance(v, types):
                    problems.append(f"{key}.{r}={v!r} is invalid: expected {what}")
    for key in ("task_options", "model_options"):
        if isinstance(cfg.get(key), dict):
            for k, v in cfg[key].items():
                if isinstance(v, dict):
                    problems.append(f"{key}.{k}={v!r} is invalid: expected a value, not a table")
    if isinstance(cfg.get("rule_options"), dict):
        for r, opts in cfg["rule_options"].items():
            if not isinstance(opts, dict):
                problems.append(f"rule_options.{r}={opts!r} is invalid: expected a table of options")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    return dict(cfg)


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``.toml``, ``.yaml`` or ``.yml`` sweep file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {str(path)!r} is a directory: expected a .toml, .yaml or .yml file")
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"config file {str(path)!r} is invalid: expected a .toml, .yaml or .yml file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not a text file (byte {e.start} is not UTF-8): expected "
                         f"{'TOML' if suffix == '.toml' else 'YAML'} text") from None
    if suffix == ".toml":
        import tomllib

        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as TOML") from None
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
    return validate(cfg or {}, str(path))
