"""What training is asked to do: the settings, the values each may take, and the rules between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from linreg.errors import InputError

Method = Literal["scratch", "builtins"]
Init = Literal["zeros", "randn"]
Device = Literal["auto", "cpu", "cuda"]
Engine = Literal["auto", "rows", "stats"]
# none: raw features; standardize: each column to mean 0, std 1; whiten: the standardized columns rotated and
# scaled so that the training MSE's Hessian is the identity (every direction the same curvature); auto: whiten
# unless the standardized columns are already uncorrelated (docs/numbers.md, "The change of variables")
Scaling = Literal["auto", "none", "standardize", "whiten"]

PARTS = ("train", "test")  # the split's two parts, in the order every table lists them
STATS_ENGINE_MIN_ROWS = 100_000  # below this the row-wise loop is already instant: keep the textbook reference


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of training; the flow's parameters (flows/params.py) decide each value."""

    method: Method
    epochs: int
    lr: float | Literal["auto"]
    tol: float  # stop once the loss's relative change stays below this (FLAT_EPOCHS in a row); 0: never
    scaling: Scaling
    init: Init
    seed: int
    device: Device
    engine: Engine  # rows: the textbook loop over every row; stats: the same iterates from XᵀX, Xᵀy (O(d²)/epoch)


def check_config(cfg: TrainConfig) -> None:
    """Rules between settings, checked before the flow's first stage runs (and again in training)."""
    if cfg.engine == "stats" and cfg.method == "builtins":
        raise InputError("--engine stats trains the scratch model only; pass --method scratch or --engine rows")


def trains_on_stats(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` can train from statistics alone, as a partitioned input must: the scratch model, stats engine."""
    return cfg.method == "scratch" and cfg.engine != "rows"


def choose_engine(cfg: TrainConfig, n_rows: int) -> Literal["rows", "stats"]:
    """The engine ``cfg`` asks for, or for ``auto`` the one that suits ``n_rows`` training rows."""
    check_config(cfg)
    if cfg.engine != "auto":
        return cfg.engine
    return "stats" if cfg.method == "scratch" and n_rows >= STATS_ENGINE_MIN_ROWS else "rows"
