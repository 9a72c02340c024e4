"""The artifacts root: where it is, and how it becomes a store (marked at creation, never a user's folder).

One road for a folder and an object store: both are a `storage.store.Store`, marked by the same rule.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from storage import validate
from storage.clean import inventory
from storage.errors import InputError
from storage.layout import MARKER, STORE_NAME, STORE_VERSION
from storage.project import DEFAULT_ROOT
from storage.store import Store, open_store

ROOT_ENV = "LINREG_ARTIFACTS_DIR"


def artifacts_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The absolute artifacts folder: the override, else ``$LINREG_ARTIFACTS_DIR``, else ``data/artifacts``.

    Absolute, so a worker that runs the flow from a temporary directory writes to the same place. A
    ``file://`` URL is that folder; an object store's URL (``s3://…``) is `store_root`'s, not this.
    """
    return Path(store_root(override))


def store_root(override: str | os.PathLike[str] | None = None) -> str:
    """The store as a string: the URL of an object store as given (no trailing slash), else `artifacts_root`."""
    return open_store(str(override or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)).url


def prepare_root(override: str | os.PathLike[str] | None = None) -> Path | str:
    """The store, created and marked, proven writable; a one-line error if not.

    A folder (or prefix) becomes a store only when this creates it, or when it is empty: one that holds anything
    without the store's marker is someone's own, and the store refuses it rather than mixing its files (and,
    later, ``--clean-artifacts``) into it. Temporary files that a killed run left behind are removed here.
    """
    store = open_store(store_root(override))
    try:
        store.prepare()
        _mark(store)
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise store.error(exc) from None
    return store.url


def marker_ok(content: bytes | None) -> bool:
    """Whether ``content`` is this store's marker (small JSON naming the store)."""
    if content is None:
        return False
    try:
        validate.marker(validate.load_json(content, MARKER, limit=4096))
    except ValueError:
        return False
    return True


def _mark(store: Store) -> None:
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
                f"artifacts store {store.url}: its marker {MARKER} is not a store's marker, and it holds files "
                f"the store did not write ({shown}); restore the marker, or pass --artifacts-dir with a new folder"
            )
        raise InputError(
            f"artifacts {store.kind} {store.url} already holds {store.items} the store did not write ({shown}); "
            f"pass --artifacts-dir with a new or empty {store.place}"
        )
    body = {"store": STORE_NAME, "version": STORE_VERSION, "created": dt.datetime.now(dt.UTC).isoformat()}
    if store.read(MARKER, limit=0) is not None:
        store.remove([MARKER])  # an older version's empty marker, with nothing but the store's beside it
    store.create(MARKER, (json.dumps(body, indent=2) + "\n").encode())  # a concurrent run's is as good


def store_relative(root: Path | str, path: str | os.PathLike[str]) -> str:
    """A file the store wrote (on an object store: its scratch mirror), relative to the root, posix; ValueError
    for a file outside it."""
    return open_store(root).relative(path)
