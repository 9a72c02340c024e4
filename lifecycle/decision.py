"""The champion rule, pure: both models scored on this run's test rows, and the decision between them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["decide", "mse"]


def mse(partitions: Iterable[dict], weights: torch.Tensor, bias: float) -> float:
    """Test MSE of ``x @ weights + bias`` over every partition's test rows, in float64 (as evaluate computes it)."""
    from linreg.metrics import Sums, score  # where used: torch, which a cached run need not import

    sums = Sums()
    model = {"model": (weights.double().numpy().ravel(), float(bias))}
    for tensors in partitions:
        sums.merge(score(tensors["x_test"], tensors["y_test"], model)[0]["model"])
    return float(sums.metrics()["mse"])


def decide(
    challenger_mse: float, champion_mse: float | None, tolerance: float, why_no_champion: str | None = None
) -> tuple[bool, str]:
    """(promoted, reason). Promoted when there is no comparable champion, or when the challenger's test MSE is
    at most ``champion_mse * (1 + tolerance)``: equal counts as not worse."""
    if champion_mse is None:
        return True, why_no_champion or "first successful run: no champion yet"
    if not math.isfinite(champion_mse):
        return True, f"the champion's test MSE on this run's test rows is {champion_mse}: promoted"
    limit = champion_mse * (1 + tolerance)
    compare = f"challenger test MSE {challenger_mse:.6g} vs champion {champion_mse:.6g} on this run's test rows"
    allowed = f" (tolerance {tolerance:g}: up to {limit:.6g})" if tolerance else ""
    if challenger_mse <= limit:
        return True, f"{compare}{allowed}: not worse, promoted"
    return False, f"{compare}{allowed}: worse, not promoted; the champion stays"
