"""Files of a run directory, written atomically: JSON, CSV and torch checkpoints.

Every writer goes through :func:`atomic_open`: the bytes go to a temporary file in the target's own
directory, are flushed and ``fsync``-ed, and only then ``os.replace``-d onto the target (an atomic
rename on POSIX and Windows). A crash or an exception mid-write leaves the previous file untouched and
no temporary file behind.

Checkpoints hold what ``torch.save`` cannot pickle safely in a portable form: a ``torch.Generator``
becomes its ``get_state()`` and a ``NamedTuple`` a tagged dict naming its class, so that
``torch.load(weights_only=True)`` reads them back (no arbitrary code runs on load) and
:func:`from_saveable` rebuilds the objects.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

__all__ = ["atomic_open", "from_saveable", "load_checkpoint", "read_csv", "read_json", "save_checkpoint",
           "to_saveable", "write_csv", "write_json", "write_text"]

_GEN = "__torch_generator__"
_NT = "__namedtuple__"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). On an exception the temporary file is removed and
    ``path`` keeps its previous content (or stays absent).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is invalid: valid choices are 'w', 'wb'")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding,
                       newline=None if "b" in mode else "") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (``NaN``/``inf`` are refused: they are not JSON)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    """Rows as CSV with a header; floats keep every digit (``repr``), ``None`` is an empty cell."""
    if fieldnames is None:
        fieldnames = []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, int | float | str | None]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back (exactly, for floats)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_cell(v: str) -> int | float | str | None:
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# -- checkpoints ----------------------------------------------------------------------------------

def to_saveable(obj: Any) -> Any:
    """A copy of ``obj`` that ``torch.load(weights_only=True)`` can read.

    Walks dicts, lists, tuples and NamedTuples; a ``torch.Generator`` becomes its state, a NamedTuple a
    dict tagged with its class (``module:qualname``). Tensors must be free
    of autograd graphs (a graph cannot be saved meaningfully): a non-leaf tensor raises ``ValueError``.
    """
    if isinstance(obj, torch.Generator):
        return {_GEN: True, "device": str(obj.device), "state": obj.get_state()}
    if isinstance(obj, torch.Tensor):
        if obj.grad_fn is not None:
            raise ValueError("cannot save a tensor that carries an autograd graph (grad_fn="
                             f"{type(obj.grad_fn).__name__}); save at a sequence boundary")
        return obj.detach()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        return {_NT: f"{cls.__module__}:{cls.__qualname__}",
                "fields": {k: to_saveable(v) for k, v in zip(obj._fields, obj)}}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_saveable(v) for v in obj)
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise ValueError(f"cannot save a dict with keys {sorted(map(repr, obj))}: use str or int keys")
        if any(k in (_GEN, _NT) for k in obj):
            raise ValueError(f"cannot save a dict with a reserved key ({_GEN}, {_NT})")
        return {k: to_saveable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, torch.dtype, torch.device)):
        return obj
    for base in (int, float, str):  # plain types: subclasses (e.g. torch's TorchVersion) are not loadable
        if isinstance(obj, base):
            return base(obj)
    raise ValueError(f"cannot save an object of type {type(obj).__name__} in a checkpoint: "
                     "use tensors, numbers, strings, generators, and dicts/lists/tuples/NamedTuples of them")


def from_saveable(obj: Any) -> Any:
    """The inverse of :func:`to_saveable`."""
    if isinstance(obj, dict):
        if obj.get(_GEN) is True:
            g = torch.Generator(device=obj["device"])
            g.set_state(obj["state"])
            return g
        if _NT in obj:
            cls = _import_namedtuple(obj[_NT])
            return cls(**{k: from_saveable(v) for k, v in obj["fields"].items()})
        return {k: from_saveable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(from_saveable(v) for v in obj)
    return obj


def _import_namedtuple(name: str) -> type:
    module, _, qualname = name.partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"checkpoint names the state class {name!r}, which cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise ValueError(f"checkpoint names {name!r} as a NamedTuple class, but it is not one")
    return cls


def save_checkpoint(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(to_saveable(obj))`` to ``path``, atomically."""
    data = to_saveable(obj)
    with atomic_open(path, "wb") as f:
        torch.save(data, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}): it is corrupt, "
                         "truncated, or not a checkpoint written by neuro") from e
    return from_saveable(data)
