"""Fault injection: what a run survives, tried with real signals, a real full disk and real corrupt files.

* ``neuro train`` killed with SIGKILL at a random step (three seeds), then ``--resume``-d: the same final
  parameters and metrics (wall-clock columns aside) as a run never interrupted;
* ``neuro compare`` killed with SIGKILL at a random point of its sweep (three seeds), then run again: the same
  run files and table as a sweep never interrupted, no finished run redone, and no worker left running;
* ``neuro train`` stopped by SIGTERM or SIGINT: exit status 130 and the command that continues it, which
  ends where an uninterrupted run ends;
* the disk filling up while ``neuro train`` runs: exit status 1, one line naming the cause and the last good
  checkpoint, which is intact; once space is freed ``--resume`` ends where an uninterrupted run ends;
* a checkpoint with bits flipped anywhere is refused by its checksum (exit 2), and left as it was.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _fs import fill, small_tmpfs

from neuro import io
from neuro.cli import main
from neuro.comparison import outdir
from neuro.rundir import TIMING_COLUMNS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RATE = ["--model", "rate", "--task", "sine", "--rule", "tbptt", "--hidden", "4", "--chunk", "10", "--log-every", "10",
        "--checkpoint-every", "20", "--no-progress"]
STEPS = 1000


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _neuro(*args: str, cwd: Path, capture: bool = True) -> subprocess.Popen:
    """``python -m neuro ARGS`` started in ``cwd``; its output captured, or dropped (a process killed unread)."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "neuro", *args], cwd=cwd, env=_env(), stdout=out, stderr=out,
                            text=True)


def _last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.csv").read_text().strip().splitlines()
        return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0
    except (OSError, ValueError):
        return 0


def _wait_until(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"finished before the fault: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.01)


def _result(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    ckpt = io.load_checkpoint(run_dir / "checkpoint.pt")
    rows = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in io.read_csv(run_dir / "metrics.csv")]
    return ckpt["params"], rows


def _assert_same_run(a: Path, b: Path) -> None:
    pa, ma = _result(a)
    pb, mb = _result(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert ma == mb


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps."""
    d = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *RATE, "--steps", str(STEPS), "--run-dir", str(d)]) == 0
    return d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_killed_at_a_random_step_resumes_to_the_same_run(seed, reference, tmp_path):
    kill_at = random.Random(seed).randrange(40, STEPS - 300)
    run = tmp_path / "run"
    proc = _neuro("train", *RATE, "--steps", str(STEPS), "--run-dir", str(run), cwd=tmp_path)
    _wait_until(lambda: _last_step(run) >= kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _last_step(run) < STEPS
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0  # in this process: quicker
    _assert_same_run(run, reference)
    assert not list(run.glob(".*.tmp")), "temporary files of the killed run are left behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_stopped_by_a_signal_exits_130_naming_how_to_continue(sig, reference, tmp_path):
    run = tmp_path / "run"
    proc = _neuro("train", *RATE, "--steps", str(STEPS), "--run-dir", str(run), cwd=tmp_path)
    _wait_until(lambda: (run / "checkpoint.pt").is_file() and _last_step(run) >= 100, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"neuro: interrupted; continue from its last checkpoint with: neuro train "
                                        f"--resume --run-dir {run}"], err
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0  # in this process: quicker
    _assert_same_run(run, reference)


def test_a_full_disk_mid_run_exits_1_keeps_the_last_checkpoint_and_resumes(reference, tmp_path):
    with small_tmpfs(tmp_path / "disk", 2048) as disk:
        run = disk / "run"
        proc = _neuro("train", *RATE, "--steps", str(STEPS), "--run-dir", str(run), cwd=tmp_path)
        _wait_until(lambda: (run / "checkpoint.pt").is_file() and _last_step(run) >= 100, proc)
        filler = fill(disk)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("neuro: error: ") and "Traceback" not in err, err
        assert "space" in lines[0] and str(run / "checkpoint.pt") in lines[0] and "--resume" in lines[0], lines[0]
        saved = io.load_checkpoint(run / "checkpoint.pt")  # intact: it loads, and it is a step of the run
        assert 0 < saved["step"] < STEPS
        filler.unlink()
        assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
        _assert_same_run(run, reference)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_checkpoint_with_flipped_bits_is_refused_and_left_as_it_was(seed, reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(rng.randrange(1, 4)):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))
    rc = main(["train", "--resume", "--run-dir", str(run), "--steps", str(STEPS + 20)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("neuro: error: ") and len(err.strip().splitlines()) == 1 and str(path) in err, err
    assert path.read_bytes() == bytes(raw)


# -- neuro compare killed ------------------------------------------------------------------------------------

SWEEP_TIMING = ("time_per_step_s", "peak_mem_bytes", "wall_s")
SWEEP_TIMING_COLUMNS = ("time_per_step_ms", "time_vs_bptt", "peak_mem_mb", *SWEEP_TIMING)


def _strip_timing(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in SWEEP_TIMING}


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in SWEEP_TIMING_COLUMNS} for r in io.read_csv(path)]


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


KILL_CMD = ["--task", "sine", "--rules", "bptt,tbptt", "--seeds", "2", "--steps", "40", "--hidden", "4",
            "--log-every", "10", "--align-steps", "20", "--eval-steps", "20", "--rule-opt", "tbptt:k=3"]


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    assert main(["compare", *KILL_CMD, "--workers", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sweep_killed_at_any_time_resumes_to_the_same_results(sweep_reference, tmp_path, seed):
    out = tmp_path / "sweep"
    proc = _neuro("compare", *KILL_CMD, "--workers", "2", "--out", str(out), cwd=tmp_path, capture=False)
    try:
        deadline = time.monotonic() + 180
        while not list((out / "runs").rglob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert list((out / "runs").rglob("*.json")), "no run finished"
        end = time.monotonic() + random.Random(seed).uniform(0.0, 1.5)
        workers: set[int] = set()
        while time.monotonic() < end and proc.poll() is None:
            workers |= _children(proc.pid)
            time.sleep(0.02)
        workers |= _children(proc.pid)
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and workers, "the sweep ended before it was killed"
    time.sleep(2.0)
    assert not [p for p in workers if _alive(p)], "a worker outlived the sweep"
    done = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    for p in done:
        json.loads(p.read_text())  # nothing half-written
    assert main(["compare", *KILL_CMD, "--workers", "0", "--out", str(out)]) == 0  # in this process: quicker
    assert {p: p.stat().st_mtime_ns for p in done} == done, "a finished run was redone"
    whole = {p.relative_to(sweep_reference) for p in sweep_reference.rglob("*") if p.is_file()}
    resumed = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert resumed == whole, resumed ^ whole  # no temporary file, probe or work directory left
    for rel in sorted(whole):
        if rel.suffix == ".json" and rel.parts[0] == "runs":
            saved = [_strip_timing(json.loads((d / rel).read_text())) for d in (out, sweep_reference)]
            assert saved[0] == saved[1], rel
        elif rel.suffix == ".pt":
            a, b = io.load_checkpoint(out / rel), io.load_checkpoint(sweep_reference / rel)
            assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)
        elif rel.name in ("summary.csv", "runs.csv", "curves.csv"):
            assert _rows(out / rel) == _rows(sweep_reference / rel), rel
        elif rel.name == outdir.SETTINGS:
            assert (out / rel).read_bytes() == (sweep_reference / rel).read_bytes()
