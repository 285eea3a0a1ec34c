"""File systems for failure tests: a small tmpfs that fills up, and a read-only directory.

Both need privileges a CI runner may lack: a tmpfs needs ``mount`` (root in a container that allows it), a
read-only directory needs a read-only mount when running as root (root ignores permission bits) or only
``chmod`` otherwise. Where neither works the test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "readonly_dir", "small_tmpfs"]


def _mount(*args: str) -> str | None:
    """Run ``mount`` (or ``umount``); the reason it failed, or None."""
    try:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")


@contextlib.contextmanager
def _tmpfs(where: Path, options: str, why_needed: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (created) with ``options``, unmounted afterwards; skips where it cannot be."""
    where.mkdir(parents=True, exist_ok=True)
    why = _mount("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where))
    if why is not None:
        pytest.skip(f"{why_needed} ({why})")
    try:
        yield where
    finally:
        _mount("umount", "-l", str(where))


def small_tmpfs(where: Path, size_kib: int) -> contextlib.AbstractContextManager[Path]:
    """A tmpfs of ``size_kib`` KiB mounted at ``where``. Skips the test where it cannot be mounted."""
    return _tmpfs(where, f"size={size_kib}k", "cannot mount a tmpfs here")


@contextlib.contextmanager
def readonly_dir(where: Path) -> Iterator[Path]:
    """An empty directory that cannot be written: ``chmod 555`` for a normal user, a read-only tmpfs for
    root. Skips the test where neither works."""
    if os.geteuid() != 0:
        where.mkdir(parents=True, exist_ok=True)
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
        return
    with _tmpfs(where, "ro,size=64k", "running as root and cannot mount a read-only tmpfs") as d:
        yield d


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros to ``directory/name`` until its file system is full; the file (delete it to free the space)."""
    path = directory / name
    block = b"\0" * 65536
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    return path
