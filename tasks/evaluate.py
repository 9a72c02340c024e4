"""Stage 6: score the trained model and the closed-form least-squares fit on the same split.

Everything here is a sum over rows (metrics) or a mergeable factorization (the least-squares reference), so
one file and many partitions are evaluated by the same code, one chunk of rows in memory at a time. Tests
check both against scikit-learn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task

import stagecore as core

PARTS = ("train", "test")


CHUNK_ROWS = 1 << 18  # rows per float64 chunk: bounds the temporaries of predict, QR and metrics


@dataclass
class Sums:
    """What MSE, RMSE, MAE and R² are made of, added up a chunk at a time (Chan's update for the variance)."""

    n: int = 0
    mean: float = 0.0  # of y
    m2: float = 0.0  # Σ (y − mean)²
    sse: float = 0.0
    sae: float = 0.0
    y_min: float = math.inf  # exact, so "the target is constant" needs no tolerance
    y_max: float = -math.inf

    def add(self, y: np.ndarray, predicted: np.ndarray) -> None:
        self.merge(Sums.of(y, predicted))

    @classmethod
    def of(cls, y: np.ndarray, predicted: np.ndarray) -> Sums:
        """The sums of one block of rows."""
        if len(y) == 0:
            return cls()
        return cls.of_target(y).with_error(y - predicted)

    @classmethod
    def of_target(cls, y: np.ndarray) -> Sums:
        """The target's part of one (non-empty) block's sums, which every model scored on it shares."""
        mean = float(y.mean())
        return cls(len(y), mean, float(((y - mean) ** 2).sum()), 0.0, 0.0, float(y.min()), float(y.max()))

    def with_error(self, error: np.ndarray) -> Sums:
        """These target sums with the errors ``y − predicted`` of one model on the same rows."""
        return replace(self, sse=float(error @ error), sae=float(np.abs(error).sum()))

    def merge(self, other: Sums) -> None:
        """Add the sums of other rows (Chan's update): in a fixed order, the result does not depend on threads."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n
        self.sse += other.sse
        self.sae += other.sae
        self.y_min, self.y_max = min(self.y_min, other.y_min), max(self.y_max, other.y_max)

    @property
    def mean_square(self) -> float:
        """Σ y² / n: the scale of the target, what "an MSE of about zero" is measured against."""
        return self.m2 / self.n + self.mean**2

    def metrics(self) -> dict[str, float | None]:
        """MSE, RMSE, MAE and R²; R² is None where it is undefined: the target does not vary over these rows.

        (scikit-learn reports 0.0 or 1.0 there by convention: a number that looks like a result but is not.)
        """
        mse = self.sse / self.n
        r2 = None if self.y_min == self.y_max else 1.0 - self.sse / self.m2
        return {"mse": mse, "rmse": math.sqrt(mse), "mae": self.sae / self.n, "r2": r2}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    sums = Sums()
    sums.add(y_true, y_pred)
    return sums.metrics()


Model = tuple[np.ndarray, float]  # float64 weights, bias


def score(
    x: torch.Tensor, y: torch.Tensor, models: dict[str, Model], keep: str | None = None
) -> tuple[dict[str, Sums], np.ndarray | None]:
    """Each model's `Sums` over the rows of ``x``, ``y``, and the predictions of model ``keep`` (else None).

    A chunk of rows at a time, in float64, the chunks scored on threads (numpy releases the GIL) and merged in
    their order, so the sums are the same on any number of threads. Each chunk is converted to float64, and its
    target summed, once for all the models.
    """

    def chunk(rows: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, Sums], np.ndarray | None]:
        xd, yd = rows[0].double().numpy(), rows[1].double().numpy().ravel()
        predicted = {name: xd @ w + b for name, (w, b) in models.items()}
        target = Sums.of_target(yd) if len(yd) else None
        sums = {name: target.with_error(yd - p) if target is not None else Sums() for name, p in predicted.items()}
        return sums, predicted[keep] if keep else None

    total = {name: Sums() for name in models}
    kept: list[np.ndarray] = []
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="score") as pool:
        for sums, predicted in pool.map(chunk, zip(x.split(CHUNK_ROWS), y.split(CHUNK_ROWS), strict=True)):
            for name, part in sums.items():
                total[name].merge(part)
            if predicted is not None:
                kept.append(predicted)
    return total, (np.concatenate(kept) if kept else np.empty(0)) if keep else None


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


# The rows are float32 (tensorize): with unit-norm columns, rounding them moves [x 1]·D by up to 2⁻²⁴·√(d+1)
# in norm, so singular values of the equilibrated problem below (d+1)·2⁻²⁴ of the largest are storage noise,
# not information (think 2·a − 1 stored beside a: exactly collinear but for float32 rounding). Keeping them
# gives weights of 1e12 whose float64 predictions cancel to noise; they are cut as rank-deficient instead.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# A correct least-squares solution leaves each column's normal equation aᵢᵀ(Aθ − y) = 0 up to rounding: about
# machine epsilon times ‖aᵢ‖·(Σ‖aₖ‖|θₖ| + ‖y‖), whatever the conditioning (Householder QR and an SVD solve are
# backward stable column by column once the columns are equilibrated), plus the singular values cut as noise.
# A solution that ignored a column leaves that column's residual at the size of its correlation with y.
NORMAL_EQUATIONS_RTOL = 1e-9
# The least-squares train MSE is the smallest any linear model can reach: above gradient descent's by more than
# this (relative, plus EXACT_FIT_RTOL · mean(y²) absolute), the reference is not the least-squares fit. Not
# tighter: float64 predictions of an ill-conditioned fit round at up to ~1e-9 of |y|.
MSE_RTOL = 1e-6
# A train MSE below this fraction of mean(y²) is an exact fit: float32 data and training round at 1e-7 relative,
# so a relative gap over such an MSE measures rounding, not optimization.
EXACT_FIT_RTOL = 1e-10


@dataclass(frozen=True)
class Reference:
    """The closed-form least-squares fit, and whether it passed its own check."""

    weights: np.ndarray
    bias: float
    rank: int  # of [x 1], numerically, after column scaling; below d + 1 the weights are one solution of many
    residual: float  # the largest column-relative normal-equation residual (see NORMAL_EQUATIONS_RTOL)
    problem: str | None = None  # why it cannot be trusted; None when it can


def least_squares(factors: list[torch.Tensor]) -> Reference:
    """The OLS weights and intercept from the R factors of all the training rows (`qr_factor`), in float64, checked.

    R·D is the R factor of A·D for a diagonal D, so the columns are equilibrated after the factors are merged
    (D = 1/column norm, the norms of R's columns being A's): exact, and the same for one file or many partitions.
    Without it one huge feature value makes the SVD's rank cut-off (relative to the largest singular value)
    drop every other column. The rank tolerance is then relative to the scaled problem, at the float32
    precision of the rows, and the solution is checked against the normal equations before it is believed.
    """
    r = torch.linalg.qr(torch.cat(factors), mode="r").R
    d = r.shape[1] - 1  # features + intercept
    r_a, r_y = r[:, :d], r[:, d:]
    norms = torch.linalg.vector_norm(r_a, dim=0)
    scale = torch.where(norms > 0, 1.0 / norms, torch.ones_like(norms))
    rcond = d * FLOAT32_UNIT_ROUNDOFF
    fit = torch.linalg.lstsq(r_a * scale, r_y, rcond=rcond, driver="gelsd")  # gelsd: SVD, rank-deficient too
    theta = fit.solution.ravel() * scale
    residual = normal_equations_residual(r_a, r_y.ravel(), theta)
    tolerance = NORMAL_EQUATIONS_RTOL + float(fit.singular_values[int(fit.rank) :].sum())
    problem = None
    if not (torch.isfinite(theta).all() and residual <= tolerance):
        problem = (
            f"the least-squares solution fails its normal-equation check (column-relative residual "
            f"{residual:.2e}, tolerance {tolerance:.1e})"
        )
    return Reference(theta[:-1].numpy(), float(theta[-1]), int(fit.rank), residual, problem)


def normal_equations_residual(r_a: torch.Tensor, r_y: torch.Tensor, theta: torch.Tensor) -> float:
    """max over columns i of |aᵢᵀ(Aθ − y)| / (‖aᵢ‖·(Σₖ‖aₖ‖|θₖ| + ‖y‖)), from R alone (AᵀA = RᵀR, Aᵀy = Rᵀr_y).

    Scale-free per column, so a column of 1e30 and a column of 1 are held to the same standard.
    """
    norms = torch.linalg.vector_norm(r_a, dim=0)
    gradient = r_a.T @ (r_a @ theta - r_y)
    size = float(norms @ theta.abs()) + float(torch.linalg.vector_norm(r_y))
    if not math.isfinite(size):
        return math.inf
    used = norms > 0
    if size == 0 or not bool(used.any()):
        return 0.0
    return float((gradient[used].abs() / (norms[used] * size)).max())


def optimality_gap(gd: Sums, ols: Sums, reference: Reference) -> tuple[float | None, float | None, str | None]:
    """(relative gap, absolute gap, problem): gradient descent's train MSE against the least-squares one.

    The relative gap is None for an exact fit (least-squares MSE about zero: a ratio of rounding errors) and
    both are None when the reference cannot be trusted, including when its train MSE exceeds gradient
    descent's, which no least-squares fit can do.
    """
    gd_mse, ols_mse = gd.sse / gd.n, ols.sse / ols.n
    floor = EXACT_FIT_RTOL * ols.mean_square
    problem = reference.problem
    if problem is None and ols_mse > gd_mse * (1 + MSE_RTOL) + floor:
        problem = (
            f"its train MSE {ols_mse:.6g} is above gradient descent's {gd_mse:.6g}, which a least-squares fit cannot be"
        )
    if problem is not None:
        return None, None, problem
    return (None if ols_mse <= floor else (gd_mse - ols_mse) / ols_mse), gd_mse - ols_mse, None


def evaluate(partitions: Iterable[dict], trained: dict, ols: Reference) -> dict:
    """Metrics of the gradient-descent model and of the closed-form OLS fit ``ols``, in float64, plus their gap.

    ``partitions`` are tensors dicts (one for a single file), read one at a time: metrics are sums over rows.
    When the reference fails its checks, ``reference_ok`` is False, ``reference_problem`` says why and the gaps
    are None: its numbers are still reported, but nothing is measured against them.
    """
    weights = trained["weights"].double().numpy()
    models = {"gd": (weights, float(trained["bias"])), "ols": (ols.weights, float(ols.bias))}
    sums = {(model, part): Sums() for model in models for part in PARTS}
    actual, predicted = [], []
    for tensors in partitions:
        for part in PARTS:
            x, y = tensors[f"x_{part}"], tensors[f"y_{part}"]
            scored, gd = score(x, y, models, keep="gd" if part == "test" else None)
            for model, part_sums in scored.items():
                sums[model, part].merge(part_sums)
            if part == "test":
                actual.append(y.double().numpy().ravel())
                predicted.append(gd)
    metrics = {part: sums["gd", part].metrics() for part in PARTS}
    baseline = {part: sums["ols", part].metrics() for part in PARTS}
    gap, gap_abs, problem = optimality_gap(sums["gd", "train"], sums["ols", "train"], ols)
    features = list(trained["features"])
    return {
        "metrics": metrics,
        "baseline": baseline,
        "reference_ok": problem is None,
        "reference_problem": problem,
        "reference_rank": ols.rank,
        "optimality_gap": gap,
        "optimality_gap_abs": gap_abs,
        "weights": dict(zip(features, weights.tolist(), strict=True)),
        "bias": float(trained["bias"]),
        "ols_weights": dict(zip(features, ols.weights.tolist(), strict=True)),
        "ols_bias": float(ols.bias),
        "epochs_run": int(trained["epochs_run"]),
        "lr": float(trained["lr"]),
        "max_stable_lr": float(trained["max_stable_lr"]),
        "converged": bool(trained["converged"]),
        "engine": str(trained["engine"]),
        "train_seconds": float(trained["train_seconds"]),
        "training": dict(trained["config"]),
        "test_predictions": {"actual": np.concatenate(actual), "predicted": np.concatenate(predicted)},
    }


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


@task(name="evaluate_model")
@core.stage("evaluate", outputs=("metrics", "coefficients", "predictions", "summary"))
def evaluate_model(
    tensors_paths: core.Files, stats_paths: core.Files, model_path: core.File, root: str
) -> dict[str, str]:
    """Score the model and the least-squares fit on every partition (a single file is the one partition); write
    metrics, coefficients and test predictions (Parquet) and a JSON summary.

    The reference merges the partitions' QR factors (from ``stats.pt``); the tensors are read one at a time.
    """
    ols = least_squares([core.read_pt(path)["r"] for path in stats_paths])
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
    return out


def describe_gap(result: dict) -> str:
    """The optimality gap in words, for the log, the printed summary and the report: never a ratio of noise."""
    if not result["reference_ok"]:
        return "n/a (the least-squares reference cannot be trusted)"
    if result["optimality_gap"] is None:
        return f"n/a (exact fit; train MSE difference {result['optimality_gap_abs']:.3e})"
    return f"{result['optimality_gap']:.3e}"


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
            "intercept, to float32 precision; e.g. a constant feature, or one a combination of others): least "
            "squares has many solutions and the weights shown are one of them; compare the MSEs, not the weights"
        )
    return notes


def format_metric(value: float | None, spec: str) -> str:
    """A metric for people: "n/a" where it is undefined (R² of a target that does not vary)."""
    return "n/a" if value is None else format(value, spec)
