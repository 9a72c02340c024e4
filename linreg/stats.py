"""Sufficient statistics of the training rows, and the feature scaling derived from them.

What makes gradient descent converge (standardized features, a step of 1/L from the Hessian) and what makes it
scale (the statistics engine, partitions added up) are both read from these sums, computed once over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Stats:
    """Everything the MSE of a linear model depends on: ``G = AᵀA``, ``c = Aᵀy``, ``yᵀy`` and ``n``, A = [x 1].

    The loss is ``(θᵀGθ − 2θᵀc + yᵀy)/n`` for θ = [w; b], so full-batch gradient descent can run on these
    alone: the same iterates as the row-wise loop, at O(d²) per epoch whatever the number of rows.
    """

    g: torch.Tensor  # (d+1)×(d+1), float64
    c: torch.Tensor  # (d+1,), float64
    yy: float
    n: int
    # Each column's and the target's smallest and largest value: "constant" is then exact, where a variance
    # from G (E[x²] − E[x]²) cancels to rounding noise, not to zero.
    x_min: torch.Tensor  # (d,), float64; +inf without rows
    x_max: torch.Tensor  # (d,), float64; −inf without rows
    y_min: float
    y_max: float

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, chunk_rows: int = 1 << 20) -> Stats:
        """One pass over the rows, in float64 chunks (no float64 copy of the whole data)."""
        d = x.shape[1]
        g = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        c = torch.zeros(d + 1, dtype=torch.float64)
        yy = 0.0
        x_min = torch.full((d,), math.inf, dtype=torch.float64)
        x_max = torch.full((d,), -math.inf, dtype=torch.float64)
        y_min, y_max = math.inf, -math.inf
        for xc, yc in zip(x.split(chunk_rows), y.split(chunk_rows), strict=True):
            if len(xc) == 0:
                continue
            xd, yd = xc.double().cpu(), yc.double().cpu().reshape(-1)
            column_sums = xd.sum(0)  # AᵀA and Aᵀy for A = [x 1], without building A
            g[:d, :d] += xd.T @ xd
            g[:d, d] += column_sums
            g[d, :d] += column_sums
            g[d, d] += len(xc)
            c[:d] += xd.T @ yd
            c[d] += yd.sum()
            yy += float(yd @ yd)
            lo, hi = torch.aminmax(xc, dim=0)  # on the stored values: exact, in half the memory of float64
            x_min, x_max = torch.minimum(x_min, lo.double().cpu()), torch.maximum(x_max, hi.double().cpu())
            lo, hi = torch.aminmax(yc)
            y_min, y_max = min(y_min, float(lo)), max(y_max, float(hi))
        return cls(g, c, yy, x.shape[0], x_min, x_max, y_min, y_max)

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The statistics of the rows of all ``parts`` together: each one is a sum (or a min, a max) over rows."""
        return cls(
            sum(p.g for p in parts),
            sum(p.c for p in parts),
            sum(p.yy for p in parts),
            sum(p.n for p in parts),
            torch.stack([p.x_min for p in parts]).amin(0),
            torch.stack([p.x_max for p in parts]).amax(0),
            min(p.y_min for p in parts),
            max(p.y_max for p in parts),
        )

    def as_dict(self) -> dict[str, torch.Tensor | float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict) -> Stats:
        return cls(
            saved["g"],
            saved["c"],
            float(saved["yy"]),
            int(saved["n"]),
            saved["x_min"],
            saved["x_max"],
            float(saved["y_min"]),
            float(saved["y_max"]),
        )

    def hessian_max_eigenvalue(self) -> float:
        """Largest eigenvalue L of the MSE's Hessian ``2G/n``: gradient descent is stable for lr < 2/L,
        and lr = 1/L descends fastest without tuning."""
        return float(torch.linalg.eigvalsh(2.0 / self.n * self.g).max())


@dataclass(frozen=True)
class Scaler:
    """Feature standardization with training statistics, and its inverse for the fitted weights."""

    mean: torch.Tensor  # float64
    std: torch.Tensor  # float64
    constant: torch.Tensor  # bool (d,): centred, these columns are exactly zero (std 1: nothing to scale)

    @classmethod
    def fit(cls, stats: Stats, enabled: bool) -> Scaler:
        d = stats.g.shape[0] - 1
        if not enabled:
            ones = torch.ones(d, dtype=torch.float64)
            return cls(torch.zeros(d, dtype=torch.float64), ones, torch.zeros(d, dtype=torch.bool))
        constant = stats.x_min == stats.x_max
        # E[x²] − E[x]² cancels where the spread is small against the mean; n values spanning a range R have a
        # standard deviation of at least R/√(2n), so never scale by less (a noise-sized σ would blow a column up).
        spread = (stats.x_max - stats.x_min) / math.sqrt(2 * stats.n)
        mean = torch.where(constant, stats.x_min, stats.g[:d, d] / stats.n)
        std = (torch.diagonal(stats.g)[:d] / stats.n - mean**2).clamp_min(0).sqrt().maximum(spread)
        return cls(mean, torch.where(constant | ~(std > 0), torch.ones_like(std), std), constant)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def transform_stats(self, stats: Stats) -> Stats:
        """The statistics of the standardized features: [xs 1] = [x 1]·T, so G → TᵀGT and c → Tᵀc.

        A constant column centres to exactly zero; G's cancellation would leave rounding noise there instead.
        """
        d = len(self.mean)
        t = torch.eye(d + 1, dtype=torch.float64)
        t[:d, :d] = torch.diag(1.0 / self.std)
        t[d, :d] = -self.mean / self.std
        g, c = t.T @ stats.g @ t, t.T @ stats.c
        zero = torch.cat([self.constant, torch.zeros(1, dtype=torch.bool)])
        g[zero, :], g[:, zero], c[zero] = 0.0, 0.0, 0.0
        x_min = torch.where(self.constant, 0.0, (stats.x_min - self.mean) / self.std)
        x_max = torch.where(self.constant, 0.0, (stats.x_max - self.mean) / self.std)
        return replace(stats, g=g, c=c, x_min=x_min, x_max=x_max)

    def unfold(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Weights for raw features: w·(x−μ)/σ + b = (w/σ)·x + (b − Σ wμ/σ)."""
        w_raw = w.reshape(-1).double().cpu() / self.std
        return w_raw, float(b.reshape(()).double().cpu() - (w_raw * self.mean).sum())
