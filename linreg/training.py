"""Fitting: from the rows (or their statistics) and a `TrainConfig` to raw-unit weights, by gradient descent.

By default the features are whitened with training statistics (`linreg.stats.Scaler`: standardized, then
rotated so that the training MSE's Hessian is the identity) and the step is ``1/L`` (L: the largest eigenvalue
of that Hessian), which makes plain gradient descent reach the least-squares optimum in a few epochs however
correlated the columns are; the fitted weights are folded back to raw units. The ``seed`` preset turns all of
that off to reproduce the original tutorial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from linreg.config import Device, TrainConfig, choose_engine, trains_on_stats
from linreg.errors import InputError
from linreg.loops import LOOPS, train_stats
from linreg.model import initial_params
from linreg.monitor import FLOAT64_ROUNDING, LOSS_FLOOR_RTOL, RISE_TOLERANCE, Monitor, Progress
from linreg.stats import Scaler, Stats

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # ≈3.4e38


@dataclass
class Fit:
    """What training found, and how: the step size it used against the largest stable one, the loss history."""

    weights: torch.Tensor  # (d,), raw feature units, float64
    bias: float
    lr: float
    max_stable_lr: float
    engine: str
    scaling: str = "none"  # the change of variables it ran in (auto resolved)
    condition: float = math.nan  # the Hessian's condition number after standardizing (nan: not standardized)
    history: list[float] = field(default_factory=list)
    converged: bool = False


@dataclass(frozen=True)
class Names:
    """The columns the training rows came from, for error messages."""

    features: list[str]
    target: str


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    on_progress: Progress | None = None,
    names: Names | None = None,
    stats: Stats | None = None,
) -> Fit:
    """Train on the rows (x, y) as ``cfg`` says; returns raw-unit weights, the loss history and the step size.

    ``stats``: the rows' `Stats` where the caller has them already (the training stage adds up the partitions'),
    else one pass computes them here. With ``engine="auto"`` many rows train on them alone (the stats engine).
    """
    stats = Stats.of(x, y) if stats is None else stats
    engine = choose_engine(cfg, stats.n)
    start = _Start.of(stats, cfg, engine, on_progress, names, x.dtype)
    if engine == "stats":
        w, b = train_stats(start.scaled, start.w, start.b, start.lr, cfg.epochs, start.monitor)
    else:
        x, y = start.scaler.transform(x.to(start.w.device)), start.scaler.transform_y(y.to(start.w.device))
        w0, b0 = start.w.to(x.dtype), start.b.to(x.dtype)  # the loop runs in the rows' own precision
        w, b = LOOPS[cfg.method](x, y, w0, b0, start.lr, cfg.epochs, start.monitor)
    return start.fit(w, b)


def fit_stats(stats: Stats, cfg: TrainConfig, on_progress: Progress | None = None, names: Names | None = None) -> Fit:
    """Train on sufficient statistics alone (a partitioned input's, summed): the stats engine, by necessity."""
    if not trains_on_stats(cfg):
        raise InputError("training on statistics needs --method scratch and --engine auto or stats")
    start = _Start.of(stats, cfg, "stats", on_progress, names)
    return start.fit(*train_stats(start.scaled, start.w, start.b, start.lr, cfg.epochs, start.monitor))


def refuse_degenerate(stats: Stats, names: Names | None = None) -> None:
    """Refuse a problem with no answer to find, before training: too few rows, or a target that never varies.

    With fewer rows than features + 1 the fit interpolates whatever weights are chosen (least squares is exact
    and not unique); with a constant target every model with zero weights fits exactly and R² is undefined.
    Neither has a result that means anything, so the run stops with the reason instead of printing one.
    """
    d = stats.g.shape[0] - 1
    features = f"{d} features ({', '.join(names.features)})" if names else f"{d} features"
    if stats.n < d + 1:
        raise InputError(
            f"{stats.n} training rows for {features} plus an intercept: the fit is underdetermined; add rows, "
            "lower --test-size or drop features with --features"
        )
    if stats.y_min == stats.y_max:
        raise InputError(
            f"{_target(names)} is constant ({stats.y_min:g}) over all {stats.n} training rows: nothing to regress; "
            "pass a --target that varies"
        )


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available here; pass --device cpu or auto")
    return torch.device(device)


def _target(names: Names | None) -> str:
    return f"target column {names.target!r}" if names else "the target"


@dataclass(frozen=True)
class _Start:
    """What every engine starts from: the scaled problem, the step size, the stopping rule and θ₀."""

    scaler: Scaler
    scaled: Stats  # the statistics of the rows in the new variables (`Scaler.transform_stats`)
    engine: str
    lr: float
    max_stable_lr: float
    monitor: Monitor
    w: torch.Tensor  # θ₀, on the device the row loops run on
    b: torch.Tensor

    @classmethod
    def of(
        cls,
        stats: Stats,
        cfg: TrainConfig,
        engine: str,
        on_progress: Progress | None,
        names: Names | None,
        dtype: torch.dtype = torch.float64,
    ) -> _Start:
        refuse_degenerate(stats, names)
        device = resolve_device(cfg.device)
        scaler = Scaler.fit(stats, cfg.scaling)
        scaled = scaler.transform_stats(stats)
        curvature = scaled.hessian_max_eigenvalue()
        lr = 1.0 / curvature if cfg.lr == "auto" else float(cfg.lr)
        # a float32 row loop's loss: a sum of squared errors beyond its range is inf from the first epoch
        overflows = engine == "rows" and dtype == torch.float32 and scaled.yy > FLOAT32_MAX / 2
        monitor = Monitor(
            cfg,
            lr,
            max_stable_lr=2.0 / curvature,
            on_progress=on_progress,
            target_rms=math.sqrt(scaled.yy / stats.n) if overflows else None,
            floor=LOSS_FLOOR_RTOL * scaled.yy / stats.n,
            target=_target(names),
            rounding=RISE_TOLERANCE if engine == "rows" and dtype == torch.float32 else FLOAT64_ROUNDING,
        )
        w0, b0 = initial_params(stats.g.shape[0] - 1, cfg.init, cfg.seed, device)
        return cls(scaler, scaled, engine, lr, 2.0 / curvature, monitor, w0, b0)

    def fit(self, w: torch.Tensor, b: torch.Tensor) -> Fit:
        """The result of training that ended at (w, b): raw-unit weights, with the monitor's record."""
        weights, bias = self.scaler.unfold(w, b)
        kind, condition = self.scaler.kind, self.scaler.condition
        history, converged = self.monitor.history, self.monitor.converged
        return Fit(weights, bias, self.lr, self.max_stable_lr, self.engine, kind, condition, history, converged)
