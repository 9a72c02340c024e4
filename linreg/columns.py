"""The one rule for which columns a model can use: integers, floats and booleans (True 1, False 0).

Training (tasks/tensorize.py) and prediction (tasks/predict.py) both ask `is_numeric` and read values with
`float_values`, so a column that trains is a column that predicts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def is_numeric(kind: pa.DataType) -> bool:
    """Whether a column of this type can be a feature or the target: integer, floating point or boolean."""
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def float_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as a NumPy array of numbers, nulls as NaN: a boolean one as 1.0/0.0 (read directly, a
    boolean column with nulls would arrive as Python objects)."""
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)
