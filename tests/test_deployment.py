"""prefect.yaml end to end: `make deploy` and `make worker` against a real server, a triggered run, the UI's view.

Uses the session's server (conftest: a real ``prefect server`` on a free loopback port with its own PREFECT_HOME).
The worker runs flows from a temporary folder, with ``LINREG_ARTIFACTS_DIR`` pointing at this test's folder.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, LogFilter
from prefect.utilities.callables import parameter_schema

import stagecore as core
from conftest import ROOT, retire_promotion_trigger, worker_env
from flows.local_server import PREFECT, isolated_env, start_process, stop_process
from flows.params import Params
from flows.sweep import linear_regression_sweep, product
from flows.train import STAGES
from tasks.accumulate import accumulate_stats
from tasks.drop_index import drop_index_column
from tasks.evaluate import evaluate_model
from tasks.history import HISTORY_KEY
from tasks.ingest import ingest_csv
from tasks.plot import plot_results
from tasks.report import COEFFICIENTS_KEY, METRICS_KEY, REPORT_KEY
from tasks.split import split_data
from tasks.tensorize import tensorize
from tasks.train import train_model

STAGE_TASKS = dict(
    zip(
        STAGES,
        (
            ingest_csv,
            drop_index_column,
            split_data,
            tensorize,
            accumulate_stats,
            train_model,
            evaluate_model,
            plot_results,
        ),
        strict=True,
    )
)
EPOCHS = 8  # below the 12 epochs in which the default recipe converges: the run must stop at exactly this cap
MAKE = ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed-stamp"]  # -o: never reinstall
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOSS_LINE = re.compile(rf"epoch (\d+)/{EPOCHS}: train loss [0-9.e+-]+")
LOG_FILE_TAIL = 4000


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_FILE_TAIL:] if path.exists() else f"({path} missing)"


@pytest.fixture(scope="module")
def deployed(prefect_api_url: str, tmp_path_factory) -> dict:
    """`make deploy`, `make worker`, then `prefect deployment run ... --param epochs=N`; waits for a final state."""
    base = tmp_path_factory.mktemp("deployment")
    artifacts = base / "artifacts"
    deploy = subprocess.run(
        [*MAKE, "deploy"],
        env=isolated_env(base / "deploy-home", PREFECT_API_URL=prefect_api_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-LOG_FILE_TAIL:] + deploy.stderr[-LOG_FILE_TAIL:]
    worker_log = base / "worker.log"
    env = worker_env(base / "worker-home", prefect_api_url, LINREG_ARTIFACTS_DIR=str(artifacts))
    worker = start_process([*MAKE, "worker"], env, worker_log)
    try:
        started = time.monotonic()
        trigger = subprocess.run(
            [PREFECT, "deployment", "run", "linear-regression/on-demand", "--param", f"epochs={EPOCHS}"],
            env=isolated_env(base / "client-home", PREFECT_API_URL=prefect_api_url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        flow_run_id = UUID(re.search(r"UUID: ([0-9a-f-]{36})", trigger.stdout)[1])
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                flow_run = client.read_flow_run(flow_run_id)
                if flow_run.state and flow_run.state.is_final():
                    break
                time.sleep(0.5)
        seconds = time.monotonic() - started
        server_side = (flow_run.end_time - flow_run.created).total_seconds() if flow_run.end_time else float("nan")
        print(
            f"\nlinear-regression/on-demand: {flow_run.state_name} {seconds:.1f}s after `prefect deployment run` "
            f"started, {server_side:.1f}s after the run was created (server clock)"
        )
        assert flow_run.state and flow_run.state.is_completed(), (
            f"run ended {flow_run.state_name} after {seconds:.0f}s; worker log:\n{_tail(worker_log)}"
        )
        # The run's process sends its last log batch after the final state: stopping the worker (and with it that
        # process) before then would lose those lines. Its last line is the flow's "Finished in state ...".
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                logs = client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}), limit=200)
                if any(log.task_run_id is None and "Finished in state" in log.message for log in logs):
                    break
                time.sleep(0.5)
        # two daily runs due at once (a schedule catching up, a manual run beside the scheduled one), to a store of
        # their own: prefect.yaml's concurrency_limit lets one run and cancels the other, never queues it
        with get_client(sync_client=True) as client:
            daily = client.read_deployment_by_name("linear-regression/daily")
            params = {"artifacts_dir": str(base / "daily-artifacts")}
            doubled = [client.create_flow_run_from_deployment(daily.id, parameters=params) for _ in range(2)]
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                doubled = [client.read_flow_run(run.id) for run in doubled]
                if all(run.state and run.state.is_final() for run in doubled):
                    break
                time.sleep(0.5)
        return {
            "flow_run": flow_run,
            "artifacts": artifacts,
            "seconds": seconds,
            "worker_log": worker_log,
            "daily_runs": doubled,
        }
    finally:
        stop_process(worker)
        retire_promotion_trigger()  # `make deploy` made it (tests/test_events.py tests it)


def test_two_daily_runs_due_at_once_one_completes_the_other_is_cancelled(deployed):
    runs = sorted(deployed["daily_runs"], key=lambda run: run.state_name or "")
    states = [run.state_name for run in runs]
    assert states == ["Cancelled", "Completed"], f"{states}; worker log:\n{_tail(deployed['worker_log'])}"
    cancelled = runs[0]
    assert "concurrency limit reached" in (cancelled.state.message or "").lower(), cancelled.state.message
    with get_client(sync_client=True) as client:  # cancelled before its flow began: not one stage ran
        assert client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [cancelled.id]})) == []


def test_daily_deployment_has_the_cron_schedule_and_the_flows_defaults(deployed):
    with get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("linear-regression/daily")
        on_demand = client.read_deployment_by_name("linear-regression/on-demand")
        pool = client.read_work_pool("local-process")
    assert pool.type == "process"
    [schedule] = daily.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 6 * * *", "UTC", True)
    assert not daily.paused
    assert on_demand.schedules == []
    # one daily run at a time, a late one cancelled (prefect.yaml's concurrency_limit); on-demand runs unlimited
    assert daily.global_concurrency_limit.limit == 1
    assert daily.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert on_demand.global_concurrency_limit is None
    defaults = Params().model_dump(mode="json")
    for deployment in (daily, on_demand):
        assert deployment.work_pool_name == "local-process"
        assert deployment.entrypoint == "flows/train.py:linear_regression"
        assert deployment.parameters == {}, "prefect.yaml must not restate parameters: the flow's defaults apply"
        schema = deployment.parameter_openapi_schema["properties"]
        # an unset field (None: the preset's value…) has no default in the run form's schema (Params.form_signature)
        assert {name: schema[name].get("default") for name in defaults} == defaults
        assert not [name for name, value in defaults.items() if value is None and "default" in schema[name]]
        # the build step resolved the checkout at deploy time; prefect.yaml itself names no folder
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def test_sweep_deployment_takes_a_grid_and_folds_on_demand(deployed):
    with get_client(sync_client=True) as client:
        sweep = client.read_deployment_by_name("linear-regression-sweep/sweep")
    assert (sweep.work_pool_name, sweep.schedules) == ("local-process", [])
    assert sweep.entrypoint == "flows/sweep.py:linear_regression_sweep"
    assert sweep.parameters == {"grid": {"lr": ["auto", 0.1, 0.01]}, "folds": 0}
    # the run form: a mapping of lists, a list of mappings, a mapping, an integer (the flow's own schema)
    schema = sweep.parameter_openapi_schema["properties"]
    assert schema == parameter_schema(linear_regression_sweep).model_dump()["properties"]
    assert schema["grid"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "array", "items": {}}}
    assert schema["folds"] == {"default": 0, "position": 3, "title": "folds", "type": "integer"}
    assert product(sweep.parameters["grid"], "grid") == [{"lr": "auto"}, {"lr": 0.1}, {"lr": 0.01}]


@pytest.mark.no_server
def test_prefect_yaml_names_no_folder_of_any_machine():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    git_config = yaml.safe_load((ROOT / "prefect-git.yaml").read_text())

    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for each in (config, git_config):
        assert not [s for s in strings(each) if s.startswith(("/", "~")) or re.match(r"[A-Za-z]:\\", s)]
    # their git twins are in prefect-git.yaml (tests/test_git_worker.py); predict-on-promotion: tests/test_events.py
    local = {"daily", "on-demand", "predict", "sweep", "predict-on-promotion"}
    assert {d["name"] for d in config["deployments"]} == local


def _said_what_it_read_and_wrote(messages: list[str]) -> bool:
    return any("read " in m and ("wrote " in m or "published " in m) for m in messages)


def test_triggered_run_has_one_task_run_per_stage_with_logs(deployed):
    flow_run = deployed["flow_run"]
    assert flow_run.parameters == {"epochs": EPOCHS}
    expected = sorted(
        [task.name for task in STAGE_TASKS.values()] + ["promote_model", "record_history", "publish_report"]
    )
    # The server records task-run states and logs asynchronously (from events and log batches): a flow run can
    # be Completed a moment before all of its task runs and log lines are readable. Wait for them, briefly.
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
            by_task = {run.name.rsplit("-", 1)[0]: run for run in task_runs}
            logs = client.read_logs(LogFilter(flow_run_id={"any_": [flow_run.id]}), limit=200)
            said = {name: [log.message for log in logs if log.task_run_id == run.id] for name, run in by_task.items()}
            silent = [name for name in expected if not _said_what_it_read_and_wrote(said.get(name, []))]
            epochs_logged = [int(m) for m in LOSS_LINE.findall("\n".join(said.get("train_model", [])))]
            complete = all(run.state and run.state.is_completed() for run in task_runs)
            if (complete and not silent and len(epochs_logged) >= EPOCHS) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert sorted(run.name.rsplit("-", 1)[0] for run in task_runs) == expected, "one task run per stage"
    assert complete, {run.name: run.state_name for run in task_runs}
    assert not silent, {name: said.get(name) for name in silent}
    assert sorted(epochs_logged) == list(range(1, EPOCHS + 1))  # every epoch here: 8 epochs // 20 steps < 1
    assert str(deployed["artifacts"]) in "\n".join(log.message for log in logs), "artifacts not in the worker's dir"


def _artifacts_by_key(flow_run_id: UUID) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))
    keyed = [a for a in found if a.key]
    assert len({a.key for a in keyed}) == len(keyed), "each key once per run"
    return {a.key: a for a in keyed}


def test_triggered_run_publishes_metrics_coefficients_report_and_progress(deployed):
    [summary_file] = deployed["artifacts"].rglob("evaluation.json")
    summary = json.loads(summary_file.read_text())
    assert (summary["epochs_run"], summary["converged"], summary["training"]["epochs"]) == (EPOCHS, False, EPOCHS)
    artifacts = _artifacts_by_key(deployed["flow_run"].id)
    assert set(artifacts) == {METRICS_KEY, COEFFICIENTS_KEY, REPORT_KEY, HISTORY_KEY, "linear-regression-training"}

    metrics = json.loads(artifacts[METRICS_KEY].data)
    assert artifacts[METRICS_KEY].type == "table" and len(metrics) == 4
    for row in metrics:
        source = summary["metrics" if row["model"] == "gradient descent" else "baseline"][row["part"]]
        assert [row["MSE"], row["RMSE"], row["MAE"], row["R²"]] == pytest.approx(
            [source["mse"], source["rmse"], source["mae"], source["r2"]], rel=1e-12
        )
    assert {(r["model"], r["part"]) for r in metrics} == {
        (model, part) for model in ("gradient descent", r"least squares \(closed form\)") for part in ("train", "test")
    }  # string cells are markdown in the UI: escaped (docs/security.md)

    coefficients = json.loads(artifacts[COEFFICIENTS_KEY].data)
    assert [r["feature"] for r in coefficients] == [*summary["weights"], r"\(intercept\)"]
    gd = [*summary["weights"].values(), summary["bias"]]
    assert [r["gradient descent"] for r in coefficients] == pytest.approx(gd)
    assert [r["least squares"] for r in coefficients] == pytest.approx(
        [*summary["ols_weights"].values(), summary["ols_bias"]]
    )

    report = artifacts[REPORT_KEY]
    assert report.type == "markdown"
    images = [base64.b64decode(i) for i in re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report.data)]
    pngs = {p.name: p.read_bytes() for p in deployed["artifacts"].rglob("*.png")}
    assert len(images) == 2 and all(i[:8] == PNG_SIGNATURE for i in images)
    # and the trend over runs, drawn as SVG without matplotlib (lifecycle/trend.py)
    [trend] = re.findall(r"\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", report.data)
    assert base64.b64decode(trend).startswith(b"<svg")
    assert images[:2] == [pngs["predicted_vs_actual.png"], pngs["loss_curve.png"]]
    assert f"| epochs | {EPOCHS} |" in report.data
    assert f"stopped at the epoch cap ({EPOCHS} epochs)" in report.data
    assert f"{summary['optimality_gap']:.3e}" in report.data
    assert core.escape_md(summary_file) in report.data

    assert report.description.startswith(core.escape_md(f"test MSE {summary['metrics']['test']['mse']:.5g} vs"))
    stages = report.data.split("### Stages", 1)[1].split("###", 1)[0]
    assert stages.count("| ran |") == len(STAGE_TASKS) and "Cached" not in stages  # a fresh store: every stage ran

    recent = artifacts[HISTORY_KEY]  # markdown, so each run is a link to its page
    assert recent.type == "markdown" and recent.description.startswith("1 runs, newest first")
    assert core.escape_md(f"/runs/flow-run/{deployed['flow_run'].id}") + ")" in recent.data

    progress = artifacts["linear-regression-training"]
    assert progress.type == "progress" and float(progress.data) == 100.0
