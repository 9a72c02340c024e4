"""Cache records on an object store: the same data-only JSON as on disk, created with a conditional write, and
read back by downloading each listed file (and its manifest) into the scratch mirror, where it is verified."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import PurePosixPath

from stagecore import remote
from stagecore.cache import MAX_RECORD_BYTES, RECORD_SUFFIX, RECORD_VERSION, parse_record
from stagecore.layout import CACHE_DIR
from stagecore.manifest import MANIFEST_SUFFIX


def record_url(root: str, stage: str, key: str) -> str:
    return remote.join(root, CACHE_DIR, stage, f"{key}{RECORD_SUFFIX}")


def write_record(root: str, stage: str, key: str, outputs: dict[str, str], replace: bool) -> str:
    """Create the record (replace: overwrite); a record another run created first is kept."""
    files = {name: remote.relative(root, path) for name, path in outputs.items()}
    record = {"record_version": RECORD_VERSION, "stage": stage, "key": key, "outputs": files}
    data = (json.dumps(record, indent=2) + "\n").encode()
    url = record_url(root, stage, key)
    try:
        if replace:
            remote.write_bytes(url, data)
        else:
            fs, path = remote.filesystem(url)
            remote.create(fs, path, data)
    except OSError as exc:
        raise remote.storage_error(root, exc) from None
    return url


def read_record(root: str, stage: str, key: str, names: tuple[str, ...] = ()) -> dict[str, str] | None:
    """The outputs (name → local scratch path) a record lists, each downloaded with its manifest; None if
    there is no record; ValueError if it is not valid; IntegrityError if a listed file is missing."""
    try:
        content = remote.read_bytes(record_url(root, stage, key), limit=MAX_RECORD_BYTES)
    except remote.StoreUnreachable:  # a good record is not dropped because the store did not answer
        raise
    except OSError as exc:
        raise ValueError(f"record unreadable ({exc})") from None
    if content is None:
        return None
    files = parse_record(content, stage, key, names)
    outputs = {}
    for name, relative in files.items():
        if len(PurePosixPath(relative).parts) != 3:  # <stage>/<key folder>/<file>
            raise ValueError(f"record points outside the stage's folder ({relative!r})")
        local = remote.fetch(root, relative)
        remote.fetch(root, relative + MANIFEST_SUFFIX)
        outputs[name] = str(local)
    return outputs


def drop_record(root: str, stage: str, key: str) -> None:
    with suppress(OSError):  # an unusable record that cannot be removed is dropped again next time
        remote.remove(record_url(root, stage, key))
