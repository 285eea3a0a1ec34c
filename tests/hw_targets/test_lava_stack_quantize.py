"""A trained float LIF stack, quantized layer by layer to Loihi's integers, runs in Lava fixed point bit for bit
as the torch model of those integers (the ``lif-loihi`` stack), and stays close to the float network."""

from __future__ import annotations

import pytest
import torch

import models
import neuro

F64 = torch.float64


def _trained_stack():
    net = models.make("lif", n_in=4, n_hidden=(12, 10), n_out=2, connectivity=0.5, feedforward_scale=6.0,
                      dynamics="lava", reset="zero")
    p = net.init_params(0, F64)
    g = torch.Generator().manual_seed(1)
    xs = (torch.rand(80, 2, 4, generator=g, dtype=F64) < 0.4).to(F64) * 2.0
    ys = torch.rand(80, 2, 2, generator=g, dtype=F64)
    rule = neuro.rules.make("ottt", net)
    s = rule.init(p, 2)
    for x, y in zip(xs, ys):
        s = rule.step(p, s, x, y, torch.ones(2, dtype=F64)).state
    _, grad = rule.finish(p, s)
    p = {k: v - 0.002 * grad[k] for k, v in p.items()}  # one step of learning, masked as the rule gives it
    return net, p, xs[:, :1]


def test_a_stack_quantizes_layer_by_layer_with_each_layers_exponents():
    import hw_targets.lava as hl

    net, p, xs = _trained_stack()
    q, qp, report = hl.quantize(net, p, report=True)
    assert q.layer == "lif-loihi" and q.sizes == net.sizes and q.connectivity == net.connectivity
    assert len(q.per_layer) == 2 and {dict(o)["weight_exp_in"] for o in q.per_layer} != {None}
    for k, m in q.masks.items():
        assert (qp[k][~m] == 0).all()
    for name in ("0.W_in", "0.W_rec", "1.W_in", "1.W_rec"):
        err, ref = report.errors[name]
        assert err <= 0.01 * ref  # 8-bit mantissas: within 1% of the largest weight
    tf, tq = neuro.simulate(net, p, xs), neuro.simulate(q, qp, xs)
    assert float((tf.spikes == tq.spikes).to(F64).mean()) > 0.97


@pytest.mark.slow
def test_the_quantized_stack_runs_in_lava_bit_exact():
    import hw_targets.lava as hl

    net, p, xs = _trained_stack()
    q, qp = hl.quantize(net, p)
    torch_trace = neuro.simulate(q, qp, xs)
    lava_trace = hl.export(net, p, fixed_point=True).run(xs)
    assert torch.equal(lava_trace.spikes, torch_trace.spikes)
    assert torch.equal(lava_trace.v, torch_trace.v)
    for sl in q.slices:  # both layers fire, so the feed-forward path is exercised
        assert torch_trace.spikes[:, :, sl].sum() > 0
