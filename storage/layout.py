"""The store's layout: the names of what it writes at its root, and the fixed schema of its history rows.

Every module that reads or writes one of these places imports its name from here, so none depends on another
for a constant (and `clean` proves files by content, not by these names alone).
"""

from __future__ import annotations

import pyarrow as pa

MARKER = ".linreg-store"  # marks a folder as an artifacts store (JSON naming the store), written at creation
STORE_NAME, STORE_VERSION = "linreg-flow", 1
KEY_PATTERN = r"[0-9a-f]{16}"  # a stage key, as `stagecore.keys.stage_key` writes it
MANIFEST_SUFFIX = ".manifest.json"  # beside every artifact: <file>.manifest.json
CACHE_DIR = ".cache"  # the stages' cache records and locks (stagecore/cache.py)
RUNS_DIR = "runs"  # one JSON run record per flow run (stagecore/runs.py)
CHAMPION_DIR = "champion"  # the champion's pointer generations and their manifests (lifecycle/champion.py)
CHAMPION_GENERATIONS = "gen"  # <model's folder>/gen/<n>.json, one immutable pointer per promotion, on every store
# One champion per model (lifecycle/champion.py): champion/by-name/<model name>/gen/… for a model the user named,
# champion/by-columns/<digest of target and features>/gen/… for one they did not. A column name is data: never a
# path component. A store's champion/gen/… (one champion for every model, before 2026-12-10) is still read.
CHAMPION_BY_NAME = "by-name"
CHAMPION_BY_COLUMNS = "by-columns"
CHAMPION_ALIASES = "aliases"  # <model's folder>/aliases/<alias>/gen/<n>.json: a user-named alias (flows/registry.py)
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,31}"  # an alias's name: a path component; never champion/previous (derived)
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # a model's name: a path component, so short and safe
MODEL_DIGEST_PATTERN = r"[0-9a-f]{16}"  # the folder of an unnamed model: its target and features' digest
HISTORY_DIR = "history"  # one Parquet row per flow run (lifecycle/history.py)
HISTORY_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("flow_run_id", pa.string()),
        ("data_sha256", pa.string()),
        ("rows", pa.int64()),
        ("params", pa.string()),  # JSON
        ("train_mse", pa.float64()),
        ("test_mse", pa.float64()),
        ("train_r2", pa.float64()),
        ("test_r2", pa.float64()),
        ("optimality_gap", pa.float64()),
        ("promoted", pa.bool_()),
        ("model", pa.string()),  # relative to the root, posix
    ]
)
HISTORY_COLUMNS = tuple(HISTORY_SCHEMA.names)
