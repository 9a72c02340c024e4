"""The artifacts root: where it is, and how it becomes a store (marked at creation, never a user's folder).

One road for a folder and an object store: both are a `clean.Tree`, marked by the same rule.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from stagecore import remote, validate
from stagecore.atomic import sweep_temporary_files
from stagecore.clean import ObjectTree, Tree, inventory, tree
from stagecore.errors import InputError
from stagecore.layout import MARKER, STORE_NAME, STORE_VERSION
from stagecore.project import DEFAULT_ROOT
from stagecore.remote import is_remote, local_path

ROOT_ENV = "LINREG_ARTIFACTS_DIR"


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
    """The store, created and marked, proven writable; a one-line error if not.

    A folder (or prefix) becomes a store only when this creates it, or when it is empty: one that holds anything
    without the store's marker is someone's own, and the store refuses it rather than mixing its files (and,
    later, ``--clean-artifacts``) into it. Temporary files that a killed run left behind are removed here.
    """
    chosen = store_root(override)
    if is_remote(chosen):
        try:
            _mark(ObjectTree(chosen))
        except (OSError, ValueError) as exc:
            raise remote.storage_error(chosen, exc) from None
        return chosen
    root = artifacts_root(override)
    if root.exists() and not root.is_dir():
        raise InputError(f"artifacts folder {root} is a file, not a folder; pass --artifacts-dir with a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _mark(tree(root))
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"artifacts folder {root} is not writable ({exc.strerror}); pass --artifacts-dir with a writable folder"
        ) from None
    sweep_temporary_files(root)
    return root


def marker_ok(content: bytes | None) -> bool:
    """Whether ``content`` is this store's marker (small JSON naming the store)."""
    if content is None:
        return False
    try:
        validate.marker(validate.load_json(content, MARKER, limit=4096))
    except ValueError:
        return False
    return True


def _mark(store: Tree) -> None:
    """Write the store's marker into an empty folder or prefix (or over an old, empty marker where every file
    beside it is provably the store's); refuse anything else that lacks it."""
    content = store.read(MARKER, limit=4096)
    if marker_ok(content):
        return
    foreign = [rel for rel in inventory(store).foreign if rel != MARKER]
    if foreign:
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        if content:  # a damaged marker: the folder may be a store, but nothing proves it
            raise InputError(
                f"artifacts store {store.where}: its marker {MARKER} is not a store's marker, and it holds files "
                f"the store did not write ({shown}); restore the marker, or pass --artifacts-dir with a new folder"
            )
        if isinstance(store, ObjectTree):
            raise InputError(
                f"artifacts store {store.where} already holds objects the store did not write ({shown}); "
                "pass --artifacts-dir with a new or empty prefix"
            )
        raise InputError(
            f"artifacts folder {store.where} already holds files the store did not write ({shown}); "
            "pass --artifacts-dir with a new or empty folder"
        )
    body = {"store": STORE_NAME, "version": STORE_VERSION, "created": dt.datetime.now(dt.UTC).isoformat()}
    if store.read(MARKER, limit=0) is not None:
        store.remove([MARKER])  # an older version's empty marker, with nothing but the store's beside it
    store.create(MARKER, (json.dumps(body, indent=2) + "\n").encode())  # a concurrent run's is as good


def store_relative(root: Path | str, path: str | os.PathLike[str]) -> str:
    """A file the store wrote (on an object store: its scratch mirror), relative to the root, posix; ValueError
    for a file outside it."""
    if is_remote(root):
        return remote.relative(str(root), path)
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
