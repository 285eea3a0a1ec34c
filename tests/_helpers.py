"""Helpers shared by the test files: small networks and sequences, a rule run over a sequence, comparisons of
parameter dicts, a rule state's structure, and a checkpoint round trip.

``tests/conftest.py`` puts this folder on ``sys.path``, so a test file imports it as ``import _helpers`` (or
``from _helpers import ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from collections.abc import Collection, Iterator
from typing import Any, NamedTuple
from unittest import mock

import torch

import models
from neuro import rules
from neuro.io import from_saveable, to_saveable
from neuro.rules import AbstractRule, StepOutput

F64 = torch.float64


# -- networks and data --------------------------------------------------------------------------------------------
def build_net(name: str, n_in: int = 3, n_hidden: int = 8, n_out: int = 2, **kw):
    """The model ``name`` at the given sizes, else at its own default sizes (a model of fixed size, e.g.
    influence-balancing), as ``(net, None)``; or ``(None, reason)`` when neither can be built."""
    try:
        return models.make(name, n_in=n_in, n_hidden=n_hidden, n_out=n_out, **kw), None
    except (TypeError, ValueError) as e:
        why = f"model {name!r} cannot be built with n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}: {e}"
    cls = models.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)} if cls is not None else {}
    sizes = {k: defaults.get(k, dataclasses.MISSING) for k in ("n_in", "n_hidden", "n_out")}
    if dataclasses.MISSING in sizes.values():
        return None, why
    try:
        return models.make(name, **sizes, **kw), None
    except (TypeError, ValueError) as e:
        return None, f"{why}; nor at its default sizes {sizes}: {e}"


def sequence(net, T: int, batch: int, seed: int = 0, dtype: torch.dtype = F64, device: str = "cpu",
             amp: float = 4.0, p_spike: float = 0.3, p_mask: float = 0.7):
    """One random sequence for ``net``: ``xs`` [T, batch, n_in], ``ys`` [T, batch, n_out], ``mask`` [T, batch].

    A spiking network gets positive input spikes of weight ``amp`` (probability ``p_spike``), so that a few units
    fire; a rate network Gaussian input. Targets are Gaussian; the mask keeps each step with probability
    ``p_mask`` and always keeps the last step. Drawn in float64 from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    if net.spiking:
        xs = amp * (torch.rand(T, batch, net.n_in, generator=g) < p_spike).to(F64)
    else:
        xs = torch.randn(T, batch, net.n_in, generator=g, dtype=F64)
    ys = torch.randn(T, batch, net.n_out, generator=g, dtype=F64)
    mask = torch.rand(T, batch, generator=g) < p_mask
    mask[-1] = True
    return xs.to(dtype=dtype, device=device), ys.to(dtype=dtype, device=device), mask.to(device)


# -- a rule over a sequence ---------------------------------------------------------------------------------------
class Run(NamedTuple):
    """A rule's run over one sequence."""

    outs: list[StepOutput]  # one per step
    states: list[Any]  # the state after each step (after its flush, where one follows)
    final: Any  # the state after finish
    last: dict | None  # finish's estimate
    total: dict  # every estimate, summed
    flushes: dict[int, dict | None]  # flush's estimate after each step in ``flush_after``
    saved: bytes | Exception | None  # the saved state as checkpoint bytes, or why it could not be saved
    saved_at: int | None  # the step after which ``saved`` was saved


def run_rule(rule: AbstractRule, params: dict, xs: torch.Tensor, ys: torch.Tensor, mask: torch.Tensor,
             seed: int = 0, state: Any = None, start: int = 0, flush_after: Collection[int] = (),
             save_at: int | None = None, save_later: bool = False) -> Run:
    """Step ``rule`` through ``xs[start:]`` (from ``rule.init(params, batch, seed)`` or from ``state``), then
    ``finish``. Steps are counted from 1 over the whole sequence: after each step in ``flush_after`` the rule
    flushes; after step ``save_at`` (and its flush) the state is saved through :func:`save_state` into
    ``Run.saved``, or the exception when it cannot be saved; with ``save_later``, saving is tried again after each
    later step until it succeeds (``Run.saved_at``), and ``Run.saved`` keeps the first exception if it never does."""
    state = rule.init(params, xs.shape[1], seed) if state is None else state
    total = rules.zeros_like_params({k: v.detach() for k, v in params.items()})
    outs, states, flushes, saved, saved_at = [], [], {}, None, None
    for t in range(start, xs.shape[0]):
        out = rule.step(params, state, xs[t], ys[t], mask[t])
        state = out.state
        outs.append(out)
        rules.add_into(total, out.grad)
        if t + 1 in flush_after:
            state, flushes[t + 1] = rule.flush(params, state)
            rules.add_into(total, flushes[t + 1])
        states.append(state)
        if save_at is not None and saved_at is None and (t + 1 == save_at or (save_later and t + 1 > save_at)):
            try:
                saved, saved_at = save_state(state), t + 1
            except Exception as e:
                saved = saved if isinstance(saved, Exception) else e
    state, last = rule.finish(params, state)
    rules.add_into(total, last)
    return Run(outs, states, state, last, total, flushes, saved, saved_at)


def same_numbers(a: Run, b: Run, start: int = 0) -> str | None:
    """``None`` when run ``b`` (which starts at step ``start`` of ``a``'s sequence) has ``a``'s numbers from there
    on, bit for bit: every step's estimate, output and loss, every flush's estimate and finish's estimate; else
    where they first differ (steps counted from 1)."""
    outs = a.outs[start:]
    if len(outs) != len(b.outs):
        return f"{len(outs)} steps against {len(b.outs)}"
    pairs = [(f"step {start + t + 1}", o.grad, p.grad) for t, (o, p) in enumerate(zip(outs, b.outs))]
    flushed = {k: v for k, v in a.flushes.items() if k > start}
    if sorted(flushed) != sorted(b.flushes):
        return f"flushes after steps {sorted(flushed)} against {sorted(b.flushes)}"
    pairs += [(f"flush after step {k}", v, b.flushes[k]) for k, v in sorted(flushed.items())]
    pairs += [("finish", a.last, b.last)]
    for where, x, y in pairs:
        if (x is None) != (y is None):
            return f"{where}: an estimate in one run only"
        if x is not None:
            if list(x) != list(y):
                return f"{where}: estimate keys {list(x)} != {list(y)}"
            for k in x:
                if not torch.equal(x[k], y[k]):
                    return f"{where}: estimate {k} differs by {float((x[k] - y[k]).abs().max()):.3g}"
    for t, (o, p) in enumerate(zip(outs, b.outs)):
        if not torch.equal(o.y, p.y):
            return f"step {start + t + 1}: output y differs by {float((o.y - p.y).abs().max()):.3g}"
        if not torch.equal(o.loss, p.loss):
            return f"step {start + t + 1}: loss differs ({float(o.loss)} != {float(p.loss)})"
    return None


# -- comparisons --------------------------------------------------------------------------------------------------
def assert_params_close(got: dict, ref: dict, rtol: float = 1e-9, atol: float = 1e-12, **kw) -> None:
    """Every entry of ``ref`` is close to the same entry of ``got`` (the failure names the key)."""
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}", **kw)


def assert_nested_close(a: Any, b: Any, what: str, rtol: float = 1e-10, atol: float = 1e-13) -> None:
    """``b`` equal to ``a`` through nested dicts, tuples and lists: tensors and floats to ``rtol``/``atol``, a
    generator's state exactly, everything else by ``==`` (the engines' oracles: parameters, rule and optimizer
    states, metrics)."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_nested_close(a[k], b[k], f"{what}.{k}", rtol, atol)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_close(x, y, f"{what}[{i}]", rtol, atol)
    elif isinstance(a, float):
        assert b == a or abs(b - a) <= atol + rtol * abs(a), f"{what}: {b} != {a}"
    elif isinstance(a, torch.Generator):  # a rule's noise: the same draws made
        assert torch.equal(a.get_state(), b.get_state()), what
    else:
        assert a == b, what


def rel_err(got: dict, ref: dict) -> float:
    """Largest relative error over the parameters (max-abs difference / max-abs of the reference); a reference
    entry that is zero fails (the comparison would be vacuous)."""
    errs = []
    for k in ref:
        scale = ref[k].abs().max().item()
        assert scale > 0, f"reference gradient of {k} is zero: the comparison would be vacuous"
        errs.append((got[k] - ref[k]).abs().max().item() / scale)
    return max(errs)


def flat(g: dict, keys=None) -> torch.Tensor:
    """The entries of ``g`` (in the order of ``keys``, default sorted) flattened into one vector."""
    return torch.cat([g[k].reshape(-1) for k in (sorted(g) if keys is None else keys)])


# -- rule states --------------------------------------------------------------------------------------------------
def signature(obj: Any, path: str = "state") -> list[tuple]:
    """The structure of a rule state: ``(path, shape, dtype, device)`` of every tensor and ``(path, 'Generator',
    device)`` of every generator, through tuples, NamedTuples and dicts with str keys (params-shaped
    accumulators); Python numbers and None are left out. Any other object fails: a rule state holds only these,
    which ``neuro.io`` saves and loads back."""
    if isinstance(obj, torch.Tensor):
        return [(path, tuple(obj.shape), obj.dtype, obj.device.type)]
    if isinstance(obj, torch.Generator):
        return [(path, "Generator", obj.device.type)]
    if obj is None or isinstance(obj, (bool, int, float)):
        return []
    if isinstance(obj, tuple):
        names = getattr(obj, "_fields", range(len(obj)))
        return [s for n, v in zip(names, obj) for s in signature(v, f"{path}.{n}")]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return [s for k in sorted(obj) for s in signature(obj[k], f"{path}[{k!r}]")]
    raise AssertionError(f"{path} is a {type(obj).__module__}.{type(obj).__qualname__}: a rule state holds only "
                         "tensors, numbers, None, generators, and tuples, NamedTuples and str-keyed dicts of them")


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj`` (through dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors(v)]
    return []


def bits(obj: Any, path: str = "state") -> list:
    """Every leaf of ``obj`` as ``(path, comparable value)``: a tensor's dtype, shape and bytes, a generator's
    state, a number or None; through tuples, lists and dicts. Two objects with equal ``bits`` are equal to the
    last bit."""
    if isinstance(obj, torch.Tensor):
        raw = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return [(path, obj.dtype, tuple(obj.shape), raw)]
    if isinstance(obj, torch.Generator):
        return [(path, obj.get_state().numpy().tobytes())]
    if isinstance(obj, dict):
        return [b for k in obj for b in bits(obj[k], f"{path}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        names = getattr(obj, "_fields", range(len(obj)))
        return [(path, type(obj).__name__, len(obj))] + [b for n, v in zip(names, obj) for b in bits(v, f"{path}.{n}")]
    assert obj is None or isinstance(obj, (bool, int, float)), f"{path} is a {type(obj).__name__}"
    return [(path, obj)]


def assert_resumes_exactly(rule: AbstractRule, params: dict, xs: torch.Tensor, ys: torch.Tensor, mask: torch.Tensor,
                           at: int, path, seed: int = 4) -> None:
    """The state saved after step ``at`` (``neuro.io.save_checkpoint``), loaded back and continued gives the
    estimates and the final state of the run that never stopped, to the last bit."""
    from neuro import io as nio

    def rest(state):
        outs = []
        for t in range(at, xs.shape[0]):
            outs.append(rule.step(params, state, xs[t], ys[t], mask[t]))
            state = outs[-1].state
        state, last = rule.finish(params, state)
        return [(o.grad, o.y, o.loss) for o in outs] + [last], state

    state = rule.init(params, xs.shape[1], seed)
    for t in range(at):
        state = rule.step(params, state, xs[t], ys[t], mask[t]).state
    nio.save_checkpoint(path, {"rule_state": state})
    plain = rest(state)
    loaded = nio.load_checkpoint(path)["rule_state"]
    assert loaded is not state
    assert bits(rest(loaded)) == bits(plain)


def save_state(obj: Any) -> bytes:
    """``obj`` as checkpoint bytes, through ``neuro.io.to_saveable`` and ``torch.save``."""
    buf = io.BytesIO()
    torch.save(to_saveable(obj), buf)
    return buf.getvalue()


def load_state(data: bytes) -> Any:
    """The inverse of :func:`save_state`: ``torch.load(weights_only=True)`` (no code runs) and ``from_saveable``."""
    return from_saveable(torch.load(io.BytesIO(data), weights_only=True))


# -- no autograd --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_autograd(what: str = "the code") -> Iterator[None]:
    """Every way to differentiate raises: no graph may be recorded, no autograd or torch.func call made."""

    def forbid(*_a, **_k):
        raise AssertionError(f"{what} called autograd")

    def pack(_t):
        raise AssertionError(f"{what} recorded an autograd graph")

    targets = [(torch.autograd, n) for n in ("grad", "backward")] + [(torch.Tensor, "backward")]
    targets += [(torch.func, n) for n in ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian",
                                          "linearize")]
    targets += [(torch.autograd.functional, n) for n in ("vjp", "jvp", "jacobian", "hessian", "vhp", "hvp")]
    targets += [(torch.autograd.forward_ad, "make_dual")]
    with contextlib.ExitStack() as stack:
        for obj, name in targets:
            stack.enter_context(mock.patch.object(obj, name, forbid))
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        yield


def hermetic_cache() -> str:
    """Point ``NEURO_CACHE`` at a new temporary folder (removed at exit) holding a stand-in for NeuroBench's
    tau = 17 Mackey-Glass series: a smooth quasi-periodic curve in the attractor's range, the right length."""
    import atexit
    import shutil
    import tempfile

    import numpy as np

    from neuro.yardsticks import mackey_glass as mg

    root = tempfile.mkdtemp(prefix="neuro-cache-")
    atexit.register(shutil.rmtree, root, True)
    os.environ["NEURO_CACHE"] = root
    t = np.arange(mg.POINTS)
    path = mg.cache_path(17)
    path.parent.mkdir(parents=True)
    np.save(path, 0.9 + 0.3 * np.sin(2 * np.pi * t / 40) + 0.1 * np.sin(2 * np.pi * t / 13))
    return root


#: tasks that read a dataset from a path: :func:`make_task` gives them tiny files of the published layout
DATA_TASKS = ("nmnist", "shd")


@functools.cache
def _data_dir() -> str:
    """A folder of tiny files in the SHD and N-MNIST layouts (written once per process, removed at exit),
    with about the real datasets' densities: SHD about 0.1 spikes per channel per 10 ms, N-MNIST a few
    thousand events per 300 ms recording."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np

    from neuro.tasks import events, shd

    root = Path(tempfile.mkdtemp(prefix="neuro-data-"))
    atexit.register(shutil.rmtree, root, True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        times, units = [], []
        for _ in range(n):
            k = int(rng.integers(5000, 9000))
            times.append(np.sort(rng.uniform(0.0, 1.0, k)))
            units.append(rng.integers(0, 700, k))
        shd.write_file(root / f"shd_{split}.h5", times, units, rng.integers(0, 20, n))
    for split in ("Train", "Test"):
        for digit in range(5):
            folder = root / "nmnist" / split / str(digit)
            folder.mkdir(parents=True)
            k = int(rng.integers(2000, 4000))
            events.write_nmnist(folder / "00001.bin", rng.integers(0, 34, k), rng.integers(0, 34, k),
                                rng.integers(0, 2, k), np.sort(rng.integers(0, 300_000, k)))
    return str(root)


def make_task(name: str, **settings: Any):
    """``neuro.tasks.make(name, **settings)``, a dataset task reading the tiny files of :func:`_data_dir`."""
    from neuro import tasks

    if name in DATA_TASKS and "path" not in settings:
        settings["path"] = os.path.join(_data_dir(), "nmnist" if name == "nmnist" else "")
    return tasks.make(name, **settings)
