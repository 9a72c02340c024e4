"""From columns to tensors: which columns train, each one's values checked, and the precision they are stored in.

Pure: a table in (anything with `Columns`' four members: a ``pa.Table``, or the training stage's one-column-at-a-time
Parquet reader), tensors out. float64 unless the data is big and float32 is measured safe for it
(`linreg.precision.choose_dtype`); the choice and its reason travel with the tensors.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from linreg.columns import float_values, is_numeric
from linreg.errors import InputError
from linreg.precision import FLOAT32_MIN_VALUES, Dtype, choose_dtype


class Columns(Protocol):
    """What `to_tensors` reads from a table: a pa.Table has it, and so has `ParquetColumns`."""

    num_rows: int
    column_names: list[str]
    schema: pa.Schema

    def column(self, name: str) -> pa.ChunkedArray: ...


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
