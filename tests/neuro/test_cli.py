"""The ``neuro`` command line: one-line usage errors with exit status 2 and nothing written; a tiny
successful run and its resume; ``bench`` dispatch; ``demo --quick``; ``python -m neuro``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from neuro import io
from neuro.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "rate", "--task", "add", "--rule", "tbptt", "--hidden", "4", "--no-progress"]

ERRORS = [
    (["--model", "foo"], ["'foo'", "lif", "rate"]),
    (["--task", "nope"], ["'nope'", "add", "copy"]),
    (["--rule", "xyz"], ["'xyz'", "bptt", "tbptt"]),
    (["--hidden", "-3"], ["-3"]),
    (["--hidden", "0"], ["--hidden 0"]),
    (["--steps", "0"], ["steps=0"]),
    (["--steps", "-5"], ["steps=-5"]),
    (["--lr", "-1"], ["lr=-1.0"]),
    (["--batch", "0"], ["batch=0"]),
    (["--update-every", "0"], ["update_every=0"]),
    (["--optimizer", "foo"], ["'foo'", "'adam', 'sgd', 'rmsprop'"]),
    (["--dtype", "float16"], ["'float16'", "float32", "float64"]),
    (["--task", "copy", "--task-opt", "delay=-1"], ["delay=-1"]),
    (["--task", "copy", "--task-opt", "delay=500", "--steps", "300"], ["steps=300", "700"]),
    (["--model-opt", "bogus=1"], ["bogus", "alpha"]),
    (["--model-opt", "n_in=3"], ["n_in"]),
    (["--model-opt", "alpha"], ["'alpha'", "key=value"]),
    (["--rule-opt", "k=0"], ["k=0"]),
    (["--rule-opt", "window=3"], ["window", "k"]),
    (["--task-opt", "t9=3"], ["t9", "t1", "t2"]),
    (["--bogus", "1"], ["--bogus"]),
    (["--steps", "ten"], ["'ten'"]),
]


def _one_line_error(capsys, rc: int, needles: list[str]) -> str:
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("neuro: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("extra,needles", ERRORS, ids=[" ".join(e) for e, _ in ERRORS])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, extra, needles):
    run_dir = tmp_path / "run"
    rc = main(["train", *TINY, "--steps", "20", "--run-dir", str(run_dir), *extra])
    _one_line_error(capsys, rc, needles)
    assert not run_dir.exists()


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path, capsys):
    rc = main(["train", *TINY, "--run-dir", str(tmp_path / "none"), "--resume"])
    _one_line_error(capsys, rc, ["no checkpoint", "checkpoint.pt"])
    assert not (tmp_path / "none").exists()


def test_unknown_command_and_bench(capsys):
    _one_line_error(capsys, main(["frobnicate"]), ["'frobnicate'", "train", "demo", "bench"])
    _one_line_error(capsys, main(["bench", "nosuch"]), ["'nosuch'", "sim"])
    _one_line_error(capsys, main(["bench", "../etc"]), ["'../etc'"])
    _one_line_error(capsys, main([]), ["required"])


def test_bench_dispatches_to_the_module_main(monkeypatch, capsys):
    import neuro.cli

    seen = []
    fake = types.ModuleType("neuro.bench.fake")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "neuro.bench.fake", fake)
    monkeypatch.setattr(neuro.cli, "_bench_names", lambda: ["fake", "sim"])
    assert main(["bench", "fake", "--quick", "--out", "x"]) == 7
    assert seen == [["--quick", "--out", "x"]]


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--run-dir" in capsys.readouterr().out


def test_a_tiny_run_writes_its_directory_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "x"
    args = ["train", *TINY, "--steps", "30", "--run-dir", str(run_dir), "--log-every", "10",
            "--checkpoint-every", "10", "--chunk", "10", "--model-opt", "alpha=0.5", "--task-opt",
            "deterministic=true", "--rule-opt", "k=5", "--dtype", "float64", "--optimizer", "sgd", "--lr", "0.05"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "30 steps" in out and str(run_dir) in out and err == ""
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
    cfg = io.read_json(run_dir / "config.json")
    assert cfg["net"]["fields"] == {"n_in": 2, "n_hidden": 4, "n_out": 2, "connectivity": [], "alpha": 0.5, "g": 1.0, "bias": True,
                                    "init": "normal", "decorrelation": 0.0}
    assert cfg["task"]["fields"]["deterministic"] is True and cfg["rule"]["fields"] == {"loss": "ce", "k": 5}
    assert cfg["train"]["optimizer"] == "sgd" and cfg["train"]["dtype"] == "float64"
    assert [r["step"] for r in io.read_csv(run_dir / "metrics.csv")] == [10, 20, 30]
    assert io.load_checkpoint(run_dir / "checkpoint.pt")["step"] == 30

    # the same command again would overwrite the run: refused, files untouched
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    _one_line_error(capsys, main(args), ["already holds a run", "resume"])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    # other settings cannot resume it
    bad = [a if a != "0.05" else "0.5" for a in args]
    _one_line_error(capsys, main([*bad, "--resume"]), ["lr", "0.05", "0.5"])
    # a longer run resumes it and equals the uninterrupted longer run
    longer = [a if a != "30" else "50" for a in args]
    assert main([*longer, "--resume"]) == 0
    ref = tmp_path / "ref"
    assert main([a if a != str(run_dir) else str(ref) for a in longer]) == 0
    capsys.readouterr()
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")} for r in rows]  # noqa: E731
    assert strip(io.read_csv(run_dir / "metrics.csv")) == strip(io.read_csv(ref / "metrics.csv"))
    assert [r["step"] for r in io.read_csv(run_dir / "metrics.csv")] == [10, 20, 30, 40, 50]


RUN = ["--steps", "30", "--log-every", "10", "--checkpoint-every", "10", "--chunk", "10", "--model-opt", "alpha=0.5",
       "--task-opt", "deterministic=true", "--rule-opt", "k=5", "--dtype", "float64", "--optimizer", "sgd", "--lr", "0.05",
       "--seed", "3"]


def _untimed_csv(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")} for r in io.read_csv(path)]


def test_resume_takes_every_setting_from_the_run_directory(tmp_path, capsys):
    import torch

    run_dir, ref = tmp_path / "x", tmp_path / "ref"
    assert main(["train", *TINY, *RUN, "--run-dir", str(run_dir)]) == 0
    # only --run-dir, --resume and the new step count (and a changed checkpoint interval, which may change)
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "50", "--checkpoint-every", "20",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rate/tbptt/add: 50 steps" in out
    longer = [a if a != "30" else "50" for a in RUN]
    assert main(["train", *TINY, *longer, "--run-dir", str(ref)]) == 0
    assert _untimed_csv(run_dir / "metrics.csv") == _untimed_csv(ref / "metrics.csv")
    got, want = (io.load_checkpoint(d / "checkpoint.pt")["params"] for d in (run_dir, ref))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert io.read_json(run_dir / "config.json")["train"]["steps"] == 50
    # without --steps it runs to the saved step count: here it is done already, so nothing is left to do
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0


def test_resume_refuses_a_contradicting_flag_naming_only_it(tmp_path, capsys):
    run_dir = tmp_path / "x"
    assert main(["train", *TINY, *RUN, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    # --model, --hidden and --rule-opt k agree with the run; --lr does not
    rc = main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "50", "--model", "rate", "--hidden", "4",
               "--rule-opt", "k=5", "--lr", "0.5"])
    line = _one_line_error(capsys, rc, ["--lr 0.5", "lr=0.05"])
    assert "--hidden" not in line and "--model" not in line and "k=5" not in line
    rc = main(["train", "--run-dir", str(run_dir), "--resume", "--model-opt", "alpha=0.7", "--task", "copy"])
    line = _one_line_error(capsys, rc, ["--model-opt alpha=0.7", "alpha=0.5", "--task copy", "task='add'"])
    assert "--lr" not in line
    _one_line_error(capsys, main(["train", "--run-dir", str(run_dir), "--resume", "--rule-opt", "window=3"]),
                    ["--rule-opt window=3", "not an option", "'tbptt'"])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_divergence_exits_1_with_one_line(tmp_path, capsys):
    # mse on a rate net with an absurd learning rate: the outputs overflow float32 within a few updates
    rc = main(["train", "--model", "rate", "--task", "sine", "--hidden", "4", "--steps", "200", "--optimizer", "sgd",
               "--lr", "1e30", "--chunk", "5", "--checkpoint-every", "5", "--run-dir", str(tmp_path / "d"),
               "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("neuro: error: loss became inf at step ") and "last good checkpoint" in err
    step = io.load_checkpoint(tmp_path / "d" / "checkpoint.pt")["step"]
    assert f"(step {step})" in err


@pytest.mark.slow
def test_demo_quick_compares_the_rules_and_deploys_to_lava(capsys, tmp_path, monkeypatch):
    """``neuro demo --quick``: both comparisons print a row per rule (finite losses, BPTT aligned with itself),
    and the best spiking network runs on Lava with the accuracy torch gives it (Lava floating point is
    spike-exact with the torch model in float64)."""
    import re

    from neuro.demo import COMPARISONS

    monkeypatch.chdir(tmp_path)  # the demo writes runs/demo here
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 3 and cells[0] not in ("rule",):
            rows.setdefault(cells[0], []).append(cells)
    for c in COMPARISONS.values():
        for rule in c.rules:
            assert rule in rows, f"no row for {rule}: {out}"
    for rule, table_rows in rows.items():
        for cells in table_rows:
            assert math.isfinite(float(cells[1].split(" ")[0])), cells
    assert len(rows["bptt"]) == 2 and all(c[4].split(" ")[0] == "1" for c in rows["bptt"])  # aligned with itself
    assert "0.662" in out and "0.519" in out and "0.454" in out
    m = re.search(r"torch accuracy ([0-9.]+); Lava floating point ([0-9.]+) .*Lava fixed point \(Loihi integers\) "
                  r"([0-9.]+)", out)
    assert m, out
    torch_acc, lava_acc, fixed_acc = map(float, m.groups())
    assert lava_acc == torch_acc and 0.0 <= fixed_acc <= 1.0
    assert (tmp_path / "runs" / "demo" / "lif" / "summary.md").is_file()
    assert (tmp_path / "runs" / "demo" / "rate" / "curves.png").is_file()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.slow
def test_python_dash_m_neuro_reports_errors_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "neuro", "train", "--model", "nope", "--run-dir", str(tmp_path / "r")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("neuro: error: model 'nope'")
    assert not (tmp_path / "r").exists()
    script = Path(sys.executable).parent / "neuro"
    if script.exists():  # the console script, once the package is installed
        p = subprocess.run([str(script), "train", "--task", "nope"], capture_output=True, text=True, cwd=tmp_path,
                           env=_env(), timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("neuro: error: task 'nope'")


@pytest.mark.slow
def test_python_dash_m_neuro_trains(tmp_path):
    cmd = [sys.executable, "-m", "neuro", "train", *TINY, "--steps", "20", "--run-dir", str(tmp_path / "r")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / "checkpoint.pt").is_file() and "20 steps" in p.stdout


@pytest.mark.parametrize("text,value", [("3", 3), ("-2", -2), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True),
                                        ("False", False), ("none", None), ("fast-sigmoid", "fast-sigmoid"),
                                        ("24,36", (24, 36)), ("1, 0.5", (1, 0.5))])
def test_option_values_parse_to_python_values(text, value):
    from neuro.cli import _value

    got = _value(text)
    assert got == value and type(got) is type(value)
