"""What the store can prove it wrote, and `clear` (``--clean-artifacts``), which deletes that and nothing else.

A file is the store's only when its content says so: a manifest of the store's shape in the stage folder it
names, and the artifact it describes (name and size); a cache record, run record, champion pointer or history
row that parses as its kind; an empty lock; the claim of a stage folder; the temporary file of a writer. Names
alone prove nothing: a user's ``runs/my-analysis.json`` or ``history/notes.parquet`` is not the store's, and
survives. The same rules run over a folder and over an object store: a `Tree` lists, reads and removes.

A run and a clean exclude each other (`in_use`, `cleaning`): on a folder through ``flock`` on the marker
(shared by runs, exclusive for a clean; the kernel drops it when a process dies); on an object store through
a conditionally created ``.cache/cleaning.json`` and one lease object per run under ``.cache/active/``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stagecore import remote, validate
from stagecore.atomic import HOST, TEMP_OWNER, alive
from stagecore.cache import parse_record
from stagecore.errors import InputError
from stagecore.keys import KEY_PATTERN
from stagecore.layout import (
    CACHE_DIR,
    CHAMPION_DIR,
    CHAMPION_GENERATIONS,
    HISTORY_COLUMNS,
    HISTORY_DIR,
    MARKER,
    RUNS_DIR,
)
from stagecore.manifest import MANIFEST_SUFFIX
from stagecore.remote import CLAIM

ACTIVE_DIR = f"{CACHE_DIR}/active"  # on an object store: one lease object per running flow
CLEANING = f"{CACHE_DIR}/cleaning.json"  # on an object store: exists while a clean runs
LEASE_HOURS = 24  # an object-store lease older than this (or of a dead process on this host) is stale

_STAGE = re.compile(r"[a-z][a-z0-9_]*")
_KEY_FOLDER = re.compile(rf"(?P<key>{KEY_PATTERN})(\.\d+)?")
_CACHE_FILE = re.compile(rf"(?P<key>{KEY_PATTERN})\.(?P<kind>json|lock)")
_GENERATION = re.compile(r"\d{8,}\.json")
_HISTORY_FILE = re.compile(r"\d{8}T\d{6}\d*Z-[A-Za-z0-9-]+\.parquet")
_RUN_FILE = re.compile(r"\d{8}T\d{6}-(?P<run>[A-Za-z0-9-]+)\.json")
_LEASE = re.compile(r"[0-9a-f]{32}\.json")
_SMALL = 1 << 20  # records, pointers, manifests and history rows are a few kB; a larger one is not the store's


# --- the listing protocol --------------------------------------------------------------------------


class Tree:
    """The files under a store's root: list (relative posix path → size), read a small one, remove some."""

    where: str
    others: list[str]  # what `files` saw that is no regular file (links, sockets): never the store's

    def files(self) -> dict[str, int]:
        raise NotImplementedError

    def read(self, rel: str, limit: int = _SMALL) -> bytes | None:
        raise NotImplementedError

    def remove(self, rels: list[str]) -> None:
        raise NotImplementedError

    def create(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if it is absent; False when something is there."""
        raise NotImplementedError


@dataclass
class FolderTree(Tree):
    """A folder on disk. Only regular files are ever the store's: a link or a device is listed as the user's."""

    root: Path
    others: list[str] = field(default_factory=list)  # links, sockets, …: never the store's, never deleted

    def __post_init__(self) -> None:
        self.where = str(self.root)

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        self.others = []
        for folder, dirs, names in os.walk(self.root):
            base = Path(folder)
            for name in dirs:
                if (base / name).is_symlink():
                    self.others.append((base / name).relative_to(self.root).as_posix())
            for name in names:
                path = base / name
                info = path.lstat()
                rel = path.relative_to(self.root).as_posix()
                if stat.S_ISREG(info.st_mode):
                    found[rel] = info.st_size
                else:
                    self.others.append(rel)
        return found

    def read(self, rel: str, limit: int = _SMALL) -> bytes | None:
        try:
            fd = os.open(self.root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            return fh.read(limit + 1)

    def remove(self, rels: list[str]) -> None:
        for rel in rels:
            (self.root / rel).unlink(missing_ok=True)
        folders = sorted({p for rel in rels for p in Path(rel).parents if p != Path(".")}, key=lambda p: -len(p.parts))
        for folder in folders:  # the folders that became empty; one that holds a file of the user's stays
            with suppress(OSError):
                (self.root / folder).rmdir()

    def create(self, rel: str, data: bytes) -> bool:
        try:
            fd = os.open(self.root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True


@dataclass
class ObjectTree(Tree):
    """The objects under an object store's URL (``s3://bucket/prefix``)."""

    url: str

    def __post_init__(self) -> None:
        self.where = self.url
        self.others = []  # an object store holds only objects

    def files(self) -> dict[str, int]:
        return remote.find_sizes(self.url)

    def read(self, rel: str, limit: int = _SMALL) -> bytes | None:
        return remote.cat(remote.join(self.url, rel), limit=limit)

    def remove(self, rels: list[str]) -> None:
        remote.remove_many(self.url, rels)

    def create(self, rel: str, data: bytes) -> bool:
        fs, path = remote.filesystem(remote.join(self.url, rel))
        return remote.create(fs, path, data)


def tree(root: Path | str) -> Tree:
    return ObjectTree(str(root)) if remote.is_remote(root) else FolderTree(Path(root))


# --- the proofs ------------------------------------------------------------------------------------


def _json(tree: Tree, rel: str) -> object:
    """A JSON file of the store's kinds, parsed with bounded size and depth; Invalid when it is not JSON."""
    content = tree.read(rel, limit=validate.MAX_JSON_BYTES)
    if content is None:
        raise validate.Invalid(f"{rel}: unreadable")
    return validate.load_json(content, rel)


def _lease_ok(body: object) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("host"), str)
        and isinstance(body.get("pid"), int)
        and isinstance(body.get("started"), str)
    )


def _history_row(content: bytes | None) -> bool:
    if content is None or len(content) > _SMALL:
        return False
    try:
        schema = pq.read_schema(pa.BufferReader(content))
    except (pa.ArrowException, OSError, ValueError):
        return False
    return tuple(schema.names) == HISTORY_COLUMNS


def _proves(tree: Tree, rel: str, size: int, files: dict[str, int]) -> list[str]:
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
            parse_record(content or b"", parts[1], cached["key"])
            return [rel]
        if (parts[:-1] == ACTIVE_DIR.split("/") and _LEASE.fullmatch(name)) or rel == CLEANING:
            return [rel] if _lease_ok(_json(tree, rel)) else []
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


def _champion(tree: Tree, rel: str, size: int) -> list[str]:
    """``champion/champion.json`` and ``champion/gen/<n>.json``: a pointer, its manifest (whose sha256 is the
    pointer's), the pointer's lock (empty)."""
    parts = rel.split("/")
    name = parts[-1]
    pointer = parts == [CHAMPION_DIR, "champion.json"] or (
        len(parts) == 3 and parts[1] == CHAMPION_GENERATIONS and _GENERATION.fullmatch(name)
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


def inventory(tree: Tree) -> Inventory:
    files = tree.files()
    owned: set[str] = set()
    for rel, size in files.items():
        owned.update(_proves(tree, rel, size, files))
    owned &= set(files)
    foreign = sorted(set(files) - owned) + sorted(tree.others)
    return Inventory(sorted(owned), foreign)


# --- a run and a clean exclude each other ----------------------------------------------------------


def _lease_body() -> bytes:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return json.dumps({"host": HOST, "pid": os.getpid(), "started": started}).encode()


def _stale(content: bytes | None) -> bool:
    try:
        body = validate.load_json(content or b"", "lease")
    except ValueError:
        return True
    if not _lease_ok(body):
        return True
    if body["host"] == HOST and not alive(body["pid"]):
        return True
    try:
        started = dt.datetime.fromisoformat(body["started"])
    except ValueError:
        return True
    return dt.datetime.now(dt.UTC) - started > dt.timedelta(hours=LEASE_HOURS)


def _being_cleaned(where: str) -> InputError:
    return InputError(f"artifacts store {where} is being cleaned (--clean-artifacts); run again once that has finished")


def _in_use(where: str) -> InputError:
    return InputError(
        f"artifacts store {where} is in use by a running flow; run --clean-artifacts again once it has finished"
    )


@contextmanager
def in_use(root: Path | str) -> Iterator[None]:
    """Held by a flow for its whole run: while any run holds it, a clean refuses to start, and the reverse."""
    if remote.is_remote(root):
        url = str(root)
        lease = remote.join(url, ACTIVE_DIR, f"{uuid.uuid4().hex}.json")
        try:
            remote.write_bytes(lease, _lease_body())
            cleaning = remote.cat(remote.join(url, CLEANING), limit=_SMALL)
        except OSError as exc:
            raise remote.storage_error(url, exc) from None
        try:
            if cleaning is not None and not _stale(cleaning):
                raise _being_cleaned(url)
            yield
        finally:
            with suppress(OSError):
                remote.remove(lease)
        return
    marker = Path(root) / MARKER
    try:
        fd = os.open(marker, os.O_RDONLY)
    except FileNotFoundError:
        raise _being_cleaned(str(root)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _being_cleaned(str(root)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(marker).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # a clean deleted the marker while this run opened it
            raise _being_cleaned(str(root))
        yield
    finally:
        os.close(fd)


@contextmanager
def cleaning(root: Path | str) -> Iterator[None]:
    """Held by a clean: no run is active, and none starts until it ends."""
    if remote.is_remote(root):
        url = str(root)
        fs, path = remote.filesystem(remote.join(url, CLEANING))
        if not remote.create(fs, path, _lease_body()):
            if not _stale(remote.cat(remote.join(url, CLEANING), limit=_SMALL)):
                raise InputError(f"artifacts store {url} is being cleaned by another --clean-artifacts; wait for it")
            remote.write_bytes(remote.join(url, CLEANING), _lease_body())
        try:
            for name in remote.names(remote.join(url, ACTIVE_DIR)):
                lease = remote.join(url, ACTIVE_DIR, name)
                if _LEASE.fullmatch(name) and not _stale(remote.cat(lease, limit=_SMALL)):
                    raise _in_use(url)
            yield
        finally:
            with suppress(OSError):
                remote.remove(remote.join(url, CLEANING))
        return
    fd = os.open(Path(root) / MARKER, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(str(root)) from None
        yield
    finally:
        os.close(fd)


# --- clean -----------------------------------------------------------------------------------------


@dataclass
class Cleared:
    where: str
    deleted: int
    kept: int


def clear(root: Path | str) -> Cleared:
    """Delete every file the store can prove it wrote under ``root``, and nothing else; the marker goes last,
    and only when nothing of anyone else's is left (the folder then stays a store that later runs can use)."""
    if not remote.is_remote(root):
        folder = Path(root)
        if not folder.exists():
            raise InputError(f"{folder}: no such folder; nothing to delete")
        if not folder.is_dir():
            raise InputError(f"{folder} is a file, not an artifacts folder; not deleting it")
    store = tree(root)
    try:
        if store.read(MARKER) is None:
            raise InputError(
                f"{store.where} does not look like an artifacts folder (no {MARKER} file in it); not deleting it"
            )
        with cleaning(root):
            found = inventory(store)
            doomed = [rel for rel in found.owned if rel not in (MARKER, CLEANING)]
            store.remove(doomed)
            if not found.foreign:
                store.remove([MARKER])
                if isinstance(store, FolderTree):
                    with suppress(OSError):
                        store.root.rmdir()
    except InputError:
        raise
    except OSError as exc:
        if remote.is_remote(root):
            raise remote.storage_error(str(root), exc) from None
        reason = exc.strerror or str(exc)
        raise InputError(
            f"cannot delete in artifacts folder {store.where} ({reason}); check its permissions and run again"
        ) from None
    return Cleared(store.where, len(doomed) + (0 if found.foreign else 1), len(found.foreign))
