"""Run directories are never dead ends: a run killed before its first checkpoint restarts on resume, checkpoints
are periodic by default (and a resume is bit-identical whichever sequence end they land on), the directory is
checked writable before a run, any failure after the start is one line naming the last good checkpoint and the
command that continues, and damaged files are named on read. Through ``neuro.cli.main`` where a user meets them.
A real ``kill -9`` of ``python -m neuro train`` is in ``test_faults.py``."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

import neuro.io
import neuro.train_loop
from neuro import io, rundir
from neuro.cli import main
from neuro.errors import RunFailed

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "rate", "--task", "add", "--rule", "tbptt", "--hidden", "4", "--no-progress"]
#: 60 steps in chunks of 10 (the add task's default is continuing): metrics every 10 steps
RUN = [*TINY, "--steps", "60", "--chunk", "10", "--log-every", "10", "--seed", "3"]


def _one_line(capsys, rc: int, status: int, needles: list[str]) -> str:
    """The one stderr line of a failed command (exit ``status``), holding every needle."""
    out, err = capsys.readouterr()
    assert rc == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("neuro: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _untimed_csv(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in rundir.TIMING_COLUMNS} for r in io.read_csv(path)]


def _params(d: Path) -> dict[str, torch.Tensor]:
    return io.load_checkpoint(d / "checkpoint.pt")["params"]


def _same_run(a: Path, b: Path) -> None:
    """The final checkpoint's parameters and metrics.csv (timing aside) of two run directories are equal."""
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert _untimed_csv(a / "metrics.csv") == _untimed_csv(b / "metrics.csv")
    assert io.load_checkpoint(a / "checkpoint.pt")["step"] == io.load_checkpoint(b / "checkpoint.pt")["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of RUN."""
    d = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *RUN, "--run-dir", str(d)]) == 0
    return d


# -- a run without a checkpoint yet, and a fresh run into a used directory --------------------------------------

def test_a_run_killed_before_its_first_checkpoint_restarts_on_resume(tmp_path, capsys, reference):
    d = tmp_path / "r"
    assert main(["train", *RUN, "--run-dir", str(d)]) == 0
    (d / "checkpoint.pt").unlink()  # what a kill before the first checkpoint leaves: config.json (and metrics)
    capsys.readouterr()
    # a fresh run into it is refused in the command line's words
    line = _one_line(capsys, main(["train", *RUN, "--run-dir", str(d)]), 2,
                     ["already holds a run", "--resume", "another --run-dir"])
    assert "resume=True" not in line
    # --resume restarts it from its config, says so, and ends where the uninterrupted run ends
    assert main(["train", "--resume", "--run-dir", str(d), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "holds no checkpoint yet: restarting the run from step 0" in err and "Traceback" not in err
    _same_run(d, reference)


def test_train_resume_true_restarts_a_run_without_a_checkpoint(tmp_path, caplog):
    import models
    from neuro.rules import TBPTT
    from neuro.tasks import make
    from neuro.training import train

    net = models.make("rate", n_in=2, n_hidden=4, n_out=2)
    kw = dict(steps=30, chunk=10, log_every=10, progress=False, run_dir=tmp_path)
    full = train(net, TBPTT(net), make("add"), **kw)
    (tmp_path / "checkpoint.pt").unlink()
    with caplog.at_level("WARNING", logger="neuro.training"):
        again = train(net, TBPTT(net), make("add"), resume=True, **kw)
    assert "no checkpoint yet: the run restarts from step 0" in caplog.text
    assert all(torch.equal(again.params[k], full.params[k]) for k in full.params)
    # with settings that contradict its config, it is refused like any resume
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match=r"train.lr: 0.001 \(saved\) vs 0.5 \(now\)"):
        train(net, TBPTT(net), make("add"), resume=True, lr=0.5, **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint .* and no config.json"):
        train(net, TBPTT(net), make("add"), resume=True, **{**kw, "run_dir": tmp_path / "none"})


def test_resume_and_checkpoint_every_without_a_run_dir_speak_cli(capsys):
    _one_line(capsys, main(["train", *TINY, "--resume"]), 2, ["--resume needs --run-dir"])
    _one_line(capsys, main(["train", *TINY, "--checkpoint-every", "5"]), 2, ["--checkpoint-every needs --run-dir"])


# -- periodic checkpoints -----------------------------------------------------------------------------------------

def _checkpoint_content(path: Path) -> dict:
    """A checkpoint without what the wall clock decides (timings, and the checkpoint setting itself)."""
    ck = io.load_checkpoint(path)
    ck.pop("elapsed_s")
    ck["interval"].pop("start_elapsed")
    ck["metrics"] = [{k: v for k, v in r.items() if k not in rundir.TIMING_COLUMNS} for r in ck["metrics"]]
    ck["config"]["train"].pop("checkpoint_every")
    return ck


def test_checkpoints_are_periodic_by_default_and_identical_to_step_based_ones(tmp_path, monkeypatch, capsys,
                                                                              reference):
    """Without --checkpoint-every a checkpoint falls at the first sequence end after CHECKPOINT_SECONDS (here 0:
    every sequence end, the extreme of a clock that lands anywhere); it holds what a step-based one at the same
    step holds, and a run resumed from it ends where the uninterrupted run ends."""
    original = neuro.io.save_checkpoint
    steps_saved: list[int] = []

    def kill_after(n: int):
        def save(path, obj):
            original(path, obj)
            steps_saved.append(obj["step"])
            if len(steps_saved) == n:
                raise KeyboardInterrupt  # the process stops right after its n-th checkpoint
        return save

    monkeypatch.setattr(neuro.train_loop, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(neuro.io, "save_checkpoint", kill_after(3))
    assert main(["train", *RUN, "--run-dir", str(tmp_path / "clock")]) == 130
    assert steps_saved == [10, 20, 30]
    steps_saved.clear()
    monkeypatch.setattr(neuro.io, "save_checkpoint", kill_after(1))
    assert main(["train", *RUN, "--checkpoint-every", "30", "--run-dir", str(tmp_path / "steps")]) == 130
    assert steps_saved == [30]
    assert "--resume --run-dir" in capsys.readouterr().err
    a, b = (_checkpoint_content(tmp_path / d / "checkpoint.pt") for d in ("clock", "steps"))
    assert set(a) == set(b) and a["step"] == 30
    assert _saved_bytes(a) == _saved_bytes(b)
    monkeypatch.setattr(neuro.io, "save_checkpoint", original)
    for d in ("clock", "steps"):
        assert main(["train", "--resume", "--run-dir", str(tmp_path / d), "--no-progress"]) == 0
        _same_run(tmp_path / d, reference)


def _saved_bytes(obj) -> bytes:
    import io as pyio

    buf = pyio.BytesIO()
    torch.save(neuro.io.to_saveable(obj), buf)
    return buf.getvalue()


def test_a_short_run_writes_one_checkpoint_at_the_end_by_default(tmp_path, monkeypatch):
    saved: list[int] = []
    original = neuro.io.save_checkpoint
    monkeypatch.setattr(neuro.io, "save_checkpoint", lambda p, obj: (saved.append(obj["step"]), original(p, obj)))
    assert main(["train", *RUN, "--run-dir", str(tmp_path / "r")]) == 0  # well under CHECKPOINT_SECONDS
    assert saved == [60]


# -- the run directory must be writable before the run starts ----------------------------------------------------

def test_a_run_dir_under_a_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    line = _one_line(capsys, main(["train", *RUN, "--run-dir", str(tmp_path / "afile" / "sub")]), 2,
                     ["afile", "is a file, not a directory"])
    assert str(tmp_path / "afile" / "sub") in line
    line = _one_line(capsys, main(["train", *RUN, "--run-dir", str(tmp_path / "afile")]), 2,
                     ["it exists and is not a directory"])
    assert "run_dir=" not in line
    assert (tmp_path / "afile").read_text() == "x"


def test_what_a_killed_write_left_is_removed_when_the_run_goes_on(tmp_path, reference):
    d = tmp_path / "r"
    assert main(["train", *RUN, "--steps", "30", "--run-dir", str(d)]) == 0
    for name in (".checkpoint.pt.1a2b3c4d.tmp", ".metrics.csv.5e6f7a8b.tmp", ".neuro-probe.x1y2.tmp"):
        (d / name).write_bytes(b"half")
    assert main(["train", "--resume", "--run-dir", str(d), "--steps", "60", "--no-progress"]) == 0
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv"]
    _same_run(d, reference)


def test_a_read_only_run_dir_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    d = tmp_path / "a" / "b"
    _one_line(capsys, main(["train", *RUN, "--run-dir", str(d)]), 2,
              [repr(str(d)), "cannot be created or written: read-only file system"])
    assert list(tmp_path.iterdir()) == []  # the directories made for the probe are gone again


def test_a_really_read_only_run_dir(tmp_path, capsys):
    _fs = pytest.importorskip("_fs")
    with _fs.readonly_dir(tmp_path / "ro") as ro:
        _one_line(capsys, main(["train", *RUN, "--run-dir", str(ro / "x")]), 2,
                  ["cannot be created or written", "ro"])
        assert list(ro.iterdir()) == []


# -- failures after the start: RunFailed, exit 1, the last good checkpoint kept -----------------------------------

def _fail_on_call(monkeypatch, module, name: str, n: int, error: BaseException) -> None:
    """``module.name`` raises ``error`` on its ``n``-th call (the earlier ones work)."""
    original, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == n:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


TORCH_WRITE = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")


@pytest.mark.parametrize("where,error,needles", [
    ("save_checkpoint", OSError(errno.ENOSPC, "No space left on device"), ["checkpoint.pt", "no space left"]),
    ("save_checkpoint", TORCH_WRITE, ["checkpoint.pt", "PytorchStreamWriter failed writing file data/0"]),
    ("write_csv", OSError(errno.EFBIG, "File too large"), ["metrics.csv", "file too large"]),
], ids=["disk-full", "torch-save", "file-size-limit"])
def test_a_failed_write_names_the_file_the_last_good_checkpoint_and_the_command(tmp_path, capsys, monkeypatch,
                                                                                reference, where, error, needles):
    d = tmp_path / "r"
    # the checkpoint at step 20 is written; the next write of `where` fails (checkpoint at 40, metrics at 30)
    _fail_on_call(monkeypatch, neuro.io, where, 2 if where == "save_checkpoint" else 3, error)
    line = _one_line(capsys, main(["train", *RUN, "--checkpoint-every", "20", "--run-dir", str(d)]), 1,
                     [*needles, f"last good checkpoint: {d / 'checkpoint.pt'} (step 20)",
                      f"continue with: neuro train --resume --run-dir {d}"])
    assert "enforce fail" not in line and "internal error" not in line
    monkeypatch.undo()
    assert io.load_checkpoint(d / "checkpoint.pt")["step"] == 20  # intact
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--resume", "--run-dir", str(d), "--no-progress"]) == 0  # the command it names
    _same_run(d, reference)


def test_a_real_file_size_limit_mid_run(tmp_path, capsys, reference):
    resource = pytest.importorskip("resource")
    d = tmp_path / "r"
    assert main(["train", *RUN, "--steps", "10", "--run-dir", str(tmp_path / "first")]) == 0
    first = (tmp_path / "first" / "checkpoint.pt").stat().st_size  # a checkpoint grows with its metrics rows
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (first + 200, hard))  # the first checkpoints fit; a later one does not
    try:
        rc = main(["train", *RUN, "--steps", "400", "--checkpoint-every", "10", "--run-dir", str(d)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    line = _one_line(capsys, rc, 1, ["the run failed at step", "file too large", "last good checkpoint:",
                                     f"neuro train --resume --run-dir {d}"])
    kept = io.load_checkpoint(d / "checkpoint.pt")["step"]
    assert 0 < kept < 400 and f"(step {kept})" in line
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_memory_and_loop_errors_after_the_start_are_run_failed(tmp_path, capsys, monkeypatch):
    from neuro.rules import TBPTT

    d = tmp_path / "r"
    torch_path = [*RUN, "--engine", "torch"]  # the failure is injected into the rule's Python step
    _fail_on_call(monkeypatch, TBPTT, "step", 25, MemoryError())
    _one_line(capsys, main(["train", *torch_path, "--checkpoint-every", "20", "--run-dir", str(d)]), 1,
              ["at step 24: out of memory", "(step 20)", "neuro train --resume --run-dir"])
    # an error inside the loop (a rule's, here), before any checkpoint: resume restarts the run
    monkeypatch.undo()
    _fail_on_call(monkeypatch, TBPTT, "step", 5, ValueError("got step 7 of a sequence but T=6"))
    line = _one_line(capsys, main(["train", *torch_path, "--run-dir", str(tmp_path / "s")]), 1,
                     ["at step 4: got step 7 of a sequence but T=6", "no checkpoint was written before it",
                      "neuro train --resume --run-dir"])
    assert "restarts the run" in line
    # without a run directory nothing was kept, and it says so
    monkeypatch.undo()
    _fail_on_call(monkeypatch, TBPTT, "step", 5, ValueError("got step 7 of a sequence but T=6"))
    _one_line(capsys, main(["train", *torch_path]), 1, ["the run failed: got step 7", "without --run-dir nothing was kept"])


def test_library_failures_with_a_run_dir_are_run_failed_naming_resume_true(tmp_path, monkeypatch):
    import models
    from neuro.rules import TBPTT
    from neuro.tasks import make
    from neuro.training import train

    net = models.make("rate", n_in=2, n_hidden=4, n_out=2)
    _fail_on_call(monkeypatch, neuro.io, "save_checkpoint", 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(RunFailed, match=r"at step 20: cannot write .*checkpoint.pt.: no space left on device; "
                                         r"last good checkpoint: .* \(step 10\); continue with: "
                                         r"train\(\.\.\., run_dir=.*, resume=True\)") as e:
        train(net, TBPTT(net), make("add"), steps=40, chunk=10, checkpoint_every=10, progress=False, run_dir=tmp_path)
    assert e.value.last_good == tmp_path / "checkpoint.pt" and isinstance(e.value.__cause__, OSError)


# -- damaged files are named on read --------------------------------------------------------------------------------

@pytest.fixture()
def finished(tmp_path) -> Path:
    d = tmp_path / "r"
    assert main(["train", *TINY, "--steps", "20", "--chunk", "10", "--run-dir", str(d)]) == 0
    return d


def _resave(d: Path, change) -> None:
    ck = io.load_checkpoint(d / "checkpoint.pt")
    change(ck)
    io.save_checkpoint(d / "checkpoint.pt", ck)


@pytest.mark.parametrize("change,needles", [
    (lambda ck: ck.pop("rng"), ["has no 'rng' entry"]),
    (lambda ck: ck.pop("optimizer"), ["has no 'optimizer' entry"]),
    (lambda ck: ck["params"].update(W_rec=torch.zeros(3, 3)), ["parameter 'W_rec'", "(3, 3) float32",
                                                               "needs (4, 4) float32"]),
    (lambda ck: ck["params"].update(b=ck["params"]["b"].double()), ["parameter 'b'", "(4) float64", "(4) float32"]),
    (lambda ck: ck["params"].pop("b"), ["has parameters", "'W_in'"]),
    (lambda ck: ck.update(position=[1]), ["'position'"]),
    (lambda ck: ck["optimizer"]["state"][1].update(exp_avg=torch.zeros(2)), ["optimizer state 'exp_avg'", "'W_rec'"]),
    (lambda ck: ck["config"].pop("net"), ["'config' entry", "has no 'net' entry"]),
], ids=["no-rng", "no-optimizer", "shape", "dtype", "missing-param", "position", "optimizer-shape", "config"])
def test_a_damaged_checkpoint_is_named_on_resume(finished, capsys, change, needles):
    _resave(finished, change)
    capsys.readouterr()
    _one_line(capsys, main(["train", "--resume", "--run-dir", str(finished), "--steps", "30", "--no-progress"]), 2,
              [repr(str(finished / "checkpoint.pt")), *needles])


@pytest.mark.parametrize("text,needles", [
    ('{\n  "format": 1,\n  "net": {\n    "name": ', ["is not valid JSON (line 4 column 13)",
                                                     "truncated or not written by neuro train"]),
    ('{"format": 1, "rule": {}}', ["has no 'net' entry: not a run directory written by neuro train"]),
    ('[1, 2]', ["holds a JSON list"]),
    ('\udcff', ["not UTF-8"]),
], ids=["truncated", "no-net", "list", "binary"])
def test_a_damaged_config_is_named(finished, capsys, text, needles):
    (finished / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _one_line(capsys, main(["train", "--resume", "--run-dir", str(finished), "--no-progress"]), 2,
              [repr(str(finished / "config.json")), *needles])
    with pytest.raises(ValueError, match="config.json"):
        rundir.read_config(finished)


def test_a_run_saved_before_a_model_field_existed_resumes_at_its_default(tmp_path):
    """A config saved without a field the network has since gained (at its default now) is no difference; a
    field that differs from its default is."""
    import models
    import neuro
    import neuro.rules
    import neuro.tasks
    from neuro import io
    from neuro.rundir import differences

    task = neuro.tasks.make("sine")
    net = models.make("rate", n_in=task.n_in, n_hidden=3, n_out=task.n_out)
    neuro.train(net, neuro.rules.make("tbptt", net, k=2), task, 20, run_dir=tmp_path / "r", progress=False,
                log_every=10, checkpoint_every=10)
    cfg = io.read_json(tmp_path / "r" / "config.json")
    old = json.loads(json.dumps(cfg))
    for k in ("bias", "init", "decorrelation"):  # as a run saved before these options existed
        del old["net"]["fields"][k]
    assert differences(old, cfg) == []
    changed = json.loads(json.dumps(cfg))
    changed["net"]["fields"]["bias"] = False
    assert differences(old, changed) == ["net.bias: None (saved) vs False (now)"]
