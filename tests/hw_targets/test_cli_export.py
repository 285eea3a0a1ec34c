"""``neuro export lava|nir RUN_DIR``: a run directory written by ``neuro train`` exported and read back."""

from __future__ import annotations

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
             (["export", "lava", str(run_dir), "--vth", "100"], "--vth and --saturate need --fixed-point"),
             (["export", "nir", str(run_dir), "--fixed-point"], "apply to lava only")]
    exact = tmp_path / "exact"
    assert main(["train", "--model", "lif", "--task", "add", "--rule", "bptt", "--steps", "40", "--hidden", "4",
                 "--run-dir", str(exact), "--no-progress"]) == 0
    cases.append((["export", "lava", str(exact)], "dynamics='exact' cannot be exported to Lava"))
    capsys.readouterr()
    for argv, msg in cases:
        before = sorted(p.name for p in run_dir.iterdir()) + sorted(p.name for p in exact.iterdir())
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("neuro: error: ") and msg in err and err.count("\n") == 1, err
        assert sorted(p.name for p in run_dir.iterdir()) + sorted(p.name for p in exact.iterdir()) == before
