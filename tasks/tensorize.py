"""Stage 4: turn the train and test tables into feature and target tensors, saved as one ``.pt``.

The rules (which columns, which values, float64 or float32 and why) are the library's (`linreg.tensors`); this
stage reads the split's Parquet files a column at a time, calls it, and writes ``tensors.pt``.
"""

from __future__ import annotations

import pyarrow as pa
from prefect import get_run_logger

import stagecore as core
from linreg.precision import Dtype


class ParquetColumns:  # a `linreg.tensors.Columns`
    """A Parquet file read one column at a time, so the whole table is never in memory beside the tensors.

    Verified against its manifest once, here, and read through that one reader: with thousands of columns,
    opening and checking the file once per column was most of the stage (3,000 columns: 107 of 138 s).
    """

    def __init__(self, path: str):
        self.path = path
        self.file = core.open_parquet(path)
        self.schema = self.file.schema_arrow
        self.column_names = self.schema.names
        self.num_rows = self.file.metadata.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        return self.file.read(columns=[name]).column(0)


@core.stage("tensorize", outputs=("tensors",))
def tensorize(
    train_path: core.File,
    test_path: core.File,
    target: str,
    features: list[str] | None,
    dtype: Dtype,
    rows: int,
    root: str,
) -> dict[str, str]:
    """Read the split tables, write ``tensors.pt`` (tensors + feature names + their dtype and why)."""
    from linreg.tensors import to_tensors  # here: a fully cached run never imports torch

    train, test = ParquetColumns(train_path), ParquetColumns(test_path)
    tensors = to_tensors(train, test, target, features, dtype, rows)
    out = core.outputs().write_pt(tensors, "tensors.pt")
    get_run_logger().info(
        "read %s and %s; features %s, target %r; x_train %s, x_test %s (%s: %s); wrote %s",
        train_path,
        test_path,
        tensors["features"],
        target,
        tuple(tensors["x_train"].shape),
        tuple(tensors["x_test"].shape),
        tensors["dtype"],
        tensors["dtype_reason"],
        core.describe(out),
    )
    return {"tensors": out}
