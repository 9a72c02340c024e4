"""Stage 3: split rows into train and test exactly as scikit-learn's ``train_test_split`` does."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from tasks import store
from tasks.errors import InputError

STAGE = store.Stage("split", __name__, params=("test_size", "seed"), files=("table_path",))
MIN_ROWS_PER_PART = 2  # R² on the test part, and a loss to descend on the train part, need two rows each


def split_table(table: pa.Table, test_size: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) with the very rows, in the very order, that ``train_test_split(random_state=seed)`` gives.

    scikit-learn's ShuffleSplit takes ``RandomState(seed).permutation(n)``: its first ``ceil(test_size·n)``
    indices are the test rows, the rest the train rows. Doing the same here (tests check it against
    scikit-learn) keeps that guarantee without importing scikit-learn or copying the table through pandas.
    """
    if not 0 < test_size < 1:
        raise InputError(f"--test-size must be between 0 and 1 (exclusive), got {test_size}")
    n = table.num_rows
    n_test = math.ceil(test_size * n)
    if min(n_test, n - n_test) < MIN_ROWS_PER_PART:
        raise InputError(
            f"{n} rows are too few to split with --test-size {test_size}: each part needs at least "
            f"{MIN_ROWS_PER_PART} rows; add rows or change --test-size"
        )
    permutation = np.random.RandomState(seed).permutation(n)
    return table.take(permutation[n_test:]), table.take(permutation[:n_test])


@task(name="split_data")
def split_data(table_path: str, test_size: float, seed: int, root: str) -> dict[str, str]:
    """Read the clean table, write ``train.parquet`` and ``test.parquet``."""
    train, test = split_table(store.read_parquet(table_path), test_size, seed)
    outputs = STAGE.outputs(root, {"table_path": table_path, "test_size": test_size, "seed": seed})
    out = {
        "train": outputs.write_parquet(train, "train.parquet"),
        "test": outputs.write_parquet(test, "test.parquet"),
    }
    get_run_logger().info(
        "read %s; split %d rows into %d train / %d test (test_size=%s, seed=%d); wrote %s and %s",
        table_path,
        train.num_rows + test.num_rows,
        train.num_rows,
        test.num_rows,
        test_size,
        seed,
        store.describe(out["train"]),
        store.describe(out["test"]),
    )
    return out
