"""A sweep's ranked table in the UI: one row per configuration, best first (every cell escaped by
`lifecycle.markdown.markdown_table`, published through `core.markdown_artifact`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core

SWEEP_KEY = "linear-regression-sweep"


def ranked_rows(rows: list[dict[str, Any]], order: list[int], folds: int) -> list[dict[str, Any]]:
    """The table's rows in ``order``: configuration, validation mean ± std (with folds), test MSE, gap, epochs,
    seconds, status (a failure's reason)."""
    shown = []
    for rank, i in enumerate(order, 1):
        r = rows[i]
        cell = {"rank": rank, "configuration": ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"}
        if folds:
            mean, std = r["cv_mse_mean"], r["cv_mse_std"]
            cell["validation MSE"] = None if mean is None else f"{mean:.6g} ± {std:.3g}"
        cell |= {
            "test MSE": r["test_mse"],
            "gap": r["gap"],
            "epochs": r["epochs_run"],
            "seconds": r["seconds"],
            "status": r["status"] if r["reason"] is None else f"{r['status']}: {r['reason']}",
        }
        shown.append(cell)
    return shown


def loss_histories(models: dict[int, str]) -> dict[int, list[float]]:
    """Each configuration's per-epoch training loss, from its model file (``models``: number → model.pt)."""
    return {i: core.read_pt(path)["loss_history"].tolist() for i, path in models.items()}


@task(name="publish_sweep", cache_policy=NO_CACHE, persist_result=False)
def publish_sweep(
    rows: list[dict[str, Any]], order: list[int], best: int | None, folds: int, models: dict[int, str]
) -> Any:
    """Publish the ranked table, and the ok configurations' loss curves in one plot (``models``: their model
    files by configuration number), as the ``linear-regression-sweep`` markdown artifact."""
    by = f"mean validation MSE over {folds} folds" if folds else "test MSE"
    head = "no configuration succeeded" if best is None else f"best: configuration {best} (by {by})"
    text = f"# Sweep: {len(rows)} configurations\n\n{core.escape_md(head)}\n\n"
    text += lifecycle.markdown.markdown_table(ranked_rows(rows, order, folds))
    if models:
        plot = lifecycle.trend.curves(loss_histories(models))
        text += f"\n\n### Training loss\n\n![training loss]({lifecycle.markdown.image_data_uri(plot)})\n"
    return core.markdown_artifact(text, key=SWEEP_KEY, description=core.escape_md(f"sweep ranked by {by}"))
