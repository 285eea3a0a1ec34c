"""Sparse connectivity (neuro.connectivity): the rules' masks, a network's masked current, estimates zero off the
mask through training, compact checkpoints and their resume, and the command line."""

from __future__ import annotations

import pytest
import torch

import models
import neuro
from neuro import connectivity as C
from neuro import io
from neuro.cli import main

F64 = torch.float64


def test_the_rules_draw_the_masks_they_name():
    m = C.mask("W_rec", "random:0.1", 400, 300)
    assert m.shape == (400, 300) and abs(float(m.float().mean()) - 0.1) < 0.005
    assert not torch.equal(m, C.mask("W_rec", "random:0.1@1", 400, 300))  # another seed, another draw
    assert not torch.equal(m, C.mask("W_in", "random:0.1", 400, 300))  # another matrix, another draw
    assert torch.equal(m, C.mask("W_rec", "random:0.1", 400, 300))  # the same network, the same wiring
    f = C.mask("W_rec", "fan-in:7", 50, 30)
    assert (f.sum(1) == 7).all() and f.sum(0).min() >= 0
    assert torch.equal(C.mask("W_in", "one-to-one", 6, 6), torch.eye(6, dtype=torch.bool))
    given = torch.rand(5, 4) < 0.5
    assert torch.equal(C.mask("W_rec", C.given(given), 5, 4), given)
    assert C.mask("W_rec", "dense", 3, 2).all()


@pytest.mark.parametrize("value,match", [
    ("rand:0.1", "'rand:0.1' is invalid"), (0.0, "0.0"), (1.5, "1.5"), ("fan-in:0", "fan-in:0"),
    ("random:0.1@-1", "@-1"), ({"W_out": 0.5}, "no sparse-capable"), ("one-to-one", "one-to-one needs as many"),
    ({"W_rec": ((0, 9),)}, r"\(0, 9\) is outside"), ({"W_rec": "fan-in:9"}, "exceeds the 8"),
])
def test_bad_connectivity_is_one_line_naming_it(value, match):
    with pytest.raises(ValueError, match=match) as e:
        net = models.make("lif", n_in=3, n_hidden=8, n_out=2,
                          connectivity=value if not isinstance(value, str) or value != "one-to-one" else {"W_in": value})
        net.masks  # noqa: B018 (a mask that cannot be drawn is refused when drawn)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["rate", "lstm", "lif", "alif", "lif-loihi"])
def test_the_current_reads_only_existing_synapses(name):
    net = models.make(name, n_in=3, n_hidden=6, n_out=2, connectivity={"W_rec": 0.4, "W_in": "fan-in:2"})
    p = net.init_params(0, F64)
    for k, m in net.masks.items():
        assert (p[k][~m] == 0).all()
    junk = {k: (v + 7.0 * (~net.masks[k]).to(F64) if k in net.masks else v) for k, v in p.items()}  # off-mask junk
    s = net.init_state(p, 2)
    x = torch.rand(2, 3, dtype=F64) * 4
    s = s._replace(**{f: torch.rand_like(getattr(s, f)) for f in s._fields if f in ("h", "z")})
    assert torch.equal(net.current(p, s, x), net.current(junk, s, x))


def test_training_keeps_every_synapse_off_the_mask_at_zero():
    net = models.make("lif", n_in=2, n_hidden=(10, 8), n_out=2, connectivity=0.3, feedforward_scale=4.0)
    task = neuro.tasks.make("add")
    for rule in ("bptt", "wp", "eprop"):
        result = neuro.train(net, neuro.rules.make(rule, net), task, steps=80, lr=0.05, seed=0, log_every=80)
        for k, m in net.masks.items():
            assert (result.params[k][~m] == 0).all(), (rule, k)
            assert (result.params[k][m] != 0).any()


def test_compact_round_trip_and_size():
    net = models.make("lif", n_in=3, n_hidden=300, n_out=2, connectivity=0.05)
    p = net.init_params(0)
    packed = C.compact(p, net.masks)
    assert packed["W_in"] is p["W_in"] and packed["W_rec"]["values"].numel() == int(net.masks["W_rec"].sum())
    back = C.expand(packed)
    assert all(torch.equal(back[k], p[k]) for k in p)
    bad = dict(packed["W_rec"], values=packed["W_rec"]["values"][:-1])
    with pytest.raises(ValueError, match="damaged"):
        C.expand({"W_rec": bad})


def test_a_sparse_run_checkpoints_compactly_and_resumes(tmp_path):
    """The checkpoint holds only the synapses (and a bitmap of the mask); read back, its parameters are the run's
    exactly; a resumed run continues from them, keeping the masks."""
    flags = ["--model", "lif", "--task", "add", "--hidden", "60,60", "--rule", "bptt", "--no-progress", "--seed", "3"]
    assert main(["train", *flags, "--connectivity", "0.05", "--steps", "40", "--run-dir", str(tmp_path / "s")]) == 0
    assert main(["train", *flags, "--steps", "40", "--run-dir", str(tmp_path / "dense")]) == 0
    net = models.make("lif", n_in=2, n_hidden=(60, 60), n_out=2, connectivity=0.05)
    same = neuro.train(net, neuro.rules.make("bptt", net), neuro.tasks.make("add"), steps=40, seed=3)
    saved = io.load_checkpoint(tmp_path / "s" / "checkpoint.pt")
    assert all(torch.equal(saved["params"][k], same.params[k]) for k in same.params)
    raw = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    assert raw["params"]["1.W_rec"]["values"].numel() == int(net.masks["1.W_rec"].sum())
    assert (tmp_path / "s" / "checkpoint.pt").stat().st_size < 0.5 * (tmp_path / "dense" / "checkpoint.pt").stat().st_size
    assert main(["train", *flags, "--connectivity", "0.05", "--steps", "60", "--run-dir", str(tmp_path / "s"),
                 "--resume"]) == 0
    resumed = io.load_checkpoint(tmp_path / "s" / "checkpoint.pt")
    assert resumed["step"] == 60
    for k, m in net.masks.items():
        assert (resumed["params"][k][~m] == 0).all() and not torch.equal(resumed["params"][k], saved["params"][k])


@pytest.mark.parametrize("flags,match", [
    (["--hidden", "64,x"], "--hidden 64,x is invalid"), (["--hidden", "64,0"], "--hidden 64,0 is invalid"),
    (["--connectivity", "1.5"], "--connectivity 1.5 is invalid"), (["--connectivity", "fan-in"], "--connectivity fan-in is invalid"),
])
def test_bad_flags_exit_2_with_one_line(flags, match, tmp_path, capsys):
    assert main(["train", "--steps", "5", "--run-dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match.strip("'") in err
    assert not (tmp_path / "r").exists()


def test_resume_of_a_stack_checks_the_flags_against_it(tmp_path, capsys):
    base = ["train", "--model", "lif", "--task", "add", "--rule", "bptt", "--no-progress", "--run-dir", str(tmp_path / "r")]
    assert main(base + ["--hidden", "6,5", "--connectivity", "0.5", "--steps", "20"]) == 0
    assert main(base + ["--hidden", "6,5", "--connectivity", "0.5", "--steps", "30", "--resume"]) == 0
    capsys.readouterr()
    assert main(base + ["--hidden", "6,6", "--steps", "40", "--resume"]) == 2
    assert "--hidden (6, 6) contradicts the saved n_hidden=[6, 5]" in capsys.readouterr().err
    assert main(base + ["--connectivity", "0.4", "--steps", "40", "--resume"]) == 2
    assert "connectivity" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["eprop", "ottt", "sltt", "anp-time"])
def test_a_two_layer_sparse_lif_stack_trains_from_the_command_line(rule, tmp_path):
    run = tmp_path / rule
    assert main(["train", "--model", "lif", "--hidden", "16,12", "--connectivity", "0.2", "--model-opt",
                 "feedforward_scale=4", "--rule", rule, "--task", "add", "--steps", "60", "--no-progress",
                 "--run-dir", str(run)]) == 0
    net = models.make("lif", n_in=2, n_hidden=(16, 12), n_out=2, connectivity=0.2, feedforward_scale=4.0)
    trained = io.load_checkpoint(run / "checkpoint.pt")["params"]
    initial = net.init_params(0)
    for k, m in net.masks.items():
        assert (trained[k][~m] == 0).all()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
