"""Partitioned inputs, between tensorize and train: one partition's sufficient statistics of its training rows.

Each partition's ``(XᵀX, Xᵀy, yᵀy, n)`` is computed where its tensors are (a thread, or a Dask worker), in one
float64 pass; the training stage adds them up and runs gradient descent on the sum, which is the sum over the
whole training set: the same iterates as training on all the rows at once. The partition's QR factor rides
along for the evaluation's closed-form reference, which merges the factors (see `linreg.reference.qr_factor`).

It imports only the library's statistics and reference modules, never its training loops: an edit to those
leaves this stage's key, and so its cached statistics, as they are (tests/test_code_keys.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prefect import get_run_logger

import stagecore as core
from linreg.reference import qr_factor
from linreg.stats import Stats


@core.stage("accumulate", outputs=("stats",))
def accumulate_stats(tensors_path: core.File, root: str) -> dict[str, str]:
    """Read one partition's ``tensors.pt``; write ``stats.pt`` (G = AᵀA, c = Aᵀy, yᵀy, n; A = [x 1]; R of [A y]).

    Also each column's and the target's min and max, which merge exactly: the training stage refuses a target
    that is constant over all partitions and standardizes a constant feature to exactly zero.
    """
    data = core.read_pt(tensors_path)
    with ThreadPoolExecutor(1, thread_name_prefix="qr") as pool:  # torch releases the GIL: the two passes overlap
        r = pool.submit(qr_factor, data["x_train"], data["y_train"])
        stats = Stats.of(data["x_train"], data["y_train"])
        r = r.result()
    saved = {**stats.as_dict(), "r": r, **{k: data[k] for k in ("features", "target", "dtype", "dtype_reason")}}
    out = core.outputs().write_pt(saved, "stats.pt")
    get_run_logger().info(
        "read %s; statistics of %d training rows × %d features; wrote %s",
        tensors_path,
        stats.n,
        len(data["features"]),
        core.describe(out),
    )
    return {"stats": out}
