"""The champions: for each model, which of its runs' models the store promoted last, as a sequence of immutable
pointers.

**One champion per model.** A model is its target and its set of features, and the name the user gave it, if any
(`Model`); a run's promotion only ever competes with the champion of its own model, so a run on other data never
replaces another model's champion. Each model has its own generations, in a folder never named by a column (column
names are data): ``champion/by-name/<name>/gen/`` for a named model (the name is checked against
``storage.MODEL_NAME_PATTERN``), ``champion/by-columns/<digest>/gen/`` for an unnamed one, the digest the first 16
hex digits of the sha256 of ``[target, sorted features]`` (the features' order does not make another model).

Each generation, ``00000001.json``, ``…02.json``… (with its manifest), names the model artifact and the run that
made it; the model file is never copied or changed. Their shape is fixed (``champion_version`` 2): ``model`` (the
model's path relative to the root, posix), ``model_sha256``, ``flow_run_id``, ``features`` (in the model's
order), ``target``, ``test_mse``, ``promoted_at``, ``model_name`` (null for an unnamed model). A model's current
champion is its highest generation; a promotion that decided against generation N creates N+1 only if it is
absent (`storage.Store.create`: an exclusive link on disk, ``If-None-Match: *`` on an object store); if another
run created N+1 first, it reads the new champion and decides again (tasks/promote.py). One protocol on every
store: no lock, no clock, nothing a killed run leaves stale.

A store from before (2026-12-10) has one champion for all its runs, ``champion/gen/<n>.json`` (or a folder's
``champion/champion.json``, before 2026-12-02; version 1, no name): it is still read, as the champion of the
unnamed model whose target and features it records, while that model has no generation of its own; it is never
written again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import stagecore as core
import storage
from storage import validate

# what tasks/ and flows/ use (tests/test_surface.py)
__all__ = [
    "Model",
    "champion_model_path",
    "create_generation",
    "models",
    "names_model",
    "read_usable",
    "take_back",
]

CHAMPION_VERSION = validate.CHAMPION_VERSION
POINTER = "champion.json"
_GENERATION = re.compile(r"(\d{8,})\.json")  # <model's folder>/gen/<n>.json
_NAME = re.compile(storage.MODEL_NAME_PATTERN)
_DIGEST = re.compile(storage.MODEL_DIGEST_PATTERN)
MAX_POINTER_BYTES = validate.SMALL_JSON_BYTES
FIELDS = validate.CHAMPION_FIELDS
GENERATIONS = f"{storage.CHAMPION_DIR}/{storage.CHAMPION_GENERATIONS}"  # before 2026-12-10: still read
LEGACY = f"{storage.CHAMPION_DIR}/{POINTER}"  # a folder's one pointer before 2026-12-02: still read, never written
SHOWN_FEATURES = 8  # a label lists this many features, then how many more


def _shown(name: str) -> str:
    """A column name as labels show it: as it is, or its ``repr`` when it holds a control character (labels go to
    log lines and the terminal as plain text; the reports escape them, docs/security.md)."""
    return name if name.isprintable() else repr(name)


@dataclass(frozen=True)
class Model:
    """What a champion is the champion of: a target, a set of features, and the name the user gave it (or None).
    Two runs are of the same model when all three are equal; the features' order does not count."""

    target: str
    features: tuple[str, ...]  # sorted
    name: str | None = None

    @classmethod
    def of(cls, target: str, features: list[str] | tuple[str, ...], name: str | None = None) -> Model:
        """The model of a run or pointer; ValueError for a name that is not a model's name (never a path)."""
        if name is not None and not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a model's name ({storage.MODEL_NAME_PATTERN})")
        return cls(str(target), tuple(sorted(str(f) for f in features)), name)

    @property
    def id(self) -> str:
        """How a user names it (``--model-name``): its name, or for an unnamed model the digest of its columns."""
        if self.name is not None:
            return self.name
        columns = json.dumps([self.target, list(self.features)]).encode()
        return hashlib.sha256(columns).hexdigest()[:16]

    @property
    def folder(self) -> str:
        """Its generations' folder, relative to the root: made of a checked name or a digest, never a column."""
        by = storage.CHAMPION_BY_NAME if self.name is not None else storage.CHAMPION_BY_COLUMNS
        return f"{storage.CHAMPION_DIR}/{by}/{self.id}/{storage.CHAMPION_GENERATIONS}"

    @property
    def label(self) -> str:
        """``name (target ← features)``, or ``target ← features`` for an unnamed model: for people."""
        more = len(self.features) - SHOWN_FEATURES
        features = ", ".join(_shown(f) for f in self.features[:SHOWN_FEATURES]) + (f" … (+{more})" if more > 0 else "")
        columns = f"{_shown(self.target)} ← {features}"
        return f"{self.name} ({columns})" if self.name is not None else columns

    def where(self, root: str | Path) -> str:
        """Where this model's pointer generations live, for messages."""
        return storage.open_store(root).path(self.folder) + "/"

    def latest(self, store: storage.Store) -> int:
        """This model's highest generation; 0 when it has none yet (see `latest_generation`)."""
        return latest_generation(store, self)


def _model_of(body: dict[str, Any]) -> Model:
    """The model a (checked) pointer is the champion of."""
    return Model.of(body["target"], body["features"], body.get("model_name"))


def generation_rel(generation: int, model: Model | None = None) -> str:
    """Generation ``n`` of ``model``'s pointer (of the one champion from before 2026-12-10 for None), relative
    to the store."""
    return f"{model.folder if model is not None else GENERATIONS}/{generation:08d}.json"


def _latest(store: storage.Store, folder: str) -> int:
    """The highest generation in ``folder``; 0 when there is none.

    Listed afresh, then probed forward one read at a time, so a listing that lags behind a create (some
    S3-compatible stores list eventually) never hides a newer generation from a promotion for long: its
    conditional create would fail and it would look again.
    """
    found = [int(m.group(1)) for name in store.names(folder) if (m := _GENERATION.fullmatch(name))]
    generation = max(found, default=0)
    while store.read(f"{folder}/{generation + 1:08d}.json", limit=0) is not None:
        generation += 1
    return generation


def latest_generation(store: storage.Store, model: Model | None = None) -> int:
    """The highest generation of ``model``'s pointer (of the store's only model for None); 0 when none."""
    model = model if model is not None else _sole(store)
    return 0 if model is None else _latest(store, model.folder)


def _folders(store: storage.Store) -> list[str]:
    """The models' generation folders present in the store, by their listed names: only names a model can have
    (a folder of anyone else's, or a name that is not one, is not looked into)."""
    found = []
    for by, pattern in ((storage.CHAMPION_BY_NAME, _NAME), (storage.CHAMPION_BY_COLUMNS, _DIGEST)):
        base = f"{storage.CHAMPION_DIR}/{by}"
        found += [f"{base}/{n}/{storage.CHAMPION_GENERATIONS}" for n in store.names(base) if pattern.fullmatch(n)]
    return found


def _legacy(store: storage.Store) -> tuple[str, dict[str, Any]] | None:
    """The one champion from before 2026-12-10 (its latest ``champion/gen/<n>.json``, else a folder's
    ``champion/champion.json``), checked; None when there is none, or it is not ours (then it is no model's)."""
    generation = _latest(store, GENERATIONS)
    rel = generation_rel(generation) if generation else LEGACY
    content = store.read(rel, limit=MAX_POINTER_BYTES)
    if content is None:
        return None
    try:
        return rel, _parse(content, store.path(rel))
    except ValueError:
        return None


def models(root: str | Path) -> list[Model]:
    """The models that have a champion in the store, by label: each model folder whose latest pointer is ours
    and is the champion of the model the folder is for, and the champion from before 2026-12-10 when its
    model has no generation of its own. Pointers are read, not the models they name."""
    return _models(storage.open_store(root))


def _models(store: storage.Store) -> list[Model]:
    found: dict[str, Model] = {}
    try:
        for folder in _folders(store):
            generation = _latest(store, folder)
            content = store.read(f"{folder}/{generation:08d}.json", limit=MAX_POINTER_BYTES) if generation else None
            try:
                model = _model_of(_parse(content, store.path(folder))) if content is not None else None
            except ValueError:
                continue  # not a pointer of ours: no model's champion
            if model is not None and model.folder == folder:
                found[folder] = model
        legacy = _legacy(store)
    except OSError as exc:
        raise store.error(exc) from None
    if legacy is not None and (model := _model_of(legacy[1])).folder not in found:
        found[model.folder] = model
    return sorted(found.values(), key=lambda m: (m.label, m.id))


def _sole(store: storage.Store) -> Model | None:
    """The store's one model with a champion (None when there is none); ValueError when there are several."""
    found = _models(store)
    if len(found) > 1:
        listed = "; ".join(m.label for m in found)
        raise ValueError(f"{store.url}: {len(found)} models have a champion ({listed}): say which")
    return found[0] if found else None


def pointer_path(root: str | Path, model: Model | None = None) -> str:
    """The current champion's pointer of ``model`` (of the store's only model for None): its latest generation,
    or where its first goes; the champion from before 2026-12-10 while it stands in for the model's."""
    store = storage.open_store(root)
    model = model if model is not None else _sole(store)
    if model is None:
        raise ValueError(f"{store.url}: no champion yet")
    generation = latest_generation(store, model)
    if not generation and (legacy := _legacy(store)) is not None and _model_of(legacy[1]) == model:
        return store.path(legacy[0])
    return store.path(generation_rel(max(generation, 1), model))


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


def read_champion(root: str | Path, generation: int | None = None, model: Model | None = None) -> dict[str, Any] | None:
    """``model``'s champion pointer (the store's only model's for None), generation ``generation`` (default: the
    latest; 0: the champion from before 2026-12-10 when it is this model's), checked field by field, with
    ``model`` the local path of the model file, verified; None when the model has no champion.

    On an object store the model and its manifest are downloaded into the scratch mirror first (``storage.public``
    gives the URL). ValueError when the pointer is not ours (wrong shape, a model outside the root, the champion
    of another model than its folder's); ``core.IntegrityError`` when the model file is missing, does not match
    its manifest or the pointer's sha256.
    """
    store = storage.open_store(root)
    try:
        model = model if model is not None else _sole(store)
        if model is None:
            return None
        generation = latest_generation(store, model) if generation is None else generation
        if generation:
            rel = generation_rel(generation, model)
            content = store.read(rel, limit=MAX_POINTER_BYTES)
            if content is None:
                raise core.IntegrityError(f"{store.path(rel)}: champion pointer is missing")
            body = _parse(content, store.path(rel))
        else:
            legacy = _legacy(store)
            if legacy is None or _model_of(legacy[1]) != model:
                return None
            rel, body = legacy
    except OSError as exc:
        raise store.error(exc) from None
    return verified(store, rel, body, model)


def verified(store: storage.Store, rel: str, body: dict[str, Any], model: Model) -> dict[str, Any]:
    """Pointer ``body`` (at ``rel``, checked) of ``model``, with ``model`` the local path of its model file,
    downloaded and verified against its manifest and the pointer's sha256 (`read_champion`'s errors); the
    registry's aliases (lifecycle/registry.py) are read through it too."""
    pointer = store.path(rel)
    if (theirs := _model_of(body)).folder != model.folder:
        raise ValueError(f"{pointer}: the champion of {theirs.label}, in the folder of {model.label}")
    path = _inside(store, body["model"], pointer)
    _download(store, body["model"])
    _download(store, body["model"] + storage.MANIFEST_SUFFIX)
    try:  # a pointer may name a model, and nothing else
        manifest = validate.model_manifest(core.verify(path, load=True), what=str(path))
    except validate.Invalid as exc:
        raise core.IntegrityError(str(exc)) from None
    if manifest["sha256"] != body["model_sha256"]:
        raise core.IntegrityError(f"{storage.public(path)}: sha256 does not match the champion pointer {pointer}")
    return {**body, "model": str(path)}


def names_model(root: str | Path, generation: int, path: str, sha256: str, model: Model) -> bool:
    """Whether generation ``generation`` of ``model``'s pointer names exactly ``path`` (this path in the store,
    this sha256).

    The pointer is read and checked field by field; the model file is not reopened: a caller asks about a model
    it has just verified itself (a stage's output, checked against its manifest on a cache hit). So a fully cached
    rerun learns that its model already is the champion without loading a tensor (nor importing torch)."""
    if not generation:
        return False
    store = storage.open_store(root)
    rel = generation_rel(generation, model)
    try:
        content = store.read(rel, limit=MAX_POINTER_BYTES)
    except OSError as exc:
        raise store.error(exc) from None
    if content is None:
        return False
    try:
        body = _parse(content, store.path(rel))
    except ValueError:
        return False  # not ours: the full read decides what to do about it
    return body["model"] == storage.store_relative(root, path) and body["model_sha256"] == sha256


def read_usable(root: str | Path, generation: int, model: Model) -> tuple[dict[str, Any] | None, str | None]:
    """(generation ``generation`` of ``model``'s champion, None), or (None, why) for a champion that cannot be
    used: a pointer that is not ours, a model that is missing or does not match. A store that cannot be reached or
    refused us raises (`core.InputError`): the run fails, and the champion stays."""
    try:
        return read_champion(root, generation, model), None
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


def champion_model_path(root: str | Path, model: Model | None = None) -> str | None:
    """The absolute path of ``model``'s champion's verified ``model.pt`` (the store's only model's for None; on
    an object store: its verified download in the scratch mirror), or None when it has no champion yet."""
    champion = read_champion(root, model=model)
    return None if champion is None else champion["model"]


def _pointer(root: str | Path, path: str, run_id: str, trained: dict, test_mse: float, model: Model) -> dict[str, Any]:
    return {
        "champion_version": CHAMPION_VERSION,
        "model": storage.store_relative(root, path),
        "model_sha256": core.read_manifest(path)["sha256"],
        "flow_run_id": run_id,
        "features": list(trained["features"]),
        "target": str(trained["target"]),
        "test_mse": float(test_mse),
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_name": model.name,
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
    store: storage.Store, generation: int, path: str, run_id: str, trained: dict, test_mse: float, model: Model
) -> str | None:
    """Create generation ``generation`` of ``model``'s pointer, naming the model file ``path``, only if no run
    has created it (exclusive create on disk, a conditional write on an object store), then its manifest; where
    it is, or None when another run created that generation first."""
    pointer = _pointer(store.url, path, run_id, trained, test_mse, model)
    if _model_of(pointer) != model:
        raise ValueError(f"{path} is a model of {_model_of(pointer).label}, not of {model.label}")
    return create_pointer(store, generation_rel(generation, model), pointer)


def create_pointer(store: storage.Store, rel: str, pointer: dict[str, Any]) -> str | None:
    """Create the pointer generation ``rel`` only if it is absent, then its manifest; where it is, or None when
    another writer created it first (a promotion's, a rollback's, an alias's: one protocol)."""
    content = (json.dumps(pointer, indent=2) + "\n").encode()
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
    generation of its model's pointer is still that model's latest, it is deleted, so the champion before it is
    the champion again. A run that promoted since, over this one's, is left alone. Whether anything was taken
    back. Every model's latest generation is looked at: a run promotes at most one model's."""
    store = storage.open_store(root)
    for folder in _folders(store):
        generation = _latest(store, folder)
        rel = f"{folder}/{generation:08d}.json"
        if generation and _run_of(store.read(rel, limit=MAX_POINTER_BYTES)) == run_id:
            store.remove([rel, rel + storage.MANIFEST_SUFFIX])
            return True
    return False
