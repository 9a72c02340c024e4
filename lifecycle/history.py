"""The run history: one small Parquet file per flow run, ``<root>/history/<utc-time>-<flow-run-id>.parquet``.

One file per run, written whole (`storage.Store.write`: a rename on disk, one PUT on an object store) and never
rewritten, so concurrent runs never contend, and a store without append or rename-over works the same way.
Reading concatenates the files in name order, which is time order. No read-modify-write anywhere. The schema is
fixed: the run's parameters are one JSON column, so files written under other settings still concatenate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import storage
from storage import validate
from storage.layout import HISTORY_SCHEMA

# what tasks/ and flows/ use (tests/test_surface.py)
__all__ = [
    "data_digest",
    "history_row",
    "read_history",
    "shown_rows",
    "table_rows",
    "take_back",
    "write_row",
]

SCHEMA = HISTORY_SCHEMA  # fixed: the parameters are one JSON column
MAX_FILE_BYTES = 1 << 20  # one row is a few kB; a larger object under history/ is not ours
_FILE = re.compile(r"\d{8}T\d{6}\d*Z-[A-Za-z0-9-]+\.parquet")


def data_digest(ingest_manifests: list[Mapping[str, Any]]) -> str:
    """The data's sha256: the source file's for one file; for partitions, the sha256 of their sha256s in order."""
    digests = [entry["sha256"] for m in ingest_manifests for entry in m["inputs"] if entry["name"] == "source"]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def history_row(
    when: dt.datetime,
    run_id: str,
    data_sha256: str,
    rows: int,
    params: Mapping[str, Any],
    summary: Mapping[str, Any],
    promoted: bool,
    model: str,
) -> pa.Table:
    """This run's one row."""
    metrics = summary["metrics"]
    row = {
        "time": when,
        "flow_run_id": run_id,
        "data_sha256": data_sha256,
        "rows": rows,
        "params": json.dumps(storage.redact_all(dict(params)), sort_keys=True, default=str),
        "train_mse": metrics["train"]["mse"],
        "test_mse": metrics["test"]["mse"],
        "train_r2": metrics["train"]["r2"],
        "test_r2": metrics["test"]["r2"],
        "optimality_gap": summary["optimality_gap"],
        "promoted": promoted,
        "model": model,
    }
    return pa.Table.from_pylist([row], schema=SCHEMA)


def write_row(root: str | Path, row: pa.Table) -> str:
    """``<root>/history/<utc-time>-<run id>.parquet``, created once (never over another run's file); its name."""
    when: dt.datetime = row.column("time")[0].as_py()
    rel = f"{storage.HISTORY_DIR}/{when:%Y%m%dT%H%M%S%f}Z-{row.column('flow_run_id')[0].as_py()}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(row, sink)
    store = storage.open_store(root)
    try:
        store.write(rel, sink.getvalue().to_pybytes())
    except OSError as exc:
        raise store.error(exc) from None
    return store.path(rel)


def take_back(root: str | Path, run_id: str) -> list[str]:
    """Delete run ``run_id``'s row, for a run that failed before its run record (docs/lifecycle.md); what was
    deleted."""
    store = storage.open_store(root)
    doomed = [
        f"{storage.HISTORY_DIR}/{n}" for n in store.names(storage.HISTORY_DIR) if n.endswith(f"Z-{run_id}.parquet")
    ]
    store.remove(doomed)
    return [store.path(rel) for rel in doomed]


def read_history(root: str | Path, last: int | None = None, warn: Callable[[str], Any] | None = None) -> pa.Table:
    """The runs recorded under ``root``, oldest first (the last ``last`` of them); empty when there are none.

    Files whose name is not ours, that cannot be read, do not have this schema, or hold a row that is not a
    run's (`storage.validate.history_row`: a null time, parameters that are not a JSON object…) are skipped,
    each named through ``warn`` (default: this module's logger): a history is a report, and one bad file must
    not hide the others, nor break the promotion or the report that read it.
    """
    warn = warn or logging.getLogger(__name__).warning
    store = storage.open_store(root)
    try:
        names = [n for n in store.names(storage.HISTORY_DIR) if _FILE.fullmatch(n)]
    except OSError as exc:
        raise store.error(exc) from None
    if last is not None:
        names = names[-last:] if last > 0 else []
    tables = []
    for name in names:
        rel = f"{storage.HISTORY_DIR}/{name}"
        try:
            content = store.read(rel, limit=MAX_FILE_BYTES)
            if content is None or len(content) > MAX_FILE_BYTES:
                raise OSError("missing, or too large to be a history file")
            table = pq.read_table(pa.BufferReader(content))
            if not table.schema.remove_metadata().equals(SCHEMA):
                raise validate.Invalid("not a history file (its columns are not the history's)")
            for row in table.to_pylist():
                validate.history_row(row, "a row")
        except (OSError, pa.ArrowException, validate.Invalid) as exc:
            warn(f"history file {store.path(rel)} skipped: {str(exc).splitlines()[0][:300]}")
            continue
        tables.append(table.replace_schema_metadata(None))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def table_rows(history: pa.Table) -> list[dict[str, Any]]:
    """Rows for the UI's table artifact and the CLI's JSON: plain values, time as ISO text."""
    rows = history.to_pylist()
    for row in rows:
        row["time"] = row["time"].isoformat(timespec="seconds")
    return rows


DIGEST = 8  # hex digits of a sha256 or a key the UI shows: enough to tell runs apart, narrow enough to read


def shown_rows(
    history: pa.Table, names: Mapping[str, str], link: Callable[[str, str], Any] = lambda text, _: text
) -> list[dict[str, Any]]:
    """The UI's history table: newest first, led by the run (``link(name, run id)``: its name, else the first
    eight digits of its id), then what a reader compares (time, test MSE, gap, promoted, preset), numbers to
    five significant digits, and the short digests of the data and the model last."""
    rows = []
    for row in reversed(history.to_pylist()):
        run_id = row["flow_run_id"]
        params = json.loads(row["params"])  # checked by read_history: a JSON object
        model = row["model"] or ""
        key = model.split("/")[1] if model.count("/") >= 2 else model
        gap = row["optimality_gap"]
        rows.append(
            {
                "run": link(names.get(run_id) or run_id[:8], run_id),
                "time (UTC)": f"{row['time']:%Y-%m-%d %H:%M:%S}",
                "test MSE": f"{row['test_mse']:.5g}",
                "gap": "n/a" if gap is None else f"{gap:.4g}",
                "promoted": "★ yes" if row["promoted"] else "no",
                "preset": str(params.get("preset", "—")),
                "rows": row["rows"],
                "data": row["data_sha256"][:DIGEST],
                "model": key[:DIGEST],
            }
        )
    return rows
