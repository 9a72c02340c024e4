"""After evaluate: champion and challenger, one champion per model (its target, features and name:
`lifecycle.champion.Model`). The first successful run of a model makes its champion; each later run's model of
the same model (the challenger) is promoted only if its test MSE is not worse than the champion's, re-scored on
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
    model: lifecycle.champion.Model | None = None,
) -> tuple[dict[str, Any], str, str | None]:
    """Read the champion of this run's model, score both models on this run's test rows, decide, move that
    model's pointer if promoted. Returns the ``promotion`` block, the log level's name and the pointer if it was
    written.

    ``model``: which model this run's is (its target, features and name, `lifecycle.champion.Model`); None: the
    unnamed model of the model file's own target and features. Only that model's champion is read or replaced.
    ``off_optimum``: why this run's model is off the least-squares optimum (the evaluation's ``off_optimum``),
    unless the run was allowed to promote it anyway: such a model is never promoted, whatever the champion.
    ``test_mse``: the evaluation's test MSE of this model (the same sums `lifecycle.decision.mse` computes); with
    it and ``model``, a model that already is the champion (a fully cached rerun) is recognised from the pointer
    alone.

    Decided against the latest generation N, the pointer moves by creating N+1 only if it is absent; when another
    run created N+1 first, the decision is made again against the new champion (no lock, on every store).
    """
    challenger_sha = core.read_manifest(model_path)["sha256"]
    store = storage.open_store(root)
    if model is not None and test_mse is not None and not off_optimum:
        generation = _latest(store, model)
        if lifecycle.champion.names_model(root, generation, model_path, challenger_sha, model):
            reason = UNCHANGED
            return _block(True, reason, storage.public(model_path), test_mse, test_mse, model), "info", None
    trained = core.read_pt(model_path)
    kind = lifecycle.champion.Model.of(trained["target"], trained["features"], model.name if model else None)
    partitions = [core.read_pt(p) for p in tensors_paths]
    challenger_mse = lifecycle.decision.mse(partitions, trained["weights"], trained["bias"])
    if off_optimum:
        reason = (
            f"the model is off the least-squares optimum ({off_optimum}): not promoted; pass "
            "--promote-off-optimum to promote it anyway"
        )
        champion = lifecycle.champion.champion_model_path(root, kind)
        shown = storage.public(champion) if champion else "none"
        return _block(False, reason, shown, None, challenger_mse, kind), "warning", None

    generation = _latest(store, kind)
    for lost in itertools.count():
        if lost:  # another run created the generation this one meant to: decide again against it
            generation = _latest(store, kind)
        champion, unusable = lifecycle.champion.read_usable(root, generation, kind)
        write, block, level = _judge(
            kind, champion, unusable, trained, partitions, challenger_mse, challenger_sha, tolerance
        )
        if lost:
            block["reason"] += f" (decided again after {lost} concurrent promotion(s))"
        if not write:
            return block, level, None
        block["champion"] = storage.public(model_path)
        wrote = lifecycle.champion.create_generation(
            store, generation + 1, model_path, run_id, trained, challenger_mse, kind
        )
        if wrote is not None:
            return block, level, wrote
    raise AssertionError("unreachable")


def _latest(store: storage.Store, model: lifecycle.champion.Model) -> int:
    try:
        return model.latest(store)
    except OSError as exc:
        raise store.error(exc) from None


def _judge(
    kind: lifecycle.champion.Model,
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
    champion_mse, why = None, f"{unusable}: promoted in its place" if unusable else "first model of its kind: promoted"
    if champion is not None and champion["model_sha256"] == challenger_sha:
        reason = UNCHANGED
        shown = storage.public(champion["model"])
        return False, _block(True, reason, shown, challenger_mse, challenger_mse, kind), level
    if champion is not None:
        theirs = lifecycle.champion.Model.of(champion["target"], champion["features"], champion["model_name"])
        if theirs != kind:  # a name the user gave twice, to models of other columns: the first one keeps it
            reason = (
                f"the model named {kind.name} is {theirs.label}, this run's is {kind.label}: another model under "
                "the same name, not promoted; pass another --model-name"
            )
            block = _block(False, reason, storage.public(champion["model"]), None, challenger_mse, kind)
            return False, block, "warning"
        model = core.read_pt(champion["model"])
        weights = _in_order(model["weights"], list(champion["features"]), list(trained["features"]))
        champion_mse = lifecycle.decision.mse(partitions, weights, model["bias"])
    promoted, reason = lifecycle.decision.decide(challenger_mse, champion_mse, tolerance, why)
    path = "" if promoted else storage.public(champion["model"])  # the caller names the challenger when it wins
    block = _block(promoted, reason, path, champion_mse, challenger_mse, kind)
    return promoted, block, level if promoted else "warning"


def _in_order(weights: Any, theirs: list[str], ours: list[str]) -> Any:
    """The champion's weights in the order of this run's features (the same set, perhaps in another order), so
    it is scored on this run's test rows column for column."""
    if theirs == ours:
        return weights
    return weights.reshape(-1)[[theirs.index(name) for name in ours]]


def _block(
    promoted: bool,
    reason: str,
    champion: str,
    champion_mse: float | None,
    challenger_mse: float,
    model: lifecycle.champion.Model,
) -> dict:
    finite = champion_mse is not None and math.isfinite(champion_mse)
    return {
        "promoted": promoted,
        "model": model.label,  # which model's champion: one per model
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
    target: str,
    model_name: str | None,
    root: str,
) -> dict:
    """Champion vs challenger on this run's test rows; moves the champion pointer of this run's model (its
    ``target``, the features the evaluation names, and ``model_name``) when the challenger wins. A model the
    evaluation found off the optimum (``summary_path``'s ``off_optimum``) is not promoted unless
    ``promote_off_optimum``."""
    summary = core.read_json(summary_path)
    off = None if promote_off_optimum else summary.get("off_optimum")
    test_mse = summary["metrics"]["test"]["mse"]
    model = lifecycle.champion.Model.of(target, list(summary["weights"]), model_name)  # weights: feature → weight
    block, level, wrote = promote(root, tensors_paths, model_path, run_id, tolerance, off, test_mse, model)
    getattr(get_run_logger(), level)(
        "model %s: read %s, %s and %d partition(s)' test rows; %s; wrote %s; champion: %s",
        block["model"],
        model.where(root),
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
    return f"promotion: {verdict} ({block['reason']}); model {block['model']}; champion {block['champion']}"
