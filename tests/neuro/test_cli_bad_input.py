"""Every subcommand of ``neuro`` against a table of bad inputs: one line on stderr (``neuro: error: ...``), the
exit status (2: usage or data), no traceback, and nothing written or changed on disk (a corrupt file given as
input is left byte for byte as it was).

Inputs a demanding user tries: impossible sizes, directories that are files or read-only, run directories
whose files are truncated, corrupt or from another run, options that do not apply, rules whose needs the
network cannot meet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _fs import readonly_dir

from neuro import io
from neuro.cli import main

pytestmark = pytest.mark.slow

RATE = ["--model", "rate", "--task", "sine", "--rule", "tbptt", "--hidden", "4", "--steps", "20", "--chunk", "10",
        "--no-progress"]
LIF = ["--model", "lif", "--task", "add", "--rule", "tbptt", "--hidden", "4", "--steps", "20", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny runs (a rate and a lif network), copied per test before they are spoiled."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, flags in (("rate", RATE), ("lif", LIF)):
        assert main(["train", *flags, "--run-dir", str(root / name)]) == 0
        out[name] = root / name
    return out


def _copy(runs: dict[str, Path], name: str, tmp: Path) -> Path:
    dst = tmp / f"{name}-run"
    shutil.copytree(runs[name], dst)
    return dst


def _bitflip(path: Path) -> None:
    """Flip one bit inside W_rec's stored values (not in the zip's bookkeeping)."""
    w = io.load_checkpoint(path)["params"]["W_rec"]
    raw = path.read_bytes()
    at = raw.find(w.numpy().tobytes())
    assert at >= 0
    i = at + w.numel() * w.element_size() // 2 + 3
    path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x40]) + raw[i + 1:])


def _rewrite_checkpoint(path: Path, change: Callable[[dict], None]) -> None:
    ckpt = io.load_checkpoint(path)
    change(ckpt)
    io.save_checkpoint(path, ckpt)


def _spoil(kind: str) -> Callable[[Path], None]:
    """What spoils a run directory ``d``."""
    ck = lambda d: d / "checkpoint.pt"  # noqa: E731
    cfg = lambda d: d / "config.json"  # noqa: E731
    return {
        "bitflip": lambda d: _bitflip(ck(d)),
        "random": lambda d: ck(d).write_bytes(random.Random(3).randbytes(4096)),
        "empty": lambda d: ck(d).write_bytes(b""),
        "no-checkpoint-rng": lambda d: _rewrite_checkpoint(ck(d), lambda c: c.pop("rng")),
        "wrong-shape": lambda d: _rewrite_checkpoint(
            ck(d), lambda c: c["params"].__setitem__("W_rec", torch.zeros(3, 3, dtype=c["params"]["W_rec"].dtype))),
        "truncated-config": lambda d: cfg(d).write_text(cfg(d).read_text()[:60]),
        "config-without-net": lambda d: cfg(d).write_text(
            json.dumps({k: v for k, v in json.loads(cfg(d).read_text()).items() if k != "net"})),
        "no-checkpoint": lambda d: ck(d).unlink(),
    }[kind]


# (id, argv with {placeholders}, needles that the one line must contain)
# placeholders: {tmp} a fresh directory, {afile} a plain file, {ro} a read-only directory, {rate}/{lif} a copy of a
# finished run, {rate-KIND}/{lif-KIND} a copy spoiled as _spoil(KIND), {binary} a file of binary bytes
TABLE: list[tuple[str, list[str], list[str]]] = [
    ("no command", [], ["train,compare"]),
    ("unknown command", ["fly"], ["fly"]),
    # train
    ("train run-dir under a file", ["train", *RATE, "--run-dir", "{afile}/sub"], ["afile"]),
    ("train read-only run-dir", ["train", *RATE, "--run-dir", "{ro}/run"], ["read-only"]),
    ("train run-dir that is a file", ["train", *RATE, "--run-dir", "{afile}"], ["afile"]),
    ("train huge hidden", ["train", "--model", "rate", "--hidden", "10000000", "--no-progress"], ["10000000", "memory"]),
    ("train huge batch", ["train", "--batch", "100000000", "--no-progress"], ["100000000", "memory"]),
    ("train rtrl too big", ["train", "--model", "rate", "--task", "sine", "--rule", "rtrl", "--hidden", "2000",
                            "--run-dir", "{tmp}/run", "--no-progress"], ["GiB", "uoro"]),
    ("train sltt-k too long", ["train", "--model", "lif", "--rule", "sltt-k", "--run-dir", "{tmp}/run",
                               "--no-progress"], ["sltt-k"]),
    ("train cuda without cuda", ["train", *RATE, "--device", "cuda"], ["cuda"]),
    ("train over a finished run", ["train", *RATE, "--run-dir", "{rate}"], ["--resume"]),
    ("resume bit flip", ["train", "--resume", "--run-dir", "{rate-bitflip}", "--steps", "40"], ["checkpoint.pt"]),
    ("resume random bytes", ["train", "--resume", "--run-dir", "{rate-random}", "--steps", "40"], ["checkpoint.pt"]),
    ("resume empty checkpoint", ["train", "--resume", "--run-dir", "{rate-empty}", "--steps", "40"], ["checkpoint.pt"]),
    ("resume checkpoint without rng", ["train", "--resume", "--run-dir", "{rate-no-checkpoint-rng}", "--steps", "40"],
     ["rng"]),
    ("resume wrong shape", ["train", "--resume", "--run-dir", "{rate-wrong-shape}", "--steps", "40"], ["W_rec"]),
    ("resume truncated config", ["train", "--resume", "--run-dir", "{rate-truncated-config}"], ["config.json"]),
    ("resume config without net", ["train", "--resume", "--run-dir", "{rate-config-without-net}"], ["net"]),
    ("resume not a run", ["train", "--resume", "--run-dir", "{tmp}"], ["config.json"]),
    # simulate
    ("simulate unknown backend", ["simulate", "--backend", "nope", "--run-dir", "{tmp}/sim"], ["nope"]),
    ("simulate run-dir is a file", ["simulate", "--hidden", "4", "--steps", "5", "--run-dir", "{afile}"], ["afile"]),
    ("simulate read-only run-dir", ["simulate", "--hidden", "4", "--steps", "5", "--run-dir", "{ro}/sim"],
     ["read-only"]),
    ("simulate huge hidden", ["simulate", "--hidden", "10000000", "--steps", "5", "--run-dir", "{tmp}/sim"],
     ["10000000", "memory"]),
    ("simulate zero steps", ["simulate", "--steps", "0", "--run-dir", "{tmp}/sim"], ["--steps 0"]),
    ("simulate from a missing run", ["simulate", "--from-run", "{tmp}/none", "--run-dir", "{tmp}/sim"],
     ["config.json"]),
    ("simulate from a truncated config", ["simulate", "--from-run", "{lif-truncated-config}", "--run-dir", "{tmp}/sim"],
     ["config.json"]),
    ("simulate from a corrupt checkpoint", ["simulate", "--from-run", "{lif-bitflip}", "--run-dir", "{tmp}/sim"],
     ["checkpoint.pt"]),
    ("simulate from a run without checkpoint",
     ["simulate", "--from-run", "{lif-no-checkpoint}", "--run-dir", "{tmp}/sim"], ["checkpoint.pt"]),
    # export
    ("export unknown target", ["export", "loihi", "{lif}"], ["loihi", "lava", "nir"]),
    ("export a missing run", ["export", "lava", "{tmp}/none"], ["config.json"]),
    ("export nir to a directory", ["export", "nir", "{lif}", "--out", "{tmp}"], ["directory"]),
    ("export nir with lava options", ["export", "nir", "{lif}", "--fixed-point", "--verify", "5", "--saturate"],
     ["--fixed-point", "--verify", "--saturate"]),
    ("export to a read-only directory", ["export", "lava", "{lif}", "--out", "{ro}/lava.npz"], ["read-only"]),
    ("export a corrupt checkpoint", ["export", "lava", "{lif-bitflip}"], ["checkpoint.pt"]),
    ("export a config without net", ["export", "nir", "{lif-config-without-net}"], ["net"]),
    ("export a rate network", ["export", "lava", "{rate}"], ["rate"]),
    # compare
    ("compare negative seeds", ["compare", "--seeds", "-2"], ["--seeds -2"]),
    ("compare unknown rule", ["compare", "--rules", "bptt,nope", "--steps", "5"], ["nope"]),
    ("compare config is a directory", ["compare", "--config", "{tmp}"], ["directory"]),
    ("compare binary config", ["compare", "--config", "{binary}"], ["binary.toml"]),
    ("compare read-only out", ["compare", "--rules", "bptt", "--seeds", "1", "--steps", "10", "--model", "rate",
                               "--hidden", "4", "--workers", "0", "--out", "{ro}/cmp"], ["read-only"]),
    ("compare rtrl too big", ["compare", "--rules", "bptt,rtrl", "--seeds", "1", "--model", "rate", "--task", "sine",
                              "--hidden", "2000", "--workers", "0", "--out", "{tmp}/cmp"], ["GiB"]),
    ("compare sltt-k too long", ["compare", "--rules", "bptt,sltt-k", "--seeds", "1", "--model", "lif", "--steps", "20",
                                 "--hidden", "4", "--workers", "0", "--out", "{tmp}/cmp"], ["sltt-k"]),
    # bench and demo
    ("bench unknown", ["bench", "nope"], ["nope"]),
    ("demo unknown flag", ["demo", "--bogus"], ["--bogus"]),
]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the SHA-256 of its bytes (directories as ``dir``)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("argv", [row[1] for row in TABLE], ids=[row[0] for row in TABLE])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/simulate, ...) would land here
    needles = next(n for _, a, n in TABLE if a is argv)
    work = tmp_path / "work"
    work.mkdir()
    values = {"tmp": str(work / "fresh")}
    (work / "fresh").mkdir()
    (work / "afile").write_text("not a directory\n")
    values["afile"] = str(work / "afile")
    (work / "binary.toml").write_bytes(bytes(range(256)) * 4)
    values["binary"] = str(work / "binary.toml")
    for text in {part for a in argv for part in _placeholders(a)}:
        name, _, kind = text.partition("-")
        if name in ("rate", "lif"):
            d = _copy(runs, name, work / text)
            if kind:
                _spoil(kind)(d)
            values[text] = str(d)
    uses_ro = any("{ro}" in a for a in argv)
    with readonly_dir(tmp_path / "ro") if uses_ro else contextlib.nullcontext(tmp_path / "unused") as ro:
        values["ro"] = str(ro)
        before = _tree(tmp_path)
        with _memory_capped():  # a guard that regresses fails this test instead of the machine
            rc = main([a.format_map(values) for a in argv])
        after = _tree(tmp_path)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("neuro: error: "), err
    assert rc == 2, (rc, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


@contextlib.contextmanager
def _memory_capped(extra: int = 6 * 2 ** 30):
    """The process's address space capped at its present size plus ``extra`` bytes, for the block."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (min(size + extra, hard) if hard != resource.RLIM_INFINITY
                                            else size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _placeholders(arg: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(arg) if field]
