"""K-fold cross-validation over the training rows: train on K−1 folds, score on the held-out one.

The folds are exactly scikit-learn's ``KFold(n_splits=K, shuffle=True, random_state=seed)`` over the training
rows in the split's order (partitions one after another), computed here with numpy's ``RandomState`` as
scikit-learn does (tests/test_sweep.py compares them). Each fold's statistics (its R factor, `Stats`) are made in
one pass over the rows; a fold's training statistics are the other folds' merged (`Stats.total`: R factors
stacked and factored again, O(K·d³), no rows). An R factor cannot be downdated stably ("total − fold"), merging
is exact. On the statistics engine each fold then trains at O(d²) per epoch; on the row engine it trains on the
rows of the other folds. The validation MSE comes from the held-out fold's own R factor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from linreg.config import TrainConfig, choose_engine
from linreg.errors import InputError
from linreg.stats import Stats
from linreg.training import fit, fit_stats


@dataclass(frozen=True)
class FoldResult:
    validation_mse: list[float]  # per fold, in KFold's order
    rows: list[int]  # held-out rows per fold
    epochs_run: list[int]
    engine: str


def kfold_ids(n: int, k: int, seed: int) -> np.ndarray:
    """Each row's fold (0..k−1): scikit-learn's shuffled ``KFold``, which permutes ``arange(n)`` with
    ``RandomState(seed).shuffle`` and cuts it into k runs, the first ``n % k`` one row longer."""
    if not 2 <= k <= n:
        raise InputError(f"--folds {k}: pass 2 to {n} folds (the number of training rows)")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.repeat(np.arange(k), sizes)
    return ids


def fold_stats(parts: list[tuple[torch.Tensor, torch.Tensor]], ids: np.ndarray, k: int) -> list[Stats]:
    """Each fold's `Stats`, over the partitions' rows in order (``ids``: each row's fold, all partitions)."""
    per_fold: list[list[Stats]] = [[] for _ in range(k)]
    start = 0
    for x, y in parts:
        here = torch.from_numpy(ids[start : start + len(x)])
        start += len(x)
        for f in range(k):
            mask = here == f
            per_fold[f].append(Stats.of(x[mask], y[mask]))
    return [Stats.total(s) for s in per_fold]


def stats_mse(stats: Stats, weights: torch.Tensor, bias: float) -> float:
    """The MSE of ``x @ w + b`` over the rows behind ``stats``: ``‖R[:, :-1]·θ − R[:, -1]‖² / n`` with θ moved to
    the statistics' origin (y − ŷ = (y − t) − (x − s)·w − (b + s·w − t))."""
    w = weights.double().reshape(-1).cpu()
    theta = torch.cat([w, torch.tensor([bias + float(stats.x_shift @ w) - stats.y_shift], dtype=torch.float64)])
    residual = stats.r[:, :-1] @ theta - stats.r[:, -1]
    return float(residual @ residual) / stats.n


def cross_validate(parts: list[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig, k: int) -> FoldResult:
    """Train ``cfg`` on each K−1 folds of the training rows (``parts``: each partition's x, y in the split's
    order), score it on the held-out fold; folds drawn with ``cfg.seed``. The engine is the one the full
    training would choose, so the folds train as the refit does."""
    n = sum(len(x) for x, _ in parts)
    ids = kfold_ids(n, k, cfg.seed)
    folds = fold_stats(parts, ids, k)
    engine = choose_engine(cfg, n)
    cfg = replace(cfg, engine=engine)
    mse, epochs = [], []
    for f in range(k):
        rest = Stats.total([s for i, s in enumerate(folds) if i != f])
        if engine == "stats":
            result = fit_stats(rest, cfg)
        else:
            keep = [
                torch.from_numpy(ids[o : o + len(x)] != f) for o, (x, _) in zip(_offsets(parts), parts, strict=True)
            ]
            x = torch.cat([x[m] for m, (x, _) in zip(keep, parts, strict=True)])
            y = torch.cat([y[m] for m, (_, y) in zip(keep, parts, strict=True)])
            result = fit(x, y, cfg, stats=rest)
        mse.append(stats_mse(folds[f], result.weights, result.bias))
        epochs.append(len(result.history))
    return FoldResult(mse, [s.n for s in folds], epochs, engine)


def _offsets(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    sizes = [len(x) for x, _ in parts]
    return [sum(sizes[:i]) for i in range(len(sizes))]
