"""``neuro bench gpu`` (and ``neuro bench rules --device``): the code runs on the CPU on tiny settings and writes
its figures; without a CUDA device ``bench gpu`` says so and writes nothing (``bench rules --device cuda``
writes a note), exit status 0; a bad device is an error naming it. The GPU figures themselves need a GPU (never in CI)."""

from __future__ import annotations

import json

import pytest
import torch

from neuro.bench import gpu, rules

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the note written where there is no GPU")


def test_layer_runs_forward_and_backward_on_the_cpu(tmp_path):
    assert gpu.main(["--device", "cpu", "--n", "32", "--batch", "3", "--steps", "20", "--repeats", "1",
                     "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    (row,) = data["layer"]
    assert row["ms"] > 0 and row["n"] == 32 and row["batch"] == 3 and not row["compiled"]
    assert 0 < row["spikes_per_neuron_step"] < 0.5  # the layer fires, not every step
    assert "| 32 | 3 | 20 | eager |" in (tmp_path / "bench_gpu.md").read_text()
    assert data["published_ms_16k"]["Norse + torch.compile"] == 110.0


def test_the_timed_loss_is_the_lif_networks_spike_count_and_its_gradient():
    """float64: the timed loss (the layer's spikes) and its weight gradient equal those of the LIF network of
    ``models.lif`` run step by step with ``W_in`` = the layer's weights and no recurrence (Linear bias 0)."""
    import models

    n, B, T = 12, 3, 15
    net = models.make("lif", n_in=n, n_hidden=n, n_out=1)
    g = torch.Generator().manual_seed(0)
    W = (torch.rand(n, n, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    xs = 3.0 * torch.randn(T, B, n, generator=g, dtype=torch.float64)
    params = {"b": torch.zeros(n, dtype=torch.float64), "W_out": torch.zeros(1, n, dtype=torch.float64)}
    total = gpu.layer_spikes(net, params, W, torch.zeros(n, dtype=torch.float64), xs)
    (gW,) = torch.autograd.grad(total, W)
    full = net.init_params(seed=0, dtype=torch.float64)
    W2 = W.detach().clone().requires_grad_()
    full.update(W_in=W2, W_rec=torch.zeros(n, n, dtype=torch.float64), b=params["b"])
    state, ref = net.init_state(full, B), 0.0
    for t in range(T):
        state, _ = net.step(full, state, xs[t])
        ref = ref + state.z.sum()
    (gW2,) = torch.autograd.grad(ref, W2)
    assert float(total) == float(ref) > 0
    torch.testing.assert_close(gW, gW2, rtol=1e-12, atol=1e-12)
    assert float(gW.abs().sum()) > 0


@no_cuda
def test_without_a_gpu_nothing_is_measured_and_nothing_written(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path / "g"), "--rules"]) == 0
    assert not (tmp_path / "g").exists()  # no file that says only "skipped" where figures are expected
    err = capsys.readouterr().err
    assert err.startswith("neuro bench gpu: skipped: no CUDA device") and err.endswith("; no file written\n")
    assert err.count("\n") == 1


@no_cuda
def test_without_a_gpu_the_rules_section_is_skipped_with_a_note(tmp_path, capsys):
    assert rules.main(["--quick", "--device", "cuda", "--out", str(tmp_path / "r")]) == 0
    assert not (tmp_path / "r").exists()
    assert capsys.readouterr().err.startswith("neuro bench rules: skipped: no CUDA device")


@pytest.mark.parametrize("main", [gpu.main, rules.main])
def test_a_bad_device_is_an_error_naming_it(main, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--device", "tpu:0", "--out", "unused"])
    assert e.value.code == 2 and "--device 'tpu:0' is invalid" in capsys.readouterr().err
