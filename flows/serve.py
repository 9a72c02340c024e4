"""Serve the flow on the daily schedule from this process, for users without a work pool and worker.

``python -m flows.serve`` (or ``make serve``) creates the deployment ``linear-regression/served`` with the
schedule of the ``daily`` deployment in ``prefect.yaml`` (read from there, so the two cannot drift apart) and
runs its flow runs, scheduled or triggered, until stopped with Ctrl-C.

Stopping it pauses the deployment (Prefect's ``pause_on_shutdown``), so no runs pile up as Late while nothing
serves them; the UI shows the deployment as paused. Starting it again un-pauses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.schedules import Cron, Schedule
from prefect.settings import PREFECT_API_URL

from flows.cli import exit_with, print_error
from storage.errors import InputError
from storage.project import PROJECT_ROOT

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
SCHEDULED_DEPLOYMENT = "daily"
SERVED_NAME = "served"


def daily_schedule(path: Path | None = None) -> Schedule:
    """The cron schedule of the ``daily`` deployment in ``prefect.yaml``: the one place it is written."""
    path = path or PREFECT_YAML
    try:
        config: dict[str, Any] = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the deployments file ({exc})") from None
    listed = config.get("deployments") if isinstance(config, dict) else None
    deployments = {d.get("name"): d for d in listed or [] if isinstance(d, dict)}
    schedules = (deployments.get(SCHEDULED_DEPLOYMENT) or {}).get("schedules") or []
    crons = [s for s in schedules if s.get("cron")]
    if len(crons) != 1:
        raise InputError(f"{path}: deployment {SCHEDULED_DEPLOYMENT!r} must have exactly one cron schedule")
    return Cron(crons[0]["cron"], timezone=crons[0].get("timezone") or "UTC")


def check_server() -> None:
    """Serving needs a lasting server to hold the deployment and its schedule: refuse a missing or dead one."""
    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(
            "PREFECT_API_URL is not set: start a server with `make server` and serve with `make serve`, "
            "or set PREFECT_API_URL to your server's API"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise InputError(f"cannot reach the Prefect API at {url} ({problem}); start it with `make server`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description="Serve the linear-regression flow on the daily schedule of prefect.yaml until Ctrl-C "
        "(which pauses the deployment; starting again resumes it).",
    )
    parser.add_argument("--name", default=SERVED_NAME, help=f"deployment name (default: {SERVED_NAME})")
    args = parser.parse_args(argv)
    try:
        schedule = daily_schedule()
        check_server()
    except InputError as exc:
        print_error(exc)
        return 2
    from flows.train import linear_regression  # after the schedule checks: importing torch takes seconds

    linear_regression.serve(name=args.name, schedules=[schedule], pause_on_shutdown=True)
    return 0


if __name__ == "__main__":
    exit_with(main())
