"""Linear regression by gradient descent, checked against closed-form least squares: the science of linreg-flow.

    import linreg
    result = linreg.fit(x, y, linreg.TrainConfig("scratch", 1000, "auto", 1e-7, True, "zeros", 0, "cpu", "auto"))

No Prefect, no stage core, no files: tensors in, tensors and numbers out. One module per job: ``config``
(settings, their rules), ``model`` (model, loss, start), ``stats`` (sufficient statistics, scaling),
``monitor`` (stopping rules, divergence), ``loops`` (the training loops), ``training`` (`fit`), ``metrics``,
``reference`` (least squares by QR), ``evaluation`` (both scored, their gap), ``errors``.

The names below are loaded on first use (PEP 562), and this file imports no submodule: a stage's cache key is
the source of its AST import closure (stagecore/keys.py), and ``from linreg.stats import Stats`` runs this file
first, so an ``__init__`` importing every submodule would put the training loops into the key of every stage
that uses any of the library. Project code therefore imports from the submodules (tests/test_code_keys.py
checks it), and this table is for everyone else.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "linreg.config": ("Device", "Engine", "Init", "Method", "Scaling", "TrainConfig"),
    "linreg.errors": ("DivergenceError", "InputError", "LossOverflowError"),
    "linreg.evaluation": ("evaluate",),
    "linreg.metrics": ("Sums", "regression_metrics"),
    "linreg.model": ("predict",),
    "linreg.precision": ("Dtype", "choose_dtype"),
    "linreg.reference": ("Reference", "least_squares", "qr_factor"),
    "linreg.stats": ("Scaler", "Stats"),
    "linreg.tensors": ("to_tensors",),
    "linreg.training": ("Fit", "Names", "fit", "fit_stats"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'linreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
