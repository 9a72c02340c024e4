"""Lifecycle events: what a run decided, in Prefect's event feed, for automations (a deployment's ``triggers:``)
to react to. docs/deployment.md#reacting-to-events lists them.

Each event's resource is the model, named by content (``linreg.model.<sha256[:16]>``), with its path relative to
the store and the store's URL, redacted; the payload has the numbers a consumer needs. Strings from data (column
names, paths) are payload and labels only: nothing here renders markup.

`training_events` and `predictions_event` are pure (testable without Prefect); `emit_training` and
`emit_predictions` read the model's manifest and send them. Fire-and-forget: `emit_event` only queues the event
for Prefect's events worker, which sends it on its own thread; an event that cannot be built or sent costs one
WARNING, never the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import stagecore as core
import storage
from tasks.promote import UNCHANGED

PROMOTED = "linreg.model.promoted"
REJECTED = "linreg.model.rejected"
OFF_OPTIMUM = "linreg.model.off-optimum"
PREDICTIONS_WRITTEN = "linreg.predictions.written"
ALIAS_SET = "linreg.model.alias-set"  # python -m flows.registry set
ROLLED_BACK = "linreg.model.rolled-back"  # python -m flows.registry rollback
RESOURCE_PREFIX = "linreg.model."
STORE_LABEL = "linreg.store"
# the work pool of the flow run that sent it ("none" outside one): prefect.yaml's predict-on-promotion answers the
# promotions of every pool but git-process, prefect-git.yaml's twin those of git-process (a label both can match;
# a trigger's `match_related` cannot say "not that pool")
POOL_LABEL = "linreg.work-pool"
NO_POOL = "none"

Event = tuple[str, dict[str, str], dict[str, Any]]  # (name, resource, payload): `emit_event`'s arguments


def in_store(root: str, path: str) -> str:
    """``path`` relative to the store at ``root`` (posix); a file outside it as given, a URL redacted."""
    try:
        return storage.store_relative(root, path)
    except ValueError:
        return storage.redact(storage.public(path))


def model_resource(model: str, sha256: str, store: str) -> dict[str, str]:
    """The model as an event's resource: by content, with its path in the store and the store (redacted)."""
    return {
        "prefect.resource.id": RESOURCE_PREFIX + sha256[:16],
        "prefect.resource.name": model,
        STORE_LABEL: storage.redact(store),
    }


def training_events(
    promotion: dict[str, Any],
    off_optimum: str | None,
    *,
    model: str,
    sha256: str,
    store: str,
    champion: str,
    run_id: str,
    target: str,
    features: Sequence[str],
) -> list[Event]:
    """A training run's events: ``off-optimum`` when evaluate found the model off the least-squares optimum, then
    ``promoted`` (the pointer moved to this model) or ``rejected`` (why, and the champion that stays). A rerun
    whose model already is the champion decided nothing new: no promotion event.

    ``promotion`` is tasks/promote.py's block; ``model`` and ``champion`` are relative to ``store``.
    """
    resource = model_resource(model, sha256, store)
    facts = {"model": model, "model_sha256": sha256, "flow_run_id": run_id, "target": target, "features": [*features]}
    if promotion.get("model"):  # which model it is (its name, or target ← features): each has its own champion
        facts["model_label"] = promotion["model"]
    events: list[Event] = []
    if off_optimum:
        events.append((OFF_OPTIMUM, resource, {**facts, "reason": off_optimum}))
    if promotion["promoted"] and promotion["reason"].startswith(UNCHANGED):
        return events
    numbers = {"test_mse": promotion["challenger_test_mse"], "previous_test_mse": promotion["champion_test_mse"]}
    if promotion["promoted"]:
        events.append((PROMOTED, resource, {**facts, **numbers, "reason": promotion["reason"]}))
    else:
        events.append((REJECTED, resource, {**facts, **numbers, "reason": promotion["reason"], "champion": champion}))
    return events


def predictions_event(
    *, model: str, sha256: str, store: str, predictions: Sequence[str], rows: int, data: str, run_id: str
) -> Event:
    """A prediction run's event: the model that predicted, the files it wrote (relative to ``store``), the rows,
    and the input (redacted)."""
    payload = {
        "model": model,
        "model_sha256": sha256,
        "rows": int(rows),
        "predictions": [*predictions],
        "data": storage.redact(data),
        "flow_run_id": run_id,
    }
    return PREDICTIONS_WRITTEN, model_resource(model, sha256, store), payload


def registry_event(entry: dict[str, Any], *, alias: str, model_label: str, store: str) -> Event:
    """A registry change's event (lifecycle/registry.py's entry of the new generation): ``rolled-back`` for the
    champion, ``alias-set`` for a user-named alias; the model it now names, and why."""
    name = ROLLED_BACK if alias == "champion" else ALIAS_SET
    payload = {
        "alias": alias,
        "model_label": model_label,
        "model": entry["model"],
        "model_sha256": entry["sha256"],
        "flow_run_id": entry["run"],
        "generation": entry["generation"],
        "reason": entry["reason"],
    }
    return name, model_resource(entry["model"], entry["sha256"], store), payload


def emit(events: Iterable[Event]) -> int:
    """Queue each event for Prefect's events worker (it never waits on the server); one that JSON cannot hold or
    that is over the server's size limit is a WARNING (`emit_event` would log a traceback at ERROR, or raise).
    Each resource is labelled with the sender's work pool (`POOL_LABEL`). How many were queued."""
    from prefect.events import emit_event
    from prefect.settings import get_current_settings

    limit = get_current_settings().server.events.maximum_size_bytes
    pool = {POOL_LABEL: work_pool()}
    sent = 0
    for name, resource, payload in events:
        resource = {**resource, **pool}
        try:
            size = len(json.dumps([resource, payload], allow_nan=False).encode())
            if size > limit:
                raise ValueError(f"{size} bytes, over the server's limit of {limit}")
            sent += emit_event(event=name, resource=resource, payload=payload) is not None
        except Exception as exc:  # an event is a notice: never the run's failure
            _warn(f"could not send event {name} ({_first_line(exc)})")
    return sent


def work_pool() -> str:
    """The work pool of the flow run this process runs (its deployment's), or `NO_POOL`."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return (run.work_pool_name if run else None) or NO_POOL


def emit_training(
    root: str, run_id: str, model_path: str, promotion: dict[str, Any], summary: dict, target: str
) -> int:
    """Build and send a training run's events (`training_events`), once its run record has committed it.
    ``summary``: the evaluation's (its ``off_optimum``, and ``weights`` keyed by feature in the model's order)."""
    try:
        champion = promotion["champion"]
        events = training_events(
            promotion,
            summary.get("off_optimum"),
            model=in_store(root, model_path),
            sha256=core.read_manifest(model_path)["sha256"],
            store=root,
            champion=in_store(root, champion) if champion != "none" else champion,
            run_id=run_id,
            target=target,
            features=[*summary["weights"]],
        )
    except Exception as exc:
        _warn(f"could not build this run's events ({_first_line(exc)})")
        return 0
    return emit(events)


def emit_predictions(root: str, run_id: str, model_path: str, outputs: Sequence[str], rows: int, data: str) -> int:
    """Build and send a prediction run's ``linreg.predictions.written``."""
    try:
        event = predictions_event(
            model=in_store(root, model_path),
            sha256=core.read_manifest(model_path)["sha256"],
            store=root,
            predictions=[in_store(root, o) for o in outputs],
            rows=rows,
            data=data,
            run_id=run_id,
        )
    except Exception as exc:
        _warn(f"could not build this run's event ({_first_line(exc)})")
        return 0
    return emit([event])


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _warn(message: str) -> None:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        logger: logging.Logger | logging.LoggerAdapter = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("linreg.events")
    logger.warning("%s", message)
