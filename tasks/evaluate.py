"""Stage 6: score the trained model and the closed-form least-squares fit on the same split."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from tasks import store
from tasks.train import Scaler, Stats

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
    actual = tensors["y_test"].double().numpy().ravel()
    return summary(trained, metrics, baseline, ols.coef_, float(ols.intercept_), actual, predictions["test"])


@dataclass
class Sums:
    """What MSE, RMSE, MAE and R² are made of, added up a partition at a time (Chan's update for the variance)."""

    n: int = 0
    mean: float = 0.0  # of y
    m2: float = 0.0  # Σ (y − mean)²
    sse: float = 0.0
    sae: float = 0.0

    def add(self, y: np.ndarray, predicted: np.ndarray) -> None:
        if len(y) == 0:
            return
        n_b, mean_b = len(y), float(y.mean())
        m2_b = float(((y - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        error = y - predicted
        self.sse += float(error @ error)
        self.sae += float(np.abs(error).sum())

    def metrics(self) -> dict[str, float]:
        mse = self.sse / self.n
        constant_y_r2 = 1.0 if self.sse == 0 else 0.0  # scikit-learn's convention
        r2 = 1.0 - self.sse / self.m2 if self.m2 > 0 else constant_y_r2
        return {"mse": mse, "rmse": math.sqrt(mse), "mae": self.sae / self.n, "r2": r2}


def least_squares(stats: Stats) -> tuple[np.ndarray, float]:
    """The closed-form OLS fit from the summed statistics, in float64 (solved on standardized features)."""
    scaler = Scaler.fit(stats, enabled=True)
    scaled = scaler.transform_stats(stats)
    theta = torch.linalg.lstsq(scaled.g, scaled.c.unsqueeze(1)).solution.squeeze(1)
    weights, bias = scaler.unfold(theta[:-1], theta[-1])
    return weights.numpy(), bias


def evaluate_partitions(partitions: Iterable[dict], trained: dict, stats: Stats) -> dict:
    """`evaluate` for a partitioned input: one partition in memory at a time, OLS from the summed statistics."""
    weights = trained["weights"].double().numpy()
    ols_coef, ols_bias = least_squares(stats)
    sums = {(model, part): Sums() for model in ("gd", "ols") for part in PARTS}
    actual, predicted = [], []
    for tensors in partitions:
        for part in PARTS:
            x, y = tensors[f"x_{part}"], tensors[f"y_{part}"].double().numpy().ravel()
            gd = predict(x, weights, trained["bias"])
            sums["gd", part].add(y, gd)
            sums["ols", part].add(y, predict(x, ols_coef, ols_bias))
            if part == "test":
                actual.append(y)
                predicted.append(gd)
    metrics = {part: sums["gd", part].metrics() for part in PARTS}
    baseline = {part: sums["ols", part].metrics() for part in PARTS}
    return summary(trained, metrics, baseline, ols_coef, ols_bias, np.concatenate(actual), np.concatenate(predicted))


def summary(
    trained: dict,
    metrics: dict,
    baseline: dict,
    ols_coef: np.ndarray,
    ols_bias: float,
    actual: np.ndarray,
    predicted: np.ndarray,
) -> dict:
    """The evaluation summary both paths write: metrics, gap to OLS, both fits, how training went."""
    features = list(trained["features"])
    return {
        "metrics": metrics,
        "baseline": baseline,
        "optimality_gap": (metrics["train"]["mse"] - baseline["train"]["mse"]) / baseline["train"]["mse"],
        "weights": dict(zip(features, trained["weights"].double().tolist(), strict=True)),
        "bias": float(trained["bias"]),
        "ols_weights": dict(zip(features, ols_coef.tolist(), strict=True)),
        "ols_bias": float(ols_bias),
        "epochs_run": int(trained["epochs_run"]),
        "lr": float(trained["lr"]),
        "max_stable_lr": float(trained["max_stable_lr"]),
        "converged": bool(trained["converged"]),
        "engine": str(trained["engine"]),
        "train_seconds": float(trained["train_seconds"]),
        "training": dict(trained["config"]),
        "test_predictions": {"actual": actual, "predicted": predicted},
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
    args = {"tensors_path": tensors_path, "model_path": model_path}
    return _write(result, STAGE.outputs(root, args), read=f"{tensors_path} and {model_path}")


PARTITIONS_STAGE = store.Stage("evaluate", __name__, files=("tensors_paths", "stats_paths", "model_path"))


@task(name="evaluate_partitions")
def evaluate_model_on_partitions(
    tensors_paths: list[str], stats_paths: list[str], model_path: str, root: str
) -> dict[str, str]:
    """`evaluate_model` for a partitioned input: reads the partitions' tensors one at a time."""
    stats = Stats.total([Stats.from_dict(store.read_pt(path)) for path in stats_paths])
    partitions = (store.read_pt(path) for path in tensors_paths)
    result = evaluate_partitions(partitions, store.read_pt(model_path), stats)
    args = {"tensors_paths": tensors_paths, "stats_paths": stats_paths, "model_path": model_path}
    read = f"{len(tensors_paths)} partitions' tensors and {model_path}"
    return _write(result, PARTITIONS_STAGE.outputs(root, args), read=read)


def _write(result: dict, outputs: store.Outputs, read: str) -> dict[str, str]:
    predictions = pa.table(result.pop("test_predictions"))
    out = {
        "metrics": outputs.write_parquet(metrics_table(result), "metrics.parquet"),
        "coefficients": outputs.write_parquet(coefficients_table(result), "coefficients.parquet"),
        "predictions": outputs.write_parquet(predictions, "predictions.parquet"),
        "summary": outputs.write_json(result, "evaluation.json"),
    }
    get_run_logger().info(
        "read %s; test MSE %.4f (least squares %.4f), optimality gap %.2e; wrote %s",
        read,
        result["metrics"]["test"]["mse"],
        result["baseline"]["test"]["mse"],
        result["optimality_gap"],
        ", ".join(store.describe(p) for p in out.values()),
    )
    return out
