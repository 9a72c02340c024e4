"""The stage cache against a real Prefect API: what is Cached, what re-runs, and that damage is never used."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

import stagecore as core
import storage
from conftest import ADVERTISING
from flows.lineage import main as lineage_main
from flows.train import STAGES, build_parser, linear_regression, main
from linreg import DivergenceError
from stagecore.cache import read_record

ALL_CACHED = dict.fromkeys(STAGES, True)
NONE_CACHED = dict.fromkeys(STAGES, False)


def cached_from(**changed: bool) -> dict[str, bool]:
    return {**ALL_CACHED, **changed}


def run(artifacts: Path, **params) -> dict:
    return linear_regression(artifacts_dir=str(artifacts), **params)


def files_of(summary: dict) -> list[Path]:
    return [Path(p) for files in summary["artifacts"].values() for p in files.values()]


STAGE_TASKS = (
    "ingest_csv",
    "drop_index_column",
    "split_data",
    "tensorize",
    "accumulate_stats",
    "train_model",
    "evaluate_model",
    "plot_results",
)


def task_run_states(summary: dict, expect: str) -> dict[str, str]:
    """Stage task name → state name in the flow run that produced ``summary``, as the Prefect API reports them.

    The server records task-run states from events, a moment after the flow run ends: wait (briefly) until
    every stage task shows ``expect``, and return what it shows then.
    """
    run_id = json.loads(Path(summary["run_record"]).read_text())["run_id"]
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state is not None}
        stages = {name: states.get(name) for name in STAGE_TASKS}
        if set(stages.values()) == {expect} or time.monotonic() > deadline:
            return stages
        time.sleep(0.3)


def test_second_identical_run_is_cached_in_prefect_and_returns_the_same_files(artifacts: Path):
    first = run(artifacts)
    assert first["cached"] == NONE_CACHED
    second = run(artifacts)
    assert second["cached"] == ALL_CACHED
    assert second["artifacts"] == first["artifacts"]
    assert second["metrics"] == first["metrics"]
    # Prefect itself says Cached (that is what the UI shows), not just our summary
    assert task_run_states(second, "Cached") == dict.fromkeys(STAGE_TASKS, "Cached")
    assert task_run_states(first, "Completed") == dict.fromkeys(STAGE_TASKS, "Completed")
    # records live beside the artifacts, one per stage, each holding the stage's files (and nothing else)
    records = [p for p in (artifacts / storage.CACHE_DIR).rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert len(records) == len(STAGES)
    assert all(p.suffix == ".json" for p in records)
    [ingest] = [p for p in records if p.parent.name == "ingest"]
    assert read_record(artifacts, "ingest", ingest.stem) == first["artifacts"]["ingest"]
    assert len(list((artifacts / storage.RUNS_DIR).glob("*.json"))) == 2


def test_epochs_rerun_training_onwards_and_test_size_reruns_split_onwards(artifacts: Path):
    base = run(artifacts)
    assert base["cached"] == NONE_CACHED
    epochs = run(artifacts, epochs=500)
    assert epochs["cached"] == cached_from(train=False, evaluate=False, plot=False)
    assert epochs["artifacts"]["tensorize"] == base["artifacts"]["tensorize"]
    assert epochs["artifacts"]["train"] != base["artifacts"]["train"]
    test_size = run(artifacts, epochs=500, test_size=0.3)
    assert test_size["cached"] == cached_from(
        split=False, tensorize=False, accumulate=False, train=False, evaluate=False, plot=False
    )
    # and back: every earlier result is still there, still valid
    assert run(artifacts)["cached"] == ALL_CACHED


def test_changing_one_csv_row_reruns_every_stage(artifacts: Path, tmp_path: Path):
    csv = tmp_path / "ads.csv"
    shutil.copy(ADVERTISING, csv)
    assert run(artifacts, data=str(csv))["cached"] == NONE_CACHED
    lines = csv.read_text().splitlines(keepends=True)
    fields = lines[7].split(",")
    fields[-1] = "99.9\n"  # one sales value of one row
    lines[7] = ",".join(fields)
    csv.write_text("".join(lines))
    assert run(artifacts, data=str(csv))["cached"] == NONE_CACHED


def test_refresh_runs_every_stage_and_leaves_a_valid_cache(artifacts: Path, capsys):
    run(artifacts)
    assert main(["--artifacts-dir", str(artifacts), "--refresh", "--json"]) == 0
    refreshed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert refreshed["cached"] == NONE_CACHED
    for path in files_of(refreshed):
        core.verify(path)
    assert run(artifacts)["cached"] == ALL_CACHED


def flip_bytes(path: Path, at: int = 200, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_artifacts_and_records_are_cache_misses_that_rebuild(artifacts: Path, task_log: list[str]):
    first = run(artifacts)
    a = first["artifacts"]
    train_table = Path(a["split"]["train"])
    good_table = storage.sha256_file(train_table)
    flip_bytes(train_table)  # a Parquet file with bytes flipped
    summary = Path(a["evaluate"]["summary"])
    summary.write_bytes(summary.read_bytes()[:50])  # truncated
    Path(a["plot"]["loss_curve"]).unlink()  # missing
    drop_record = next((artifacts / storage.CACHE_DIR / "drop_index").glob("*.json"))
    drop_record.write_text('{"record_version": ')  # a cache record cut short

    second = run(artifacts)

    rebuilt = ("drop_index", "split", "evaluate", "plot")
    assert second["cached"] == cached_from(**dict.fromkeys(rebuilt, False))
    for stage, files in second["artifacts"].items():
        for name, path in files.items():
            before = Path(first["artifacts"][stage][name])
            if stage in rebuilt:  # same key, a new folder beside the old one: artifacts are written once
                assert Path(path).parent == before.parent.with_name(before.parent.name + ".1"), (stage, path)
            else:
                assert Path(path) == before
    for path in files_of(second):
        core.verify(path)
    # rebuilt byte for byte, so tensorize kept its key and stayed cached; the damaged file was left as it was
    assert storage.sha256_file(second["artifacts"]["split"]["train"]) == good_table
    assert storage.sha256_file(train_table) != good_table
    warnings = [m for m in task_log if "running the stage again" in m]
    assert any("drop_index" in m and "record unreadable" in m for m in warnings), warnings
    assert any("train.parquet" in m and "sha256" in m for m in warnings), warnings
    assert any("evaluation.json" in m and "truncated" in m for m in warnings), warnings
    assert any("loss_curve.png" in m and "missing" in m for m in warnings), warnings
    assert run(artifacts)["cached"] == ALL_CACHED

    # a .pt with bytes flipped: rebuilt; model.pt records its training time, so the rebuilt model has new
    # bytes and the stages after it run under new keys
    model = Path(a["train"]["model"])
    flip_bytes(model)
    third = run(artifacts)
    assert third["cached"] == cached_from(train=False, evaluate=False, plot=False)
    assert Path(third["artifacts"]["train"]["model"]).parent == model.parent.with_name(model.parent.name + ".1")
    core.verify(third["artifacts"]["train"]["model"])
    assert any("model.pt" in m and "does not match its manifest" in m for m in task_log)


def test_a_damaged_input_is_refused_on_read_with_one_line(artifacts: Path):
    first = run(artifacts)
    tensors = Path(first["artifacts"]["tensorize"]["tensors"])
    flip_bytes(tensors)
    with pytest.raises(core.IntegrityError, match=r"tensors\.pt: sha256 .* does not match its manifest"):
        core.read_pt(tensors)


def test_diverging_training_fails_clearly_and_does_not_poison_the_cache(artifacts: Path, capsys):
    diverging = {"preset": "seed", "lr": 1.0}
    with pytest.raises(DivergenceError, match="training diverged at epoch"):
        run(artifacts, **diverging)
    train_records = [p for p in (artifacts / storage.CACHE_DIR / "train").glob("*") if p.suffix != ".lock"]
    assert train_records == []
    assert not list((artifacts / "train").rglob("model.pt"))
    # the same parameters again: training runs again (nothing cached), fails the same way, one line on the CLI
    code = main(["--artifacts-dir", str(artifacts), "--preset", "seed", "--lr", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: training diverged at epoch") and "pass a smaller --lr" in err[-1]
    assert not any("Traceback" in line for line in err)
    # the stages before training were fine and stay cached
    good = run(artifacts, preset="seed")
    assert good["cached"] == cached_from(train=False, evaluate=False, plot=False)


@pytest.mark.no_server
def test_unwritable_artifacts_folder_is_one_line_naming_it(tmp_path: Path, capsys):
    # Tests run as root, for whom chmod denies nothing: a folder under a regular file cannot be created by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "artifacts"
    code = main(["--artifacts-dir", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        f"error: artifacts folder {target} is not writable (Not a directory); "
        "pass --artifacts-dir with a writable folder"
    )


def test_lineage_names_the_csv_and_parameters_of_a_model(artifacts: Path, capsys):
    summary = run(artifacts, epochs=700, test_size=0.25)
    model = summary["artifacts"]["train"]["model"]
    assert lineage_main([model, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["path"] for s in report["sources"]] == [str(ADVERTISING)]
    assert report["sources"][0]["recorded_sha256"] == storage.sha256_file(ADVERTISING)
    assert report["parameters"]["split"] == {"test_size": 0.25, "seed": 0, "offset": 0, "total": 200}
    assert report["parameters"]["train"]["cfg"]["epochs"] == 700
    assert list(report["parameters"]) == ["ingest", "drop_index", "split", "tensorize", "accumulate", "train"]

    assert lineage_main([summary["run_record"]]) == 0
    text = capsys.readouterr().out
    assert f"source data: {ADVERTISING}" in text and "all files verify" in text

    flip_bytes(Path(summary["artifacts"]["split"]["test"]))
    assert lineage_main([model]) == 1
    assert "does not match its manifest" in capsys.readouterr().out

    assert lineage_main([str(ADVERTISING)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_clean_artifacts_deletes_the_store_and_nothing_else(artifacts: Path, tmp_path: Path, capsys):
    run(artifacts)
    assert main(["--clean-artifacts", "--artifacts-dir", str(artifacts)]) == 0
    assert not artifacts.exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    assert main(["--clean-artifacts", "--artifacts-dir", str(precious)]) == 2
    assert "does not look like an artifacts folder" in capsys.readouterr().err
    assert (precious / "thesis.tex").exists()


@pytest.mark.no_server
def test_help_lists_the_cache_options():
    text = build_parser().format_help()
    assert "--refresh" in text and "--clean-artifacts" in text
