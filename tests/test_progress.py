"""The training stage's progress reports: often enough for the UI's progress artifact, and at the last epoch."""

from __future__ import annotations

import pytest
import torch

from linreg import TrainConfig, fit

pytestmark = pytest.mark.no_server


# A small fixed step keeps the loss falling for every epoch (no early stop); "auto" converges early.
@pytest.mark.parametrize(
    ("epochs", "lr", "tol"), [(1000, 1e-3, 0.0), (37, 1e-3, 0.0), (7, 1e-3, 0.0), (1000, "auto", 1e-7)]
)
def test_progress_is_reported_at_least_every_5_percent_and_at_the_end(epochs: int, lr, tol: float):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(50, 1, generator=gen)
    cfg = TrainConfig("scratch", epochs, lr, tol, "standardize", "zeros", 0, "cpu", "auto")
    reports: list[tuple[int, float]] = []
    result = fit(x, y, cfg, on_progress=lambda epoch, loss: reports.append((epoch, loss)))
    done = [epoch for epoch, _ in reports]
    gaps = [b - a for a, b in zip([0, *done], done, strict=False)]
    assert max(gaps) <= max(1, epochs / 20), gaps  # below 20 epochs: every epoch
    assert done[-1] == len(result.history)  # the last epoch run is always reported, also on early stop
    assert [loss for _, loss in reports] == [result.history[epoch - 1] for epoch in done]
    if lr != "auto":
        assert len(result.history) == epochs
    else:
        assert result.converged and len(result.history) < epochs
