"""Stage 6: score the trained model and the closed-form least-squares fit on the same split (`linreg.evaluate`).

Everything there is a sum over rows (metrics) or a mergeable factorization (the least-squares reference), so
one file and many partitions are evaluated by the same code, one chunk of rows in memory at a time. This stage
reads the partitions and the model, writes the tables and the summary, and words the gap for people.
"""

from __future__ import annotations

import pyarrow as pa
from prefect import get_run_logger

import stagecore as core
from linreg.config import PARTS
from linreg.precision import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF

# r2 is null where the part's target does not vary; a fixed schema keeps it float64 even when all are null
METRICS_SCHEMA = pa.schema(
    [("model", pa.string()), ("part", pa.string())] + [(m, pa.float64()) for m in ("mse", "rmse", "mae", "r2")]
)


def metrics_table(result: dict) -> pa.Table:
    """One row per (model, part): the long table the UI and Parquet readers want."""
    rows = [
        {"model": model, "part": part, **result[key][part]}
        for model, key in (("gradient_descent", "metrics"), ("least_squares", "baseline"))
        for part in PARTS
    ]
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def coefficients_table(result: dict) -> pa.Table:
    names = [*result["weights"], "(intercept)"]
    return pa.table(
        {
            "feature": names,
            "gd_weight": [*result["weights"].values(), result["bias"]],
            "ols_weight": [*result["ols_weights"].values(), result["ols_bias"]],
        }
    )


@core.stage("evaluate", outputs=("metrics", "coefficients", "predictions", "summary"))
def evaluate_model(
    tensors_paths: core.Files, stats_paths: core.Files, model_path: core.File, root: str
) -> dict[str, str]:
    """Score the model and the least-squares fit on every partition (a single file is the one partition); write
    metrics, coefficients and test predictions (Parquet) and a JSON summary.

    The reference merges the partitions' R factors (from ``stats.pt``); the tensors are read one at a time.
    """
    from linreg.evaluation import evaluate  # here: a fully cached run never imports torch
    from linreg.reference import least_squares
    from linreg.stats import Stats

    parts = [core.read_pt(path) for path in stats_paths]
    stored = FLOAT32_UNIT_ROUNDOFF if any(p["dtype"] == "float32" for p in parts) else FLOAT64_UNIT_ROUNDOFF
    total = Stats.total([Stats.from_dict(p) for p in parts])
    ols = least_squares([total.r], stored, total.x_shift, total.y_shift)
    partitions = (core.read_pt(path) for path in tensors_paths)
    result = evaluate(partitions, core.read_pt(model_path), ols)
    read = f"{len(tensors_paths)} partition(s)' tensors and {model_path}"
    return _write(result, core.outputs(), read=read)


def _write(result: dict, outputs: core.Outputs, read: str) -> dict[str, str]:
    predictions = pa.table(result.pop("test_predictions"))
    out = {
        "metrics": outputs.write_parquet(metrics_table(result), "metrics.parquet"),
        "coefficients": outputs.write_parquet(coefficients_table(result), "coefficients.parquet"),
        "predictions": outputs.write_parquet(predictions, "predictions.parquet"),
        "summary": outputs.write_json(result, "evaluation.json"),
    }
    logger = get_run_logger()
    logger.info(
        "read %s; test MSE %.4f (least squares %.4f), optimality gap %s; wrote %s",
        read,
        result["metrics"]["test"]["mse"],
        result["baseline"]["test"]["mse"],
        describe_gap(result),
        ", ".join(core.describe(p) for p in out.values()),
    )
    if not result["reference_ok"]:
        logger.warning("the least-squares reference cannot be trusted: %s", result["reference_problem"])
    if warning := off_optimum_warning(result):
        logger.warning("%s", warning.removeprefix("WARNING: "))
    return out


def describe_gap(result: dict) -> str:
    """The optimality gap in words, for the log, the printed summary and the report: never a ratio of noise."""
    if not result["reference_ok"]:
        return "n/a (the least-squares reference cannot be trusted)"
    if result["optimality_gap"] is None:
        return f"n/a (exact fit; train MSE difference {result['optimality_gap_abs']:.3e})"
    return f"{result['optimality_gap']:.3e}"


def off_optimum_warning(result: dict) -> str | None:
    """The model is off the least-squares optimum: why, and what to do; None when it is on it."""
    if not result.get("off_optimum"):
        return None
    todo = []
    if result["scaling"] not in ("whiten", "unknown"):
        todo.append("--scaling auto (whitened features)")
    if result["training"].get("lr", "auto") != "auto":
        todo.append("--lr auto")
    if not result["converged"]:
        todo.append("more --epochs")
    if result["dtype"] == "float32":
        todo.append("--dtype float64")
    todo = todo or ["a smaller --tol"]
    return (
        f"WARNING: the model is off the least-squares optimum: {result['off_optimum']}; try {', '.join(todo)}; "
        "it is not promoted unless --promote-off-optimum is given"
    )


def reference_notes(result: dict) -> list[str]:
    """What a reader must know before comparing with the reference: untrusted, or not unique."""
    notes = []
    if not result["reference_ok"]:
        notes.append(
            f"WARNING: the least-squares reference cannot be trusted: {result['reference_problem']}; "
            "its numbers are shown, but nothing is measured against them"
        )
    columns = len(result["weights"]) + 1
    if result["reference_rank"] < columns:
        notes.append(
            f"note: the features are collinear (rank {result['reference_rank']} of {columns} columns with the "
            f"intercept, to the {result['dtype']} precision of the rows; e.g. a constant feature, or one a "
            "combination of others): least squares has many solutions and the weights shown are one of them; "
            "compare the MSEs, not the weights"
        )
    return notes
