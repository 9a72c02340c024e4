"""storage.validate: every kind of store JSON checked before it is trusted. Pure: no Prefect server used."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from storage import validate
from storage.root import STORE_NAME
from storage.validate import Invalid

pytestmark = pytest.mark.no_server

SHA = "a" * 64
MODEL_REST = {"bias": {"type": "float"}, "features": {"type": "list"}, "target": {"type": "str"}}


def good_manifest(**changes):
    manifest = {
        "manifest_version": 1,
        "file": "model.pt",
        "sha256": SHA,
        "size": 10,
        "format": "pt",
        "schema": {"entries": {"weights": {"shape": [2, 1], "dtype": "float32"}, **MODEL_REST}},
        "stage": "train",
        "key": "k" * 16,
        "params": {"epochs": 3},
        "inputs": [{"name": "tensors_paths[0]", "path": "/s/tensorize/k/tensors.pt", "sha256": SHA}],
        "versions": {"torch": "2.13.0"},
        "created": "2026-01-01T00:00:00+00:00",
    }
    manifest.update(changes)
    return manifest


# --- load_json ------------------------------------------------------------------------------------


def test_load_json_parses_what_the_store_writes():
    assert validate.load_json(b'{"a": [1, {"b": "[[[["}]}', "f") == {"a": [1, {"b": "[[[["}]}
    assert validate.load_json('"x"', "f") == "x"


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_invalid_before_json_recurses(opener):
    closer = "]" if opener == "[" else "}"
    deep = opener * 100_000 + "1" + closer * 100_000  # json.loads would raise RecursionError
    with pytest.raises(Invalid, match=r"^f\.json: nested deeper than 32 levels$"):
        validate.load_json(deep, "f.json")
    shallow = opener * 32 + "1" + closer * 32
    validate.load_json(shallow, "f.json")


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"s": "[" * 1000 + '\\"{' * 50})
    assert validate.load_json(text, "f") == {"s": "[" * 1000 + '\\"{' * 50}
    assert validate.nesting(text) == 1


def test_unterminated_deep_input_is_invalid_not_a_recursion_error():
    with pytest.raises(Invalid):
        validate.load_json("[" * 5000, "f")
    with pytest.raises(Invalid):
        validate.load_json('"' + "[" * 5000, "f")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe", "not UTF-8"), (b"{not json", "not JSON"), (b"", "not JSON"), (b"x" * 11, "larger than 10 bytes")],
)
def test_load_json_refuses_what_is_not_json(content, message):
    with pytest.raises(Invalid, match=message):
        validate.load_json(content, "f", limit=10)


# --- manifests ------------------------------------------------------------------------------------


def test_a_written_manifest_passes_and_a_minimal_one_too():
    assert validate.manifest(good_manifest(), file="model.pt")["sha256"] == SHA
    assert validate.manifest({"sha256": SHA, "size": 0, "format": "json"})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sha256": "ab"}, "sha256"),
        ({"sha256": SHA.upper()}, "sha256"),
        ({"size": -1}, "size"),
        ({"size": True}, "size"),
        ({"size": "10"}, "size"),
        ({"format": "pickle"}, "format"),
        ({"format": ["pt"]}, "format"),
        ({"stage": 3}, "stage"),
        ({"key": None}, "key"),
        ({"params": []}, "params"),
        ({"inputs": "x"}, "inputs"),
        ({"inputs": [{"path": "/a", "sha256": "b"}]}, "inputs[0].sha256"),
        ({"inputs": [{"path": "", "sha256": SHA}]}, "inputs[0].path"),
        ({"inputs": [3]}, "inputs[0]"),
        ({"schema": {"entries": [1]}}, "schema.entries"),
        ({"manifest_version": 2}, "manifest_version"),
        ({"file": "other.pt"}, "other.pt"),
    ],
)
def test_a_malformed_manifest_is_invalid_naming_the_field(changes, field):
    with pytest.raises(Invalid, match=field.replace("[", r"\[").replace("]", r"\]")) as info:
        validate.manifest(good_manifest(**changes), file="model.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "schema", [None, {}, {"rows": "3", "columns": []}, {"rows": -1, "columns": []}, {"rows": 3, "columns": [1]}]
)
def test_a_parquet_manifest_gives_its_row_count_and_column_names(schema):
    """split's offsets and the history read them from the manifest: a manifest without them is invalid (the
    stage runs again), never a KeyError (found by tests/test_store_validation.py's fuzzing)."""
    changes = {"format": "parquet"} | ({} if schema is None else {"schema": schema})
    manifest = good_manifest(**changes)
    if schema is None:
        manifest.pop("schema", None)
    with pytest.raises(Invalid, match="schema"):
        validate.manifest(manifest)
    assert validate.manifest(good_manifest(format="parquet", schema={"rows": 0, "columns": [{"name": "a"}]}))


def test_only_a_models_manifest_is_a_model():
    assert validate.model_manifest(good_manifest())
    tensors = good_manifest(stage="tensorize", schema={"entries": {"x_train": {"shape": [1], "dtype": "float32"}}})
    with pytest.raises(Invalid, match="not a model \\(a pt file of stage tensorize"):
        validate.model_manifest(tensors)
    with pytest.raises(Invalid, match="not a model \\(a parquet file"):
        validate.model_manifest(good_manifest(format="parquet", schema={"rows": 3, "columns": [{"name": "x"}]}))
    with pytest.raises(Invalid, match="no bias, features, target entry"):
        validate.model_manifest(good_manifest(schema={"entries": {"weights": {"shape": [1], "dtype": "float32"}}}))
    with pytest.raises(Invalid, match="weights are not a tensor"):
        validate.model_manifest(good_manifest(schema={"entries": {"weights": {"type": "list"}, **MODEL_REST}}))


# --- marker, cache record, run record, champion pointer, history row ------------------------------


def test_marker_names_the_store_and_tolerates_extra_fields():
    assert validate.marker({"store": STORE_NAME, "version": 1, "created": "t", "store_id": "abc"})
    for bad in ({"store": "other"}, [], {"store": STORE_NAME, "version": "1"}, {"store": STORE_NAME, "created": 1}):
        with pytest.raises(Invalid, match="marker"):
            validate.marker(bad)


def record(**changes):
    body = {"record_version": 1, "stage": "train", "key": "k", "outputs": {"model": "train/k/model.pt"}}
    body.update(changes)
    return body


def test_cache_record_outputs_and_its_refusals():
    assert validate.cache_record(record(), "train", "k") == {"model": "train/k/model.pt"}
    bad = [
        record(extra=1),
        record(stage="plot"),
        record(record_version=True),
        record(outputs={}),
        record(outputs={"model": 3}),
        record(outputs={"../x": "train/k/model.pt"}),
        record(outputs={"model": "../train/k/model.pt"}),
        record(outputs={"model": "plot/k/model.pt"}),
        record(outputs={"model": "/train/k/model.pt"}),
    ]
    for body in bad:
        with pytest.raises(Invalid, match="record"):
            validate.cache_record(body, "train", "k")


def run_record(**changes):
    body = {
        "run_id": "r",
        "finished": "t",
        "params": {},
        "stages": {
            "train": {"key": "k", "cached": False, "artifacts": {"model": {"path": "/m", "sha256": SHA, "size": 1}}}
        },
        "versions": {},
    }
    body.update(changes)
    return body


def test_run_record_shape():
    assert validate.run_record(run_record())
    assert validate.run_record(run_record(stages={"promote": {"key": None, "cached": False, "artifacts": {}}}))
    for changes, field in [
        ({"run_id": 1}, "run_id"),
        ({"stages": []}, "stages"),
        ({"stages": {"a": 1}}, "stages.a"),
        ({"stages": {"a": {"artifacts": {"x": {}}}}}, "stages.a.artifacts.x.path"),
        ({"stages": {"a": {"artifacts": {"x": {"path": "/p", "size": -2}}}}}, "size"),
        ({"params": None}, "params"),
    ]:
        with pytest.raises(Invalid, match=field):
            validate.run_record(run_record(**changes))


def pointer(**changes):
    body = {
        "champion_version": 1,
        "model": "train/k/model.pt",
        "model_sha256": SHA,
        "flow_run_id": "r",
        "features": ["a"],
        "target": "y",
        "test_mse": 1,
        "promoted_at": "t",
    }
    body.update(changes)
    return body


def test_champion_pointer_shape():
    assert validate.champion_pointer(pointer())["test_mse"] == 1.0
    assert validate.champion_pointer(pointer())["model_name"] is None  # version 1: no name, read as null
    assert validate.champion_pointer(pointer(champion_version=2, model_name="ads.v2"))["model_name"] == "ads.v2"
    assert validate.champion_pointer(pointer(champion_version=2, model_name=None))["model_name"] is None
    for changes, field in [
        ({"test_mse": "1"}, "test_mse"),
        ({"champion_version": 2}, "model_name"),  # version 2 has a name, null or not
        ({"model_name": "a"}, "not a champion pointer"),  # version 1 has none
        ({"champion_version": 2, "model_name": "../x"}, "model_name"),
        ({"champion_version": 2, "model_name": 1}, "model_name"),
        ({"champion_version": 3, "model_name": "a"}, "not a champion pointer"),
        ({"champion_version": True}, "champion_version"),
        ({"features": [1]}, "features"),
        ({"model": ""}, "model"),
        ({"model_sha256": "x"}, "model_sha256"),
        ({"extra": 1}, "not a champion pointer"),
    ]:
        with pytest.raises(Invalid, match=field):
            validate.champion_pointer(pointer(**changes))


def history(**changes):
    row = {
        "time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "flow_run_id": "r",
        "data_sha256": SHA,
        "rows": 3,
        "params": "{}",
        "train_mse": 1.0,
        "test_mse": 1.0,
        "train_r2": None,
        "test_r2": 0.5,
        "optimality_gap": None,
        "promoted": True,
        "model": "train/k/model.pt",
    }
    row.update(changes)
    return row


def test_history_row_shape():
    assert validate.history_row(history())
    for changes, field in [
        ({"time": None}, "time is null"),
        ({"params": "{not json"}, "params"),
        ({"params": "[]"}, "params is not a JSON object"),
        ({"params": "[" * 5000}, "params"),
        ({"rows": -1}, "rows"),
        ({"test_mse": None}, "test_mse"),
        ({"promoted": 1}, "promoted"),
    ]:
        with pytest.raises(Invalid, match=field):
            validate.history_row(history(**changes))
