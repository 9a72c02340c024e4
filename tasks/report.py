"""After the eight stages (and promotion and history): publish what the run produced to the Prefect UI as artifacts.

This is a task of its own, run last and never cached, because a stage whose result is cached does not run and
so could not publish anything: every run, cached or not, gets its metrics table, coefficients table and report.
It only reads the files the stages wrote. Keys are fixed, so the UI shows each key's history across runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
from tasks.evaluate import describe_gap, off_optimum_warning, reference_notes

METRICS_KEY = "linear-regression-metrics"
COEFFICIENTS_KEY = "linear-regression-coefficients"
REPORT_KEY = "linear-regression-report"

MODEL_LABELS = {"gradient_descent": "gradient descent", "least_squares": "least squares (closed form)"}
METRIC_COLUMNS = (("mse", "MSE"), ("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"))
UNTRUSTED = " — cannot be trusted"
NOT_AVAILABLE = "n/a"  # a metric that is undefined, e.g. R² of a target that does not vary
PLOTS = (("predicted_vs_actual", "Predicted vs actual (test set)"), ("loss_curve", "Training loss"))
TREND = "trend"  # test MSE over the last runs, from the run history (tasks/history.py)


def metrics_rows(metrics: pa.Table, reference_ok: bool = True) -> list[dict[str, Any]]:
    """The metrics Parquet (one row per model × part) as table-artifact rows with readable labels.

    An undefined metric (null) shows as "n/a"; an untrusted reference's rows say so in their label.
    """
    labels = dict(MODEL_LABELS)
    if not reference_ok:
        labels["least_squares"] += UNTRUSTED
    return [
        {
            "model": labels.get(row["model"], row["model"]),
            "part": row["part"],
            **{label: NOT_AVAILABLE if row[name] is None else float(row[name]) for name, label in METRIC_COLUMNS},
        }
        for row in metrics.to_pylist()
    ]


def coefficient_rows(coefficients: pa.Table) -> list[dict[str, Any]]:
    """The coefficients Parquet as rows: feature, gradient-descent weight, least-squares weight."""
    return [
        {
            "feature": row["feature"],
            "gradient descent": float(row["gd_weight"]),
            "least squares": float(row["ols_weight"]),
        }
        for row in coefficients.to_pylist()
    ]


def stage_rows(artifacts: Mapping[str, Any], cached: Mapping[str, bool]) -> list[dict[str, str]]:
    """Each stage in run order, and whether this run found it *Cached* or ran it (a partitioned stage is Cached
    only when every partition was)."""
    return [{"stage": stage, "this run": "Cached" if cached.get(stage) else "ran"} for stage in artifacts]


def describe_run(summary: Mapping[str, Any], promotion: Mapping[str, Any] | None) -> str:
    """The report's one-line description (an artifact card shows it): test MSE against least squares, the
    verdict. Plain text of numbers and fixed words: the caller escapes it all the same."""
    gd, ols = summary["metrics"]["test"]["mse"], summary["baseline"]["test"]["mse"]
    verdict = "" if promotion is None else "; promoted" if promotion["promoted"] else "; not promoted"
    return f"test MSE {gd:.5g} vs least squares {ols:.5g}{verdict}"


def headline(summary: Mapping[str, Any], promotion: Mapping[str, Any] | None) -> list[str]:
    """What a reader wants first: test MSE against least squares, and whether the model is now the champion."""
    gd, ols = summary["metrics"]["test"]["mse"], summary["baseline"]["test"]["mse"]
    warning = off_optimum_warning(summary)
    lines = [f"> **{core.escape_md(warning)}**"] if warning else []  # first: never a quiet success off the optimum
    lines.append(f"- test MSE **{gd:.6g}** (least squares {ols:.6g}); optimality gap {describe_gap(summary)}")
    if promotion is not None:
        verdict = "**promoted** to champion" if promotion["promoted"] else "**not promoted**: the champion stays"
        if promotion.get("model"):  # one champion per model: which model this run's is
            lines.append(f"- model: {core.escape_md(promotion['model'])}")
        lines.append(f"- {verdict}: {core.escape_md(promotion['reason'])}")
        lines.append(f"- champion: {core.escape_md(promotion['champion'])}")
    return lines


def render_report(
    parameters: Mapping[str, Any],
    summary: Mapping[str, Any],
    metrics: list[dict[str, Any]],
    coefficients: list[dict[str, Any]],
    plots: Mapping[str, bytes],
    artifacts: Mapping[str, Mapping[str, str]],
    promotion: Mapping[str, Any] | None = None,
    cached: Mapping[str, bool] | None = None,
) -> str:
    """The run's markdown report: the headline (test MSE vs least squares, the promotion decision, the plots,
    the trend over runs when ``plots`` has one), then the details: the stages (Cached or ran, when ``cached``
    is given), parameters, metrics, fit, coefficients, files."""
    training = summary["training"]
    stop = (
        f"converged after {summary['epochs_run']} epochs"
        if summary["converged"]
        else f"stopped at the epoch cap ({summary['epochs_run']} epochs)"
    )
    shown = [*PLOTS, *([(TREND, "Test MSE over runs (★ promoted)")] if TREND in plots else [])]
    files = [{"stage": s, "file": f, "path": p} for s, named in artifacts.items() for f, p in named.items()]
    table = lifecycle.markdown.markdown_table
    sections = [
        "# Linear regression run",
        *headline(summary, promotion),
        *(f"### {title}\n\n![{title}]({lifecycle.markdown.image_data_uri(plots[name])})" for name, title in shown),
        "## Details",
        *(["### Stages", table(stage_rows(artifacts, cached))] if cached is not None else []),
        "### Parameters",
        table([{"parameter": k, "value": v} for k, v in parameters.items()]),
        "Training as run (parameters first, then the preset):",
        table([{"setting": k, "value": v} for k, v in training.items()]),
        "### Metrics",
        table(metrics),
        "### Fit",
        *(f"> **{core.escape_md(note)}**" for note in reference_notes(summary)),
        f"- optimality gap (train MSE of gradient descent vs least squares, relative): **{describe_gap(summary)}**",
        f"- {stop}; step size {summary['lr']:.4g} (largest stable {summary['max_stable_lr']:.4g})",
        f"- features {summary.get('scaling', 'unknown')}; tensors {summary.get('dtype', 'unknown')} "
        f"({core.escape_md(str(summary.get('dtype_reason', 'not recorded')))})",
        "### Coefficients",
        table(coefficients),
        "### Artifact files",
        table(files),
    ]
    return "\n\n".join(sections) + "\n"


def _r2(summary: Mapping[str, Any]) -> str:
    r2 = summary["metrics"]["test"]["r2"]
    return NOT_AVAILABLE if r2 is None else f"{r2:.4f} (test)"


@task(name="publish_report", cache_policy=NO_CACHE, persist_result=False)
def publish_report(
    parameters: dict[str, Any],
    artifacts: dict[str, dict[str, str]],
    promotion: dict[str, Any] | None = None,
    seen: dict[str, Any] | None = None,
    cached: dict[str, bool] | None = None,
) -> dict[str, str]:
    """Read the evaluation and plot files; publish the metrics and coefficients tables and the markdown report,
    each described by its result, with the trend of ``seen`` (what `record_history` returned: the last runs the
    server knows) when there is one."""
    evaluation = artifacts["evaluate"]
    summary = core.read_json(evaluation["summary"])
    metrics = metrics_rows(core.read_parquet(evaluation["metrics"]), summary["reference_ok"])
    coefficients = coefficient_rows(core.read_parquet(evaluation["coefficients"]))
    plots = {name: core.read_bytes(artifacts["plot"][name]) for name, _ in PLOTS}
    if seen and seen["test_mse"]:
        plots[TREND] = lifecycle.trend.svg(seen["test_mse"], seen["promoted"])
    result = describe_run(summary, promotion)
    core.table_artifact(metrics, key=METRICS_KEY, description=core.escape_md(f"{result}; R² {_r2(summary)}"))
    largest = max((abs(r["gradient descent"] - r["least squares"]) for r in coefficients), default=0.0)
    core.table_artifact(
        coefficients,
        key=COEFFICIENTS_KEY,
        description=core.escape_md(f"{len(coefficients) - 1} weights and the intercept; largest GD − LS {largest:.3g}"),
    )
    report = render_report(parameters, summary, metrics, coefficients, plots, artifacts, promotion, cached)
    report_id = core.markdown_artifact(report, key=REPORT_KEY, description=core.escape_md(result))
    get_run_logger().info(
        "read %s, %s, %s and %d plots; published artifacts %s, %s and %s (%.1f kB)",
        evaluation["summary"],
        evaluation["metrics"],
        evaluation["coefficients"],
        len(plots),
        METRICS_KEY,
        COEFFICIENTS_KEY,
        REPORT_KEY,
        len(report) / 1000,
    )
    return {"metrics": METRICS_KEY, "coefficients": COEFFICIENTS_KEY, "report": REPORT_KEY, "report_id": str(report_id)}
