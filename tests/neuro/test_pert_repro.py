"""The perturbation-learning reproduction: the authors' updates in this library's normalisation (against a
transcription of their per-step updates), the runs, resume and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

import models
import neuro.rules
from neuro.pert_repro import cli
from neuro.pert_repro import config as C
from neuro.pert_repro import report as R
from neuro.rules.node import node_noise


def _mse_mean(y_hat, y):  # torch's MSELoss: the mean over the outputs
    return ((y_hat - y) ** 2).mean()


@pytest.mark.parametrize("rule", ["np", "anp-time", "wp"])
def test_one_step_equals_the_authors_update(rule):
    """From rest, one step of the rule applied with plain SGD at library_lr moves every weight as the authors'
    per-step update at their lr (jesusgf96/NP_RNNs training_mackey_glass: MSELoss, 1/sigma for NP and WP,
    sqrt(N) dL dh / ||dh||^2 for ANP; no biases)."""
    n_in, n, n_out, sigma, lr = 2, 5, 3, 1e-3, 1e-3
    net = models.make("rate", n_in=n_in, n_hidden=n, n_out=n_out, init="xavier", bias=False)
    p = net.init_params(4, torch.float64)
    r = neuro.rules.make(rule, net, loss="mse", sigma=sigma, **({"resample": "step"} if rule == "wp" else {"fast": False}))
    st = r.init(p, 1, seed=9)
    g0 = torch.Generator().set_state(st.gen.get_state())
    x = torch.tensor([[0.4, -0.9]], dtype=torch.float64)
    y = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    out = r.step(p, st, x, y, torch.ones(1, dtype=torch.bool))
    ours = {k: C.library_lr(rule, "sgd", lr, sigma, n_out) * out.grad[k] for k in ("W_in", "W_rec", "W_out")}

    clean_h = x @ p["W_in"].T  # from rest: W_rec reads 0
    clean_x = torch.tanh(clean_h)
    clean_y = clean_x @ p["W_out"].T
    L = _mse_mean(clean_y, y)
    if rule == "wp":
        xi = dict(zip(p, st.xi[0]))
        noisy_x = torch.tanh(x @ (p["W_in"] + xi["W_in"]).T)
        dL = _mse_mean(noisy_x @ (p["W_out"] + xi["W_out"]).T, y) - L
        theirs = {k: lr * (1 / sigma) * dL * xi[k] for k in ("W_in", "W_out")}
        theirs["W_rec"] = torch.zeros_like(p["W_rec"])  # t = 0: they skip dR; ours is the zero-mean noise term
        ours["W_rec"] = torch.zeros_like(p["W_rec"])
    else:
        xi_h, xi_y = node_noise(g0, 1, n, n_out, sigma, clean_h)
        noisy_h = clean_h + xi_h
        noisy_a = torch.tanh(noisy_h) @ p["W_out"].T + xi_y
        dL = _mse_mean(noisy_a, y) - L
        if rule == "np":
            theirs = {"W_in": lr * (1 / sigma) * dL * xi_h.T @ x, "W_out": lr * (1 / sigma) * dL * xi_y.T @ clean_x}
        else:
            N = math.sqrt(n_in + n + n_out)
            dh, da = noisy_h - clean_h, noisy_a - clean_y
            theirs = {"W_in": lr * (N * dL * dh / dh.norm() ** 2).T @ x,
                      "W_out": lr * (N * dL * da / da.norm() ** 2).T @ clean_x}
        theirs["W_rec"] = torch.zeros_like(p["W_rec"])  # x_{t-1} = 0 at t = 0
    for k in theirs:
        assert torch.allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-15), k
    assert ours["W_out"].abs().max() > 0


def test_library_lr_maps_only_the_perturbation_rules():
    assert C.library_lr("np", "sgd", 1e-3, 1e-3, 10) == pytest.approx(2e-7)
    assert C.library_lr("anp-time", "sgd", 1e-3, 1e-3, 1) == pytest.approx(2e-3)
    assert C.library_lr("bptt", "adam", 1e-3, 1e-3, 10) == 1e-3


def _tiny(tmp_path, **over):
    cfg = {"experiment": "copy", "task": "copy",
           "task_options": {"layout": "np-rnns", "length": 4, "delay": 2, "symbols": 5, "fixed": True},
           "hidden": 6, "model_options": {"init": "xavier", "bias": False}, "epochs": 3, "epoch_steps": 10,
           "update": "epoch", "seeds": [42, 101], "sigma": 1e-3, "lr": 1e-3, "decorrelation": [0.0, 1e-4],
           "threshold": 0.05,
           "methods": {"anp-time": {"rule": "anp-time", "optimizer": "sgd"},
                       "np": {"rule": "np", "optimizer": "sgd"},
                       "bptt": {"rule": "bptt", "optimizer": "adam"}}, **over}
    path = tmp_path / "c.toml"
    lines = []
    for k, v in cfg.items():
        if k != "methods":
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
    for name, m in cfg["methods"].items():
        lines.append(f"[methods.{name}]")
        lines += [f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines).replace("true", "true").replace("false", "false") + "\n")
    return path


def _inline(d):
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def test_runs_resume_and_report(tmp_path, capsys):
    path, out = _tiny(tmp_path), tmp_path / "runs"
    args = ["--config", str(path), "--out", str(out), "--jobs", "0", "--md", str(tmp_path / "t.md"),
            "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "c.png")]
    assert cli.main(args) == 0
    files = sorted(out.rglob("seed-*.json"))
    assert len(files) == 2 * 3 * 2  # seeds x methods x (with, without the layer)
    r = json.loads((out / "anp-time+decor" / "seed-42.json").read_text())
    assert r["spec"]["model_options"]["decorrelation"] == pytest.approx(1e-4 / 10)  # the mean over the epoch
    assert r["spec"]["lr"] == pytest.approx(2e-3 / 5) and r["spec"]["update_every"] == 10
    assert [row["epoch"] for row in r["curve"]] == [1, 2, 3]
    assert {"train_mse", "test_mse", "train_bits", "test_bits"} <= set(r["curve"][0])
    assert 0 <= r["curve"][0]["train_bits"] <= 10 * 5
    mtimes = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert cli.main(args) == 0  # resumed: nothing runs again
    assert "resuming: 12 of 12" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    md = (tmp_path / "t.md").read_text()
    assert "| anp-time+decor | 2/2 |" in md and "decorrelation helps" in md and "close to BPTT" in md
    assert (tmp_path / "c.png").stat().st_size > 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert set(s["summary"]["rows"]) == {"anp-time", "anp-time+decor", "np", "np+decor", "bptt", "bptt+decor"}


def test_final_and_paired_by_hand():
    run = lambda vals: {"diverged": None, "curve": [{"epoch": i + 1, "train_mse": v} for i, v in enumerate(vals)]}  # noqa: E731
    assert R.final(run([9.0] * 10 + [1.0] * 10), "train_mse") == pytest.approx(1.0)  # the last tenth: 2 epochs
    assert R.final({"diverged": 5, "curve": []}, "train_mse") is None
    a = {1: run([3.0]), 2: run([5.0])}
    b = {1: run([1.0]), 2: run([2.0]), 3: run([0.0])}
    p = R.paired(a, b)
    assert p["seeds"] == 2 and p["mean"] == pytest.approx(2.5) and p["se"] == pytest.approx(0.5) and p["lower"] == 0
    assert R._decided({"mean": 2.5, "se": 0.5, "seeds": 2}, +1) is True
    assert R._decided({"mean": 0.5, "se": 0.5, "seeds": 2}, +1) is None


@pytest.mark.parametrize("over, match", [({"epochs": 0}, "epochs=0"), ({"update": "sometimes"}, "update="),
                                         ({"decorrelation": []}, "decorrelation="),
                                         ({"epoch_steps": 11}, "epoch_steps=11")])
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, over, match):
    assert cli.main(["--config", str(_tiny(tmp_path, **over)), "--out", str(tmp_path / "o"), "--partial"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
