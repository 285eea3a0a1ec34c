"""neuro.sequence_loss, neuro.grad_estimate and neuro.alignment.

The oracle for BPTT on the non-spiking models is central finite differences of ``sequence_loss`` in
float64, over every entry of every parameter of a small network; ``sequence_loss`` itself is checked
against a loop written here from the rate model's equations. (Spiking models: tests/neuro/rules/test_bptt.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

import models
import neuro


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the tensors are tiny, and a spinning second thread slows a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


T, B, N_IN, N_HID, N_OUT = 9, 2, 3, 5, 2

NONSPIKING = [("rate", {"alpha": 1.0}), ("rate", {"alpha": 0.5}), ("lstm", {})]


def _seq(loss: str, dtype=torch.float64, seed: int = 0, T: int = T, B: int = B, masked: bool = True):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, N_IN, generator=g, dtype=torch.float64).to(dtype)
    if loss == "mse":
        ys = torch.randn(T, B, N_OUT, generator=g, dtype=torch.float64).to(dtype)
    else:
        cls = torch.randint(0, N_OUT, (T, B), generator=g)
        ys = torch.nn.functional.one_hot(cls, N_OUT).to(dtype)
    mask = torch.rand(T, B, generator=g) < 0.6 if masked else None
    if masked:
        mask[0] = True  # some steps count, some do not
        mask[-1] = False
    return xs, ys, mask


def _central_fd(f, params: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    out = {}
    for k, p in params.items():
        g = torch.zeros_like(p)
        flat, gflat = p.view(-1), g.view(-1)
        for j in range(flat.numel()):
            old = flat[j].item()
            flat[j] = old + eps
            lp = f(params).item()
            flat[j] = old - eps
            lm = f(params).item()
            flat[j] = old
            gflat[j] = (lp - lm) / (2 * eps)
        out[k] = g
    return out


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("name,kw", NONSPIKING, ids=["rate-alpha1", "rate-alpha0.5", "lstm"])
def test_bptt_equals_central_finite_differences(name, kw, loss):
    net = models.make(name, n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, **kw)
    params = net.init_params(seed=3, dtype=torch.float64)
    params["b"] += 0.1 * torch.randn(params["b"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params["b_out"] += 0.1
    xs, ys, mask = _seq(loss)

    g = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss, mask=mask)
    fd = _central_fd(lambda p: neuro.sequence_loss(net, p, xs, ys, loss=loss, mask=mask), params, eps=1e-6)

    assert set(g) == set(params)
    for k in params:
        scale = fd[k].abs().max().item()
        assert scale > 1e-6, f"finite-difference gradient of {k} is ~0: the oracle would be vacuous"
        err = (g[k] - fd[k]).abs().max().item() / scale
        assert err < 1e-6, f"{name} {kw} {loss}: d/d{k} BPTT vs finite differences, relative error {err:.2e}"

    # the mask matters: the gradient without it differs
    g_all = neuro.grad_estimate(net, params, "bptt", xs, ys, loss=loss)
    assert not torch.allclose(g_all["W_rec"], g["W_rec"])


def _manual_rate_loss(params, xs, ys, mask, alpha):
    """L = sum_t (1/B) sum_b mask_tb * 1/2 |W_out h_t + b_out - y_t|^2 with the leaky tanh RNN, by hand."""
    Tn, Bn, _ = xs.shape
    total = 0.0
    for b in range(Bn):
        h = torch.zeros(N_HID, dtype=torch.float64)
        for t in range(Tn):
            a = params["W_in"] @ xs[t, b] + params["W_rec"] @ h + params["b"]
            h = (1 - alpha) * h + alpha * torch.tanh(a)
            y_hat = params["W_out"] @ h + params["b_out"]
            if mask is None or mask[t, b]:
                total += 0.5 * sum((y_hat[k].item() - ys[t, b, k].item()) ** 2 for k in range(N_OUT))
    return total / Bn


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_sequence_loss_is_summed_over_time_and_averaged_over_batch(alpha, masked):
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, alpha=alpha)
    params = net.init_params(seed=0, dtype=torch.float64)
    params["b_out"] += 0.3
    xs, ys, mask = _seq("mse", T=7, B=3, masked=masked)
    got = neuro.sequence_loss(net, params, xs, ys, loss="mse", mask=mask)
    assert got.dim() == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(_manual_rate_loss(params, xs, ys, mask, alpha), rel=1e-12)


def test_sequence_loss_is_differentiable_and_keeps_dtype():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = {k: v.requires_grad_(True) for k, v in net.init_params(seed=0).items()}
    xs, ys, _ = _seq("mse", dtype=torch.float32)
    loss = neuro.sequence_loss(net, params, xs, ys)
    assert loss.dtype == torch.float32 and loss.requires_grad
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads[:2])


def test_sequence_loss_accepts_a_single_unbatched_sequence():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, _ = _seq("mse", B=1, masked=False)
    l3 = neuro.sequence_loss(net, params, xs, ys)
    l2 = neuro.sequence_loss(net, params, xs[:, 0], ys[:, 0])
    assert l2.item() == l3.item()
    g3 = neuro.grad_estimate(net, params, "bptt", xs, ys)
    g2 = neuro.grad_estimate(net, params, "bptt", xs[:, 0], ys[:, 0])
    for k in params:
        assert torch.equal(g2[k], g3[k])


def test_sequence_loss_rejects_wrong_shapes_naming_them():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0)
    xs, ys, mask = _seq("mse", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"xs has shape \(9, 2, 4\)"):
        neuro.sequence_loss(net, params, torch.zeros(T, B, N_IN + 1), ys)
    with pytest.raises(ValueError, match=r"ys has shape \(9, 2, 3\)"):
        neuro.sequence_loss(net, params, xs, torch.zeros(T, B, N_OUT + 1))
    with pytest.raises(ValueError, match=r"mask has shape \(9, 3\)"):
        neuro.sequence_loss(net, params, xs, ys, mask=torch.ones(T, B + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"ys \(9, 7, 2\)"):  # one sequence of xs, a batch of ys: not broadcast
        neuro.sequence_loss(net, params, xs[:, 0], torch.zeros(T, 7, N_OUT))
    with pytest.raises(ValueError, match="'nll'"):
        neuro.sequence_loss(net, params, xs, ys, loss="nll")
    bad = dict(params)
    del bad["b"]
    with pytest.raises(ValueError, match="keys"):
        neuro.sequence_loss(net, bad, xs, ys)


def test_empty_sequences_and_wrong_types_are_refused_on_one_line():
    """An empty sequence (T = 0) or batch (B = 0) has no gradient to estimate: refused, not a silent zero; a name
    where a network is expected, or parameters that are not tensors, are TypeErrors naming the argument."""
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0)
    for shape in ((0, B), (T, 0)):
        xs, ys = torch.zeros(*shape, N_IN), torch.zeros(*shape, N_OUT)
        with pytest.raises(ValueError, match=rf"^xs has shape \({shape[0]}, {shape[1]}, {N_IN}\): expected at least "
                                             r"one step and one sequence"):
            neuro.grad_estimate(net, params, "bptt", xs, ys)
        with pytest.raises(ValueError, match=r"at least one step and one sequence"):
            neuro.sequence_loss(net, params, xs, ys)
    xs, ys, _ = _seq("mse", dtype=torch.float32)
    for call in (neuro.grad_estimate, neuro.sequence_loss):
        args = ("bptt",) if call is neuro.grad_estimate else ()
        with pytest.raises(TypeError, match=r"^net='lif' is invalid: expected a network from models.make, not a str$"):
            call("lif", params, *args, xs, ys)
        with pytest.raises(TypeError, match=r"^params\['\w+'\] is invalid: got a numpy.ndarray, expected a torch.Tensor"):
            call(net, {k: v.numpy() for k, v in params.items()}, *args, xs, ys)
        with pytest.raises(TypeError, match=r"^xs must be a torch.Tensor, got ndarray$"):
            call(net, params, *args, xs.numpy(), ys)
    with pytest.raises(TypeError, match=r"^net='lif' is invalid: expected a network from models.make, not a str$"):
        neuro.simulate("lif", params, xs)
    with pytest.raises(TypeError, match=r"^params\['\w+'\] is invalid: got an? int, expected a torch.Tensor"):
        neuro.simulate(net, {k: 1 for k in params}, xs)


# -- grad_estimate ------------------------------------------------------------------------------------
def test_grad_estimate_freezes_params_and_returns_plain_tensors():
    net = models.make("lstm", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = {k: v.requires_grad_(True) for k, v in net.init_params(seed=0).items()}
    before = {k: v.detach().clone() for k, v in params.items()}
    xs, ys, mask = _seq("mse", dtype=torch.float32)
    g = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    for k, v in params.items():
        assert torch.equal(v.detach(), before[k]) and v.grad is None
        assert g[k].shape == v.shape and g[k].dtype == v.dtype and not g[k].requires_grad
    # the same as autograd on sequence_loss
    ref = torch.autograd.grad(neuro.sequence_loss(net, params, xs, ys, mask=mask), list(params.values()))
    for k, r in zip(params, ref):
        torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-6)


def test_grad_estimate_with_a_built_rule():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, mask = _seq("ce")
    by_name = neuro.grad_estimate(net, params, "bptt", xs, ys, loss="ce", mask=mask)
    # a built rule with loss=None takes the loss given to grad_estimate
    built = neuro.grad_estimate(net, params, neuro.rules.make("bptt", net), xs, ys, loss="ce", mask=mask)
    for k in params:
        assert torch.equal(by_name[k], built[k])
    with pytest.raises(ValueError, match="rules.make"):
        neuro.grad_estimate(net, params, neuro.rules.make("tbptt", net), xs, ys, k=3)
    other = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT, alpha=0.5)
    with pytest.raises(ValueError, match="alpha=0.5"):  # a rule built on another network
        neuro.grad_estimate(net, params, neuro.rules.make("bptt", other), xs, ys)
    with pytest.raises(ValueError, match="'bogus'.*bptt"):
        neuro.grad_estimate(net, params, "bogus", xs, ys)
    with pytest.raises(ValueError, match="valid options"):
        neuro.grad_estimate(net, params, "bptt", xs, ys, k=3)


def test_grad_estimate_casts_inputs_to_the_params_dtype():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, _ = _seq("mse", dtype=torch.float32)
    g = neuro.grad_estimate(net, params, "bptt", xs, ys)
    assert all(v.dtype == torch.float64 for v in g.values())
    g64 = neuro.grad_estimate(net, params, "bptt", xs.double(), ys.double())
    for k in params:
        assert torch.equal(g[k], g64[k])


# -- alignment -----------------------------------------------------------------------------------------
def _grads(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"W": torch.randn(3, 4, generator=gen, dtype=torch.float64), "b": torch.randn(3, generator=gen, dtype=torch.float64)}


def test_alignment_of_identical_opposite_and_orthogonal():
    g = _grads(0)
    same = neuro.alignment(g, g)
    assert set(same) == {"W", "b", "overall"}
    assert all(v == pytest.approx(1.0, abs=1e-14) for v in same.values())
    scaled = neuro.alignment({k: 3.0 * v for k, v in g.items()}, g)  # scale invariant
    assert all(v == pytest.approx(1.0, abs=1e-14) for v in scaled.values())
    opp = neuro.alignment({k: -v for k, v in g.items()}, g)
    assert all(v == pytest.approx(-1.0, abs=1e-14) for v in opp.values())
    a = {"W": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([2.0, 0.0])}
    o = {"W": torch.tensor([[0.0, 5.0]]), "b": torch.tensor([0.0, -1.0])}
    orth = neuro.alignment(a, o)
    assert orth == {"W": 0.0, "b": 0.0, "overall": 0.0}
    assert all(isinstance(v, float) for v in orth.values())


def test_alignment_overall_is_the_cosine_of_the_concatenation():
    g, h = _grads(1), _grads(2)
    got = neuro.alignment(g, h)
    for k in g:
        expect = float((g[k] * h[k]).sum() / (g[k].norm() * h[k].norm()))
        assert got[k] == pytest.approx(expect, rel=1e-12)
    fg = torch.cat([g["W"].flatten(), g["b"]])
    fh = torch.cat([h["W"].flatten(), h["b"]])
    assert got["overall"] == pytest.approx(float(fg @ fh / (fg.norm() * fh.norm())), rel=1e-12)
    # not the mean of the per-parameter cosines
    assert got["overall"] != pytest.approx((got["W"] + got["b"]) / 2, rel=1e-6)


def test_alignment_works_across_dtypes():
    g = _grads(0)
    got = neuro.alignment({k: v.float() for k, v in g.items()}, g)
    assert got["overall"] == pytest.approx(1.0, abs=1e-6)


def test_alignment_with_a_zero_vector_is_nan():
    g = _grads(0)
    z = dict(g, b=torch.zeros(3, dtype=torch.float64))
    got = neuro.alignment(z, g)
    assert math.isnan(got["b"])
    assert got["W"] == pytest.approx(1.0, abs=1e-14) and not math.isnan(got["overall"])
    zero = {k: torch.zeros_like(v) for k, v in g.items()}
    assert all(math.isnan(v) for v in neuro.alignment(zero, g).values())
    assert all(math.isnan(v) for v in neuro.alignment(g, zero).values())


def test_alignment_rejects_mismatched_keys():
    g = _grads(0)
    with pytest.raises(ValueError, match="different keys"):
        neuro.alignment(g, {"W": g["W"]})
    with pytest.raises(ValueError, match="different keys"):
        neuro.alignment(g, dict(g, extra=g["b"]))


def test_alignment_rejects_mismatched_shapes():
    g = _grads(0)
    with pytest.raises(ValueError, match=r"'b'.*\(3,\) vs \(4,\)"):
        neuro.alignment(g, dict(g, b=torch.zeros(4, dtype=torch.float64)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grad_estimate_on_cuda_takes_inputs_from_the_cpu():
    net = models.make("lstm", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, mask = _seq("mse")
    g_cpu = neuro.grad_estimate(net, params, "bptt", xs, ys, mask=mask)
    g = neuro.grad_estimate(net, {k: v.cuda() for k, v in params.items()}, "bptt", xs, ys, mask=mask)
    assert neuro.sequence_loss(net, {k: v.cuda() for k, v in params.items()}, xs, ys).device.type == "cuda"
    for k in params:
        assert g[k].device.type == "cuda"
        torch.testing.assert_close(g[k].cpu(), g_cpu[k], rtol=1e-10, atol=1e-12)


def test_alignment_of_bptt_with_itself_on_a_model():
    net = models.make("rate", n_in=N_IN, n_hidden=N_HID, n_out=N_OUT)
    params = net.init_params(seed=0, dtype=torch.float64)
    xs, ys, _ = _seq("mse")
    g = neuro.grad_estimate(net, params, "bptt", xs, ys)
    tb = neuro.grad_estimate(net, params, "tbptt", xs, ys, k=1)
    a = neuro.alignment(tb, g)
    assert set(a) == set(params) | {"overall"}
    assert -1.0 <= a["overall"] < 1.0 - 1e-9  # truncation to one step is biased on a recurrent net
    assert neuro.alignment(g, g)["overall"] == pytest.approx(1.0, abs=1e-14)
