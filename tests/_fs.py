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
def small_tmpfs(where: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted at ``where`` (created); unmounted afterwards. Skips the test
    where it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    why = _mount("mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where))
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why})")
    try:
        yield where
    finally:
        _mount("umount", "-l", str(where))


@contextlib.contextmanager
def readonly_dir(where: Path) -> Iterator[Path]:
    """An empty directory that cannot be written: ``chmod 555`` for a normal user, a read-only tmpfs for
    root. Skips the test where neither works."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        where.chmod(0o555)
        try:
            yield where
        finally:
            where.chmod(0o755)
        return
    why = _mount("mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where))
    if why is not None:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs ({why})")
    try:
        yield where
    finally:
        _mount("umount", "-l", str(where))


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
