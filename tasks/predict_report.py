"""After the predict stage: publish the prediction run to the Prefect UI (row count, histogram, model).

A task of its own, never cached, for the same reason as tasks/report.py: a cached stage does not run, so every
run publishes here. Outside the predict stage's module, so an edit to the report leaves the stage's key alone.
"""

from __future__ import annotations

import io

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage
from tasks.predict import BATCH_ROWS, PREDICTION

REPORT_KEY = "linear-regression-predictions"
HISTOGRAM_BINS = 40


def histogram(paths: list[str], bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray, int]:
    """Counts and edges of the predictions over every file, in two streamed passes (range, then counts)."""
    low, high, rows = np.inf, -np.inf, 0
    for path in paths:
        for batch in core.open_parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=[PREDICTION]):
            y = batch.column(0).to_numpy()
            if y.size:
                low, high, rows = min(low, y.min()), max(high, y.max()), rows + y.size
    if rows == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0, 1, bins + 1), 0
    edges = np.linspace(low, high, bins + 1) if high > low else np.linspace(low - 0.5, high + 0.5, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for path in paths:
        for batch in core.open_parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=[PREDICTION]):
            counts += np.histogram(batch.column(0).to_numpy(), bins=edges)[0]
    return counts, edges, rows


def histogram_png(counts: np.ndarray, edges: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel(PREDICTION)
    ax.set_ylabel("rows")
    ax.set_title("Predictions")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def render_report(rows: int, model: str, features: list[str], paths: list[str], png: bytes) -> str:
    image = lifecycle.markdown.image_data_uri(png)
    files = "\n".join(f"- {core.escape_md(p)}" for p in paths)
    return "\n".join(
        [
            "# Predictions",
            "",
            "| | |",
            "|---|---|",
            f"| rows | {rows} |",
            f"| model | {core.escape_md(model)} |",
            f"| features | {', '.join(map(core.escape_md, features))} |",
            "",
            f"![Histogram of predictions]({image})",
            "",
            "Files:",
            files,
        ]
    )


@task(name="publish_predictions", cache_policy=NO_CACHE, persist_result=False)
def publish_predictions(paths: list[str], model: str, features: list[str]) -> int:
    """Publish the row count, a histogram of the predictions and the model used; every run, cached or not."""
    counts, edges, rows = histogram(paths)
    shown = [storage.public(p) for p in paths]  # on an object store: the URLs, not the scratch mirror's files
    report = render_report(rows, storage.public(model), features, shown, histogram_png(counts, edges))
    core.markdown_artifact(report, key=REPORT_KEY, description="Rows, histogram and model of this prediction run")
    get_run_logger().info("read %d predictions from %d file(s); published the report %s", rows, len(paths), REPORT_KEY)
    return rows
