"""`make run`'s kept local server (flows/up.py): started once, reused, linked from the summary, stopped clean.

Everything runs as the user would run it, in subprocesses, with the server's home and port of the test's own
(``LINREG_SERVER_HOME``, ``SERVER_PORT``), so the suite's servers and a developer's ``.prefect/`` are untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.local_server import free_port, isolated_env
from storage.project import PROJECT_ROOT


def up(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.up", *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )


def servers_on(port: int) -> list[int]:
    """PIDs of processes whose command line names ``--port <port>`` (Prefect's background uvicorn)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in argv and argv[argv.index(b"--port") + 1 : argv.index(b"--port") + 2] == [str(port).encode()]:
            found.append(int(cmdline.parent.name))
    return found


def get(url: str, html: bool = False) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "text/html"} if html else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def test_one_kept_server_a_link_to_the_run_and_a_clean_stop(tmp_path):
    port = free_port()
    env = isolated_env(tmp_path / "client", SERVER_PORT=str(port), LINREG_SERVER_HOME=str(tmp_path / "server"))
    started = up(env, "start")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url == f"http://127.0.0.1:{port}/api" and len(servers_on(port)) == 1
    assert (tmp_path / "server" / "prefect.db").exists()  # SQLite under the project's (here: the test's) home

    t0 = time.monotonic()
    again = up(env, "start")  # the second finds the first one's server: never two
    assert again.stdout.strip() == url and len(servers_on(port)) == 1 and time.monotonic() - t0 < 15
    assert "up at" in up(env, "status").stdout

    run = subprocess.run(
        [sys.executable, "-m", "flows.train", "--artifacts-dir", str(tmp_path / "art"), "--json"],
        env={**env, "PREFECT_API_URL": url},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    ui = f"http://127.0.0.1:{port}"
    assert summary["ui_url"] == f"{ui}/runs/flow-run/{summary['flow_run_id']}"
    assert lines[-3:-1] == [f"run in the Prefect UI: {summary['ui_url']}", f"report: {summary['report_url']}"]
    status, body = get(f"{url}/flow_runs/{summary['flow_run_id']}")  # the link names a real run, Completed
    stored = json.loads(body)
    assert status == 200 and stored["state_type"] == "COMPLETED"
    assert stored["name"].startswith("Advertising-default-")  # named and tagged (flows/labels.py)
    assert {"preset:default", "engine:rows", "store:local", "promoted"} <= set(stored["tags"])
    artifact = json.loads(get(f"{url}/artifacts/{summary['report_url'].rsplit('/', 1)[1]}")[1])
    assert artifact["key"] == "linear-regression-report" and artifact["flow_run_id"] == summary["flow_run_id"]
    status, page = get(summary["ui_url"], html=True)  # and the UI serves it, as a browser asks for it
    assert status == 200 and b"<html" in page.lower()

    stopped = up(env, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert servers_on(port) == [] and "down" in up(env, "status").stdout
    assert "no local server" in up(env, "stop").stdout


@pytest.mark.no_server
def test_a_given_api_url_that_does_not_answer_is_one_line(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    env["LINREG_SERVER_HOME"] = str(tmp_path)
    done = up(env, "start")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: PREFECT_API_URL=") and "does not answer" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing was started for it


@pytest.mark.no_server
def test_a_run_on_the_temporary_server_says_how_to_keep_one():
    from flows.train import format_summary

    summary = {"ui_url": None}
    assert "tip: make run keeps a local Prefect server" in _last_line(format_summary, summary)


def _last_line(format_summary, extra) -> str:
    base = {
        "metrics": {p: {"mse": 1.0, "rmse": 1.0, "mae": 1.0, "r2": 0.5} for p in ("train", "test")},
        "baseline": {p: {"mse": 1.0, "rmse": 1.0, "mae": 1.0, "r2": 0.5} for p in ("train", "test")},
        "reference_ok": True,
        "reference_rank": 2,
        "optimality_gap": 0.0,
        "optimality_gap_abs": 0.0,
        "weights": {"a": 1.0},
        "bias": 0.0,
        "converged": True,
        "epochs_run": 12,
        "lr": 0.5,
        "max_stable_lr": 1.0,
        "scaling": "whiten",
        "condition": 1.0,
        "dtype": "float64",
        "dtype_reason": "small",
        "artifacts": {"ingest": {"table": "/a/ingest/k/raw.parquet"}},
        "cached": {},
        "run_record": "/a/runs/r.json",
    }
    return format_summary({**base, **extra}).splitlines()[-1]
