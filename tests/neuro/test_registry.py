"""The registries of models, rules, tasks and backends: one :class:`neuro.registry.Registry` behind each, the
same module-level functions and messages, and exactly the exported classes registered.

The sets of classes are found independently of the registries: by walking each package's public modules
for concrete classes with a ``name``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import models
import neuro
from neuro import backends, rules, tasks
from neuro.contract import AbstractNetwork
from neuro.registry import Registry
from neuro.rules.base import AbstractRule
from neuro.tasks.base import AbstractTask

# rules with a name that are deliberately not registered: the inner rule of td-lambda's rule="tbptt"
INNER_RULES = {"sliding-tbptt"}


def _defined_in(package, base: type) -> dict[str, type]:
    """name -> class for the concrete subclasses of ``base`` that set a name, in ``package``'s public modules."""
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__
                    and not inspect.isabstract(obj) and vars(obj).get("name")):  # its own name, not a base's
                found[obj.name] = obj
    return found


def _exported(package, base: type) -> dict[str, type]:
    """name -> class for the concrete subclasses of ``base`` with a name in ``package.__all__``."""
    objs = [getattr(package, n) for n in package.__all__]
    return {o.name: o for o in objs if inspect.isclass(o) and issubclass(o, base) and not inspect.isabstract(o)
            and getattr(o, "name", "")}


@pytest.mark.parametrize("package,base,skip", [(models, AbstractNetwork, set()), (rules, AbstractRule, INNER_RULES),
                                               (tasks, AbstractTask, set())], ids=["models", "rules", "tasks"])
def test_available_is_exactly_the_exported_classes_and_every_class_defined(package, base, skip):
    exported = _exported(package, base)
    assert set(package.available()) == set(exported)
    assert all(package.get(name) is cls for name, cls in exported.items())
    defined = {n: c for n, c in _defined_in(package, base).items() if n not in skip}
    assert defined == exported
    assert all(getattr(package, c.__name__) is c for c in exported.values())


def test_rules_are_all_attributes_at_import_and_the_node_rule_base_is_exported():
    for name in ("BPTT", "EProp", "RFLO", "OTTT", "SLTT", "SLTTK", "ThreeFactor", "WeightPerturbation",
                 "NodePerturbation", "ANP", "ANPTime"):
        assert name in rules.__all__ and inspect.isclass(getattr(rules, name))
    assert issubclass(rules.ANP, rules.AbstractNodeRule) and "AbstractNodeRule" in rules.__all__
    assert "LIFLoihi" in models.__all__ and models.get("lif-loihi") is models.LIFLoihi


@pytest.mark.parametrize("package", [models, rules, tasks, backends], ids=lambda p: p.__name__)
def test_each_registry_module_offers_the_same_functions(package):
    names = {"available", "get", "register"} | ({"make"} if package is not backends else set())
    assert names <= set(package.__all__)
    assert all(callable(getattr(package, n)) for n in names)
    assert package.available() == sorted(package.available()) and package.available()


@pytest.mark.parametrize("package,kind", [(models, "model"), (rules, "rule"), (tasks, "task")])
def test_an_unknown_name_is_named_with_every_valid_one(package, kind):
    with pytest.raises(ValueError, match=re.escape(f"{kind} 'nope' is unknown: valid choices are "
                                                   f"{', '.join(package.available())}")):
        package.get("nope")


def test_an_unknown_backend_is_named_as_the_argument():
    with pytest.raises(ValueError, match=re.escape(f"backend='nope' is invalid: valid choices are "
                                                   f"{', '.join(map(repr, backends.available()))}")):
        backends.get("nope")
    assert backends.get("torch") is backends._simulate_torch


def test_rule_make_refuses_an_unknown_option_and_lists_the_fields_but_net():
    net = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    fields = sorted(f.name for f in dataclasses.fields(rules.BPTT) if f.name != "net")
    with pytest.raises(ValueError, match=re.escape(f"rule 'bptt' has no option bogus: valid options are {', '.join(fields)}")):
        rules.make("bptt", net, bogus=1)
    rule = rules.make("rflo", net, loss="mse")
    assert isinstance(rule, rules.RFLO) and rule.net is net and rule.loss == "mse"


# -- the Registry itself, on a class written here ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Thing:
    first: int
    size: int = 1
    colour: str = "red"
    derived: int = dataclasses.field(default=0, init=False)

    name = "thing"


def test_registry_registers_as_a_decorator_gets_and_makes():
    reg: Registry[type] = Registry("widget")
    assert reg.register(_Thing) is _Thing  # returns the class: usable as a decorator
    assert reg.available() == ["thing"] and "thing" in reg and reg.get("thing") is _Thing
    assert reg.make("thing", 3, size=2) == _Thing(3, size=2)
    assert reg.options("thing") == ["colour", "first", "size"]  # derived is not an option (init=False)
    with pytest.raises(ValueError, match=re.escape("widget 'thing' has no option derived, first: valid options are colour, size")):
        reg.make("thing", 3, first=4, derived=1)
    with pytest.raises(ValueError, match=re.escape("widget 'other' is unknown: valid choices are thing")):
        reg.get("other")


def test_registry_needs_a_name_and_imports_a_path_on_first_use():
    reg: Registry = Registry("widget")
    with pytest.raises(ValueError, match="object has no registry name"):
        reg.register(object)
    reg.register("neuro.registry:Registry", name="path")
    assert reg.entries["path"] == "neuro.registry:Registry"
    assert reg.get("path") is Registry and reg.entries["path"] is Registry


def test_tasks_make_lists_none_for_a_task_without_options():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        name = "bare"

    reg: Registry = Registry("task")
    reg.register(Bare)
    with pytest.raises(ValueError, match=re.escape("task 'bare' has no option x: valid options are (none)")):
        reg.make("bare", x=1)


def test_a_registered_backend_runs_through_simulate():
    net = models.make("rate", n_in=2, n_hidden=3, n_out=1)
    params = net.init_params(seed=0)
    calls = []
    backends.register("test-echo", lambda n, p, xs: calls.append(xs.shape) or neuro.Trace(y=xs))
    try:
        assert "test-echo" in backends.available()
        neuro.simulate(net, params, torch.zeros(4, 2), backend="test-echo")
    finally:
        del backends._BACKENDS.entries["test-echo"]
    assert calls == [(4, 1, 2)]
