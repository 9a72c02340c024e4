"""Stage 3: split rows into train and test exactly as scikit-learn's ``train_test_split`` does."""

from __future__ import annotations

import math
from itertools import accumulate

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

import stagecore as core
from stagecore.errors import InputError

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
    return np.random.RandomState(seed).permutation(n), n_test


def split_partition(table: pa.Table, test_size: float, seed: int, offset: int, total: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) of one partition, holding rows ``offset … offset+len`` of a ``total``-row input.

    scikit-learn's ShuffleSplit takes ``RandomState(seed).permutation(total)``: its first ``ceil(test_size·n)``
    indices are the test rows, the rest the train rows (tests check this against scikit-learn). A partition
    keeps the entries of that permutation that fall in its rows, in the permutation's order. So one partition
    holding all rows gets exactly ``train_test_split``'s rows in its order, and many partitions together get
    the same rows (sums, and so the statistics and metrics, do not depend on their order).
    """
    if offset < 0 or offset + table.num_rows > total:
        raise ValueError(f"partition rows {offset}…{offset + table.num_rows} lie outside the {total} rows")
    permutation, n_test = shuffle(total, test_size, seed)

    def mine(rows: np.ndarray) -> pa.Table:
        return table.take(rows[(rows >= offset) & (rows < offset + table.num_rows)] - offset)

    return mine(permutation[n_test:]), mine(permutation[:n_test])


def partition_offsets(rows: list[int]) -> list[int]:
    """Where each partition starts in the concatenated input."""
    return list(accumulate(rows[:-1], initial=0)) if rows else []


@task(name="split_data")
@core.stage("split")
def split_data(
    table_path: core.File, test_size: float, seed: int, offset: int, total: int, root: str
) -> dict[str, str]:
    """Read one partition's clean table (a single file is the one partition), write ``train.parquet`` and
    ``test.parquet``: its rows ``offset … offset+len`` of the ``total`` rows of the input."""
    train, test = split_partition(core.read_parquet(table_path), test_size, seed, offset, total)
    outputs = core.outputs()
    out = {
        "train": outputs.write_parquet(train, "train.parquet"),
        "test": outputs.write_parquet(test, "test.parquet"),
    }
    get_run_logger().info(
        "read %s (rows %d…%d of %d); %d train / %d test rows (test_size=%s, seed=%d); wrote %s and %s",
        table_path,
        offset,
        offset + train.num_rows + test.num_rows,
        total,
        train.num_rows,
        test.num_rows,
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
