"""After evaluate: champion and challenger. The first successful run's model becomes the champion; each later
run's model (the challenger) is promoted only if its test MSE is not worse than the champion's, re-scored on
THIS run's test rows, by more than ``promote_tolerance`` (relative to the champion's MSE).

The champion is a sequence of immutable pointers, ``<root>/champion/gen/00000001.json``, ``…02.json``… (each with
its manifest), naming the model artifact and the run that made it; the model file is never copied or changed.
Their shape is fixed (``champion_version`` 1): ``model`` (the model's path relative to the root, posix),
``model_sha256``, ``flow_run_id``, ``features``, ``target``, ``test_mse``, ``promoted_at``. The current champion
is the highest generation; a promotion that decided against generation N creates N+1 only if it is absent
(`storage.Store.create`: an exclusive link on disk, ``If-None-Match: *`` on an object store); if another run
created N+1 first, it reads the new champion and decides again. One protocol on every store: no lock, no
clock, nothing a killed run leaves stale.

Why one uncached task rather than a cached "score champion" stage plus a promote step: the decision must be made
against the generation it will succeed (two runs racing to promote must end as if they ran one after the
other), so the champion can only be scored then. Scoring it on the test rows is cheap next to training, and it
stays a pure function (`mse`); the task is never cached, like ``publish_report``, because its side effect (the
pointer's next generation) must happen on every run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import stagecore as core
import storage
from linreg.metrics import Sums, score
from storage import validate

CHAMPION_VERSION = validate.CHAMPION_VERSION
POINTER = "champion.json"
_GENERATION = re.compile(r"(\d{8,})\.json")  # champion/gen/<n>.json
MAX_POINTER_BYTES = validate.SMALL_JSON_BYTES
FIELDS = validate.CHAMPION_FIELDS


class NotPromoted(core.InputError):
    """``--require-promotion`` and the challenger was not promoted: the run fails (exit 2 from the CLI)."""


# --- pure ------------------------------------------------------------------------------------------


def mse(partitions: Iterable[dict], weights: torch.Tensor, bias: float) -> float:
    """Test MSE of ``x @ weights + bias`` over every partition's test rows, in float64 (as evaluate computes it)."""
    sums = Sums()
    model = {"model": (weights.double().numpy().ravel(), float(bias))}
    for tensors in partitions:
        sums.merge(score(tensors["x_test"], tensors["y_test"], model)[0]["model"])
    return float(sums.metrics()["mse"])


def decide(
    challenger_mse: float, champion_mse: float | None, tolerance: float, why_no_champion: str | None = None
) -> tuple[bool, str]:
    """(promoted, reason). Promoted when there is no comparable champion, or when the challenger's test MSE is
    at most ``champion_mse * (1 + tolerance)``: equal counts as not worse."""
    if champion_mse is None:
        return True, why_no_champion or "first successful run: no champion yet"
    if not math.isfinite(champion_mse):
        return True, f"the champion's test MSE on this run's test rows is {champion_mse}: promoted"
    limit = champion_mse * (1 + tolerance)
    compare = f"challenger test MSE {challenger_mse:.6g} vs champion {champion_mse:.6g} on this run's test rows"
    allowed = f" (tolerance {tolerance:g}: up to {limit:.6g})" if tolerance else ""
    if challenger_mse <= limit:
        return True, f"{compare}{allowed}: not worse, promoted"
    return False, f"{compare}{allowed}: worse, not promoted; the champion stays"


# --- the pointer ----------------------------------------------------------------------------------

GENERATIONS = f"{storage.CHAMPION_DIR}/{storage.CHAMPION_GENERATIONS}"
LEGACY = f"{storage.CHAMPION_DIR}/{POINTER}"  # a folder's one pointer before 2026-12-02: still read, never written


def generation_rel(generation: int) -> str:
    """``champion/gen/<n>.json``: generation ``n`` of the champion's pointer, relative to the store."""
    return f"{GENERATIONS}/{generation:08d}.json"


def pointer_path(root: str | Path) -> str:
    """The current champion's pointer (its latest generation; for a store with none yet, where the first goes)."""
    store = storage.open_store(root)
    return store.path(generation_rel(max(latest_generation(store), 1)))


def where(root: str | Path) -> str:
    """Where the champion's pointer lives, for messages: the store's generations."""
    return storage.open_store(root).path(GENERATIONS) + "/"


def latest_generation(store: storage.Store) -> int:
    """The highest generation of the pointer; 0 when there is none yet.

    Listed afresh, then probed forward one read at a time, so a listing that lags behind a create (some
    S3-compatible stores list eventually) never hides a newer generation from a promotion for long: its
    conditional create would fail and it would look again.
    """
    found = [int(m.group(1)) for name in store.names(GENERATIONS) if (m := _GENERATION.fullmatch(name))]
    generation = max(found, default=0)
    while store.read(generation_rel(generation + 1), limit=0) is not None:
        generation += 1
    return generation


def _inside(store: storage.Store, relative: str, pointer: str) -> Path:
    """``relative`` as an absolute path inside the store's local ``work`` folder (on an object store its scratch
    mirror, where it is then downloaded); ValueError for an absolute path, ``..`` or a link out."""
    parts = PurePosixPath(relative)
    resolved = (store.work / parts).resolve()
    if parts.is_absolute() or ".." in parts.parts or store.work not in resolved.parents:
        raise ValueError(f"{pointer}: model {relative!r} is outside the artifacts folder")
    return resolved


def _parse(content: bytes, pointer: str) -> dict[str, Any]:
    """The pointer's JSON, checked field by field against its fixed shape (`storage.validate`); ValueError
    (`validate.Invalid`) when it is not ours."""
    return validate.champion_pointer(validate.load_json(content, pointer, limit=MAX_POINTER_BYTES), pointer)


def read_champion(root: str | Path, generation: int | None = None) -> dict[str, Any] | None:
    """The champion pointer (generation ``generation``, default: the latest), checked field by field, with
    ``model`` the local path of the model file, verified; None when there is no champion.

    On an object store the model and its manifest are downloaded into the scratch mirror first (``storage.public``
    gives the URL). ValueError when the pointer is not ours (wrong shape, a model outside the root);
    ``core.IntegrityError`` when the model file is missing, does not match its manifest or the pointer's sha256.
    """
    store = storage.open_store(root)
    try:
        generation = latest_generation(store) if generation is None else generation
        rel = generation_rel(generation) if generation else LEGACY
        content = store.read(rel, limit=MAX_POINTER_BYTES)
    except OSError as exc:
        raise store.error(exc) from None
    pointer = store.path(rel)
    if content is None:
        if generation:
            raise core.IntegrityError(f"{pointer}: champion pointer is missing")
        return None
    body = _parse(content, pointer)
    model = _inside(store, body["model"], pointer)
    _download(store, body["model"])
    _download(store, body["model"] + storage.MANIFEST_SUFFIX)
    try:  # a pointer may name a model, and nothing else
        manifest = validate.model_manifest(core.verify(model, load=True), what=str(model))
    except validate.Invalid as exc:
        raise core.IntegrityError(str(exc)) from None
    if manifest["sha256"] != body["model_sha256"]:
        raise core.IntegrityError(f"{storage.public(model)}: sha256 does not match the champion pointer {pointer}")
    return {**body, "model": str(model)}


def _download(store: storage.Store, relative: str) -> Path:
    """A local copy of ``relative``. IntegrityError when it is missing (a champion that cannot be used); a storage
    error (one line, the run fails) when it is there but cannot be read: a store's passing trouble must not
    cost a good champion its place."""
    try:
        return store.get(relative)
    except core.IntegrityError:
        try:
            there = store.size(relative) is not None
        except OSError as exc:
            raise store.error(exc) from None
        if there:
            raise store.error(OSError(f"{relative} is there but cannot be downloaded")) from None
        raise


def champion_model_path(root: str | Path) -> str | None:
    """The absolute path of the champion's verified ``model.pt`` (on an object store: its verified download in
    the scratch mirror), or None when there is no champion yet."""
    champion = read_champion(root)
    return None if champion is None else champion["model"]


def _pointer(root: str | Path, model: str, run_id: str, trained: dict, test_mse: float) -> dict[str, Any]:
    return {
        "champion_version": CHAMPION_VERSION,
        "model": storage.store_relative(root, model),
        "model_sha256": core.read_manifest(model)["sha256"],
        "flow_run_id": run_id,
        "features": list(trained["features"]),
        "target": str(trained["target"]),
        "test_mse": float(test_mse),
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _manifest(pointer: dict[str, Any], file: str, content: bytes) -> dict[str, Any]:
    model = {"name": "model", "path": pointer["model"], "sha256": pointer["model_sha256"]}  # store-relative
    digest, keys = hashlib.sha256(content).hexdigest(), {"keys": sorted(pointer)}
    return core.manifest_of(
        file, digest, len(content), "json", keys, "promote", [model], created=pointer["promoted_at"]
    )


def _run_of(content: bytes | None) -> str | None:
    try:
        body = json.loads(content) if content is not None else None
    except ValueError:
        return None
    return body.get("flow_run_id") if isinstance(body, dict) else None


def create_generation(
    store: storage.Store, generation: int, model: str, run_id: str, trained: dict, test_mse: float
) -> dict[str, Any] | None:
    """Create generation ``generation`` of the pointer only if no run has created it (exclusive create on
    disk, a conditional write on an object store), then its manifest; the pointer, or None when another run
    created that generation first."""
    pointer = _pointer(store.url, model, run_id, trained, test_mse)
    content = (json.dumps(pointer, indent=2) + "\n").encode()
    rel = generation_rel(generation)
    try:
        if not store.create(rel, content):
            return None
        manifest = _manifest(pointer, rel.rsplit("/", 1)[1], content)
        store.write(rel + storage.MANIFEST_SUFFIX, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise store.error(exc) from None
    return pointer


def take_back(root: str | Path, run_id: str) -> bool:
    """Undo run ``run_id``'s promotion, for a run that failed before its run record (docs/lifecycle.md): when its
    generation of the pointer is still the latest, it is deleted, so the champion before it is the champion
    again. A run that promoted since, over this one's, is left alone. Whether anything was taken back."""
    store = storage.open_store(root)
    generation = latest_generation(store)
    rel = generation_rel(generation)
    if generation == 0 or _run_of(store.read(rel, limit=MAX_POINTER_BYTES)) != run_id:
        return False
    store.remove([rel, rel + storage.MANIFEST_SUFFIX])
    return True


# --- the task --------------------------------------------------------------------------------------


def promote(
    root: str,
    tensors_paths: list[str],
    model_path: str,
    run_id: str,
    tolerance: float,
    off_optimum: str | None = None,
) -> tuple[dict[str, Any], str, str | None]:
    """Read the champion, score both models on this run's test rows, decide, move the pointer if promoted.
    Returns the ``promotion`` block, the log level's name and the pointer if it was written.

    ``off_optimum``: why this run's model is off the least-squares optimum (the evaluation's ``off_optimum``),
    unless the run was allowed to promote it anyway: such a model is never promoted, whatever the champion.

    The decision is made against the latest generation N and the pointer moves by creating N+1 only if it is
    absent; when another run created N+1 first, the champion is read again and the decision made again, against
    it (optimistic concurrency: no lock, no clock, nothing left stale by a killed run). Two racing runs end as if
    one ran after the other, on every store.
    """
    trained = core.read_pt(model_path)
    partitions = [core.read_pt(p) for p in tensors_paths]
    challenger_mse = mse(partitions, trained["weights"], trained["bias"])
    challenger_sha = core.read_manifest(model_path)["sha256"]
    if off_optimum:
        reason = (
            f"the model is off the least-squares optimum ({off_optimum}): not promoted; pass "
            "--promote-off-optimum to promote it anyway"
        )
        champion = champion_model_path(root)
        return (
            _block(False, reason, storage.public(champion) if champion else "none", None, challenger_mse),
            "warning",
            None,
        )

    store = storage.open_store(root)

    def judge(generation: int) -> tuple[bool, dict[str, Any], str]:
        champion, unusable = _read(root, generation)
        write, block, level = _judge(champion, unusable, trained, partitions, challenger_mse, challenger_sha, tolerance)
        if write:
            block["champion"] = storage.public(model_path)
        return write, block, level

    for lost in itertools.count():
        try:
            generation = latest_generation(store)
        except OSError as exc:
            raise store.error(exc) from None
        write, block, level = judge(generation)
        if lost:
            block["reason"] += f" (decided again after {lost} concurrent promotion(s))"
        if not write:
            return block, level, None
        if create_generation(store, generation + 1, model_path, run_id, trained, challenger_mse) is not None:
            return block, level, store.path(generation_rel(generation + 1))
    raise AssertionError("unreachable")


def _read(root: str, generation: int) -> tuple[dict[str, Any] | None, str | None]:
    """(champion, None), or (None, why) for a champion that cannot be used."""
    try:
        return read_champion(root, generation), None
    except core.IntegrityError as exc:
        return None, f"the champion cannot be used ({exc}): promoted in its place"
    except core.InputError:  # the store cannot be reached or refused us: the run fails, the champion stays
        raise
    except ValueError as exc:  # a pointer that is not ours
        return None, f"the champion cannot be used ({exc}): promoted in its place"


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
    champion_mse, why = None, unusable
    if champion is not None and champion["model_sha256"] == challenger_sha:
        reason = "this run's model is already the champion (same model file): unchanged"
        return False, _block(True, reason, storage.public(champion["model"]), challenger_mse, challenger_mse), level
    if champion is not None:
        same = list(champion["features"]) == list(trained["features"]) and champion["target"] == trained["target"]
        if same:
            model = core.read_pt(champion["model"])
            champion_mse = mse(partitions, model["weights"], model["bias"])
        else:
            why = (
                f"champion trained on features {champion['features']} → {champion['target']}, this run on "
                f"{list(trained['features'])} → {trained['target']}: not comparable, promoted"
            )
    promoted, reason = decide(challenger_mse, champion_mse, tolerance, why)
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
    off = None if promote_off_optimum else core.read_json(summary_path).get("off_optimum")
    block, level, wrote = promote(root, tensors_paths, model_path, run_id, tolerance, off)
    getattr(get_run_logger(), level)(
        "read %s, %s and %d partition(s)' test rows; %s; wrote %s; champion: %s",
        where(root),
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
