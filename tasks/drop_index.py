"""Stage 2: drop the CSV's row-index column, which carries no signal and would leak row order.

Streamed a batch at a time (only the kept columns are read), so 20M rows cost no more memory than 200: the
predict flow reuses this stage on inputs of any size."""

from __future__ import annotations

import re

import pyarrow as pa
from prefect import get_run_logger

import stagecore as core
from storage.errors import InputError

_PANDAS_UNNAMED = re.compile(r"Unnamed: (\d+)")


def resolve_column(table: pa.Table, name: str) -> str:
    """The table's name for ``name``; pandas' ``Unnamed: i`` also finds the header-less column at position i.

    pyarrow keeps an empty header as ``""`` where pandas says ``Unnamed: 0``: both spellings must work.
    """
    if name in table.column_names:
        return name
    match = _PANDAS_UNNAMED.fullmatch(name)
    if match and int(match[1]) < table.num_columns and table.column_names[int(match[1])] == "":
        return ""
    shown = ", ".join(repr(c) for c in table.column_names)
    raise InputError(
        f"index column {name!r} not found (columns: {shown}); pass --index-column NAME, or none if there is none"
    )


def drop_index(table: pa.Table, column: str | None) -> pa.Table:
    """``table`` without ``column``; unchanged when ``column`` is None."""
    if column is None:
        return table
    return table.drop_columns([resolve_column(table, column)])


BATCH_ROWS = 1 << 20  # rows per batch read and row group written: bounded memory at any size


@core.stage("drop_index", outputs=("table",))
def drop_index_column(table_path: core.File, column: str | None, root: str) -> dict[str, str]:
    """Read the raw table a batch at a time, without its index column; write ``clean.parquet``."""
    raw = core.open_parquet(table_path)
    schema = drop_index(raw.schema_arrow.empty_table(), column).schema
    rows = 0
    outputs = core.outputs()
    with outputs.parquet_writer("clean.parquet", schema) as writer:
        for batch in raw.iter_batches(batch_size=BATCH_ROWS, columns=schema.names):
            writer.write_batch(batch)
            rows += batch.num_rows
    out = str(outputs.folder / "clean.parquet")
    get_run_logger().info(
        "read %s; dropped %s; wrote %d rows × %d columns to %s",
        table_path,
        repr(column) if column is not None else "no column",
        rows,
        len(schema),
        core.describe(out),
    )
    return {"table": out}
