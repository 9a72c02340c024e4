"""The tensors' precision: float64, unless the data is big and float32 is measured safe for it.

Rounding every value to float32 (a relative error up to u = 2⁻²⁴) moves the least-squares optimum. In the
standardized problem a column's values move by up to u·max|x|/σ of its spread, and least squares amplifies a
relative change of its columns by up to about the condition number of the standardized rows, √κ of the
Hessian's. So the optimum's relative movement is bounded, to first order, by

    risk = √κ · max over columns (and the target) of u·max|x|/σ

(a column of Unix times, 1.7e9 ± a few thousand: u·max|x|/σ ≈ 0.03 on its own; Advertising: ≈ 2e-7).
float32 halves the memory and the bytes every stage writes, hashes and reads; below FLOAT32_MIN_VALUES values
that saving is not measurable and float64 is kept whatever the data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

Dtype = Literal["auto", "float32", "float64"]

FLOAT32_UNIT_ROUNDOFF = 2.0**-24
FLOAT64_UNIT_ROUNDOFF = 2.0**-53
# Below this many values (rows × (features + 1)) the tensors are float64 whatever the data: 128 MB at most.
FLOAT32_MIN_VALUES = 1 << 24
# float32 only where rounding to it moves the optimum by less than this (relative, first-order bound above)
FLOAT32_MAX_RISK = 1e-6
SAMPLE_ROWS = 1 << 16  # rows the condition number is estimated on (every k-th), for a big input


def float32_risk(columns: list[np.ndarray]) -> tuple[float, float, float]:
    """(risk, √κ, worst u·max|x|/σ) of rounding ``columns`` (the features, then the target; float64) to float32.

    √κ is estimated on a strided sample of SAMPLE_ROWS rows of the standardized features: a few milliseconds
    at 20M rows, where a full pass costs most of a second.
    """
    n = len(columns[0])
    step = max(1, n // SAMPLE_ROWS)
    worst = 0.0
    sample = []
    for values in columns:
        sd = float(np.std(values[::step]))
        top = float(np.max(np.abs(values))) if n else 0.0
        worst = max(worst, FLOAT32_UNIT_ROUNDOFF * top / sd if sd > 0 else 0.0)
        sample.append((values[::step] - float(np.mean(values[::step]))) / (sd if sd > 0 else 1.0))
    features = np.stack(sample[:-1], axis=1) if len(sample) > 1 else np.zeros((0, 0))
    if features.size:
        singular = np.linalg.svd(features, compute_uv=False)
        root_kappa = float(singular[0] / singular[-1]) if singular[-1] > 0 else math.inf
    else:
        root_kappa = 1.0
    return root_kappa * worst, root_kappa, worst


def choose_dtype(asked: Dtype, values: int, columns: list[np.ndarray] | None = None) -> tuple[torch.dtype, str]:
    """The tensors' dtype and why: what was asked, or for ``auto`` by size and then by `float32_risk`."""
    import torch  # here, not at import: the flow's parameters import this module, and a cached run needs no torch

    if asked != "auto":
        return getattr(torch, asked), f"--dtype {asked}"
    if values < FLOAT32_MIN_VALUES or columns is None:
        return torch.float64, f"{values:,} values: float64 costs nothing measurable below {FLOAT32_MIN_VALUES:,}"
    risk, root_kappa, worst = float32_risk(columns)
    measured = f"rounding to float32 moves the optimum by up to ~{risk:.1e} (√condition {root_kappa:.3g} × {worst:.1e})"
    if risk <= FLOAT32_MAX_RISK:
        return torch.float32, f"{values:,} values and {measured}, under {FLOAT32_MAX_RISK:g}"
    return torch.float64, f"{measured}, above {FLOAT32_MAX_RISK:g}"
