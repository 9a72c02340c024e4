"""The run history's task: this run's row, then the last runs as the UI's table, after the promotion.

The history's files (one Parquet file per run under ``<root>/history/``, written once, read in time order) are
`lifecycle.history`'s; this module adds the UI's table artifact (the report draws the trend: `lifecycle.trend`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage

HISTORY_KEY = "linear-regression-history"
SHOWN = 30  # runs in the UI's history table


@task(name="record_history", cache_policy=NO_CACHE, persist_result=False, **storage.RETRIES)
def record_history(
    root: str,
    run_id: str,
    params: dict[str, Any],
    artifacts: dict[str, dict[str, str]],
    promotion: dict[str, Any],
) -> str:
    """Append this run's row (its own file) and publish the last runs as the ``linear-regression-history`` table."""
    ingest = [core.read_manifest(path) for path in artifacts["ingest"].values()]  # verified by the run
    summary = core.read_json(artifacts["evaluate"]["summary"])
    rows = sum(int(m["schema"]["rows"]) for m in ingest)
    model = storage.store_relative(root, artifacts["train"]["model"])
    now = dt.datetime.now(dt.UTC)
    digest = lifecycle.history.data_digest(ingest)
    row = lifecycle.history.history_row(now, run_id, digest, rows, params, summary, promotion["promoted"], model)
    path = lifecycle.history.write_row(root, row)
    shown = lifecycle.history.table_rows(lifecycle.history.read_history(root, SHOWN, get_run_logger().warning))
    for r in shown:
        r.pop("params")
    core.table_artifact(shown, key=HISTORY_KEY, description=f"The last {SHOWN} runs under this artifacts folder")
    get_run_logger().info(
        "read %s and the last %d runs; wrote %s; published %s",
        storage.public(artifacts["evaluate"]["summary"]),
        len(shown),
        core.describe(path),
        HISTORY_KEY,
    )
    return path
