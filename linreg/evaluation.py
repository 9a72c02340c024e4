"""The evaluation: the fitted model and the least-squares reference scored on the same rows, and their gap."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from linreg.config import PARTS
from linreg.metrics import Sums, score
from linreg.reference import Reference

# The least-squares train MSE is the smallest any linear model can reach: above gradient descent's by more than
# this (relative, plus EXACT_FIT_RTOL · mean(y²) absolute), the reference is not the least-squares fit. Not
# tighter: float64 predictions of an ill-conditioned fit round at up to ~1e-9 of |y|.
MSE_RTOL = 1e-6
# A train MSE below this fraction of mean(y²) is an exact fit: float32 data and training round at 1e-7 relative,
# so a relative gap over such an MSE measures rounding, not optimization.
EXACT_FIT_RTOL = 1e-10
# A model this far from the optimum is not a success (docs/numbers.md, "Off the optimum"): its train MSE more than
# this fraction above least squares', or, where least squares fits the rows exactly, a train RMSE above
# EXACT_FIT_MISSED_RTOL of the target's standard deviation.
OFF_OPTIMUM_GAP = 1e-3
EXACT_FIT_MISSED_RTOL = 1e-5


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


def off_optimum(gap: float | None, gd: Sums, ols: Sums, problem: str | None) -> str | None:
    """Why gradient descent's model is off the least-squares optimum, or None (on it, or no trusted reference)."""
    if problem is not None:
        return None
    gd_mse, ols_mse = gd.sse / gd.n, ols.sse / ols.n
    if gap is not None and gap > OFF_OPTIMUM_GAP:
        return f"its train MSE {gd_mse:.6g} is {gap:.3g} above the least-squares optimum {ols_mse:.6g} (relative)"
    variance = ols.m2 / ols.n  # the target's spread: an offset (Unix times) must not hide a miss
    missed = (gd_mse / variance) ** 0.5 if variance > 0 else 0.0
    if gap is None and missed > EXACT_FIT_MISSED_RTOL:
        return (
            f"least squares fits the training rows exactly, and its train RMSE is {missed:.3g} of the target's "
            "standard deviation"
        )
    return None


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
    off = off_optimum(gap, sums["gd", "train"], sums["ols", "train"], problem)
    features = list(trained["features"])
    return {
        "metrics": metrics,
        "baseline": baseline,
        "reference_ok": problem is None,
        "reference_problem": problem,
        "reference_rank": ols.rank,
        "optimality_gap": gap,
        "optimality_gap_abs": gap_abs,
        "off_optimum": off,
        "weights": dict(zip(features, weights.tolist(), strict=True)),
        "bias": float(trained["bias"]),
        "ols_weights": dict(zip(features, ols.weights.tolist(), strict=True)),
        "ols_bias": float(ols.bias),
        "epochs_run": int(trained["epochs_run"]),
        "lr": float(trained["lr"]),
        "max_stable_lr": float(trained["max_stable_lr"]),
        "converged": bool(trained["converged"]),
        "engine": str(trained["engine"]),
        # what a model file before 2026-12-02 does not record reads as unknown
        "scaling": str(trained.get("scaling", "unknown")),
        "condition": float(trained.get("condition", math.nan)),
        "dtype": str(trained.get("dtype", "unknown")),
        "dtype_reason": str(trained.get("dtype_reason", "not recorded")),
        "train_seconds": float(trained["train_seconds"]),
        "training": dict(trained["config"]),
        "test_predictions": {"actual": np.concatenate(actual), "predicted": np.concatenate(predicted)},
    }
