"""When training stops: the loss of each epoch recorded, an early stop once it is flat, divergence refused."""

from __future__ import annotations

import math
from collections.abc import Callable

from linreg.config import TrainConfig
from linreg.errors import DivergenceError, LossOverflowError

RISING_EPOCHS = 5  # this many consecutive rises of the loss count as divergence
RISE_TOLERANCE = 1e-6  # relative change below this is a float32 loss's rounding: neither a rise nor progress
FLOAT64_ROUNDING = 1e-12  # the same for a float64 loss (a sum of n squares rounds at about n·2⁻⁵³ at worst)
# Near an exact fit the loss is rounding noise (float32 rows round at about 1e-15 of mean(y²) there). Changes
# under this fraction of mean(y²) are neither a rise (no false "diverged") nor progress (with --tol > 0, such
# epochs count as flat).
LOSS_FLOOR_RTOL = 1e-11
# The loss is float32: near the optimum it stops changing (to the last bit) while the weights still improve,
# so one flat epoch does not mean convergence. Stop only after this many flat epochs in a row.
FLAT_EPOCHS = 10
PROGRESS_STEPS = 20  # report progress every 5% of the epochs

Progress = Callable[[int, float], None]  # (epoch, loss), every PROGRESS_STEPS-th of the epochs and the last


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
        target: str = "the target",
        rounding: float = RISE_TOLERANCE,  # the loss's rounding, relative: RISE_TOLERANCE (float32) or FLOAT64_ROUNDING
    ):
        """``target_rms``: the target's root mean square when the loss is float32 and its squares, summed,
        overflow it (an inf loss is then the data's scale, not the step size); None otherwise. ``target``:
        how an overflow's message names the target."""
        self.cfg, self.lr, self.max_stable_lr, self.floor, self.rounding = cfg, lr, max_stable_lr, floor, rounding
        self.on_progress = on_progress
        self.target_rms, self.target = target_rms, target
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
                raise LossOverflowError(epoch, self.target_rms, self.target)
            self._diverged(epoch, f"loss became {loss}")
        if previous is not None:
            self.rising = self.rising + 1 if loss > previous * (1 + self.rounding) + self.floor else 0
            if self.rising >= RISING_EPOCHS:
                self._diverged(epoch, f"loss rose for {RISING_EPOCHS} epochs in a row to {loss:.4g}")
            change = abs(previous - loss)
            noise = self.floor + self.rounding * abs(previous)  # a change this small is the loss's own rounding
            flat = change < self.cfg.tol * abs(previous) or (self.cfg.tol > 0 and change <= noise)
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
