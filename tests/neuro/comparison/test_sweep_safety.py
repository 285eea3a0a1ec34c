"""neuro compare never mixes settings in one output directory, checks before it trains, keeps every finished
run when another fails, leaves no worker process or temporary file behind, and says what went wrong on one
line."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

import neuro
from neuro import errors, io
from neuro.cli import main as cli
from neuro.comparison import SweepFailed, local, outdir, worker

TINY = dict(task="sine", rules=["bptt"], seeds=1, steps=20, hidden=4, log_every=10, align_every=0, eval_steps=20,
            progress=False, workers=0)
TIMING = ("time_per_step_s", "peak_mem_bytes", "wall_s")
TIMING_COLUMNS = ("time_per_step_ms", "time_vs_bptt", "peak_mem_mb", *TIMING)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in TIMING}


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in io.read_csv(path)]


def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "sweep"
    neuro.compare(**TINY, out=out)
    before = _files(out)
    with pytest.raises(ValueError) as e:
        neuro.compare(**{**TINY, "steps": 10, "hidden": 5}, out=out)
    msg = str(e.value)
    assert "steps: 20 saved, 10 now" in msg and "hidden: 4 saved, 5 now" in msg, msg
    assert "same settings to resume" in msg and "another output directory" in msg
    with pytest.raises(ValueError, match=r"lr of rule 'bptt': 0.001 saved, 0.01 now"):
        neuro.compare(**{**TINY, "lr": 0.01}, out=out)
    assert errors.exit_status(e.value) == errors.USAGE
    assert _files(out) == before, "a refused sweep wrote into the directory"


def test_rules_and_seeds_may_be_added(tmp_path):
    out = tmp_path / "sweep"
    neuro.compare(**TINY, out=out)
    first = (out / "runs" / "bptt" / "seed-0.json").read_bytes()
    res = neuro.compare(**{**TINY, "rules": ["bptt", "tbptt"], "seeds": 2}, out=out)
    assert [(r["spec"]["rule"], r["spec"]["seed"]) for r in res.runs] == [("bptt", 0), ("bptt", 1), ("tbptt", 0),
                                                                         ("tbptt", 1)]
    assert (out / "runs" / "bptt" / "seed-0.json").read_bytes() == first, "a finished run was redone"
    saved = io.read_json(out / outdir.SETTINGS)
    assert sorted(saved["rules"]) == ["bptt", "tbptt"] and saved["seeds"] == [0, 1]
    neuro.compare(**{**TINY, "rules": ["tbptt"]}, out=out)  # a subset of the sweep: nothing to run


def test_a_directory_without_settings_file_is_checked_against_its_run_files(tmp_path):
    out = tmp_path / "sweep"
    neuro.compare(**{**TINY, "seeds": 2}, out=out)
    (out / outdir.SETTINGS).unlink()  # as written before the settings file existed
    with pytest.raises(ValueError, match="steps: 20 saved, 10 now"):
        neuro.compare(**{**TINY, "steps": 10}, out=out)
    # a run file with other settings than the sweep's is neither reused nor overwritten
    run = out / "runs" / "bptt" / "seed-1.json"
    stale = io.read_json(run)
    stale["spec"]["eval_steps"] = 30
    io.write_json(run, stale)
    with pytest.raises(ValueError, match=r"seed-1.json' is a run with other settings \(eval_steps: 30 there, 20 in "
                                         r"this sweep\): remove it"):
        neuro.compare(**{**TINY, "seeds": 2}, out=out)
    assert io.read_json(run) == stale


def test_cli_rerun_with_other_settings_exits_2_naming_the_setting(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["compare", "--task", "sine", "--rules", "bptt", "--seeds", "1", "--hidden", "4", "--log-every", "10",
            "--align-every", "0", "--eval-steps", "20", "--workers", "0", "--out", str(out)]
    assert cli([*base, "--steps", "20"]) == 0
    capsys.readouterr()
    assert cli([*base, "--steps", "10", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuro: error: ") and "steps: 20 saved, 10 now" in err and err.count("\n") == 1, err
    assert io.read_json(out / "runs" / "bptt" / "seed-0.json")["spec"]["steps"] == 20
    assert not (out / "runs" / "bptt" / "seed-1.json").exists()


def test_a_run_that_fails_leaves_the_others_finished_and_saved(tmp_path, monkeypatch):
    real = worker.run_one

    def run_one(spec):
        if spec["rule"] == "tbptt" and spec["seed"] == 0:
            raise ValueError("rule 'tbptt' got something it cannot run\nsecond line")
        return real(spec)

    monkeypatch.setattr(worker, "run_one", run_one)
    out = tmp_path / "sweep"
    with pytest.raises(SweepFailed) as e:
        neuro.compare(**{**TINY, "rules": ["tbptt", "bptt"], "seeds": 2}, out=out)
    msg = str(e.value)
    assert "1 of 4 runs of the sweep are missing" in msg and "rule 'tbptt', seed 0 failed: rule 'tbptt' got " \
        "something it cannot run second line" in msg, msg
    assert f"3 of 4 runs are kept in {str(out / 'runs')!r}" in msg
    assert e.value.failures == ["rule 'tbptt', seed 0 failed: rule 'tbptt' got something it cannot run second line"]
    assert errors.exit_status(e.value) == errors.FAILED and e.value.last_good == out / "runs"
    assert sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("*.json")) == [
        "runs/bptt/seed-0.json", "runs/bptt/seed-1.json", "runs/tbptt/seed-1.json"]
    assert [(r["spec"]["rule"], r["spec"]["seed"]) for r in e.value.results.runs] == [("tbptt", 1), ("bptt", 0),
                                                                                     ("bptt", 1)]
    monkeypatch.setattr(worker, "run_one", real)  # the same sweep again runs only the failed run
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    res = neuro.compare(**{**TINY, "rules": ["tbptt", "bptt"], "seeds": 2}, out=out)
    assert len(res.runs) == 4 and all(p.stat().st_mtime_ns == t for p, t in kept.items())


_FAKE_BOOT = """
import os, signal, sys
from pathlib import Path
line = b""
while not line.endswith(b"\\n"):
    line += os.read(0, 1)
if b'"rule": "tbptt"' in line:  # as the kernel's out-of-memory killer would
    os.kill(os.getpid(), signal.SIGKILL)
sys.path[0] = {root!r}
from neuro.comparison.worker import serve
sys.exit(serve(sys.argv[1], line))
"""


@pytest.mark.slow
def test_a_worker_that_dies_is_one_line_and_the_other_run_is_kept(tmp_path, monkeypatch, capsys):
    boot = tmp_path / "boot.py"
    boot.write_text(_FAKE_BOOT.format(root=str(Path(neuro.__file__).resolve().parents[1])))
    monkeypatch.setattr(local, "_BOOT", boot)
    out = tmp_path / "o"
    status = cli(["compare", "--task", "sine", "--rules", "bptt,tbptt", "--seeds", "1", "--steps", "20", "--hidden", "4",
                  "--log-every", "10", "--align-every", "0", "--eval-steps", "20", "--workers", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1, captured
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "rule 'tbptt', seed 0 failed: the worker process was killed by SIGKILL (the system may " \
        "have run out of memory)" in err[0] and "Traceback" not in captured.out + captured.err, captured
    assert "1 of 2 runs are kept in" in err[0]
    assert "| bptt |" in captured.out  # the table of the finished runs
    assert (out / "runs" / "bptt" / "seed-0.json").is_file() and not (out / "runs" / "tbptt").exists()
    assert not (out / outdir.WORK).exists()


@pytest.mark.parametrize("argv, expected", [
    (["--rules", "bptt,rtrl", "--hidden", "2000"], "rule 'rtrl': rtrl needs 59.7 GiB for the influence matrix"),
    (["--model", "lif", "--rules", "bptt,sltt-k", "--rule-opt", "sltt-k:T=6", "--hidden", "4"],
     "rule 'sltt-k' option T=6 is shorter than the sequences of this run"),
])
def test_a_run_that_cannot_run_is_refused_before_any_starts(tmp_path, capsys, monkeypatch, argv, expected):
    def never(spec):
        raise AssertionError("a run started")

    monkeypatch.setattr(worker, "run_one", never)
    out = tmp_path / "o"
    status = cli(["compare", "--task", "sine", *argv, "--seeds", "2", "--steps", "20", "--workers", "0",
                  "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def _enospc_on(name: str, monkeypatch) -> None:
    real = io.write_json

    def write_json(path, obj):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj)

    monkeypatch.setattr(io, "write_json", write_json)


def test_a_full_disk_after_training_names_what_was_kept(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    _enospc_on("seed-1.json", monkeypatch)
    with pytest.raises(SweepFailed) as e:
        neuro.compare(**{**TINY, "seeds": 3}, out=out)
    msg = str(e.value)
    assert "rule 'bptt', seed 1 finished but was not saved: no space left on device" in msg, msg
    assert "1 run was not started" in msg and f"1 of 3 runs are kept in {str(out / 'runs')!r}" in msg
    assert "after freeing space" in msg and errors.exit_status(e.value) == errors.FAILED
    assert [r["spec"]["seed"] for r in e.value.results.runs] == [0, 1]  # in memory, for the caller
    monkeypatch.undo()
    kept = (out / "runs" / "bptt" / "seed-0.json").stat().st_mtime_ns
    assert len(neuro.compare(**{**TINY, "seeds": 3}, out=out).runs) == 3
    assert (out / "runs" / "bptt" / "seed-0.json").stat().st_mtime_ns == kept


def test_a_summary_that_cannot_be_written_keeps_the_runs(tmp_path, monkeypatch):
    out = tmp_path / "sweep"

    def write_csv(path, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(io, "write_csv", write_csv)
    with pytest.raises(SweepFailed, match=r"summary of the sweep could not be written \('.*runs.csv': no space left on device\); "
                                          r"all 1 runs finished and are kept in .*no run is redone"):
        neuro.compare(**TINY, out=out)
    assert (out / "runs" / "bptt" / "seed-0.json").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_an_output_directory_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    import resource

    def never(spec):
        raise AssertionError("trained before checking the output directory")

    monkeypatch.setattr(worker, "run_one", never)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="it exists and is not a directory"):
        neuro.compare(**TINY, out=tmp_path / "file")
    with pytest.raises(ValueError, match=r"out='.*file/sub' cannot be written \(.*not a directory\)"):
        neuro.compare(**TINY, out=tmp_path / "file" / "sub")
    # a file system refusing every write (as a read-only or full one does; root may write anywhere else)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        with pytest.raises(ValueError) as e:
            neuro.compare(**TINY, out=tmp_path / "ro")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert "out=" in str(e.value) and "cannot be written (file too large" in str(e.value), str(e.value)
    assert os.listdir(tmp_path / "ro") == [], "the probe file was left behind"


def test_config_and_seed_errors_name_the_file_and_the_key(tmp_path, capsys):
    def error(*argv: str) -> str:
        assert cli(["compare", *argv]) == 2
        return capsys.readouterr().err.strip()

    assert error("--seeds", "-2") == "neuro: error: --seeds -2 is invalid: must be an integer >= 1 (the number of seeds)"
    assert "--seeds 0 is invalid" in error("--seeds", "0")
    binary = tmp_path / "sweep.toml"
    binary.write_bytes(b"\x00\xff\xfe\x00")
    assert error("--config", str(binary)) == (f"neuro: error: config file {str(binary)!r} is not a text file "
                                             "(byte 1 is not UTF-8): expected TOML text")
    assert error("--config", str(tmp_path)) == (f"neuro: error: config file {str(tmp_path)!r} is a directory: "
                                               "expected a .toml, .yaml or .yml file")
    assert "does not exist" in error("--config", str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "sine"\nupdate-every = 5\nseeds = [0, "one"]\n[lr]\nbptt = "fast"\n')
    msg = error("--config", str(bad))
    assert msg.startswith(f"neuro: error: {bad}: ") and "'update-every' (did you mean 'update_every'?)" in msg, msg
    assert "seeds=[0, 'one'] is invalid" in msg and "lr.bptt='fast' is invalid: expected a number" in msg


def test_what_a_killed_sweep_left_in_its_work_area_is_removed_by_the_next(tmp_path):
    out = tmp_path / "sweep"
    neuro.compare(**TINY, out=out)
    (out / outdir.WORK).mkdir()
    (out / outdir.WORK / "job-1.log").write_text("left by a killed sweep")
    neuro.compare(**TINY, out=out)  # nothing to run
    assert not (out / outdir.WORK).exists()
