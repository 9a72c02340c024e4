"""Beside train, in a sweep with ``--folds K``: K-fold cross-validation of one configuration on the training rows
(`linreg.folds`); writes ``folds.json`` (each fold's validation MSE). Cached per configuration like any stage.

The test rows are never read: selection by the validation MSE leaves the test score of the refit (train on all
training rows, then evaluate) an honest one.
"""

from __future__ import annotations

import statistics

from prefect import get_run_logger

import stagecore as core
from linreg.config import TrainConfig


@core.stage("crossval", outputs=("folds",))
def cross_validate(tensors_paths: core.Files, cfg: TrainConfig, folds: int, root: str) -> dict[str, str]:
    """Read the partitions' training rows (in the split's order); train on K−1 folds, score the held-out one."""
    from linreg.folds import cross_validate as validate  # here: a fully cached run never imports torch

    parts = [core.read_pt(path) for path in tensors_paths]
    result = validate([(p["x_train"], p["y_train"]) for p in parts], cfg, folds)
    saved = {
        "folds": folds,
        "seed": cfg.seed,
        "engine": result.engine,
        "validation_mse": result.validation_mse,
        "rows": result.rows,
        "epochs_run": result.epochs_run,
    }
    out = core.outputs().write_json(saved, "folds.json")
    get_run_logger().info(
        "read %d partition(s)' training rows; %d folds (%s engine): validation MSE %.6g ± %.3g; wrote %s",
        len(tensors_paths),
        folds,
        result.engine,
        statistics.fmean(result.validation_mse),
        statistics.pstdev(result.validation_mse),
        core.describe(out),
    )
    return {"folds": out}
