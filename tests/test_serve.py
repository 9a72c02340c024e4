"""`python -m flows.serve` against the session's real server: same schedule as prefect.yaml, runs triggered work,
pauses the deployment when stopped and resumes it when started again (what the docs promise)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from conftest import ROOT
from flows.local_server import free_port, isolated_env, start_process, stop_process
from flows.serve import SERVED_NAME, daily_schedule, main

DEPLOYMENT = f"linear-regression/{SERVED_NAME}"


def _wait(condition: Callable[[], object], what: str, log: Path, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; serve log:\n{log.read_text(errors='replace')[-4000:]}")


def _deployment():
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            return None


@pytest.mark.no_server
def test_served_schedule_is_the_daily_deployments():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [daily] = [d for d in config["deployments"] if d["name"] == "daily"]
    schedule = daily_schedule()
    assert (schedule.cron, schedule.timezone) == (daily["schedules"][0]["cron"], daily["schedules"][0]["timezone"])
    assert (schedule.cron, schedule.timezone) == ("0 6 * * *", "UTC")


@pytest.mark.no_server
def test_bad_deployments_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("flows.serve.PREFECT_YAML", tmp_path / "prefect.yaml")
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'prefect.yaml'}: cannot read the deployments file") and "\n" not in err
    (tmp_path / "prefect.yaml").write_text("deployments:\n  - name: daily\n    schedules: []\n")
    assert main([]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'prefect.yaml'}: deployment 'daily' must have exactly one cron schedule\n"
    )


def test_serve_runs_flows_and_pauses_its_deployment_when_stopped(prefect_api_url: str, tmp_path: Path):
    env = isolated_env(tmp_path / "home", PREFECT_API_URL=prefect_api_url, LINREG_ARTIFACTS_DIR=str(tmp_path / "a"))
    command = [sys.executable, "-m", "flows.serve"]
    log = tmp_path / "serve.log"
    serve = start_process(command, env, log, cwd=ROOT)
    try:
        deployment = _wait(lambda: (d := _deployment()) and not d.paused and d, "the served deployment", log)
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 6 * * *", "UTC", True)
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 5})
            finished = _wait(
                lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, "the served flow run", log
            )
        assert finished.state.is_completed(), finished.state
        assert list((tmp_path / "a").rglob("evaluation.json")), "the served run wrote no artifacts"

        stop_process(serve, sig=signal.SIGINT, timeout=60)  # what Ctrl-C does
        assert _deployment().paused, "stopping serve should pause the deployment, as the docs say"

        serve = start_process(command, env, tmp_path / "serve-again.log", cwd=ROOT)
        _wait(lambda: not _deployment().paused, "the deployment to resume", tmp_path / "serve-again.log")
    finally:
        stop_process(serve, sig=signal.SIGINT, timeout=60)


def test_serve_without_a_reachable_server_is_one_line(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/api"
    result = subprocess.run(
        [sys.executable, "-m", "flows.serve"],
        env=isolated_env(tmp_path / "home", PREFECT_API_URL=url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot reach the Prefect API at {url} (")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
