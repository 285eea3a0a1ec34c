"""``neuro simulate --backend lava``: a lif network in Lava's form runs on Lava's simulator from the command
line and its spike trains equal the torch model's (``--check``)."""

from __future__ import annotations

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
