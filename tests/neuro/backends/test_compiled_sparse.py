"""backend="compiled" on sparse networks and stacks (synapses stored by presynaptic unit) against the torch
backend in float64: identical spikes, voltages, currents, adaptation and readout to rounding; the synapse
tables hold exactly the masks' synapses; a hand-built stack checks the same-step feed-forward path; the
``neuro bench sim --sparse`` section runs on tiny settings (no Brian2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import models
import neuro

pytest.importorskip("numba")

from neuro.backends import compiled  # noqa: E402

KW = dict(input_scale=15.0, rec_scale=2.0)


def _xs(n_in: int, seed: int, T: int = 300, B: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.rand(T, B, n_in, generator=g) < 0.1).double() * (1 + torch.rand(T, B, n_in, generator=g).double())


def _check_same(net, seed: int = 0, B: int = 2, min_rate: float = 0.005):
    params = net.init_params(seed, dtype=torch.float64)
    xs = _xs(net.n_in, seed, B=B)
    alif = getattr(net, "layer", net.name) == "alif"
    rec = ("spikes", "v", "i", "y") + (("a",) if alif else ())
    ref = neuro.simulate(net, params, xs)
    out = neuro.simulate(net, params, xs, backend="compiled", record=rec)
    for sl in getattr(net, "slices", (slice(None),)):  # every layer fires
        rate = float(ref.spikes[..., sl].mean())
        assert min_rate < rate < 0.3, f"the layer {sl} must fire: {rate}"
    assert torch.equal(out.spikes, ref.spikes)
    torch.testing.assert_close(out.v, ref.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.extra["i"], ref.extra["i"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.y, ref.y, rtol=0, atol=1e-12)
    if alif:
        torch.testing.assert_close(out.extra["a"], ref.extra["a"], rtol=0, atol=1e-12)
    return ref


NETS = {
    "lif-random": lambda: models.make("lif", n_in=20, n_hidden=80, n_out=3, connectivity=0.2, **KW),
    "lif-fan-in-both": lambda: models.make("lif", n_in=20, n_hidden=80, n_out=3,
                                           connectivity={"W_in": "fan-in:3", "W_rec": "fan-in:8"}, **KW),
    "lif-sparse-input": lambda: models.make("lif", n_in=20, n_hidden=80, n_out=3,
                                            connectivity={"W_in": "random:0.1", "W_rec": 0.2}, **KW),
    "lif-one-to-one-input": lambda: models.make("lif", n_in=30, n_hidden=30, n_out=2,
                                                connectivity={"W_in": "one-to-one"}, **KW),
    "alif-sparse-refractory": lambda: models.make("alif", n_in=20, n_hidden=80, n_out=3, connectivity=0.3,
                                                  refractory=2, **KW),
    "lif-euler-zero-reset": lambda: models.make("lif", n_in=20, n_hidden=60, n_out=3, connectivity=0.3,
                                                dynamics="euler", reset="zero", **KW),
    "lif-lava": lambda: models.make("lif", n_in=20, n_hidden=60, n_out=3, connectivity=0.3, dynamics="lava", **KW),
    "stack-2-sparse": lambda: models.make("lif", n_in=20, n_hidden=(60, 40), n_out=3, connectivity=0.5, **KW),
    "stack-3-skip": lambda: models.make("lif", n_in=20, n_hidden=(60, 40, 30), n_out=3, connectivity=0.5,
                                        skip=True, **KW),
    "stack-skip-mixed-masks": lambda: models.make("lif", n_in=20, n_hidden=(60, 40, 30), n_out=3, skip=True,
                                                  connectivity={"1.W_in": "fan-in:5", "2.W_rec": 0.3}, **KW),
    "stack-alif": lambda: models.make("alif", n_in=20, n_hidden=(60, 40), n_out=3, connectivity=0.5,
                                      refractory=1, **KW),
    "stack-dense": lambda: models.make("lif", n_in=20, n_hidden=(50, 40), n_out=3, **KW),
}


@pytest.mark.parametrize("name", list(NETS))
def test_compiled_equals_torch_on_sparse_networks_and_stacks(name):
    _check_same(NETS[name]())


def test_batch_of_one_and_float32():
    net = NETS["stack-2-sparse"]()
    _check_same(net, seed=3, B=1)
    params = net.init_params(1)
    xs = _xs(net.n_in, 1).float()
    ref = neuro.simulate(net, params, xs)
    out = neuro.simulate(net, params, xs, backend="compiled", record=("spikes", "y"))
    assert out.spikes.dtype == torch.float32 and out.v is None
    assert (out.spikes != ref.spikes).float().mean() < 1e-3  # float32 sums in another order may flip a rare spike


def test_tables_hold_exactly_the_masks_synapses():
    """Rebuild W_in, W_rec (and a stack's feed-forward W_in) from the tables: the masked weights, nothing else."""
    for name in ("lif-fan-in-both", "stack-skip-mixed-masks"):
        net = NETS[name]()
        p = {k: v.numpy() for k, v in net.init_params(0, dtype=torch.float64).items()}
        tabs = compiled.synapse_tables(net)
        n = net.n_hidden

        def dense(tab, n_pre):
            G, start, cnt, lo, idx, val = tab.arrays(p, np.float64)
            out = np.zeros((G, n, n_pre))
            for pre in range(n_pre):
                for g in range(G):
                    s = pre * G + g
                    for j in range(cnt[s]):
                        post = lo[s] + j if lo[s] >= 0 else idx[start[s] + j]
                        assert out[g, post, pre] == 0
                        out[g, post, pre] = val[start[s] + j]
            return out

        w_in, w_ff, w_rec = dense(tabs["in"], net.n_in), dense(tabs["ff"], n)[0], dense(tabs["rec"], n)[0]
        params = net.init_params(0, dtype=torch.float64)
        if net.name != "stack":
            np.testing.assert_array_equal(w_in[0], net.weight(params, "W_in").numpy())
            np.testing.assert_array_equal(w_rec, net.weight(params, "W_rec").numpy())
            synapses = int(net.masks["W_in"].sum() + net.masks["W_rec"].sum())
            assert tabs["in"].size + tabs["rec"].size == synapses
            continue
        sl = net.slices
        want_rec, want_ff, want_in = np.zeros((n, n)), np.zeros((n, n)), np.zeros((len(sl), n, net.n_in))
        for l in range(len(sl)):
            lp = net.layer_params(params, l)
            want_rec[sl[l], sl[l]] = lp["W_rec"].numpy()
            if l == 0:
                want_in[0, sl[0]] = lp["W_in"].numpy()
            else:
                below = net.sizes[l - 1]
                want_ff[sl[l], sl[l - 1]] = lp["W_in"][:, :below].numpy()
                want_in[l, sl[l]] = lp["W_in"][:, below:].numpy()
        np.testing.assert_array_equal(w_rec, want_rec)
        np.testing.assert_array_equal(w_ff, want_ff)
        np.testing.assert_array_equal(w_in, want_in)
        m = net.masks
        assert tabs["ff"].size == int(m["1.W_in"][:, :60].sum()) + 40 * 30  # layer 2's W_in is dense


def test_same_step_feed_forward_by_hand():
    """Layer 1 (one unit) is driven over threshold at step 2 by its input; layer 2's unit listens to it only
    (feed-forward, no delay): it must fire at step 2 too. Layer 1's recurrent self-synapse makes it fire again
    one step later (step 3, not 2), and layer 2 follows within that step again."""
    net = models.make("lif", n_in=1, n_hidden=(1, 1), n_out=1, tau_syn=1e-3, connectivity={"1.W_in": "dense"})
    p = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in net.init_params(dtype=torch.float64).items()}
    k = net.layers[0].kappa
    p["0.W_in"][0, 0] = 1.5 / k  # v jumps by 1.5: a spike at step 2, then 0.5
    p["1.W_in"][0, 0] = 1.2 / k  # the spike of layer 1 lifts layer 2 over threshold in the same step
    p["0.W_rec"][0, 0] = 0.6 / k  # and lifts layer 1 again (0.5 + 0.6 > 1) one step later
    p["W_out"][0, 0] = 1.0
    xs = torch.zeros(6, 1, 1, dtype=torch.float64)
    xs[2, 0, 0] = 1.0
    out = neuro.simulate(net, p, xs, backend="compiled", record=("spikes", "v", "y"))
    assert out.spikes[:, 0, 0].tolist() == [0, 0, 1, 1, 0, 0]
    assert out.spikes[:, 0, 1].tolist() == [0, 0, 1, 1, 0, 0]
    assert out.y[:, 0, 0].tolist()[:3] == [0.0, 0.0, 1.0]  # the readout reads layer 2
    assert torch.equal(out.spikes, neuro.simulate(net, p, xs).spikes)


def test_layers_it_cannot_run_are_refused():
    net = models.make("rate", n_in=2, n_hidden=(3, 3), n_out=1)
    with pytest.raises(ValueError, match="cannot run a stack of 'rate' layers.*backend='torch'"):
        neuro.simulate(net, net.init_params(), torch.zeros(3, 1, 2), backend="compiled")
    lif = models.make("lif", n_in=2, n_hidden=(3, 3), n_out=1)
    with pytest.raises(ValueError, match="record=.*invalid for 'stack'"):
        neuro.simulate(lif, lif.init_params(), torch.zeros(3, 1, 2), backend="compiled", record=("spikes", "a"))


def test_bench_sim_sparse_quick(tmp_path):
    from neuro.bench import sim

    argv = ["--sparse", "--quick", "--n-sparse", "64", "--connectivity", "0.1", "--steps", "30", "--out",
            str(tmp_path)]
    assert sim.main(argv) == 0
    res = json.loads((tmp_path / "bench_sim_sparse.json").read_text())
    md = (tmp_path / "bench_sim_sparse.md").read_text()
    assert [(r["part"], r["n"], r["p"]) for r in res["results"]] == [("a", 64, 0.1), ("b", 64, 1.0)]
    for r in res["results"]:
        assert r["brian2"] is None  # --quick runs no Brian2
        assert r["compiled_sparse"]["rate_hz"] == r["compiled_dense"]["rate_hz"]  # the same network
        assert r["sparse_vs_dense"] == pytest.approx(r["compiled_sparse"]["steps_per_s"]["median"]
                                                     / r["compiled_dense"]["steps_per_s"]["median"])
    assert res["results"][0]["recurrent_synapses"] < 64 * 64
    assert "loadavg_start" in res["machine"] and "(a) N = 64" in md and "one-to-one" in md
    with pytest.raises(SystemExit):
        sim.main(["--sparse", "--connectivity", "1.5", "--out", str(tmp_path)])


def test_the_networks_above_exercise_every_way_of_reading_a_table():
    """The kernel reads a table as slices (0), short indexed loops (1), one synapse per input channel (2) or not
    at all (3): the equality tests above cover each."""
    seen = set()
    for make in NETS.values():
        net = make()
        params = net.init_params(0, dtype=torch.float64)
        p = {k: v.numpy() for k, v in params.items()}
        t = compiled.synapse_tables(net)
        arrays = {k: t[k].arrays(p, np.float64) for k in ("in", "ff", "rec")}
        seen |= {("in", compiled._input_mode(arrays["in"])[0]), ("ff", compiled._mode(arrays["ff"])),
                 ("rec", compiled._mode(arrays["rec"]))}
    assert {("in", 0), ("in", 1), ("in", 2), ("ff", 0), ("ff", 3), ("rec", 0), ("rec", 1)} <= seen, sorted(seen)
    one = compiled._input_mode(compiled.synapse_tables(NETS["lif-one-to-one-input"]()).get("in").arrays(
        {k: v.numpy() for k, v in NETS["lif-one-to-one-input"]().init_params(0, dtype=torch.float64).items()}, np.float64))
    assert one[0] == 2 and (one[1] == np.arange(30)).all()
