"""Every JSON file the store reads is checked before it is trusted (storage/validate.py, docs/security.md).

One real run makes a store (module-scoped); each test (and each property example) plants a malformed file of
one kind into a fresh copy of it and checks that the next run, predict, history or lineage ends in success or
one ``error:`` line, never a traceback and never a store that stays stuck.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stagecore as core
import storage
from conftest import ADVERTISING
from flows import history as history_cli
from flows import lineage
from flows import predict as predict_cli
from flows.train import STAGES, linear_regression
from flows.train import main as train_main
from lifecycle import champion
from lifecycle.history import SCHEMA
from storage.atomic import write_json

DEEP = "[" * 5000 + "]" * 5000  # json.loads raises RecursionError on this


@pytest.fixture(scope="module")
def trained() -> Path:
    """One store made by one real run; tests work on copies of it (`store`)."""
    root = Path(tempfile.mkdtemp(prefix="linreg-validate-")) / "store"
    linear_regression(artifacts_dir=str(root))
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


def copy_of(trained: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="linreg-validate-copy-")) / "store"
    shutil.copytree(trained, target, symlinks=True)
    return target


@pytest.fixture
def store(trained: Path) -> Path:
    root = copy_of(trained)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


def artifact(root: Path, stage: str, name: str) -> Path:
    [path] = sorted((root / stage).glob(f"*/{name}"))
    return path


def record_of(root: Path, stage: str) -> Path:
    [path] = sorted((root / storage.CACHE_DIR / stage).glob("*.json"))
    return path


def run(root: Path, *args: str) -> dict:
    return linear_regression(artifacts_dir=str(root), **dict(zip(args[::2], args[1::2], strict=True)))


def point_champion_at(root: Path, target: Path) -> None:
    """Rewrite the pointer (and its manifest) to name ``target``, as a writer of the store could."""
    pointer = Path(champion.pointer_path(root))
    body = json.loads(pointer.read_text())
    body.update(model=target.relative_to(root).as_posix(), model_sha256=storage.sha256_file(target))
    pointer.write_text(json.dumps(body))
    manifest = json.loads(core.manifest_path(pointer).read_text())
    manifest.update(sha256=storage.sha256_file(pointer), size=pointer.stat().st_size)
    core.manifest_path(pointer).write_text(json.dumps(manifest))


def one_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err


# --- a champion pointer may name a model, and nothing else ------------------------------------------


@pytest.mark.parametrize(("stage", "name"), [("tensorize", "tensors.pt"), ("evaluate", "metrics.parquet")])
@pytest.mark.parametrize("refresh", [False, True])
def test_a_pointer_at_another_kind_of_artifact_is_replaced_by_the_next_promotion(store, stage, name, refresh):
    """tensors.pt once gave KeyError: 'weights' in every run; a Parquet file an IntegrityError in every run,
    --refresh included. Now the pointer is not a champion: the run promotes its model in its place (warning)."""
    point_champion_at(store, artifact(store, stage, name))
    summary = run(store, *(["refresh", True] if refresh else []))
    promotion = summary["promotion"]
    assert promotion["promoted"] is True
    assert "the champion cannot be used" in promotion["reason"] and "not a model" in promotion["reason"]
    current = champion.read_champion(store)
    assert current is not None and current["model"] == str(Path(summary["artifacts"]["train"]["model"]).resolve())
    assert "already the champion" in run(store)["promotion"]["reason"]  # the next run: the store is not stuck


def test_predict_with_a_model_that_is_a_tensors_file_is_one_line(store, capsys):
    tensors = artifact(store, "tensorize", "tensors.pt")
    code = predict_cli.main(["--data", str(ADVERTISING), "--model", str(tensors), "--artifacts-dir", str(store)])
    err = capsys.readouterr().err
    assert code == 2
    one_error_line(err)
    assert f"error: {tensors}: not a model (a pt file of stage tensorize" in err


def test_predict_with_a_champion_pointing_at_tensors_is_one_line(store, capsys):
    point_champion_at(store, artifact(store, "tensorize", "tensors.pt"))
    assert predict_cli.main(["--data", str(ADVERTISING), "--artifacts-dir", str(store)]) == 2
    err = capsys.readouterr().err
    one_error_line(err)
    assert "not a model" in err and "train again to write a new champion" in err


# --- deep nesting in every kind -------------------------------------------------------------------


def test_a_deeply_nested_manifest_is_a_missing_artifact_and_the_stage_runs_again(store):
    clean = artifact(store, "drop_index", "clean.parquet")
    core.manifest_path(clean).write_text(DEEP)
    summary = run(store)
    assert summary["cached"]["ingest"] is True and summary["cached"]["drop_index"] is False


def test_a_deeply_nested_or_renamed_cache_record_is_a_miss(store):
    record_of(store, "ingest").write_text(DEEP)
    record = record_of(store, "split")
    body = json.loads(record.read_text())
    body["outputs"] = {"training": body["outputs"]["train"], "test": body["outputs"]["test"]}  # was KeyError
    record.write_text(json.dumps(body))
    summary = run(store)
    assert summary["cached"]["ingest"] is False and summary["cached"]["split"] is False
    assert set(json.loads(record_of(store, "split").read_text())["outputs"]) == {"train", "test"}  # replaced
    assert all(run(store)["cached"].values())


def test_a_deeply_nested_pointer_is_replaced(store):
    Path(champion.pointer_path(store)).write_text(DEEP)
    promotion = run(store)["promotion"]
    assert promotion["promoted"] is True and "nested deeper than" in promotion["reason"]
    assert champion.read_champion(store) is not None


def test_a_deeply_nested_marker_is_replaced_in_a_folder_of_store_files(store):
    (store / storage.MARKER).write_text(DEEP)
    assert all(run(store)["cached"].values())
    assert json.loads((store / storage.MARKER).read_text())["store"] == storage.STORE_NAME


def test_a_deeply_nested_marker_beside_a_users_file_is_one_line(store, capsys):
    (store / storage.MARKER).write_text(DEEP)
    (store / "notes.txt").write_text("mine")
    assert train_main(["--artifacts-dir", str(store)]) == 2
    err = capsys.readouterr().err
    one_error_line(err)
    assert "its marker .linreg-store is not a store's marker" in err
    assert "it holds files the store did not write (notes.txt); restore the marker" in err


def test_a_deeply_nested_run_record_is_one_line(store, capsys):
    [record] = sorted((store / storage.RUNS_DIR).glob("*.json"))
    record.write_text(DEEP)
    assert lineage.main([str(record)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {record}: not a readable run record (nested deeper than 32 levels)")


# --- history rows ---------------------------------------------------------------------------------


def history_file(root: Path, name: str, **changes) -> Path:
    """A history file of the right schema whose one row has ``changes`` (a null time, bad params…)."""
    row = {
        "time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "flow_run_id": name,
        "data_sha256": "0" * 64,
        "rows": 1,
        "params": "{}",
        "train_mse": 1.0,
        "test_mse": 1.0,
        "train_r2": 0.5,
        "test_r2": 0.5,
        "optimality_gap": 0.0,
        "promoted": False,
        "model": "train/x/model.pt",
    }
    row.update(changes)
    path = root / storage.HISTORY_DIR / f"20200101T000000000000Z-{name}.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), path)
    return path


def test_history_rows_with_a_null_time_or_non_json_params_are_skipped_with_a_warning(store, capsys):
    null_time = history_file(store, "nulltime", time=None)
    bad_params = history_file(store, "badparams", params="{not json")
    deep_params = history_file(store, "deepparams", params=DEEP)
    assert history_cli.main(["--artifacts-dir", str(store), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["runs"]) == 1  # the real run's row
    for path, why in [(null_time, "time is null"), (bad_params, "params"), (deep_params, "nested deeper")]:
        assert f"warning: history file {path} skipped: a row: " in err and why in err
    summary = run(store)  # promotion, history and the report read the same history
    assert summary["promotion"]["promoted"] is True


# --- lineage --------------------------------------------------------------------------------------


def chain(folder: Path, length: int, cycle: bool = False) -> Path:
    """``length`` JSON artifacts, each made from the one before (the first from a CSV): a lineage chain."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source.csv"
    source.write_text("a,y\n1,2\n")
    previous = source
    for i in range(length):
        path = folder / f"step{i}.json"
        path.write_text(json.dumps({"i": i}))
        inputs = [{"name": "in", "path": str(previous), "sha256": storage.sha256_file(previous)}]
        if cycle and i == length - 1:
            inputs.append({"name": "loop", "path": str(folder / "step0.json"), "sha256": "0" * 64})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest = {"sha256": digest, "size": path.stat().st_size, "format": "json", "stage": "s", "inputs": inputs}
        write_json(manifest, core.manifest_path(path))
        previous = path
    return previous


@pytest.mark.no_server
def test_a_1500_deep_lineage_chain_is_one_line_not_a_recursion_error(tmp_path, capsys):
    end = chain(tmp_path / "c", 1500)
    assert lineage.main([str(end)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {end}: its lineage is more than {lineage.MAX_CHAIN} steps long, " + (
        "which no store writes (its manifests were altered); rebuild it with python -m flows.train --refresh\n"
    )


@pytest.mark.no_server
def test_a_lineage_chain_within_the_bound_is_walked_with_a_cycle_seen_once(tmp_path, capsys):
    end = chain(tmp_path / "c", lineage.MAX_CHAIN - 2, cycle=True)
    assert lineage.main([str(end), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sources"][0]["path"] == str(tmp_path / "c" / "source.csv")
    loop = report["artifact"]["inputs"][1]
    assert loop["path"] == str(tmp_path / "c" / "step0.json") and loop["see_above"] is True


# --- the property: malformed instances of each kind -----------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def malformed(draw, valid: bytes) -> bytes:
    """Bytes that a file of ``valid``'s kind must not be taken for: deep nesting, any JSON, the valid object
    with a field removed, retyped or nested deep, truncated, or not UTF-8."""
    how = draw(st.sampled_from(["deep", "json", "drop", "retype", "deep-field", "truncate", "binary"]))
    body = json.loads(valid)
    if how == "deep":
        n = draw(st.sampled_from([33, 1200, 5000, 100_000]))  # json.loads recurses: past ~1000 it raised
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * n + "1" + closer * n).encode()
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "truncate":
        return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    if how == "binary":
        return b"\xff\xfe" + valid
    if not isinstance(body, dict) or not body:
        return b"[]"
    field = draw(st.sampled_from(sorted(body)))
    if how == "drop":
        body.pop(field)
    elif how == "retype":
        body[field] = draw(json_values)
    else:
        body[field] = json.loads("[" * 40 + "1" + "]" * 40) if draw(st.booleans()) else [[[]]]
        return json.dumps(body).replace("[[[]]]", "[" * 3000 + "]" * 3000).encode()
    return json.dumps(body).encode()


KINDS = ["manifest", "marker", "cache record", "champion pointer"]
PROPERTY = settings(
    max_examples=6,  # each runs the flow (and predict) on a copy of the store: 3-6 s on the suite's 2 cores
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def target_of(root: Path, kind: str, which: int) -> Path:
    if kind == "manifest":
        files = sorted(root.rglob(f"*{storage.MANIFEST_SUFFIX}"))
        return files[which % len(files)]
    if kind == "marker":
        return root / storage.MARKER
    if kind == "cache record":
        records = sorted((root / storage.CACHE_DIR).glob("*/*.json"))
        return records[which % len(records)]
    return Path(champion.pointer_path(root))


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_store_files_end_in_success_or_one_line(trained, kind, capsys):
    @PROPERTY
    @given(which=st.integers(0, 100), data=st.data())
    def check(which: int, data: st.DataObject) -> None:
        root = copy_of(trained)
        try:
            if kind == "champion pointer" and data.draw(st.booleans()):  # at any artifact of the store, whole
                files = [p for p in sorted(root.glob("*/*/*")) if p.parts[-3] in STAGES and ".manifest." not in p.name]
                point_champion_at(root, data.draw(st.sampled_from(files)))
            else:
                target = target_of(root, kind, which)
                target.write_bytes(data.draw(malformed(target.read_bytes())))
            capsys.readouterr()
            code = train_main(["--artifacts-dir", str(root)])  # any exception fails the test
            err = capsys.readouterr().err
            assert code in (0, 2), err
            if code == 2:
                one_error_line(err)
            else:  # nothing stuck: a champion the next run can read
                assert champion.read_champion(root) is not None
            if kind in ("manifest", "champion pointer"):  # what predict reads: the pointer, the model's manifest
                code = predict_cli.main(["--data", str(ADVERTISING), "--artifacts-dir", str(root)])
                err = capsys.readouterr().err
                assert code in (0, 2), err
                if code == 2:
                    one_error_line(err)
        finally:
            shutil.rmtree(root.parent, ignore_errors=True)

    check()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(SCHEMA.names)), st.none(), min_size=1))
def test_history_rows_with_nulls_never_break_history(trained, changes, capsys):
    root = copy_of(trained)
    try:
        history_file(root, "planted", **changes)
        capsys.readouterr()
        assert history_cli.main(["--artifacts-dir", str(root), "--json"]) == 0
        assert "Traceback" not in capsys.readouterr().err
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


@pytest.mark.no_server
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(1, 120), cycle=st.booleans(), plant=st.booleans(), data=st.data())  # MAX_CHAIN is 100
def test_lineage_chains_end_in_a_report_or_one_line(tmp_path_factory, length, cycle, plant, data, capsys):
    folder = tmp_path_factory.mktemp("chain")
    end = chain(folder, length, cycle=cycle)
    if plant:  # one manifest along the way malformed
        victim = core.manifest_path(folder / f"step{data.draw(st.integers(0, length - 1))}.json")
        victim.write_bytes(data.draw(malformed(victim.read_bytes())))
    code = lineage.main([str(end)])
    err = capsys.readouterr().err
    assert code in (0, 1, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), err
