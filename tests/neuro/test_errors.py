"""``neuro.errors``: the one line and the exit status the command line gives each kind of failure."""

from __future__ import annotations

import errno

import pytest

from neuro import errors
from neuro.train_loop import TrainingDiverged

CASES = [
    (ValueError("steps=0 is invalid: must be an integer >= 1"), 2, "steps=0 is invalid: must be an integer >= 1"),
    (KeyError("net"), 2, "missing entry 'net'"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "D/config.json"), 2,
     "'D/config.json': no such file or directory"),
    (OSError(errno.ENOSPC, "No space left on device", "D/checkpoint.pt"), 2, "'D/checkpoint.pt': no space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "D"), 2, "'D': read-only file system"),
    (MemoryError(), 2, "out of memory: choose smaller sizes"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 8 bytes."), 2,
     "out of memory: can't allocate memory: you tried to allocate 8 bytes.: choose smaller sizes"),
    (errors.SizeError("n_hidden=9 is invalid: it needs 1.0 TiB"), 2, "n_hidden=9 is invalid: it needs 1.0 TiB"),
    (errors.RunFailed("the run failed at step 3: disk full; the last good checkpoint is D/checkpoint.pt"), 1,
     "the run failed at step 3: disk full; the last good checkpoint is D/checkpoint.pt"),
    (TrainingDiverged("loss is nan at step 5", step=5), 1, "loss is nan at step 5"),
    (KeyboardInterrupt(), 130, "interrupted"),
]


@pytest.mark.parametrize("exc,status,line", CASES, ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)])
def test_each_failure_has_its_line_and_status(exc, status, line):
    assert errors.exit_status(exc) == status
    assert errors.describe(exc) == line


def test_an_unexpected_exception_is_an_internal_error_with_status_1():
    e = AttributeError("'NoneType' object has no attribute 'x'")
    assert errors.exit_status(e) == 1
    text = errors.describe(e)
    assert text.startswith("internal error (AttributeError: 'NoneType' object has no attribute 'x')")
    assert "NEURO_TRACEBACK=1" in text and "\n" not in text


def test_a_multi_line_message_becomes_one_line():
    assert errors.describe(ValueError("a\n  b\tc")) == "a b c"


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(59.8 * 2 ** 30), "59.8 GiB"),
                                    (3 * 2 ** 50, "3.0 PiB")])
def test_format_bytes(n, text):
    assert errors.format_bytes(n) == text


def test_check_fits_refuses_more_than_is_available_naming_the_figures(monkeypatch):
    monkeypatch.setattr(errors, "_available_memory", lambda: 10 * 2 ** 30)
    errors.check_fits("batch=4", 8 * 2 ** 30)  # 80 % of 10 GiB fits
    with pytest.raises(errors.SizeError) as info:
        errors.check_fits("batch=100000000", 763 * 2 ** 30, hint="use a smaller batch")
    assert str(info.value) == ("batch=100000000 is invalid: it needs 763.0 GiB of memory and 10.0 GiB is available: "
                               "use a smaller batch")
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
    monkeypatch.setattr(errors, "_available_memory", lambda: None)
    errors.check_fits("anything", 2 ** 60)  # unknown: nothing is refused
