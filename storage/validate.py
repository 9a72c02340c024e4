"""What each kind of JSON file the store reads must be, checked before anything trusts it.

Manifests, the marker, cache records, champion pointers and run records are data that whoever can write the
store controls. Each is read through `load_json` (a size bound, a nesting-depth bound checked without recursion
before ``json.loads`` sees it, UTF-8, JSON) and then the validator of its kind (shape, field types): a file
that is not what its kind must be is `Invalid`, one line naming the field, never a ``KeyError`` or
``RecursionError`` later. What a caller makes of Invalid depends on the kind (docs/security.md): a manifest's
artifact is missing (the stage runs again), a cache record is a miss, a champion pointer is replaced by the
next promotion, a run record is a one-line error.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import PurePosixPath
from typing import Any

from storage.layout import MODEL_NAME_PATTERN, STORE_NAME

MAX_JSON_BYTES = 64 << 20
"""The largest store JSON read at all. Run records and the manifests of train and evaluate list every partition's
files (about 250 bytes per file with s3:// URLs, some six files per partition in a run record): 64 MiB is some
40,000 partitions. The small kinds are read with their own, smaller limits (`SMALL_JSON_BYTES`)."""

SMALL_JSON_BYTES = 64 << 10  # a marker, a cache record, a champion pointer: a few hundred bytes each

MAX_DEPTH = 32  # the store writes at most 6 levels (a manifest's schema: {schema: {entries: {name: {shape: []}}}})

MANIFEST_VERSION = 1
FORMATS = frozenset({"parquet", "pt", "png", "json"})
RECORD_VERSION = 1
CHAMPION_VERSION = 2  # 2 (2026-12-10): ``model_name``, one champion per model; 1 (no name) is still read
CHAMPION_FIELDS: dict[str, type] = {  # version 1's, all in version 2
    "champion_version": int,
    "model": str,
    "model_sha256": str,
    "flow_run_id": str,
    "features": list,
    "target": str,
    "test_mse": float,
    "promoted_at": str,
}
MAX_REASON_CHARS = 500  # a registry pointer's ``reason``: who and why, one short line
MODEL_STAGE = "train"
MODEL_ENTRIES = ("weights", "bias", "features", "target")  # what predict and promote read (train writes more)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[\d+\])?")
# a JSON string (escapes included), or one bracket outside strings: what the depth scan steps through
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class Invalid(ValueError):
    """A store file that is not what its kind must be; ``str()`` says what, on one line."""


# --- bytes → JSON ---------------------------------------------------------------------------------


def load_json(content: bytes | str, what: str, *, limit: int = MAX_JSON_BYTES, depth: int = MAX_DEPTH) -> Any:
    """``content`` parsed as JSON; Invalid (naming ``what``) when it is larger than ``limit`` bytes, nested
    deeper than ``depth``, not UTF-8 or not JSON. The depth is checked by a scan of the brackets outside strings,
    before ``json.loads`` (which recurses) sees the text."""
    if len(content) > limit:
        raise Invalid(f"{what}: larger than {limit} bytes")
    if isinstance(content, bytes | bytearray):
        try:
            text = bytes(content).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"{what}: not UTF-8 text") from None
    else:
        text = content
    if text.count("[") + text.count("{") > depth and nesting(text) > depth:
        raise Invalid(f"{what}: nested deeper than {depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the scan; kept so no file can ever raise it here
        raise Invalid(f"{what}: nested too deeply") from None
    except ValueError as exc:
        raise Invalid(f"{what}: not JSON ({str(exc).splitlines()[0][:120]})") from None


def nesting(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside JSON strings in ``text``, found without recursion."""
    deepest = level = 0
    for token in _TOKEN.finditer(text):
        char = token.group()
        if char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


# --- field checks ---------------------------------------------------------------------------------


def _object(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Invalid(f"{what}: not a JSON object")
    return obj


def _field(obj: dict, name: str, kind: type | tuple[type, ...], what: str, required: bool = True) -> Any:
    """``obj[name]``, which must be of ``kind`` (a bool is never an int here); Invalid naming the field."""
    if name not in obj:
        if required:
            raise Invalid(f"{what}: field {name!r} is missing")
        return None
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise Invalid(f"{what}: field {name!r} is not a {names}")
    return value


def _sha256(value: Any, field: str, what: str) -> str:
    if not (isinstance(value, str) and _SHA256.fullmatch(value)):
        raise Invalid(f"{what}: field {field!r} is not a sha256 (64 lowercase hex digits)")
    return value


def _path(value: Any, field: str, what: str) -> str:
    if not (isinstance(value, str) and value and "\x00" not in value):
        raise Invalid(f"{what}: field {field!r} is not a path")
    return value


def _size(value: Any, field: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{what}: field {field!r} is not a size in bytes")
    return value


# --- the kinds ------------------------------------------------------------------------------------


def manifest(obj: Any, file: str | None = None, what: str = "manifest") -> dict[str, Any]:
    """A manifest (stagecore/declare.py `Outputs.record`, lifecycle/champion.py ``_manifest``): ``sha256``, ``size``
    and ``format`` always; every other field `Outputs.record` writes is checked when present. With ``file``, a
    manifest that names its file must name that one."""
    obj = _object(obj, what)
    _sha256(obj.get("sha256"), "sha256", what)
    _size(obj.get("size"), "size", what)
    if not isinstance(obj.get("format"), str) or obj["format"] not in FORMATS:
        raise Invalid(f"{what}: field 'format' is not one of {sorted(FORMATS)}")
    version = _field(obj, "manifest_version", int, what, required=False)
    if version is not None and version != MANIFEST_VERSION:
        raise Invalid(f"{what}: manifest_version {version}, expected {MANIFEST_VERSION}")
    name = _field(obj, "file", str, what, required=False)
    if file is not None and name is not None and name != file:
        raise Invalid(f"{what}: names file {name!r}, not {file!r}")
    for field in ("stage", "key", "created"):
        _field(obj, field, str, what, required=False)
    for field in ("schema", "params", "versions"):
        _field(obj, field, dict, what, required=False)
    inputs = _field(obj, "inputs", list, what, required=False) or []
    for i, entry in enumerate(inputs):
        label = f"inputs[{i}]"
        if not isinstance(entry, dict):
            raise Invalid(f"{what}: field {label!r} is not an object")
        _path(entry.get("path"), f"{label}.path", what)
        _sha256(entry.get("sha256"), f"{label}.sha256", what)
        _field(entry, "name", str, f"{what} {label}", required=False)
    entries = (obj.get("schema") or {}).get("entries")
    if entries is not None and not (isinstance(entries, dict) and all(isinstance(e, dict) for e in entries.values())):
        raise Invalid(f"{what}: field 'schema.entries' is not an object of objects")
    if obj["format"] == "parquet":  # its rows and column names are read from here (split's offsets, the history)
        schema = _field(obj, "schema", dict, what)
        rows = _field(schema, "rows", int, f"{what} schema")
        columns = _field(schema, "columns", list, f"{what} schema")
        if rows < 0 or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in columns):
            raise Invalid(f"{what}: field 'schema' does not give a row count and named columns")
    return obj


def model_manifest(obj: Any, what: str = "manifest") -> dict[str, Any]:
    """The manifest of a model artifact: a ``.pt`` written by the train stage, with the entries a model has
    (`MODEL_ENTRIES`); Invalid saying what the file is instead."""
    obj = manifest(obj, what=what)
    stage, fmt = obj.get("stage"), obj["format"]
    if fmt != "pt" or stage != MODEL_STAGE:
        made = f"a {fmt} file" + (f" of stage {stage}" if isinstance(stage, str) else "")
        raise Invalid(f"{what}: not a model ({made}; a model is the model.pt of stage {MODEL_STAGE})")
    entries = (obj.get("schema") or {}).get("entries") or {}
    missing = [name for name in MODEL_ENTRIES if name not in entries]
    if missing:
        raise Invalid(f"{what}: not a model (no {', '.join(missing)} entry)")
    if "shape" not in entries["weights"]:
        raise Invalid(f"{what}: not a model (its weights are not a tensor)")
    return obj


def marker(obj: Any) -> dict[str, Any]:
    """The store's marker (storage/root.py ``_mark``): an object naming the store; other fields tolerated."""
    obj = _object(obj, "marker")
    if obj.get("store") != STORE_NAME:
        raise Invalid(f"marker: field 'store' is not {STORE_NAME!r}")
    _field(obj, "version", int, "marker", required=False)
    _field(obj, "created", str, "marker", required=False)
    return obj


def cache_record(obj: Any, stage: str, key: str, names: tuple[str, ...] = ()) -> dict[str, str]:
    """A cache record's outputs (name → path relative to the store): exactly the shape stagecore/cache.py
    writes, for this ``stage`` and ``key``, each path a relative path inside the stage's folder; with
    ``names`` (what the stage declares it returns), exactly those outputs."""
    expected = {"record_version": RECORD_VERSION, "stage": stage, "key": key}
    if not isinstance(obj, dict) or set(obj) != {*expected, "outputs"}:
        raise Invalid("record unreadable (not a cache record)")
    if any(type(obj[field]) is not type(value) or obj[field] != value for field, value in expected.items()):
        raise Invalid("record unreadable (written for another stage, key or version)")
    files = obj["outputs"]
    if not isinstance(files, dict) or not files:
        raise Invalid("record unreadable (lists no outputs)")
    outputs = {}
    for name, relative in files.items():
        if not (isinstance(name, str) and _OUTPUT_NAME.fullmatch(name) and isinstance(relative, str)):
            raise Invalid("record unreadable (an output entry is not a name and a path)")
        parts = PurePosixPath(relative)
        if "\x00" in relative or parts.is_absolute() or ".." in parts.parts or parts.parts[:1] != (stage,):
            raise Invalid(f"record points outside the stage's folder ({relative!r})")
        outputs[name] = relative
    if names and sorted(outputs) != sorted(names):
        raise Invalid(f"record unreadable (lists outputs {sorted(outputs)}, the stage writes {sorted(names)})")
    return outputs


def run_record(obj: Any, what: str = "run record") -> dict[str, Any]:
    """A run record (stagecore/runs.py `write_run_record`): run id, time, parameters, per stage its key,
    whether it was cached and its artifacts ``{name: {path, sha256, size}}``, and the versions."""
    obj = _object(obj, what)
    _field(obj, "run_id", str, what)
    _field(obj, "finished", str, what)
    _field(obj, "params", dict, what)
    _field(obj, "versions", dict, what, required=False)
    stages = _field(obj, "stages", dict, what)
    for name, stage in stages.items():
        label = f"stages.{name}"
        if not isinstance(stage, dict):
            raise Invalid(f"{what}: field {label!r} is not an object")
        _field(stage, "key", (str, type(None)), f"{what} {label}", required=False)
        _field(stage, "cached", bool, f"{what} {label}", required=False)
        artifacts = _field(stage, "artifacts", dict, f"{what} {label}")
        for artifact, entry in artifacts.items():
            where = f"{label}.artifacts.{artifact}"
            if not isinstance(entry, dict):
                raise Invalid(f"{what}: field {where!r} is not an object")
            _path(entry.get("path"), f"{where}.path", what)
            if "sha256" in entry:
                _sha256(entry["sha256"], f"{where}.sha256", what)
            if "size" in entry:
                _size(entry["size"], f"{where}.size", what)
    return obj


def champion_pointer(obj: Any, what: str = "champion pointer") -> dict[str, Any]:
    """A champion pointer (lifecycle/champion.py ``_pointer``): exactly its version's fields, each of its type (an
    integer test MSE is made a float), ``model`` a relative path, ``model_sha256`` a sha256, ``model_name`` null
    or a model's name (version 2; a version 1 pointer, which has none, reads as null); a version 2 pointer the
    registry wrote (flows/registry.py) also has ``reason``, a short text."""
    version = obj.get("champion_version") if isinstance(obj, dict) else None
    fields = set(CHAMPION_FIELDS) | ({"model_name"} if version == CHAMPION_VERSION else set())
    if version == CHAMPION_VERSION and isinstance(obj, dict) and "reason" in obj:
        fields.add("reason")  # written by the registry (a rollback, an alias set): who and why
    if not isinstance(obj, dict) or set(obj) != fields:
        raise Invalid(f"{what}: not a champion pointer (fields {sorted(fields)} expected)")
    reason = obj.get("reason")
    if "reason" in obj and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise Invalid(f"{what}: field reason is not a text of at most {MAX_REASON_CHARS} characters")
    body = {"model_name": None, **obj}
    for name, kind in CHAMPION_FIELDS.items():
        value = body[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            body[name] = value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Invalid(f"{what}: field {name} is not a {kind.__name__}")
    if body["champion_version"] not in (1, CHAMPION_VERSION):
        raise Invalid(f"{what}: champion_version {body['champion_version']}, expected {CHAMPION_VERSION}")
    if not all(isinstance(f, str) for f in body["features"]):
        raise Invalid(f"{what}: features are not column names")
    name = body["model_name"]
    if name is not None and (not isinstance(name, str) or not re.fullmatch(MODEL_NAME_PATTERN, name)):
        raise Invalid(f"{what}: field model_name is not a model's name")
    _path(body["model"], "model", what)
    _sha256(body["model_sha256"], "model_sha256", what)
    return body


HISTORY_REQUIRED = ("time", "flow_run_id", "data_sha256", "rows", "params", "train_mse", "test_mse", "promoted")


def history_row(row: Any, what: str = "history row") -> dict[str, Any]:
    """One row of a history file (lifecycle/history.py ``SCHEMA``, as ``to_pylist`` gives it): no null where a run
    always has a value, ``time`` a timestamp, ``params`` a JSON object, the numbers numbers."""
    row = _object(row, what)
    for name in HISTORY_REQUIRED:
        if row.get(name) is None:
            raise Invalid(f"{what}: {name} is null")
    if not isinstance(row["time"], dt.datetime):
        raise Invalid(f"{what}: time is not a timestamp")
    if not isinstance(row["params"], str) or not isinstance(
        load_json(row["params"], f"{what}: params", limit=SMALL_JSON_BYTES), dict
    ):
        raise Invalid(f"{what}: params is not a JSON object")
    for name in ("train_mse", "test_mse", "train_r2", "test_r2", "optimality_gap"):
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Invalid(f"{what}: {name} is not a number")
    if isinstance(row["rows"], bool) or not isinstance(row["rows"], int) or row["rows"] < 0:
        raise Invalid(f"{what}: rows is not a count")
    if not isinstance(row["promoted"], bool):
        raise Invalid(f"{what}: promoted is not true or false")
    return row


MAX_RECORD_BYTES = 64 << 10  # a record lists a few file names; anything larger is not one of ours


def parse_record(content: bytes, stage: str, key: str, names: tuple[str, ...] = ()) -> dict[str, str]:
    """A record's outputs (name → path relative to the store): `storage.validate`'s bounds (size, depth,
    JSON), then `storage.cache_record` (exactly our shape, each path a relative path inside this
    stage's folder). Invalid (a ValueError) when it is not one: a cache miss."""
    try:
        record = load_json(content, "record", limit=MAX_RECORD_BYTES)
    except Invalid as exc:
        raise Invalid(f"record unreadable ({str(exc).removeprefix('record: ')})") from None
    return cache_record(record, stage, key, names)
