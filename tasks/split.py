"""Stage 3: split rows into train and test exactly as scikit-learn's ``train_test_split`` does."""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate

import numpy as np
import pyarrow as pa
from prefect import get_run_logger

import stagecore as core
from storage.errors import InputError

ROW_GROUP_ROWS = 1 << 20  # rows gathered and written at a time
MIN_ROWS_PER_PART = 2  # R² on the test part, and a loss to descend on the train part, need two rows each


def split_table(table: pa.Table, test_size: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) with the very rows, in the very order, that ``train_test_split(random_state=seed)`` gives:
    a whole table is the one-partition case of `split_partition`."""
    return split_partition(table, test_size, seed, 0, table.num_rows)


def shuffle(n: int, test_size: float, seed: int) -> tuple[np.ndarray, int]:
    """ShuffleSplit's permutation of ``n`` rows and its number of test rows (the permutation's head)."""
    if not 0 < test_size < 1:
        raise InputError(f"--test-size must be between 0 and 1 (exclusive), got {test_size}")
    n_test = math.ceil(test_size * n)
    if min(n_test, n - n_test) < MIN_ROWS_PER_PART:
        raise InputError(
            f"{n} rows are too few to split with --test-size {test_size}: each part needs at least "
            f"{MIN_ROWS_PER_PART} rows; add rows or change --test-size"
        )
    return permutation(n, seed), n_test


_PERMUTATION_LOCK = threading.Lock()
_PERMUTATION: dict[tuple[int, int], weakref.ref] = {}


def permutation(n: int, seed: int) -> np.ndarray:
    """``RandomState(seed).permutation(n)`` (read-only), drawn once while any caller still holds it.

    It is the slowest step of a split (2.4 s at 20M rows), and the same for every partition of one input:
    partitions split on threads share one draw instead of each drawing it again.
    """
    with _PERMUTATION_LOCK:
        known = _PERMUTATION.get((n, seed))
        drawn = known() if known is not None else None
        if drawn is None:
            drawn = np.random.RandomState(seed).permutation(n)
            drawn.flags.writeable = False
            _PERMUTATION.clear()
            _PERMUTATION[n, seed] = weakref.ref(drawn)
        return drawn


def split_partition(table: pa.Table, test_size: float, seed: int, offset: int, total: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) of one partition, holding rows ``offset … offset+len`` of a ``total``-row input (see
    `split_rows`)."""
    columns = gatherable_columns(table)
    train, test = split_rows(table.num_rows, test_size, seed, offset, total)
    return take(columns, table.schema, train), take(columns, table.schema, test)


def split_rows(rows: int, test_size: float, seed: int, offset: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of one partition's train and test rows, in the order they are kept: its ``rows`` rows are
    rows ``offset … offset+rows`` of a ``total``-row input.

    scikit-learn's ShuffleSplit takes ``RandomState(seed).permutation(total)``: its first ``ceil(test_size·n)``
    indices are the test rows, the rest the train rows (tests check this against scikit-learn). A partition
    keeps the entries of that permutation that fall in its rows, in the permutation's order. So one partition
    holding all rows gets exactly ``train_test_split``'s rows in its order, and many partitions together get
    the same rows (sums, and so the statistics and metrics, do not depend on their order).
    """
    if offset < 0 or offset + rows > total:
        raise ValueError(f"partition rows {offset}…{offset + rows} lie outside the {total} rows")
    order, n_test = shuffle(total, test_size, seed)

    def mine(drawn: np.ndarray) -> np.ndarray:
        return drawn if rows == total else drawn[(drawn >= offset) & (drawn < offset + rows)] - offset

    return mine(order[n_test:]), mine(order[:n_test])


def gatherable(column: pa.ChunkedArray) -> np.ndarray | pa.ChunkedArray:
    """A numeric column without nulls as one numpy array (numpy gathers it in parallel threads, where Arrow's
    ``take`` gathers a chunked column on one thread, 3× slower); any other column as it is."""
    kind = column.type
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and column.null_count == 0:
        return column.to_numpy()
    return column


def gatherable_columns(table: pa.Table) -> list[np.ndarray | pa.ChunkedArray]:
    """Every column of ``table`` made `gatherable`, a column per thread: joining a column's chunks into one array
    is mostly the first touch of fresh memory, which threads share (20M rows × 4 columns: 1.95 s on one)."""
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="split-column") as pool:
        return list(pool.map(gatherable, table.columns))


def take(columns: list[np.ndarray | pa.ChunkedArray], schema: pa.Schema, rows: np.ndarray) -> pa.Table:
    """The table of ``columns`` (see `gatherable`) at ``rows``, in that order: a column per thread."""

    def one(column: np.ndarray | pa.ChunkedArray, field: pa.Field) -> pa.Array | pa.ChunkedArray:
        if isinstance(column, np.ndarray):
            return pa.array(np.take(column, rows), type=field.type)
        return column.take(rows)

    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="split-take") as pool:
        taken = list(pool.map(one, columns, schema))
    return pa.Table.from_arrays(taken, schema=schema)


def partition_offsets(rows: list[int]) -> list[int]:
    """Where each partition starts in the concatenated input."""
    return list(accumulate(rows[:-1], initial=0)) if rows else []


@core.stage("split", outputs=("train", "test"))
def split_data(
    table_path: core.File, test_size: float, seed: int, offset: int, total: int, root: str
) -> dict[str, str]:
    """Read one partition's clean table (a single file is the one partition), write ``train.parquet`` and
    ``test.parquet``: its rows ``offset … offset+len`` of the ``total`` rows of the input."""
    table = core.read_parquet(table_path)
    schema, num_rows = table.schema, table.num_rows
    columns = gatherable_columns(table)
    del table  # its numeric columns are copied out: the gathers read the copies
    parts = dict(zip(("train", "test"), split_rows(num_rows, test_size, seed, offset, total), strict=True))
    outputs = core.outputs()

    for part, rows in parts.items():
        with outputs.parquet_writer(f"{part}.parquet", schema) as writer:
            for start in range(0, max(len(rows), 1), ROW_GROUP_ROWS):  # a group is written while the next is gathered
                writer.write_table(take(columns, schema, rows[start : start + ROW_GROUP_ROWS]))
    out = {part: str(outputs.folder / f"{part}.parquet") for part in parts}
    get_run_logger().info(
        "read %s (rows %d…%d of %d); %d train / %d test rows (test_size=%s, seed=%d); wrote %s and %s",
        table_path,
        offset,
        offset + num_rows,
        total,
        len(parts["train"]),
        len(parts["test"]),
        test_size,
        seed,
        core.describe(out["train"]),
        core.describe(out["test"]),
    )
    return out


def count_rows(table_paths: list[str]) -> list[int]:
    """Rows per partition, for the partitions' offsets: read from the manifests, without hashing every file
    once more (each split task verifies its file when it reads it, so a file that disagrees stops the run).
    Not a task: a few small reads, which a task run would cost more than."""
    return [int(core.read_manifest(path)["schema"]["rows"]) for path in table_paths]
