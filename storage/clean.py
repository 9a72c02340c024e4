"""What the store can prove it wrote, and `clear` (``--clean-artifacts``), which deletes that and nothing else.

A file is the store's only when its content says so: a manifest of the store's shape in the stage folder it
names, and the artifact it describes (name and size); a cache record, run record, champion pointer or history
row that parses as its kind; an empty lock; the claim of a stage folder; the temporary file of a writer. Names
alone prove nothing: a user's ``runs/my-analysis.json`` or ``history/notes.parquet`` is not the store's, and
survives. The same rules run over a folder and over an object store, through `storage.store.Store`.

A run and a clean exclude each other (`in_use`, `cleaning`): on a folder through ``flock`` on the marker
(shared by runs, exclusive for a clean; the kernel drops it when a process dies); on an object store through
a conditionally created ``.cache/cleaning.json`` and one lease object per run under ``.cache/active/``.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage import validate
from storage.atomic import TEMP_OWNER
from storage.errors import InputError
from storage.layout import (
    ALIAS_PATTERN,
    CACHE_DIR,
    CHAMPION_ALIASES,
    CHAMPION_BY_COLUMNS,
    CHAMPION_BY_NAME,
    CHAMPION_DIR,
    CHAMPION_GENERATIONS,
    HISTORY_COLUMNS,
    HISTORY_DIR,
    KEY_PATTERN,
    MANIFEST_SUFFIX,
    MARKER,
    MODEL_DIGEST_PATTERN,
    MODEL_NAME_PATTERN,
    RUNS_DIR,
)
from storage.store import ACTIVE_DIR, CLAIM, CLEANING, LEASE, Store, lease_ok, open_store

_STAGE = re.compile(r"[a-z][a-z0-9_]*")
_KEY_FOLDER = re.compile(rf"(?P<key>{KEY_PATTERN})(\.\d+)?")
_CACHE_FILE = re.compile(rf"(?P<key>{KEY_PATTERN})\.(?P<kind>json|lock)")
_GENERATION = re.compile(r"\d{8,}\.json")
_MODEL_FOLDER = re.compile(rf"{CHAMPION_BY_NAME}/{MODEL_NAME_PATTERN}|{CHAMPION_BY_COLUMNS}/{MODEL_DIGEST_PATTERN}")
_ALIAS = re.compile(ALIAS_PATTERN)
_HISTORY_FILE = re.compile(r"\d{8}T\d{6}\d*Z-[A-Za-z0-9-]+\.parquet")
_RUN_FILE = re.compile(r"\d{8}T\d{6}-(?P<run>[A-Za-z0-9-]+)\.json")
_SMALL = 1 << 20  # records, pointers, manifests and history rows are a few kB; a larger one is not the store's


# --- the proofs ------------------------------------------------------------------------------------


def _json(tree: Store, rel: str) -> object:
    """A JSON file of the store's kinds, parsed with bounded size and depth; Invalid when it is not JSON."""
    content = tree.read(rel, limit=validate.MAX_JSON_BYTES)
    if content is None:
        raise validate.Invalid(f"{rel}: unreadable")
    return validate.load_json(content, rel)


def _history_row(content: bytes | None) -> bool:
    if content is None or len(content) > _SMALL:
        return False
    try:
        schema = pq.read_schema(pa.BufferReader(content))
    except (pa.ArrowException, OSError, ValueError):
        return False
    return tuple(schema.names) == HISTORY_COLUMNS


def _proves(tree: Store, rel: str, size: int, files: dict[str, int]) -> list[str]:
    """The files that ``rel`` shows to be the store's (``rel`` itself, and for a manifest its artifact); []
    when ``rel`` proves nothing."""
    parts = rel.split("/")
    name = parts[-1]
    if TEMP_OWNER.fullmatch(name):
        return [rel]
    if size > validate.MAX_JSON_BYTES and not name.endswith((".parquet", ".pt", ".png")):
        return []  # larger than any record or manifest the store writes; an artifact is proven by its manifest
    try:
        if parts == [MARKER]:
            validate.marker(_json(tree, rel))
            return [rel]
        if len(parts) == 3 and _STAGE.fullmatch(parts[0]) and (folder := _KEY_FOLDER.fullmatch(parts[1])):
            if name == CLAIM:
                body = _json(tree, rel)
                return [rel] if isinstance(body, dict) and isinstance(body.get("pid"), int) else []
            if not name.endswith(MANIFEST_SUFFIX):
                return []
            manifest = validate.manifest(_json(tree, rel), file=name[: -len(MANIFEST_SUFFIX)])
            if manifest["stage"] != parts[0] or manifest["key"] != folder["key"]:
                return []
            artifact = "/".join([*parts[:2], manifest["file"]])
            return [rel, artifact] if files.get(artifact) == manifest["size"] else [rel]
        if len(parts) == 3 and parts[0] == CACHE_DIR and (cached := _CACHE_FILE.fullmatch(name)):
            if cached["kind"] == "lock":
                return [rel] if size == 0 else []  # a lock holds nothing: deleting an empty one loses nothing
            content = tree.read(rel)
            validate.parse_record(content or b"", parts[1], cached["key"])
            return [rel]
        if (parts[:-1] == ACTIVE_DIR.split("/") and LEASE.fullmatch(name)) or rel == CLEANING:
            return [rel] if lease_ok(_json(tree, rel)) else []
        if len(parts) == 2 and parts[0] == RUNS_DIR and (run := _RUN_FILE.fullmatch(name)):
            record = validate.run_record(_json(tree, rel))
            return [rel] if record["run_id"] == run["run"] else []
        if len(parts) == 2 and parts[0] == HISTORY_DIR and _HISTORY_FILE.fullmatch(name):
            return [rel] if _history_row(tree.read(rel)) else []
        if parts[0] == CHAMPION_DIR:
            return _champion(tree, rel, size)
    except (ValueError, KeyError, TypeError):  # validate.Invalid is a ValueError: not the store's
        return []
    return []


def _champion(tree: Store, rel: str, size: int) -> list[str]:
    """A pointer generation, ``champion/by-name/<name>/gen/<n>.json`` or ``champion/by-columns/<digest>/gen/<n>.json``
    (one champion per model), an alias's ``<that model's folder>/aliases/<alias>/gen/<n>.json``,
    or from before 2026-12-10 ``champion/gen/<n>.json`` (and a folder's
    ``champion/champion.json`` from before 2026-12-02); its manifest (whose sha256 is the pointer's); the old
    pointer's lock (empty)."""
    parts = rel.split("/")
    name = parts[-1]
    pointer = parts == [CHAMPION_DIR, "champion.json"] or (
        len(parts) in (3, 5, 7)
        and parts[-2] == CHAMPION_GENERATIONS
        and bool(_GENERATION.fullmatch(name))
        and (len(parts) == 3 or bool(_MODEL_FOLDER.fullmatch("/".join(parts[1:3]))))
        and (len(parts) != 7 or (parts[3] == CHAMPION_ALIASES and bool(_ALIAS.fullmatch(parts[4]))))
    )
    if pointer:
        validate.champion_pointer(_json(tree, rel))
        return [rel]
    if parts == [CHAMPION_DIR, "champion.lock"]:
        return [rel] if size == 0 else []
    target = rel[: -len(MANIFEST_SUFFIX)]
    if rel.endswith(MANIFEST_SUFFIX) and _champion(tree, target, 0):
        manifest = _json(tree, rel)
        content = tree.read(target) or b""
        if isinstance(manifest, dict) and manifest.get("sha256") == hashlib.sha256(content).hexdigest():
            return [rel]
    return []


@dataclass
class Inventory:
    """A store's files sorted into the store's own and everything else."""

    owned: list[str]
    foreign: list[str]


def inventory(tree: Store) -> Inventory:
    files = tree.files()
    owned: set[str] = set()
    for rel, size in files.items():
        owned.update(_proves(tree, rel, size, files))
    owned &= set(files)
    foreign = sorted(set(files) - owned) + sorted(tree.others)
    return Inventory(sorted(owned), foreign)


def in_use(root: Path | str) -> AbstractContextManager[None]:
    """Held by a flow for its whole run: while any run holds it, a clean refuses to start, and the reverse."""
    return open_store(root).in_use()


# --- clean -----------------------------------------------------------------------------------------


@dataclass
class Cleared:
    where: str
    deleted: int
    kept: int


def clear(root: Path | str) -> Cleared:
    """Delete every file the store can prove it wrote under ``root``, and nothing else; the marker goes last,
    and only when nothing of anyone else's is left (the folder then stays a store that later runs can use)."""
    store = open_store(root)
    if problem := store.missing():
        raise InputError(f"{store.url}: {problem}; nothing to delete")
    try:
        if store.read(MARKER) is None:
            raise InputError(
                f"{store.url} does not look like an artifacts folder (no {MARKER} file in it); not deleting it"
            )
        with store.cleaning():
            found = inventory(store)
            doomed = [rel for rel in found.owned if rel not in (MARKER, CLEANING)]
            store.remove(doomed)
            if not found.foreign:
                store.remove([MARKER])
                store.drop()
    except InputError:
        raise
    except OSError as exc:
        raise store.error(exc, deleting=True) from None
    return Cleared(store.url, len(doomed) + (0 if found.foreign else 1), len(found.foreign))
