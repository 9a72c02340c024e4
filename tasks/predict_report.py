"""After the predict stage: publish the prediction run to the Prefect UI (its input, the model and the run that
trained it, the rows, a summary and a histogram of the predictions).

A task of its own, never cached, for the same reason as tasks/report.py: a cached stage does not run, so every
run publishes here. Outside the predict stage's module, so an edit to the report leaves the stage's key alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage
from tasks.drift import table_rows
from tasks.history import server_names, ui_url
from tasks.predict import BATCH_ROWS, PREDICTION

REPORT_KEY = "linear-regression-predictions"
HISTOGRAM_BINS = 40
STATISTICS = ("count", "mean", "std", "min", "25% ≈", "50% ≈", "75% ≈", "max")


FINE = 100  # fine bins per histogram bin: the quartiles are read from them, to 1/4000 of the range


class Summary(NamedTuple):
    """The predictions at a glance, as pandas' ``describe`` gives them (std with one degree of freedom)."""

    count: int
    mean: float
    std: float
    min: float
    q1: float
    median: float
    q3: float
    max: float


def _batches(paths: list[str]) -> Iterator[np.ndarray]:
    for path in paths:
        for batch in core.open_parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=[PREDICTION]):
            y = batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            yield y[np.isfinite(y)]


def histogram(paths: list[str], bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray, Summary | None]:
    """Counts and edges of the predictions over every file, and their summary, in two streamed passes: range,
    count, mean and variance (Chan's merge of each batch's), then counts in ``bins`` × `FINE` bins, from which
    the quartiles are interpolated. None for the summary when there is no finite prediction."""
    low, high, rows, mean, m2 = np.inf, -np.inf, 0, 0.0, 0.0
    for y in _batches(paths):
        if y.size:
            n, m = y.size, float(y.mean())
            delta, total = m - mean, rows + n
            mean, m2 = mean + delta * n / total, m2 + float(((y - m) ** 2).sum()) + delta**2 * rows * n / total
            low, high, rows = min(low, float(y.min())), max(high, float(y.max())), total
    if rows == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0, 1, bins + 1), None
    lo, hi = (low, high) if high > low else (low - 0.5, high + 0.5)
    fine_edges = np.linspace(lo, hi, bins * FINE + 1)
    fine = np.zeros(bins * FINE, dtype=np.int64)
    for y in _batches(paths):
        fine += np.histogram(y, bins=fine_edges)[0]
    cumulative = np.concatenate([[0], np.cumsum(fine)]) / rows
    q1, median, q3 = (float(np.interp(q, cumulative, fine_edges)) for q in (0.25, 0.5, 0.75))
    if high == low:
        q1 = median = q3 = low
    std = math.sqrt(m2 / (rows - 1)) if rows > 1 else math.nan
    summary = Summary(rows, mean, std, low, min(max(q1, low), high), median, min(max(q3, low), high), high)
    return fine.reshape(bins, FINE).sum(axis=1), fine_edges[::FINE], summary


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


def render_report(
    data: str,
    model: str,
    trained: object,
    features: list[str],
    summary: Summary | None,
    paths: list[str],
    png: bytes,
    drift: dict[str, Any] | None = None,
) -> str:
    """The prediction run's page: its input, the model and the training run it came from, the rows, a summary
    of the predictions and their histogram, then the files; every string from data or users escaped."""
    table = lifecycle.markdown.markdown_table
    shown = (
        [{"statistic": name, PREDICTION: value} for name, value in zip(STATISTICS, summary, strict=True)]
        if summary is not None
        else [{"statistic": "count", PREDICTION: 0}]
    )
    source = [
        {"about": "input", "value": data},
        {"about": "model", "value": model},
        {"about": "trained by", "value": trained},
        {"about": "features", "value": features},
        {"about": "rows", "value": summary.count if summary is not None else 0},
    ]
    return "\n\n".join(
        [
            "# Predictions",
            table(source),
            "### Summary",
            table(shown),
            f"![Histogram of predictions]({lifecycle.markdown.image_data_uri(png)})",
            *(["### Drift from the training data", table(table_rows(drift))] if drift is not None else []),
            "### Files",
            "\n".join(f"- {core.escape_md(p)}" for p in paths),
        ]
    )


def describe(data: str, summary: Summary | None) -> str:
    """The artifact's one line: how many predictions of what input, centred where (escaped by the caller)."""
    if summary is None:
        return f"no predictions for {data}"
    return f"{summary.count} predictions for {data}: mean {summary.mean:.5g}, median ≈ {summary.median:.5g}"


def training_run(root: str, model: str, warn: Callable[[str], Any]) -> object:
    """The run that trained ``model``, linked (a `lifecycle.markdown.run_link`) when this Prefect server knows it:
    the first recorded run naming the model (later runs of the same settings found it cached)."""
    try:
        relative = storage.store_relative(root, model)
    except ValueError:
        return "not recorded (a model from outside the artifacts folder)"
    runs = lifecycle.history.read_history(root, warn=warn).to_pylist()
    row = next((r for r in runs if r["model"] == relative), None)
    if row is None:
        return "not recorded in the run history"
    run_id = row["flow_run_id"]
    names = server_names([run_id], warn) or {}
    when = f"{row['time']:%Y-%m-%d %H:%M} UTC"
    text = f"{names[run_id]} ({when})" if run_id in names else f"run {run_id} ({when}; not on this server)"
    return lifecycle.markdown.run_link(text, run_id, ui_url()) if run_id in names else text


@task(name="publish_predictions", cache_policy=NO_CACHE, persist_result=False)
def publish_predictions(
    paths: list[str], model: str, features: list[str], data: str, root: str, drift: dict[str, Any] | None = None
) -> int:
    """Publish the input, the model and its training run, the row count, a summary and a histogram of the
    predictions, and the input's drift (`tasks.drift`); every run, cached or not."""
    logger = get_run_logger()
    counts, edges, summary = histogram(paths)
    shown = [storage.public(p) for p in paths]  # on an object store: the URLs, not the scratch mirror's files
    data, public_model = storage.redact(data), storage.public(model)
    trained = training_run(root, model, logger.warning)
    png = histogram_png(counts, edges)
    report = render_report(data, public_model, trained, features, summary, shown, png, drift)
    core.markdown_artifact(report, key=REPORT_KEY, description=core.escape_md(describe(data, summary)))
    rows = summary.count if summary is not None else 0
    logger.info("read %d predictions from %d file(s); published the report %s", rows, len(paths), REPORT_KEY)
    return rows
