"""The artifacts root: where it is, how it is marked as a store at creation, and how `clear` deletes only what
the store wrote.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from stagecore import validate
from stagecore.atomic import TEMPORARY, sweep_temporary_files, write_json
from stagecore.declare import Stage
from stagecore.errors import InputError
from stagecore.keys import KEY_PATTERN
from stagecore.manifest import MANIFEST_SUFFIX
from stagecore.project import DEFAULT_ROOT
from stagecore.remote import CLAIM, is_remote, local_path

ROOT_ENV = "LINREG_ARTIFACTS_DIR"


MARKER = ".linreg-store"  # marks a folder as an artifacts store (JSON naming the store), written at creation


STORE_NAME, STORE_VERSION = "linreg-flow", 1


MARKER_BYTES = 4096  # a marker is a few fields; anything larger is not one


CACHE_DIR = ".cache"  # the stages' cache records and locks (see tasks/cache.py)


RUNS_DIR = "runs"  # one JSON run record per flow run


CHAMPION_DIR = "champion"  # the champion pointer, its manifest and its lock (see tasks/promote.py)


CHAMPION_GENERATIONS = "gen"  # on an object store: champion/gen/<n>.json, one immutable pointer per promotion


HISTORY_DIR = "history"  # one Parquet row per flow run (see tasks/history.py)


_CHAMPION_FILES = ("champion.json", "champion.json" + MANIFEST_SUFFIX, "champion.lock")


def artifacts_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The absolute artifacts folder: the override, else ``$LINREG_ARTIFACTS_DIR``, else ``data/artifacts``.

    Absolute, so a worker that runs the flow from a temporary directory writes to the same place. A
    ``file://`` URL is that folder; an object store's URL (``s3://…``) is `store_root`'s, not this.
    """
    chosen = local_path(str(override or os.environ.get(ROOT_ENV) or DEFAULT_ROOT))
    return Path(chosen).expanduser().resolve()


def store_root(override: str | os.PathLike[str] | None = None) -> str:
    """The store as a string: the URL of an object store as given (no trailing slash), else `artifacts_root`."""
    chosen = str(override or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    return chosen.rstrip("/") if is_remote(chosen) else str(artifacts_root(chosen))


def prepare_root(override: str | os.PathLike[str] | None = None) -> Path | str:
    """The artifacts folder, created and marked as a store, proven writable; a one-line error if not.

    A folder becomes a store only when this creates it, or when it is empty: a non-empty folder without the
    store's marker is someone's own folder, and the store refuses it rather than mixing its files (and, later,
    ``--clean-artifacts``) into it. Temporary files that a killed run left behind are removed here.
    """
    if is_remote(store_root(override)):
        from stagecore.remote_root import prepare_remote

        return prepare_remote(store_root(override))
    root = artifacts_root(override)
    if root.exists() and not root.is_dir():
        raise InputError(f"artifacts folder {root} is a file, not a folder; pass --artifacts-dir with a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _mark(root)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"artifacts folder {root} is not writable ({exc.strerror}); pass --artifacts-dir with a writable folder"
        ) from None
    sweep_temporary_files(root)
    return root


def _mark(root: Path) -> None:
    """Write the store's marker into an empty folder (or an old, empty marker into a folder that holds only
    store entries); refuse any other folder that lacks it."""
    marker = root / MARKER
    if _marker_ok(marker):
        return
    foreign = sorted(entry.name for entry in root.iterdir() if not _store_entry(entry))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise InputError(
            f"artifacts folder {root} already holds files the store did not write ({shown}); "
            "pass --artifacts-dir with a new or empty folder"
        )
    content = {"store": STORE_NAME, "version": STORE_VERSION, "created": dt.datetime.now(dt.UTC).isoformat()}
    write_json(content, marker)


def _marker_ok(marker: Path) -> bool:
    """Whether ``marker`` is this store's marker (plain JSON naming the store)."""
    try:
        with open(marker, "rb") as fh:
            validate.marker(validate.load_json(fh.read(MARKER_BYTES + 1), MARKER, limit=MARKER_BYTES))
    except (OSError, validate.Invalid):
        return False
    return True


_KEY_FOLDER = re.compile(rf"{KEY_PATTERN}(\.\d+)?")


def _store_entry(entry: Path) -> bool:
    """Whether a top-level entry of a folder is one the store writes (marker, cache, runs, a stage's folder)."""
    if entry.name in (MARKER, CACHE_DIR, RUNS_DIR, CHAMPION_DIR, HISTORY_DIR):
        return True
    if TEMPORARY.fullmatch(entry.name) and entry.is_file():
        return True
    return entry.name in Stage.names and entry.is_dir() and all(_KEY_FOLDER.fullmatch(e.name) for e in entry.iterdir())


def clear(override: str | os.PathLike[str] | None = None) -> tuple[Path | str, int]:
    """Delete what the store wrote (artifacts with their manifests, cache and run records, the champion pointer,
    the run history, its marker) and nothing else: a file of the user's inside the folder survives, and so does
    the folder then. Returns (root, number of files deleted)."""
    if is_remote(store_root(override)):
        from stagecore.remote_root import clear_remote

        return clear_remote(store_root(override))
    root = artifacts_root(override)
    if not root.exists():
        raise InputError(f"{root}: no such folder; nothing to delete")
    if not root.is_dir():
        raise InputError(f"{root} is a file, not an artifacts folder; not deleting it")
    if not (root / MARKER).is_file():
        raise InputError(f"{root} does not look like an artifacts folder (no {MARKER} file in it); not deleting it")
    deleted = 0
    for entry in root.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name in Stage.names:
            for folder in entry.iterdir():
                if folder.is_dir() and not folder.is_symlink() and _KEY_FOLDER.fullmatch(folder.name):
                    deleted += _delete_files(folder, _artifact_files(folder))
        elif entry.name == CACHE_DIR:
            for folder in entry.iterdir():
                if folder.is_dir() and not folder.is_symlink() and folder.name in Stage.names:
                    deleted += _delete_files(folder, [f for f in folder.iterdir() if _cache_file(f.name)])
        elif entry.name == RUNS_DIR:
            deleted += _delete_files(entry, [f for f in entry.iterdir() if f.suffix == ".json"])
        elif entry.name == CHAMPION_DIR:
            written = [f for f in entry.iterdir() if f.name in _CHAMPION_FILES or TEMPORARY.fullmatch(f.name)]
            deleted += _delete_files(entry, written)
        elif entry.name == HISTORY_DIR:
            written = [f for f in entry.iterdir() if f.suffix == ".parquet" or TEMPORARY.fullmatch(f.name)]
            deleted += _delete_files(entry, written)
        with suppress(OSError):
            entry.rmdir()  # once emptied; a folder that still holds a file of the user's stays
    deleted += _delete_files(root, [f for f in root.iterdir() if TEMPORARY.fullmatch(f.name)])
    (root / MARKER).unlink(missing_ok=True)
    with suppress(OSError):
        root.rmdir()
    return root, deleted + 1


def store_relative(root: Path | str, path: str | os.PathLike[str]) -> str:
    """A file the store wrote (on an object store: its scratch mirror), relative to the root, posix; ValueError
    for a file outside it."""
    if is_remote(root):
        from stagecore.remote import relative

        return relative(str(root), path)
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def store_exists(root: Path | str) -> bool:
    """Whether anything is left of a store after `clear`: the folder, or any object under the URL."""
    if is_remote(root):
        from stagecore.remote_root import store_exists as remote_exists

        return remote_exists(str(root))
    return Path(root).exists()


def _artifact_files(folder: Path) -> list[Path]:
    """The files of a stage folder the store wrote: manifests, the artifacts they describe, temporary files."""
    files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink()]
    manifests = {f.name for f in files if f.name.endswith(MANIFEST_SUFFIX)}
    return [f for f in files if store_file(f.name, manifests)]


def store_file(name: str, manifests: set[str]) -> bool:
    """Whether a stage folder's file is the store's: a manifest, the artifact it describes, a temporary file or
    (on an object store) the folder's claim."""
    return name in manifests or name + MANIFEST_SUFFIX in manifests or bool(TEMPORARY.fullmatch(name)) or name == CLAIM


def _cache_file(name: str) -> bool:
    stem = name.split(".", 1)[0]
    return bool(re.fullmatch(KEY_PATTERN, stem)) and name[len(stem) :] in ("", ".json", ".lock")


def _delete_files(folder: Path, files: Iterable[Path]) -> int:
    count = 0
    for file in files:
        if file.is_file() and not file.is_symlink():
            file.unlink()
            count += 1
    with suppress(OSError):
        folder.rmdir()  # once emptied
    return count
