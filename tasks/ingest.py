"""Stage 1: read the CSV (a local path or an http(s) URL) and store it unchanged as Parquet."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
from prefect import get_run_logger, task

from tasks import store
from tasks.errors import InputError

_SNIFF_BYTES = 8192
STAGE = store.Stage("ingest", __name__, files=("source",))


def load_bytes(source: str) -> bytes:
    """The raw bytes of a local file or an http(s) URL, with a one-line error for each way that fails."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return response.read()
        except OSError as exc:
            raise InputError(f"{source}: cannot download ({exc}); check the URL passed to --data") from None
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: file not found; pass --data with the path of a CSV file")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a CSV file; pass --data with a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{source}: cannot be read ({exc.strerror}); check its permissions") from None


def parse_csv(data: bytes, source: str) -> pa.Table:
    """Parse CSV bytes into an Arrow table (types inferred by pyarrow); refuse anything without data rows."""
    if not data.strip():
        raise InputError(f"{source}: file is empty; pass --data with a CSV that has a header and rows")
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise InputError(f"{source}: is a binary file, not a CSV; pass --data with a text CSV")
    try:
        table = pacsv.read_csv(pa.BufferReader(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"{source}: cannot be parsed as CSV ({reason})") from None
    if table.num_rows == 0:
        raise InputError(f"{source}: has a header but no data rows; add rows or pass another --data")
    return table


@task(name="ingest_csv")
def ingest_csv(source: str, root: str) -> dict[str, str]:
    """Read ``source`` and write it as ``raw.parquet``: column names and inferred dtypes preserved."""
    data = load_bytes(source)
    table = parse_csv(data, source)
    # Keyed on the bytes actually read, which a URL only reveals now.
    outputs = STAGE.outputs(root, {"source": source}, digests={"source": hashlib.sha256(data).hexdigest()})
    out = outputs.write_parquet(table, "raw.parquet")
    get_run_logger().info(
        "read %s: %d rows × %d columns %s; wrote %s",
        source,
        table.num_rows,
        table.num_columns,
        table.column_names,
        store.describe(out),
    )
    return {"table": out}
