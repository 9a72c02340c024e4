"""Stage 1: read the CSV (a local path or an http(s) URL) or Parquet file and store it unchanged as Parquet.

The CSV is streamed in blocks into a Parquet file with one row group per block, so a file of tens of millions
of rows never sits in memory twice. pyarrow infers column types from the first block; if a later block
contradicts them (an integer column that turns decimal further down), the file is read again whole, which lets
pyarrow widen the types.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import get_run_logger, task

from tasks import store
from tasks.errors import InputError

_SNIFF_BYTES = 8192
STAGE = store.Stage("ingest", __name__, files=("source",))
BLOCK_BYTES = 16 << 20  # one Parquet row group per 16 MB of CSV (64 MB blocks peaked 60 MB higher at 2M rows)


@contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path for ``source``: the file itself, or a URL downloaded (streamed) to a temporary file."""
    if not store.is_url(source):
        yield check_file(source)
        return
    with tempfile.TemporaryDirectory(prefix="linreg-download-") as folder:
        path = Path(folder) / "download.csv"
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as exc:
            raise InputError(f"{source}: cannot download ({exc}); check the URL passed to --data") from None
        yield path


def check_file(source: str) -> Path:
    """The path of a readable regular file, or a one-line error saying what is wrong with it."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: file not found; pass --data with the path of a CSV file")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a CSV file; pass --data with a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{source}: cannot be read ({exc.strerror}); check its permissions") from None
    return path


def check_text(head: bytes, source: str) -> None:
    """Refuse an empty or binary file from its first bytes, before pyarrow gives a cryptic message."""
    if not head.strip():
        raise InputError(f"{source}: file is empty; pass --data with a CSV that has a header and rows")
    if b"\x00" in head:
        raise InputError(f"{source}: is a binary file, not a CSV; pass --data with a text CSV")


def _parse_error(exc: Exception, source: str) -> InputError:
    reason = str(exc).splitlines()[0]
    return InputError(f"{source}: cannot be parsed as CSV ({reason})")


def csv_to_parquet(path: Path, final: Path, source: str) -> pa.Schema:
    """Stream ``path`` into ``final`` (atomically), block by block; returns the schema written."""
    with open(path, "rb") as fh:
        check_text(fh.read(_SNIFF_BYTES), source)
    try:
        with store.atomic_path(final) as tmp:
            rows, schema = _stream(path, tmp)
            if rows == 0:
                raise InputError(f"{source}: has a header but no data rows; add rows or pass another --data")
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc):
            raise _parse_error(exc, source) from None
        # a later block contradicts the types guessed from the first one: read whole, let pyarrow widen
        try:
            table = pacsv.read_csv(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc2:
            raise _parse_error(exc2, source) from None
        with store.atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        schema = table.schema
    return schema


def is_parquet(source: str) -> bool:
    return Path(source).suffix.lower() in store.PARQUET_SUFFIXES


def parquet_to_parquet(path: Path, final: Path, source: str) -> pa.Schema:
    """Copy a Parquet input into ``final`` (atomically) a row group at a time, checking it is readable Parquet."""
    try:
        reader = pq.ParquetFile(path)
        with store.atomic_path(final) as tmp:
            with pq.ParquetWriter(tmp, reader.schema_arrow) as writer:
                for group in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(group))
            if reader.metadata.num_rows == 0:
                raise InputError(f"{source}: has a schema but no rows; add rows or pass another --data")
    except (pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"{source}: cannot be read as Parquet ({reason})") from None
    return reader.schema_arrow


def _stream(path: Path, out: Path) -> tuple[int, pa.Schema]:
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES))
    rows = 0
    with pq.ParquetWriter(out, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows, reader.schema


@task(name="ingest_csv")
def ingest_csv(source: str, root: str) -> dict[str, str]:
    """Read ``source`` (CSV, or Parquet by its suffix) and write ``raw.parquet``: column names and types kept."""
    with local_copy(source) as path:
        # keyed on the bytes read: for a URL, those of the download
        outputs = STAGE.outputs(root, {"source": source}, digests={"source": store.sha256_file(path)})
        out = outputs.folder / "raw.parquet"
        try:
            convert = parquet_to_parquet if is_parquet(source) else csv_to_parquet
            schema = convert(path, out, source)
        except BaseException as exc:
            store.discard_if_empty(outputs.folder)  # a refused CSV leaves nothing behind, not even a folder
            if isinstance(exc, pa.ArrowInvalid):  # e.g. "Empty CSV file" from open_csv
                raise _parse_error(exc, source) from None
            raise
        outputs.record("raw.parquet", "parquet")
    rows = pq.ParquetFile(out).metadata.num_rows
    get_run_logger().info(
        "read %s: %d rows × %d columns %s; wrote %s", source, rows, len(schema), schema.names, store.describe(out)
    )
    return {"table": str(out)}
