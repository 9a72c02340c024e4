"""The model and its loss, as in the tutorial; where gradient descent starts; predictions of a fitted model."""

from __future__ import annotations

import numpy as np
import torch

from linreg.config import Init


def model(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x @ w.t() + b


def mse(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    diff = t1 - t2
    return torch.sum(diff * diff) / diff.numel()


def initial_params(d: int, init: Init, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """w (1×d) and b (1): zeros, or ``torch.randn`` under ``seed`` as in the tutorial."""
    if init == "zeros":
        return torch.zeros(1, d, device=device), torch.zeros(1, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=gen).to(device), torch.randn(1, generator=gen).to(device)


def predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """A fitted model's predictions for the rows of ``x``: raw-unit weights, in float64 (as scored and served)."""
    return x @ weights + bias
