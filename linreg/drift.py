"""Drift: how far the rows a model predicts on are from the rows it was trained on, per feature and as a whole.

The training side is a `Baseline` (each feature's mean, standard deviation, range, and the features' covariance),
derived from the training rows' `Stats` at training time and saved in the model. The predicted side is a
`Moments`, streamed batch by batch in predict's one pass (count, mean, squared deviations, range, values outside
the training range: O(features) numbers, merged across batches and partitions by Chan's formulas), so 20M rows
need no second pass. `compare` turns the two into the figures docs/lifecycle.md defines. Numpy only, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from linreg.stats import Stats

MEAN_SHIFT_LIMIT = 3.0  # drifted: the mean moved more than 3 training standard deviations …
SPREAD_LIMIT = 2.0  # … or the spread doubled or halved …
SPREAD_MIN_ROWS = 30  # … judged from this many rows on (the std of a handful of rows is mostly chance)
MAHALANOBIS_LIMIT = 3.0  # the whole batch's mean: a WARNING above this many (multivariate) standard deviations
BASELINE_KEYS = ("train_mean", "train_std", "train_min", "train_max", "train_cov")  # the model.pt entries


@dataclass(frozen=True)
class Baseline:
    """The training rows' features: mean, standard deviation (ddof 0), minimum, maximum (d,), covariance (d, d)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, stats: Stats) -> Baseline:
        """From the training rows' R factor: centred on the means, RᵀR/n is the covariance, with no
        cancellation (a constant column is exactly zero)."""
        d = len(stats.x_shift)
        mean, y_mean = stats.means
        g = stats.shifted(mean, y_mean).g[:d, :d].double().cpu().numpy() / max(stats.n, 1)
        constant = (stats.x_min == stats.x_max).numpy()
        g[constant, :], g[:, constant] = 0.0, 0.0
        cov = (g + g.T) / 2
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        return cls(mean.double().numpy(), std, stats.x_min.double().numpy(), stats.x_max.double().numpy(), cov)

    def as_model_entries(self) -> dict[str, np.ndarray]:
        return dict(zip(BASELINE_KEYS, (self.mean, self.std, self.min, self.max, self.cov), strict=True))

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> Baseline | None:
        """The baseline a model.pt holds; None for a model trained before drift (no such entries)."""
        if not all(k in model for k in BASELINE_KEYS):
            return None
        return cls(*(np.asarray(model[k], dtype=np.float64) for k in BASELINE_KEYS))


@dataclass(frozen=True)
class Moments:
    """The predicted rows' features, streamed: n, mean, sum of squared deviations (m2), min, max and the count
    of values outside the training range (d,). `add` merges a batch, `merge` partitions (Chan et al.)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    outside: np.ndarray

    @classmethod
    def empty(cls, d: int) -> Moments:
        zeros = np.zeros(d)
        return cls(0, zeros, zeros, np.full(d, np.inf), np.full(d, -np.inf), np.zeros(d, dtype=np.int64))

    @classmethod
    def of_columns(cls, columns: list[np.ndarray], baseline: Baseline) -> Moments:
        """One batch, one float64 column per feature. Deviations are taken from the training mean (no
        cancellation unless the batch moved many standard deviations away); the outside count is skipped where
        the batch's own range is inside the training range, the usual case."""
        d = len(columns)
        n = len(columns[0]) if d else 0
        if n == 0:
            return cls.empty(d)
        mean, m2 = np.empty(d), np.empty(d)
        low, high, outside = np.empty(d), np.empty(d), np.zeros(d, dtype=np.int64)
        for j, x in enumerate(columns):
            dev = x - baseline.mean[j]
            s1 = float(dev.sum())
            mean[j] = baseline.mean[j] + s1 / n
            m2[j] = max(float(dev @ dev) - s1 * s1 / n, 0.0)
            low[j], high[j] = x.min(), x.max()
            if low[j] < baseline.min[j]:
                outside[j] += np.count_nonzero(x < baseline.min[j])
            if high[j] > baseline.max[j]:
                outside[j] += np.count_nonzero(x > baseline.max[j])
        return cls(n, mean, m2, low, high, outside)

    @classmethod
    def merge(cls, parts: list[Moments]) -> Moments:
        """The moments of all ``parts``' rows together (pairwise: Chan's merge of means and m2)."""
        total = parts[0]
        for part in parts[1:]:
            n = total.n + part.n
            if part.n == 0:
                continue
            if total.n == 0:
                total = part
                continue
            delta = part.mean - total.mean
            total = cls(
                n,
                total.mean + delta * (part.n / n),
                total.m2 + part.m2 + delta**2 * (total.n * part.n / n),
                np.minimum(total.min, part.min),
                np.maximum(total.max, part.max),
                total.outside + part.outside,
            )
        return total

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON (a partition's ``drift.json``); ±inf for an empty range is written as null."""

        def floats(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in a]

        return {
            "n": self.n,
            "mean": floats(self.mean),
            "m2": floats(self.m2),
            "min": floats(self.min),
            "max": floats(self.max),
            "outside": [int(v) for v in self.outside],
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Moments:
        def array(values: list, missing: float) -> np.ndarray:
            return np.array([missing if v is None else v for v in values], dtype=np.float64)

        return cls(
            int(saved["n"]),
            array(saved["mean"], 0.0),
            array(saved["m2"], 0.0),
            array(saved["min"], np.inf),
            array(saved["max"], -np.inf),
            np.array(saved["outside"], dtype=np.int64),
        )


def _ratio(num: float, den: float) -> float:
    """num/den, where a zero den (a feature constant in training) gives 0 for no change and ±inf for any."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def mahalanobis(delta: np.ndarray, cov: np.ndarray) -> float:
    """sqrt(Δᵀ Σ⁺ Δ): Σ⁺ by least squares (the pseudo-inverse's minimum-norm solution), so a singular covariance
    (a constant or collinear feature) ignores the directions training never varied in."""
    if delta.size == 0:
        return 0.0
    solved = np.linalg.lstsq(cov, delta, rcond=None)[0]
    return math.sqrt(max(float(delta @ solved), 0.0))


def compare(
    features: list[str], baseline: Baseline, moments: Moments, limit: float = MEAN_SHIFT_LIMIT
) -> dict[str, Any]:
    """The drift table: per feature ``mean_shift`` ((mean − training mean)/training std), ``outside_range``
    (fraction outside [training min, training max]), ``spread_ratio`` (std/training std, ddof 0) and
    ``drifted``; and ``mahalanobis`` of the mean. ``limit``: the |mean_shift| above which a feature drifted."""
    if moments.n == 0:
        return {"rows": 0, "features": {}, "mahalanobis": None}
    std = np.sqrt(moments.m2 / moments.n)
    table = {}
    for j, name in enumerate(features):
        shift = _ratio(float(moments.mean[j] - baseline.mean[j]), float(baseline.std[j]))
        spread = _ratio(float(std[j]), float(baseline.std[j])) if baseline.std[j] > 0 or std[j] > 0 else 1.0
        spread = abs(spread)
        odd_spread = moments.n >= SPREAD_MIN_ROWS and not (1 / SPREAD_LIMIT <= spread <= SPREAD_LIMIT)
        table[name] = {
            "mean_shift": shift,
            "outside_range": float(moments.outside[j]) / moments.n,
            "spread_ratio": spread,
            "drifted": bool(abs(shift) > limit or odd_spread),
        }
    return {
        "rows": moments.n,
        "features": table,
        "mahalanobis": mahalanobis(moments.mean - baseline.mean, baseline.cov),
    }


def drifted(drift: dict[str, Any]) -> list[str]:
    """The features a `compare` table flags."""
    return [name for name, row in drift["features"].items() if row["drifted"]]


def beyond(drift: dict[str, Any], z: float) -> list[str]:
    """The features whose |mean_shift| exceeds ``z`` (``--max-drift``)."""
    return [name for name, row in drift["features"].items() if abs(row["mean_shift"]) > z]
