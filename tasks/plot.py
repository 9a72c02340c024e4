"""Stage 7: draw predicted vs actual on the test set and the training loss curve, as PNG files."""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from prefect import get_run_logger

import stagecore as core

MAX_POINTS = 5000  # a scatter of more points is a blob that takes seconds to draw


def preload() -> None:
    """Import matplotlib on a background thread (once per process), so the plot stage finds it loaded.

    The import takes about 0.7 s here, most of the plot stage's time on small data; started as soon as a stage
    runs (`StageRunner`'s ``on_run``: a fully cached run never imports it), it overlaps stages that wait on files
    and on the Prefect API. Python's import lock makes the plot stage wait for it if it is not done yet, so this
    only ever saves time.
    """
    global _PRELOADING
    with _LOCK:
        if _PRELOADING is None:
            _PRELOADING = threading.Thread(target=_import_matplotlib, name="preload-matplotlib", daemon=True)
            _PRELOADING.start()


_LOCK = threading.Lock()
_PRELOADING: threading.Thread | None = None


def _import_matplotlib() -> None:
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401


def figure(width: float, height: float):
    """A matplotlib Figure without pyplot: no global state, no GUI backend on servers and workers.

    matplotlib is imported here, not at the top: the stages before this one then run without its ~60 MB.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def png_bytes(figure: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes (kept in memory so the write stays atomic)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, target: str) -> bytes:
    fig = figure(5, 5)
    ax = fig.subplots()
    shown = np.linspace(0, len(actual) - 1, min(len(actual), MAX_POINTS)).astype(int)  # evenly spaced rows
    label = "test rows" if len(shown) == len(actual) else f"{len(shown):,} of {len(actual):,} test rows"
    ax.scatter(actual[shown], predicted[shown], s=18 if len(shown) < 500 else 4, alpha=0.75, label=label)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    shown_target = core.escape_mathtext(target)  # a column name: shown as written, never parsed as math text
    ax.set(xlabel=f"actual {shown_target}", ylabel=f"predicted {shown_target}", title="Predicted vs actual (test set)")
    ax.legend()
    return png_bytes(fig)


def loss_curve(history: np.ndarray) -> bytes:
    fig = figure(6, 4)
    ax = fig.subplots()
    ax.plot(np.arange(1, len(history) + 1), history)
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="training MSE (log scale)", title=f"Training loss ({len(history)} epochs)")
    ax.grid(True, which="both", alpha=0.3)
    return png_bytes(fig)


@core.stage("plot", outputs=("predicted_vs_actual", "loss_curve"))
def plot_results(predictions_path: core.File, model_path: core.File, root: str) -> dict[str, str]:
    """Read test predictions and the loss history; write ``predicted_vs_actual.png`` and ``loss_curve.png``."""
    predictions = core.read_parquet(predictions_path)
    trained = core.read_pt(model_path)
    outputs = core.outputs()
    out = {
        "predicted_vs_actual": outputs.write_png(
            predicted_vs_actual(
                predictions.column("actual").to_numpy(),
                predictions.column("predicted").to_numpy(),
                trained["target"],
            ),
            "predicted_vs_actual.png",
        ),
        "loss_curve": outputs.write_png(loss_curve(trained["loss_history"].numpy()), "loss_curve.png"),
    }
    get_run_logger().info(
        "read %s and %s; wrote %s",
        predictions_path,
        model_path,
        ", ".join(core.describe(p) for p in out.values()),
    )
    return out
