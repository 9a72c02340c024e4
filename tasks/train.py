"""Stage 5: fit ``y ≈ x @ w.t() + b`` by full-batch gradient descent (`linreg.fit`); write ``model.pt``.

The science (the loops, the stopping rules, the statistics engine) is the library's, in linreg/. This stage
reads the partitions' statistics (and their rows, for the row loop), shows progress in the UI and the log, and
writes the model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

import stagecore as core
from linreg.config import TrainConfig, choose_engine

if TYPE_CHECKING:
    import torch
from storage.errors import InputError


class LatestProgress:
    """Sends a progress artifact's latest value from a background thread, so training never waits on HTTP.

    Each update is an HTTP call (about 0.1 s here); a loop that reports faster than that would queue calls and
    then wait for them all. Only the newest value is sent, and the last one is sent before the stage ends.
    """

    def __init__(self, artifact_id, logger):
        self.artifact_id, self.logger = artifact_id, logger
        self.latest: float | None = None
        self.changed = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._send, name="progress", daemon=True)

    def set(self, percent: float) -> None:
        with self.changed:
            self.latest = percent
            self.changed.notify()

    def _send(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.latest is not None or self.closed)
                percent, self.latest = self.latest, None
            if percent is None:  # closed, nothing left to send
                return
            try:
                update_progress_artifact(self.artifact_id, progress=percent)
            except Exception as exc:  # progress is for watching; it must not fail the training
                self.logger.warning("could not update the progress artifact (%s)", exc)

    def __enter__(self) -> LatestProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify()
        self.thread.join()


@core.stage("train", outputs=("model",))
def train_model(tensors_paths: core.Files, stats_paths: core.Files, cfg: TrainConfig, root: str) -> dict[str, str]:
    """Train on every partition's training rows (a single file is the one partition); write ``model.pt``.

    The partitions' ``stats.pt`` are added up first: they decide the engine (by the number of rows) and are all
    the stats engine needs. The rows engine, the textbook loop, reads the partitions' tensors and joins them.
    """
    import torch  # here, as the library: a fully cached run never imports torch (2 s of its 5)

    from linreg.drift import Baseline
    from linreg.stats import Stats
    from linreg.training import Names, fit, fit_stats

    parts = [core.read_pt(path) for path in stats_paths]
    columns = {(tuple(p["features"]), p["target"]) for p in parts}
    if len(columns) != 1:
        shown = "; ".join(f"{list(f)} → {t!r}" for f, t in sorted(columns))
        raise InputError(f"partitions disagree on their columns ({shown}); give every file the same columns")
    stats = Stats.total([Stats.from_dict(p) for p in parts])
    names = Names(list(parts[0]["features"]), parts[0]["target"])
    rows = _training_rows(tensors_paths) if choose_engine(cfg, stats.n) == "rows" else None
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, key="linear-regression-training", description="epochs done, %")
    with LatestProgress(progress, logger) as sender:

        def report(epoch: int, loss: float) -> None:
            sender.set(100.0 * epoch / cfg.epochs)
            logger.info("epoch %d/%d: train loss %.6g", epoch, cfg.epochs, loss)

        started = time.perf_counter()
        result = fit_stats(stats, cfg, report, names) if rows is None else fit(*rows, cfg, report, names, stats=stats)
        seconds = time.perf_counter() - started
        sender.set(100.0)
    saved = {
        "weights": result.weights,
        "bias": result.bias,
        "features": names.features,
        "target": names.target,
        "loss_history": torch.tensor(result.history, dtype=torch.float64),
        "epochs_run": len(result.history),
        "lr": result.lr,
        "max_stable_lr": result.max_stable_lr,
        "converged": result.converged,
        "engine": result.engine,
        "scaling": result.scaling,
        "condition": result.condition,
        **_precision(parts),
        "train_seconds": seconds,
        "config": asdict(cfg),
        # the training rows' feature moments, which predict measures drift against (linreg/drift.py)
        **{k: torch.from_numpy(v) for k, v in Baseline.of(stats).as_model_entries().items()},
    }
    out = core.outputs().write_pt(saved, "model.pt")
    logger.info(
        "read %d partition(s)' statistics (%d training rows); %s training (%s engine, %s, %s) ran %d epochs in "
        "%.2f s at lr %.4g (%s); final train loss %.6g; wrote %s",
        len(stats_paths),
        stats.n,
        cfg.method,
        result.engine,
        result.scaling,
        saved["dtype"],
        len(result.history),
        seconds,
        result.lr,
        "converged" if result.converged else "epoch cap reached",
        result.history[-1],
        core.describe(out),
    )
    return {"model": out}


def _precision(parts: list[dict]) -> dict[str, str]:
    """The tensors' dtype and why (tensorize's choice): one for all partitions, or each partition's."""
    kinds = {(p["dtype"], p["dtype_reason"]) for p in parts}
    if len(kinds) == 1:
        dtype, reason = kinds.pop()
        return {"dtype": dtype, "dtype_reason": reason}
    dtypes = sorted({dtype for dtype, _ in kinds})
    return {"dtype": "+".join(dtypes), "dtype_reason": "; ".join(sorted({reason for _, reason in kinds}))}


def _training_rows(tensors_paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows of all partitions, joined (a single file's are returned as they are)."""
    import torch

    parts = [core.read_pt(path) for path in tensors_paths]
    if len(parts) == 1:
        return parts[0]["x_train"], parts[0]["y_train"]
    return torch.cat([p["x_train"] for p in parts]), torch.cat([p["y_train"] for p in parts])
