"""Stage 6: score the trained model and the closed-form least-squares fit on the same split."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from tasks import store

PARTS = ("train", "test")
STAGE = store.Stage("evaluate", __name__, files=("tensors_path", "model_path"))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    mse = float(mean_squared_error(y_true, y_pred))
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


CHUNK_ROWS = 1 << 20


def predict(x: torch.Tensor, weights: np.ndarray, bias: float) -> np.ndarray:
    """``x @ weights + bias`` in float64, a chunk of rows at a time: no float64 copy of the whole of x."""
    return np.concatenate([chunk.double().numpy() @ weights + bias for chunk in x.split(CHUNK_ROWS)])


def evaluate(tensors: dict, trained: dict) -> dict:
    """Metrics of the gradient-descent model and of scikit-learn's OLS fit, in float64, plus their gap."""
    weights = trained["weights"].double().numpy()
    # OLS in float64 needs x_train in float64 once; copy_X=False lets scikit-learn centre that copy in place
    ols = LinearRegression(copy_X=False).fit(
        tensors["x_train"].double().numpy(), tensors["y_train"].double().numpy().ravel()
    )
    metrics, baseline, predictions = {}, {}, {}
    for part in PARTS:
        x, y = tensors[f"x_{part}"], tensors[f"y_{part}"].double().numpy().ravel()
        predictions[part] = predict(x, weights, trained["bias"])
        metrics[part] = regression_metrics(y, predictions[part])
        baseline[part] = regression_metrics(y, predict(x, ols.coef_, float(ols.intercept_)))
    features = list(trained["features"])
    return {
        "metrics": metrics,
        "baseline": baseline,
        "optimality_gap": (metrics["train"]["mse"] - baseline["train"]["mse"]) / baseline["train"]["mse"],
        "weights": dict(zip(features, weights.tolist(), strict=True)),
        "bias": float(trained["bias"]),
        "ols_weights": dict(zip(features, ols.coef_.tolist(), strict=True)),
        "ols_bias": float(ols.intercept_),
        "epochs_run": int(trained["epochs_run"]),
        "lr": float(trained["lr"]),
        "max_stable_lr": float(trained["max_stable_lr"]),
        "converged": bool(trained["converged"]),
        "engine": str(trained["engine"]),
        "train_seconds": float(trained["train_seconds"]),
        "training": dict(trained["config"]),
        "test_predictions": {"actual": tensors["y_test"].double().numpy().ravel(), "predicted": predictions["test"]},
    }


def metrics_table(result: dict) -> pa.Table:
    """One row per (model, part): the long table the UI and Parquet readers want."""
    rows = [
        {"model": model, "part": part, **result[key][part]}
        for model, key in (("gradient_descent", "metrics"), ("least_squares", "baseline"))
        for part in PARTS
    ]
    return pa.Table.from_pylist(rows)


def coefficients_table(result: dict) -> pa.Table:
    names = [*result["weights"], "(intercept)"]
    return pa.table(
        {
            "feature": names,
            "gd_weight": [*result["weights"].values(), result["bias"]],
            "ols_weight": [*result["ols_weights"].values(), result["ols_bias"]],
        }
    )


@task(name="evaluate_model")
def evaluate_model(tensors_path: str, model_path: str, root: str) -> dict[str, str]:
    """Read tensors and model; write metrics, coefficients and test predictions (Parquet) and a JSON summary."""
    result = evaluate(store.read_pt(tensors_path), store.read_pt(model_path))
    outputs = STAGE.outputs(root, {"tensors_path": tensors_path, "model_path": model_path})
    predictions = pa.table(result.pop("test_predictions"))
    out = {
        "metrics": outputs.write_parquet(metrics_table(result), "metrics.parquet"),
        "coefficients": outputs.write_parquet(coefficients_table(result), "coefficients.parquet"),
        "predictions": outputs.write_parquet(predictions, "predictions.parquet"),
        "summary": outputs.write_json(result, "evaluation.json"),
    }
    get_run_logger().info(
        "read %s and %s; test MSE %.4f (least squares %.4f), optimality gap %.2e; wrote %s",
        tensors_path,
        model_path,
        result["metrics"]["test"]["mse"],
        result["baseline"]["test"]["mse"],
        result["optimality_gap"],
        ", ".join(store.describe(p) for p in out.values()),
    )
    return out
