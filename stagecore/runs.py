"""Run records: one JSON file per flow run naming every stage's key and verified artifacts."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from typing import Any

from stagecore.manifest import verify_used, versions
from storage.layout import RUNS_DIR
from storage.sources import redact_all
from storage.store import open_store
from storage.storepaths import recorded


def write_run_record(
    root: str | os.PathLike[str],
    run_id: str,
    params: Mapping[str, Any],
    artifacts: Mapping[str, Mapping[str, str]],
    cached: Mapping[str, bool],
) -> str:
    """``<root>/runs/<time>-<run id>.json``: the run's parameters and, per stage, its key and verified artifacts
    (each named relative to the root, so a moved store still reads)."""
    stages: dict[str, Any] = {}
    for stage, files in artifacts.items():
        entries = {}
        key = None
        for name, path in files.items():
            manifest = verify_used(path)
            key = manifest["key"]
            entries[name] = {"path": recorded(root, path), "sha256": manifest["sha256"], "size": manifest["size"]}
        stages[stage] = {"key": key, "cached": bool(cached.get(stage, False)), "artifacts": entries}
    now = dt.datetime.now(dt.UTC)
    record = {
        "run_id": run_id,
        "finished": now.isoformat(timespec="seconds"),
        "params": redact_all(dict(params)),
        "stages": stages,
        "versions": versions(),
    }
    name = f"{now:%Y%m%dT%H%M%S}-{run_id}.json"
    store = open_store(root)
    try:
        return store.write(f"{RUNS_DIR}/{name}", (json.dumps(record, indent=2) + "\n").encode())
    except OSError as exc:
        raise store.error(exc) from None
