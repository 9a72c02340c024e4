"""Stage 1: read the CSV (a local path or a URL) or Parquet file and store it unchanged as Parquet.

The CSV's blocks of whole records (`storage.tabular`) become one row group each, encoded on a second thread
while the next is parsed (both release the GIL); a later block that contradicts the types inferred from the
first makes the file be read again whole, which lets pyarrow widen them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prefect import get_run_logger

import stagecore as core
import storage
from storage import tabular
from storage.errors import InputError


@contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path for ``source``: the file itself, or a URL (http(s), s3://…) downloaded (streamed) to a
    temporary file, once: the stage cache's download when it made one."""
    if not storage.is_url(source):
        yield tabular.check_file(source)
        return
    already = storage.downloaded_copy(source)  # the stage cache downloaded it to key this stage
    if already is not None:
        yield already
        return
    with storage.downloaded([source]) as paths:
        yield paths[source]


def csv_to_parquet(
    path: Path, out: core.Outputs, source: str, delimiter: str | None = None, name: str = "raw.parquet"
) -> pa.Schema:
    """Stream ``path`` into ``raw.parquet`` (atomically), block by block; returns the schema written.

    ``delimiter``: None to read it off the header line. Nothing is left at ``name`` unless every check passed.
    """
    if delimiter is None:
        delimiter = tabular.sniff_csv(path, source)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    seen: dict[str, bool] = {}
    try:
        with out.sink(name) as sink:
            rows, schema = _stream(path, sink, parse, source, seen)
            if rows == 0:
                raise InputError(f"{source}: has a header but no data rows; add rows or pass another --data")
    except pa.ArrowInvalid as exc:
        table = tabular.read_whole(path, delimiter, source, exc, quotes=seen.get("quotes", False))
        with out.sink(name) as sink:
            pq.write_table(table, sink, **out.parquet_options(table))
        schema = table.schema
    return schema


def parquet_to_parquet(path: Path, out: core.Outputs, source: str, name: str = "raw.parquet") -> pa.Schema:
    """Copy a Parquet input into ``raw.parquet`` (atomically) a row group at a time, checking it is readable Parquet."""
    try:
        reader = pq.ParquetFile(path, pre_buffer=False)  # read a row group at a time, keep none
        tabular.check_header(reader.schema_arrow.names, source)
        groups = (reader.read_row_group(group) for group in range(reader.num_row_groups))
        first = next(groups, reader.schema_arrow.empty_table())
        with out.sink(name) as sink:
            with pq.ParquetWriter(sink, reader.schema_arrow, **out.parquet_options(first)) as writer:
                for table in itertools.chain([first], groups):
                    writer.write_table(table)
            if reader.metadata.num_rows == 0:
                raise InputError(f"{source}: has a schema but no rows; add rows or pass another --data")
    except (pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"{source}: cannot be read as Parquet ({reason})") from None
    return reader.schema_arrow


def _stream(
    path: Path, out: BinaryIO, parse: pacsv.ParseOptions, source: str, seen: dict[str, bool]
) -> tuple[int, pa.Schema]:
    tables = tabular.parsed_blocks(path, parse, seen)
    first = next(tables)
    tabular.check_schema(first.schema, source)  # before a byte is written
    with pq.ParquetWriter(out, first.schema, **core.Outputs.parquet_options(first)) as writer:
        rows = core.Outputs.write_behind(itertools.chain([first], tables), writer.write_table)
    return rows, first.schema


def partition_columns(table_paths: list[str], sources: list[str]) -> list[list[str]]:
    """Each partition's column names, from its table's manifest (no file is read); a one-line error naming the
    first partition (by its source file) whose columns are not the first partition's, in some order.

    Partitions are one data set cut into files: the same columns in another order are the same data (the flow
    aligns them by name, `aligned_features`), but a column missing from one file or extra in it is not.
    """
    columns = [[c["name"] for c in core.read_manifest(path)["schema"]["columns"]] for path in table_paths]
    first = columns[0]
    for names, source in zip(columns[1:], sources[1:], strict=True):
        extra, missing = [n for n in names if n not in first], [n for n in first if n not in names]
        if extra or missing:
            differ = [f"extra column(s) {', '.join(map(repr, extra))}"] if extra else []
            differ += [f"missing column(s) {', '.join(map(repr, missing))}"] if missing else []
            raise InputError(
                f"{storage.redact(source)}: its columns are not those of {storage.redact(sources[0])} "
                f"({'; '.join(differ)}); give every partition the same columns (their order may differ)"
            )
    return columns


def aligned_features(
    table_paths: list[str], sources: list[str], target: str, features: list[str] | None
) -> list[str] | None:
    """The features to train on: ``features`` when named (each is read by name); else, when the partitions hold
    their columns in different orders, every column but the target in the first partition's order, so each
    partition's tensors have the same columns in the same order; else None (every column but the target)."""
    if features is not None or len(table_paths) < 2:
        return features
    columns = partition_columns(table_paths, sources)
    if all(names == columns[0] for names in columns):
        return None
    return [name for name in columns[0] if name != target]


RAW = "raw.parquet"


@core.stage("ingest", outputs=("table",))
def ingest_csv(source: core.File, root: str) -> dict[str, str]:
    """Read ``source`` (CSV, or Parquet by its suffix) and write ``raw.parquet``: column names and types kept."""
    label = storage.redact(source)  # what messages and logs name: a URL without its secrets
    with local_copy(source) as path:
        # keyed on the bytes read: for a URL, those of the download
        outputs = core.outputs(digests={"source": storage.sha256_file(path)})
        out = outputs.folder / RAW
        delimiter = None
        try:
            if tabular.is_parquet(source):
                schema = parquet_to_parquet(path, outputs, label)
            else:
                delimiter = tabular.sniff_csv(path, label)
                schema = csv_to_parquet(path, outputs, label, delimiter)
            outputs.record(RAW, "parquet")
        except BaseException as exc:
            outputs.discard()  # a refused input leaves nothing behind: no file without its manifest, not a folder
            if isinstance(exc, pa.ArrowInvalid):  # e.g. "Empty CSV file" from open_csv
                raise tabular.parse_error(exc, label) from None
            raise
    rows = pq.ParquetFile(out).metadata.num_rows
    read = f"{label} ({tabular.delimiter_name(delimiter)}-delimited)" if delimiter else label
    get_run_logger().info(
        "read %s: %d rows × %d columns %s; wrote %s", read, rows, len(schema), schema.names, core.describe(out)
    )
    return {"table": str(out)}
