"""``neuro simulate``: a lif network in Lava's form runs on Lava's simulator from the command line and its spike
trains equal the torch model's (``--check``: the float model for ``lava``, the quantized one that
``lava-fixed`` runs); the output directory is checked before anything runs, and a write that fails keeps the
previous files."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest

from neuro.cli import main


@pytest.mark.slow
def test_simulate_on_lava_matches_torch(tmp_path, capsys):
    rc = main(["simulate", "--backend", "lava", "--model-opt", "dynamics=lava", "--model-opt", "reset=zero",
               "--hidden", "20", "--steps", "100", "--check", "--run-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "spike trains identical" in out
    trace = np.load(tmp_path / "trace.npz")
    assert trace["spikes"].shape[0] == 100 and trace["spikes"].sum() > 0
    assert (tmp_path / "raster.png").stat().st_size > 0


def test_simulate_on_lava_refuses_what_lava_cannot_run(tmp_path, capsys):
    rc = main(["simulate", "--backend", "lava", "--hidden", "5", "--steps", "10", "--run-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "neuro: error:" in err and "lava" in err
    assert not (tmp_path / "x").exists()  # no empty run directory left behind


@pytest.mark.slow
def test_lava_fixed_is_checked_against_the_quantized_network_it_runs(tmp_path, capsys):
    """Lava's fixed point is bit-exact with the quantized torch model (lif-loihi); against the float lif its
    voltages are in other units (2^18 apart) and the spikes may differ, so that is not the reference."""
    rc = main(["simulate", "--backend", "lava-fixed", "--model-opt", "dynamics=lava", "--model-opt", "reset=zero",
               "--hidden", "20", "--steps", "100", "--check", "--run-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("check against torch (float64) on the quantized 'lif-loihi' network that lava-fixed runs: spike trains "
            "identical, max relative voltage difference 0.00e+00") in out
    assert np.load(tmp_path / "trace.npz")["spikes"].sum() > 0


def one_line_error(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 2 and out.out == "" and out.err.startswith("neuro: error: ") and out.err.count("\n") == 1, out
    return out.err


def test_the_run_dir_is_checked_before_the_simulation_runs(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    argv = ["simulate", "--hidden", "5", "--steps", "10", "--run-dir"]
    err = one_line_error(capsys, [*argv, str(a_file)])
    assert f"--run-dir {str(a_file)!r} is invalid: it exists and is not a directory" in err
    err = one_line_error(capsys, [*argv, str(a_file / "sub")])
    assert f"--run-dir {str(a_file / 'sub')!r} is invalid: {str(a_file)!r} is a file, not a directory" in err
    assert a_file.read_text() == "keep"

    import tempfile

    def read_only(*args, dir=None, **kw):  # noqa: A002, ARG001 - what mkstemp raises on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for d in (tmp_path, tmp_path / "new" / "dir"):
        err = one_line_error(capsys, [*argv, str(d)])
        assert f"--run-dir {str(d)!r} cannot be written: read-only file system" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.slow
def test_a_failed_write_keeps_the_previous_trace_and_raster(tmp_path, capsys):
    """A file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG) stops the write
    of trace.npz: one line, exit 1, the previous trace.npz and raster.png intact, no temporary file left; a
    run directory made for the run is removed again."""
    d = tmp_path / "run"
    argv = ["simulate", "--hidden", "50", "--steps", "300", "--seed", "1", "--run-dir"]
    assert main([*argv, str(d)]) == 0
    capsys.readouterr()
    previous = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(previous) == ["raster.png", "trace.npz"] and len(previous["trace.npz"]) > 100_000
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)); "
              "from neuro.cli import main; argv = sys.argv[1:-2]; "
              "print([main([*argv, '--seed', '2', '--run-dir', d]) for d in sys.argv[-2:]])")
    new = tmp_path / "new" / "dir"
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", script, *argv[:-3], str(d), str(new)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == "[1, 1]\n", (r.stdout, r.stderr)
    tail = ": free space (or lift the limit) or choose another --run-dir, and run it again"
    assert r.stderr.splitlines() == [
        f"neuro: error: the simulation ran, but writing to {str(d)!r} failed: file too large (a file-size limit or "
        f"the file system's); trace.npz and raster.png there keep their previous content{tail}",
        f"neuro: error: the simulation ran, but writing to {str(new)!r} failed: file too large (a file-size limit "
        f"or the file system's); nothing was written{tail}"]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
