"""The report's pure functions, without Prefect: table rows from the stage files, and the markdown report."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

import stagecore as core
from lifecycle.markdown import image_data_uri, markdown_table
from tasks.evaluate import coefficients_table, metrics_table
from tasks.plot import loss_curve, predicted_vs_actual
from tasks.report import coefficient_rows, describe_run, metrics_rows, render_report

pytestmark = pytest.mark.no_server

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(scale: float) -> dict[str, dict[str, float]]:
    return {
        part: {"mse": scale * k, "rmse": (scale * k) ** 0.5, "mae": 0.5 * scale * k, "r2": 1 - 0.01 * k}
        for part, k in (("train", 1.0), ("test", 2.0))
    }


@pytest.fixture
def result() -> dict:
    """What `tasks.evaluate.evaluate` returns, with made-up numbers that differ in every cell."""
    return {
        "metrics": _metrics(3.0),
        "baseline": _metrics(2.0),
        "reference_ok": True,
        "reference_problem": None,
        "reference_rank": 3,
        "optimality_gap": 1.25e-9,
        "optimality_gap_abs": 2.5e-9,
        "weights": {"TV": 0.0458, "radio": 0.1885},
        "bias": 2.979,
        "ols_weights": {"TV": 0.0457, "radio": 0.1886},
        "ols_bias": 2.98,
        "epochs_run": 40,
        "lr": 0.5,
        "max_stable_lr": 1.0,
        "converged": False,
        "training": {"method": "scratch", "epochs": 40, "lr": "auto", "tol": 1e-7},
    }


def test_metrics_rows_cover_both_models_and_parts(result):
    rows = metrics_rows(metrics_table(result))
    assert [(r["model"], r["part"]) for r in rows] == [
        ("gradient descent", "train"),
        ("gradient descent", "test"),
        ("least squares (closed form)", "train"),
        ("least squares (closed form)", "test"),
    ]
    expected = {"model": "gradient descent", "part": "test", "MSE": 6.0, "RMSE": 6.0**0.5, "MAE": 3.0, "R²": 0.98}
    assert rows[1] == expected
    assert rows[2]["MSE"] == 2.0


def test_coefficient_rows_end_with_the_intercept(result):
    rows = coefficient_rows(coefficients_table(result))
    assert rows == [
        {"feature": "TV", "gradient descent": 0.0458, "least squares": 0.0457},
        {"feature": "radio", "gradient descent": 0.1885, "least squares": 0.1886},
        {"feature": "(intercept)", "gradient descent": 2.979, "least squares": 2.98},
    ]


def test_markdown_table_escapes_pipes_and_shows_none():
    table = markdown_table([{"a": "x|y", "b": None}, {"a": 1.0e-12, "b": ["TV", "radio"]}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | — |", "| 1e-12 | TV, radio |"]


def test_report_embeds_both_plots_and_lists_everything(result):
    plots = {
        "predicted_vs_actual": predicted_vs_actual(np.array([1.0, 2.0, 3.0]), np.array([1.1, 1.9, 3.2]), "sales"),
        "loss_curve": loss_curve(np.array([4.0, 2.0, 1.0])),
    }
    files = {
        "evaluate": {"metrics": "/a/evaluate/k/metrics.parquet"},
        "plot": {"loss_curve": "/a/plot/k/loss_curve.png"},
    }
    params = {"epochs": 40, "features": None, "target": "sales"}
    metrics = metrics_rows(metrics_table(result))
    report = render_report(params, result, metrics, coefficient_rows(coefficients_table(result)), plots, files)

    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report)
    assert [base64.b64decode(i) for i in images] == [plots["predicted_vs_actual"], plots["loss_curve"]]
    assert all(base64.b64decode(i)[:8] == PNG_SIGNATURE for i in images)
    assert "| epochs | 40 |" in report and "| features | — |" in report
    assert "| gradient descent | test | 6 | 2.44949 | 3 | 0.98 |" in report
    assert "| least squares \\(closed form\\) | train | 2 |" in report  # escaped: rendered as written
    assert "**1.250e-09**" in report
    assert "stopped at the epoch cap (40 epochs)" in report
    assert "| \\(intercept\\) | 2.979 | 2.98 |" in report
    for stage, names in files.items():
        for name, path in names.items():
            assert f"| {stage} | {core.escape_md(name)} | {core.escape_md(path)} |" in report


def test_image_data_uri_round_trips():
    uri = image_data_uri(PNG_SIGNATURE + b"rest")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == PNG_SIGNATURE + b"rest"


def test_a_model_off_the_optimum_is_the_reports_first_line(result):
    off = {**result, "off_optimum": "its train MSE 3 is 0.5 above the least-squares optimum 2 (relative)"}
    off |= {"scaling": "standardize", "dtype": "float64", "dtype_reason": "small"}
    png = loss_curve(np.array([4.0, 2.0, 1.0]))
    plots = {"predicted_vs_actual": png, "loss_curve": png}
    tables = metrics_rows(metrics_table(result)), coefficient_rows(coefficients_table(result))
    report = render_report({"epochs": 40}, off, *tables, plots, {"plot": {"loss_curve": "/a/loss_curve.png"}})
    first = report.split("\n\n")[1]
    assert first.startswith(r"> **WARNING\: the model is off the least\-squares optimum\: its train MSE 3 is 0\.5")
    assert "\\-\\-scaling auto" in first and "\\-\\-promote\\-off\\-optimum" in first
    assert "- features standardize; tensors float64 (small)" in report
    on = render_report({"epochs": 40}, result, *tables, plots, {"plot": {"loss_curve": "/a/loss_curve.png"}})
    assert "WARNING" not in on  # on the optimum: no warning


def test_the_report_says_which_stages_were_cached_and_the_card_says_the_result(result):
    png = loss_curve(np.array([4.0, 2.0, 1.0]))
    files = {"ingest": {"table": "/a/i.parquet"}, "train": {"model": "/a/m.pt"}, "plot": {"loss_curve": "/a/l.png"}}
    cached = {"ingest": True, "train": False, "plot": False}
    tables = metrics_rows(metrics_table(result)), coefficient_rows(coefficients_table(result))
    report = render_report({"epochs": 40}, result, *tables, {"predicted_vs_actual": png, "loss_curve": png}, files)
    assert "### Stages" not in report  # no cache states given, no column made up
    report = render_report({"epochs": 40}, result, *tables, {"predicted_vs_actual": png, "loss_curve": png}, files,
                           None, cached)  # fmt: skip
    stages = report.split("### Stages\n\n", 1)[1].split("\n\n", 1)[0]
    assert stages.splitlines() == ["| stage | this run |", "|---|---|", "| ingest | Cached |", "| train | ran |",
                                   "| plot | ran |"]  # fmt: skip
    assert describe_run(result, None) == "test MSE 6 vs least squares 4"
    promotion = {"promoted": False, "reason": "worse", "champion": "/c/model.pt"}
    assert describe_run({**result, "metrics": _metrics(1.234567891)}, promotion) == (
        "test MSE 2.4691 vs least squares 4; not promoted"
    )
