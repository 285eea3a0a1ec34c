"""``neuro export lava|nir RUN_DIR``: a run directory written by ``neuro train`` exported and read back; every
bad option, run directory or output location one line (exit 2) before anything is written, and a write that
fails keeping the previous file."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys

import pytest
import torch

import models
import neuro
from hw_targets.lava import _compat
from neuro import io
from neuro.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "lif"
    rc = main(["train", "--model", "lif", "--task", "add", "--rule", "bptt", "--steps", "40", "--hidden", "6",
               "--model-opt", "dynamics=lava", "--model-opt", "reset=zero", "--run-dir", str(d), "--no-progress"])
    assert rc == 0
    return d


def trained(run_dir):
    config = io.read_json(run_dir / "config.json")
    net = models.make("lif", **config["net"]["fields"])
    params = io.load_checkpoint(run_dir / "checkpoint.pt")["params"]
    return net, {k: v.double() for k, v in params.items()}


def test_export_nir_writes_the_trained_network(run_dir, capsys):
    from hw_targets.nir import import_

    assert main(["export", "nir", str(run_dir)]) == 0
    assert "network.nir" in capsys.readouterr().out
    net, params = trained(run_dir)
    net2, params2 = import_(run_dir / "network.nir")
    assert net2 == net
    for k in params:  # b goes through v_leak = b / dv and back: float rounding
        torch.testing.assert_close(params2[k], params[k], rtol=1e-14, atol=1e-300)


@pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")
@pytest.mark.slow
def test_export_lava_fixed_point_writes_the_quantized_network_and_verifies(run_dir, tmp_path, capsys):
    import hw_targets.lava as hl

    out = tmp_path / "q.npz"
    assert main(["export", "lava", str(run_dir), "--fixed-point", "--vth", "2000", "--out", str(out),
                 "--verify", "30"]) == 0
    text = capsys.readouterr().out
    assert "vth=2000" in text and "spikes identical" in text
    loaded = hl.LavaNetwork.load(out)
    qnet, qparams = hl.quantize(*trained(run_dir), vth=2000)
    assert loaded.fixed_point and loaded.net == qnet
    assert all(torch.equal(loaded.params[k], qparams[k]) for k in qparams)
    xs = torch.zeros(20, 1, qnet.n_in, dtype=torch.float64)
    xs[::3, 0, 0] = 1.0
    assert torch.equal(loaded.run(xs).v, neuro.simulate(qnet, qparams, xs).v)


def test_bad_exports_are_one_line_errors_and_write_nothing(run_dir, tmp_path, capsys):
    cases = [(["export", "loihi", str(run_dir)], "export target 'loihi' is invalid: valid choices are lava, nir"),
             (["export", "nir", str(tmp_path / "none")], "config.json' does not exist"),
             (["export", "lava", str(run_dir), "--vth", "100"], "--vth needs --fixed-point"),
             (["export", "nir", str(run_dir), "--fixed-point"], "--fixed-point applies to lava only")]
    exact = tmp_path / "exact"
    assert main(["train", "--model", "lif", "--task", "add", "--rule", "bptt", "--steps", "40", "--hidden", "4",
                 "--run-dir", str(exact), "--no-progress"]) == 0
    cases.append((["export", "lava", str(exact)], "dynamics='exact' cannot be exported to Lava"))
    cases.append((["export", "lava", str(exact)], "reset='subtract' cannot be exported to Lava"))  # the same line
    capsys.readouterr()
    for argv, msg in cases:
        before = sorted(p.name for p in run_dir.iterdir()) + sorted(p.name for p in exact.iterdir())
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("neuro: error: ") and msg in err and err.count("\n") == 1, err
        assert sorted(p.name for p in run_dir.iterdir()) + sorted(p.name for p in exact.iterdir()) == before


def one_line_error(capsys, argv, status=2):
    """Run ``neuro ARGV``: exit ``status``, nothing on stdout, one line ``neuro: error: ...`` on stderr."""
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == status, (argv, out)
    assert out.out == "" and out.err.startswith("neuro: error: ") and out.err.count("\n") == 1, (argv, out)
    return out.err


def test_every_option_that_does_not_apply_is_named_in_one_line(run_dir, capsys):
    err = one_line_error(capsys, ["export", "nir", str(run_dir), "--fixed-point", "--vth", "3", "--saturate",
                                  "--verify", "-2"])
    assert "--fixed-point, --vth, --saturate, --verify apply to lava only; --verify -2 is invalid" in err
    err = one_line_error(capsys, ["export", "lava", str(run_dir), "--vth", "3", "--saturate", "--verify", "-1"])
    assert "--verify -1 is invalid: must be >= 0; --vth and --saturate need --fixed-point" in err


def test_the_output_location_is_checked_before_anything_runs(run_dir, tmp_path, capsys, monkeypatch):
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    err = one_line_error(capsys, ["export", "nir", str(run_dir), "--out", str(a_dir)])
    assert f"--out {str(a_dir)!r} is a directory: give a file path, e.g. {str(a_dir / 'network.nir')!r}" in err
    err = one_line_error(capsys, ["export", "lava", str(run_dir), "--out", str(tmp_path / "none" / "x.npz")])
    assert f"its directory {str(tmp_path / 'none')!r} does not exist" in err
    assert list(a_dir.iterdir()) == [] and not (tmp_path / "none").exists()

    import tempfile

    def read_only(*args, dir=None, **kw):  # noqa: A002, ARG001 - what mkstemp raises on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = sorted(p.name for p in run_dir.iterdir())
    for target, name in (("lava", "lava.npz"), ("nir", "network.nir")):
        err = one_line_error(capsys, ["export", target, str(run_dir)])
        assert (f"RUN_DIR {str(run_dir)!r} (where {name} goes; --out chooses another file) cannot be written: "
                "read-only file system") in err
    err = one_line_error(capsys, ["export", "nir", str(run_dir), "--out", str(tmp_path / "n.nir")])
    assert f"--out {str(tmp_path / 'n.nir')!r} cannot be written: read-only file system" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def broken_copies(run_dir, tmp_path):
    """Copies of ``run_dir``, each broken one way, and a phrase of the error each must give."""
    cases = {}

    def copy(name):
        d = tmp_path / name
        shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("*.npz", "*.nir"))
        return d

    text = (run_dir / "config.json").read_text()
    copy("truncated").joinpath("config.json").write_text(text[: len(text) // 2])
    cases["truncated"] = "config.json"
    copy("no_net").joinpath("config.json").write_text('{"format": 1, "train": {}}')
    cases["no_net"] = "config.json"
    copy("no_checkpoint").joinpath("checkpoint.pt").unlink()
    cases["no_checkpoint"] = "checkpoint.pt"
    ckpt = copy("corrupt_checkpoint") / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    cases["corrupt_checkpoint"] = "checkpoint.pt"
    (tmp_path / "a_file").write_text("x")
    cases["a_file"] = "a_file"
    return cases


def test_a_broken_run_directory_is_one_line_naming_the_file(run_dir, tmp_path, capsys):
    for name, phrase in broken_copies(run_dir, tmp_path).items():
        d = tmp_path / name
        before = sorted(p.name for p in d.iterdir()) if d.is_dir() else None
        for argv in (["export", "lava", str(d)], ["export", "nir", str(d)],
                     ["simulate", "--from-run", str(d), "--run-dir", str(tmp_path / "sim")]):
            err = one_line_error(capsys, argv)
            assert str(d / phrase if d.is_dir() else d) in err, (name, err)
        assert (sorted(p.name for p in d.iterdir()) if d.is_dir() else None) == before
    assert not (tmp_path / "sim").exists()


@pytest.fixture(scope="module")
def loihi_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "loihi"
    assert main(["train", "--model", "lif-loihi", "--task", "add", "--rule", "bptt", "--steps", "20", "--hidden", "5",
                 "--run-dir", str(d), "--no-progress"]) == 0
    return d


def test_a_lif_loihi_run_exports_as_it_is_with_or_without_fixed_point(loihi_run, tmp_path, capsys):
    """A trained lif-loihi network is Loihi's integer model already: ``export lava`` writes the integers it
    computes with (not its trained, unrounded parameters), ``--fixed-point`` changes nothing, and the
    quantization options are refused in one line."""
    import hw_targets.lava as hl

    config = io.read_json(loihi_run / "config.json")
    net = models.make("lif-loihi", **config["net"]["fields"])
    latent = {k: v.double() for k, v in io.load_checkpoint(loihi_run / "checkpoint.pt")["params"].items()}
    assert not torch.equal(latent["W_in"], torch.round(latent["W_in"]))  # training left them off the integers
    for extra in ([], ["--fixed-point"]):
        out = tmp_path / f"l{len(extra)}.npz"
        assert main(["export", "lava", str(loihi_run), "--out", str(out), *extra]) == 0
        assert "lif-loihi network for Lava, fixed point (Loihi's integer model)" in capsys.readouterr().out
        loaded = hl.LavaNetwork.load(out)
        assert loaded.fixed_point and loaded.net == net
        expected = hl.loihi_params(latent)
        assert all(torch.equal(loaded.params[k], expected[k]) for k in expected)
    err = one_line_error(capsys, ["export", "lava", str(loihi_run), "--fixed-point", "--vth", "100", "--saturate"])
    assert "--vth and --saturate do not apply to a 'lif-loihi' network" in err


@pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")
@pytest.mark.slow
def test_verify_on_a_network_that_never_spikes_says_it_proved_nothing(run_dir, tmp_path, capsys):
    silent = tmp_path / "silent"
    shutil.copytree(run_dir, silent)
    ckpt = io.load_checkpoint(silent / "checkpoint.pt")
    ckpt["params"] = {**ckpt["params"], "b": torch.full_like(ckpt["params"]["b"], -1.0)}  # held below threshold
    io.save_checkpoint(silent / "checkpoint.pt", ckpt)
    assert main(["export", "lava", str(silent), "--verify", "25"]) == 0
    out = capsys.readouterr()
    assert "spikes identical; 0 spikes" in out.out
    assert out.err == ("neuro: warning: verify proved nothing: no spike in 25 steps of 6 neurons in either; raise "
                       "--verify or check that the network fires\n")


@pytest.mark.slow
def test_a_failed_write_keeps_the_previous_file(run_dir, tmp_path):
    """A file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG) stops the write
    of lava.npz and network.nir: one line each, exit 1, the previous files intact, no temporary file left."""
    d = tmp_path / "run"
    shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("*.npz", "*.nir"))
    previous = {"lava.npz": b"previous lava", "network.nir": b"previous nir"}
    for name, data in previous.items():
        (d / name).write_bytes(data)
    before = sorted(p.name for p in d.iterdir())
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512)); "
              "from neuro.cli import main; print([main(['export', t, sys.argv[1]]) for t in ('lava', 'nir')])")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(d)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[1, 1]", (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    for line, name in zip(lines, ("lava.npz", "network.nir")):
        assert line == (f"neuro: error: the export ran, but writing {str(d / name)!r} failed: file too large (a "
                        "file-size limit or the file system's); it keeps its previous content: free space (or lift "
                        "the limit) or choose another --out, and run it again")
    assert sorted(p.name for p in d.iterdir()) == before
    assert all((d / name).read_bytes() == data for name, data in previous.items())
