"""The run history's task: this run's row, then the last runs as the UI's table, after the promotion.

The history's files (one Parquet file per run under ``<root>/history/``, written once, read in time order) are
`lifecycle.history`'s; this module adds the UI's history artifact (the report draws the trend: `lifecycle.trend`).
Both show only the runs the Prefect server knows (`seen_history`): a run on a temporary server, or on another
server sharing the artifacts folder, has a row here but no page in this UI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage

HISTORY_KEY = "linear-regression-history"
SHOWN = 30  # runs read for the UI's history table and the report's trend


def ui_url() -> str | None:
    """The Prefect UI's URL when this process reports to a server that has one; None on a temporary server
    (its UI is gone when the run ends), where links stay relative."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return str(settings.ui_url).rstrip("/") if settings.api.url and settings.ui_url else None


def server_names(run_ids: list[str], warn: Callable[[str], Any]) -> dict[str, str] | None:
    """Name of each of ``run_ids`` the Prefect server knows (one request); None when it cannot be asked."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if not run_ids:
        return {}
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)), limit=len(run_ids)
            )
    except Exception as exc:  # the history is a report: shown unfiltered rather than not at all
        warn(f"could not ask the Prefect server which runs it knows ({str(exc).splitlines()[0][:200]})")
        return None
    return {str(run.id): run.name for run in runs}


def seen_history(root: str, warn: Callable[[str], Any]) -> tuple[pa.Table, dict[str, str], int]:
    """Of the last `SHOWN` recorded runs, those the Prefect server knows (all of them when it cannot be asked),
    their names there, and how many were recorded."""
    runs = lifecycle.history.read_history(root, SHOWN, warn)
    names = server_names(runs.column("flow_run_id").to_pylist(), warn)
    if names is None:
        return runs, {}, runs.num_rows
    known = pa.array([run in names for run in runs.column("flow_run_id").to_pylist()], pa.bool_())
    return runs.filter(known), names, runs.num_rows


def history_markdown(shown: list[dict[str, Any]], recorded: int) -> tuple[str, str]:
    """The history artifact's markdown (a narrow table, every cell escaped, runs linked) and its description."""
    if not shown:
        return "No recorded run of this artifacts folder is known to this Prefect server.", "no runs"
    newest = shown[0]
    best = min(shown, key=lambda r: float(r["test MSE"]))
    latest = f"latest test MSE {newest['test MSE']} ({'promoted' if newest['promoted'] != 'no' else 'not promoted'})"
    description = f"{len(shown)} runs, newest first: {latest}; best {best['test MSE']}"
    hidden = recorded - len(shown)
    note = f" ({hidden} more recorded by runs this server never saw)" if hidden else ""
    text = (
        f"# Last {len(shown)} runs of this artifacts folder{note}\n\n"
        "Newest first. Gap (optimality gap): the train MSE of gradient descent over least squares', minus 1. "
        "Data and model: the first digits of the data's sha256 and of the model's key.\n\n"
        + lifecycle.markdown.markdown_table(shown)
        + "\n"
    )
    return text, description


@task(name="record_history", cache_policy=NO_CACHE, persist_result=False, **storage.RETRIES)
def record_history(
    root: str,
    run_id: str,
    params: dict[str, Any],
    artifacts: dict[str, dict[str, str]],
    promotion: dict[str, Any],
) -> dict[str, Any]:
    """Append this run's row (its own file) and publish the last runs the server knows as the
    ``linear-regression-history`` markdown table (markdown, not a table artifact: its runs are links). Returns the
    row's path and those runs' test MSE and promotions, oldest first: the report's trend, read once per run."""
    warn = get_run_logger().warning
    ingest = [core.read_manifest(path) for path in artifacts["ingest"].values()]  # verified by the run
    summary = core.read_json(artifacts["evaluate"]["summary"])
    rows = sum(int(m["schema"]["rows"]) for m in ingest)
    model = storage.store_relative(root, artifacts["train"]["model"])
    now = dt.datetime.now(dt.UTC)
    digest = lifecycle.history.data_digest(ingest)
    row = lifecycle.history.history_row(now, run_id, digest, rows, params, summary, promotion["promoted"], model)
    path = lifecycle.history.write_row(root, row)
    runs, names, recorded = seen_history(root, warn)
    ui = ui_url()
    shown = lifecycle.history.shown_rows(runs, names, lambda text, rid: lifecycle.markdown.run_link(text, rid, ui))
    text, description = history_markdown(shown, recorded)
    core.markdown_artifact(text, key=HISTORY_KEY, description=core.escape_md(description))
    get_run_logger().info(
        "read %s and the last %d runs; wrote %s; published %s",
        storage.public(artifacts["evaluate"]["summary"]),
        len(shown),
        core.describe(path),
        HISTORY_KEY,
    )
    return {
        "path": path,
        "test_mse": runs.column("test_mse").to_pylist(),
        "promoted": runs.column("promoted").to_pylist(),
    }
