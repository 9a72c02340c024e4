"""Parameters are declared once (flows/params.py) and everything else derives from there."""

from __future__ import annotations

import typing

import pytest
from prefect.utilities.callables import parameter_schema

from flows.params import PRESETS, Params
from flows.train import build_parser, linear_regression, main
from linreg import config as train

pytestmark = pytest.mark.no_server


def test_the_deployment_form_has_a_description_for_every_parameter_and_a_dropdown_for_every_choice():
    schema = parameter_schema(linear_regression.fn).model_dump()["properties"]
    assert list(schema) == list(Params.model_fields)
    for name, prop in schema.items():
        assert prop.get("description") == Params.model_fields[name].description, name
        choices = Params.choices(name)
        if choices:
            options = prop.get("enum") or [v for alt in prop.get("anyOf", []) for v in alt.get("enum", [])]
            assert options, f"{name}: no dropdown in the form"
            assert options == choices, name
    for name in ("preset", "method", "device", "engine", "init", "task_runner"):
        assert Params.choices(name), name
    assert schema["test_size"]["exclusiveMinimum"] == 0 and schema["test_size"]["exclusiveMaximum"] == 1


def test_one_set_of_choices_for_params_cli_and_training_config():
    assert Params.choices("preset") == list(PRESETS)
    assert Params.choices("method") == list(typing.get_args(train.Method))
    assert Params.choices("init") == list(typing.get_args(train.Init))
    actions = {a.dest: a for a in build_parser()._actions}
    for name in Params.model_fields:
        assert name in actions, name
        assert actions[name].choices == Params.choices(name), name


def test_the_flow_rejects_a_value_outside_its_choices_before_running():
    with pytest.raises(Exception, match="Input should be 'scratch' or 'builtins'"):
        linear_regression.validate_parameters({"method": "sgd"})


def test_cross_field_rules_are_checked_before_any_stage_runs(tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    assert main(["--engine", "stats", "--method", "builtins", "--artifacts-dir", str(artifacts)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --engine stats trains the scratch model only; pass --method scratch or --engine rows"
    assert not artifacts.exists()  # refused before the store was even created
