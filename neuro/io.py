"""Files of a run directory, written atomically: JSON, CSV, torch checkpoints, ``.npz`` arrays and figures.

Every writer goes through :func:`atomic_open` (or :func:`atomic_path`, for writers that need a path): the
bytes go to a temporary file in the target's own directory, are flushed and ``fsync``-ed, and only then
``os.replace``-d onto the target (an atomic rename on POSIX and Windows). A crash mid-write leaves the
previous file untouched (and at most a hidden ``.<name>.<random>.tmp`` beside it); an exception, a full disk
or a file-size limit leaves it untouched and no temporary file behind, and a write that fails for want of
space raises ``OSError`` (``ENOSPC``, ``EFBIG``, ...) naming the target. A new file gets the mode
``open(path, "w")`` would give it (``0o666`` less the umask); a replaced file keeps its mode.

Checkpoints hold what ``torch.save`` cannot pickle safely in a portable form: a ``torch.Generator``
becomes its ``get_state()`` and a ``NamedTuple`` a tagged dict naming its class, so that
``torch.load(weights_only=True)`` reads them back (no arbitrary code runs on load) and
:func:`from_saveable` rebuilds the objects. A checkpoint file is the ``torch.save`` bytes followed by one
line, ``neuro checkpoint sha256 <hex digest of those bytes>``: :func:`load_checkpoint` refuses a file whose
bytes do not match it (a flipped bit anywhere, a truncated file) with a ``ValueError`` naming the file, and
every other failure to read an existing file as a checkpoint (not a checkpoint, a payload
``save_checkpoint`` does not write) is that ``ValueError`` too. ``torch.load`` ignores the line, so other tools read the file as before. A file without
the line (written before checkpoints carried one) is read with a warning that it cannot be verified; it
gets a checksum the next time it is saved.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import importlib
import io
import json
import os
import secrets
import shutil
import stat
import warnings
from pathlib import Path
from typing import IO, Any, Iterator

import torch

__all__ = ["atomic_open", "atomic_path", "cache_root", "from_saveable", "load_checkpoint", "read_csv", "read_json",
           "save_checkpoint", "save_figure", "save_npz", "to_saveable", "write_csv", "write_json", "write_text"]

_GEN = "__torch_generator__"
_NT = "__namedtuple__"
_TAG = b"\nneuro checkpoint sha256 "
_FOOTER = len(_TAG) + 64 + 1  # the tag, the hex digest, "\n"
#: errors of a write that failed for want of room or a broken device: named after the target when unnamed
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of this library's caches (the Atari renderings, NeuroBench's Mackey-Glass series):
    ``cache_dir`` if given, else the environment variable ``NEURO_CACHE``, else ``~/.cache/neuro``; ``~``
    expanded."""
    root = cache_dir if cache_dir is not None else os.environ.get("NEURO_CACHE") or Path.home() / ".cache" / "neuro"
    return Path(root).expanduser()


def _temporary(path: Path, suffix: str = "") -> Path:
    """A fresh name for a temporary file beside ``path`` (hidden, ``.tmp``; ``suffix`` appended)."""
    return path.parent / f".{path.name[:200]}.{secrets.token_hex(4)}.tmp{suffix}"


def _existing_mode(path: Path) -> int | None:
    """The permission bits of the regular file ``path``, or None where there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` where it is a failed write naming no file (a full disk says which file)."""
    if e.filename is None and e.errno in _WRITE_ERRNOS:
        return OSError(e.errno, os.strerror(e.errno), str(path))
    return e


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). On an exception the temporary file is removed and
    ``path`` keeps its previous content (or stays absent). The file gets ``path``'s mode where ``path``
    exists, else ``0o666`` less the umask (the kernel applies it: ``O_CREAT`` with ``0o666``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is invalid: valid choices are 'w', 'wb'")
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temporary(path)
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:  # no such directory, no permission, a read-only file system: name the target
            raise OSError(e.errno, e.strerror, str(path)) from None
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(tmp))
    try:
        keep = _existing_mode(path)
        if keep is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, keep)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding,
                       newline=None if "b" in mode else "") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (named := _named(e, path)) is not e:
            raise named from e
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a path (a saver that takes a file name): on a clean
    exit the file (or directory) the writer made there is ``fsync``-ed and renamed onto ``path``; on an
    exception it is removed and ``path`` keeps its previous content.

    The temporary name ends with ``path``'s suffix (for writers that choose a format by it); a writer that
    writes somewhere else (``np.savez`` appends ``.npz`` to a name without it) raises ``FileNotFoundError``,
    and what it wrote beside the temporary name is removed. A replaced file keeps its mode.
    """
    path = Path(path)
    tmp = _temporary(path, path.suffix)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(errno.ENOENT, f"the writer did not create the temporary file for {str(path)!r}",
                                    str(tmp))
        keep = _existing_mode(path)
        if keep is not None and tmp.is_file():
            os.chmod(tmp, keep)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        for p in path.parent.glob(glob.escape(tmp.name) + "*"):  # and what a writer made beside it (tmp.npz)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        if isinstance(e, OSError) and (named := _named(e, path)) is not e:
            raise named from e
        raise
    _fsync_dir(path.parent)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory's files) to the disk."""
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file() and not p.is_symlink():
                _fsync(p)
        _fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened or synced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def save_npz(path: str | os.PathLike, /, **arrays: Any) -> Path:
    """``arrays`` as ``np.savez_compressed`` writes them (``np.load`` reads them back), to ``path`` exactly
    (no ``.npz`` is appended), atomically."""
    import zipfile

    import numpy as np

    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        for name, value in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **kw: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format its suffix names (``.png``, ``.pdf``, ``.svg``,
    ...) unless ``format=`` is given; ``kw`` goes to ``savefig`` (``dpi=``, ``bbox_inches=``, ...)."""
    path = Path(path)
    fmt = kw.pop("format", None) or path.suffix[1:].lower()
    valid = fig.canvas.get_supported_filetypes()
    if fmt not in valid:
        raise ValueError(f"figure file {str(path)!r} has format {fmt!r}, which is invalid: valid formats are "
                         f"{', '.join(sorted(valid))} (from the file's suffix or format=)")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt, **kw)
    return path


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
    """The inverse of :func:`to_saveable`; ``ValueError`` for anything it does not write (a malformed
    generator or NamedTuple tag, an object of another type)."""
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise ValueError(f"a dict with keys of types {sorted({type(k).__name__ for k in obj})} (not str or int)")
        if _GEN in obj:
            return _generator(obj)
        if _NT in obj:
            if set(obj) != {_NT, "fields"} or not isinstance(obj[_NT], str) or not isinstance(obj["fields"], dict):
                raise ValueError(f"a malformed NamedTuple entry (keys {sorted(map(str, obj))})")
            cls = _import_namedtuple(obj[_NT])
            try:
                return cls(**{str(k): from_saveable(v) for k, v in obj["fields"].items()})
            except TypeError as e:
                raise ValueError(f"the fields {sorted(map(str, obj['fields']))} do not make a {obj[_NT]} "
                                 f"(its fields are {list(cls._fields)}): {e}") from None
        return {k: from_saveable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(from_saveable(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return obj
    raise ValueError(f"an object of type {type(obj).__name__}, which save_checkpoint does not write")


def _generator(obj: dict) -> torch.Generator:
    device, state = obj.get("device"), obj.get("state")
    if (set(obj) != {_GEN, "device", "state"} or obj[_GEN] is not True or not isinstance(device, str)
            or not isinstance(state, torch.Tensor) or state.dtype != torch.uint8):
        raise ValueError(f"a malformed generator entry (keys {sorted(map(str, obj))})")
    try:
        g = torch.Generator(device=device)
        g.set_state(state.cpu())  # a CPU byte tensor for any device (map_location may have moved it)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"a generator on {device!r} that cannot be restored here: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return g


def _import_namedtuple(name: str) -> type:
    module, _, qualname = name.partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"the state class {name!r}, which cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise ValueError(f"{name!r} as a NamedTuple class, but it is not one")
    return cls


def save_checkpoint(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(to_saveable(obj))`` to ``path`` with its SHA-256 after it, atomically.

    The bytes are made in memory first, so a failed write is the file system's ``OSError`` (``ENOSPC``,
    ``EFBIG``, ...) naming ``path``, and ``path`` keeps its previous content.
    """
    data = to_saveable(obj)
    buf = io.BytesIO()
    torch.save(data, buf)
    body = buf.getbuffer()
    with atomic_open(path, "wb") as f:
        f.write(body)
        f.write(_TAG + hashlib.sha256(body).hexdigest().encode() + b"\n")


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs on load); the
    sparse matrices a training run stores by their synapses only (:func:`neuro.connectivity.compact`) come back
    dense.

    ``FileNotFoundError`` where ``path`` is absent; ``ValueError``, one line naming ``path``, for a file that
    fails its checksum or cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    where = f"checkpoint {str(path)!r}"
    with open(path, "rb") as f:
        verified = _verify(f, where)
        if not verified:
            warnings.warn(f"{where} has no checksum (written before neuro stored one): it is read without an "
                          "integrity check, and gets a checksum the next time it is saved", stacklevel=2)
        try:
            data = torch.load(f, map_location=map_location, weights_only=True)
        except MemoryError:
            raise
        except Exception as e:  # the unpickler and the zip reader raise many types on a damaged file
            raise ValueError(f"{where} cannot be read ({type(e).__name__}): it is corrupt, truncated, or not a "
                             "checkpoint written by neuro") from e
    from neuro.connectivity import expand

    try:
        return expand(from_saveable(data))  # sparse matrices stored compactly: dense again
    except ValueError as e:
        raise ValueError(f"{where} is not a checkpoint written by neuro: it holds {e}") from e


def _verify(f: IO[bytes], where: str) -> bool:
    """Check the checksum line at the end of the open file ``f``: True where it matches, False for a file
    without one (a zip archive's end record closes it: written before checkpoints carried one); else
    ``ValueError``. Leaves ``f`` at its start."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(size - _FOOTER, 0))
    footer = f.read()
    f.seek(0)
    if len(footer) == _FOOTER and footer.startswith(_TAG) and footer.endswith(b"\n"):
        digest, body = hashlib.sha256(), size - _FOOTER
        while body > 0:
            chunk = f.read(min(body, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            body -= len(chunk)
        f.seek(0)
        if digest.hexdigest().encode() == footer[len(_TAG):-1]:
            return True
        raise ValueError(f"{where}: checksum mismatch: the file is corrupt (its bytes changed after it was "
                         "written, e.g. a flipped bit), so it is not loaded")
    if footer[-22:-18] == b"PK\x05\x06":
        return False
    raise ValueError(f"{where} cannot be read: its checksum line is missing or damaged: the file is corrupt, "
                     "truncated, or not a checkpoint written by neuro")
