"""The library's errors: problems the caller can fix, each one line that says what to do."""

from __future__ import annotations

import math


class InputError(ValueError):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file, column or parameter and says what to do about it. The stage core's
    ``storage.errors.InputError`` is this same class (see there), so the CLI's one line and exit 2 cover
    what the library raises too.
    """


class DivergenceError(InputError):
    """Gradient descent blew up: the step size is too large for this data."""


class LossOverflowError(DivergenceError):
    """The float32 loss overflowed because of the target's scale: no step size helps, rescaling the target does.

    A float32 row loop (``--dtype float32``) sums the squared errors in float32; at zero weights that sum is the
    centred target's ``yᵀy``, so a target whose squares add up beyond float32's largest value makes the very
    first loss inf.
    """

    def __init__(self, epoch: int, rms: float, target: str = "the target"):
        self.epoch, self.rms = epoch, rms
        divisor = 10.0 ** math.floor(math.log10(rms))
        super().__init__(
            f"training loss overflowed float32 at epoch {epoch}: {target} has a scale of ~{rms:.2g} (root mean "
            f"square), so the squared errors add up beyond float32's largest value ≈3.4e38, whatever the step "
            f"size; rescale the target (e.g. divide it by {divisor:.0e}), or pass --dtype float64"
        )
