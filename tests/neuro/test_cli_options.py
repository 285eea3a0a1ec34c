"""``--model-opt``/``--task-opt``/``--rule-opt`` values: numbers, booleans, none, strings and comma tuples as
before, JSON objects and lists (a nested option such as TD(lambda)'s ``rule_options``), and bad JSON refused in
one line naming the flag and the value."""

from __future__ import annotations

import json

import pytest

from neuro.cli import _options, main


@pytest.mark.parametrize("text,want", [
    ("3", 3), ("0.5", 0.5), ("1e-4", 1e-4), ("true", True), ("False", False), ("none", None), ("tbptt", "tbptt"),
    ("24,36", (24, 36)), ('{"k": 2}', {"k": 2}), ('{"k": 2, "fast": true, "w": [1, 2.5]}', {"k": 2, "fast": True,
                                                                                             "w": (1, 2.5)}),
    ("[1, [2, 3]]", (1, (2, 3))), ("{}", {}),
])
def test_option_values_parse(text, want):
    got = _options("--rule-opt", [f"x={text}"])["x"]
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text", ['{"k": }', "{k: 2}", "[1, 2"])
def test_bad_json_is_refused_naming_the_flag_and_the_value(text):
    with pytest.raises(ValueError, match=r"^--rule-opt rule_options=.* is invalid: .* is not valid JSON \(.* at "
                                         r"character \d+\)$"):
        _options("--rule-opt", [f"rule_options={text}"])


def test_train_takes_a_nested_rule_option(tmp_path, capsys):
    args = ["train", "--model", "lstm", "--task", "trace-patterning", "--task-opt", "isi=3,5", "--task-opt",
            "iti=4,8", "--rule", "td-lambda", "--rule-opt", "rule=tbptt", "--rule-opt", 'rule_options={"k": 2}',
            "--rule-opt", "cumulant_input=6", "--hidden", "3", "--steps", "20", "--chunk", "10", "--no-progress",
            "--engine", "torch", "--run-dir", str(tmp_path)]
    assert main(args) == 0
    rule = json.loads((tmp_path / "config.json").read_text())["rule"]
    assert rule["fields"]["rule_options"] == [["k", 2]], rule
    assert main([a.replace('{"k": 2}', '{"k": 2') for a in args[:-2]]) == 2
    err = capsys.readouterr().err
    assert "rule_options" in err and "not valid JSON" in err and len(err.strip().splitlines()) == 1
