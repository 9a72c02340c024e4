"""An object-store root (``s3://bucket/prefix``): marked at creation like a folder, cleared of only what it wrote."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict

from stagecore import remote, validate
from stagecore.declare import Stage
from stagecore.errors import InputError
from stagecore.manifest import MANIFEST_SUFFIX
from stagecore.root import (
    _KEY_FOLDER,
    CACHE_DIR,
    CHAMPION_DIR,
    CHAMPION_GENERATIONS,
    HISTORY_DIR,
    MARKER,
    MARKER_BYTES,
    RUNS_DIR,
    STORE_NAME,
    STORE_VERSION,
    _cache_file,
    store_file,
)

_GENERATION_FILE = re.compile(rf"\d{{8,}}\.json({re.escape(MANIFEST_SUFFIX)})?")  # champion/gen/: pointer, manifest


def prepare_remote(url: str) -> str:
    """The store at ``url``, marked (a ``.linreg-store`` object, created only if absent) and proven writable.

    As with a folder, a prefix that already holds objects but no marker is someone else's and is refused; a
    missing bucket or refused credentials are one line naming the bucket.
    """
    marker = remote.join(url, MARKER)
    try:
        content = remote.read_bytes(marker, limit=MARKER_BYTES)
        if content is None or not _marker_ok(content):
            foreign = [p for p in remote.find(url) if not _store_object(p)]
            if foreign:
                shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
                raise InputError(
                    f"artifacts store {url} already holds objects the store did not write ({shown}); "
                    "pass --artifacts-dir with a new or empty prefix"
                )
            body = {"store": STORE_NAME, "version": STORE_VERSION, "created": dt.datetime.now(dt.UTC).isoformat()}
            fs, path = remote.filesystem(marker)
            remote.create(fs, path, (json.dumps(body, indent=2) + "\n").encode())  # a concurrent run's is as good
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise remote.storage_error(url, exc) from None
    return url


def _marker_ok(content: bytes) -> bool:
    try:
        validate.marker(validate.load_json(content, MARKER, limit=MARKER_BYTES))
    except validate.Invalid:
        return False
    return True


def _store_object(path: str) -> bool:
    """Whether an object (relative to the root) is one the store writes."""
    parts = path.split("/")
    if parts == [MARKER]:
        return True
    if len(parts) == 2 and parts[0] == RUNS_DIR:
        return parts[1].endswith(".json")
    if len(parts) == 2 and parts[0] == HISTORY_DIR:
        return parts[1].endswith(".parquet")
    if len(parts) == 3 and parts[:2] == [CHAMPION_DIR, CHAMPION_GENERATIONS]:
        return bool(_GENERATION_FILE.fullmatch(parts[2]))
    if len(parts) == 3 and parts[0] == CACHE_DIR:
        return parts[1] in Stage.names and _cache_file(parts[2])
    return len(parts) == 3 and parts[0] in Stage.names and bool(_KEY_FOLDER.fullmatch(parts[1]))


def clear_remote(url: str) -> tuple[str, int]:
    """Delete the objects the store wrote under ``url`` (artifacts with manifests, claims, records, the champion's
    pointer generations, the run history, the marker)."""
    try:
        if remote.read_bytes(remote.join(url, MARKER), limit=4096) is None:
            raise InputError(f"{url} does not look like an artifacts store (no {MARKER} object in it); not deleting it")
        objects = remote.find(url)
        folders: dict[str, list[str]] = defaultdict(list)
        for path in objects:
            folder, _, name = path.rpartition("/")
            folders[folder].append(name)
        doomed = []
        for path in objects:
            folder, _, name = path.rpartition("/")
            if not _store_object(path):
                continue
            parts = path.split("/")
            if parts[0] in Stage.names:
                manifests = {n for n in folders[folder] if n.endswith(".manifest.json")}
                if not store_file(name, manifests):
                    continue
            doomed.append(path)
        remote.remove_many(url, doomed)
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise remote.storage_error(url, exc) from None
    return url, len(doomed)


def store_exists(root: str) -> bool:
    """Whether anything is left under ``root`` (a user's object kept by `clear_remote`)."""
    try:
        return bool(remote.find(root))
    except (OSError, ValueError):
        return False
