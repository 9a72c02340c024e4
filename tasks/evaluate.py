"""Stage 6: score the trained model and the closed-form least-squares fit on the same split.

Everything here is a sum over rows (metrics) or a mergeable factorization (the least-squares reference), so
one file and many partitions are evaluated by the same code, one chunk of rows in memory at a time. Tests
check both against scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task

from tasks import store

PARTS = ("train", "test")
STAGE = store.Stage("evaluate", __name__, files=("tensors_path", "model_path"))


CHUNK_ROWS = 1 << 18  # rows per float64 chunk: bounds the temporaries of predict, QR and metrics


@dataclass
class Sums:
    """What MSE, RMSE, MAE and R² are made of, added up a chunk at a time (Chan's update for the variance)."""

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


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    sums = Sums()
    sums.add(y_true, y_pred)
    return sums.metrics()


def predict(x: torch.Tensor, weights: np.ndarray, bias: float) -> np.ndarray:
    """``x @ weights + bias`` in float64, a chunk of rows at a time: no float64 copy of the whole of x."""
    return np.concatenate([chunk.double().numpy() @ weights + bias for chunk in x.split(CHUNK_ROWS)])


# --- the closed-form reference: least squares by QR, a chunk at a time ---------------------------


def qr_factor(x: torch.Tensor, y: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """R of the QR factorization of ``[x 1 y]`` (float64), built a chunk at a time (TSQR).

    R holds all least squares needs: ‖Aθ − y‖ = ‖R[:, :-1]θ − R[:, -1]‖. Factors of row blocks merge by
    factoring them stacked, so partitions (or chunks) factor separately. Unlike the normal equations XᵀX,
    QR does not square the condition number, and it shares no code with the statistics training uses.
    """
    d = x.shape[1]
    r = torch.zeros(0, d + 2, dtype=torch.float64)
    for xc, yc in zip(x.split(chunk_rows), y.split(chunk_rows), strict=True):
        ones = torch.ones(len(xc), 1, dtype=torch.float64)
        block = torch.cat([xc.double().cpu(), ones, yc.double().cpu().reshape(-1, 1)], dim=1)
        r = torch.linalg.qr(torch.cat([r, block]), mode="r").R
    return r


def least_squares(factors: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    """The OLS weights and intercept from the R factors of all the training rows (`qr_factor`), in float64."""
    r = torch.linalg.qr(torch.cat(factors), mode="r").R
    d = r.shape[1] - 1  # features + intercept
    theta = torch.linalg.lstsq(r[:d, :d], r[:d, d:], driver="gelsd").solution.ravel()  # gelsd: rank-deficient too
    return theta[:-1].numpy(), float(theta[-1])


def evaluate(partitions: Iterable[dict], trained: dict, ols: tuple[np.ndarray, float]) -> dict:
    """Metrics of the gradient-descent model and of the closed-form OLS fit ``ols``, in float64, plus their gap.

    ``partitions`` are tensors dicts (one for a single file), read one at a time: metrics are sums over rows.
    """
    weights = trained["weights"].double().numpy()
    sums = {(model, part): Sums() for model in ("gd", "ols") for part in PARTS}
    actual, predicted = [], []
    for tensors in partitions:
        for part in PARTS:
            x, y = tensors[f"x_{part}"], tensors[f"y_{part}"].double().numpy().ravel()
            gd = predict(x, weights, trained["bias"])
            sums["gd", part].add(y, gd)
            sums["ols", part].add(y, predict(x, *ols))
            if part == "test":
                actual.append(y)
                predicted.append(gd)
    metrics = {part: sums["gd", part].metrics() for part in PARTS}
    baseline = {part: sums["ols", part].metrics() for part in PARTS}
    features = list(trained["features"])
    return {
        "metrics": metrics,
        "baseline": baseline,
        "optimality_gap": (metrics["train"]["mse"] - baseline["train"]["mse"]) / baseline["train"]["mse"],
        "weights": dict(zip(features, weights.tolist(), strict=True)),
        "bias": float(trained["bias"]),
        "ols_weights": dict(zip(features, ols[0].tolist(), strict=True)),
        "ols_bias": float(ols[1]),
        "epochs_run": int(trained["epochs_run"]),
        "lr": float(trained["lr"]),
        "max_stable_lr": float(trained["max_stable_lr"]),
        "converged": bool(trained["converged"]),
        "engine": str(trained["engine"]),
        "train_seconds": float(trained["train_seconds"]),
        "training": dict(trained["config"]),
        "test_predictions": {"actual": np.concatenate(actual), "predicted": np.concatenate(predicted)},
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
    tensors = store.read_pt(tensors_path)
    ols = least_squares([qr_factor(tensors["x_train"], tensors["y_train"])])
    result = evaluate([tensors], store.read_pt(model_path), ols)
    args = {"tensors_path": tensors_path, "model_path": model_path}
    return _write(result, STAGE.outputs(root, args), read=f"{tensors_path} and {model_path}")


PARTITIONS_STAGE = store.Stage("evaluate", __name__, files=("tensors_paths", "stats_paths", "model_path"))


@task(name="evaluate_partitions")
def evaluate_model_on_partitions(
    tensors_paths: list[str], stats_paths: list[str], model_path: str, root: str
) -> dict[str, str]:
    """`evaluate_model` for a partitioned input: OLS from the partitions' QR factors, tensors read one at a time."""
    ols = least_squares([store.read_pt(path)["r"] for path in stats_paths])
    partitions = (store.read_pt(path) for path in tensors_paths)
    result = evaluate(partitions, store.read_pt(model_path), ols)
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
