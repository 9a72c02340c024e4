"""Sufficient statistics of the training rows, and the feature scaling derived from them.

What makes gradient descent converge (standardized features, a step of 1/L from the Hessian) and what makes it
scale (the statistics engine, partitions added up) are both read from these sums, computed once over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

CHUNK_ROWS = 1 << 18  # rows per float64 block factored: bounds QR's temporaries


@dataclass(frozen=True)
class Stats:
    """Everything the MSE of a linear model depends on, as the R factor of ``[A y]`` for A = [x 1], with x and y
    measured from a shift (``x_shift``, ``y_shift``: the first row's values); ``n`` rows.

    ``‖Aθ − y‖² = ‖R[:, :-1]·θ − R[:, -1]‖²`` for any θ = [w; b], so full-batch gradient descent can run on R
    alone: the same iterates as the row-wise loop, at O(d²) per epoch whatever the number of rows. The Gram form
    (``g = AᵀA``, ``c = Aᵀy``, ``yy = yᵀy``) is derived from R where a caller wants it (the scaling, the Hessian).

    Why R and not the sums AᵀA: forming AᵀA squares the condition number, so on correlated columns (condition
    number 1e8 after standardizing) the sums alone pin the optimum down to about 8 digits; R keeps 12 or more.
    Why the shift: a column of Unix times (≈1.7e9, spread over a few thousand seconds) has Σx² ≈ n·2.9e18, and
    its variance E[x²] − E[x]² would cancel 11 of float64's 16 digits. Measured from one of its own values,
    nothing cancels. `shifted` moves the origin exactly (a column operation on R).
    """

    r: torch.Tensor  # (k, d+2), float64, k ≤ d+2: RᵀR = [A y]ᵀ[A y] for the shifted rows
    n: int
    # Each column's and the target's smallest and largest value: "constant" is then exact, where a variance
    # (E[x²] − E[x]²) cancels to rounding noise, not to zero.
    x_min: torch.Tensor  # (d,), float64; +inf without rows
    x_max: torch.Tensor  # (d,), float64; −inf without rows
    y_min: float
    y_max: float
    x_shift: torch.Tensor  # (d,), float64: R is of [x − x_shift, 1, y − y_shift]
    y_shift: float

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> Stats:
        """One pass over the rows, in float64 chunks (no float64 copy of the whole data): R by blocks (TSQR:
        the R factors of row blocks merge by factoring them stacked), minima and maxima."""
        d = x.shape[1]
        r = torch.zeros(0, d + 2, dtype=torch.float64)
        x_min = torch.full((d,), math.inf, dtype=torch.float64)
        x_max = torch.full((d,), -math.inf, dtype=torch.float64)
        y_min, y_max = math.inf, -math.inf
        x_shift = x[0].double().cpu() if len(x) else torch.zeros(d, dtype=torch.float64)
        y_shift = float(y.reshape(-1)[0]) if len(y) else 0.0
        for xc, yc in zip(x.split(chunk_rows), y.split(chunk_rows), strict=True):
            if len(xc) == 0:
                continue
            ones = torch.ones(len(xc), 1, dtype=torch.float64)
            block = torch.cat([xc.double().cpu() - x_shift, ones, yc.double().cpu().reshape(-1, 1) - y_shift], 1)
            r = torch.linalg.qr(torch.cat([r, block]), mode="r").R
            lo, hi = torch.aminmax(xc, dim=0)  # on the stored values: exact, in half the memory of float64
            x_min, x_max = torch.minimum(x_min, lo.double().cpu()), torch.maximum(x_max, hi.double().cpu())
            lo, hi = torch.aminmax(yc)
            y_min, y_max = min(y_min, float(lo)), max(y_max, float(hi))
        return cls(r, x.shape[0], x_min, x_max, y_min, y_max, x_shift, y_shift)

    @property
    def g(self) -> torch.Tensor:
        """AᵀA, (d+1)×(d+1), of the shifted rows."""
        a = self.r[:, :-1]
        return a.T @ a

    @property
    def c(self) -> torch.Tensor:
        """Aᵀy, (d+1,), of the shifted rows."""
        return self.r[:, :-1].T @ self.r[:, -1]

    @property
    def yy(self) -> float:
        """yᵀy of the shifted target."""
        return float(self.r[:, -1] @ self.r[:, -1])

    def shifted(self, x_shift: torch.Tensor, y_shift: float) -> Stats:
        """The same rows measured from another origin: [x − s', 1, y − t'] = [x − s, 1, y − t]·M, so R → R·M."""
        d = len(self.x_shift)
        m = torch.eye(d + 2, dtype=torch.float64)
        m[d, :d] = self.x_shift - x_shift
        m[d, d + 1] = self.y_shift - y_shift
        return Stats(
            self.r @ m, self.n, self.x_min, self.x_max, self.y_min, self.y_max, x_shift.clone(), float(y_shift)
        )

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The statistics of the rows of all ``parts`` together, measured from the first non-empty part's origin:
        their R factors stacked and factored again; the minima and maxima merged."""
        first = next((p for p in parts if p.n), parts[0])
        parts = [p.shifted(first.x_shift, first.y_shift) for p in parts]
        return cls(
            torch.linalg.qr(torch.cat([p.r for p in parts]), mode="r").R,
            sum(p.n for p in parts),
            torch.stack([p.x_min for p in parts]).amin(0),
            torch.stack([p.x_max for p in parts]).amax(0),
            min(p.y_min for p in parts),
            max(p.y_max for p in parts),
            first.x_shift.clone(),
            first.y_shift,
        )

    def as_dict(self) -> dict[str, torch.Tensor | float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict) -> Stats:
        return cls(
            saved["r"],
            int(saved["n"]),
            saved["x_min"],
            saved["x_max"],
            float(saved["y_min"]),
            float(saved["y_max"]),
            saved["x_shift"],
            float(saved["y_shift"]),
        )

    @property
    def means(self) -> tuple[torch.Tensor, float]:
        """Each column's and the target's mean (constant columns exactly their value)."""
        d = len(self.x_shift)
        c = self.c
        x_mean = self.x_shift + self.g[:d, d] / self.n
        x_mean = torch.where(self.x_min == self.x_max, self.x_min, x_mean)
        return x_mean, self.y_shift + float(c[d]) / self.n

    def hessian_max_eigenvalue(self) -> float:
        """Largest eigenvalue L of the MSE's Hessian ``2AᵀA/n``: gradient descent is stable for lr < 2/L,
        and lr = 1/L descends fastest without tuning. (The Hessian of the raw problem: A measured from 0.)"""
        return float(self.eigenvalues().max())

    def eigenvalues(self) -> torch.Tensor:
        """The eigenvalues of the MSE's Hessian ``2AᵀA/n`` (A measured from the origin 0), ascending."""
        d = len(self.x_shift)
        raw = self if not bool(self.x_shift.any()) else self.shifted(torch.zeros(d, dtype=torch.float64), self.y_shift)
        return torch.linalg.eigvalsh(2.0 / raw.n * raw.g)

    def condition_number(self) -> float:
        """λmax/λmin of the Hessian: gradient descent needs about this many epochs per factor e of precision."""
        ev = self.eigenvalues()
        return math.inf if not float(ev[0]) > 0 else float(ev[-1] / ev[0])


# Whitening divides by the square root of each eigenvalue of the standardized columns' correlation matrix.
# Eigenvalues below this fraction of the largest are the rounding noise of collinear columns (exactly collinear
# but for the data's own rounding, about 2⁻²⁴ for float32 rows): those directions are left as they are instead
# of being blown up, as the least-squares reference cuts the same directions as rank-deficient.
WHITEN_RCOND = 1e-13
# auto whitens unless the standardized columns are uncorrelated to this precision (condition number ≤ 1 + this):
# with any correlation left, plain gradient descent's flat-loss stop ends it at about √tol of the weights' digits
# (Advertising, condition number 2.1: 7 digits after 35 epochs; whitened, 12 or more after a dozen).
UNCORRELATED_RTOL = 1e-9


@dataclass(frozen=True)
class Scaler:
    """The change of variables gradient descent runs in: ``xt = ((x − mean)/std) @ rotation``, ``yt = y − y_mean``;
    and its inverse for the fitted weights.

    ``none`` is the identity (the tutorial's raw problem); ``standardize`` a diagonal change (rotation = I);
    ``whiten`` a full one, rotation = VΛ^(−½) for the standardized correlation matrix C = VΛVᵀ, so that the
    training MSE's Hessian becomes 2·I: every direction has the same curvature, and the step 1/L reaches the
    optimum in a handful of epochs whatever the correlation between the columns.
    """

    mean: torch.Tensor  # float64 (d,)
    std: torch.Tensor  # float64 (d,)
    constant: torch.Tensor  # bool (d,): centred, these columns are exactly zero (std 1: nothing to scale)
    rotation: torch.Tensor  # float64 (d, d)
    y_mean: float
    kind: str  # none, standardize or whiten
    condition: float  # condition number of the Hessian after standardizing (nan for none)

    @classmethod
    def fit(cls, stats: Stats, scaling: str) -> Scaler:
        d = stats.g.shape[0] - 1
        eye = torch.eye(d, dtype=torch.float64)
        if scaling == "none":
            ones = torch.ones(d, dtype=torch.float64)
            return cls(
                torch.zeros(d, dtype=torch.float64), ones, torch.zeros(d, dtype=torch.bool), eye, 0.0, "none", math.nan
            )
        constant = stats.x_min == stats.x_max
        mean, y_mean = stats.means
        centred = stats.shifted(mean, y_mean)
        # E[x²] − E[x]² cancels where the spread is small against the mean; n values spanning a range R have a
        # standard deviation of at least R/√(2n), so never scale by less (a noise-sized σ would blow a column up).
        spread = (stats.x_max - stats.x_min) / math.sqrt(2 * stats.n)
        std = (torch.diagonal(centred.g)[:d] / stats.n).clamp_min(0).sqrt().maximum(spread)
        std = torch.where(constant | ~(std > 0), torch.ones_like(std), std)
        standard = cls(mean, std, constant, eye, y_mean, "standardize", math.nan)
        scaled = standard.transform_stats(stats)
        condition = scaled.condition_number()
        standard = replace(standard, condition=condition)
        if scaling == "standardize" or (scaling == "auto" and condition <= 1 + UNCORRELATED_RTOL) or d == 1:
            return standard
        values, vectors = torch.linalg.eigh(scaled.g[:d, :d] / stats.n)  # the correlation matrix
        kept = values > WHITEN_RCOND * float(values.max().clamp_min(0))
        rotation = vectors * torch.where(kept, values.clamp_min(1e-300).rsqrt(), torch.ones_like(values))
        return replace(standard, rotation=rotation, kind="whiten")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The rows in the new variables, computed in float64 and stored in x's own dtype."""
        if self.kind == "none":
            return x
        xt = (x.double() - self.mean.to(x.device)) / self.std.to(x.device)
        if self.kind == "whiten":
            xt = xt @ self.rotation.to(x.device)
        return xt.to(x.dtype)

    def transform_y(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.y_mean == 0 else (y.double() - self.y_mean).to(y.dtype)

    def transform_stats(self, stats: Stats) -> Stats:
        """The statistics of the rows in the new variables, from ``stats`` alone: measured from (mean, y_mean),
        then [xt 1 yt] = [x − mean, 1, y − y_mean]·B with B = diag(diag(1/std)·rotation, 1, 1), so R → R·B.

        A constant column centres to exactly zero; the shift's rounding would leave noise there instead.
        """
        d = len(self.mean)
        centred = stats.shifted(self.mean, self.y_mean)
        r = centred.r.clone()
        r[:, :d][:, self.constant] = 0.0  # before the rotation: the zero column stays zero
        b = torch.eye(d + 2, dtype=torch.float64)
        b[:d, :d] = torch.diag(1.0 / self.std) @ self.rotation
        if self.kind == "whiten":  # bounds of rotated columns are not those of the columns: none are claimed
            x_min = torch.full((d,), -math.inf, dtype=torch.float64)
            x_max = torch.full((d,), math.inf, dtype=torch.float64)
        else:
            x_min = torch.where(self.constant, 0.0, (stats.x_min - self.mean) / self.std)
            x_max = torch.where(self.constant, 0.0, (stats.x_max - self.mean) / self.std)
        zeros = torch.zeros(d, dtype=torch.float64)
        y_min, y_max = stats.y_min - self.y_mean, stats.y_max - self.y_mean
        return Stats(r @ b, stats.n, x_min, x_max, y_min, y_max, zeros, 0.0)

    def unfold(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Weights for raw features: w·((x−μ)/σ)·R + b + ȳ = (R w / σ)·x + (b + ȳ − Σ (Rw/σ)μ)."""
        w_raw = (self.rotation @ w.reshape(-1).double().cpu()) / self.std
        return w_raw, float(b.reshape(()).double().cpu() + self.y_mean - (w_raw * self.mean).sum())
