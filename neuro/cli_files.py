"""The files ``neuro simulate`` and ``neuro export`` read and write.

* :func:`load_run`: the network and parameters of a run directory written by ``neuro train``, every
  failure one line naming the file (a missing, truncated or incomplete ``config.json``; a missing,
  corrupt or mismatched ``checkpoint.pt``);
* :func:`check_output_dir` / :func:`check_output_file`: an output location checked before anything runs
  (a directory that is a file, a file path that is a directory, a directory that cannot be written);
* :func:`write_files`: several outputs written together and atomically: each goes to a temporary file
  beside its target and all are renamed onto their targets only once every one was written, so a failed
  write (a full disk, a file-size limit) leaves every previous file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from neuro import errors

__all__ = ["check_output_dir", "check_output_file", "load_run", "os_cause", "write_files"]


def load_run(run_dir: str | os.PathLike, model_opt: dict[str, Any] | None = None) -> tuple[Any, dict]:
    """``(net, params)`` of the run in ``run_dir``: the network of its ``config.json`` (with ``model_opt``
    on top) and the float64 CPU parameters of its ``checkpoint.pt``."""
    import torch

    import models
    from neuro import io, rundir

    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a run directory written by neuro train --run-dir", str(run))
    config_path = run / rundir.CONFIG
    try:
        config = rundir.read_config(run)
    except ValueError as e:  # a truncated or otherwise unreadable file; the reader may name it already
        if str(config_path) in str(e):
            raise
        raise ValueError(f"{str(config_path)!r} cannot be read ({e}): it is truncated or not written by "
                         "neuro train") from e
    net_entry = config.get("net") if isinstance(config, dict) else None
    if not (isinstance(net_entry, dict) and isinstance(net_entry.get("name"), str)
            and isinstance(net_entry.get("fields"), dict)):
        raise ValueError(f"{str(config_path)!r} has no network entry (net.name and net.fields): it is incomplete "
                         "or not written by neuro train")
    fields = {**net_entry["fields"], **(model_opt or {})}
    try:
        net = models.make(net_entry["name"], **fields)
    except (TypeError, ValueError, LookupError) as e:
        opt = " with --model-opt " + ", ".join(f"{k}={v!r}" for k, v in model_opt.items()) if model_opt else ""
        raise ValueError(f"the network of {str(config_path)!r}{opt} cannot be built: {errors.describe(e)}") from e
    ckpt_path = run / rundir.CHECKPOINT
    ckpt = io.load_checkpoint(ckpt_path, map_location="cpu")  # one line naming it when missing or corrupt
    params = ckpt.get("params") if isinstance(ckpt, dict) else None
    if not (isinstance(params, dict) and params and all(isinstance(v, torch.Tensor) for v in params.values())):
        raise ValueError(f"{str(ckpt_path)!r} holds no parameters (a 'params' dict of tensors): it is not a "
                         "checkpoint of neuro train")
    params = {k: v.detach().to(torch.float64) for k, v in params.items()}
    try:
        net.check_params(params)
    except ValueError as e:
        raise ValueError(f"{str(ckpt_path)!r} does not hold the parameters of the {net.name!r} network in "
                         f"{str(config_path)!r}: {e}") from e
    return net, params


def os_cause(e: OSError) -> str:
    """The cause of ``e`` in words, without its file name (which may be a temporary file's)."""
    return errors.os_error(OSError(e.errno, e.strerror)) if e.errno else str(e)


def _probe(directory: Path, what: str) -> None:
    """Raise ``OSError`` naming ``what`` unless a file can be created in ``directory`` (and is removed again)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".neuro-probe-", dir=directory)
    except OSError as e:
        raise OSError(f"{what} cannot be written: {os_cause(e)}") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Check that ``path`` is, or can be created as, a directory that files can be written in; nothing is
    created. ``what`` names it in the error (``"--run-dir 'runs/x'"``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} is invalid: it exists and is not a directory; choose a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} is invalid: {str(existing)!r} is a file, not a directory")
    _probe(existing, what)
    return path


def check_output_file(path: str | os.PathLike, what: str, example: str) -> Path:
    """Check that ``path`` names a file (not a directory) in an existing directory that can be written in;
    nothing is created. ``example`` is a file name suggested when ``path`` is a directory."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} is a directory: give a file path, e.g. {str(path / example)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"{what} is invalid: its directory {str(path.parent)!r} does not exist")
    _probe(path.parent, what)
    return path


def write_files(contents: dict[Path, bytes]) -> None:
    """Write every ``path: bytes`` of ``contents`` atomically and together: all are written to temporary
    files (flushed, ``fsync``-ed) first, then renamed onto their targets. An ``OSError`` while writing
    leaves every target as it was and removes the temporary files."""
    from neuro import io

    with contextlib.ExitStack() as stack:
        for path, data in contents.items():
            f = stack.enter_context(io.atomic_open(path, "wb"))
            f.write(data)
            f.flush()  # a full disk or a size limit fails here, before any file is renamed
