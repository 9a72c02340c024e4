"""Model aliases and rollback, as a library (the command is flows/registry.py; docs/lifecycle.md "Aliases and
rollback").

Every alias is a model's, like its champion, and a sequence of immutable pointer generations like the champion's,
created only if absent (`lifecycle.champion.create_pointer`): no lock, on a folder and on an object store alike.

- ``champion``: the model's champion (its latest generation, `lifecycle.champion`).
- ``previous``: the champion before the last change of the champion, DERIVED: generation N−1's model. Never
  stored, so it can never disagree with the champion's generations.
- a user-named alias (``staging``, ``served``; `storage.ALIAS_PATTERN`, never ``champion`` or ``previous``): its
  own generations beside the champion's, ``<model's folder>/aliases/<alias>/gen/<n>.json``.

``rollback`` makes ``previous`` the champion again: it creates champion generation N+1 naming generation N−1's
model, with a ``reason`` (who and why). Two racing rollbacks both try to create N+1; one does, the other re-reads
and finds the champion already rolled back (or changed otherwise: it refuses). A pointer the registry wrote is
a champion pointer with one more field, ``reason``; those pointers are the registry's change log (`changes`),
which ``python -m flows.history`` shows after the runs.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pyarrow.compute as pc

import stagecore as core
import storage
from lifecycle import champion, history
from storage import validate

# what tasks/ and flows/ use (tests/test_surface.py)
__all__ = ["changes", "choose", "entries", "resolve", "rollback", "set_alias"]

CHAMPION, PREVIOUS = "champion", "previous"
DERIVED = (CHAMPION, PREVIOUS)
_ALIAS = re.compile(storage.ALIAS_PATTERN)


class Conflict(ValueError):
    """Another writer changed the champion between this rollback's read and its create: nothing was written."""


def check_alias(alias: str, settable: bool = False) -> str:
    """``alias`` when it is an alias's name; ValueError otherwise (and for ``champion``/``previous`` when it is
    to be set: those two follow the champion's generations)."""
    if not _ALIAS.fullmatch(alias):
        raise ValueError(f"alias {alias!r}: not an alias name ({storage.ALIAS_PATTERN}); pass e.g. staging")
    if settable and alias in DERIVED:
        raise ValueError(f"alias {alias}: follows the champion's generations and cannot be set; promote or rollback")
    return alias


def alias_folder(model: champion.Model, alias: str) -> str:
    """Where a user-named alias's generations live, relative to the root: beside the model's champion's."""
    return f"{model.folder.rsplit('/', 1)[0]}/{storage.CHAMPION_ALIASES}/{alias}/{storage.CHAMPION_GENERATIONS}"


def choose(root: str, name: str | None) -> champion.Model:
    """The model a registry command is about: the one named ``name`` (its name, or an unnamed model's id), or
    the store's only model. ValueError listing the models otherwise."""
    found = champion.models(root)
    listed = "; ".join(m.label if m.name is not None else f"{m.label} [id {m.id}]" for m in found)
    if not found:
        raise ValueError(f"{root}: no model has a champion yet; train first (python -m flows.train)")
    if name is None:
        if len(found) > 1:
            raise ValueError(f"{root}: {len(found)} models have a champion ({listed}); pass --model-name NAME")
        return found[0]
    named = [m for m in found if m.name == name] or [m for m in found if m.name is None and m.id == name]
    if not named:
        raise ValueError(f"--model-name {name}: no model of that name or id in {root} (models: {listed})")
    return named[0]


def _read(store: storage.Store, folder: str, generation: int) -> tuple[str, dict[str, Any]] | None:
    """Generation ``generation`` of the pointers in ``folder``, checked (ValueError when not ours); None when
    absent."""
    rel = f"{folder}/{generation:08d}.json"
    content = store.read(rel, limit=champion.MAX_POINTER_BYTES)
    return None if content is None else (rel, champion._parse(content, store.path(rel)))


def _where(store: storage.Store, model: champion.Model, alias: str) -> tuple[str, int] | None:
    """(folder, generation) of what ``alias`` of ``model`` names now; None when it names nothing."""
    latest = champion.latest_generation(store, model)
    if alias == CHAMPION:
        return (model.folder, latest) if latest else None
    if alias == PREVIOUS:
        return (model.folder, latest - 1) if latest > 1 else None
    folder = alias_folder(model, check_alias(alias))
    generation = champion._latest(store, folder)
    return (folder, generation) if generation else None


def _entry(store: storage.Store, rel: str, body: dict[str, Any], generation: int) -> dict[str, Any]:
    return {
        "model": body["model"],  # relative to the store, posix
        "run": body["flow_run_id"],  # the run that trained it
        "sha256": body["model_sha256"],
        "test_mse": body["test_mse"],
        "generation": generation,
        "at": body["promoted_at"],
        "reason": body.get("reason"),  # None for a promotion
        "pointer": store.path(rel),
    }


def entries(root: str, model: champion.Model) -> dict[str, dict[str, Any] | None]:
    """Each alias of ``model`` and what it names (pointers read and checked, model files not opened):
    ``champion``, ``previous`` (None when there is none), then the user-named ones by name."""
    store = storage.open_store(root)
    try:
        base = alias_folder(model, "x").rsplit("/", 2)[0]
        named = sorted(n for n in store.names(base) if _ALIAS.fullmatch(n) and n not in DERIVED)
        found: dict[str, dict[str, Any] | None] = {}
        for alias in [*DERIVED, *named]:
            where = _where(store, model, alias)
            read = _read(store, *where) if where else None
            found[alias] = None if read is None else _entry(store, *read, where[1])
        legacy = champion._legacy(store) if found[CHAMPION] is None else None
    except OSError as exc:
        raise store.error(exc) from None
    if legacy is not None and champion._model_of(legacy[1]) == model:
        found[CHAMPION] = _entry(store, *legacy, 0)  # the one champion from before 2026-12-10
    return found


def resolve(root: str, model: champion.Model, alias: str) -> dict[str, Any]:
    """``alias`` of ``model``: its pointer, checked, with ``model`` the local path of the verified model file
    (`lifecycle.champion.verified`). ValueError when the alias names nothing; the champion's errors otherwise."""
    if alias == CHAMPION:
        found = champion.read_champion(root, model=model)
        if found is None:
            raise ValueError(f"model {model.label} has no champion yet; train first")
        return found
    store = storage.open_store(root)
    return champion.verified(store, *_pointed(store, model, alias), model)


def _pointed(store: storage.Store, model: champion.Model, alias: str) -> tuple[str, dict[str, Any]]:
    """(where, checked pointer) of what ``alias`` of ``model`` names now; ValueError when it names nothing."""
    try:
        where = _where(store, model, alias)
        read = _read(store, *where) if where else None
    except OSError as exc:
        raise store.error(exc) from None
    if read is None:
        what = "no previous champion (one generation only)" if alias == PREVIOUS else f"no alias {alias}"
        raise ValueError(f"model {model.label}: {what} in {store.url}; python -m flows.registry list shows them")
    return read


def _copy(store: storage.Store, model: champion.Model, alias: str) -> dict[str, Any]:
    """The pointer ``alias`` names, its model file verified first: never point at a model that cannot be used."""
    rel, body = _pointed(store, model, alias)
    champion.verified(store, rel, body, model)
    return {**{k: v for k, v in body.items() if k != "reason"}, "champion_version": champion.CHAMPION_VERSION}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")  # changes in one second stay in order


def _provenance(root: str, model: champion.Model, rel: str, sha256: str) -> tuple[str, float]:
    """(the run that trained the model file ``rel``, its test MSE), from a champion generation that named it or
    from the run history; ValueError when no run of this store recorded it."""
    store = storage.open_store(root)
    for generation in range(champion.latest_generation(store, model), 0, -1):
        read = _read(store, model.folder, generation)
        if read is not None and read[1]["model_sha256"] == sha256:
            return read[1]["flow_run_id"], read[1]["test_mse"]
    runs = history.read_history(root).filter(pc.equal(pc.field("model"), rel)).to_pylist()
    if runs:
        return runs[-1]["flow_run_id"], runs[-1]["test_mse"]
    raise ValueError(f"{store.path(rel)}: no run of this store recorded this model; pass a model.pt a run wrote")


def _from_path(root: str, model: champion.Model, path: str) -> dict[str, Any]:
    """The pointer body for the model file ``path`` (in the store: absolute, a URL, or relative to the root),
    verified against its manifest and checked to be a model of ``model``."""
    store = storage.open_store(root)
    rel = path if not (storage.is_url(path) or path.startswith("/")) else storage.store_relative(root, path)
    local = champion._inside(store, rel, path)
    champion._download(store, rel)
    champion._download(store, rel + storage.MANIFEST_SUFFIX)
    manifest = validate.model_manifest(core.verify(local, load=True), what=str(local))
    trained = core.read_pt(local)
    theirs = champion.Model.of(trained["target"], trained["features"], model.name)
    if theirs != model:
        raise ValueError(f"{path}: a model of {theirs.label}, not of {model.label}; pass one of this model's")
    run, test_mse = _provenance(root, model, rel, manifest["sha256"])
    return {
        "champion_version": champion.CHAMPION_VERSION,
        "model": rel,
        "model_sha256": manifest["sha256"],
        "flow_run_id": run,
        "features": list(trained["features"]),
        "target": str(trained["target"]),
        "test_mse": float(test_mse),
        "promoted_at": _now(),
        "model_name": model.name,
    }


def set_alias(root: str, model: champion.Model, alias: str, target: str, why: str) -> dict[str, Any]:
    """Point user-named ``alias`` of ``model`` at ``target``: a model file of the store, or ``@other-alias``.
    A new generation of the alias, created only if absent (a racing ``set`` retries on the next one: the last
    to create wins, none is lost); nothing when the alias already names that model. The alias's entry, with
    ``changed``."""
    check_alias(alias, settable=True)
    store = storage.open_store(root)
    body = _copy(store, model, target[1:]) if target.startswith("@") else _from_path(root, model, target)
    folder = alias_folder(model, alias)
    while True:
        generation = champion._latest(store, folder)
        current = _read(store, folder, generation) if generation else None
        if current is not None and current[1]["model_sha256"] == body["model_sha256"]:
            return {**_entry(store, *current, generation), "changed": False}
        pointer = {**body, "promoted_at": _now(), "reason": f"set {alias} to {target}: {why}"[:500]}
        rel = f"{folder}/{generation + 1:08d}.json"
        if champion.create_pointer(store, rel, pointer) is not None:
            return {**_entry(store, rel, pointer, generation + 1), "changed": True}


def rollback(root: str, model: champion.Model, why: str) -> dict[str, Any]:
    """Make ``previous`` the champion of ``model`` again: champion generation N+1 naming generation N−1's model
    (verified first), created only if absent. Its entry, with ``changed``; when another rollback created N+1
    first with the same model, that one's entry and ``changed`` False; `Conflict` when another writer changed
    the champion otherwise; ValueError when there is no previous champion."""
    store = storage.open_store(root)
    latest = champion.latest_generation(store, model)
    if latest < 2:
        raise ValueError(f"model {model.label}: no previous champion to roll back to (generation {latest} only)")
    rel, previous = _read(store, model.folder, latest - 1)
    champion.verified(store, rel, previous, model)  # never roll back to a model that cannot be used
    body = {**{k: v for k, v in previous.items() if k != "reason"}, "champion_version": champion.CHAMPION_VERSION}
    current = _read(store, model.folder, latest)[1]
    reason = f"rollback from generation {latest} ({current['model']}) to {latest - 1}: {why}"[:500]
    pointer = {**body, "promoted_at": _now(), "reason": reason}
    rel = champion.generation_rel(latest + 1, model)
    if champion.create_pointer(store, rel, pointer) is not None:
        return {**_entry(store, rel, pointer, latest + 1), "changed": True}
    now = champion.latest_generation(store, model)
    rel, theirs = _read(store, model.folder, now)
    if now == latest + 1 and theirs["model_sha256"] == body["model_sha256"] and "reason" in theirs:
        return {**_entry(store, rel, theirs, now), "changed": False}  # another rollback did it: already rolled back
    raise Conflict(
        f"model {model.label}: the champion changed while rolling back (generation {now} by another writer: "
        f"{theirs['model']}); nothing written; look at python -m flows.registry list, then roll back again"
    )


def changes(root: str) -> list[dict[str, Any]]:
    """The registry's changes (every pointer with a ``reason``: rollbacks and alias sets), oldest first, for the
    history: time, model, alias, generation, what it names and why. Pointers that are not ours are skipped."""
    store = storage.open_store(root)
    found = []
    for model in champion.models(root):
        base = alias_folder(model, "x").rsplit("/", 2)[0]
        named = [n for n in store.names(base) if _ALIAS.fullmatch(n) and n not in DERIVED]
        for alias, folder in [(CHAMPION, model.folder), *((n, alias_folder(model, n)) for n in named)]:
            for generation in range(1, champion._latest(store, folder) + 1):
                try:
                    read = _read(store, folder, generation)
                except ValueError:
                    continue
                if read is not None and "reason" in read[1]:
                    body = read[1]
                    found.append(
                        {
                            "time": body["promoted_at"],
                            "model_label": model.label,
                            "alias": alias,
                            "generation": generation,
                            "model": body["model"],
                            "run": body["flow_run_id"],
                            "reason": body["reason"],
                        }
                    )
    return sorted(found, key=lambda c: c["time"])
