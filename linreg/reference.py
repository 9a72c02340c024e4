"""The closed-form reference: least squares from the training rows' R factor in float64, checked before use.

It shares the data pass with training (`linreg.stats.Stats`: the R factor of the shifted rows, one TSQR pass),
not the solve: an SVD of the equilibrated columns, against gradient descent's iterations. Tests check it
against numpy, scikit-learn and exact rational arithmetic, which check the factor too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from linreg.stats import CHUNK_ROWS, Stats


def qr_factor(x: torch.Tensor, y: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """R of the QR factorization of ``[x 1 y]`` (float64, no shift), built a chunk at a time (TSQR).

    R holds all least squares needs: ‖Aθ − y‖ = ‖R[:, :-1]θ − R[:, -1]‖. Factors of row blocks merge by
    factoring them stacked. Unlike the normal equations XᵀX, QR does not square the condition number.
    """
    stats = Stats.of(x, y, chunk_rows)
    return stats.shifted(torch.zeros_like(stats.x_shift), 0.0).r


# The rows are stored with a unit roundoff u (2⁻²⁴ for float32 rows, 2⁻⁵³ for float64; tensorize chooses):
# with unit-norm columns, rounding them moves [x 1]·D by up to u·√(d+1) in norm, so singular values of the
# equilibrated problem below (d+1)·u of the largest are storage noise, not information (think 2·a − 1 stored
# beside a: exactly collinear but for float32 rounding). Keeping them gives weights of 1e12 whose float64
# predictions cancel to noise; they are cut as rank-deficient instead.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# A correct least-squares solution leaves each column's normal equation aᵢᵀ(Aθ − y) = 0 up to rounding: about
# machine epsilon times ‖aᵢ‖·(Σ‖aₖ‖|θₖ| + ‖y‖), whatever the conditioning (Householder QR and an SVD solve are
# backward stable column by column once the columns are equilibrated), plus the singular values cut as noise.
# A solution that ignored a column leaves that column's residual at the size of its correlation with y.
NORMAL_EQUATIONS_RTOL = 1e-9


@dataclass(frozen=True)
class Reference:
    """The closed-form least-squares fit, and whether it passed its own check."""

    weights: np.ndarray
    bias: float
    rank: int  # of [x 1], numerically, after column scaling; below d + 1 the weights are one solution of many
    residual: float  # the largest column-relative normal-equation residual (see NORMAL_EQUATIONS_RTOL)
    problem: str | None = None  # why it cannot be trusted; None when it can


def least_squares(
    factors: list[torch.Tensor],
    unit_roundoff: float = FLOAT32_UNIT_ROUNDOFF,
    x_shift: torch.Tensor | None = None,
    y_shift: float = 0.0,
) -> Reference:
    """The OLS weights and intercept from the R factors of all the training rows, in float64, checked.

    The factors are of ``[x − x_shift, 1, y − y_shift]`` (`qr_factor`: no shift; `linreg.stats.Stats.r`: its own
    shift, which keeps a large offset from cancelling digits); the intercept returned is for the raw rows.

    R·D is the R factor of A·D for a diagonal D, so the columns are equilibrated after the factors are merged
    (D = 1/column norm, the norms of R's columns being A's): exact, and the same for one file or many partitions.
    Without it one huge feature value makes the SVD's rank cut-off (relative to the largest singular value)
    drop every other column. The rank tolerance is then relative to the scaled problem, at the precision the
    rows are stored in (``unit_roundoff``), and the solution is checked against the normal equations before it
    is believed.
    """
    r = torch.linalg.qr(torch.cat(factors), mode="r").R
    d = r.shape[1] - 1  # features + intercept
    r_a, r_y = r[:, :d], r[:, d:]
    norms = torch.linalg.vector_norm(r_a, dim=0)
    scale = torch.where(norms > 0, 1.0 / norms, torch.ones_like(norms))
    rcond = d * unit_roundoff
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
    weights = theta[:-1]
    bias = float(theta[-1]) + y_shift - (float(weights @ x_shift) if x_shift is not None else 0.0)
    return Reference(weights.numpy(), bias, int(fit.rank), residual, problem)


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
