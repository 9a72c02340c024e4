"""The champion: which model the store's runs promoted last, as a sequence of immutable pointers.

The champion is ``<root>/champion/gen/00000001.json``, ``…02.json``… (each with its manifest), naming the model
artifact and the run that made it; the model file is never copied or changed. Their shape is fixed
(``champion_version`` 1): ``model`` (the model's path relative to the root, posix), ``model_sha256``,
``flow_run_id``, ``features``, ``target``, ``test_mse``, ``promoted_at``. The current champion is the highest
generation; a promotion that decided against generation N creates N+1 only if it is absent
(`storage.Store.create`: an exclusive link on disk, ``If-None-Match: *`` on an object store); if another run
created N+1 first, it reads the new champion and decides again (tasks/promote.py). One protocol on every store:
no lock, no clock, nothing a killed run leaves stale.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import stagecore as core
import storage
from storage import validate

# what tasks/ and flows/ use (tests/test_surface.py)
__all__ = [
    "champion_model_path",
    "create_generation",
    "latest_generation",
    "names_model",
    "read_usable",
    "take_back",
    "where",
]

CHAMPION_VERSION = validate.CHAMPION_VERSION
POINTER = "champion.json"
_GENERATION = re.compile(r"(\d{8,})\.json")  # champion/gen/<n>.json
MAX_POINTER_BYTES = validate.SMALL_JSON_BYTES
FIELDS = validate.CHAMPION_FIELDS
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


def names_model(root: str | Path, generation: int, model: str, sha256: str) -> bool:
    """Whether generation ``generation``'s pointer names exactly ``model`` (this path in the store, this sha256).

    The pointer is read and checked field by field; the model file is not reopened: a caller asks about a model
    it has just verified itself (a stage's output, checked against its manifest on a cache hit). So a fully cached
    rerun learns that its model already is the champion without loading a tensor (nor importing torch)."""
    if not generation:
        return False
    store = storage.open_store(root)
    try:
        content = store.read(generation_rel(generation), limit=MAX_POINTER_BYTES)
    except OSError as exc:
        raise store.error(exc) from None
    if content is None:
        return False
    try:
        body = _parse(content, store.path(generation_rel(generation)))
    except ValueError:
        return False  # not ours: the full read decides what to do about it
    return body["model"] == storage.store_relative(root, model) and body["model_sha256"] == sha256


def read_usable(root: str | Path, generation: int) -> tuple[dict[str, Any] | None, str | None]:
    """(generation ``generation``'s champion, None), or (None, why) for a champion that cannot be used: a
    pointer that is not ours, a model that is missing or does not match. A store that cannot be reached or
    refused us raises (`core.InputError`): the run fails, and the champion stays."""
    try:
        return read_champion(root, generation), None
    except core.IntegrityError as exc:
        return None, f"the champion cannot be used ({exc})"
    except core.InputError:
        raise
    except ValueError as exc:  # a pointer that is not ours
        return None, f"the champion cannot be used ({exc})"


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
) -> str | None:
    """Create generation ``generation`` of the pointer only if no run has created it (exclusive create on
    disk, a conditional write on an object store), then its manifest; where it is, or None when another run
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
    return store.path(rel)


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
