"""Parameters are declared once (flows/params.py) and everything else derives from there."""

from __future__ import annotations

import re
import typing

import pytest
from prefect.utilities.callables import get_call_parameters, parameter_schema

from flows.params import PRESETS, Params
from flows.train import build_parser, linear_regression, main
from linreg import config as train
from storage.errors import InputError

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


def test_each_preset_driven_field_says_what_every_preset_gives_it():
    schema = parameter_schema(linear_regression.fn).model_dump()["properties"]
    assert schema["epochs"]["description"] == "most epochs to train; default preset: 1000, seed preset: 1000"
    for knob in PRESETS["default"]:
        description = Params.model_fields[knob].description
        for name, knobs in PRESETS.items():  # 1e-7 reads 1e-07, 0.0 reads 0: as --help and the form show them
            shown = f"{knobs[knob]:g}" if isinstance(knobs[knob], float) else str(knobs[knob])
            assert f"{name} preset: {shown}" in description, (knob, description)
        assert schema[knob]["description"] == description


def test_the_preset_says_what_each_recipe_does_in_words():
    description = Params.model_fields["preset"].description
    assert "default reaches the least-squares optimum: whitened features (scaling auto), lr auto, early stop" in (
        description
    )
    assert "seed reproduces the original tutorial: raw features (scaling none), lr 1e-05, no early stop" in (
        description
    )
    assert "PRESETS" not in description  # a name from the code means nothing in the form


@pytest.mark.parametrize(("given", "parsed"), [("auto", "auto"), ("0.01", 0.01), (0.01, 0.01), (1, 1.0)])
def test_lr_takes_auto_or_a_positive_number_as_text_or_number(given, parsed):
    assert Params.parse(lr=given).lr == parsed
    assert Params.parse(lr=given).training().lr == parsed


@pytest.mark.parametrize("given", ["fast", "", "0", "-0.1", "1e-3x"])
def test_lr_refuses_anything_else_in_one_line(given):
    with pytest.raises(InputError, match=r"^--lr: ") as refused:
        Params.parse(lr=given)
    assert "\n" not in str(refused.value)


def test_the_run_form_shows_each_unset_field_as_one_plain_input_with_no_default():
    """Prefect builds the deployment's form from the flow's signature: a None default must not reach it as
    ``"default": null`` (the server refuses the null an untouched input sends) nor as ``X | None`` (a type switch
    on "Property is type None")."""
    form = parameter_schema(linear_regression).model_dump()
    unset = {name for name, field in Params.model_fields.items() if field.default is None}
    assert unset == {
        "data",
        "features",
        "epochs",
        "lr",
        "tol",
        "scaling",
        "init",
        "dask_address",
        "artifacts_dir",
        "model_name",
    }
    for name in unset:
        prop = form["properties"][name]
        assert "default" not in prop and "anyOf" not in prop and isinstance(prop["type"], str), (name, prop)
        assert prop["description"] == Params.model_fields[name].description
    assert form["required"] == []
    kinds = {name: form["properties"][name]["type"] for name in unset}
    assert kinds == dict.fromkeys(unset, "string") | {"features": "array", "epochs": "integer", "tol": "number"}
    assert form["properties"]["scaling"]["enum"] == Params.choices("scaling")
    assert form["properties"]["init"]["enum"] == Params.choices("init")
    assert form["properties"]["epochs"]["exclusiveMinimum"] == 0 and form["properties"]["tol"]["minimum"] == 0
    assert (
        form["properties"]["model_name"]["pattern"]
        == Params.model_json_schema()["properties"]["model_name"]["anyOf"][0]["pattern"]
    )  # the form checks a name as the CLI does


@pytest.mark.parametrize(
    ("typed", "accepted"),
    [
        ("auto", True),
        ("0.01", True),
        ("1e-5", True),
        (".5", True),
        ("2.", True),
        ("-0.1", False),
        ("fast", False),
        ("", False),
    ],
)
def test_lr_in_the_form_is_text_that_reads_auto_or_a_number(typed, accepted):
    lr = parameter_schema(linear_regression).model_dump()["properties"]["lr"]
    assert lr["type"] == "string"
    assert bool(re.fullmatch(lr["pattern"], typed)) is accepted
    if accepted:
        assert Params.parse(lr=typed).training().lr == (typed if typed == "auto" else float(typed))


def test_a_call_binds_none_for_an_unset_field_never_a_sentinel():
    """The form's signature is the flow's; a call binds the function's own, whose unset defaults are None."""
    bound = get_call_parameters(linear_regression.fn, (), {})
    assert bound == Params().model_dump()
