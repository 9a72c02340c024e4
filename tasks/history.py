"""The run history's task: this run's row, then the last runs as the UI's table, after the promotion.

The history's files (one Parquet file per run under ``<root>/history/``, written once, read in time order) are
`lifecycle.history`'s; this module adds what the UI shows: the table artifact and the report's trend plot.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage

HISTORY_KEY = "linear-regression-history"
SHOWN = 30  # runs in the UI's history table


def trend_png(history: pa.Table) -> bytes:
    """Test MSE over runs (log scale), promotions marked."""
    from tasks.plot import figure, png_bytes

    mse = history.column("test_mse").to_pylist()
    promoted = history.column("promoted").to_pylist()
    runs = list(range(1, len(mse) + 1))
    fig = figure(6, 3.5)
    ax = fig.subplots()
    ax.plot(runs, mse, marker="o", markersize=3, linewidth=1, label="test MSE")
    won = [(r, m) for r, m, p in zip(runs, mse, promoted, strict=True) if p]
    if won:
        ax.scatter(*zip(*won, strict=True), marker="*", s=120, color="tab:orange", zorder=3, label="promoted")
    if all(m is not None and m > 0 for m in mse):
        ax.set_yscale("log")
    ax.set(xlabel="run (oldest first)", ylabel="test MSE", title=f"Test MSE over the last {len(mse)} runs")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return png_bytes(fig)


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
