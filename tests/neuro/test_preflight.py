"""The checks made before a training run starts (:mod:`neuro.preflight`).

* Oracle: a size is refused exactly when the memory it is computed to need exceeds what is available
  (``neuro.errors._available_memory`` is pinned so the figures do not depend on the machine), the message
  names the setting and the figure, and nothing is drawn, allocated or written.
* A chunk far longer than the run (``chunk=10**9``, 50 steps) trains under a 3 GiB address-space limit: only
  the steps the run reads are generated. Without that, generating the chunk alone needs tens of GiB.
* The rules' own limits (RTRL's ``max_bytes``, SLTT-K's ``T``, BPTT's graph) refuse in the preflight, before
  ``config.json`` is written, with the same messages the rules give.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import models
import neuro
from neuro import errors, preflight, rules, tasks
from neuro.cli import main
from neuro.errors import SizeError
from neuro.rules.bptt import graph_bytes
from neuro.training import prepare

GiB = 2 ** 30


@pytest.fixture
def memory(monkeypatch):
    """Pin the memory check_fits sees to ``20 GiB`` (settable: ``memory(n)``)."""
    state = {"avail": 20 * GiB}
    monkeypatch.setattr(errors, "_available_memory", lambda: state["avail"])

    def set_(n: int) -> None:
        state["avail"] = n

    return set_


def _rate(n_hidden: int = 4, task: str = "add", rule: str = "tbptt", **rule_kw):
    t = tasks.make(task)
    net = models.make("rate", n_in=t.n_in, n_hidden=n_hidden, n_out=t.n_out)
    return net, rules.make(rule, net, **rule_kw), t


def test_sizes_are_measured_without_allocating(memory):
    net, rule, task = _rate(n_hidden=8, rule="rtrl")
    size = preflight.check_run(net, rule, task, 500, {"batch": 3, "chunk": 100})
    P = sum(p.numel() for p in net.init_params(0).values())
    assert size.params == P * 4 * 4  # parameters, summed estimate, adam's two moments (float32)
    assert size.steps_per_sequence == 100
    assert size.sequence == task.sequence_bytes(100, 3)
    assert size.rule == rule.memory_bytes(net.init_params(0), 3)
    assert size.total == size.params + size.state + size.sequence + size.rule


@pytest.mark.parametrize("settings, steps, expect", [
    ({"n_hidden": 10_000_000}, 50, r"^n_hidden=10000000 is invalid: it needs 1\.4 PiB of memory and 20\.0 GiB is "
                                    r"available: the 100,000,050,000,002 parameters of model 'rate'"),
    ({"batch": 100_000_000}, 50, r"^batch=100000000 is invalid: it needs .* GiB of memory and 20\.0 GiB is available"),
    ({"chunk": 10 ** 9}, 10 ** 9, r"^chunk=1000000000 is invalid: it needs .* of memory .*choose a smaller chunk"),
    ({"chunk": 10 ** 10}, 10 ** 9, r"^steps=1000000000 is invalid: it needs .* of memory .*choose a smaller steps"),
])
def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(memory, tmp_path, settings, steps, expect):
    net, rule, task = _rate(n_hidden=settings.pop("n_hidden", 4))
    run_dir = tmp_path / "run"
    with pytest.raises(SizeError, match=expect) as e:
        prepare(net, rule, task, steps, run_dir=run_dir, **settings)
    assert "\n" not in str(e.value) and isinstance(e.value, MemoryError) and isinstance(e.value, ValueError)
    assert not run_dir.exists()


@pytest.mark.slow  # a fresh interpreter (~10 s, most of it imports)
def test_a_chunk_longer_than_the_run_generates_only_the_run(tmp_path):
    """The whole chunk of 10**9 steps would need ~100 GiB; under a 3 GiB address-space limit the run finishes."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, resource.RLIM_INFINITY))
        from neuro.cli import main
        sys.exit(main(["train", "--model", "rate", "--chunk", "1000000000", "--steps", "50", "--hidden", "4",
                       "--no-progress", "--run-dir", {str(tmp_path / 'run')!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "50 steps" in done.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_a_run_cut_inside_a_chunk_is_the_same_run_as_before():
    """A chunk cut at the run's end (nothing past it generated) leaves the run as it was: the counters say
    the chunk is unfinished, and the losses are those of the same stream."""
    net, rule, task = _rate()
    h = neuro.train(net, rule, task, 30, chunk=100, progress=False, log_every=10)
    assert h.metrics[-1]["sequences"] == 0 and h.steps == 30
    whole = neuro.train(net, rule, task, 100, chunk=100, progress=False, log_every=10)
    assert [r["loss"] for r in whole.metrics[:3]] == [r["loss"] for r in h.metrics]
    assert whole.metrics[-1]["sequences"] == 1


def test_rtrl_memory_guard_runs_before_the_run_starts(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "--model", "rate", "--rule", "rtrl", "--hidden", "2000", "--no-progress",
               "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("neuro: error: rtrl needs 59.8 GiB for the influence matrix") and "snap1, uoro" in err
    assert not run_dir.exists()


@pytest.mark.parametrize("rule_name, opts", [("rtrl", {}), ("snap1", {"sparse": False}), ("snap2", {})])
def test_influence_matrix_guards_match_init(rule_name, opts):
    net, rule, task = _rate(n_hidden=64, rule=rule_name, max_bytes=2 ** 20, **opts)
    with pytest.raises(ValueError, match=rf"^{rule_name} needs .* more than max_bytes=1048576") as e:
        preflight.check_run(net, rule, task, 10)
    with pytest.raises(ValueError) as e_init:
        rule.init(net.init_params(0), 1)
    assert str(e.value) == str(e_init.value)


def test_sltt_k_sequence_longer_than_T_is_refused_naming_what_to_set(tmp_path):
    t = tasks.make("add")
    net = models.make("lif", n_in=t.n_in, n_hidden=8, n_out=t.n_out)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^rule 'sltt-k' option T=6 is shorter than the sequences of this run "
                                         r"\(100 steps: chunk=100\): set T=100 \(rule option T"):
        prepare(net, rules.make("sltt-k", net), t, 2000, run_dir=run_dir)
    assert not run_dir.exists()
    copy = tasks.make("copy", length=3, delay=2)
    net = models.make("lif", n_in=copy.n_in, n_hidden=8, n_out=copy.n_out)
    with pytest.raises(ValueError, match=rf"\({copy.trial_steps} steps: one trial of task 'copy'\): "
                                         rf"set T={copy.trial_steps}"):
        preflight.check_run(net, rules.make("sltt-k", net), copy, 100)
    # T as long as the sequences runs (the step it failed at before is inside the run)
    h = neuro.train(net, rules.make("sltt-k", net, T=copy.trial_steps), copy, 2 * copy.trial_steps, progress=False)
    assert h.steps == 2 * copy.trial_steps


def test_bptt_graph_of_a_long_sequence_is_refused_with_a_hint(memory):
    net, rule, task = _rate(n_hidden=64, rule="bptt")
    params = net.init_params(0)
    need = graph_bytes(rule, params, 1, 10 ** 7)
    assert need > 20 * GiB
    with pytest.raises(SizeError, match=r"^rule 'bptt' on sequences of 10000000 steps \(chunk=10000000\) is invalid: "
                                        rf"it needs {errors.format_bytes(need)} of memory.*use tbptt \(rule option k\) "
                                        r"or shorter sequences \(a smaller chunk\)"):
        preflight.check_run(net, rule, task, 10 ** 7, chunk=10 ** 7)
    # truncated BPTT holds k steps only; the estimate is an upper bound of what a graph keeps
    preflight.check_run(net, rules.make("tbptt", net, k=10), task, 10 ** 7, chunk=10 ** 7)
    with pytest.raises(SizeError, match=r"use a smaller k"):
        preflight.check_run(net, rules.make("tbptt", net, k=10 ** 7), task, 10 ** 7, chunk=10 ** 7)


def test_graph_estimate_bounds_what_the_graph_keeps():
    """Oracle: the bytes autograd saves for 20 steps of BPTT (its saved tensors, the parameters aside) are
    below :func:`graph_bytes`."""
    for name in ("rate", "lif", "lstm"):
        net = models.make(name, n_in=3, n_hidden=32, n_out=2)
        rule, params = rules.make("bptt", net), net.init_params(0)
        x, y, m = torch.randn(4, 3), torch.randn(4, 2), torch.ones(4, dtype=torch.bool)
        state = rule.step(params, rule.init(params, 4), x, y, m).state
        window = {p.untyped_storage().data_ptr() for p in state.window.values()}
        saved: dict[int, int] = {}

        def pack(t, saved=saved, window=window):
            if t.untyped_storage().data_ptr() not in window:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for _ in range(20):
                state = rule.step(params, state, x, y, m).state
        assert 0 < sum(saved.values()) < graph_bytes(rule, params, 4, 20), name


def test_a_rule_state_that_cannot_fit_is_refused(memory):
    memory(GiB)
    t = tasks.make("add")
    net = models.make("lif", n_in=t.n_in, n_hidden=256, n_out=t.n_out)
    rule = rules.make("eprop", net)
    with pytest.raises(SizeError, match=r"^rule 'eprop' with n_hidden=256, batch=4096 is invalid: it needs .* GiB"):
        preflight.check_run(net, rule, t, 100, batch=4096)
    preflight.check_run(net, rule, t, 100, batch=16)


def test_check_run_refuses_wrong_types_on_one_line():
    net, rule, task = _rate()
    with pytest.raises(TypeError, match=r"^net='lif' is invalid: expected a network from models.make, not a str$"):
        preflight.check_run("lif", rule, task, 10)
    with pytest.raises(TypeError, match=r"^task='add' is invalid"):
        preflight.check_run(net, rule, "add", 10)
    with pytest.raises(TypeError, match=r"^config=3 is invalid"):
        preflight.check_run(net, rule, task, 10, 3)
    with pytest.raises(ValueError, match=r"^steps=0 is invalid: must be > 0"):
        preflight.check_run(net, rule, task, 0)
    params = {k: v.numpy() for k, v in net.init_params(0).items()}
    with pytest.raises(TypeError, match=r"^params\['\w+'\] is invalid: got a numpy.ndarray, expected a torch.Tensor"):
        neuro.train(net, rule, task, 10, params=params, progress=False)


def test_on_a_gpu_the_gpu_memory_is_what_counts(memory, monkeypatch):
    """Parameters, states and graphs live on the run's device: on a CUDA device its free memory decides."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GiB, 80 * GiB))
    with pytest.raises(SizeError, match=r"^n_hidden=100000 is invalid: it needs 149.0 GiB of memory on cuda:0 and "
                                        r"1.0 GiB is free there: the 10,000,300,002 parameters"):
        preflight._fits(torch.device("cuda:0"), "n_hidden=100000", 10_000_300_002 * 16, "the 10,000,300,002 parameters")
    preflight._fits(torch.device("cpu"), "n_hidden=100000", 10 * GiB, "")  # the host's 20 GiB
