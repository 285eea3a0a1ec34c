"""The rule contract, one test over every registered rule (optax's alias_test pattern).

Every rule in ``neuro.rules.available()`` runs on every model in ``models.available()`` that it
supports, in float32 and float64 (and on CUDA when there is one), and at batch 1 in float64, through the same
checks: the estimate has the params' keys, shapes, dtypes and devices; the state's structure is stable and
holds only tensors, numbers, None, generators, and tuples, NamedTuples and str-keyed dicts of them (what
``neuro.io`` saves); the outputs are detached; params are never modified; seeded runs repeat; ``reset``;
``flush``; a state saved mid-sequence through ``neuro.io`` and loaded back continues with the same numbers;
the batch mean; the declared ``needs``; the declaration (``name``, ``needs``, frozen dataclass); and
``rules.make``'s errors.

A case (rule x model x dtype x device x batch) is run once: :class:`Runs` makes each run that the checks read on
first use and keeps it, and the checks of one case are consecutive tests that share it.

Each check is a function of :class:`Runs` so that it can also be run on small rules written here (a weight
perturbation rule and rules that break the contract on purpose) to show that it can fail.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types
from typing import Any, Callable, NamedTuple

import pytest
import torch

import models
import neuro
from neuro import losses, rules
from neuro.rules import AbstractRule, Needs, StepOutput
from neuro.rules.bptt import BPTT

from _helpers import (
    Run,
    build_net,
    load_state,
    no_autograd,
    run_rule,
    same_numbers,
    save_state,
    sequence,
    signature,
    tensors,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

N_IN, N_HIDDEN, N_OUT = 3, 8, 2
T, B = 20, 2
#: steps after which ``flush`` hands over pending estimates (an update falls due inside the sequence)
FLUSH_AFTER = range(2, T + 1, 3)
#: the step after which the state is saved and loaded back (mid-window for every windowed rule below)
SAVE_AT = T // 2 + 1
#: options for the contract run (tbptt: a window of 3 closes at steps 3, 6, ... and one is partial at T=20)
RULE_OPTIONS: dict[str, dict[str, Any]] = {"tbptt": {"k": 3}, "sltt-k": {"k": 5, "T": T}, "eprop": {"window": 3},
                                           "uoro": {"window": 7}, "rflo": {"window": 3}, "three-factor": {"window": 3}}

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _build_net(name: str):
    """The model ``name`` at the contract's small sizes, else at its own default sizes, or ``None`` and why."""
    return build_net(name, N_IN, N_HIDDEN, N_OUT)


def _supported(rule_name: str, model_name: str) -> bool:
    s = rules.get(rule_name).supports
    if s is not None:
        return model_name in s
    net = _build_net(model_name)[0]  # a rule that reads the contract's facts refuses a model without them
    try:
        net is None or rules.make(rule_name, net, **RULE_OPTIONS.get(rule_name, {}))
    except ValueError as e:  # a refusal names the model
        if f"model {model_name!r}" not in str(e):
            raise
        return False
    return True


#: models that cannot be built at the contract's sizes nor at their own defaults, with the reason
UNBUILDABLE = {m: why for m in models.available() if (why := _build_net(m)[1])}
#: (rule, model, dtype, device, batch): every supported pair in both dtypes at batch B, and in float64 at batch 1
#: (fast paths for one sequence, e.g. UORO's window in flight, are chosen at batch 1)
CASES = [(r, m, dt, dev, b) for r in rules.available() for m in models.available()
         if _supported(r, m) and m not in UNBUILDABLE for dev in DEVICES
         for dt, b in ([(torch.float64, B)] if m == "stack" else [(torch.float32, B), (torch.float64, B), (torch.float64, 1)])]
# (a stack runs each rule's one definition, whose dtypes and batch sizes the single-layer cases cover: float64 only)
RULE_NAMES = rules.available()


def _case_id(rule_name: str, model: str, dtype: torch.dtype, device: str, batch: int) -> str:
    return f"{rule_name}-{model}-{str(dtype)[6:]}-{device}" + ("" if batch == B else f"-batch{batch}")


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

    @property
    def batch(self) -> int:
        return self.xs.shape[1]


def make_case(rule_factory: Callable[[Any], AbstractRule], model: str, dtype: torch.dtype = torch.float64,
              device: str = "cpu", batch: int = B, seed: int = 0) -> Case:
    net, why = _build_net(model)
    assert net is not None, why
    rule = rule_factory(net)
    params = net.init_params(seed=seed, dtype=dtype, device=device)
    xs, ys, mask = sequence(net, T, batch, seed=100 + seed, dtype=dtype, device=device)
    return Case(rule, params, xs, ys, mask)


def registry_case(rule_name: str, model: str, dtype: torch.dtype, device: str, batch: int = B, **kw) -> Case:
    return make_case(lambda net: rules.make(rule_name, net, **RULE_OPTIONS.get(rule_name, {})), model, dtype, device,
                     batch, **kw)


def run(case: Case, seed: int = 0, params: dict | None = None, xs=None, ys=None, mask=None, **kw) -> Run:
    """``case.rule`` over the case's sequence (or the one given), from ``init(params, batch, seed)``."""
    return run_rule(case.rule, case.params if params is None else params, case.xs if xs is None else xs,
                    case.ys if ys is None else ys, case.mask if mask is None else mask, seed=seed, **kw)


class Runs:
    """The runs of one case that the checks read, each made on first use and kept for the next check.

    ``plain``: seed 0 with the global generator at 1, on ``case.params`` (its state saved after step
    ``SAVE_AT``, or for a rule that keeps an autograd graph, needs=GRAPH, after the first step from there on
    where it holds none); ``again``: seed 0 with the global generator at 2, on copies of the params that require grad
    (leaves, as an optimizer holds them); ``seed1``: seed 1; ``flushed``: seed 0, flushing after each step in
    ``FLUSH_AFTER``.
    """

    def __init__(self, case: Case):
        self.case = case
        self.before = {k: v.detach().clone() for k, v in case.params.items()}

    @functools.cached_property
    def plain(self) -> Run:
        torch.manual_seed(1)
        return run(self.case, seed=0, save_at=SAVE_AT, save_later=self.case.rule.needs >= Needs.GRAPH)

    @functools.cached_property
    def leaves(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().requires_grad_(True) for k, v in self.case.params.items()}

    @functools.cached_property
    def again(self) -> Run:
        torch.manual_seed(2)  # the global generator must not matter: the seed decides
        return run(self.case, seed=0, params=self.leaves)

    @functools.cached_property
    def seed1(self) -> Run:
        return run(self.case, seed=1)

    @functools.cached_property
    def flushed(self) -> Run:
        return run(self.case, seed=0, flush_after=FLUSH_AFTER)


@functools.lru_cache(maxsize=1)  # the checks of a case are consecutive tests (see CHECK_CASES)
def registry_runs(rule_name: str, model: str, dtype: torch.dtype, device: str, batch: int) -> Runs:
    return Runs(registry_case(rule_name, model, dtype, device, batch))


# -- the checks ------------------------------------------------------------------------------------------------
def check_estimate_matches_params(runs: Runs) -> None:
    case, r = runs.case, runs.plain
    given = [o.grad for o in r.outs if o.grad is not None] + ([r.last] if r.last is not None else [])
    assert given, f"{case.rule.name} gave no estimate in {T} steps and finish"
    for g in given + [r.total]:
        assert isinstance(g, dict) and list(g) == list(case.params), \
            f"estimate keys {list(g)} != params keys {list(case.params)}"
        for k, p in case.params.items():
            assert g[k].shape == p.shape, f"{k}: shape {tuple(g[k].shape)} != {tuple(p.shape)}"
            assert g[k].dtype == p.dtype, f"{k}: dtype {g[k].dtype} != {p.dtype}"
            assert g[k].device == p.device, f"{k}: device {g[k].device} != {p.device}"
            assert not g[k].requires_grad and g[k].grad_fn is None, f"{k}: the estimate carries an autograd graph"
            assert torch.isfinite(g[k]).all(), f"{k}: non-finite estimate"
    norm = sum(float(v.double().norm()) for v in r.total.values())
    assert norm > 0, "the estimate of a non-zero loss's gradient is identically zero"


def check_state_is_stable(runs: Runs) -> None:
    case, r = runs.case, runs.plain
    init = case.rule.init(case.params, case.batch, 0)
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


def check_step_outputs(runs: Runs) -> None:
    case, r = runs.case, runs.plain
    p = next(iter(case.params.values()))
    fn = losses.get(case.rule.loss or "mse")
    for t, o in enumerate(r.outs):
        want = (case.batch, case.net.n_out)
        assert o.y.shape == want, f"y has shape {tuple(o.y.shape)}; expected {want}"
        assert o.y.dtype == p.dtype and o.y.device == p.device
        assert not o.y.requires_grad and o.y.grad_fn is None, "StepOutput.y is not detached"
        assert o.loss.dim() == 0 and o.loss.dtype == p.dtype and o.loss.device == p.device
        assert not o.loss.requires_grad and o.loss.grad_fn is None, "StepOutput.loss is not detached"
        if not case.rule.stochastic:  # the output of the network itself, and its loss
            torch.testing.assert_close(o.loss, fn(o.y, case.ys[t], case.mask[t]))
    if not case.rule.stochastic:
        trace = neuro.simulate(case.net, case.params, case.xs)
        torch.testing.assert_close(torch.stack([o.y for o in r.outs]), trace.y)


def check_params_untouched(runs: Runs) -> None:
    """Plain tensors (``plain``), and leaves as an optimizer holds them (``again``), through a run and reset."""
    case = runs.case
    for params, r, leaves in ((case.params, runs.plain, False), (runs.leaves, runs.again, True)):
        case.rule.reset(params, r.final)
        for k, v in params.items():
            assert torch.equal(v.detach(), runs.before[k]), f"{case.rule.name} modified params[{k!r}] in place"
            assert v.requires_grad == leaves, f"{case.rule.name} changed params[{k!r}].requires_grad"
            assert v.grad is None, f"{case.rule.name} wrote params[{k!r}].grad (the optimizer's job)"
        for g in r.total.values():
            assert not g.requires_grad


def check_seeded_runs_repeat(runs: Runs) -> None:
    a, b, c = runs.plain, runs.again, runs.seed1
    diff = same_numbers(a, b)
    assert diff is None, (f"{runs.case.rule.name}: two runs with seed 0 differ (the second with another global seed "
                          f"and params that require grad): {diff}")
    if runs.case.rule.stochastic:
        assert same_numbers(a, c) is not None, \
            f"{runs.case.rule.name} is declared stochastic but seeds 0 and 1 give the same estimates"
    else:
        diff = same_numbers(a, c)
        assert diff is None, f"{runs.case.rule.name} is declared deterministic but seeds 0 and 1 differ: {diff}"


def check_reset(runs: Runs) -> None:
    case, r = runs.case, runs.plain
    rule = case.rule
    init = rule.init(case.params, case.batch, 0)
    fresh = rule.reset(case.params, r.states[T // 2 - 1])  # mid-sequence
    assert type(fresh) is type(init)
    assert signature(fresh) == signature(init), "reset returned a state of another structure than init"
    rest = case.net.init_state(case.params, case.batch)
    for a, b in zip(fresh.net, rest):
        assert torch.equal(a, b), "reset did not return the network state to rest"
    if not rule.stochastic:  # a sequence after reset is a fresh sequence
        after = run(case, state=fresh)
        for k in after.total:
            assert torch.equal(after.total[k], r.total[k]), f"{k}: the sequence after reset differs from a fresh one"


def check_flush_keeps_the_sum(runs: Runs) -> None:
    """``flush`` (an update is due inside the sequence) hands over pending estimates without changing what the
    sequence sums to, and with the same seed the same random numbers are drawn."""
    case, plain, flushed = runs.case, runs.plain, runs.flushed
    for g in flushed.flushes.values():
        assert g is None or all(not v.requires_grad for v in g.values())
    tol = 1e-9 if case.xs.dtype == torch.float64 else 1e-4
    for k in case.params:
        a, b = plain.total[k].double(), flushed.total[k].double()
        assert torch.allclose(a, b, rtol=tol, atol=tol * (1 + float(a.abs().max()))), \
            f"{k}: flushing every 3 steps changed the summed estimate by {float((a - b).abs().max()):.3g}"


def check_checkpoint_round_trip(runs: Runs) -> None:
    """The state after step ``SAVE_AT``, saved through ``neuro.io.to_saveable`` and ``torch.save`` and loaded back
    with ``torch.load(weights_only=True)`` and ``from_saveable``, continues the sequence with the uninterrupted
    run's numbers: every later step's estimate, output and loss, and finish's estimate, bit for bit.

    A rule that keeps an autograd graph between steps (needs=GRAPH) cannot be saved inside a window: ``neuro.io``
    refuses the graph. It is saved after the first step from ``SAVE_AT`` on where its window has closed, or, when
    its window is the whole sequence (BPTT), after ``finish``, and then runs a second sequence."""
    case, plain = runs.case, runs.plain
    name = case.rule.name
    graph = case.rule.needs >= Needs.GRAPH
    if graph and plain.saved_at is None:  # one window, the whole sequence: saved at the sequence's end
        assert isinstance(plain.saved, ValueError) and "autograd graph" in str(plain.saved), \
            f"{name}: saving its state inside its window did not fail with neuro.io's error: {plain.saved!r}"
        saved = save_state(plain.final)  # before the reference run draws from the state's generators
        ref, at, where = run(case, state=plain.final), 0, "after finish"
    else:
        assert plain.saved_at is not None, f"{name}: its state after step {SAVE_AT} cannot be saved: " \
            f"{type(plain.saved).__name__}: {plain.saved}"
        ref, at, where, saved = plain, plain.saved_at, f"after step {plain.saved_at}", plain.saved
    try:
        state = load_state(saved)
    except Exception as e:
        raise AssertionError(f"{name}: its state saved {where} cannot be loaded back: {type(e).__name__}: {e}") from e
    assert signature(state) == signature(plain.states[at - 1] if at else plain.final), \
        "the loaded state has another structure"
    resumed = run(case, state=state, start=at)
    diff = same_numbers(ref, resumed, start=at)
    assert diff is None, f"{name}: saved {where} and loaded back, the run continues differently: {diff}"


def check_batch_mean(runs: Runs) -> None:
    """A batch of two copies of one sequence gives the estimate of the sequence alone (mean over batch)."""
    case = runs.case
    one = run(case, xs=case.xs[:, :1], ys=case.ys[:, :1], mask=case.mask[:, :1])
    two = run(case, xs=case.xs[:, :1].expand(-1, 2, -1), ys=case.ys[:, :1].expand(-1, 2, -1),
              mask=case.mask[:, :1].expand(-1, 2))
    for k in one.total:
        torch.testing.assert_close(two.total[k], one.total[k], msg=lambda m, k=k: f"{k}: {m}")


def check_needs(runs: Runs) -> None:
    """LOSS: the estimate comes from forward passes alone. Below GRAPH: no unrolled graph kept between steps."""
    case = runs.case
    needs = case.rule.needs
    assert needs < Needs.GRAPH, "GRAPH rules may use anything; nothing to check"
    if needs == Needs.LOSS:
        with no_autograd("a LOSS rule"):
            r = run(case)
        assert sum(float(v.double().norm()) for v in r.total.values()) > 0
    for t, s in enumerate(runs.plain.states):
        held = [x for x in tensors(s) if x.requires_grad or x.grad_fn is not None]
        assert not held, f"{case.rule.name} (needs {needs.name}) keeps an autograd graph in its state after step {t + 1}"


CHECKS = [check_estimate_matches_params, check_state_is_stable, check_step_outputs, check_params_untouched,
          check_seeded_runs_repeat, check_reset, check_flush_keeps_the_sum, check_checkpoint_round_trip]


def _checks_for(rule_name: str, dtype: torch.dtype, batch: int) -> list[Callable[[Runs], None]]:
    """Every check that applies: at batch 1 the checks of one run, its flushes and its checkpoint; the batch mean on
    deterministic rules in float64; needs below GRAPH."""
    cls = rules.get(rule_name)
    if batch == 1:
        return [check_estimate_matches_params, check_state_is_stable, check_step_outputs, check_flush_keeps_the_sum,
                check_checkpoint_round_trip]
    return CHECKS + ([check_batch_mean] if dtype == torch.float64 and not cls.stochastic else []) \
        + ([check_needs] if cls.needs < Needs.GRAPH else [])


#: every (check, case), the checks of a case consecutive (so that they share its runs); the float32 cases, which
#: repeat the float64 ones for the dtype's sake, are marked slow (``make test`` runs them, ``make test-fast`` not)
CHECK_CASES = [pytest.param(check, *c, id=f"{check.__name__[len('check_'):]}-{_case_id(*c)}",
                            marks=[pytest.mark.slow] if c[2] == torch.float32 else [])
               for c in CASES for check in _checks_for(c[0], c[2], c[4])]


# -- over every registered rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("check,rule_name,model,dtype,device,batch", CHECK_CASES)
def test_contract(check, rule_name, model, dtype, device, batch):
    check(registry_runs(rule_name, model, dtype, device, batch))


def test_every_registered_rule_is_exercised():
    """The parametrisation is not vacuous: each rule runs on at least one model, in both dtypes, through every
    check."""
    assert {"bptt", "tbptt"} <= set(RULE_NAMES)
    for r in RULE_NAMES:
        runnable = [c for c in CASES if c[0] == r]
        assert {c[2] for c in runnable} == set(DTYPES), f"rule {r!r} runs on no model built at the contract's sizes"
    for m in ("rate", "lstm", "lif", "alif"):
        assert any(c[1] == m for c in CASES), f"model {m!r} is not exercised"
    checked = {(p.values[0], p.values[1:]) for p in CHECK_CASES}
    for c in CASES:
        for check in CHECKS if c[4] == B else [check_checkpoint_round_trip]:
            assert (check, c) in checked, f"{check.__name__} does not run on {_case_id(*c)}"
    assert {p.values[0] for p in CHECK_CASES} == set(CHECKS) | {check_batch_mean, check_needs}


def test_every_model_is_run_through_the_contract():
    """Every registered model is built (at the small sizes or its own defaults) and exercised by some rule;
    a model that cannot be built is a failure that names it and the reason."""
    assert not UNBUILDABLE, "; ".join(UNBUILDABLE.values())
    exercised = {c[1] for c in CASES}
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
    runs = Runs(make_case(_WeightPerturbation, model, dtype))
    for check in CHECKS + [check_needs]:
        check(runs)


def test_the_checks_catch_rules_that_break_the_contract():
    def runs(rule, dtype=torch.float64):
        return Runs(make_case(rule, "rate", dtype))

    with pytest.raises(AssertionError, match="autograd"):
        check_needs(runs(_BPTTClaimingLoss))
    with pytest.raises(AssertionError, match="keeps an autograd graph"):
        check_needs(runs(_BPTTClaimingLocal))
    with pytest.raises(AssertionError, match="deterministic but seeds|two runs with seed 0 differ"):
        check_seeded_runs_repeat(runs(_UnseededPerturbation))
    with pytest.raises(AssertionError, match="modified params"):
        check_params_untouched(runs(_SGDInside))
    with pytest.raises(AssertionError, match="dtype"):
        check_estimate_matches_params(runs(_SGDInside, torch.float32))
    with pytest.raises(AssertionError):
        check_batch_mean(runs(_Summing))
    with pytest.raises(AssertionError, match="differ|grows"):
        check_state_is_stable(runs(_Growing))
    with pytest.raises(AssertionError, match="holds only tensors"):
        check_state_is_stable(runs(_CountsInAnObject))
    with pytest.raises(AssertionError, match="cannot be saved"):
        check_checkpoint_round_trip(runs(_CountsInAnObject))
    hidden = runs(_NoiseOutsideTheState)
    for check in CHECKS[:-1]:  # only the round trip sees that part of the state lives on the rule object
        check(hidden)
    with pytest.raises(AssertionError, match="continues differently"):
        check_checkpoint_round_trip(hidden)


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


class _CountState(NamedTuple):
    net: NamedTuple
    count: Any


@dataclasses.dataclass(frozen=True)
class _CountsInAnObject(_WeightPerturbation):
    """Keeps a step count in a mutable object: neither a state's structure nor a checkpoint can hold it."""

    name = "test-counts-in-an-object"

    def init(self, params, batch=1, seed=0):
        return _CountState(self.net.init_state(params, batch), types.SimpleNamespace(steps=0))

    def step(self, params, state, x, y, mask):
        net, y_hat, l = self._forward(params, state.net, x, y, mask)
        state.count.steps += 1
        return StepOutput(state._replace(net=net), y_hat, l, None)


class _NetOnly(NamedTuple):
    net: NamedTuple


@dataclasses.dataclass(frozen=True)
class _NoiseOutsideTheState(_WeightPerturbation):
    """Draws its noise from a generator kept on the rule object (seeded by init), not in its state."""

    name = "test-noise-outside-the-state"
    _kept_on_reset = ()

    def init(self, params, batch=1, seed=0):
        object.__setattr__(self, "_gen", torch.Generator().manual_seed(seed))
        return _NetOnly(self.net.init_state(params, batch))

    def _noise(self, state, v):
        return torch.randn(v.shape, generator=self._gen, dtype=torch.float64).to(v)
