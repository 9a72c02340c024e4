"""The regression metrics (MSE, RMSE, MAE, R²) as sums over rows, so any number of chunks or partitions add up.

Tests check them against scikit-learn.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch

from linreg.model import predict

CHUNK_ROWS = 1 << 18  # rows per float64 chunk scored: bounds the temporaries of predict and the sums


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
        predicted = {name: predict(xd, w, b) for name, (w, b) in models.items()}
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
