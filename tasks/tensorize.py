"""Stage 4: turn the train and test tables into feature and target tensors, saved as one ``.pt``.

float64 unless the data is big and float32 is measured safe for it (`linreg.precision.choose_dtype`); the choice
and its reason travel with the tensors into the model and the summary.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger

import stagecore as core
from linreg.columns import float_values, is_numeric
from linreg.precision import FLOAT32_MIN_VALUES, Dtype, choose_dtype
from storage.errors import InputError


class Columns(Protocol):
    """What `to_tensors` reads from a table: a pa.Table has it, and so has `ParquetColumns`."""

    num_rows: int
    column_names: list[str]
    schema: pa.Schema

    def column(self, name: str) -> pa.ChunkedArray: ...


class ParquetColumns:
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


def select_columns(table: Columns, target: str, features: list[str] | None) -> list[str]:
    """The feature columns: those named, or every column but the target. Checks they exist and are numeric."""
    columns = table.column_names
    shown = ", ".join(repr(c) for c in columns)
    if target not in columns:
        raise InputError(f"target column {target!r} not found (columns: {shown}); pass --target NAME")
    chosen = [c for c in columns if c != target] if features is None else list(features)
    if not chosen:
        raise InputError(f"no feature columns besides target {target!r}; the CSV needs at least two columns")
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        which = ", ".join(repr(name) for name in repeated)
        which = f"feature column {which} is" if len(repeated) == 1 else f"feature columns {which} are"
        raise InputError(f"{which} named more than once in --features; name each column once")
    for name in chosen:
        if name not in columns:
            raise InputError(f"feature column {name!r} not found (columns: {shown}); fix --features")
        if name == target:
            raise InputError(f"column {name!r} is the target; leave it out of --features")
    for name in [*chosen, target]:
        kind = table.schema.field(name).type
        if not is_numeric(kind):  # the rule predict applies too
            role = "target" if name == target else "feature"
            hint = "pass a numeric --target" if name == target else "choose numeric columns with --features"
            raise InputError(f"{role} column {name!r} is not numeric ({kind}); {hint}")
    return chosen


def _fill(dest: np.ndarray, table: Columns, name: str, part: str, role: str = "feature") -> None:
    """Copy a column into its slot (float32 or float64; no second copy of the whole matrix); refuse NaN, inf,
    nulls, and finite values too large for a float32 slot (which would turn to inf and be taken for missing)."""
    values = float_values(table.column(name))  # nulls arrive as NaN; booleans as 1.0/0.0
    bad = int(np.count_nonzero(~np.isfinite(values))) if values.dtype.kind == "f" else 0
    leave_out = "leave the column out with --features" if role == "feature" else "pass another --target"
    if bad:
        raise InputError(
            f"column {name!r} has {bad} missing or non-finite (NaN/inf) values in the {part} rows; "
            f"clean the CSV or {leave_out}"
        )
    with np.errstate(over="ignore"):  # overflow becomes inf, reported below
        dest[:] = values
    over = ~np.isfinite(dest)
    if over.any():
        largest = float(np.max(np.abs(values[over])))
        raise InputError(
            f"{role} column {name!r} has {int(over.sum())} value(s) beyond float32's range in the {part} rows "
            f"(up to {largest:.3g}; float32's largest is ≈3.4e38); rescale the column (e.g. divide it by "
            f"{10.0 ** np.floor(np.log10(largest)):.0e}), pass --dtype float64, or {leave_out}"
        )


def to_tensors(
    train: Columns, test: Columns, target: str, features: list[str] | None, dtype: Dtype = "auto", rows: int = 0
) -> dict:
    """``x_train`` (n×d), ``y_train`` (n×1), ``x_test``, ``y_test`` in the chosen dtype, the names they came from,
    and ``dtype`` and ``dtype_reason``.

    ``rows``: the whole input's row count (all partitions), which sizes the ``auto`` choice like one file's.
    A big ``auto`` input is read as float32 first, its rounding risk measured on those values, and read again
    as float64 only when the risk is too high: never two float64 copies at once.
    """
    chosen = select_columns(train, target, features)
    values = max(rows, train.num_rows + test.num_rows) * (len(chosen) + 1)
    if dtype == "auto" and values >= FLOAT32_MIN_VALUES:  # big: decide on the values themselves
        out = _read(train, test, chosen, target, np.float32)
        columns = [c.numpy() for c in out["x_train"].unbind(1)] + [out["y_train"][:, 0].numpy()]
        kind, reason = choose_dtype(dtype, values, columns)
        if kind == torch.float64:
            out = _read(train, test, chosen, target, np.float64)
    else:
        kind, reason = choose_dtype(dtype, values)  # small, or as asked
        out = _read(train, test, chosen, target, np.float32 if kind == torch.float32 else np.float64)
    return {
        **out,
        "features": chosen,
        "target": target,
        "dtype": str(kind).removeprefix("torch."),
        "dtype_reason": reason,
    }


def _read(train: Columns, test: Columns, chosen: list[str], target: str, dtype: type) -> dict:
    out: dict = {}
    fills = []
    for part, table in (("train", train), ("test", test)):
        x = np.empty((table.num_rows, len(chosen)), dtype=dtype)
        y = np.empty((table.num_rows, 1), dtype=dtype)
        fills += [(x[:, j], table, name, part, "feature") for j, name in enumerate(chosen)]
        fills.append((y[:, 0], table, target, part, "target"))
        out[f"x_{part}"], out[f"y_{part}"] = torch.from_numpy(x), torch.from_numpy(y)
    # one column after another, through one reader: a column per thread no longer beat the noise (20M rows)
    for fill in fills:
        _fill(*fill)
    return out


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
