"""Between tensorize and train: one partition's sufficient statistics of its training rows (`linreg.Stats`).

Each partition's R factor of ``[x − x₀, 1, y − y₀]`` is computed where its tensors are (a thread, or a Dask
worker), in one float64 pass; the training stage merges the partitions' factors and runs gradient descent on
them, which is the same as training on all the rows at once, and the evaluation's closed-form reference solves
least squares from the same merged factor.

It imports only the library's statistics module, never its training loops: an edit to those leaves this stage's
key, and so its cached statistics, as they are (tests/test_code_keys.py).
"""

from __future__ import annotations

from prefect import get_run_logger

import stagecore as core


@core.stage("accumulate", outputs=("stats",))
def accumulate_stats(tensors_path: core.File, root: str) -> dict[str, str]:
    """Read one partition's ``tensors.pt``; write ``stats.pt`` (R of [A y] for A = [x 1], shifted; n; the shift).

    Also each column's and the target's min and max, which merge exactly: the training stage refuses a target
    that is constant over all partitions and standardizes a constant feature to exactly zero.
    """
    from linreg.stats import Stats  # here: a fully cached run never imports torch

    data = core.read_pt(tensors_path)
    stats = Stats.of(data["x_train"], data["y_train"])
    saved = {**stats.as_dict(), **{k: data[k] for k in ("features", "target", "dtype", "dtype_reason")}}
    out = core.outputs().write_pt(saved, "stats.pt")
    get_run_logger().info(
        "read %s; statistics of %d training rows × %d features; wrote %s",
        tensors_path,
        stats.n,
        len(data["features"]),
        core.describe(out),
    )
    return {"stats": out}
