"""Stage: predict with a trained model, streamed batch by batch, so 20M rows need no more memory than 200.

Features are read from the cleaned table (drop_index's output), by name and in the model's order; the input's
index column, which drop_index removed, is read by name from the ingested table beside them, so a prediction
keeps the row label it belongs to. The model is an input file of the stage: its sha256 is in the predictions'
manifest, and lineage follows it back to the data the model was trained on.

In the same pass the stage streams each feature's moments (`linreg.drift.Moments`) into ``drift.json``, which the
flow merges over partitions and compares with the model's training moments (docs/lifecycle.md, drift).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger

import stagecore as core
import storage
from linreg.columns import float_values, is_numeric
from linreg.drift import Baseline, Moments
from linreg.model import predict
from storage.errors import InputError
from tasks.drop_index import resolve_column

BATCH_ROWS = 1 << 20  # ~1M rows a batch: a few × 8 MB per feature, whatever the file's size
PREDICTION = "prediction"


def check_features(schema: pa.Schema, features: list[str], source: str) -> None:
    """Refuse data the model cannot be applied to: a feature missing, or one that is not numeric (training's
    rule, `is_numeric`: a boolean column is 1/0 in both)."""
    missing = [f for f in features if f not in schema.names]
    if missing:
        raise InputError(
            f"{source}: has no column {missing[0]!r}, a feature of the model (features: {', '.join(features)}); "
            "pass --data with those columns, or another --model"
        )
    for name in features:
        kind = schema.field(name).type
        if not is_numeric(kind):
            raise InputError(
                f"{source}: feature column {name!r} is {kind}, not numeric; fix the column and pass it again"
            )


def model_weights(model: dict) -> tuple[np.ndarray, float]:
    """The model's raw-unit weights (one per feature) and bias, in float64."""
    return model["weights"].double().reshape(-1).numpy(), float(model["bias"])


def feature_columns(batch: pa.RecordBatch, features: list[str], first_row: int = 0) -> list[np.ndarray]:
    """The batch's features as float64 columns (its first row is ``first_row`` of the file); a null or NaN
    feature is refused, naming the column and the row: a NaN prediction would pass silently downstream."""
    columns = []
    for name in features:
        column = batch.column(name)
        values = float_values(column).astype(np.float64, copy=False)
        invalid = np.isnan(values)
        if column.null_count:
            invalid |= ~np.asarray(column.is_valid())
        if invalid.any():
            row = first_row + int(np.flatnonzero(invalid)[0])
            raise InputError(
                f"feature column {name!r} is empty or NaN at data row {row} (0-based); fill or drop those rows"
            )
        columns.append(values)
    return columns


def predict_batch(
    batch: pa.RecordBatch, features: list[str], weights: np.ndarray, bias: float, first_row: int = 0
) -> np.ndarray:
    """``x @ w + b`` in float64 for one batch (`feature_columns`' checks)."""
    return predict_columns(feature_columns(batch, features, first_row), batch.num_rows, weights, bias)


def predict_columns(columns: list[np.ndarray], rows: int, weights: np.ndarray, bias: float) -> np.ndarray:
    x = np.column_stack(columns) if columns else np.empty((rows, 0))
    return predict(x, weights, bias)


class _Column:
    """One column of a Parquet file, handed out in slices of any length (to follow another file's batches)."""

    def __init__(self, file: pq.ParquetFile, name: str):
        self._batches = (b.column(0) for b in file.iter_batches(batch_size=BATCH_ROWS, columns=[name]))
        self._rest: pa.Array | None = None

    def take(self, rows: int) -> pa.Array:
        parts, need = [], rows
        while need:
            if self._rest is None or len(self._rest) == 0:
                self._rest = next(self._batches)
            part = self._rest.slice(0, need)
            self._rest = self._rest.slice(len(part))
            parts.append(part)
            need -= len(part)
        return pa.concat_arrays(parts) if len(parts) != 1 else parts[0]


def predictions(
    clean: pq.ParquetFile,
    raw: pq.ParquetFile,
    features: list[str],
    model: dict,
    index: str | None,
    moments: list[Moments] | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output's schema and its batches, in input row order: the index column (if any), then ``prediction``.
    With a ``moments`` list (and a model with training moments), each batch's feature moments are appended."""
    baseline = Baseline.from_model(model) if moments is not None else None
    weights, bias = model_weights(model)
    fields = [pa.field(PREDICTION, pa.float64())]
    column = None
    if index is not None:
        stored = resolve_column(raw.schema_arrow.empty_table(), index)  # "Unnamed: 0" finds pyarrow's ""
        column = _Column(raw, stored)
        fields.insert(0, pa.field(index, raw.schema_arrow.field(stored).type))
    schema = pa.schema(fields)
    offset = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal offset
        for batch in clean.iter_batches(batch_size=BATCH_ROWS, columns=features):
            columns = feature_columns(batch, features, offset)
            y = predict_columns(columns, batch.num_rows, weights, bias)
            if baseline is not None:
                moments.append(Moments.of_columns(columns, baseline))
            arrays = [pa.array(y, pa.float64())]
            if column is not None:
                arrays.insert(0, column.take(batch.num_rows))
            offset += batch.num_rows
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return schema, batches()


@core.stage("predict", outputs=("predictions", "drift"))
def predict_rows(
    table_path: core.File,
    raw_path: core.File,
    model_path: core.File,
    index_column: str | None,
    drift: bool,
    root: str,
) -> dict[str, str]:
    """Read the cleaned table (features), the ingested one (index column) and the model; write
    ``predictions.parquet`` a batch at a time, and the features' moments in ``drift.json`` (``moments`` null
    when ``drift`` is off or the model has no training moments)."""
    model = core.read_pt(model_path)
    features = list(model["features"])
    clean, raw = core.open_parquet(table_path), core.open_parquet(raw_path)
    check_features(clean.schema_arrow, features, table_path)
    moments: list[Moments] | None = [] if drift else None
    schema, batches = predictions(clean, raw, features, model, index_column, moments)
    rows = 0
    outputs = core.outputs()
    with outputs.parquet_writer("predictions.parquet", schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    out = str(outputs.folder / "predictions.parquet")
    merged = Moments.merge(moments).as_dict() if moments else None
    drift_out = outputs.write_json({"features": features, "rows": rows, "moments": merged}, "drift.json")
    get_run_logger().info(
        "read %s and %s with model %s; wrote %d predictions to %s",
        storage.public(table_path),
        storage.public(raw_path),
        storage.public(model_path),
        rows,
        storage.public(out),
    )
    return {"predictions": out, "drift": drift_out}
