"""The output directory of a sweep (``compare(out=...)``): its settings, its finished runs, its work area.

* ``sweep.json``: the settings every run of the sweep shares (task, model, budget, sizes, ...), each
  rule's own (``lr``, ``rule_options``, ``schedule``) and the seeds run so far; written (atomically)
  before the first run starts. A sweep started again in the same directory must have the same shared
  settings, and the same settings for each rule it shares with the saved sweep: rules and seeds may be
  added, and how the runs are executed (executor, workers, vectorise) may change, since none of these
  changes what a run computes. Anything else is refused before anything runs, naming each differing
  setting (saved and now), so that the runs and the summary of a directory never mix settings. A
  directory written before ``sweep.json`` existed gets its saved settings from its run files.
* ``runs/<rule>/seed-<seed>.json`` (and ``.pt``, the trained parameters): a finished run, reused by a
  later sweep only if the settings it records are that run's in the sweep.
* ``.work/``: the local executor's files for the runs in progress (each job's input, output and log),
  emptied when a sweep starts and removed when it ends, so nothing is left behind by a killed sweep
  once it is run again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from neuro import io
from neuro.errors import os_error

__all__ = ["SETTINGS", "WORK", "check_settings", "check_writable", "load_done", "sweep_settings", "work_dir",
           "write_settings"]

SETTINGS, WORK = "sweep.json", ".work"
FORMAT = 1
#: the settings of a run that are its rule's own (the others are shared by every run of the sweep)
PER_RULE = ("lr", "rule_options", "schedule")
_NOT_SETTINGS = ("rule", "seed")


def _roundtrip(obj: Any) -> Any:
    from .harness import _json_roundtrip

    return _json_roundtrip(obj)


def sweep_settings(specs: Sequence[Any]) -> dict[str, Any]:
    """The content of ``sweep.json`` for the runs ``specs`` (:class:`~neuro.comparison.harness.RunSpec`),
    as it reads back from JSON."""
    shared: dict[str, Any] = {}
    rules: dict[str, dict[str, Any]] = {}
    for s in specs:
        d = dict(s.asdict())
        d.setdefault("schedule", None)
        rules[s.rule] = {k: d[k] for k in PER_RULE}
        shared = {k: v for k, v in d.items() if k not in PER_RULE and k not in _NOT_SETTINGS}
    return _roundtrip({"format": FORMAT, "settings": shared, "rules": rules,
                       "seeds": sorted({s.seed for s in specs})})


def _from_run_files(out: Path) -> dict[str, Any] | None:
    """The saved settings of a directory without ``sweep.json``, from its run files (None if it has none)."""
    shared: dict[str, Any] | None = None
    rules: dict[str, dict[str, Any]] = {}
    seeds: set[int] = set()
    for path in sorted((out / "runs").glob("*/seed-*.json")):
        try:
            spec = io.read_json(path)["spec"]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        spec = {**spec, "schedule": spec.get("schedule")}
        rules.setdefault(spec["rule"], {k: spec.get(k) for k in PER_RULE})
        seeds.add(spec["seed"])
        if shared is None:
            shared = {k: v for k, v in spec.items() if k not in PER_RULE and k not in _NOT_SETTINGS}
    if shared is None:
        return None
    return {"format": FORMAT, "settings": shared, "rules": rules, "seeds": sorted(seeds)}


def _show(v: Any) -> str:
    return "none" if v is None else repr(v)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    diffs = []
    a, b = saved.get("settings", {}), now["settings"]
    for k in sorted(set(a) | set(b), key=lambda k: (list(b).index(k) if k in b else len(b), k)):
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {_show(a.get(k))} saved, {_show(b.get(k))} now")
    for rule, mine in now["rules"].items():
        theirs = saved.get("rules", {}).get(rule)
        if theirs is None:
            continue  # a rule added to the sweep
        for k in PER_RULE:
            if theirs.get(k) != mine.get(k):
                diffs.append(f"{k} of rule {rule!r}: {_show(theirs.get(k))} saved, {_show(mine.get(k))} now")
    return diffs


def check_settings(out: Path, specs: Sequence[Any]) -> dict[str, Any] | None:
    """Refuse (``ValueError``) a sweep whose settings differ from those saved in ``out``; return the saved
    settings (None for a new directory). Nothing is written."""
    path = out / SETTINGS
    if path.is_file():
        try:
            saved = io.read_json(path)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path)!r} is not a sweep's settings file ({e}): use another output directory, "
                             "or remove it to take the settings of this sweep") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
            raise ValueError(f"{str(path)!r} is not a sweep's settings file: use another output directory")
    elif (out / "runs").is_dir():
        saved = _from_run_files(out)
    else:
        saved = None
    if saved is not None:
        diffs = _differences(saved, sweep_settings(specs))
        if diffs:
            raise ValueError(f"{str(out)!r} holds a sweep with other settings ({'; '.join(diffs)}): run it with "
                             "the same settings to resume it (rules and seeds may be added), or give another "
                             "output directory (--out)")
    return saved


def load_done(out: Path, specs: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """The finished runs of ``specs`` in ``out`` (index -> result). A run file that records other settings
    than its run's in this sweep is refused (``ValueError``): it is not reused, nor overwritten."""
    done: dict[int, dict[str, Any]] = {}
    for i, spec in enumerate(specs):
        path = spec.path(out)
        if not path.is_file():
            continue
        try:
            result = io.read_json(path)
        except (ValueError, UnicodeDecodeError):  # unreadable: run it again (atomic writes make this unlikely)
            continue
        mine = _roundtrip(spec.asdict())
        theirs = result.get("spec") if isinstance(result, dict) else None
        if theirs == mine:
            done[i] = result
            continue
        theirs = theirs if isinstance(theirs, dict) else {}
        diffs = [f"{k}: {_show(theirs.get(k))} there, {_show(v)} in this sweep"
                 for k, v in mine.items() if theirs.get(k) != v]
        raise ValueError(f"{str(path)!r} is a run with other settings ({'; '.join(diffs) or 'no settings'}): "
                         "remove it to run it again with this sweep's settings, or give another output "
                         "directory (--out)")
    return done


def check_writable(out: Path) -> None:
    """Create ``out`` (and its parents) and write and remove a probe file in it, so that an output
    directory that cannot be written is refused before any training; ``ValueError`` naming the cause."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is invalid: it exists and is not a directory")
    probe = out / f".probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"neuro compare: checking that this directory can be written\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ValueError(f"out={str(out)!r} cannot be written ({os_error(e)}): choose a writable directory "
                         "with free space") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def write_settings(out: Path, specs: Sequence[Any], saved: dict[str, Any] | None) -> None:
    """Write ``sweep.json``: this sweep's settings, the rules and seeds of ``saved`` kept (atomically)."""
    now = sweep_settings(specs)
    if saved is not None:
        now["rules"] = {**saved.get("rules", {}), **now["rules"]}
        now["seeds"] = sorted(set(saved.get("seeds", [])) | set(now["seeds"]))
    io.write_json(out / SETTINGS, now)


def work_dir(out: Path) -> Path:
    """``out/.work``, emptied (what a killed sweep left there is of no use)."""
    work = out / WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return work
