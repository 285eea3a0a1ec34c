"""The contract every registered model keeps: ``models.make``, seeded parameters, dtypes, batch, torch.func.

Parametrised over ``models.available()``, so a model added to the registry is held to the same checks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.func import jvp, vjp, vmap

import models
from neuro.train_config import TrainConfig

F32, F64 = torch.float32, torch.float64
SIZES = dict(n_in=3, n_hidden=7, n_out=2)
CONFIGS = {  # hyper-parameters exercised per model; a model not named here runs with its defaults
    "rate": [{}, {"alpha": 0.4}],
    "lstm": [{}],
    "lif": [{"dynamics": "exact"}, {"dynamics": "euler"}, {"dynamics": "lava"},
            {"reset": "zero", "refractory": 2, "surrogate": "fast-sigmoid"}],
    "alif": [{}, {"dynamics": "lava", "reset": "zero", "refractory": 1}],
    "columnar": [{}, {"cell": "rate"}],
    "constructive": [{}, {"cell": "rate", "per_stage": 3, "stage": 2}, {"per_stage": 2, "stage": 1}],
    "stack": [{}, {"layer": "rate", "sizes": (4, 3), "connectivity": 0.5}, {"layer": "alif", "sizes": (3, 2, 2), "skip": True},
              {"layer": "lstm", "sizes": (4, 3)}],
}
# Fixed systems with deterministic parameters, held to their own oracle tests instead
# (tests/models/test_influence.py): no random init, no W_in, one readout unit.
SPECIAL = {"influence-balancing"}
CORE = {"rate", "lstm", "lif", "alif"}


def _cases():
    for name in models.available():
        if name in SPECIAL:
            continue
        for kw in CONFIGS.get(name, [{}]):
            label = name + "".join(f"-{k}={v}" for k, v in kw.items())
            yield pytest.param(name, kw, id=label)


def cases():
    return list(_cases())


FIXED_OUT = {"influence-balancing": 1}  # models whose readout size is fixed


def make(name, kw):
    return models.make(name, **{**SIZES, "n_out": FIXED_OUT.get(name, SIZES["n_out"])}, **kw)


def inputs(T=40, B=3, seed=0, dtype=F64):
    """Inputs strong enough to make the spiking models fire (checked where it matters)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, SIZES["n_in"], generator=g, dtype=F64) * 3.0 + 2.0).to(dtype)


def run(net, params, xs):
    state = net.init_state(params, xs.shape[1])
    ys, states = [], []
    for x in xs:
        state, y = net.step(params, state, x)
        ys.append(y)
        states.append(state)
    return torch.stack(ys), states


def spikes(net, states):
    return torch.stack([s.z for s in states]) if net.spiking else None


# -- the registry -------------------------------------------------------------------------------------

def test_available_lists_the_core_models():
    assert CORE <= set(models.available())
    assert models.available() == sorted(models.available())


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"'nope'.*alif.*lif.*lstm.*rate"):
        models.make("nope", **SIZES)


@pytest.mark.parametrize("name", sorted(CORE))
def test_unknown_option_is_named_with_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"no option bogus: valid options are .*n_hidden"):
        models.make(name, bogus=1, **SIZES)


@pytest.mark.parametrize("name", sorted(CORE))
def test_sizes_are_required_and_checked(name):
    with pytest.raises(ValueError, match="needs n_hidden, n_out"):
        models.make(name, n_in=2)
    for bad, shown in (({"n_in": -1}, "n_in=-1"), ({"n_hidden": 0}, "n_hidden=0"), ({"n_out": 2.5}, "n_out=2.5"),
                       ({"n_hidden": True}, "n_hidden=True")):
        with pytest.raises(ValueError, match=re.escape(shown)):
            models.make(name, **{**SIZES, **bad})


def test_register_needs_a_name():
    class Nameless(models.RateRNN):
        name = ""

    with pytest.raises(ValueError, match="Nameless"):
        models.register(Nameless)


# -- parameters ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", cases())
def test_init_params_has_the_declared_keys_shapes_and_dtype(name, kw):
    net = make(name, kw)
    shapes = net.param_shapes()
    for dtype in (F32, F64):
        p = net.init_params(seed=0, dtype=dtype)
        assert {k: tuple(v.shape) for k, v in p.items()} == shapes
        assert {v.dtype for v in p.values()} == {dtype}
        net.check_params(p)
    assert {v.dtype for v in net.init_params(seed=0).values()} == {F32}  # the default
    assert net.n_params(p) == sum(torch.Size(s).numel() for s in shapes.values())


@pytest.mark.parametrize("name,kw", cases())
def test_init_params_is_seeded(name, kw):
    net = make(name, kw)
    a, b, c = net.init_params(seed=3), net.init_params(seed=3), net.init_params(seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    random_keys = [k for k in a if a[k].std() > 0]
    assert random_keys, "no parameter is drawn at random"
    assert all(not torch.equal(a[k], c[k]) for k in random_keys)


@pytest.mark.parametrize("name,kw", cases())
def test_float32_and_float64_params_of_one_seed_agree_to_rounding(name, kw):
    net = make(name, kw)
    p32, p64 = net.init_params(seed=5, dtype=F32), net.init_params(seed=5, dtype=F64)
    assert all(torch.equal(p32[k], p64[k].to(F32)) for k in p32)


@pytest.mark.parametrize("name", sorted(CORE))
def test_init_params_rejects_a_bad_dtype_or_seed(name):
    net = make(name, {})
    with pytest.raises(ValueError, match="dtype=torch.float16"):
        net.init_params(dtype=torch.float16)
    for seed in ("0", 1.5, True):
        with pytest.raises(ValueError, match=re.escape(f"seed={seed!r}")):
            net.init_params(seed=seed)


@pytest.mark.parametrize("name", models.available())
def test_every_model_refuses_a_negative_seed_as_train_does(name):
    """``init_params(seed=-1)`` is refused with the message ``train`` and ``sample`` give; numpy integers are
    integers (the same parameters as the int)."""
    net = models.make(name, **{**SIZES, "n_hidden": 23, "n_out": FIXED_OUT.get(name, SIZES["n_out"])})
    with pytest.raises(ValueError, match=r"^seed=-1 is invalid: must be an integer >= 0$"):
        net.init_params(seed=-1)
    with pytest.raises(ValueError, match=r"^seed=-1 is invalid: must be an integer >= 0$"):
        TrainConfig(seed=-1)
    p, q = net.init_params(seed=np.int64(3)), net.init_params(seed=3)
    assert all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize("name,kw", cases())
def test_check_params_rejects_wrong_keys_shapes_and_mixed_dtypes(name, kw):
    net = make(name, kw)
    p = net.init_params(seed=0)
    key = next(iter(p))
    with pytest.raises(ValueError, match=re.escape(key)):
        net.check_params({k: v for k, v in p.items() if k != key})
    with pytest.raises(ValueError, match="W_extra"):
        net.check_params({**p, "W_extra": torch.zeros(1)})
    bad = tuple(s + 1 for s in p[key].shape)
    with pytest.raises(ValueError, match=re.escape(f"params[{key!r}] has shape {bad}")):
        net.check_params({**p, key: torch.zeros(bad)})
    with pytest.raises(ValueError, match="mix dtypes"):
        net.check_params({**p, key: p[key].to(F64)})


@pytest.mark.parametrize("name,kw", cases())
def test_check_params_refuses_what_is_not_a_float_tensor_by_name(name, kw):
    net = make(name, kw)
    p = net.init_params(seed=0)
    key = next(iter(p))
    for bad, got in ((p[key].numpy(), "a numpy.ndarray"), (1, "an? int"), (p[key].long(), "dtype torch.int64")):
        with pytest.raises(TypeError, match=rf"^params\[{key!r}\] is invalid: got {got}, expected"):
            net.check_params({**p, key: bad})
    with pytest.raises(TypeError, match=r"^params must be a dict\[str, Tensor\] from net.init_params, got list$"):
        net.check_params(list(p.values()))


# -- running ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", cases())
@pytest.mark.parametrize("dtype", [F32, F64])
def test_the_params_dtype_decides_state_and_output_dtypes(name, kw, dtype):
    net = make(name, kw)
    params = net.init_params(seed=0, dtype=dtype)
    ys, states = run(net, params, inputs(T=5, dtype=dtype))
    assert ys.dtype == dtype and ys.shape == (5, 3, net.n_out)
    for field, value in states[-1]._asdict().items():
        assert value.dtype == dtype, field
        assert value.shape[0] == 3, field
    for k, v in net.observe(states[-1]).items():
        assert v.dtype == dtype and tuple(v.shape) == (3, SIZES["n_hidden"]), k


@pytest.mark.parametrize("name,kw", cases())
def test_batch_entries_are_independent(name, kw):
    net = make(name, kw)
    params = net.init_params(seed=1, dtype=F64)
    xs = inputs(T=60, B=3)
    with torch.no_grad():
        ys, states = run(net, params, xs)
        for b in range(3):
            yb, sb = run(net, params, xs[:, b:b + 1])
            torch.testing.assert_close(yb[:, 0], ys[:, b], rtol=0, atol=1e-12)
            if net.spiking:
                assert torch.equal(spikes(net, sb)[:, 0], spikes(net, states)[:, b])
    if net.spiking:  # a stack's upper layers see only the sparse spikes of the layer below: they fire less
        assert (0.005 if name == "stack" else 0.01) < float(spikes(net, states).mean()) < 0.9, "the network should fire"


@pytest.mark.parametrize("name,kw", cases())
def test_vmap_over_parameter_sets_equals_separate_runs(name, kw):
    """DESIGN: vectorise across seeds with batched parameters and torch.vmap."""
    net = make(name, kw)
    sets = [net.init_params(seed=s, dtype=F64) for s in range(3)]
    stacked = {k: torch.stack([p[k] for p in sets]) for k in sets[0]}
    xs = inputs(T=30, B=2)
    with torch.no_grad():
        ys = vmap(lambda p: run(net, p, xs)[0])(stacked)
        for s, p in enumerate(sets):
            torch.testing.assert_close(ys[s], run(net, p, xs)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,kw", cases())
def test_forward_and_reverse_mode_agree(name, kw):
    """<u, J t> from jvp equals <J^T u, t> from vjp for the map params -> outputs of T steps."""
    net = make(name, kw)
    params = net.init_params(seed=2, dtype=F64)
    g = torch.Generator().manual_seed(7)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=F64) for k, v in params.items()}
    xs = inputs(T=15, B=2)
    f = lambda p: run(net, p, xs)[0]  # noqa: E731
    ys, Jt = jvp(f, (params,), (tangent,))
    u = torch.randn(ys.shape, generator=g, dtype=F64)
    _, pullback = vjp(f, params)
    (JTu,) = pullback(u)
    lhs = float((u * Jt).sum())
    rhs = float(sum((JTu[k] * tangent[k]).sum() for k in params))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)
    assert abs(lhs) > 1e-6  # the outputs depend on the parameters
