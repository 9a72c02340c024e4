"""After the predict stage: the partitions' feature moments merged and compared with the model's training
moments (`linreg.drift`); a WARNING when a feature drifted, and ``--max-drift``'s refusal.

A task of its own, never cached (like tasks/predict_report.py): a cached predict stage still reports its drift,
and a new threshold needs no new predictions.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import stagecore as core
from linreg.drift import MAHALANOBIS_LIMIT, Baseline, Moments, beyond, compare, drifted
from storage.errors import InputError


def measure(drift_paths: list[str], model: dict[str, Any]) -> dict[str, Any]:
    """The drift of all partitions' rows together; ``{"available": False, "reason": …}`` where it cannot be
    measured (drift off, or a model saved before training moments were)."""
    baseline = Baseline.from_model(model)
    if baseline is None:
        return {"available": False, "reason": "the model has no training moments (trained before drift was)"}
    saved = [core.read_json(path) for path in drift_paths]
    if any(s["moments"] is None and s["rows"] for s in saved):
        return {"available": False, "reason": "switched off (--no-drift)"}
    parts = [Moments.from_dict(s["moments"]) for s in saved if s["moments"] is not None]
    merged = Moments.merge(parts) if parts else Moments.empty(len(model["features"]))
    return {"available": True, **compare(list(model["features"]), baseline, merged)}


COLUMNS = ("feature", "mean_shift", "outside_range", "spread_ratio", "drifted")


def table_rows(drift: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's drift table: one row per feature, then the batch mean's Mahalanobis distance (every row
    with the same columns, as `lifecycle.markdown.markdown_table` wants)."""

    def row(feature: str, *cells: str) -> dict[str, str]:
        return dict(zip(COLUMNS, (feature, *cells, "", "", "", "")[: len(COLUMNS)], strict=True))

    if not drift.get("available"):
        return [row("(all)", f"not measured: {drift['reason']}")]
    rows = [
        row(
            name,
            f"{r['mean_shift']:.3g}",
            f"{r['outside_range']:.3g}",
            f"{r['spread_ratio']:.3g}",
            "yes" if r["drifted"] else "no",
        )
        for name, r in drift["features"].items()
    ]
    if drift["mahalanobis"] is not None:
        rows.append(row("(all: Mahalanobis distance of the mean)", f"{drift['mahalanobis']:.3g}"))
    return rows


@task(name="check_drift", cache_policy=NO_CACHE, persist_result=False)
def check_drift(drift_paths: list[str], model_path: str) -> dict[str, Any]:
    """Merge and compare; log a WARNING naming the drifted features (or a Mahalanobis distance above
    `MAHALANOBIS_LIMIT`)."""
    drift = measure(drift_paths, core.read_pt(model_path))
    if drift.get("available") and drift["rows"]:
        names, distance = drifted(drift), drift["mahalanobis"]
        if names or distance > MAHALANOBIS_LIMIT:
            get_run_logger().warning(
                "the input drifted from the model's training data: features %s flagged; Mahalanobis distance of "
                "the mean %.3g (warning above %g)",
                ", ".join(map(core.escape_md, names)) or "none",
                distance,
                MAHALANOBIS_LIMIT,
            )
    return drift


def refuse(drift: dict[str, Any], max_drift: float | None) -> None:
    """``--max-drift Z``: one line naming the features whose mean moved more than Z training standard deviations."""
    if max_drift is None:
        return
    if not drift.get("available"):
        raise InputError(f"--max-drift {max_drift:g}: drift not measured, {drift['reason']}; drop --max-drift")
    names = beyond(drift, max_drift)
    if names:
        shifts = ", ".join(f"{n} ({drift['features'][n]['mean_shift']:+.3g})" for n in names)
        raise InputError(
            f"--max-drift {max_drift:g}: the mean of {shifts} moved more than {max_drift:g} training standard "
            "deviations; check the input, or raise --max-drift"
        )
