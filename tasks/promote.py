"""After evaluate: champion and challenger. The first successful run's model becomes the champion; each later
run's model (the challenger) is promoted only if its test MSE is not worse than the champion's, re-scored on
THIS run's test rows, by more than ``promote_tolerance`` (relative to the champion's MSE). The pointer and its
generations are `lifecycle.champion`'s; this module decides, and moves the pointer through it.

One uncached task, not a cached "score champion" stage plus a promote step: the decision must be made against
the generation it will succeed (racing runs must end as if they ran one after the other), so the champion can
only be scored then; and its side effect, the pointer's next generation, must happen on every run.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import lifecycle
import stagecore as core
import storage

UNCHANGED = "this run's model is already the champion (same model file): unchanged"  # no decision: no event


class NotPromoted(core.InputError):
    """``--require-promotion`` and the challenger was not promoted: the run fails (exit 2 from the CLI)."""


def promote(
    root: str,
    tensors_paths: list[str],
    model_path: str,
    run_id: str,
    tolerance: float,
    off_optimum: str | None = None,
    test_mse: float | None = None,
) -> tuple[dict[str, Any], str, str | None]:
    """Read the champion, score both models on this run's test rows, decide, move the pointer if promoted.
    Returns the ``promotion`` block, the log level's name and the pointer if it was written.

    ``off_optimum``: why this run's model is off the least-squares optimum (the evaluation's ``off_optimum``),
    unless the run was allowed to promote it anyway: such a model is never promoted, whatever the champion.
    ``test_mse``: the evaluation's test MSE of this model (the same sums `lifecycle.decision.mse` computes); with
    it, a model that already is the champion (a fully cached rerun) is recognised from the pointer alone.

    Decided against the latest generation N, the pointer moves by creating N+1 only if it is absent; when another
    run created N+1 first, the decision is made again against the new champion (no lock, on every store).
    """
    challenger_sha = core.read_manifest(model_path)["sha256"]
    store = storage.open_store(root)
    generation = _latest(store)
    if (
        test_mse is not None
        and not off_optimum
        and lifecycle.champion.names_model(root, generation, model_path, challenger_sha)
    ):
        reason = UNCHANGED
        return _block(True, reason, storage.public(model_path), test_mse, test_mse), "info", None
    trained = core.read_pt(model_path)
    partitions = [core.read_pt(p) for p in tensors_paths]
    challenger_mse = lifecycle.decision.mse(partitions, trained["weights"], trained["bias"])
    if off_optimum:
        reason = (
            f"the model is off the least-squares optimum ({off_optimum}): not promoted; pass "
            "--promote-off-optimum to promote it anyway"
        )
        champion = lifecycle.champion.champion_model_path(root)
        return (
            _block(False, reason, storage.public(champion) if champion else "none", None, challenger_mse),
            "warning",
            None,
        )

    for lost in itertools.count():
        if lost:  # another run created the generation this one meant to: decide again against it
            generation = _latest(store)
        champion, unusable = lifecycle.champion.read_usable(root, generation)
        write, block, level = _judge(champion, unusable, trained, partitions, challenger_mse, challenger_sha, tolerance)
        if lost:
            block["reason"] += f" (decided again after {lost} concurrent promotion(s))"
        if not write:
            return block, level, None
        block["champion"] = storage.public(model_path)
        wrote = lifecycle.champion.create_generation(store, generation + 1, model_path, run_id, trained, challenger_mse)
        if wrote is not None:
            return block, level, wrote
    raise AssertionError("unreachable")


def _latest(store: storage.Store) -> int:
    try:
        return lifecycle.champion.latest_generation(store)
    except OSError as exc:
        raise store.error(exc) from None


def _judge(
    champion: dict[str, Any] | None,
    unusable: str | None,
    trained: dict,
    partitions: list[dict],
    challenger_mse: float,
    challenger_sha: str,
    tolerance: float,
) -> tuple[bool, dict[str, Any], str]:
    """(whether to point the champion at the challenger, the ``promotion`` block, the log level's name)."""
    level = "warning" if unusable else "info"
    champion_mse, why = None, unusable and f"{unusable}: promoted in its place"
    if champion is not None and champion["model_sha256"] == challenger_sha:
        reason = UNCHANGED
        return False, _block(True, reason, storage.public(champion["model"]), challenger_mse, challenger_mse), level
    if champion is not None:
        same = list(champion["features"]) == list(trained["features"]) and champion["target"] == trained["target"]
        if same:
            model = core.read_pt(champion["model"])
            champion_mse = lifecycle.decision.mse(partitions, model["weights"], model["bias"])
        else:
            why = (
                f"champion trained on features {champion['features']} → {champion['target']}, this run on "
                f"{list(trained['features'])} → {trained['target']}: not comparable, promoted"
            )
    promoted, reason = lifecycle.decision.decide(challenger_mse, champion_mse, tolerance, why)
    path = "" if promoted else storage.public(champion["model"])  # the caller names the challenger when it wins
    return promoted, _block(promoted, reason, path, champion_mse, challenger_mse), level if promoted else "warning"


def _block(promoted: bool, reason: str, champion: str, champion_mse: float | None, challenger_mse: float) -> dict:
    finite = champion_mse is not None and math.isfinite(champion_mse)
    return {
        "promoted": promoted,
        "reason": reason,
        "champion": champion,
        "champion_test_mse": float(champion_mse) if finite else None,
        "challenger_test_mse": float(challenger_mse),
    }


@task(name="promote_model", cache_policy=NO_CACHE, persist_result=False, **storage.RETRIES)
def promote_model(
    tensors_paths: list[str],
    model_path: str,
    run_id: str,
    tolerance: float,
    summary_path: str,
    promote_off_optimum: bool,
    root: str,
) -> dict:
    """Champion vs challenger on this run's test rows; moves the champion pointer when the challenger wins.
    A model the evaluation found off the optimum (``summary_path``'s ``off_optimum``) is not promoted unless
    ``promote_off_optimum``."""
    summary = core.read_json(summary_path)
    off = None if promote_off_optimum else summary.get("off_optimum")
    test_mse = summary["metrics"]["test"]["mse"]
    block, level, wrote = promote(root, tensors_paths, model_path, run_id, tolerance, off, test_mse)
    getattr(get_run_logger(), level)(
        "read %s, %s and %d partition(s)' test rows; %s; wrote %s; champion: %s",
        lifecycle.champion.where(root),
        storage.public(model_path),
        len(tensors_paths),
        block["reason"],
        wrote or "nothing (the pointer stays)",
        block["champion"],
    )
    return block


def enforce(block: dict[str, Any], required: bool) -> None:
    """With ``--require-promotion``, a challenger that was not promoted fails the run (one line)."""
    if required and not block["promoted"]:
        raise NotPromoted(f"--require-promotion: {block['reason']}")


def describe(block: dict[str, Any]) -> str:
    """One line for the printed summary."""
    verdict = "promoted" if block["promoted"] else "NOT promoted"
    return f"promotion: {verdict} ({block['reason']}); champion {block['champion']}"
