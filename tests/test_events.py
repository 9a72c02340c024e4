"""Lifecycle events (tasks/events.py) and the predict-on-promotion deployment (prefect.yaml's ``triggers:``).

The builders without Prefect; a rejected run's events on a real server; then end to end: ``prefect deploy`` of
predict-on-promotion, a real worker, a training run that promotes, and the prediction run the server starts by
itself for that model.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter
from prefect.client.schemas.objects import StateType

import stagecore as core
import storage
from conftest import PROMOTION_TRIGGER, ROOT, events_of, retire_promotion_trigger, worker_env
from flows.local_server import PREFECT, isolated_env, start_process, stop_process
from flows.train import linear_regression
from tasks import events
from tasks.promote import UNCHANGED

SHA = "d024fb15a72c572729c568c191370a076aa08a94a4473de3220e0952049d660c"
MODEL = "train/8d151cfcc75e582d/model.pt"
SECRET_STORE = "s3://alice:hunter2@minio.local:9000/bucket/linreg?X-Amz-Signature=abc123"
FACTS = dict(model=MODEL, sha256=SHA, champion="train/0000/model.pt", run_id="run-1", target="sales")
LOG_TAIL = 4000


def _block(promoted: bool, reason: str, champion_mse: float | None = 4.5, mse: float = 4.4) -> dict:
    champion = "/store/" + (MODEL if promoted else "train/0000/model.pt")
    return {
        "promoted": promoted,
        "reason": reason,
        "champion": champion,
        "champion_test_mse": champion_mse,
        "challenger_test_mse": mse,
    }


@pytest.mark.no_server
def test_promoted_event_names_the_model_by_content_and_the_store_redacted():
    [(name, resource, payload)] = events.training_events(
        _block(True, "test MSE 4.4 ≤ 4.5"), None, store=SECRET_STORE, features=("TV", "radio"), **FACTS
    )
    assert name == "linreg.model.promoted"
    assert resource == {
        "prefect.resource.id": "linreg.model.d024fb15a72c5727",
        "prefect.resource.name": MODEL,
        "linreg.store": "s3://alice:REDACTED@minio.local:9000/bucket/linreg?X-Amz-Signature=REDACTED",
    }
    assert "hunter2" not in json.dumps([resource, payload]) and "abc123" not in json.dumps([resource, payload])
    assert payload == {
        "model": MODEL,
        "model_sha256": SHA,
        "flow_run_id": "run-1",
        "target": "sales",
        "features": ["TV", "radio"],
        "test_mse": 4.4,
        "previous_test_mse": 4.5,
        "reason": "test MSE 4.4 ≤ 4.5",
    }


@pytest.mark.no_server
def test_off_optimum_then_rejected_with_the_reason_and_the_champion_that_stays():
    why = "its train MSE 3.25 is 0.35 above least squares'"
    built = events.training_events(
        _block(False, f"off the optimum ({why}): not promoted", None), why, store="/s", features=["a`<b>`"], **FACTS
    )
    assert [name for name, _, _ in built] == ["linreg.model.off-optimum", "linreg.model.rejected"]
    (_, off_resource, off), (_, resource, rejected) = built
    assert off_resource == resource and resource["linreg.store"] == "/s"
    assert off["reason"] == why and off["features"] == ["a`<b>`"]  # a column name as data, not markup
    assert rejected["reason"] == f"off the optimum ({why}): not promoted"
    assert rejected["champion"] == "train/0000/model.pt" and rejected["previous_test_mse"] is None


@pytest.mark.no_server
def test_a_rerun_whose_model_already_is_the_champion_announces_nothing():
    assert events.training_events(_block(True, UNCHANGED, 4.4), None, store="/s", features=["a"], **FACTS) == []


@pytest.mark.no_server
def test_predictions_event_names_the_model_rows_files_and_the_input_redacted():
    name, resource, payload = events.predictions_event(
        model=MODEL,
        sha256=SHA,
        store="/s",
        predictions=["predict/aa/predictions.parquet", "predict/bb/predictions.parquet"],
        rows=400,
        data="https://bob:pw@example.org/new.csv?token=t0k",
        run_id="run-2",
    )
    assert name == "linreg.predictions.written" and resource["prefect.resource.id"] == "linreg.model.d024fb15a72c5727"
    assert payload == {
        "model": MODEL,
        "model_sha256": SHA,
        "rows": 400,
        "predictions": ["predict/aa/predictions.parquet", "predict/bb/predictions.parquet"],
        "data": "https://bob:REDACTED@example.org/new.csv?token=REDACTED",
        "flow_run_id": "run-2",
    }


@pytest.mark.no_server
def test_an_event_that_cannot_be_sent_is_one_warning_never_an_error(caplog):
    """What Prefect would refuse (NaN, over the server's size limit) is a WARNING before anything is queued."""
    resource = events.model_resource(MODEL, SHA, "/s")
    nan = ("linreg.test.nan", resource, {"test_mse": math.nan})
    huge = ("linreg.test.huge", resource, {"features": ["x" * 1000] * 2000})
    with caplog.at_level(logging.WARNING):
        assert events.emit([nan, huge]) == 0
    warned = [r for r in caplog.records if r.name == "linreg.events"]
    assert [r.levelno for r in warned] == [logging.WARNING] * 2, caplog.text
    assert "linreg.test.nan" in warned[0].getMessage() and "over the server's limit" in warned[1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.no_server
@pytest.mark.parametrize(
    "pool, answers",
    [
        (events.NO_POOL, "predict-on-promotion"),  # python -m flows.train, make run
        ("local-process", "predict-on-promotion"),  # prefect.yaml's deployments
        ("git-process", "git-predict-on-promotion"),  # prefect-git.yaml's
    ],
)
def test_each_promotion_starts_one_prediction_deployment_the_twin_of_its_pool(pool, answers, monkeypatch):
    """prefect.yaml's and prefect-git.yaml's triggers, as the server evaluates them, on the event `emit` sends."""
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    sent = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **event: sent.append(event) or event)
    monkeypatch.setattr(events, "work_pool", lambda: pool)
    assert (
        events.emit(
            events.training_events(_block(True, "test MSE 4.4 ≤ 4.5"), None, store="/s", features=["a"], **FACTS)
        )
        == 1
    )
    [event] = [ReceivedEvent(**event, occurred=dt.datetime.now(dt.UTC), id=uuid.uuid4()) for event in sent]
    triggers = {
        deployment["name"]: EventTrigger(**{k: v for k, v in trigger.items() if k in EventTrigger.model_fields})
        for file in ("prefect.yaml", "prefect-git.yaml")
        for deployment in yaml.safe_load((ROOT / file).read_text())["deployments"]
        for trigger in deployment.get("triggers", [])
    }
    assert len(triggers) == 2 and event.resource[events.POOL_LABEL] == pool
    assert [name for name, trigger in triggers.items() if trigger.covers(event)] == [answers]


def _resource_id(model_path: str) -> str:
    return "linreg.model." + core.read_manifest(model_path)["sha256"][:16]


def test_a_rejected_run_emits_off_optimum_and_rejected_with_its_reason(artifacts):
    summary = linear_regression(preset="seed", artifacts_dir=str(artifacts))  # the tutorial recipe: off the optimum
    assert not summary["promotion"]["promoted"] and summary["off_optimum"]
    model_path = summary["artifacts"]["train"]["model"]
    resource_id = _resource_id(model_path)
    [rejected] = events_of(resource_id, "linreg.model.rejected")
    [off] = events_of(resource_id, "linreg.model.off-optimum")
    assert (
        rejected.payload["reason"] == summary["promotion"]["reason"]
        and "--promote-off-optimum" in rejected.payload["reason"]
    )
    assert off.payload["reason"] == summary["off_optimum"]
    assert rejected.resource["prefect.resource.name"] == storage.store_relative(artifacts, model_path)
    assert rejected.resource["linreg.store"] == str(artifacts.resolve())
    assert rejected.payload["champion"] == "none" and rejected.payload["flow_run_id"] == summary["flow_run_id"]
    # Prefect relates the event to the run that sent it: the UI's feed links the flow run
    assert f"prefect.flow-run.{summary['flow_run_id']}" in {r.id for r in rejected.related}
    assert not events_of(resource_id, "linreg.model.promoted", timeout=0)
    # fire-and-forget: queuing does not wait on the server (Prefect's events worker sends from its own thread)
    started = time.perf_counter()
    assert events.emit([("linreg.test.queued", rejected.resource.root, {"i": i}) for i in range(50)]) == 50
    assert time.perf_counter() - started < 0.25, f"50 events took {time.perf_counter() - started:.3f}s to queue"


@pytest.fixture(scope="module")
def triggered(prefect_api_url: str, tmp_path_factory) -> dict:
    """``prefect deploy --name predict-on-promotion`` from prefect.yaml, a worker, a training run that promotes;
    then the prediction run the server started for it, once final."""
    base = tmp_path_factory.mktemp("events")
    artifacts = base / "artifacts"
    env = isolated_env(base / "deploy-home", PREFECT_API_URL=prefect_api_url)
    for command in (
        f"{PREFECT} work-pool inspect local-process >/dev/null 2>&1 || "
        f"{PREFECT} work-pool create local-process --type process",
        f"{PREFECT} --no-prompt deploy --name predict-on-promotion",
    ):
        done = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-LOG_TAIL:] + done.stderr[-LOG_TAIL:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("linear-regression-predict/predict-on-promotion")
    worker_log = base / "worker.log"
    env = worker_env(base / "worker-home", prefect_api_url)
    worker = start_process(
        [PREFECT, "worker", "start", "--pool", "local-process", "--type", "process"], env, worker_log
    )
    try:
        summary = linear_regression(epochs=5, artifacts_dir=str(artifacts))
        promoted_at = time.monotonic()
        assert summary["promotion"]["promoted"]
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            runs: list = []
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))
                if runs and all(r.state and r.state.is_final() for r in runs):
                    break
                time.sleep(0.5)
        seconds = time.monotonic() - promoted_at
        assert runs and runs[0].state and runs[0].state.is_final(), f"no final run; worker log:\n{_tail(worker_log)}"
        print(f"\npredict-on-promotion: {runs[0].state_name} {seconds:.1f}s after the training flow returned")
        with get_client(sync_client=True) as client:
            [automation] = client.read_automations_by_name(PROMOTION_TRIGGER)
        where = {"artifacts": artifacts, "log": worker_log}
        return {"deployment": deployment, "automation": automation, "runs": runs, "summary": summary, **where}
    finally:
        stop_process(worker)
        retire_promotion_trigger()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL:] if path.exists() else f"({path} missing)"


def test_predict_on_promotion_is_deployed_with_its_trigger_on_the_promoted_event(triggered):
    deployment = triggered["deployment"]
    assert deployment.work_pool_name == "local-process" and deployment.parameters == {}
    assert deployment.entrypoint == "flows/predict.py:linear_regression_predict"
    automation = triggered["automation"]
    assert automation.enabled and automation.trigger.expect == {"linreg.model.promoted"}
    assert [a.deployment_id for a in automation.actions] == [deployment.id]


def test_a_promotion_starts_a_prediction_run_with_exactly_that_model(triggered):
    summary, artifacts = triggered["summary"], triggered["artifacts"]
    model_path = summary["artifacts"]["train"]["model"]
    sha = core.read_manifest(model_path)["sha256"]
    [promoted] = events_of("linreg.model." + sha[:16], "linreg.model.promoted")
    assert promoted.payload["model_sha256"] == sha and promoted.payload["flow_run_id"] == summary["flow_run_id"]
    assert promoted.payload["test_mse"] == summary["promotion"]["challenger_test_mse"]
    assert promoted.payload["features"] == list(summary["weights"]) and promoted.payload["target"] == "sales"

    [run] = triggered["runs"]  # one promotion, one prediction run of predict-on-promotion: nobody asked for it
    assert run.deployment_id == triggered["deployment"].id
    assert run.state.type == StateType.COMPLETED, f"{run.state_name}; worker log:\n{_tail(triggered['log'])}"
    root = str(artifacts.resolve())
    assert run.parameters == {"model": f"{root}/{promoted.payload['model']}", "artifacts_dir": root}
    # its predictions were made by that model: its event, and its predictions' manifest, name the model's sha256
    [written] = events_of("linreg.model." + sha[:16], "linreg.predictions.written")
    assert written.payload["model_sha256"] == sha and written.payload["flow_run_id"] == str(run.id)
    assert written.payload["rows"] == 200 and written.payload["data"].endswith("data/Advertising.csv")
    [predictions] = written.payload["predictions"]
    manifest = core.read_manifest(artifacts / predictions)
    assert sha in {entry["sha256"] for entry in manifest["inputs"]}
