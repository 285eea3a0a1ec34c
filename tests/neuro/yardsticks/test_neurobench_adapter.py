"""The NeuroBench adapter: the module equals the reference simulation, NeuroBench's metrics equal hand
computations from their definitions (Yik et al. 2025; the ``neurobench`` package's metric code), and the ways
NeuroBench reports a wrong number silently raise instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
import neuro
from neuro.yardsticks.neurobench import MetricError, SpikeFunction, measure, run_benchmark, to_torch

pytest.importorskip("neurobench")

F64 = torch.float64

CASES = [
    ("rate", {}),
    ("rate", {"alpha": 0.5}),
    ("rate", {"decorrelation": 0.1}),
    ("lstm", {}),
    ("lif", {}),
    ("lif", {"dynamics": "euler", "refractory": 2, "reset": "zero"}),
    ("lif", {"dynamics": "lava", "input_scale": 3.0}),
    ("alif", {"refractory": 1}),
]


def _net(name, kw, n_in=3, n_out=2, seed=1):
    net = models.make(name, n_in=n_in, n_hidden=12, n_out=n_out, **kw)
    return net, net.init_params(seed=seed, dtype=F64)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CASES])
def test_module_equals_simulate(name, kw):
    net, p = _net(name, kw)
    xs = torch.rand(40, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 2.0
    ref = neuro.simulate(net, p, xs).y  # [T, B, n_out]
    if net.spiking:
        assert neuro.simulate(net, p, xs).spikes.sum() > 0  # the comparison covers spikes and resets
    m = to_torch(net, p)
    torch.testing.assert_close(m(xs.transpose(0, 1)), ref.transpose(0, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(m(xs[:, 0]), ref[:, 0], rtol=0, atol=1e-12)  # without a batch axis


@pytest.mark.parametrize("name,kw", [("rate", {}), ("lstm", {}), ("lif", {"input_scale": 8.0, "bias_mean": 0.9})])
@pytest.mark.parametrize("window", [1, 4])
def test_autonomous_equals_hand_loop(name, kw, window):
    net, p = _net(name, kw, n_in=window, n_out=1)
    T, B, k = 20, 2, 7
    xs = torch.rand(T, B, window, generator=torch.Generator().manual_seed(3), dtype=F64)
    state, x_prev, y_prev, want = net.init_state(p, B), None, None, []
    for t in range(T):  # closed loop: the window shifted by one, the previous prediction appended
        x = xs[t] if t < k else torch.cat([x_prev[:, 1:], y_prev], -1)
        state, y = net.step(p, state, x)
        want.append(y)
        x_prev, y_prev = x, y
    want = torch.stack(want)
    got = to_torch(net, p, autonomous_from=k)(xs.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    open_loop = neuro.simulate(net, p, xs).y
    torch.testing.assert_close(got[:k], open_loop[:k], rtol=0, atol=1e-12)
    assert not torch.allclose(got[k:], open_loop[k:])  # the closed loop is not the open one


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CASES])
def test_dense_operations_and_footprint_by_hand(name, kw):
    """Dense synaptic operations per step: every weight of every layer once (NeuroBench's ``total``); an
    LSTMCell adds its element-wise products (f c, i g: 2n; o tanh(c): n) and, as NeuroBench binarises the
    zero initial (h, c) without setting it to ones, has no recurrent or f c operations at step 0."""
    net, p = _net(name, kw)
    n, n_in, n_out, T = 12, 3, 2, 20
    xs = (torch.rand(T, 2, n_in, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.1) * 3.0
    r = measure(net, p, xs, torch.rand(T, 2, n_out, dtype=F64) + 0.1)
    stored = sum(v.numel() for v in p.values())
    if name == "lstm":
        steps = (T - 1) * (4 * n * (n_in + n) + 3 * n) + (4 * n * n_in + 2 * n)
        assert r["dense"] == pytest.approx((steps + T * n * n_out) / T, rel=1e-12)
        assert r["parameter_count"] == stored + 4 * n  # torch's second bias vector (bias_hh = 0)
    else:
        per_step = n * (n_in + n) + n * n_out + (n * n if kw.get("decorrelation") else 0)
        assert r["dense"] == per_step and r["dense_per_sequence"] == per_step * T
        assert r["parameter_count"] == stored
        if net.spiking:  # real-valued inputs: MACs into the input layer, spikes: ACs elsewhere
            assert r["effective_macs"] == n * n_in and 0 < r["effective_acs"] < n * (n + n_out)
        else:
            assert r["effective_acs"] == 0 and 0 < r["effective_macs"] <= per_step
    assert r["footprint_bytes"] == 8 * r["parameter_count"]


def test_bad_networks_and_options_raise():
    net = models.make("lif-loihi", n_in=2, n_hidden=4, n_out=1)
    with pytest.raises(ValueError, match=r"'lif-loihi'.*supported are 'rate', 'lstm', 'lif', 'alif'"):
        to_torch(net, net.init_params(seed=0))
    net, p = _net("rate", {})
    with pytest.raises(ValueError, match="n_out=1"):
        to_torch(net, p, autonomous_from=3)
    net, p = _net("rate", {}, n_out=1)
    with pytest.raises(ValueError, match="autonomous_from=0"):
        to_torch(net, p, autonomous_from=0)
    with pytest.raises(ValueError, match=r"ys has shape \(5, 2\)"):
        measure(net, p, torch.rand(5, 2, 3), torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"xs has shape \(5, 2, 4\)"):
        measure(net, p, torch.rand(5, 2, 4), torch.rand(5, 2, 1))


# -- the oracle: a 2-neuron LIF network whose spike train and every metric are computed by hand -------------------

def _oracle_net():
    """Memoryless LIF (Lava dynamics, taus of 1e-3 ms: exp(-1000) = 0, so alpha = beta = kappa_out = 0 exactly):
    ``z_t = [W_in x_t + W_rec z_{t-1} + b > v_th]``, ``y_t = W_out z_t + b_out``. Neuron 0 is driven by the input
    (weight 2), neuron 1 only by neuron 0's previous spike (weight 2); the readout is ``z0 + 0.5 z1``."""
    net = models.make("lif", n_in=1, n_hidden=2, n_out=1, dynamics="lava", tau_mem=1e-3, tau_syn=1e-3, tau_out=1e-3,
                      v_th=1.0, reset="zero")
    p = {"W_in": torch.tensor([[2.0], [0.0]], dtype=F64), "W_rec": torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=F64),
         "b": torch.zeros(2, dtype=F64), "W_out": torch.tensor([[1.0, 0.5]], dtype=F64),
         "b_out": torch.zeros(1, dtype=F64)}
    return net, p


# two sequences of 6 steps (no input value is 0 or +-1 at every sample of a step: the input layer is MACs)
X = [[0.7, 0.0, 0.9, 0.3, 0.0, 0.8],
     [0.0, 0.6, 0.2, 0.55, 0.9, 0.0]]
# by hand: z0_t = [2 x_t > 1]; z1_t = [2 z0_{t-1} > 1]
Z0 = [[1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]]
Z1 = [[0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 1, 1]]


def test_oracle_lif_metrics_equal_hand_computation():
    net, p = _oracle_net()
    T, B = 6, 2
    xs = torch.tensor(X, dtype=F64).T[:, :, None]  # [T, B, 1]
    ys = torch.ones(T, B, 1, dtype=F64)
    tr = neuro.simulate(net, p, xs)
    assert tr.spikes[..., 0].T.tolist() == Z0 and tr.spikes[..., 1].T.tolist() == Z1  # the hand spike train
    r = measure(net, p, xs, ys)

    # static: 11 parameters (W_in 2, W_rec 4, b 2, W_out 2, b_out 1) of 8 bytes; zero weights among the Linear
    # layers' weights (biases are not connections): W_in 1 of 2, W_rec 3 of 4, W_out 0 of 2
    assert r["parameter_count"] == 11
    assert r["footprint_bytes"] == 11 * 8
    assert r["connection_sparsity"] == 4 / 8
    # activation sparsity: zeros among all spikes (2 neurons x 6 steps x 2 sequences)
    n_spikes = sum(map(sum, Z0)) + sum(map(sum, Z1))
    assert r["activation_sparsity"] == (24 - n_spikes) / 24
    # synaptic operations per sequence (NeuroBench divides by the number of samples: the 2 sequences):
    # dense: every weight every step (1x2 + 2x2 + 2x1 = 8 per step); MACs: the input layer's one non-zero weight
    # times the non-zero (real-valued) inputs; ACs: the recurrent weight 0->1 per spike of neuron 0 at steps
    # 0..T-2 (read at the next step) and both readout weights per spike
    macs = sum(v != 0 for row in X for v in row)
    acs = sum(sum(z[:-1]) for z in Z0) + n_spikes
    assert (macs, acs) == (8, 16)
    assert r["dense_per_sequence"] == 8 * T
    assert r["effective_macs_per_sequence"] == macs / B
    assert r["effective_acs_per_sequence"] == acs / B
    assert r["dense"] == 8 and r["effective_macs"] == macs / B / T and r["effective_acs"] == acs / B / T
    # sMAPE: y = z0 + 0.5 z1 against 1 everywhere: 200 mean(|y - 1| / (|y| + 1))
    y = [[a + 0.5 * b for a, b in zip(r0, r1)] for r0, r1 in zip(Z0, Z1)]
    terms = [abs(v - 1.0) / (abs(v) + 1.0) for row in y for v in row]
    assert r["smape"] == pytest.approx(200 * sum(terms) / len(terms), rel=1e-12)
    assert r["smape"] == pytest.approx(200 * 53 / 180, rel=1e-12)


def test_classification_accuracy_by_hand():
    net, p = _oracle_net()
    xs = torch.tensor(X, dtype=F64).T[:, :, None]
    labels = torch.tensor([0, 0])  # one readout: argmax is always 0
    assert measure(net, p, xs, labels)["accuracy"] == 1.0
    per_step = torch.zeros(6, 2, dtype=torch.long)
    assert measure(net, p, xs, per_step, metrics="classification")["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"ys has shape \(3,\)"):
        measure(net, p, xs, torch.zeros(3, dtype=torch.long))


# -- the traps: NeuroBench reports a wrong number silently; the adapter raises ----------------------------------

def _batch():
    net, p = _oracle_net()
    x = torch.tensor(X, dtype=F64)[:, :, None]  # [B, T, 1]
    return net, p, x, torch.ones(2, 6, 1, dtype=F64)


def test_wrongly_shaped_prediction_raises_where_neurobench_scores_zero():
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SMAPE
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader, TensorDataset

    net, p, x, y = _batch()
    squeezed = nn.Sequential(to_torch(net, p), nn.Flatten(1))  # [B, T] against targets [B, T, 1]
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    raw = Benchmark(TorchModel(squeezed), loader, [], [], [[], [SMAPE]]).run(quiet=True)
    assert raw["SMAPE"] == 0.0  # NeuroBench's own behaviour: a perfect score
    with pytest.raises(ValueError, match=r"prediction has shape \(2, 6\) but the target \(2, 6, 1\)"):
        run_benchmark(squeezed, x, y)


class _Loop(nn.Module):
    """A one-layer spiking loop over time: ``z_t = spike(W x_t)``, the synapse as ``nn.Linear`` or, broken,
    as ``F.linear`` (invisible to NeuroBench); ``act`` the activation module."""

    def __init__(self, functional=False, act=None):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False, dtype=F64)
        nn.init.constant_(self.lin.weight, 2.0)
        self.functional = functional
        self.act = act if act is not None else SpikeFunction()

    def forward(self, x):
        out = []
        for t in range(x.shape[1]):
            i = F.linear(x[:, t], self.lin.weight) if self.functional else self.lin(x[:, t])
            z = self.act(i, 1.0)
            out.append(z[0] if isinstance(z, tuple) else z)
        return torch.stack(out, 1)


def test_loop_oracle_is_measured():  # the module of the guards below, unbroken: its metrics by hand
    _, _, x, y = _batch()
    r = run_benchmark(_Loop(), x, y)
    assert r["SynapticOperations"]["Dense"] == 6 and r["SynapticOperations"]["Effective_MACs"] == 8 / 2
    assert r["ActivationSparsity"] == 1 - sum(map(sum, Z0)) / 12


def test_invisible_synapses_raise():
    _, _, x, y = _batch()
    with pytest.raises(MetricError, match="no synapse visible to NeuroBench"):
        run_benchmark(_Loop(functional=True), x, y)


class _PlainSpike(nn.Module):
    def forward(self, v, threshold):
        return (v > threshold).to(v.dtype)


def test_unregistered_activation_raises():
    _, _, x, y = _batch()
    with pytest.raises(MetricError, match="no activation visible to NeuroBench"):
        run_benchmark(_Loop(act=_PlainSpike()), x, y)


class _TupleSpike(SpikeFunction):
    """A registered activation whose output NeuroBench's ActivationSparsity cannot count (a tuple)."""

    def forward(self, v, threshold, active=None):
        return super().forward(v, threshold, active), v


def test_metric_exception_propagates():
    _, _, x, y = _batch()
    with pytest.raises(MetricError, match="ActivationSparsity raised TypeError"):
        run_benchmark(_Loop(act=_TupleSpike()), x, y)
