"""Stage 5: fit ``y ≈ x @ w.t() + b`` by full-batch gradient descent, written out by hand (or with built-ins).

By default the features are standardized with training statistics and the step is ``1/L`` (L: the largest
eigenvalue of the training MSE's Hessian), which makes plain gradient descent reach the least-squares optimum
in a few dozen epochs; the fitted weights are folded back to raw units before they are saved. The ``seed``
preset turns all of that off to reproduce the original tutorial.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Literal

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

import stagecore as core
from stagecore.errors import InputError

Method = Literal["scratch", "builtins"]
Init = Literal["zeros", "randn"]
Device = Literal["auto", "cpu", "cuda"]
Engine = Literal["auto", "rows", "stats"]

RISING_EPOCHS = 5  # this many consecutive rises of the loss count as divergence
RISE_TOLERANCE = 1e-6  # relative rise below this is float32 rounding, not a rise
# Near an exact fit the loss is rounding noise: the stats engine's (θᵀGθ − 2θᵀc + yᵀy)/n cancels to about 1e-15
# of mean(y²), even below zero, and float32 rows round at a similar level. Changes under this fraction of
# mean(y²) are neither a rise (no false "diverged") nor progress (with --tol > 0, such epochs count as flat).
LOSS_FLOOR_RTOL = 1e-11
# The loss is float32: near the optimum it stops changing (to the last bit) while the weights still improve,
# so one flat epoch does not mean convergence. Stop only after this many flat epochs in a row.
FLAT_EPOCHS = 10
PROGRESS_STEPS = 20  # report progress every 5% of the epochs


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of the training stage; the flow's parameters decide each value."""

    method: Method
    epochs: int
    lr: float | Literal["auto"]
    tol: float  # stop once the loss's relative change stays below this (FLAT_EPOCHS in a row); 0: never
    standardize: bool
    init: Init
    seed: int
    device: Device
    engine: Engine  # rows: the textbook loop over every row; stats: the same iterates from XᵀX, Xᵀy (O(d²)/epoch)


@dataclass
class Fit:
    weights: torch.Tensor  # (d,), raw feature units, float64
    bias: float
    lr: float
    max_stable_lr: float
    engine: str
    history: list[float] = field(default_factory=list)
    converged: bool = False


class DivergenceError(InputError):
    """Gradient descent blew up: the step size is too large for this data."""


FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # ≈3.4e38


class LossOverflowError(DivergenceError):
    """The float32 loss overflowed because of the target's scale: no step size helps, rescaling the target does.

    The row loop sums the squared errors in float32; at zero weights that sum is ``yᵀy``, so a target whose
    squares add up beyond float32's largest value makes the very first loss inf.
    """

    def __init__(self, epoch: int, rms: float, target: str = "the target"):
        self.epoch, self.rms = epoch, rms
        divisor = 10.0 ** math.floor(math.log10(rms))
        super().__init__(
            f"training loss overflowed float32 at epoch {epoch}: {target} has a scale of ~{rms:.2g} (root mean "
            f"square), so the squared errors add up beyond float32's largest value ≈3.4e38, whatever the step "
            f"size; rescale the target (e.g. divide it by {divisor:.0e}), or pass --engine stats (float64)"
        )

    def naming(self, target: str) -> LossOverflowError:
        """The same error, naming the target column."""
        return LossOverflowError(self.epoch, self.rms, f"target column {target!r}")


# --- the model, as in the tutorial ------------------------------------------------------------------


def model(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x @ w.t() + b


def mse(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    diff = t1 - t2
    return torch.sum(diff * diff) / diff.numel()


# --- sufficient statistics: what makes it converge, and what makes it scale -------------------------


@dataclass(frozen=True)
class Stats:
    """Everything the MSE of a linear model depends on: ``G = AᵀA``, ``c = Aᵀy``, ``yᵀy`` and ``n``, A = [x 1].

    The loss is ``(θᵀGθ − 2θᵀc + yᵀy)/n`` for θ = [w; b], so full-batch gradient descent can run on these
    alone: the same iterates as the row-wise loop, at O(d²) per epoch whatever the number of rows.
    """

    g: torch.Tensor  # (d+1)×(d+1), float64
    c: torch.Tensor  # (d+1,), float64
    yy: float
    n: int
    # Each column's and the target's smallest and largest value: "constant" is then exact, where a variance
    # from G (E[x²] − E[x]²) cancels to rounding noise, not to zero.
    x_min: torch.Tensor  # (d,), float64; +inf without rows
    x_max: torch.Tensor  # (d,), float64; −inf without rows
    y_min: float
    y_max: float

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, chunk_rows: int = 1 << 20) -> Stats:
        """One pass over the rows, in float64 chunks (no float64 copy of the whole data)."""
        d = x.shape[1]
        g = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        c = torch.zeros(d + 1, dtype=torch.float64)
        yy = 0.0
        x_min = torch.full((d,), math.inf, dtype=torch.float64)
        x_max = torch.full((d,), -math.inf, dtype=torch.float64)
        y_min, y_max = math.inf, -math.inf
        for xc, yc in zip(x.split(chunk_rows), y.split(chunk_rows), strict=True):
            if len(xc) == 0:
                continue
            xd, yd = xc.double().cpu(), yc.double().cpu().reshape(-1)
            column_sums = xd.sum(0)  # AᵀA and Aᵀy for A = [x 1], without building A
            g[:d, :d] += xd.T @ xd
            g[:d, d] += column_sums
            g[d, :d] += column_sums
            g[d, d] += len(xc)
            c[:d] += xd.T @ yd
            c[d] += yd.sum()
            yy += float(yd @ yd)
            lo, hi = torch.aminmax(xc, dim=0)  # on the stored values: exact, in half the memory of float64
            x_min, x_max = torch.minimum(x_min, lo.double().cpu()), torch.maximum(x_max, hi.double().cpu())
            lo, hi = torch.aminmax(yc)
            y_min, y_max = min(y_min, float(lo)), max(y_max, float(hi))
        return cls(g, c, yy, x.shape[0], x_min, x_max, y_min, y_max)

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The statistics of the rows of all ``parts`` together: each one is a sum (or a min, a max) over rows."""
        return cls(
            sum(p.g for p in parts),
            sum(p.c for p in parts),
            sum(p.yy for p in parts),
            sum(p.n for p in parts),
            torch.stack([p.x_min for p in parts]).amin(0),
            torch.stack([p.x_max for p in parts]).amax(0),
            min(p.y_min for p in parts),
            max(p.y_max for p in parts),
        )

    def as_dict(self) -> dict[str, torch.Tensor | float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict) -> Stats:
        return cls(
            saved["g"],
            saved["c"],
            float(saved["yy"]),
            int(saved["n"]),
            saved["x_min"],
            saved["x_max"],
            float(saved["y_min"]),
            float(saved["y_max"]),
        )

    def hessian_max_eigenvalue(self) -> float:
        """Largest eigenvalue L of the MSE's Hessian ``2G/n``: gradient descent is stable for lr < 2/L,
        and lr = 1/L descends fastest without tuning."""
        return float(torch.linalg.eigvalsh(2.0 / self.n * self.g).max())


@dataclass(frozen=True)
class Scaler:
    """Feature standardization with training statistics, and its inverse for the fitted weights."""

    mean: torch.Tensor  # float64
    std: torch.Tensor  # float64
    constant: torch.Tensor  # bool (d,): centred, these columns are exactly zero (std 1: nothing to scale)

    @classmethod
    def fit(cls, stats: Stats, enabled: bool) -> Scaler:
        d = stats.g.shape[0] - 1
        if not enabled:
            ones = torch.ones(d, dtype=torch.float64)
            return cls(torch.zeros(d, dtype=torch.float64), ones, torch.zeros(d, dtype=torch.bool))
        constant = stats.x_min == stats.x_max
        # E[x²] − E[x]² cancels where the spread is small against the mean; n values spanning a range R have a
        # standard deviation of at least R/√(2n), so never scale by less (a noise-sized σ would blow a column up).
        spread = (stats.x_max - stats.x_min) / math.sqrt(2 * stats.n)
        mean = torch.where(constant, stats.x_min, stats.g[:d, d] / stats.n)
        std = (torch.diagonal(stats.g)[:d] / stats.n - mean**2).clamp_min(0).sqrt().maximum(spread)
        return cls(mean, torch.where(constant | ~(std > 0), torch.ones_like(std), std), constant)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def transform_stats(self, stats: Stats) -> Stats:
        """The statistics of the standardized features: [xs 1] = [x 1]·T, so G → TᵀGT and c → Tᵀc.

        A constant column centres to exactly zero; G's cancellation would leave rounding noise there instead.
        """
        d = len(self.mean)
        t = torch.eye(d + 1, dtype=torch.float64)
        t[:d, :d] = torch.diag(1.0 / self.std)
        t[d, :d] = -self.mean / self.std
        g, c = t.T @ stats.g @ t, t.T @ stats.c
        zero = torch.cat([self.constant, torch.zeros(1, dtype=torch.bool)])
        g[zero, :], g[:, zero], c[zero] = 0.0, 0.0, 0.0
        x_min = torch.where(self.constant, 0.0, (stats.x_min - self.mean) / self.std)
        x_max = torch.where(self.constant, 0.0, (stats.x_max - self.mean) / self.std)
        return replace(stats, g=g, c=c, x_min=x_min, x_max=x_max)

    def unfold(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Weights for raw features: w·(x−μ)/σ + b = (w/σ)·x + (b − Σ wμ/σ)."""
        w_raw = w.reshape(-1).double().cpu() / self.std
        return w_raw, float(b.reshape(()).double().cpu() - (w_raw * self.mean).sum())


class Monitor:
    """Records the loss each epoch, says when to stop early and fails fast when training diverges."""

    def __init__(
        self,
        cfg: TrainConfig,
        lr: float,
        max_stable_lr: float,
        on_progress: Progress | None = None,
        target_rms: float | None = None,
        floor: float = 0.0,  # the loss's rounding level, absolute (see LOSS_FLOOR_RTOL)
    ):
        """``target_rms``: the target's root mean square when the loss is float32 and its squares, summed,
        overflow it (an inf loss is then the data's scale, not the step size); None otherwise."""
        self.cfg, self.lr, self.max_stable_lr, self.floor = cfg, lr, max_stable_lr, floor
        self.on_progress = on_progress
        self.target_rms = target_rms
        self.every = max(1, cfg.epochs // PROGRESS_STEPS)
        self.history: list[float] = []
        self.rising = 0
        self.flat = 0
        self.converged = False

    def __call__(self, loss: float) -> bool:
        """Record this epoch's loss; True when training should stop."""
        epoch = len(self.history) + 1
        previous = self.history[-1] if self.history else None
        self.history.append(loss)
        if not math.isfinite(loss):
            if self.target_rms is not None:
                raise LossOverflowError(epoch, self.target_rms)
            self._diverged(epoch, f"loss became {loss}")
        if previous is not None:
            self.rising = self.rising + 1 if loss > previous * (1 + RISE_TOLERANCE) + self.floor else 0
            if self.rising >= RISING_EPOCHS:
                self._diverged(epoch, f"loss rose for {RISING_EPOCHS} epochs in a row to {loss:.4g}")
            change = abs(previous - loss)
            flat = change < self.cfg.tol * abs(previous) or (self.cfg.tol > 0 and change <= self.floor)
            self.flat = self.flat + 1 if flat else 0
            self.converged = self.flat >= FLAT_EPOCHS
        done = self.converged or epoch == self.cfg.epochs
        if self.on_progress and (epoch % self.every == 0 or done):
            self.on_progress(epoch, loss)
        return self.converged

    def _diverged(self, epoch: int, what: str) -> None:
        raise DivergenceError(
            f"training diverged at epoch {epoch} ({what}) with lr={self.lr:.4g}; the largest stable lr for "
            f"this data is {self.max_stable_lr:.4g}: pass a smaller --lr, or --lr auto"
        )


Progress = Callable[[int, float], None]


# --- the two training loops ----------------------------------------------------------------------


def train_scratch(x, y, w, b, lr: float, epochs: int, monitor: Monitor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook loop: predict, loss, backward, step under no_grad, zero the grads."""
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    for _ in range(epochs):
        preds = model(x, w, b)
        loss = mse(preds, y)
        loss.backward()
        with torch.no_grad():
            w -= w.grad * lr
            b -= b.grad * lr
            w.grad.zero_()
            b.grad.zero_()
        if monitor(loss.item()):
            break
    return w.detach(), b.detach()


def train_builtins(x, y, w, b, lr: float, epochs: int, monitor: Monitor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same model and loss with PyTorch's own pieces: nn.Linear, nn.MSELoss, optim.SGD."""
    linear = torch.nn.Linear(w.shape[1], 1, device=x.device)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b)
    loss_fn = torch.nn.MSELoss()
    opt = torch.optim.SGD(linear.parameters(), lr=lr)
    for _ in range(epochs):
        loss = loss_fn(linear(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if monitor(loss.item()):
            break
    return linear.weight.detach(), linear.bias.detach()


def train_stats(stats: Stats, w, b, lr: float, epochs: int, monitor: Monitor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same full-batch descent on sufficient statistics (float64): O(d²) an epoch, whatever the rows.

    With θ = [w; b] the loss is the quadratic ``(θᵀGθ − 2θᵀc + yᵀy)/n`` and its gradient ``2(Gθ − c)/n``,
    written out: for d + 1 = 4 numbers an autograd graph costs four times the arithmetic (about 220 against
    50 µs an epoch, measured). Tests check the iterates against the autograd row loop.
    """
    theta = torch.cat([w.reshape(-1), b.reshape(-1)]).double().cpu()
    for _ in range(epochs):
        g_theta = stats.g @ theta
        # ≥ 0 as a sum of squares; the formula's cancellation can dip below zero at an exact fit
        loss = ((theta @ g_theta - 2 * theta @ stats.c + stats.yy) / stats.n).clamp_min(0)
        grad = 2 * (g_theta - stats.c) / stats.n
        theta -= grad * lr
        if monitor(loss.item()):
            break
    return theta[:-1].reshape(1, -1), theta[-1:]


LOOPS = {"scratch": train_scratch, "builtins": train_builtins}
STATS_ENGINE_MIN_ROWS = 100_000  # below this the row-wise loop is already instant: keep the textbook reference


def check_config(cfg: TrainConfig) -> None:
    """Rules between settings, checked before the first stage runs (and again here, for direct callers)."""
    if cfg.engine == "stats" and cfg.method == "builtins":
        raise InputError("--engine stats trains the scratch model only; pass --method scratch or --engine rows")


def choose_engine(cfg: TrainConfig, n_rows: int) -> Literal["rows", "stats"]:
    check_config(cfg)
    if cfg.engine != "auto":
        return cfg.engine
    return "stats" if cfg.method == "scratch" and n_rows >= STATS_ENGINE_MIN_ROWS else "rows"


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available here; pass --device cpu or auto")
    return torch.device(device)


def initial_params(d: int, init: Init, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """w (1×d) and b (1): zeros, or ``torch.randn`` under ``seed`` as in the tutorial."""
    if init == "zeros":
        return torch.zeros(1, d, device=device), torch.zeros(1, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=gen).to(device), torch.randn(1, generator=gen).to(device)


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    on_progress: Progress | None = None,
    names: Names | None = None,
) -> Fit:
    """Train on (x, y) as ``cfg`` says; returns raw-unit weights, the loss history and the step size used."""
    engine = choose_engine(cfg, x.shape[0])
    return _fit(Stats.of(x, y), cfg, engine, on_progress, names, rows=(x, y))


def trains_on_stats(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` can train from statistics alone, as a partitioned input must: the scratch model, stats engine."""
    return cfg.method == "scratch" and cfg.engine != "rows"


def fit_stats(stats: Stats, cfg: TrainConfig, on_progress: Progress | None = None, names: Names | None = None) -> Fit:
    """Train on sufficient statistics alone (a partitioned input's, summed): the stats engine, by necessity."""
    if not trains_on_stats(cfg):
        raise InputError("training on statistics needs --method scratch and --engine auto or stats")
    return _fit(stats, cfg, "stats", on_progress, names)


@dataclass(frozen=True)
class Names:
    """The columns the training rows came from, for error messages."""

    features: list[str]
    target: str


def refuse_degenerate(stats: Stats, names: Names | None = None) -> None:
    """Refuse a problem with no answer to find, before training: too few rows, or a target that never varies.

    With fewer rows than features + 1 the fit interpolates whatever weights are chosen (least squares is exact
    and not unique); with a constant target every model with zero weights fits exactly and R² is undefined.
    Neither has a result that means anything, so the run stops with the reason instead of printing one.
    """
    d = stats.g.shape[0] - 1
    features = f"{d} features ({', '.join(names.features)})" if names else f"{d} features"
    target = f"target column {names.target!r}" if names else "the target"
    if stats.n < d + 1:
        raise InputError(
            f"{stats.n} training rows for {features} plus an intercept: the fit is underdetermined; add rows, "
            "lower --test-size or drop features with --features"
        )
    if stats.y_min == stats.y_max:
        raise InputError(
            f"{target} is constant ({stats.y_min:g}) over all {stats.n} training rows: nothing to regress; "
            "pass a --target that varies"
        )


def _fit(
    stats: Stats,
    cfg: TrainConfig,
    engine: Literal["rows", "stats"],
    on_progress: Progress | None,
    names: Names | None = None,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Fit:
    refuse_degenerate(stats, names)
    device = resolve_device(cfg.device)
    scaler = Scaler.fit(stats, cfg.standardize)
    scaled = scaler.transform_stats(stats)
    curvature = scaled.hessian_max_eigenvalue()
    lr = 1.0 / curvature if cfg.lr == "auto" else float(cfg.lr)
    # the row loop's loss is float32: a sum of squared errors beyond its range is inf from the first epoch
    overflows = engine == "rows" and stats.yy > FLOAT32_MAX / 2
    target_rms = math.sqrt(stats.yy / stats.n) if overflows else None
    floor = LOSS_FLOOR_RTOL * stats.yy / stats.n
    monitor = Monitor(
        cfg, lr, max_stable_lr=2.0 / curvature, on_progress=on_progress, target_rms=target_rms, floor=floor
    )
    w0, b0 = initial_params(stats.g.shape[0] - 1, cfg.init, cfg.seed, device)
    if engine == "stats":
        w, b = train_stats(scaled, w0, b0, lr, cfg.epochs, monitor)
    else:
        x, y = rows[0].to(device), rows[1].to(device)
        w, b = LOOPS[cfg.method](scaler.transform(x), y, w0, b0, lr, cfg.epochs, monitor)
    weights, bias = scaler.unfold(w, b)
    return Fit(weights, bias, lr, 2.0 / curvature, engine, monitor.history, monitor.converged)


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


@task(name="train_model")
@core.stage("train", outputs=("model",))
def train_model(tensors_paths: core.Files, stats_paths: core.Files, cfg: TrainConfig, root: str) -> dict[str, str]:
    """Train on every partition's training rows (a single file is the one partition); write ``model.pt``.

    The partitions' ``stats.pt`` are added up first: they decide the engine (by the number of rows) and are all
    the stats engine needs. The rows engine, the textbook loop, reads the partitions' tensors and joins them.
    """
    parts = [core.read_pt(path) for path in stats_paths]
    columns = {(tuple(p["features"]), p["target"]) for p in parts}
    if len(columns) != 1:
        shown = "; ".join(f"{list(f)} → {t!r}" for f, t in sorted(columns))
        raise InputError(f"partitions disagree on their columns ({shown}); give every file the same columns")
    stats = Stats.total([Stats.from_dict(p) for p in parts])
    names = Names(list(parts[0]["features"]), parts[0]["target"])
    engine = choose_engine(cfg, stats.n)
    rows = _training_rows(tensors_paths) if engine == "rows" else None
    train = partial(_fit, stats, cfg, engine, names=names, rows=rows)
    read = f"{len(stats_paths)} partition(s)' statistics ({stats.n} training rows)"
    return _train_and_save(train, parts[0], cfg, read=read)


def _training_rows(tensors_paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows of all partitions, joined (a single file's are returned as they are)."""
    parts = [core.read_pt(path) for path in tensors_paths]
    if len(parts) == 1:
        return parts[0]["x_train"], parts[0]["y_train"]
    return torch.cat([p["x_train"] for p in parts]), torch.cat([p["y_train"] for p in parts])


def _train_and_save(train: Callable[[Progress], Fit], data: dict, cfg: TrainConfig, read: str) -> dict[str, str]:
    """Run ``train`` with progress in the UI and the log, then write ``model.pt`` (``read``: what, for the log)."""
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, key="linear-regression-training", description="epochs done, %")
    with LatestProgress(progress, logger) as sender:

        def report(epoch: int, loss: float) -> None:
            sender.set(100.0 * epoch / cfg.epochs)
            logger.info("epoch %d/%d: train loss %.6g", epoch, cfg.epochs, loss)

        started = time.perf_counter()
        try:
            result = train(on_progress=report)
        except LossOverflowError as exc:
            raise exc.naming(data["target"]) from None
        seconds = time.perf_counter() - started
        sender.set(100.0)
    saved = {
        "weights": result.weights,
        "bias": result.bias,
        "features": data["features"],
        "target": data["target"],
        "loss_history": torch.tensor(result.history, dtype=torch.float64),
        "epochs_run": len(result.history),
        "lr": result.lr,
        "max_stable_lr": result.max_stable_lr,
        "converged": result.converged,
        "engine": result.engine,
        "train_seconds": seconds,
        "config": asdict(cfg),
    }
    out = core.outputs().write_pt(saved, "model.pt")
    logger.info(
        "read %s; %s training (%s engine) ran %d epochs in %.2f s at lr %.4g (%s); final train loss %.6g; wrote %s",
        read,
        cfg.method,
        result.engine,
        len(result.history),
        seconds,
        result.lr,
        "converged" if result.converged else "epoch cap reached",
        result.history[-1],
        core.describe(out),
    )
    return {"model": out}
