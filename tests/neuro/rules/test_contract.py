"""The rule contract, one test over every registered rule (optax's alias_test pattern).

Every rule in ``neuro.rules.available()`` runs on every model in ``models.available()`` that it
supports, in float32 and float64 (and on CUDA when there is one), through the same checks: the
estimate has the params' keys, shapes, dtypes and devices; the state's structure is stable; the
outputs are detached; params are never modified; seeded runs repeat; ``reset``; the declaration
(``name``, ``needs``, frozen dataclass); ``rules.make``'s errors; and the declared ``needs``.

Each check is a function so that it can also be run on small rules written here (a weight
perturbation rule and rules that break the contract on purpose) to show that it can fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from typing import Any, Callable, NamedTuple
from unittest import mock

import pytest
import torch

import models
import neuro
from neuro import losses, rules
from neuro.rules import AbstractRule, Needs, StepOutput
from neuro.rules.bptt import BPTT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HIDDEN, N_OUT = 3, 8, 2
T, B = 20, 2
#: options for the contract run (tbptt: a window of 3 closes at steps 3, 6, ... and one is partial at T=20)
RULE_OPTIONS: dict[str, dict[str, Any]] = {"tbptt": {"k": 3}, "sltt-k": {"k": 5, "T": T}, "eprop": {"window": 3}, "uoro": {"window": 7},
                                             "rflo": {"window": 3}, "three-factor": {"window": 3}}

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _build_net(name: str):
    """The model ``name`` at the contract's small sizes, else at its own default sizes (a model of fixed
    size, e.g. influence-balancing), or ``None`` and the reason it cannot be built."""
    try:
        return models.make(name, n_in=N_IN, n_hidden=N_HIDDEN, n_out=N_OUT), None
    except (TypeError, ValueError) as e:
        why = f"model {name!r} cannot be built with n_in={N_IN}, n_hidden={N_HIDDEN}, n_out={N_OUT}: {e}"
    cls = models.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)} if cls is not None else {}
    sizes = {k: defaults.get(k, dataclasses.MISSING) for k in ("n_in", "n_hidden", "n_out")}
    if dataclasses.MISSING in sizes.values():
        return None, why
    try:
        return models.make(name, **sizes), None
    except (TypeError, ValueError) as e:
        return None, f"{why}; nor at its default sizes {sizes}: {e}"


def _supported(rule_name: str, model_name: str) -> bool:
    s = rules.get(rule_name).supports
    return s is None or model_name in s


#: models that cannot be built at the contract's sizes nor at their own defaults, with the reason
UNBUILDABLE = {m: why for m in models.available() if (why := _build_net(m)[1])}
CASES = [pytest.param(r, m, dt, dev, id=f"{r}-{m}-{str(dt)[6:]}-{dev}")
         for r in rules.available() for m in models.available() if _supported(r, m) and m not in UNBUILDABLE
         for dt in DTYPES for dev in DEVICES]
RULE_NAMES = rules.available()


@dataclasses.dataclass
class Case:
    """A rule on a network with its params and one sequence (``xs`` [T, B, n_in], ``ys``, ``mask`` [T, B])."""

    rule: AbstractRule
    params: dict[str, torch.Tensor]
    xs: torch.Tensor
    ys: torch.Tensor
    mask: torch.Tensor

    @property
    def net(self):
        return self.rule.net


def make_case(rule_factory: Callable[[Any], AbstractRule], model: str, dtype: torch.dtype = torch.float64,
              device: str = "cpu", batch: int = B, seed: int = 0) -> Case:
    net, why = _build_net(model)
    assert net is not None, why
    rule = rule_factory(net)
    params = net.init_params(seed=seed, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(100 + seed)
    if net.spiking:  # positive input spikes of some weight, so that a few units fire
        xs = 4.0 * (torch.rand(T, batch, net.n_in, generator=g) < 0.3).to(torch.float64)
    else:
        xs = torch.randn(T, batch, net.n_in, generator=g, dtype=torch.float64)
    ys = torch.randn(T, batch, net.n_out, generator=g, dtype=torch.float64)
    mask = torch.rand(T, batch, generator=g) < 0.7
    mask[-1] = True
    return Case(rule, params, xs.to(dtype=dtype, device=device), ys.to(dtype=dtype, device=device), mask.to(device))


def registry_case(rule_name: str, model: str, dtype: torch.dtype, device: str, **kw) -> Case:
    return make_case(lambda net: rules.make(rule_name, net, **RULE_OPTIONS.get(rule_name, {})), model, dtype, device, **kw)


class Run(NamedTuple):
    outs: list[StepOutput]  # one per step
    states: list[Any]  # the state after each step
    final: Any  # the state after finish
    last: dict | None  # finish's estimate
    total: dict  # every estimate, summed


def run(case: Case, seed: int = 0, params: dict | None = None, xs=None, ys=None, mask=None) -> Run:
    params = case.params if params is None else params
    xs, ys, mask = (case.xs if xs is None else xs), (case.ys if ys is None else ys), (case.mask if mask is None else mask)
    rule = case.rule
    state = rule.init(params, xs.shape[1], seed)
    total = rules.zeros_like_params({k: v.detach() for k, v in params.items()})
    outs, states = [], []
    for t in range(xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        outs.append(out)
        states.append(state)
        rules.add_into(total, out.grad)
    state, last = rule.finish(params, state)
    rules.add_into(total, last)
    return Run(outs, states, state, last, total)


def signature(obj: Any, path: str = "state") -> list[tuple]:
    """The structure of a state: (path, shape, dtype, device) of every tensor; Python numbers and None ignored."""
    if isinstance(obj, torch.Tensor):
        return [(path, tuple(obj.shape), obj.dtype, obj.device.type)]
    if obj is None or isinstance(obj, (bool, int, float)):
        return []
    if isinstance(obj, dict):
        return [s for k in sorted(obj) for s in signature(obj[k], f"{path}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        names = getattr(obj, "_fields", range(len(obj)))
        return [s for n, v in zip(names, obj) for s in signature(v, f"{path}.{n}")]
    return [(path, type(obj).__name__)]  # generators and other objects: their type


def tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors(v)]
    return []


# -- the checks ------------------------------------------------------------------------------------------------
def check_estimate_matches_params(case: Case) -> None:
    r = run(case)
    given = [o.grad for o in r.outs if o.grad is not None] + ([r.last] if r.last is not None else [])
    assert given, f"{case.rule.name} gave no estimate in {T} steps and finish"
    for g in given + [r.total]:
        assert isinstance(g, dict) and list(g) == list(case.params), f"estimate keys {list(g)} != params keys {list(case.params)}"
        for k, p in case.params.items():
            assert g[k].shape == p.shape, f"{k}: shape {tuple(g[k].shape)} != {tuple(p.shape)}"
            assert g[k].dtype == p.dtype, f"{k}: dtype {g[k].dtype} != {p.dtype}"
            assert g[k].device == p.device, f"{k}: device {g[k].device} != {p.device}"
            assert not g[k].requires_grad and g[k].grad_fn is None, f"{k}: the estimate carries an autograd graph"
            assert torch.isfinite(g[k]).all(), f"{k}: non-finite estimate"
    norm = sum(float(v.double().norm()) for v in r.total.values())
    assert norm > 0, "the estimate of a non-zero loss's gradient is identically zero"


def check_state_is_stable(case: Case) -> None:
    init = case.rule.init(case.params, B, 0)
    r = run(case)
    assert init._fields[0] == "net", f"the rule state's first field is {init._fields[0]!r}, not 'net'"
    assert type(init.net) is case.net.State
    for s in r.states:
        assert type(s) is type(init), f"state type changed: {type(s).__name__} vs {type(init).__name__}"
        assert signature(s.net) == signature(init.net), "the network state changed shape"
    first, last = signature(r.states[0]), signature(r.states[-1])
    assert first == last, f"state after step 1 and after step {T} differ:\n{first}\n{last}"
    half = T // 2
    most = max(len(signature(s)) for s in r.states[:half])
    assert all(len(signature(s)) <= most for s in r.states[half:]), "the rule state grows with the number of steps"


def check_step_outputs(case: Case) -> None:
    r = run(case)
    p = next(iter(case.params.values()))
    fn = losses.get(case.rule.loss or "mse")
    for t, o in enumerate(r.outs):
        assert o.y.shape == (B, case.net.n_out), f"y has shape {tuple(o.y.shape)}; expected {(B, case.net.n_out)}"
        assert o.y.dtype == p.dtype and o.y.device == p.device
        assert not o.y.requires_grad and o.y.grad_fn is None, "StepOutput.y is not detached"
        assert o.loss.dim() == 0 and o.loss.dtype == p.dtype and o.loss.device == p.device
        assert not o.loss.requires_grad and o.loss.grad_fn is None, "StepOutput.loss is not detached"
        if not case.rule.stochastic:  # the output of the network itself, and its loss
            torch.testing.assert_close(o.loss, fn(o.y, case.ys[t], case.mask[t]))
    if not case.rule.stochastic:
        trace = neuro.simulate(case.net, case.params, case.xs)
        torch.testing.assert_close(torch.stack([o.y for o in r.outs]), trace.y)


def check_params_untouched(case: Case) -> None:
    for leaves in (False, True):  # plain tensors, and leaves as an optimizer holds them
        params = {k: v.detach().clone().requires_grad_(leaves) for k, v in case.params.items()}
        before = {k: v.detach().clone() for k, v in params.items()}
        r = run(case, params=params)
        case.rule.reset(params, r.final)
        for k, v in params.items():
            assert torch.equal(v.detach(), before[k]), f"{case.rule.name} modified params[{k!r}] in place"
            assert v.requires_grad == leaves, f"{case.rule.name} changed params[{k!r}].requires_grad"
            assert v.grad is None, f"{case.rule.name} wrote params[{k!r}].grad (the optimizer's job)"
        for g in r.total.values():
            assert not g.requires_grad


def _same(a: Run, b: Run) -> bool:
    ga = [o.grad for o in a.outs] + [a.last]
    gb = [o.grad for o in b.outs] + [b.last]
    if [g is None for g in ga] != [g is None for g in gb]:
        return False
    return all(torch.equal(x[k], y[k]) for x, y in zip(ga, gb) if x is not None for k in x) and all(
        torch.equal(x.y, y.y) and torch.equal(x.loss, y.loss) for x, y in zip(a.outs, b.outs))


def check_seeded_runs_repeat(case: Case) -> None:
    torch.manual_seed(1)
    a = run(case, seed=0)
    torch.manual_seed(2)  # the global generator must not matter: the seed decides
    b = run(case, seed=0)
    assert _same(a, b), f"{case.rule.name}: two runs with seed 0 differ"
    c = run(case, seed=1)
    if case.rule.stochastic:
        assert not _same(a, c), f"{case.rule.name} is declared stochastic but seeds 0 and 1 give the same estimates"
    else:
        assert _same(a, c), f"{case.rule.name} is declared deterministic but seeds 0 and 1 give different estimates"


def check_reset(case: Case) -> None:
    rule = case.rule
    init = rule.init(case.params, B, 0)
    r = run(case)
    fresh = rule.reset(case.params, r.states[T // 2 - 1])  # mid-sequence
    assert type(fresh) is type(init)
    assert signature(fresh) == signature(init), "reset returned a state of another structure than init"
    rest = case.net.init_state(case.params, B)
    for a, b in zip(fresh.net, rest):
        assert torch.equal(a, b), "reset did not return the network state to rest"
    if not rule.stochastic:  # a sequence after reset is a fresh sequence
        state = fresh
        total = rules.zeros_like_params(case.params)
        for t in range(T):
            out = rule.step(case.params, state, case.xs[t], case.ys[t], case.mask[t])
            state = out.state
            rules.add_into(total, out.grad)
        rules.add_into(total, rule.finish(case.params, state)[1])
        for k in total:
            assert torch.equal(total[k], r.total[k]), f"{k}: the sequence after reset differs from a fresh one"


def check_batch_mean(case: Case) -> None:
    """A batch of two copies of one sequence gives the estimate of the sequence alone (mean over batch)."""
    one = run(case, xs=case.xs[:, :1], ys=case.ys[:, :1], mask=case.mask[:, :1])
    two = run(case, xs=case.xs[:, :1].expand(-1, 2, -1), ys=case.ys[:, :1].expand(-1, 2, -1),
              mask=case.mask[:, :1].expand(-1, 2))
    for k in one.total:
        torch.testing.assert_close(two.total[k], one.total[k], msg=lambda m: f"{k}: {m}")


@contextlib.contextmanager
def no_autograd():
    """Every way to differentiate raises: no graph may be recorded, no autograd or torch.func call made."""

    def forbid(*_a, **_k):
        raise AssertionError("a LOSS rule called autograd")

    def pack(_t):
        raise AssertionError("a LOSS rule recorded an autograd graph")

    targets = [(torch.autograd, n) for n in ("grad", "backward")] + [(torch.Tensor, "backward")]
    targets += [(torch.func, n) for n in ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "linearize")]
    targets += [(torch.autograd.functional, n) for n in ("vjp", "jvp", "jacobian", "hessian", "vhp", "hvp")]
    targets += [(torch.autograd.forward_ad, "make_dual")]
    with contextlib.ExitStack() as stack:
        for obj, name in targets:
            stack.enter_context(mock.patch.object(obj, name, forbid))
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        yield


def check_needs(case: Case) -> None:
    """LOSS: the estimate comes from forward passes alone. Below GRAPH: no unrolled graph kept between steps."""
    needs = case.rule.needs
    assert needs < Needs.GRAPH, "GRAPH rules may use anything; nothing to check"
    if needs == Needs.LOSS:
        with no_autograd():
            r = run(case)
        assert sum(float(v.double().norm()) for v in r.total.values()) > 0
    r = run(case)
    for t, s in enumerate(r.states):
        held = [x for x in tensors(s) if x.requires_grad or x.grad_fn is not None]
        assert not held, f"{case.rule.name} (needs {needs.name}) keeps an autograd graph in its state after step {t + 1}"


def check_flush_keeps_the_sum(case: Case) -> None:
    """``flush`` (an update is due inside the sequence) hands over pending estimates without changing what the
    sequence sums to, and with the same seed the same random numbers are drawn."""
    plain = run(case)
    rule, params = case.rule, case.params
    state = rule.init(params, case.xs.shape[1], 0)
    total = rules.zeros_like_params({k: v.detach() for k, v in params.items()})
    for t in range(case.xs.shape[0]):
        out = rule.step(params, state, case.xs[t], case.ys[t], case.mask[t])
        state = out.state
        rules.add_into(total, out.grad)
        if t % 3 == 1:
            state, g = rule.flush(params, state)
            assert g is None or all(not v.requires_grad for v in g.values())
            rules.add_into(total, g)
    state, last = rule.finish(params, state)
    rules.add_into(total, last)
    tol = 1e-9 if case.xs.dtype == torch.float64 else 1e-4
    for k in params:
        a, b = plain.total[k].double(), total[k].double()
        assert torch.allclose(a, b, rtol=tol, atol=tol * (1 + float(a.abs().max()))), \
            f"{k}: flushing every 3 steps changed the summed estimate by {float((a - b).abs().max()):.3g}"


CHECKS = [check_estimate_matches_params, check_state_is_stable, check_step_outputs, check_params_untouched,
          check_seeded_runs_repeat, check_reset, check_flush_keeps_the_sum]


# -- over every registered rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name,model,dtype,device", CASES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
def test_contract(check, rule_name, model, dtype, device):
    check(registry_case(rule_name, model, dtype, device))


@pytest.mark.parametrize("rule_name,model,dtype,device", [c for c in CASES if c.values[2] == torch.float64
                                                          and not rules.get(c.values[0]).stochastic])
def test_estimate_is_a_mean_over_the_batch(rule_name, model, dtype, device):
    check_batch_mean(registry_case(rule_name, model, dtype, device))


@pytest.mark.parametrize("rule_name,model,dtype,device", [c for c in CASES if rules.get(c.values[0]).needs < Needs.GRAPH])
def test_declared_needs_are_respected(rule_name, model, dtype, device):
    check_needs(registry_case(rule_name, model, dtype, device))


def test_every_registered_rule_is_exercised():
    """The parametrisation is not vacuous: each rule runs on at least one model, in both dtypes."""
    assert {"bptt", "tbptt"} <= set(RULE_NAMES)
    for r in RULE_NAMES:
        runnable = [c for c in CASES if c.values[0] == r]
        assert {c.values[2] for c in runnable} == set(DTYPES), f"rule {r!r} runs on no model built at the contract's sizes"
    for m in ("rate", "lstm", "lif", "alif"):
        assert any(c.values[1] == m for c in CASES), f"model {m!r} is not exercised"


def test_every_model_is_run_through_the_contract():
    """Every registered model is built (at the small sizes or its own defaults) and exercised by some rule;
    a model that cannot be built is a failure that names it and the reason."""
    assert not UNBUILDABLE, "; ".join(UNBUILDABLE.values())
    exercised = {c.values[1] for c in CASES}
    assert exercised == set(models.available()), sorted(set(models.available()) - exercised)


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_declaration(rule_name):
    cls = rules.get(rule_name)
    assert cls.name == rule_name, f"registered as {rule_name!r} but its name is {cls.name!r}"
    assert isinstance(cls.needs, Needs), f"needs={cls.needs!r} is not a neuro.rules.Needs member"
    assert isinstance(cls.stochastic, bool)
    assert cls.supports is None or (isinstance(cls.supports, tuple) and cls.supports
                                    and all(isinstance(m, str) for m in cls.supports))
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{cls.__name__} is not a frozen dataclass"
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert re.search(r"\b(19|20)\d\d\b", doc), f"{cls.__module__}: the module docstring cites no paper (no year)"
    model = next(m for m in models.available() if _supported(rule_name, m) and _build_net(m)[0] is not None)
    rule = rules.make(rule_name, _build_net(model)[0])
    assert rule.name == rule_name and rule.needs is cls.needs
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.loss = "ce"
    for f in dataclasses.fields(cls):
        assert f"{f.name}=" in repr(rule), f"hyper-parameter {f.name} is missing from repr: {rule!r}"
    # every rule takes the loss option, and rejects an unknown loss naming the valid ones
    assert rules.make(rule_name, rule.net, loss="ce").loss == "ce"
    with pytest.raises(ValueError, match="'mse'.*'ce'"):
        rules.make(rule_name, rule.net, loss="hinge")


@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_make_rejects_unknown_option_listing_the_valid_ones(rule_name):
    model = next(m for m in models.available() if _supported(rule_name, m) and _build_net(m)[0] is not None)
    net = _build_net(model)[0]
    with pytest.raises(ValueError) as e:
        rules.make(rule_name, net, not_an_option=1)
    msg = str(e.value)
    assert "not_an_option" in msg and rule_name in msg
    for f in dataclasses.fields(rules.get(rule_name)):
        if f.name != "net":
            assert f.name in msg, f"valid option {f.name!r} is not listed in: {msg}"


@pytest.mark.parametrize("rule_name", [r for r in RULE_NAMES if rules.get(r).supports is not None])
def test_make_rejects_an_unsupported_model(rule_name):
    others = [m for m in models.available() if not _supported(rule_name, m) and _build_net(m)[0] is not None]
    if not others:
        pytest.skip(f"every buildable model is supported by {rule_name!r}")
    with pytest.raises(ValueError, match=f"{others[0]!r}"):
        rules.make(rule_name, _build_net(others[0])[0])


def test_unknown_rule_name_lists_the_valid_ones():
    net = _build_net("rate")[0]
    with pytest.raises(ValueError) as e:
        rules.make("backprop", net)
    assert "'backprop'" in str(e.value)
    for r in RULE_NAMES:
        assert r in str(e.value)
    with pytest.raises(ValueError, match="'backprop'"):
        rules.get("backprop")


def test_make_rejects_a_non_network():
    with pytest.raises(TypeError, match="models.make"):
        rules.make("bptt", "rate")


def test_register_needs_a_name():
    @dataclasses.dataclass(frozen=True)
    class Nameless(BPTT):
        name = ""

    with pytest.raises(ValueError, match="Nameless"):
        rules.register(Nameless)


# -- the checks can fail: rules written here, good and bad ------------------------------------------------------
class _WPState(NamedTuple):
    net: NamedTuple
    gen: torch.Generator


@dataclasses.dataclass(frozen=True)
class _WeightPerturbation(AbstractRule):
    """Forward-difference weight perturbation, one sample per step: g = (l(theta + sigma eps) - l(theta)) / sigma eps."""

    sigma: float = 1e-3

    name = "test-weight-perturbation"
    needs = Needs.LOSS
    stochastic = True
    _kept_on_reset = ("gen",)

    def init(self, params, batch=1, seed=0):
        return _WPState(self.net.init_state(params, batch), torch.Generator().manual_seed(seed))

    def _noise(self, state, v):
        return torch.randn(v.shape, generator=state.gen, dtype=torch.float64).to(v)

    @torch.no_grad()
    def step(self, params, state, x, y, mask):
        eps = {k: self._noise(state, v) for k, v in params.items()}
        _, _, l_pert = self._forward({k: v + self.sigma * eps[k] for k, v in params.items()}, state.net, x, y, mask)
        net, y_hat, l = self._forward(params, state.net, x, y, mask)
        c = (l_pert - l) / self.sigma
        return StepOutput(state._replace(net=net), y_hat.detach(), l.detach(), {k: c * e for k, e in eps.items()})


@dataclasses.dataclass(frozen=True)
class _UnseededPerturbation(_WeightPerturbation):
    """Draws from the global generator and says it is deterministic."""

    name = "test-unseeded"
    stochastic = False

    def _noise(self, state, v):
        return torch.randn(v.shape, dtype=torch.float64).to(v)


@dataclasses.dataclass(frozen=True)
class _BPTTClaimingLoss(BPTT):
    name = "test-bptt-claiming-loss"
    needs = Needs.LOSS


@dataclasses.dataclass(frozen=True)
class _BPTTClaimingLocal(BPTT):
    name = "test-bptt-claiming-local"
    needs = Needs.LOCAL


@dataclasses.dataclass(frozen=True)
class _SGDInside(BPTT):
    """Applies its own update to the params (the optimizer's job) and returns float64 estimates."""

    name = "test-sgd-inside"

    def finish(self, params, state):
        state, g = super().finish(params, state)
        if g is not None:
            for k in params:
                params[k].data.sub_(0.1 * g[k])
            g = {k: v.double() for k, v in g.items()}
        return state, g


@pytest.mark.parametrize("model", ["rate", "lif"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_well_behaved_stochastic_loss_rule_passes_every_check(model, dtype):
    case = make_case(_WeightPerturbation, model, dtype)
    for check in CHECKS + [check_needs]:
        check(case)


def test_the_checks_catch_rules_that_break_the_contract():
    with pytest.raises(AssertionError, match="autograd"):
        check_needs(make_case(_BPTTClaimingLoss, "rate"))
    with pytest.raises(AssertionError, match="keeps an autograd graph"):
        check_needs(make_case(_BPTTClaimingLocal, "rate"))
    with pytest.raises(AssertionError, match="deterministic but seeds|two runs with seed 0 differ"):
        check_seeded_runs_repeat(make_case(_UnseededPerturbation, "rate"))
    with pytest.raises(AssertionError, match="modified params"):
        check_params_untouched(make_case(_SGDInside, "rate"))
    with pytest.raises(AssertionError, match="dtype"):
        check_estimate_matches_params(make_case(_SGDInside, "rate", torch.float32))
    with pytest.raises(AssertionError):
        check_batch_mean(make_case(_Summing, "rate"))
    with pytest.raises(AssertionError, match="differ|grows"):
        check_state_is_stable(make_case(_Growing, "rate"))


@dataclasses.dataclass(frozen=True)
class _Summing(BPTT):
    """Sums over the batch instead of averaging."""

    name = "test-summing"

    def finish(self, params, state):
        batch = state.net[0].shape[0]
        state, g = super().finish(params, state)
        return state, (None if g is None else {k: v * batch for k, v in g.items()})


class _GrowState(NamedTuple):
    net: NamedTuple
    history: tuple


@dataclasses.dataclass(frozen=True)
class _Growing(_WeightPerturbation):
    """Keeps every output: its state grows with time."""

    name = "test-growing"

    def init(self, params, batch=1, seed=0):
        return _GrowState(self.net.init_state(params, batch), ())

    def step(self, params, state, x, y, mask):
        net, y_hat, l = self._forward(params, state.net, x, y, mask)
        return StepOutput(_GrowState(net, state.history + (y_hat,)), y_hat, l, None)
