"""``neuro bench train_sparse``: a tiny run writes its table (every case measured on the engine it asked for, the
sparse rows with their synapse counts and ratios) and bad options exit 2 with one line."""

from __future__ import annotations

import json

import pytest

from neuro.bench import train_sparse


def test_a_tiny_run_measures_every_case_on_its_engine(tmp_path, capsys):
    out = tmp_path / "out"
    assert train_sparse.main(["--quick", "--rules", "sltt", "bptt", "--connectivity", "1", "0.2",
                              "--out", str(out)]) == 0
    report = json.loads((out / "train_sparse.json").read_text())
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2
    for r in rows:
        assert r["engine_used"] == r["engine"] and r["steps_per_s"]["median"] > 0
        assert r["synapses"] == (64 * 64 if r["connectivity"] == 1 else pytest.approx(0.2 * 64 * 64, rel=0.2))
    text = (out / "train_sparse.md").read_text()
    assert "| sltt | 0.2 |" in text and "compiled / torch" in text


@pytest.mark.parametrize("argv,words", [(["--connectivity", "0"], "--connectivity 0.0"),
                                        (["--rules", "rflo"], "no compiled engine runs a sparse lif"),
                                        (["--engines", "gpu"], "--engines gpu"),
                                        (["--hidden", "64,0"], "--hidden '64,0'"),
                                        (["--hidden", "32,32", "--rules", "anp-time"], "sparse stack network")])
def test_bad_options_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        train_sparse.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
